//! Walks the hash chain over the log from genesis and reports the first position where the
//! stored events and the chain disagree, or that all is intact, with the head hash.
//!
//! Every link is recomputed from the stored event (`LogRow::chain_bytes`, the jsonb text form);
//! stored hashes are compared, never trusted. What each kind of tampering looks like:
//! - a changed payload or metadata: that position no longer hashes to its stored hash;
//! - a deleted event: its log row points at nothing; a deleted log row: a missing position;
//! - two rows reordered: the first of them hashes differently at its new position;
//! - a forged event spliced in: its position's link does not extend the one before; an event
//!   slipped into `events` behind the relay's cursor without a log row: it is named as unlogged.
//!
//! A superuser who rewrites history AND recomputes every later link passes this walk; that is
//! what signed checkpoints are for ([`crate::audit::signing`]).

use crate::log::{chain_hash, LogRow, GENESIS};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{PgPool, Row};

/// Where and how the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first log position that is wrong (for an unlogged event: the position it would have
    /// been given, i.e. the first one sequenced after it).
    pub position: i64,
    /// Stable: `position_missing`, `event_missing`, `link_broken`, `hash_mismatch`,
    /// `unlogged_event`.
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Log positions checked (all of them when intact).
    pub count: i64,
    /// The last position checked.
    pub head_position: i64,
    /// The chain hash recomputed at `head_position`, hex (genesis: 64 zeros).
    pub head_hash: String,
    pub problem: Option<Problem>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "intact: {} events, head position {}, head hash {}",
                self.count, self.head_position, self.head_hash
            ),
            Some(p) => write!(
                f,
                "BROKEN at position {} ({}): {}",
                p.position, p.kind, p.detail
            ),
        }
    }
}

/// Walks the chain from genesis up to `up_to` (the whole log when `None`), stopping at the
/// first problem. `progress` is called every 10,000 positions with the position reached.
pub async fn walk(
    pool: &PgPool,
    up_to: Option<i64>,
    progress: &(dyn Fn(i64) + Send + Sync),
) -> Result<Report, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query(
        "SELECT l.position, l.prev_hash, l.hash AS stored_hash, l.event_id AS log_event_id,
                e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                e.event_version, e.payload::text AS payload_json,
                e.metadata::text AS metadata_json, e.recorded_at
           FROM event_log l LEFT JOIN events e ON e.event_id = l.event_id
          WHERE l.position <= $1
          ORDER BY l.position",
    )
    .bind(up_to.unwrap_or(i64::MAX))
    .fetch(&mut *conn);
    let mut running = GENESIS;
    let mut expected = 1i64;
    let mut count = 0i64;
    let report = |count, position, hash: &[u8; 32], problem| Report {
        count,
        head_position: position,
        head_hash: hex::encode(hash),
        problem,
    };
    while let Some(row) = rows.try_next().await? {
        let position: i64 = row.try_get("position")?;
        let last_good = expected - 1;
        if position != expected {
            let problem = Problem {
                position: expected,
                kind: "position_missing",
                detail: format!("position {expected} is missing; the log goes on at {position}"),
            };
            return Ok(report(count, last_good, &running, Some(problem)));
        }
        let present: Option<uuid::Uuid> = row.try_get("event_id")?;
        if present.is_none() {
            let id: uuid::Uuid = row.try_get("log_event_id")?;
            let problem = Problem {
                position,
                kind: "event_missing",
                detail: format!("the event logged here ({id}) is no longer in events"),
            };
            return Ok(report(count, last_good, &running, Some(problem)));
        }
        let prev: Vec<u8> = row.try_get("prev_hash")?;
        if prev != running {
            let problem = Problem {
                position,
                kind: "link_broken",
                detail: format!(
                    "prev_hash {} does not extend the chain at {} ({})",
                    hex::encode(&prev),
                    last_good,
                    hex::encode(running)
                ),
            };
            return Ok(report(count, last_good, &running, Some(problem)));
        }
        let event = LogRow::from_event_row(&row, position)?;
        let computed = chain_hash(&running, &event.chain_bytes());
        let stored: Vec<u8> = row.try_get("stored_hash")?;
        if stored != computed {
            let problem = Problem {
                position,
                kind: "hash_mismatch",
                detail: format!(
                    "event {} ({}/{} #{} {}) hashes to {} but the chain says {}",
                    event.event_id,
                    event.aggregate_type,
                    event.aggregate_id,
                    event.sequence,
                    event.event_type,
                    hex::encode(computed),
                    hex::encode(&stored)
                ),
            };
            return Ok(report(count, last_good, &running, Some(problem)));
        }
        running = computed;
        count += 1;
        expected += 1;
        if position % 10_000 == 0 {
            progress(position);
        }
    }
    drop(rows);
    let head = expected - 1;
    if up_to.is_none() {
        if let Some(problem) = unlogged(&mut conn).await? {
            return Ok(report(count, head, &running, Some(problem)));
        }
    }
    Ok(report(count, head, &running, None))
}

/// An event in `events` that the relay's cursor has already passed but that has no log row:
/// it was slipped in behind the relay's back (or its log row was deleted along with the chain).
async fn unlogged(conn: &mut sqlx::PgConnection) -> Result<Option<Problem>, sqlx::Error> {
    let row = sqlx::query(
        "WITH cursor AS (SELECT tx_id, event_row_id FROM event_log ORDER BY position DESC LIMIT 1)
         SELECT e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                (SELECT min(l.position) FROM event_log l
                  WHERE (l.tx_id, l.event_row_id) > (e.tx_id, e.id)) AS would_be
           FROM events e, cursor c
          WHERE (e.tx_id, e.id) <= (c.tx_id, c.event_row_id)
            AND NOT EXISTS (SELECT 1 FROM event_log l WHERE l.event_id = e.event_id)
          ORDER BY e.tx_id, e.id LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: uuid::Uuid = row.try_get("event_id")?;
    let aggregate_type: String = row.try_get("aggregate_type")?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let sequence: i64 = row.try_get("sequence")?;
    let event_type: String = row.try_get("event_type")?;
    let would_be: Option<i64> = row.try_get("would_be")?;
    Ok(Some(Problem {
        position: would_be.unwrap_or(1),
        kind: "unlogged_event",
        detail: format!(
            "event {id} ({aggregate_type}/{aggregate_id} #{sequence} {event_type}) sits behind \
             the relay's cursor with no log position: it was inserted behind the relay's back"
        ),
    }))
}
