//! The log as auditors read it: in log order from any position, filtered, one JSON line per
//! event (every stored field, the metadata of who / which device / which request, the position
//! and the chain hash), and live follow.
//!
//! Follow reads only Postgres, the truth: the one relay leader writes log rows in position order,
//! a batch per transaction, so every row at or below a visible position is already visible and
//! `position > last` never skips one. A core-NATS subscription to the EVENTS subjects is only a
//! wake-up hint; without NATS the reader polls.

use crate::log::LogRow;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which events a reader wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// recorded_at >= since
    pub since: Option<DateTime<Utc>>,
    /// recorded_at < until
    pub until: Option<DateTime<Utc>>,
}

pub(crate) fn log_row(row: &PgRow) -> Result<LogRow, sqlx::Error> {
    let mut log_row = LogRow::from_event_row(row, row.try_get("position")?)?;
    let hash: Vec<u8> = row.try_get("hash")?;
    log_row.hash = hash
        .try_into()
        .map_err(|_| sqlx::Error::Decode("event_log.hash is not 32 bytes".into()))?;
    Ok(log_row)
}

/// Up to `limit` log rows matching `filter` with position in (after, up_to], in log order.
pub async fn page<'e>(
    db: impl PgExecutor<'e>,
    filter: &Filter,
    after: i64,
    up_to: Option<i64>,
    limit: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                e.event_version, e.payload::text AS payload_json, e.metadata::text AS metadata_json,
                e.recorded_at, l.hash
           FROM event_log l JOIN events e ON e.event_id = l.event_id
          WHERE l.position > $1 AND l.position <= $2
            AND ($3::text IS NULL OR e.aggregate_type = $3)
            AND ($4::text IS NULL OR e.aggregate_id = $4)
            AND ($5::text IS NULL OR e.event_type = $5)
            AND ($6::timestamptz IS NULL OR e.recorded_at >= $6)
            AND ($7::timestamptz IS NULL OR e.recorded_at < $7)
          ORDER BY l.position LIMIT $8",
    )
    .bind(after)
    .bind(up_to.unwrap_or(i64::MAX))
    .bind(&filter.aggregate_type)
    .bind(&filter.aggregate_id)
    .bind(&filter.event_type)
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(log_row).collect()
}

/// One aggregate's whole logged history, in order.
pub async fn aggregate(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                e.event_version, e.payload::text AS payload_json, e.metadata::text AS metadata_json,
                e.recorded_at, l.hash
           FROM events e JOIN event_log l ON l.event_id = e.event_id
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2
          ORDER BY e.sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(log_row).collect()
}

/// The log position of one aggregate's last logged event (0: none logged yet). An event
/// committed but not yet given a position is not counted: the relay publishes it later.
pub async fn aggregate_head(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<i64, sqlx::Error> {
    let (head,): (Option<i64>,) = sqlx::query_as(
        "SELECT max(l.position)
           FROM events e JOIN event_log l ON l.event_id = e.event_id
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(pool)
    .await?;
    Ok(head.unwrap_or(0))
}

/// How a history stream goes on once it has reached the head.
#[derive(Clone)]
pub struct Follow {
    /// Core NATS to wake up on EVENTS messages (a hint only; `None` polls).
    pub wake: Option<async_nats::Client>,
    /// Longest pause between looks at the log.
    pub poll: Duration,
    /// Ends the stream (process shutdown).
    pub stop: CancellationToken,
}

/// Rows read per query.
pub const PAGE: i64 = 2000;

/// Streams matching rows after `from` into `out` as NDJSON lines (one `Vec<u8>` per page),
/// up to the head, then, with `follow`, every new row as it is logged, until `out` is dropped or
/// `follow.stop` fires. Without `follow` the stream ends at the head as seen when it began.
pub async fn stream(
    pool: PgPool,
    filter: Filter,
    from: i64,
    follow: Option<Follow>,
    out: mpsc::Sender<Result<Vec<u8>, sqlx::Error>>,
) {
    let fixed_end = if follow.is_some() {
        None
    } else {
        match crate::log::head(&pool).await {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    };
    let mut wake = match follow.as_ref().and_then(|f| f.wake.clone()) {
        Some(client) => client
            .subscribe(latch_nats::subjects::EVENTS_ALL)
            .await
            .map_err(|e| tracing::debug!(error = %e, "follow runs without a wake-up hint"))
            .ok(),
        None => None,
    };
    let mut after = from;
    loop {
        // The head is read before the page: every row at or below it is already visible, so
        // once a page comes back short, nothing matching up to that head is left unread.
        let up_to = match fixed_end {
            Some(end) => end,
            None => match crate::log::head(&pool).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            },
        };
        let rows = match page(&pool, &filter, after, Some(up_to), PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let full = rows.len() as i64 == PAGE;
        if let Some(last) = rows.last() {
            after = last.position;
            let mut lines = Vec::with_capacity(rows.len() * 512);
            for row in &rows {
                lines.extend_from_slice(&row.to_message());
                lines.push(b'\n');
            }
            if out.send(Ok(lines)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        after = after.max(up_to);
        let Some(follow) = &follow else { return };
        let wait = async {
            match wake.as_mut() {
                Some(sub) => {
                    use futures::StreamExt;
                    let _ = tokio::time::timeout(follow.poll, sub.next()).await;
                }
                None => tokio::time::sleep(follow.poll).await,
            }
        };
        tokio::select! {
            _ = follow.stop.cancelled() => return,
            _ = out.closed() => return,
            _ = wait => {}
        }
    }
}
