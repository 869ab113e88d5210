//! Upcasters: stored events of an older shape read as the current one, never rewritten.
//!
//! Stored rows are history and the hash chain covers them as stored, so a change of an event's
//! shape is never a migration of old rows: the new shape gets a new `event_version`, and every
//! reader (aggregate loads through cqrs-es, projections, point-in-time folds) passes old rows
//! through the [`EventUpcaster`]s here first.
//!
//! The shape changes so far:
//! - `DeviceRegistered` version 0, written by the prototype cabinets' registration, called the
//!   label `name` and had no `kind` (every prototype was a vending fridge). Version 1 renamed
//!   `name` to `label` and added `kind`.
//! - Secrets out of the log (issue 13): version 1 of `AuthorizerRegistered` and
//!   `AuthorizerReconfigured` carried the authorizer's signing `secret`, version 1 of
//!   `LockerUserRegistered` and `LockerUserPasswordChanged` the user's `password_hash`. Version 2
//!   carries `secret_id` / `credential_id`; an old event reads with a legacy reference to its own
//!   row (`crate::vault::legacy_reference`) in its place, which the vault resolves, so no reader
//!   of an upcast event sees the secret.
//! - `ParcelDeposited` version 1 kept the pickup code's plain SHA-256 (`pickup_code_hash`);
//!   version 2 keeps a keyed MAC (`pickup_code_mac`). An old one reads as
//!   `crate::locker::LEGACY_SHA256` + the digest, which the compartment compares the old way.
//!
//! [`for_readers`] is what the log shows to people and to the `EVENTS` stream: the upcast event,
//! with a legacy pickup digest blanked as well (only the compartment needs it).

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

/// Version 1 of an event that carried a secret in `field` -> version 2 that names it in
/// `id_field` by a legacy reference to the stored row (aggregate id and sequence).
pub struct SecretToReference {
    pub event_type: &'static str,
    pub field: &'static str,
    pub id_field: &'static str,
}

impl EventUpcaster for SecretToReference {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && event_version == "1"
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        let reference = crate::vault::legacy_reference(&event.aggregate_id, event.sequence);
        if let Some(body) = event
            .payload
            .get_mut(self.event_type)
            .and_then(Value::as_object_mut)
        {
            body.remove(self.field);
            body.insert(self.id_field.to_owned(), Value::String(reference));
        }
        event.event_version = "2".to_owned();
        event
    }
}

/// `ParcelDeposited` v1 `{pickup_code_hash}` (plain SHA-256) -> v2 `{pickup_code_mac}` marked as
/// the legacy digest.
fn parcel_deposited_v1_to_v2(mut payload: Value) -> Value {
    if let Some(body) = payload
        .get_mut("ParcelDeposited")
        .and_then(Value::as_object_mut)
    {
        let digest = body
            .remove("pickup_code_hash")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        body.insert(
            "pickup_code_mac".to_owned(),
            Value::String(format!("{}{digest}", crate::locker::LEGACY_SHA256)),
        );
    }
    payload
}

/// Every upcaster, in the order they apply (an event may pass through several).
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    let secret = |event_type, field, id_field| -> Box<dyn EventUpcaster> {
        Box::new(SecretToReference {
            event_type,
            field,
            id_field,
        })
    };
    vec![
        Box::new(VersionUpcaster {
            event_type: "DeviceRegistered",
            from: "0",
            to: "1",
            f: device_registered_v0_to_v1,
        }),
        secret("AuthorizerRegistered", "secret", "secret_id"),
        secret("AuthorizerReconfigured", "secret", "secret_id"),
        secret("LockerUserRegistered", "password_hash", "credential_id"),
        secret(
            "LockerUserPasswordChanged",
            "password_hash",
            "credential_id",
        ),
        Box::new(VersionUpcaster {
            event_type: "ParcelDeposited",
            from: "1",
            to: "2",
            f: parcel_deposited_v1_to_v2,
        }),
    ]
}

