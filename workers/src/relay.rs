//! The relay: every committed event, once, in order, never skipped (DESIGN.md section 2).
//!
//! Two steps, each safe to crash in:
//! 1. **Sequencing** (Postgres only): read committed events below the transaction horizon after
//!    the last one given a position, assign the next dense positions, extend the hash chain and
//!    insert the `event_log` rows, all in one transaction on the leader's own connection.
//! 2. **Publishing**: send log rows after the EVENTS stream's last sequence, with
//!    `Nats-Msg-Id` = event id and `Nats-Expected-Last-Sequence` = position - 1, so the stream
//!    sequence is the log position or the publish is refused.
//!
//! Only the holder of a session advisory lock relays; another instance waits on the lock and
//! takes over when the leader's connection goes away.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use bytes::Bytes;
use latch_nats::subjects;
use latch_projections::log::{self, LogRow, GENESIS};
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Sequenced batches waiting for the publisher, and events it keeps at most.
const HANDOFF_BATCHES: usize = 16;
const MAX_CACHED: usize = 50_000;

/// Longest a sequencing or publishing step may take before it is abandoned.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Advisory lock key of the relay leader ("latch" in ASCII, then 1).
pub const LEADER_LOCK: i64 = 0x6c61_7463_6800_0001;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Pause between polls when there was nothing to do.
    pub poll: Duration,
    pub batch: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(5),
            batch: 5000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error("{0} made no progress in time")]
    Stalled(&'static str),
    #[error(
        "EVENTS stream is at sequence {stream} but the log only reaches {log}: refusing to publish"
    )]
    StreamAhead { stream: u64, log: i64 },
    #[error(
        "EVENTS stream diverged from the log at sequence {sequence}: the log has event {expected} there, \
         the stream {found}: refusing to publish"
    )]
    Diverged {
        sequence: u64,
        expected: uuid::Uuid,
        found: String,
    },
}

impl RelayError {
    /// The stream holds what the log does not: publishing on would put events at the wrong
    /// sequences, so only an operator's `latch relay reconcile` may go on from here.
    pub fn is_divergence(&self) -> bool {
        matches!(self, Self::StreamAhead { .. } | Self::Diverged { .. })
    }
}

pub async fn run(pool: PgPool, js: Context, config: RelayConfig, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let conn = match pool.acquire().await {
            // Detached: the advisory lock must live and die with this one connection.
            Ok(conn) => conn.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot reach postgres");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let leading = lead(conn, &pool, &js, &config, &shutdown);
        match leading.instrument(tracing::info_span!("relay")).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "relay lost its footing; starting over");
                pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
    }
    tracing::info!("relay stopped");
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

