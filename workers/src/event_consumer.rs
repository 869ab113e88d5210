//! The loop shared by the process managers and notifiers that react to committed events: one
//! durable JetStream consumer on the EVENTS stream with one filter subject (nats-server 2.9
//! takes only one per consumer), each event handled and acked only after its effect is
//! recorded, so a crash in between is repaired by redelivery. Handlers make a redelivery
//! harmless by keying what they do by the event id. Shaped after [`crate::locker_doors`].

use crate::consume::{next_batch, pause, Next};
use async_nats::jetstream::{AckKind, Context};
use latch_nats::{streams, subjects};
use latch_projections::LoggedEvent;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What to do with one event message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Done, or nothing to do: ack.
    Done,
    /// Cannot be done now (a third party refused, a conflict): try again after a pause.
    Later(String),
    /// The party it is for did not answer (a device offline): redelivered after
    /// [`EventHandler::unanswered_pause`] until it answers, not dead-lettered after
    /// `MAX_DELIVER` attempts like [`Outcome::Later`] (only at the consumer's last delivery,
    /// so that the server never drops it silently).
    Unanswered(String),
}

/// The default pause before redelivering an unanswered event: doubling from half a second to
/// `cap`.
pub fn doubling_pause(attempt: i64, cap: Duration) -> Duration {
    let doublings = attempt.clamp(1, 20) as u32 - 1;
    Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(cap)
}

/// One event's handling. `Err` is a passing failure (Postgres away): the message stays unacked
/// and comes back after the ack wait.
pub trait EventHandler: Send + Sync {
    fn handle(
        &self,
        event: &LoggedEvent,
    ) -> impl std::future::Future<Output = Result<Outcome, String>> + Send;

    /// The pause before delivery `attempt + 1` of an event answered [`Outcome::Unanswered`].
    fn unanswered_pause(&self, attempt: i64) -> Duration {
        doubling_pause(attempt, Duration::from_secs(30))
    }
}

/// Deliveries of one event before the server would stop offering it: an unanswered event is
/// dead-lettered at the last one.
pub const MAX_DELIVER_UNANSWERED: i64 = 10_000;

/// Consumes `filter` on EVENTS as durable `name` with `handler` until `shutdown`.
pub async fn run<H: EventHandler>(
    js: Context,
    name: &str,
    filter: String,
    handler: &H,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&js, name, &filter, handler, &shutdown).await {
            tracing::warn!(consumer = name, error = %e, "event consumer unavailable");
            pause(&shutdown, Duration::from_millis(500)).await;
        }
    }
    tracing::info!(consumer = name, "stopped");
}

