//! Telemetry ingest: what cabinets say, checked, then turned into commands.
//!
//! A message that does not parse, names another device, comes from an unknown device, or asks
//! for something the device aggregate refuses goes to the dead-letter stream with its reason and
//! is acknowledged: it never becomes an event and never stops the worker. A message that fails
//! for a passing reason (Postgres away) is retried with backoff and dead-lettered only when the
//! consumer's delivery limit runs out.
//!
//! Messages are handled concurrently across devices and in order within one device
//! ([`crate::lanes`]).

use crate::consume::pause;
use crate::lanes::Lanes;
use crate::vending;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{AckKind, Context, Message};
use bytes::Bytes;
use futures::StreamExt;
use latch_domain::clock::SharedClock;
use latch_domain::device::{DeviceCommand, OpenFailure};
use latch_domain::store::{CommandContext, CommandError, IdempotencyKey, Store};
use latch_domain::telemetry::{parse_telemetry, Telemetry, TelemetryBody};
use latch_nats::{streams, subjects};
use latch_projections::device_status;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const CONSUMER: &str = "ingest";
/// How much of a refused payload is kept on the dead-letter message.
const DEADLETTER_KEEP: usize = 1024;
/// Most telemetry messages taken and not yet handled. More would only queue on the connection
/// pool ahead of HTTP commands (256 put a shopper's POST open p50 from 85 to 264 ms).
const IN_HAND: usize = 64;
/// With nothing arriving for this long, idle device lanes are let go.
const IDLE: Duration = Duration::from_secs(5);

pub struct Ingest {
    pub store: Arc<Store>,
    /// Heartbeat liveness (telemetry, kept beside the log rather than in it) and the
    /// device-status model.
    pub pool: sqlx::PgPool,
    pub js: Context,
    pub clock: SharedClock,
    known: Known,
}

/// Devices this worker has already found registered. A registration is never undone (the
/// stream's first event stays), so a device found once needs no second look, and every message
/// after a cabinet's first saves a query. Forgotten wholesale at [`Known::MOST`], which only
/// costs each device one more look.
#[derive(Default)]
struct Known(std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>);

impl Known {
    const MOST: usize = 100_000;

    fn contains(&self, device: &uuid::Uuid) -> bool {
        self.0.lock().expect("known devices").contains(device)
    }

    fn insert(&self, device: uuid::Uuid) {
        let mut known = self.0.lock().expect("known devices");
        if known.len() >= Self::MOST {
            known.clear();
        }
        known.insert(device);
    }
}

enum Outcome {
    Done,
    Refused { reason: String, detail: String },
    Retry(String),
}

impl Ingest {
    pub fn new(store: Arc<Store>, pool: sqlx::PgPool, js: Context, clock: SharedClock) -> Self {
        Self {
            store,
            pool,
            js,
            clock,
            known: Known::default(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        while !shutdown.is_cancelled() {
            if let Err(e) = this.clone().consume(&shutdown).await {
                tracing::warn!(error = %e, "ingest consumer unavailable");
                pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
        tracing::info!("ingest stopped");
    }

    async fn consume(
        self: Arc<Self>,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let config = streams::durable(CONSUMER, subjects::TELEMETRY_ALL);
        let consumer =
            streams::ensure_consumer(&self.js, subjects::TELEMETRY_STREAM, config).await?;
        let mut messages = consumer.messages().await?;
        let this = self.clone();
        let mut lanes = Lanes::new(IN_HAND, move |m: Message| {
            let this = this.clone();
            async move { this.handle(m).await }
        });
        // Per-device order matters (open before close); devices are independent, and none
        // waits for another's messages.
        let ended = loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                permit = lanes.ready() => permit,
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tokio::time::sleep(IDLE) => {
                    lanes.forget_idle();
                    continue;
                }
                next = messages.next() => next,
            };
            match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(m)) => {
                    let key = subjects::parse_telemetry_subject(&m.subject)
                        .map(|(d, _)| d.to_owned())
                        .unwrap_or_default();
                    lanes.push(key, m, permit);
                }
            }
        };
        lanes.drain().await;
        ended
    }

    async fn handle(&self, message: Message) {
        let span = tracing::info_span!("telemetry", subject = %message.subject);
        async {
            let outcome = self.process(&message).await;
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let result = match outcome {
                Outcome::Done => message.ack().await,
                Outcome::Refused { reason, detail } => {
                    tracing::info!(%reason, %detail, "telemetry refused");
                    self.dead_letter(&message, &reason, &detail).await
                }
                Outcome::Retry(why) if delivered >= streams::MAX_DELIVER => {
                    tracing::error!(%why, delivered, "telemetry given up after retries");
                    self.dead_letter(&message, "gave_up", &why).await
                }
                Outcome::Retry(why) => {
                    tracing::warn!(%why, delivered, "telemetry will be retried");
                    let delay = streams::BACKOFF
                        [(delivered as usize).saturating_sub(1).min(streams::BACKOFF.len() - 1)];
                    message.ack_with(AckKind::Nak(Some(delay))).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not settle telemetry message; it will be redelivered");
            }
        }
        .instrument(span)
        .await
    }

    /// Publishes to the dead-letter stream, then terminates the original. If the dead-letter
    /// publish fails the original is left unacknowledged, so it comes back rather than vanish.
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        detail: &str,
    ) -> Result<(), async_nats::Error> {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        metrics::counter!("latch_dead_letters_total", "consumer" => "telemetry", "reason" => reason.to_owned())
            .increment(1);
        let keep = message.payload.len().min(DEADLETTER_KEEP);
        let publish = PublishMessage::build()
            .payload(Bytes::copy_from_slice(&message.payload[..keep]))
            .message_id(format!("telemetry-{sequence}"))
            .header("Latch-Reason", reason)
            .header("Latch-Detail", truncate(detail, 512).as_str())
            .header("Latch-Subject", message.subject.as_str())
            .header("Latch-Stream-Sequence", sequence.to_string().as_str())
            .header("Latch-Size", message.payload.len().to_string().as_str());
        self.js
            .send_publish(subjects::deadletter("telemetry"), publish)
            .await?
            .await?;
        message.ack_with(AckKind::Term).await?;
        Ok(())
    }