async fn lead(
    mut conn: PgConnection,
    pool: &PgPool,
    js: &Context,
    config: &RelayConfig,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    loop {
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if got {
            break;
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        pause(shutdown, Duration::from_millis(500)).await;
    }
    tracing::info!("relay is the leader");
    // The sequencing read must walk the (tx_id, id) index in order. Right after a bulk load,
    // before autovacuum has analyzed the table, the planner may prefer a bitmap scan and an
    // on-disk sort that is ten times slower; this connection runs nothing else.
    sqlx::query("SET enable_sort = off")
        .execute(&mut conn)
        .await?;
    // Sequencing and publishing run apart, so a slow or absent NATS never holds back the log.
    let leading = shutdown.child_token();
    // Freshly sequenced batches go straight to the publisher; it reads the log only when it
    // has to (after a restart, or when it fell behind and batches were dropped).
    let (handoff, batches) = mpsc::channel(HANDOFF_BATCHES);
    let publisher = tokio::spawn(
        publish_loop(
            pool.clone(),
            js.clone(),
            config.clone(),
            batches,
            leading.clone(),
        )
        .in_current_span(),
    );
    let result = sequence_loop(&mut conn, config, &handoff, &leading).await;
    leading.cancel();
    let _ = publisher.await;
    // Closing the connection releases the lock for a standby relay.
    conn.close().await.ok();
    result
}

async fn sequence_loop(
    conn: &mut PgConnection,
    config: &RelayConfig,
    handoff: &mpsc::Sender<Vec<LogRow>>,
    leading: &CancellationToken,
) -> Result<(), RelayError> {
    while !leading.is_cancelled() {
        // A statement that hangs means a connection we can no longer trust: give up the lead.
        match tokio::time::timeout(STEP_TIMEOUT, sequence_batch(conn, config.batch)).await {
            Ok(Ok(batch)) if batch.is_empty() => pause(leading, config.poll).await,
            Ok(Ok(batch)) => {
                // A full hand-off only costs the publisher a read from the log.
                let _ = handoff.try_send(batch);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(RelayError::Stalled("sequencing")),
        }
    }
    Ok(())
}

async fn publish_loop(
    pool: PgPool,
    js: Context,
    config: RelayConfig,
    mut batches: mpsc::Receiver<Vec<LogRow>>,
    leading: CancellationToken,
) {
    let mut stream_last: Option<u64> = None;
    let mut cache = VecDeque::new();
    while !leading.is_cancelled() {
        while let Ok(batch) = batches.try_recv() {
            cache.extend(batch);
        }
        if cache.len() > MAX_CACHED {
            cache.clear();
        }
        let step = publish_pending(&pool, &js, &mut stream_last, config.batch, &mut cache);
        match tokio::time::timeout(STEP_TIMEOUT, step).await {
            Ok(Ok(0)) => {
                tokio::select! {
                    _ = leading.cancelled() => {}
                    batch = batches.recv() => cache.extend(batch.unwrap_or_default()),
                    _ = tokio::time::sleep(config.poll * 20) => {}
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_divergence() => {
                if let Err(db) = log::raise_relay_alarm(&pool, &e.to_string()).await {
                    tracing::warn!(error = %db, "the alarm could not be recorded");
                }
                tracing::error!(error = %e, alarm = "events_stream_diverged",
                    "EVENTS no longer mirrors the log; nothing more is published until an operator runs `latch relay reconcile`");
                stream_last = None;
                pause(&leading, Duration::from_secs(5)).await;
            }
            Ok(Err(e)) => {
                // Postgres stays the truth: the stream catches up from the log when NATS is back.
                tracing::warn!(error = %e, "publishing paused");
                stream_last = None;
                pause(&leading, Duration::from_millis(500)).await;
            }
            Err(_) => {
                tracing::warn!("publishing stalled; re-reading the stream state");
                stream_last = None;
            }
        }
    }
}

/// Gives the next committed events their log positions. Returns how many.
pub async fn sequence_batch(
    conn: &mut PgConnection,
    batch: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let started = std::time::Instant::now();
    let mut tx = conn.begin().await?;
    let last = sqlx::query(
        "SELECT position, tx_id::text AS tx_id, event_row_id, hash FROM event_log
          ORDER BY position DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (mut position, cursor_tx, cursor_id, mut prev) = match last {
        Some(row) => (
            row.try_get::<i64, _>("position")?,
            row.try_get::<String, _>("tx_id")?,
            row.try_get::<i64, _>("event_row_id")?,
            row.try_get::<Vec<u8>, _>("hash")?,
        ),
        None => (0, "0".to_owned(), 0, GENESIS.to_vec()),
    };
    // Below the horizon every transaction has ended, so nothing can still appear before the
    // cursor: a transaction that commits late holds the horizon back until it is done.
    let rows = sqlx::query(
        "SELECT id, event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload_json, metadata::text AS metadata_json, recorded_at,
                tx_id::text AS tx_text
           FROM events
          WHERE (tx_id, id) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.tx_id, events.id  -- the xid8 columns: as text, 10 sorts before 9
          LIMIT $3",
    )
    .bind(&cursor_tx)
    .bind(cursor_id)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let n = rows.len();
    let read = started.elapsed();
    let mut logged = Vec::with_capacity(n);
    let (mut positions, mut ids, mut txs, mut row_ids, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in &rows {
        position += 1;
        let mut event = LogRow::from_event_row(row, position)?;
        let hash = log::chain_hash(&prev, &event.chain_bytes());
        positions.push(position);
        ids.push(event.event_id);
        txs.push(row.try_get::<String, _>("tx_text")?);
        row_ids.push(row.try_get::<i64, _>("id")?);
        prevs.push(std::mem::replace(&mut prev, hash.to_vec()));
        hashes.push(hash.to_vec());
        event.hash = hash;
        logged.push(event);
    }
    let chained = started.elapsed();
    sqlx::query(
        "INSERT INTO event_log (position, event_id, tx_id, event_row_id, prev_hash, hash)
         SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[]::xid8[], $4::bigint[],
                              $5::bytea[], $6::bytea[])",
    )
    .bind(&positions)
    .bind(&ids)
    .bind(&txs)
    .bind(&row_ids)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::stages::finished(
        "sequence",
        "",
        started.elapsed(),
        n,
        logged.last().map(|e: &LogRow| e.recorded_at),
    );
    tracing::debug!(
        count = n,
        head = position,
        read_ms = read.as_millis() as u64,
        chain_ms = (chained - read).as_millis() as u64,
        write_ms = (started.elapsed() - chained).as_millis() as u64,
        "sequenced"
    );
    Ok(logged)
}

/// The EVENTS stream's last sequence, once it is known to hold the log's own event there.
///
/// Whenever the relay (re)reads where the stream stands, it checks the message at that
/// sequence against the log: a message published from outside, or a stream ahead of the log,
/// would otherwise make it skip a log position (it would take the stranger's sequence for one
/// it published). A stream that is gone is created again and filled from the log; one whose
/// tail was purged cannot be checked there and is taken at its word.
pub async fn stream_tail(pool: &PgPool, js: &Context) -> Result<u64, RelayError> {
    let nats = |e: &dyn std::fmt::Display| RelayError::Nats(e.to_string());
    let mut stream = match js.get_stream(subjects::EVENTS_STREAM).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "no EVENTS stream; creating it to fill it from the log");
            js.create_stream(latch_nats::streams::events_stream())
                .await
                .map_err(|e| nats(&e))?
        }
    };
    let info = stream.info().await.map_err(|e| nats(&e))?;
    let last = info.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let head = log::head(pool).await?;
    if last as i64 > head {
        return Err(RelayError::StreamAhead {
            stream: last,
            log: head,
        });
    }
    let expected = log::read_rows(pool, last as i64 - 1, Some(last as i64), 1)
        .await?
        .pop()
        .map(|row| row.event_id)
        .ok_or(RelayError::StreamAhead {
            stream: last,
            log: head,
        })?;
    match stream.get_raw_message(last).await {
        Ok(message) => {
            let found = message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|id| id.to_string());
            if found.as_deref() == Some(expected.to_string().as_str()) {
                Ok(last)
            } else {
                Err(RelayError::Diverged {
                    sequence: last,
                    expected,
                    found: found.map_or_else(
                        || format!("a message without a Nats-Msg-Id on {}", message.subject),
                        |id| format!("message {id} on {}", message.subject),
                    ),
                })
            }
        }
        Err(e)
            if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
        {
            Ok(last)
        }
        Err(e) => Err(nats(&e)),
    }
}

/// Publishes log rows the EVENTS stream does not have yet. Returns how many.
pub async fn publish_pending(
    pool: &PgPool,
    js: &Context,
    stream_last: &mut Option<u64>,
    batch: i64,
    cache: &mut VecDeque<LogRow>,
) -> Result<usize, RelayError> {
    let last = match *stream_last {
        Some(s) => s,
        None => {
            let s = stream_tail(pool, js).await?;
            log::clear_relay_alarm(pool).await?;
            *stream_last = Some(s);
            s
        }
    };
    while cache.front().is_some_and(|e| e.position as u64 <= last) {
        cache.pop_front();
    }
    let events = if cache.front().is_some_and(|e| e.position as u64 == last + 1) {
        // Take the consecutive run; anything after a gap is dropped and read from the log.
        let mut run = Vec::with_capacity(cache.len().min(batch as usize));
        while run.len() < batch as usize {
            match cache.pop_front() {
                Some(e) if e.position as u64 == last + 1 + run.len() as u64 => run.push(e),
                Some(_) => {
                    cache.clear();
                    break;
                }
                None => break,
            }
        }
        run
    } else {
        log::read_rows(pool, last as i64, None, batch).await?
    };
    if events.is_empty() {
        let head = log::head(pool).await?;
        if (last as i64) > head {
            return Err(RelayError::StreamAhead {
                stream: last,
                log: head,
            });
        }
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut acks = Vec::with_capacity(events.len());
    for event in &events {
        let subject = subjects::event(
            &event.aggregate_type,
            &event.event_type,
            &event.aggregate_id,
        );
        let body = event.to_message();
        let message = PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(event.event_id.to_string())
            .expected_last_sequence(event.position as u64 - 1);
        let ack = js
            .send_publish(subject, message)
            .await
            .map_err(|e| RelayError::Nats(e.to_string()))?;
        acks.push((event.position, ack));
    }
    let mut done = 0;
    for (position, ack) in acks {
        match ack.await {
            Ok(ack) if ack.sequence == position as u64 => {
                *stream_last = Some(ack.sequence);
                done += 1;
            }
            Ok(ack) => {
                *stream_last = None;
                return Err(RelayError::Nats(format!(
                    "stream sequence {} for log position {position}",
                    ack.sequence
                )));
            }
            Err(e) => {
                *stream_last = None;
                if e.kind() == PublishErrorKind::WrongLastSequence {
                    tracing::warn!(
                        position,
                        "stream moved under the relay; re-reading its state"
                    );
                }
                return Err(RelayError::Nats(e.to_string()));
            }
        }
    }
    crate::stages::finished(
        "publish",
        "",
        started.elapsed(),
        done,
        events.last().map(|e| e.recorded_at),
    );
    tracing::debug!(count = done, "published");
    Ok(done)
}
