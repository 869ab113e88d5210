//! The loop shared by the process managers and notifiers that react to committed events: one
//! durable JetStream consumer on the EVENTS stream with one filter subject (nats-server 2.9
//! takes only one per consumer), each event handled and acked only after its effect is
//! recorded, so a crash in between is repaired by redelivery. Handlers make a redelivery
//! harmless by keying what they do by the event id. Shaped after [`crate::locker_doors`].

use crate::consume::pause;
use async_nats::jetstream::{AckKind, Context, Message};
use futures::stream::{FuturesUnordered, StreamExt};
use latch_nats::{streams, subjects};
use latch_projections::LoggedEvent;
use std::collections::{HashMap, VecDeque};
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
    // One lane per aggregate: an aggregate's events are handled in order, different aggregates'
    // side by side, so one slow handling (a third party, a retried command) holds up only its
    // own aggregate. The lanes borrow the handler, so they are futures here, not tasks.
    let mut running = FuturesUnordered::new();
    let mut busy: HashMap<String, VecDeque<Message>> = HashMap::new();
    let mut in_hand = 0usize;
    let mut failed = None;
    loop {
        if running.is_empty() && (failed.is_some() || shutdown.is_cancelled()) {
            return failed.map_or(Ok(()), Err);
        }
        let take = failed.is_none() && in_hand < IN_HAND && !shutdown.is_cancelled();
        tokio::select! {
            biased;
            Some((key, done, result)) = running.next(), if !running.is_empty() => {
                in_hand -= done;
                if let Err(e) = result {
                    failed.get_or_insert(e);
                }
                // Its queue gathered while it ran: the next run of the lane takes all of it.
                match busy.get_mut(&key).map(std::mem::take) {
                    Some(queue) if !queue.is_empty() && failed.is_none() => {
                        running.push(lane(js, name, handler, key, queue));
                    }
                    // Left unsettled after a failure: they come back as redeliveries.
                    dropped => {
                        in_hand -= dropped.map_or(0, |queue| queue.len());
                        busy.remove(&key);
                    }
                }
            }
            _ = shutdown.cancelled(), if take => {}
            _ = tokio::time::sleep(IDLE), if take => {}
            next = messages.next(), if take => match next {
                None => failed = Some("the message stream ended".into()),
                Some(Err(e)) => failed = Some(e.into()),
                Some(Ok(message)) => {
                    in_hand += 1;
                    let key = lane_key(&message);
                    match busy.get_mut(&key) {
                        Some(queue) => queue.push_back(message),
                        None => {
                            busy.insert(key.clone(), VecDeque::new());
                            running.push(lane(js, name, handler, key, VecDeque::from([message])));
                        }
                    }
                }
            },
        }
    }
}

/// Most event messages taken and not yet settled, across all lanes.
const IN_HAND: usize = 64;
/// How often an idle consumer looks at the shutdown token again.
const IDLE: Duration = Duration::from_secs(5);

/// The lane an event message belongs to: its aggregate, from the subject
/// (`latch.events.<type>.<event>.<id>`), or the whole subject when it does not parse.
fn lane_key(message: &Message) -> String {
    let subject = message.subject.as_str();
    match subject.split('.').collect::<Vec<_>>().as_slice() {
        ["latch", "events", aggregate_type, _event, id] => format!("{aggregate_type}.{id}"),
        _ => subject.to_owned(),
    }
}

/// Handles `queue` in order; stops at the first failure (the rest come back as redeliveries).
/// Returns the lane's key, how many messages it took off the count in hand, and the outcome.
async fn lane<H: EventHandler>(
    js: &Context,
    name: &str,
    handler: &H,
    key: String,
    queue: VecDeque<Message>,
) -> (String, usize, Result<(), async_nats::Error>) {
    let taken = queue.len();
    for message in queue {
        if let Err(e) = settle(js, name, handler, message).await {
            return (key, taken, Err(e));
        }
    }
    (key, taken, Ok(()))
}

