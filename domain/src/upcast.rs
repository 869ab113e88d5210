//! Upcasters: stored events of an older shape read as the current one, never rewritten.
//!
//! Stored rows are history and the hash chain covers them as stored, so a change of an event's
//! shape is never a migration of old rows: the new shape gets a new `event_version`, and every
//! reader (aggregate loads through cqrs-es, projections, point-in-time folds) passes old rows
//! through the [`EventUpcaster`]s here first.
//!
//! The one shape change so far: `DeviceRegistered` version 0, written by the prototype cabinets'
//! registration, called the label `name` and had no `kind` (every prototype was a vending
//! fridge). Version 1 renamed `name` to `label` and added `kind`.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// Turns one event type from `from` to `to`, rewriting only the payload of the copy it reads.
pub struct VersionUpcaster {
    pub event_type: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub f: fn(Value) -> Value,
}

impl EventUpcaster for VersionUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && event_version == self.from
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        event.payload = (self.f)(event.payload);
        event.event_version = self.to.to_owned();
        event
    }
}

/// `{"DeviceRegistered": {device_id, name, site, at}}` (v0) ->
/// `{"DeviceRegistered": {device_id, kind: "vending", label, site, at}}` (v1).
fn device_registered_v0_to_v1(mut payload: Value) -> Value {
    if let Some(body) = payload
        .get_mut("DeviceRegistered")
        .and_then(Value::as_object_mut)
    {
        if let Some(name) = body.remove("name") {
            body.insert("label".to_owned(), name);
        }
        body.entry("kind")
            .or_insert_with(|| Value::String("vending".to_owned()));
    }
    payload
}

/// Every upcaster, in the order they apply (an event may pass through several).
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(VersionUpcaster {
        event_type: "DeviceRegistered",
        from: "0",
        to: "1",
        f: device_registered_v0_to_v1,
    })]
}

/// Applies every upcaster that matches, in order. Returns the event unchanged when none does.
pub fn upcast(mut event: SerializedEvent) -> SerializedEvent {
    for upcaster in upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event
}

/// One stored event payload as the current code reads it: through every upcaster that matches
/// its type and version, then into `E`. For readers that fold a stream themselves.
pub fn read<E: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> Result<E, serde_json::Error> {
    if !needs_upcast(event_type, event_version) {
        return serde_json::from_value(payload);
    }
    let stored = SerializedEvent::new(
        String::new(),
        0,
        String::new(),
        event_type.to_owned(),
        event_version.to_owned(),
        payload,
        Value::Null,
    );
    serde_json::from_value(upcast(stored).payload)
}

/// True when some upcaster reads this type and version.
pub fn needs_upcast(event_type: &str, event_version: &str) -> bool {
    upcasters()
        .iter()
        .any(|u| u.can_upcast(event_type, event_version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceEvent;
    use serde_json::json;

    #[test]
    fn a_v0_registration_reads_as_v1() {
        let old = SerializedEvent::new(
            "0195f0c2-0000-7000-8000-000000000001".into(),
            1,
            "device".into(),
            "DeviceRegistered".into(),
            "0".into(),
            json!({"DeviceRegistered": {"device_id": "0195f0c2-0000-7000-8000-000000000001",
                   "site": "S1", "name": "Fridge 1", "at": "2026-01-01T00:00:00Z"}}),
            json!({}),
        );
        assert!(needs_upcast("DeviceRegistered", "0"));
        assert!(!needs_upcast("DeviceRegistered", "1"));
        let new = upcast(old);
        assert_eq!(new.event_version, "1");
        let parsed: DeviceEvent = serde_json::from_value(new.payload).unwrap();
        match parsed {
            DeviceEvent::DeviceRegistered { label, kind, .. } => {
                assert_eq!(label.as_str(), "Fridge 1");
                assert_eq!(kind.as_str(), "vending");
            }
            other => panic!("{other:?}"),
        }
    }
}
