//! The lockers notifier: the notices that follow a compartment changing hands, sent from the
//! log, never from the request that changed it (a crash after that commit would lose them).
//!
//! For each `HolderChanged` event: an SMS to the receiver, a NATS notice to the receiver
//! (`come_use`) and to the former holder (`grant_confirmed`) on
//! `latch.lockers.notifications.{user}`, and, for a grant through an authorizer, a
//! confirmation on `latch.authorizers.{number}.confirmations`. The inbox rows come from the
//! same event through the lockers projection. Delivery is at least once (a crash after sending
//! and before the ack sends again), so every message carries the event id as its dedup key: in
//! the body (`event_id`), as `Latch-Event-Id` and `Nats-Msg-Id` headers, and as the SMS's
//! message id, on which the SMS gateway (and [`SandboxSms`]) deduplicate.

use crate::event_consumer::{self, EventHandler, Outcome};
use async_nats::jetstream::Context;
use cqrs_es::Aggregate;
use latch_domain::locker::{Compartment, CompartmentEvent};
use latch_nats::subjects;
use latch_projections::LoggedEvent;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const CONSUMER: &str = "locker-notifier";
/// The same notifier's consumer of reservations (nats-server 2.9 takes one filter per consumer).
pub const RESERVATIONS_CONSUMER: &str = "locker-notifier-reservations";

/// The header that names the event a notice follows from.
pub const EVENT_ID_HEADER: &str = "Latch-Event-Id";

/// Sends a text message to a phone. The real SMS gateway is a third party behind this trait;
/// `message_id` is its idempotency key (the same id twice is one message).
#[async_trait::async_trait]
pub trait SmsSender: Send + Sync {
    async fn send(&self, message_id: &str, phone: &str, text: &str) -> Result<(), String>;
}

/// The sandbox SMS gateway: keeps each message once per id in Postgres (`sandbox_sms`, listed
/// by `GET /lockers/sandbox/sms`) and logs it; nothing leaves the machine. Keeping it in the
/// database lets the record outlive a restart, as a real gateway's would.
#[derive(Debug, Clone)]
pub struct SandboxSms {
    pool: PgPool,
}

/// How many messages the sandbox keeps.
const SANDBOX_KEEPS: i64 = 10_000;

impl SandboxSms {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl SmsSender for SandboxSms {
    async fn send(&self, message_id: &str, phone: &str, text: &str) -> Result<(), String> {
        let stored: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO sandbox_sms (message_id, phone, body) VALUES ($1, $2, $3)
             ON CONFLICT (message_id) DO NOTHING RETURNING seq",
        )
        .bind(message_id)
        .bind(phone)
        .bind(text)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        match stored {
            Some((seq,)) => {
                tracing::info!(%message_id, %phone, %text, "sandbox SMS");
                if seq % 1000 == 0 {
                    sqlx::query("DELETE FROM sandbox_sms WHERE seq <= $1")
                        .bind(seq - SANDBOX_KEEPS)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            None => tracing::info!(%message_id, "sandbox SMS already sent; not again"),
        }
        Ok(())
    }
}

pub struct LockerNotifier {
    pub nats: async_nats::Client,
    pub js: Context,
    pub sms: Arc<dyn SmsSender>,
}

/// One NATS notice: subject and body.
pub type Notice = (String, serde_json::Value);

/// What a reservation or a holder change tells whom: the NATS notices and one SMS (phone,
/// text). Every body names `event_id`. Empty for other events.
pub fn notices(event: &LoggedEvent) -> (Vec<Notice>, Option<(String, String)>) {
    if let Ok(CompartmentEvent::CompartmentReserved {
        holder,
        window_start,
        expires_at,
        ..
    }) = serde_json::from_value::<CompartmentEvent>(event.payload.clone())
    {
        let id = &event.aggregate_id;
        let message = latch_projections::lockers::reserved_message(id, window_start, expires_at);
        let notice = (
            subjects::locker_notifications(holder.as_str()),
            json!({ "kind": "reserved", "event_id": event.event_id, "compartment_id": id,
                    "window_start": window_start, "expires_at": expires_at,
                    "message": message }),
        );
        let sms = (holder.as_str().to_owned(), format!("【Latch】{message}"));
        return (vec![notice], Some(sms));
    }
    let Ok(CompartmentEvent::HolderChanged {
        grant_id,
        from,
        to,
        via,
        window_start,
        window_end,
        ..
    }) = serde_json::from_value::<CompartmentEvent>(event.payload.clone())
    else {
        return (vec![], None);
    };
    let id = &event.aggregate_id;
    let event_id = event.event_id;
    let mut messages = vec![
        (
            subjects::locker_notifications(to.as_str()),
            json!({ "kind": "come_use", "event_id": event_id, "grant_id": grant_id,
                    "compartment_id": id, "from": from.as_str(),
                    "window_start": window_start, "window_end": window_end,
                    "message": format!("{from} 已将格口 {id} 的使用权授予您，请前往投递") }),
        ),
        (
            subjects::locker_notifications(from.as_str()),
            json!({ "kind": "grant_confirmed", "event_id": event_id, "grant_id": grant_id,
                    "compartment_id": id, "to": to.as_str(),
                    "message": format!("格口 {id} 已授予 {to}") }),
        ),
    ];
    if let Some(a) = via {
        let (site, number) = id.split_once(':').unwrap_or((id.as_str(), ""));
        messages.push((
            subjects::authorizer_confirmations(a.as_str()),
            json!({ "kind": "grant_confirmed", "event_id": event_id, "grant_id": grant_id,
                    "site": site, "compartment": number, "receiver": to.as_str(),
                    "authorizer": a.as_str() }),
        ));
    }
    let sms = (
        to.as_str().to_owned(),
        format!("【Latch】{from} 已将格口 {id} 的使用权授予您，请前往投递"),
    );
    (messages, Some(sms))
}

impl LockerNotifier {
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            event_consumer::run(
                self.js.clone(),
                CONSUMER,
                subjects::events_of_type(Compartment::TYPE, "HolderChanged"),
                &self,
                shutdown.clone(),
            ),
            event_consumer::run(
                self.js.clone(),
                RESERVATIONS_CONSUMER,
                subjects::events_of_type(Compartment::TYPE, "CompartmentReserved"),
                &self,
                shutdown,
            )
        );
    }
}

