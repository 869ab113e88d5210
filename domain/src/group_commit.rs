//! Group commit for one-event commands: what concurrent commands append at the same moment goes
//! to Postgres as one multi-row INSERT in one transaction.
//!
//! A one-event command costs Postgres a statement and a commit (a WAL flush) of its own; under
//! concurrency those fixed costs, not the rows, are the bottleneck. Here a few appender tasks
//! take whatever rows are queued when they become free (never waiting for more: an idle system
//! sees no added latency) and insert them together with `ON CONFLICT DO NOTHING RETURNING`.
//! A row that does not come back lost its optimistic race and is reported as a conflict to its
//! own command only, exactly as a lone INSERT hitting the primary key would have been.
//!
//! Rows are independent, so sharing a transaction changes no command's atomicity. What does
//! not fit the scheme goes straight to the database instead: commands with several events (a
//! partial insert would break their all-or-nothing), and commands with an idempotency key (two
//! retries of one request in the same transaction would both pass the claim trigger). Two rows
//! for the same aggregate and sequence never share a batch, so each returned key names one
//! command. If the batch statement fails as a whole, each row is retried alone, so one bad row
//! cannot fail its neighbours.

use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot, Mutex};

/// Rows per batch at most.
const MAX_BATCH: usize = 256;
/// Batches in flight at once (each on its own pooled connection).
const APPENDERS: usize = 4;

/// One event row as the events table takes it.
#[derive(Debug, Clone)]
pub struct Row {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
}

/// What became of one row.
#[derive(Debug)]
pub enum Appended {
    Inserted,
    /// Another writer holds this aggregate's sequence number.
    Conflict,
}

type Job = (Row, oneshot::Sender<Result<Appended, sqlx::Error>>);

pub struct GroupCommit {
    pool: PgPool,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl GroupCommit {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            queue: OnceLock::new(),
        }
    }

    /// Appends one row, sharing a transaction with whatever else is queued at that moment.
    pub async fn append(&self, row: Row) -> Result<Appended, sqlx::Error> {
        let queue = self.queue.get_or_init(|| {
            // Started on first use, so building a store needs no runtime.
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..APPENDERS {
                tokio::spawn(appender(self.pool.clone(), rx.clone()));
            }
            tx
        });
        let (done, result) = oneshot::channel();
        queue
            .send((row, done))
            .map_err(|_| sqlx::Error::PoolClosed)?;
        result.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn appender(pool: PgPool, queue: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    let mut held: Vec<Job> = Vec::new();
    loop {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut keys = HashSet::new();
        let mut deferred = Vec::new();
        for job in held.drain(..) {
            if keys.insert(key(&job.0)) {
                batch.push(job);
            } else {
                deferred.push(job);
            }
        }
        held = deferred;
        // With rows held back from the last round, never wait for the queue: another appender
        // may be parked on it waiting for rows that only this one holds.
        let rx = if batch.is_empty() {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(job) => {
                    keys.insert(key(&job.0));
                    batch.push(job);
                }
                None => return,
            }
            Some(rx)
        } else {
            queue.try_lock().ok()
        };
        if let Some(mut rx) = rx {
            while batch.len() < MAX_BATCH {
                let Ok(job) = rx.try_recv() else { break };
                if keys.insert(key(&job.0)) {
                    batch.push(job);
                } else {
                    held.push(job);
                }
            }
        }
        run_batch(&pool, batch).await;
    }
}

fn key(row: &Row) -> (String, String, i64) {
    (
        row.aggregate_type.clone(),
        row.aggregate_id.clone(),
        row.sequence,
    )
}

async fn run_batch(pool: &PgPool, batch: Vec<Job>) {
    let rows: Vec<&Row> = batch.iter().map(|(r, _)| r).collect();
    match insert(pool, &rows).await {
        Ok(inserted) => {
            for (row, done) in batch {
                let outcome = if inserted.contains(&key(&row)) {
                    Appended::Inserted
                } else {
                    Appended::Conflict
                };
                let _ = done.send(Ok(outcome));
            }
        }
        Err(_) if batch.len() > 1 => {
            for (row, done) in batch {
                let _ = done.send(insert(pool, &[&row]).await.map(|inserted| {
                    if inserted.is_empty() {
                        Appended::Conflict
                    } else {
                        Appended::Inserted
                    }
                }));
            }
        }
        Err(e) => {
            if let Some((_, done)) = batch.into_iter().next() {
                let _ = done.send(Err(e));
            }
        }
    }
}

/// Inserts `rows` in one statement; returns the keys that went in.
async fn insert(
    pool: &PgPool,
    rows: &[&Row],
) -> Result<HashSet<(String, String, i64)>, sqlx::Error> {
    let mut types = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut sequences = Vec::with_capacity(rows.len());
    let mut event_types = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    let mut metadata = Vec::with_capacity(rows.len());
    for r in rows {
        types.push(r.aggregate_type.as_str());
        ids.push(r.aggregate_id.as_str());
        sequences.push(r.sequence);
        event_types.push(r.event_type.as_str());
        versions.push(r.event_version.as_str());
        payloads.push(&r.payload);
        metadata.push(&r.metadata);
    }
    let inserted: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
         ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING
         RETURNING aggregate_type, aggregate_id, sequence",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&event_types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().collect())
}