/// One event message: handled, then acked, retried later or dead-lettered.
async fn settle<H: EventHandler>(
    js: &Context,
    name: &str,
    handler: &H,
    message: Message,
) -> Result<(), async_nats::Error> {
    let event: LoggedEvent = match serde_json::from_slice(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(consumer = name, error = %e, subject = %message.subject, "unreadable event message skipped");
            return message.ack().await;
        }
    };
    let span = tracing::info_span!("event", consumer = name, position = event.position, event_id = %event.event_id, aggregate = %event.aggregate_id);
    match handler.handle(&event).instrument(span).await {
        Ok(Outcome::Done) => message.ack().await,
        Ok(Outcome::Later(why)) => {
            // Later attempts wait longer; past the consumer's max_deliver the server would drop
            // the message silently, so the last attempt dead-letters it.
            let attempt = message.info().map_or(1, |i| i.delivered).max(1);
            if attempt >= streams::MAX_DELIVER {
                return dead_letter(js, name, &message, &why, attempt).await;
            }
            let delay = Duration::from_millis(500 * attempt as u64);
            tracing::info!(consumer = name, position = event.position, %why, ?delay, "retrying later");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Ok(Outcome::Unanswered(why)) => {
            let attempt = message.info().map_or(1, |i| i.delivered).max(1);
            if attempt >= MAX_DELIVER_UNANSWERED {
                return dead_letter(js, name, &message, &why, attempt).await;
            }
            let delay = handler.unanswered_pause(attempt);
            tracing::info!(consumer = name, position = event.position, %why, attempt, ?delay, "unanswered; redelivering later");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        Err(e) => {
            tracing::warn!(consumer = name, error = %e, position = event.position, "not recorded; will retry");
            Err(e.into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use latch_nats::server::NatsServer;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// Holds aggregate `a`'s first event until told, and records what it handled.
    struct Gate {
        open: Notify,
        seen: Mutex<Vec<String>>,
    }

    impl EventHandler for Gate {
        async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
            if event.aggregate_id == "a" && event.sequence == 1 {
                self.open.notified().await;
            }
            let what = format!("{}{}", event.aggregate_id, event.sequence);
            self.seen.lock().unwrap().push(what);
            Ok(Outcome::Done)
        }
    }

    fn event(position: i64, aggregate_id: &str, sequence: i64) -> LoggedEvent {
        LoggedEvent {
            position,
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: "test".into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            event_type: "Happened".into(),
            event_version: "1".into(),
            payload: serde_json::json!({}),
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
            hash: String::new(),
        }
    }

    async fn until(gate: &Gate, want: &[&str]) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let seen = gate.seen.lock().unwrap().clone();
                if seen.len() >= want.len() {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .map(|seen| assert_eq!(seen, want))
        .expect("handled in time");
    }

    #[tokio::test]
    async fn one_aggregate_waiting_holds_up_only_its_own_events() {
        let server = NatsServer::start().await.expect("nats-server");
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        streams::ensure_streams(&js).await.unwrap();
        for (position, id, sequence) in [(1, "a", 1), (2, "b", 1), (3, "a", 2), (4, "b", 2)] {
            let e = event(position, id, sequence);
            let subject = subjects::event("test", "Happened", id);
            js.publish(subject, serde_json::to_vec(&e).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let gate = Gate {
            open: Notify::new(),
            seen: Mutex::default(),
        };
        let shutdown = CancellationToken::new();
        let consumer = run(
            js.clone(),
            "lanes-test",
            "latch.events.test.>".into(),
            &gate,
            shutdown.clone(),
        );
        let check = async {
            // b's events go by while a's first waits; a's second waits behind it.
            until(&gate, &["b1", "b2"]).await;
            gate.open.notify_one();
            until(&gate, &["b1", "b2", "a1", "a2"]).await;
            shutdown.cancel();
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(consumer, check)
        })
        .await
        .expect("consumer stopped");
    }
}