impl EventHandler for LockerNotifier {
    /// Sends everything the event calls for; `Later` when the gateway or NATS refused, so the
    /// whole set goes again (receivers deduplicate by event id).
    async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        if event.aggregate_type != Compartment::TYPE {
            return Ok(Outcome::Done);
        }
        let (messages, sms) = notices(event);
        let event_id = event.event_id.to_string();
        if let Some((phone, text)) = sms {
            if let Err(e) = self.sms.send(&event_id, &phone, &text).await {
                return Ok(Outcome::Later(format!("SMS not sent: {e}")));
            }
        }
        for (subject, body) in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(EVENT_ID_HEADER, event_id.as_str());
            headers.insert("Nats-Msg-Id", event_id.as_str());
            if let Err(e) = self
                .nats
                .publish_with_headers(subject.clone(), headers, body.to_string().into())
                .await
            {
                return Ok(Outcome::Later(format!("{subject} not published: {e}")));
            }
        }
        // Published means handed to the server, not buffered here, before the ack.
        if let Err(e) = self.nats.flush().await {
            return Ok(Outcome::Later(format!("notices not flushed: {e}")));
        }
        tracing::info!(event_type = %event.event_type, "notified");
        Ok(Outcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use cqrs_es::DomainEvent;
    use latch_domain::locker::{AuthorizerNumber, UserNumber};
    use uuid::Uuid;

    fn holder_changed(via: Option<&str>) -> LoggedEvent {
        let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let e = CompartmentEvent::HolderChanged {
            grant_id: Uuid::from_u128(9),
            from: UserNumber::parse("u", "13488888888").unwrap(),
            to: UserNumber::parse("u", "13466666666").unwrap(),
            via: via.map(|a| AuthorizerNumber::parse("a", a).unwrap()),
            window_start: Some(at),
            window_end: Some(at + chrono::Duration::hours(2)),
            at,
        };
        LoggedEvent {
            position: 7,
            event_id: Uuid::from_u128(42),
            aggregate_type: Compartment::TYPE.into(),
            aggregate_id: "610091A01:01".into(),
            sequence: 3,
            event_type: e.event_type(),
            event_version: e.event_version(),
            payload: serde_json::to_value(&e).unwrap(),
            metadata: json!({}),
            recorded_at: at,
            hash: String::new(),
        }
    }

    #[test]
    fn a_holder_change_through_an_authorizer_tells_receiver_giver_and_authorizer_by_event_id() {
        let event = holder_changed(Some("0001"));
        let (messages, sms) = notices(&event);
        let subjects: Vec<&str> = messages.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "latch.lockers.notifications.13466666666",
                "latch.lockers.notifications.13488888888",
                "latch.authorizers.0001.confirmations",
            ]
        );
        assert!(messages
            .iter()
            .all(|(_, body)| body["event_id"] == event.event_id.to_string()));
        assert_eq!(messages[2].1["site"], "610091A01");
        assert_eq!(messages[2].1["compartment"], "01");
        let (phone, text) = sms.unwrap();
        assert_eq!(phone, "13466666666");
        assert!(text.contains("610091A01:01"));
    }

    #[test]
    fn a_reservation_tells_its_holder_the_window() {
        let mut event = holder_changed(None);
        event.payload = json!({"CompartmentReserved": {"holder": "13455555555",
            "window_start": "2026-12-03T08:00:00Z", "expires_at": "2026-12-03T10:00:00Z",
            "at": "2026-12-03T08:00:00Z"}});
        let (messages, sms) = notices(&event);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0, "latch.lockers.notifications.13455555555");
        assert_eq!(messages[0].1["kind"], "reserved");
        assert_eq!(messages[0].1["event_id"], event.event_id.to_string());
        let (phone, text) = sms.unwrap();
        assert_eq!(phone, "13455555555");
        // The window booked, both ends.
        assert!(
            text.contains("610091A01:01")
                && text.contains("2026-12-03 08:00")
                && text.contains("2026-12-03 10:00 UTC"),
            "{text}"
        );
    }

    #[test]
    fn a_direct_grant_confirms_to_no_authorizer_and_other_events_send_nothing() {
        let (messages, sms) = notices(&holder_changed(None));
        assert_eq!(messages.len(), 2);
        assert!(sms.is_some());
        let mut other = holder_changed(None);
        other.payload = json!({"ParcelCollected": {"parcel": "SF1", "at": "2026-01-01T00:00:00Z"}});
        let (messages, sms) = notices(&other);
        assert!(messages.is_empty() && sms.is_none());
    }
}