async fn consume<H: EventHandler>(
    js: &Context,
    name: &str,
    filter: &str,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    // Redelivered for as long as it takes: a message that comes back because Postgres was away
    // must not be dropped by the server after a few tries (at the last backoff pause, 10,000
    // deliveries are more than nine days; nats-server 2.9 refuses "unlimited" together with a
    // backoff list). A handler that keeps answering "later" is dead-lettered below instead,
    // after `MAX_DELIVER` attempts.
    let config = async_nats::jetstream::consumer::pull::Config {
        max_deliver: MAX_DELIVER_UNANSWERED,
        ..streams::durable(name, filter)
    };
    let consumer = streams::ensure_consumer(js, subjects::EVENTS_STREAM, config).await?;
    let mut messages = consumer.messages().await?;
    loop {
        let batch = match next_batch(&mut messages, 100, Duration::from_secs(5), shutdown).await {
            Next::Stop => return Ok(()),
            Next::Failed(e) => return Err(e.into()),
            Next::Idle => continue,
            Next::Batch(batch) => batch,
        };
        for message in batch {
            let event: LoggedEvent = match serde_json::from_slice(&message.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(consumer = name, error = %e, subject = %message.subject, "unreadable event message skipped");
                    message.ack().await?;
                    continue;
                }
            };
            let span = tracing::info_span!("event", consumer = name, position = event.position, event_id = %event.event_id, aggregate = %event.aggregate_id);
            match handler.handle(&event).instrument(span).await {
                Ok(Outcome::Done) => message.ack().await?,
                Ok(Outcome::Later(why)) => {
                    // Later attempts wait longer; past the consumer's max_deliver the server
                    // would drop the message silently, so the last attempt dead-letters it.
                    let attempt = message.info().map_or(1, |i| i.delivered).max(1);
                    if attempt >= streams::MAX_DELIVER {
                        dead_letter(js, name, &message, &why, attempt).await?;
                        continue;
                    }
                    let delay = Duration::from_millis(500 * attempt as u64);
                    tracing::info!(consumer = name, position = event.position, %why, ?delay, "retrying later");
                    message.ack_with(AckKind::Nak(Some(delay))).await?;
                }
                Ok(Outcome::Unanswered(why)) => {
                    let attempt = message.info().map_or(1, |i| i.delivered).max(1);
                    if attempt >= MAX_DELIVER_UNANSWERED {
                        dead_letter(js, name, &message, &why, attempt).await?;
                        continue;
                    }
                    let delay = handler.unanswered_pause(attempt);
                    tracing::info!(consumer = name, position = event.position, %why, attempt, ?delay, "unanswered; redelivering later");
                    message.ack_with(AckKind::Nak(Some(delay))).await?;
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, position = event.position, "not recorded; will retry");
                    return Err(e.into());
                }
            }
        }
    }
}

/// Keeps an event this consumer gave up on in the DEADLETTER stream (`latch.dlq.<consumer>`,
/// with the reason), then terminates it; if that publish fails the event comes back later
/// instead of vanishing.
async fn dead_letter(
    js: &Context,
    name: &str,
    message: &async_nats::jetstream::Message,
    why: &str,
    attempts: i64,
) -> Result<(), async_nats::Error> {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    metrics::counter!("latch_dead_letters_total", "consumer" => name.to_owned(), "reason" => "gave_up")
        .increment(1);
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(message.payload.clone())
        .message_id(format!("{name}-{sequence}"))
        .header("Latch-Reason", "gave_up")
        .header(
            "Latch-Detail",
            why.chars().take(512).collect::<String>().as_str(),
        )
        .header("Latch-Subject", message.subject.as_str())
        .header("Latch-Stream-Sequence", sequence.to_string().as_str())
        .header("Latch-Attempts", attempts.to_string().as_str());
    let stored = async {
        js.send_publish(subjects::deadletter(name), publish)
            .await?
            .await?;
        Ok::<(), async_nats::Error>(())
    }
    .await;
    match stored {
        Ok(()) => {
            tracing::error!(consumer = name, sequence, %why, attempts, "gave up; event dead-lettered");
            message.ack_with(AckKind::Term).await
        }
        Err(e) => {
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                .await?;
            Err(e)
        }
    }
}

/// The context of a command that follows from `event`: caused by it, in its correlation, and
/// keyed by its id (plus `step` when one event leads to more than one command), so a
/// redelivered event replays the first outcome instead of acting twice.
pub fn context_for(
    consumer: &str,
    event: &LoggedEvent,
    step: &str,
) -> latch_domain::store::CommandContext {
    use latch_domain::store::{CommandContext, IdempotencyKey};
    let key = if step.is_empty() {
        event.event_id.to_string()
    } else {
        format!("{}:{step}", event.event_id)
    };
    let mut ctx = CommandContext::new(format!("system:{consumer}")).with_idempotency(
        IdempotencyKey::new(consumer, &key, event.aggregate_id.as_bytes()),
    );
    ctx.causation_id = event.event_id;
    if let Some(correlation) = event
        .metadata
        .get("correlation_id")
        .and_then(|c| c.as_str())
        .and_then(|c| uuid::Uuid::parse_str(c).ok())
    {
        ctx.correlation_id = correlation;
    }
    ctx
}