/// Whether the stored form of an event of this type and version holds something secret (cheap:
/// the relay asks it of every event it publishes).
pub fn hides_secret(event_type: &str, event_version: &str) -> bool {
    event_version == "1"
        && matches!(
            event_type,
            "AuthorizerRegistered"
                | "AuthorizerReconfigured"
                | "LockerUserRegistered"
                | "LockerUserPasswordChanged"
                | "ParcelDeposited"
        )
}

/// The event as the log shows it to auditors and on the `EVENTS` stream: upcast, and a legacy
/// pickup digest blanked (it stays in the stored row, where only the compartment reads it).
pub fn for_readers(event: SerializedEvent) -> SerializedEvent {
    let mut event = upcast(event);
    if let Some(mac) = event
        .payload
        .get_mut("ParcelDeposited")
        .and_then(|body| body.get_mut("pickup_code_mac"))
    {
        if mac
            .as_str()
            .is_some_and(|m| m.starts_with(crate::locker::LEGACY_SHA256))
        {
            *mac = Value::String(format!("{}redacted", crate::locker::LEGACY_SHA256));
        }
    }
    event
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

    fn stored(
        aggregate_type: &str,
        id: &str,
        seq: usize,
        event_type: &str,
        payload: Value,
    ) -> SerializedEvent {
        SerializedEvent::new(
            id.into(),
            seq,
            aggregate_type.into(),
            event_type.into(),
            "1".into(),
            payload,
            json!({}),
        )
    }

    #[test]
    fn old_secrets_read_as_references_to_their_row() {
        use crate::locker::{AuthorizerEvent, UserEvent};
        let old = stored(
            "locker_authorizer",
            "0001",
            1,
            "AuthorizerRegistered",
            json!({"AuthorizerRegistered": {"number": "0001", "name": "A",
                   "endpoint": "http://127.0.0.1:1/g", "secret": "whsec_c2VjcmV0",
                   "at": "2026-01-01T00:00:00Z"}}),
        );
        assert!(hides_secret("AuthorizerRegistered", "1"));
        let new = upcast(old.clone());
        assert_eq!(new.event_version, "2");
        assert!(!new.payload.to_string().contains("whsec_"));
        match serde_json::from_value::<AuthorizerEvent>(new.payload).unwrap() {
            AuthorizerEvent::AuthorizerRegistered { secret_id, .. } => {
                assert_eq!(secret_id, "legacy:1:0001")
            }
            other => panic!("{other:?}"),
        }
        let old = stored(
            "locker_user",
            "13455555555",
            4,
            "LockerUserPasswordChanged",
            json!({"LockerUserPasswordChanged": {"password_hash": "$argon2id$v=19$x",
                   "at": "2026-01-01T00:00:00Z"}}),
        );
        let new = for_readers(old);
        assert!(!new.payload.to_string().contains("argon2"));
        match serde_json::from_value::<UserEvent>(new.payload).unwrap() {
            UserEvent::LockerUserPasswordChanged { credential_id, .. } => {
                assert_eq!(credential_id, "legacy:4:13455555555")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_deposit_keeps_its_digest_for_the_compartment_only() {
        use crate::locker::CompartmentEvent;
        let old = stored(
            "locker_compartment",
            "S:01",
            3,
            "ParcelDeposited",
            json!({"ParcelDeposited": {"depositor": "13455555555", "parcel": "SF1",
                   "pickup_code_hash": "abcd", "at": "2026-01-01T00:00:00Z"}}),
        );
        match serde_json::from_value::<CompartmentEvent>(upcast(old.clone()).payload).unwrap() {
            CompartmentEvent::ParcelDeposited {
                pickup_code_mac, ..
            } => assert_eq!(pickup_code_mac, "sha256:abcd"),
            other => panic!("{other:?}"),
        }
        let shown = for_readers(old);
        assert_eq!(shown.event_version, "2");
        assert!(!shown.payload.to_string().contains("abcd"));
    }
}
