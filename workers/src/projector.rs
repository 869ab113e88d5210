//! Runs a projection live: from the EVENTS stream when NATS is up, from the Postgres log when it
//! is not (and at start-up), exactly once in effect either way.

use crate::consume::{next_batch_lingering, pause, Next};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use latch_nats::{streams, subjects};
use latch_projections::projector::{apply_batch, catch_up, checkpoint, Passed};
use latch_projections::{LoggedEvent, Projection};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

const BATCH: usize = 500;
/// With nothing from NATS for this long, look at the Postgres log directly.
const IDLE: Duration = Duration::from_millis(500);
/// How long a batch may wait for company. Each batch is a transaction; under a steady stream
/// this turns hundreds of one-event transactions a second into a few dozen, for at most this
/// much added lag.
const LINGER: Duration = Duration::from_millis(10);
/// Most positions passed over (other aggregates' events) before the checkpoint is written
/// anyway, so a restart does not re-read a long run it has already seen.
const PASS_AT_MOST: i64 = 1000;
/// Longest a passed run waits before the checkpoint is written anyway. Readers of the
/// checkpoint (the `Latch-Read-Model-Lag` header, `/readyz`, push-back) would otherwise see a
/// projection that only skipped other aggregates' events as seconds behind under a slow stream.
const PASS_FOR_AT_MOST: Duration = Duration::from_secs(1);

pub async fn run<P: Projection>(
    pool: PgPool,
    js: Context,
    projection: P,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("projector", name = projection.name());
    async {
        while !shutdown.is_cancelled() {
            if let Err(e) = catch_up(&pool, &projection, BATCH as i64).await {
                tracing::error!(error = %e, "projection cannot advance");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
            if let Err(e) = consume(&pool, &js, &projection, &shutdown).await {
                tracing::warn!(error = %e, "event stream unavailable; reading the log instead");
                pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
        tracing::info!("projector stopped");
    }
    .instrument(span)
    .await
}

async fn consume<P: Projection>(
    pool: &PgPool,
    js: &Context,
    projection: &P,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let from = checkpoint(pool, projection.name()).await? as u64 + 1;
    let mut config = streams::durable(projection.name(), subjects::EVENTS_ALL);
    // Batches are applied whole and in order, so acknowledging the last message of a batch
    // acknowledges the batch: one ack per transaction instead of one per event.
    config.ack_policy = AckPolicy::All;
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: from,
    };
    let consumer = streams::ensure_consumer(js, subjects::EVENTS_STREAM, config).await?;
    let mut messages = consumer.messages().await?;
    let mut passed = Passed::at(from as i64 - 1);
    let mut passing_since: Option<Instant> = None;
    loop {
        let batch = match next_batch_lingering(&mut messages, BATCH, IDLE, LINGER, shutdown).await {
            Next::Stop => return Ok(()),
            Next::Failed(e) => return Err(e.into()),
            Next::Idle => {
                if passed.pending() > 0 {
                    apply_batch(pool, projection, &[], passed).await?;
                }
                passed = Passed::at(catch_up(pool, projection, BATCH as i64).await?);
                passing_since = None;
                continue;
            }
            Next::Batch(batch) => batch,
        };
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            match serde_json::from_slice::<LoggedEvent>(&message.payload) {
                Ok(event) => events.push(event),
                Err(e) => {
                    // Only the relay publishes here; the log still has the event, and the gap
                    // fill in apply_batch reads it from Postgres.
                    tracing::error!(error = %e, subject = %message.subject, "unreadable event message");
                }
            }
        }
        // Nothing wanted: acknowledge without a transaction; the checkpoint catches up with
        // the next wanted batch (or when idle).
        let absorbed = passed.absorb(projection, &events);
        if absorbed && passed.pending() > 0 {
            passing_since.get_or_insert_with(Instant::now);
        }
        let stale = passing_since.is_some_and(|since| since.elapsed() >= PASS_FOR_AT_MOST);
        if !(absorbed && passed.pending() < PASS_AT_MOST && !stale) {
            let started = Instant::now();
            let position = apply_batch(pool, projection, &events, passed).await?;
            passed = Passed::at(position);
            passing_since = None;
            crate::stages::finished(
                "apply",
                projection.name(),
                started.elapsed(),
                events.len(),
                events.last().map(|e| e.recorded_at),
            );
        }
        if let Some(last) = batch.last() {
            if let Err(e) = last.ack().await {
                tracing::debug!(error = %e, "ack lost; the redelivery will be skipped");
            }
        }
    }
}
