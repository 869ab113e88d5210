//! Locker holders: the locker device keeps its own record of who holds each compartment it
//! opens (issue 14), so a locker that loses its uplink still knows whom to let in.
//!
//! Each compartment event that changes the holder (reserved, handed on, expired, a parcel
//! deposited or collected: the last three leave nobody holding it) is sent to the
//! compartment's door device as a core-NATS request on `latch.cmd.<device>.holder`
//! ([`HolderCommand`]: compartment, holder or null, log position, time). The EVENTS message is
//! acked only once the device answers `{"ok":true}`; no answer, a refusal or a timeout naks it
//! with a doubling pause (capped), so it comes back until the device has it. Redeliveries and
//! overtaken updates are harmless because the device keeps an update only if its log position
//! is newer than the one it holds.
//!
//! A device that let a request time out is not asked again for a short while (its updates are
//! put back at once), so one hung locker does not stall the others' updates behind timeouts.
//! A compartment without a door has nobody to tell: acked and skipped. Wiring a door sends the
//! new door the compartment's current holder.

use crate::event_consumer::{self, EventHandler, Outcome};
use async_nats::jetstream::Context;
use cqrs_es::Aggregate;
use latch_domain::locker::{Compartment, CompartmentEvent};
use latch_domain::store::Store;
use latch_domain::telemetry::{CommandReply, HolderCommand};
use latch_nats::subjects;
use latch_projections::LoggedEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const CONSUMER: &str = "locker-holder";

/// How long a device has to answer, and how long to wait between attempts.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// How long a device has to answer one holder command.
    pub reply_timeout: Duration,
    /// The longest pause before an unanswered update is offered again (pauses double from
    /// half a second up to this).
    pub retry_max: Duration,
}

impl Default for HolderConfig {
    fn default() -> Self {
        Self {
            reply_timeout: Duration::from_secs(2),
            retry_max: Duration::from_secs(30),
        }
    }
}

pub struct LockerHolder {
    pub store: Arc<Store>,
    pub nats: async_nats::Client,
    pub js: Context,
    pub config: HolderConfig,
    /// Devices that let a request time out, and when: not asked again until `reply_timeout`
    /// has passed once more.
    hung: Mutex<HashMap<String, Instant>>,
}

/// What a holder-changing event says the compartment's holder is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The event leaves nobody holding the compartment (a parcel went in or came out).
    Nobody,
    /// The event changed the booked windows (a reservation, a grant, a lapsed window) or wired
    /// a door: the holder is the compartment's own, as the read model shows it (the holder of
    /// the earliest booked window), read from its state.
    FromState,
}

/// The holder `event` leaves its compartment with, or `None` for events that do not change it.
pub fn change_of(event: &LoggedEvent) -> Option<Change> {
    use CompartmentEvent as E;
    match serde_json::from_value::<CompartmentEvent>(event.upcast().payload.clone()).ok()? {
        // With windows, a reservation may be for later than one already booked, a grant may
        // hand on part of a window and a lapsed window may leave a later one: the holder the
        // compartment shows comes from its windows, not from the event alone.
        E::CompartmentReserved { .. }
        | E::HolderChanged { .. }
        | E::ReservationExpired { .. }
        | E::DoorWired { .. } => Some(Change::FromState),
        // A deposit ends the empty-use right (the compartment holds a parcel, nobody holds it);
        // a collection frees it.
        E::ParcelDeposited { .. } | E::ParcelCollected { .. } => Some(Change::Nobody),
        E::CompartmentInstalled { .. } => None,
    }
}

/// Who holds the compartment as its read model shows it: nobody while a parcel is in, else the
/// holder of the earliest booked window.
fn holder_now(compartment: &latch_domain::locker::Compartment) -> Option<String> {
    if compartment.status == latch_domain::locker::compartment::Status::Occupied {
        return None;
    }
    compartment
        .windows
        .iter()
        .min_by_key(|w| w.start)
        .map(|w| w.holder.to_string())
}

/// The time an event records (`at`, inside its one variant: `{"HolderChanged": {.., "at"}}`),
/// or when it was logged.
fn at_of(event: &LoggedEvent) -> chrono::DateTime<chrono::Utc> {
    event
        .payload
        .as_object()
        .and_then(|variant| variant.values().next())
        .and_then(|fields| fields.get("at"))
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or(event.recorded_at)
}

/// Counts one holder update by outcome (`acked`, `unanswered`, `refused`, `no_door`).
fn count(outcome: &'static str) {
    metrics::counter!("latch_locker_holder_updates_total", "outcome" => outcome).increment(1);
}