    async fn process(&self, message: &Message) -> Outcome {
        let Some((device, kind)) = subjects::parse_telemetry_subject(&message.subject) else {
            return refused("bad_subject", message.subject.to_string());
        };
        let telemetry = match parse_telemetry(device, kind, &message.payload) {
            Ok(t) => t,
            Err(r) => return refused(r.reason, r.detail),
        };
        let device = telemetry.device_id.as_uuid();
        if !self.known.contains(&device) {
            let id = device.to_string();
            match self.store.exists("device", &id).await {
                Ok(true) => self.known.insert(device),
                Ok(false) => {
                    return refused("unknown_device", format!("device {id} is not registered"))
                }
                Err(e) => return Outcome::Retry(e.to_string()),
            }
        }
        self.apply(telemetry).await
    }

    async fn apply(&self, t: Telemetry) -> Outcome {
        let now = self.clock.now();
        let id = t.device_id.to_string();
        let kind = t.body.kind();
        let command = match t.body {
            TelemetryBody::Heartbeat { .. } => {
                let seen = sqlx::query(
                    "INSERT INTO device_liveness (device_id, last_seen, last_msg) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id) DO UPDATE
                        SET last_seen = GREATEST(device_liveness.last_seen, EXCLUDED.last_seen),
                            last_msg = EXCLUDED.last_msg",
                )
                .bind(t.device_id.as_uuid())
                .bind(now)
                .bind(&t.msg_id)
                .execute(&self.pool)
                .await;
                if let Err(e) = seen {
                    return Outcome::Retry(e.to_string());
                }
                let online =
                    device_status::queries::online(&self.pool, t.device_id.as_uuid()).await;
                match online {
                    Ok(Some(true)) => return Outcome::Done,
                    Ok(_) => DeviceCommand::ReportOnline { at: now },
                    Err(e) => return Outcome::Retry(e.to_string()),
                }
            }
            TelemetryBody::Door { state, request_id } => DeviceCommand::ReportDoor {
                state,
                request_id,
                at: now,
            },
            TelemetryBody::Fault {
                code,
                message,
                active: true,
            } => DeviceCommand::RaiseFault {
                code,
                message,
                at: now,
            },
            TelemetryBody::Fault { active: false, .. } => DeviceCommand::ClearFault { at: now },
            TelemetryBody::OpenRefused { request_id, reason } => {
                let failure = OpenFailure::Refused {
                    reason: reason.as_str().to_owned(),
                };
                let key = IdempotencyKey::new(&format!("device:{id}"), &t.msg_id, kind.as_bytes());
                let ctx = CommandContext::new(format!("device:{id}"))
                    .with_device(id.clone())
                    .with_idempotency(key);
                let step =
                    vending::fail_open(&self.store, &t.device_id, request_id, failure, now, &ctx)
                        .await;
                return step.into();
            }
            TelemetryBody::Weights {
                session_id,
                phase,
                weighing,
            } => {
                let step = vending::weights(
                    &self.store,
                    &t.device_id,
                    &t.msg_id,
                    session_id,
                    phase,
                    weighing,
                    now,
                )
                .await;
                return step.into();
            }
        };
        // The device's message id makes redelivery (or a device repeating itself) harmless.
        let key = IdempotencyKey::new(&format!("device:{id}"), &t.msg_id, kind.as_bytes());
        let ctx = CommandContext::new(format!("device:{id}"))
            .with_device(id.clone())
            .with_idempotency(key);
        let name = command.name();
        match self.store.devices.execute(&id, name, command, &ctx).await {
            Ok(_) => Outcome::Done,
            Err(CommandError::Rejected(e)) => refused(e.code(), e.to_string()),
            Err(CommandError::IdempotencyMismatch) => refused(
                "duplicate_msg_id",
                format!("msg_id {} was already used for another message", t.msg_id),
            ),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

impl From<vending::Step> for Outcome {
    fn from(step: vending::Step) -> Self {
        match step {
            vending::Step::Done => Outcome::Done,
            vending::Step::Refused(reason, detail) => refused(reason, detail),
            vending::Step::Retry(why) => Outcome::Retry(why),
        }
    }
}

fn refused(reason: &str, detail: impl Into<String>) -> Outcome {
    Outcome::Refused {
        reason: reason.to_owned(),
        detail: detail.into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}
