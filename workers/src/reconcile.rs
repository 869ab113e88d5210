//! `latch relay reconcile`: makes the EVENTS stream the log's mirror again.
//!
//! JetStream cannot cut a stream back to a sequence, and the relay will not publish past a
//! stream that holds what the log does not (DESIGN.md section 2). So the repair is to find how
//! far the stream still agrees with the log, record where each durable consumer stood, recreate
//! the stream, give every consumer back its place (never past the point of agreement, so
//! nothing it missed is skipped), and republish the log from position 1 with the relay's own
//! publisher, sequence == position.
//!
//! It runs as the relay leader (the advisory lock), so no relay publishes meanwhile: stop the
//! relay role first, or it refuses.

use crate::relay::{publish_pending, RelayError, LEADER_LOCK};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::Context;
use futures::TryStreamExt;
use latch_nats::{streams, subjects};
use latch_projections::log;
use sqlx::{Connection, PgPool};
use std::collections::VecDeque;

/// What a reconcile found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reconciled {
    /// The stream's last sequence before, and the log's head.
    pub stream_last: u64,
    pub log_head: i64,
    /// The highest sequence at which stream and log still agreed.
    pub agreed_through: u64,
    pub republished: usize,
    /// Each durable consumer and the stream sequence it starts from now.
    pub consumers: Vec<(String, u64)>,
}

/// Repairs EVENTS from the log (see the module header).
pub async fn reconcile(pool: &PgPool, js: &Context) -> Result<Reconciled, RelayError> {
    let nats = |e: &dyn std::fmt::Display| RelayError::Nats(e.to_string());
    let mut lock = pool.acquire().await?.detach();
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut lock)
        .await?;
    if !got {
        return Err(RelayError::Nats(
            "a relay is running (it holds the leader lock): stop the relay role, then reconcile"
                .into(),
        ));
    }
    let log_head = log::head(pool).await?;
    let mut stream = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .map_err(|e| nats(&e))?;
    let info = stream.info().await.map_err(|e| nats(&e))?.clone();
    let stream_last = info.state.last_sequence;
    let agreed_through = agreement(pool, &stream, stream_last.min(log_head.max(0) as u64)).await?;
    let mut places = Vec::new();
    let mut listed = stream.consumers();
    while let Some(c) = listed.try_next().await.map_err(|e| nats(&e))? {
        let start = c.ack_floor.stream_sequence.min(agreed_through) + 1;
        places.push((c.config, start));
    }
    tracing::warn!(
        stream_last,
        log_head,
        agreed_through,
        consumers = places.len(),
        "recreating EVENTS from the log"
    );
    js.delete_stream(subjects::EVENTS_STREAM)
        .await
        .map_err(|e| nats(&e))?;
    let stream = js
        .create_stream(streams::events_stream())
        .await
        .map_err(|e| nats(&e))?;
    let mut consumers = Vec::new();
    for (mut config, start) in places {
        let name = config.durable_name.clone().unwrap_or_default();
        config.deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: start,
        };
        // A worker that reconnected first made its own from its checkpoint: keep that one.
        if let Err(e) = stream.create_consumer(config).await {
            tracing::info!(consumer = %name, error = %e, "consumer not recreated");
        }
        consumers.push((name, start));
    }
    let mut republished = 0;
    let (mut last, mut cache) = (None, VecDeque::new());
    loop {
        let n = publish_pending(pool, js, &mut last, 5000, &mut cache).await?;
        if n == 0 {
            break;
        }
        republished += n;
    }
    log::clear_relay_alarm(pool).await?;
    lock.close().await.ok();
    Ok(Reconciled {
        stream_last,
        log_head,
        agreed_through,
        republished,
        consumers,
    })
}

/// The highest sequence up to which the stream holds the log's own events, by bisection: a
/// stranger shifts everything after it, so agreement is a prefix. Messages no longer in the
/// stream (purged) count as agreeing; they cannot tell otherwise.
async fn agreement(
    pool: &PgPool,
    stream: &async_nats::jetstream::stream::Stream,
    upto: u64,
) -> Result<u64, RelayError> {
    let agrees = |sequence: u64| async move {
        let expected = log::read_rows(pool, sequence as i64 - 1, Some(sequence as i64), 1)
            .await?
            .pop()
            .map(|row| row.event_id.to_string());
        Ok::<bool, RelayError>(match stream.get_raw_message(sequence).await {
            Ok(m) => {
                m.headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|id| id.to_string())
                    == expected
            }
            Err(_) => true,
        })
    };
    let (mut good, mut bad) = (0u64, upto + 1);
    if upto > 0 && agrees(upto).await? {
        return Ok(upto);
    }
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if agrees(mid).await? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(good)
}
