//! Authorizers that subscribe: each grant event of an authorizer's grant, republished from the
//! log on its own JetStream subjects (`latch.grants.<number>.<kind>`, the GRANTS stream), so a
//! courier company binds a durable consumer filtered to its number and misses nothing while it
//! is offline. Part of the grant-process role; one consumer of the log's grant events, keyed by
//! the event id (`Nats-Msg-Id`, and `event_id` in the body) so a redelivery is stored once.

use crate::event_consumer::{EventHandler, Outcome};
use crate::grant_delivery::GrantRequestMessage;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use cqrs_es::Aggregate;
use latch_domain::locker::{Grant, GrantEvent, GrantTarget};
use latch_domain::store::Store;
use latch_nats::subjects;
use latch_projections::LoggedEvent;
use serde_json::json;
use std::sync::Arc;

pub const CONSUMER: &str = "grant-feed";

pub struct GrantFeed {
    pub store: Arc<Store>,
    pub js: Context,
    /// Authorizers whose feed consumer this process has made sure of.
    pub fed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl GrantFeed {
    /// The authorizer a grant went to, if it went to one.
    async fn authorizer_of(&self, grant_id: &str) -> Result<Option<String>, String> {
        let grant = self
            .store
            .grants
            .load(grant_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(grant.and_then(|g| match g.target {
            Some(GrantTarget::Authorizer { authorizer }) => Some(authorizer.to_string()),
            _ => None,
        }))
    }
}

impl EventHandler for GrantFeed {
    async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        if event.aggregate_type != Grant::TYPE {
            return Ok(Outcome::Done);
        }
        let Ok(grant_event) = serde_json::from_value::<GrantEvent>(event.upcast().payload.clone())
        else {
            tracing::warn!(event_type = %event.event_type, "grant event not understood; not fed");
            return Ok(Outcome::Done);
        };
        use GrantEvent as E;
        let (kind, named, data) = match grant_event {
            E::GrantRequested {
                grant_id,
                compartment,
                size,
                requester,
                target: GrantTarget::Authorizer { authorizer },
                deadline,
                ..
            } => {
                let request = GrantRequestMessage::new(
                    grant_id,
                    &compartment,
                    &size,
                    &authorizer,
                    &requester,
                    deadline,
                );
                let data = serde_json::to_value(request).map_err(|e| e.to_string())?;
                ("requested", Some(authorizer.to_string()), data)
            }
            // A direct grant has no authorizer to tell.
            E::GrantRequested { .. } => return Ok(Outcome::Done),
            E::GrantAccepted {
                authorizer,
                receiver,
                ..
            } => (
                "accepted",
                Some(authorizer.to_string()),
                json!({ "receiver": receiver.as_str() }),
            ),
            E::GrantDeclined {
                authorizer, reason, ..
            } => (
                "declined",
                Some(authorizer.to_string()),
                json!({ "reason": reason }),
            ),
            E::GrantCompleted { receiver, .. } => {
                ("completed", None, json!({ "receiver": receiver.as_str() }))
            }
            E::GrantFailed { reason, .. } => ("failed", None, json!({ "reason": reason })),
            E::GrantExpired { .. } => ("expired", None, json!({})),
        };
        let authorizer = match named {
            Some(a) => a,
            None => match self.authorizer_of(&event.aggregate_id).await? {
                Some(a) => a,
                None => return Ok(Outcome::Done),
            },
        };
        // Registration makes the authorizer's consumer; this covers authorizers registered
        // before the feed existed.
        let known = self.fed.lock().expect("fed").contains(&authorizer);
        if !known {
            if let Err(e) = latch_nats::streams::ensure_authorizer_feed(&self.js, &authorizer).await
            {
                return Ok(Outcome::Later(format!(
                    "feed consumer of {authorizer}: {e}"
                )));
            }
            self.fed.lock().expect("fed").insert(authorizer.clone());
        }
        let body = json!({
            "type": format!("grant.{kind}"),
            "event_id": event.event_id,
            "grant_id": event.aggregate_id,
            "authorizer": authorizer,
            "at": event.recorded_at,
            "data": data,
        });
        let message = PublishMessage::build()
            .payload(body.to_string().into())
            .message_id(event.event_id.to_string());
        let subject = subjects::grant_feed(&authorizer, kind);
        let stored = async {
            self.js
                .send_publish(subject.clone(), message)
                .await?
                .await?;
            Ok::<(), async_nats::Error>(())
        }
        .await;
        Ok(match stored {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Later(format!("{subject} not stored: {e}")),
        })
    }
}