impl LockerHolder {
    pub fn new(
        store: Arc<Store>,
        nats: async_nats::Client,
        js: Context,
        config: HolderConfig,
    ) -> Self {
        Self {
            store,
            nats,
            js,
            config,
            hung: Mutex::default(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let filter = subjects::events_of_aggregate(Compartment::TYPE);
        event_consumer::run(self.js.clone(), CONSUMER, filter, &self, shutdown).await
    }

    fn hung(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.hung.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `command` to `door` and waits for its answer.
    async fn send(&self, door: &str, command: &HolderCommand) -> Outcome {
        if let Some(since) = self.hung().get(door) {
            if since.elapsed() < self.config.reply_timeout {
                count("unanswered");
                return Outcome::Unanswered(format!("door {door} did not answer lately"));
            }
        }
        let body = match serde_json::to_vec(command) {
            Ok(b) => b,
            Err(e) => return Outcome::Later(format!("holder command not encoded: {e}")),
        };
        let request = self
            .nats
            .request(subjects::device_holder(door), body.into());
        let reply = match tokio::time::timeout(self.config.reply_timeout, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                // No responders: the device is not connected. Nothing to wait for.
                count("unanswered");
                return Outcome::Unanswered(format!("door {door}: {e}"));
            }
            Err(_) => {
                self.hung().insert(door.to_owned(), Instant::now());
                count("unanswered");
                return Outcome::Unanswered(format!("door {door} did not answer in time"));
            }
        };
        self.hung().remove(door);
        match serde_json::from_slice::<CommandReply>(&reply.payload) {
            Ok(CommandReply { ok: true, .. }) => {
                count("acked");
                tracing::info!(%door, compartment = %command.compartment_id, holder = ?command.holder, position = command.position, "door has the holder");
                Outcome::Done
            }
            Ok(CommandReply { error, .. }) => {
                count("refused");
                Outcome::Unanswered(format!(
                    "door {door} refused: {}",
                    error.unwrap_or_default()
                ))
            }
            Err(e) => {
                count("refused");
                Outcome::Unanswered(format!("door {door} answered unreadably: {e}"))
            }
        }
    }
}

impl EventHandler for LockerHolder {
    async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        let Some(change) = change_of(event) else {
            return Ok(Outcome::Done);
        };
        let compartment = self
            .store
            .compartments
            .load(&event.aggregate_id)
            .await
            .map_err(|e| e.to_string())?;
        let Some(compartment) = compartment else {
            return Ok(Outcome::Done);
        };
        // The door wired now: a door replaced later learns the holder from its wiring event.
        let Some(door) = compartment.door.as_ref().map(ToString::to_string) else {
            count("no_door");
            return Ok(Outcome::Done);
        };
        let holder = match change {
            Change::Nobody => None,
            // The holder now, which is at least as new as this position: a later update of
            // the same compartment (newer position) says the same or newer, and the device
            // keeps the newest position's word.
            Change::FromState => holder_now(&compartment),
        };
        let command = HolderCommand {
            compartment_id: event.aggregate_id.clone(),
            holder,
            position: event.position,
            at: at_of(event),
        };
        Ok(self.send(&door, &command).await)
    }

    fn unanswered_pause(&self, attempt: i64) -> Duration {
        event_consumer::doubling_pause(attempt, self.config.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn logged(event_type: &str, payload: serde_json::Value) -> LoggedEvent {
        LoggedEvent {
            position: 7,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: Compartment::TYPE.into(),
            aggregate_id: "610091A01:01".into(),
            sequence: 2,
            event_type: event_type.into(),
            event_version: "1".into(),
            payload,
            metadata: json!({}),
            recorded_at: chrono::Utc::now(),
            hash: String::new(),
        }
    }

    #[test]
    fn holder_changes_read_the_windows_or_name_nobody() {
        let at = "2026-11-21T08:00:00Z";
        let reserved = logged(
            "CompartmentReserved",
            json!({"CompartmentReserved": {"holder": "13455555555", "window_start": at,
                   "expires_at": at, "at": at}}),
        );
        assert_eq!(change_of(&reserved), Some(Change::FromState));
        assert_eq!(at_of(&reserved).to_rfc3339(), "2026-11-21T08:00:00+00:00");
        let handed = logged(
            "HolderChanged",
            json!({"HolderChanged": {"grant_id": uuid::Uuid::now_v7(), "from": "13455555555",
                   "to": "13499996666", "via": null, "at": at}}),
        );
        assert_eq!(change_of(&handed), Some(Change::FromState));
        let expired = logged(
            "ReservationExpired",
            json!({"ReservationExpired": {"holder": "13455555555", "at": at}}),
        );
        assert_eq!(change_of(&expired), Some(Change::FromState));
        let collected = logged(
            "ParcelCollected",
            json!({"ParcelCollected": {"parcel": "SF1234567890", "at": at}}),
        );
        assert_eq!(change_of(&collected), Some(Change::Nobody));
        let installed = logged(
            "CompartmentInstalled",
            json!({"CompartmentInstalled": {"id": "610091A01:01", "size": "large", "at": at}}),
        );
        assert_eq!(change_of(&installed), None);
    }

    #[test]
    fn the_holder_is_the_earliest_windows_and_nobody_while_a_parcel_is_in() {
        use latch_domain::locker::compartment::{Status, Window};
        let t = |h: i64| {
            chrono::DateTime::parse_from_rfc3339("2026-11-21T08:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc)
                + chrono::Duration::hours(h)
        };
        let window = |holder: &str, s: i64, e: i64| Window {
            holder: latch_domain::locker::UserNumber::parse("holder", holder).unwrap(),
            start: t(s),
            end: t(e),
        };
        let mut compartment = Compartment {
            status: Status::Reserved,
            windows: vec![window("13499996666", 2, 3), window("13455555555", 0, 2)],
            ..Default::default()
        };
        assert_eq!(holder_now(&compartment).as_deref(), Some("13455555555"));
        compartment.status = Status::Occupied;
        assert_eq!(holder_now(&compartment), None);
        compartment.status = Status::Free;
        compartment.windows.clear();
        assert_eq!(holder_now(&compartment), None);
    }

    #[test]
    fn pauses_double_up_to_the_cap() {
        let cap = Duration::from_secs(5);
        let pauses: Vec<_> = (1..=6)
            .map(|n| event_consumer::doubling_pause(n, cap).as_millis())
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(event_consumer::doubling_pause(10_000, cap), cap);
    }
}
