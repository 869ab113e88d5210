//! Locker doors: a parcel deposited or collected opens the compartment's door, once.
//!
//! The compartment records the deposit (or the collection) first; this worker then asks the
//! door's device to open, with the event's id as idempotency key. The EVENTS message is acked
//! only after that request is recorded, so a crash in between is repaired by redelivery, and a
//! redelivered event answers from the first request instead of opening the door twice. From
//! there the opening runs like any other: dispatch sends the command, the door's own report
//! confirms it, a missed deadline records the failure.

use crate::consume::{next_batch, pause, Next};
use async_nats::jetstream::{AckKind, Context};
use chrono::Duration as ChronoDuration;
use cqrs_es::Aggregate;
use latch_domain::clock::SharedClock;
use latch_domain::device::{DeviceCommand, DeviceError};
use latch_domain::locker::{Compartment, CompartmentEvent};
use latch_domain::store::{CommandContext, CommandError, IdempotencyKey, Store};
use latch_nats::{streams, subjects};
use latch_projections::LoggedEvent;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub const CONSUMER: &str = "locker-doors";

pub struct LockerDoors {
    pub store: std::sync::Arc<Store>,
    pub js: Context,
    pub clock: SharedClock,
    /// How long the door's device has to report the opening.
    pub open_timeout: ChronoDuration,
}

/// What to do with one event message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Done, or nothing to do: ack.
    Done,
    /// The door cannot open yet (its previous opening is still pending, or it is open): try
    /// again after the consumer's backoff.
    Later(String),
}

impl LockerDoors {
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.consume(&shutdown).await {
                tracing::warn!(error = %e, "locker door consumer unavailable");
                pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
        tracing::info!("locker doors stopped");
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
        // One filter for the whole compartment stream: the nats-server we run (2.9) takes only
        // one filter subject per consumer; other compartment events are acked unread.
        let filter = subjects::events_of_aggregate(Compartment::TYPE);
        let config = streams::durable(CONSUMER, &filter);
        let consumer = streams::ensure_consumer(&self.js, subjects::EVENTS_STREAM, config).await?;
        let mut messages = consumer.messages().await?;
        loop {
            let batch = match next_batch(&mut messages, 100, Duration::from_secs(5), shutdown).await
            {
                Next::Stop => return Ok(()),
                Next::Failed(e) => return Err(e.into()),
                Next::Idle => continue,
                Next::Batch(batch) => batch,
            };
            for message in batch {
                let event: LoggedEvent = match serde_json::from_slice(&message.payload) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, subject = %message.subject, "unreadable event message skipped");
                        message.ack().await?;
                        continue;
                    }
                };
                let span = tracing::info_span!("locker_door", position = event.position, compartment = %event.aggregate_id);
                match self.handle(&event).instrument(span).await {
                    Ok(Outcome::Done) => message.ack().await?,
                    Ok(Outcome::Later(why)) => {
                        tracing::info!(position = event.position, %why, "door busy; retrying later");
                        message.ack_with(AckKind::Nak(None)).await?;
                    }
                    // Postgres away: leave the message unacked; it comes back after the ack wait.
                    Err(e) => {
                        tracing::warn!(error = %e, position = event.position, "door request not recorded; will retry");
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// Asks the door of the compartment behind `event` to open, if the event is a deposit or a
    /// collection and the compartment has a door.
    /// `Err` is a passing failure (Postgres away): the message is tried again later.
    pub async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        let why = match serde_json::from_value::<CompartmentEvent>(event.upcast().payload.clone()) {
            Ok(CompartmentEvent::ParcelDeposited { .. }) => "deposit",
            Ok(CompartmentEvent::ParcelCollected { .. }) => "collection",
            _ => return Ok(Outcome::Done),
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
        let Some(door) = compartment.door else {
            tracing::info!(why, "compartment has no door wired; nothing to open");
            return Ok(Outcome::Done);
        };
        let now = self.clock.now();
        let command = DeviceCommand::RequestOpen {
            request_id: Uuid::now_v7(),
            deadline: now + self.open_timeout,
            shopper: None,
            at: now,
        };
        let mut ctx = CommandContext::new(format!("system:{CONSUMER}"))
            .with_device(door.to_string())
            .with_idempotency(IdempotencyKey::new(
                CONSUMER,
                &event.event_id.to_string(),
                event.aggregate_id.as_bytes(),
            ));
        ctx.causation_id = event.event_id;
        if let Some(correlation) = event
            .metadata
            .get("correlation_id")
            .and_then(|c| c.as_str())
            .and_then(|c| Uuid::parse_str(c).ok())
        {
            ctx.correlation_id = correlation;
        }
        match self
            .store
            .devices
            .execute(&door.to_string(), command.name(), command, &ctx)
            .await
        {
            Ok(done) => {
                tracing::info!(why, %door, replayed = done.replayed, "door asked to open");
                Ok(Outcome::Done)
            }
            Err(CommandError::Rejected(
                e @ (DeviceError::OpenPending | DeviceError::DoorAlreadyOpen),
            )) => Ok(Outcome::Later(e.to_string())),
            // Offline, faulted or unregistered: nobody can open it from here. The parcel stays
            // recorded; an operator opens the door by hand (POST /devices/{id}/open).
            Err(CommandError::Rejected(e)) => {
                tracing::warn!(why, %door, code = e.code(), "door cannot open");
                Ok(Outcome::Done)
            }
            Err(CommandError::Unavailable(e)) => Err(e),
            Err(e) => {
                tracing::error!(why, %door, error = %e, "door request failed");
                Ok(Outcome::Later(e.to_string()))
            }
        }
    }
}
