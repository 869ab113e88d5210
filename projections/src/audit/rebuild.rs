//! `latch projections rebuild NAME`: a read model replayed from position 0 into a fresh table,
//! then swapped in; readers keep being served from the live table throughout.
//!
//! 1. `NAME__rebuild` is created like the live table and filled by folding the log from
//!    position 0 to the head (one ordered read, rows folded in memory with the projection's own
//!    pure `evolve`, written in large batches).
//! 2. It catches up to the new head without locks, as often as that moves it.
//! 3. In one transaction: the projection's checkpoint row is locked `FOR UPDATE` (the live
//!    projector takes the same lock to apply a batch, so it waits here and cannot write in
//!    between), the last few events are folded in, the live table is dropped, the rebuilt one is
//!    renamed into its place (with its indexes renamed back), and the checkpoint is set to the
//!    last position folded. On commit the live projector resumes from that checkpoint.
//!
//! Every event of the model's aggregate type must parse, through the upcasters: an unknown event
//! type or version stops the rebuild with an error that names it (and the live table is left as
//! it was).

use crate::device_status;
use crate::device_status::DeviceStatusProjection;
use crate::lockers::{self, LockersProjection};
use crate::orders;
use crate::orders::OrdersProjection;
use crate::projector::Model;
use crate::projector::Projection;
use crate::qr_login_status;
use crate::qr_login_status::QrLoginStatusProjection;
use crate::{log, LoggedEvent, ProjectionError};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The read models that can be rebuilt.
pub const NAMES: &[&str] = &[
    device_status::NAME,
    qr_login_status::NAME,
    orders::NAME,
    lockers::NAME,
];

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection named {0:?}; known: device_status, qr_login_status, orders, lockers")]
    UnknownProjection(String),
    #[error("a rebuild of {0} is already running")]
    Busy(String),
    #[error("rebuild stopped: {0}")]
    Projection(#[from] ProjectionError),
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        Self::Projection(ProjectionError::Sql(e))
    }
}

/// Where a rebuild stands, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: &'static str,
    /// Log position folded so far.
    pub position: i64,
    /// The head this phase is heading for.
    pub head: i64,
    /// Events of the model's aggregate type folded so far.
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub name: String,
    /// The checkpoint the swapped-in table starts from.
    pub position: i64,
    /// Events of the model's aggregate type folded.
    pub events: u64,
    /// Log positions read (all aggregate types).
    pub positions: i64,
    pub rows: i64,
    pub elapsed: Duration,
    /// How long the live projector was held off (the swap transaction).
    pub swap: Duration,
}

/// Rows kept in memory before they are written to the shadow table.
const FLUSH_ROWS: usize = 50_000;
/// Rows cached in memory at most; past that the cache is dropped and misses read the shadow.
const CACHE_ROWS: usize = 500_000;
const CHUNK: usize = 10_000;

struct Folder<'m, M: Model> {
    model: &'m M,
    shadow: String,
    cache: HashMap<Uuid, M::Row>,
    dirty: HashSet<Uuid>,
    /// The cache was dropped once: rows not in it may be in the shadow table.
    spilled: bool,
    events: u64,
}

impl<'m, M: Model> Folder<'m, M> {
    async fn feed(
        &mut self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> Result<(), ProjectionError> {
        let mine: Vec<&LoggedEvent> = events
            .iter()
            .filter(|e| e.aggregate_type == self.model.aggregate_type())
            .collect();
        let mut keys = Vec::with_capacity(mine.len());
        for e in &mine {
            keys.push(self.model.key(e)?);
        }
        if self.spilled {
            let missing: Vec<Uuid> = keys
                .iter()
                .filter(|k| !self.cache.contains_key(k))
                .copied()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if !missing.is_empty() {
                for (k, row) in self.model.load(conn, &self.shadow, &missing).await? {
                    self.cache.insert(k, row);
                }
            }
        }
        for (event, key) in mine.into_iter().zip(keys) {
            let current = self.cache.remove(&key);
            if let Some(next) = self.model.evolve(current, event)? {
                self.cache.insert(key, next);
                self.dirty.insert(key);
            }
            self.events += 1;
        }
        if self.dirty.len() >= FLUSH_ROWS {
            self.flush(conn).await?;
        }
        if self.cache.len() > CACHE_ROWS {
            self.flush(conn).await?;
            self.cache.clear();
            self.spilled = true;
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows: Vec<&M::Row> = self
            .dirty
            .iter()
            .filter_map(|k| self.cache.get(k))
            .collect();
        self.model.write(conn, &self.shadow, &rows).await?;
        self.dirty.clear();
        Ok(())
    }
}

/// The event columns a fold needs (no metadata, no hash), decoded.
fn folded(row: &PgRow) -> Result<LoggedEvent, sqlx::Error> {
    Ok(LoggedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: serde_json::Value::Null,
        recorded_at: row.try_get("recorded_at")?,
        hash: String::new(),
    })
}

/// Rebuilds the named read model. `progress` is called every few thousand events.
pub async fn rebuild_named(
    pool: &PgPool,
    name: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Rebuilt, RebuildError> {
    match name {
        device_status::NAME => rebuild(pool, &DeviceStatusProjection, progress).await,
        qr_login_status::NAME => rebuild(pool, &QrLoginStatusProjection, progress).await,
        orders::NAME => rebuild(pool, &OrdersProjection, progress).await,
        lockers::NAME => rebuild_lockers(pool, progress).await,
        other => Err(RebuildError::UnknownProjection(other.to_owned())),
    }
}

/// The lockers read models span several tables written by one projection, so they are rebuilt
/// together: the same tables are created in a schema of their own, the projection's own writes
/// fill them (its SQL names tables unqualified, and the rebuild's transactions put that schema
/// first on the search path), and the swap moves each into place in one transaction under the
/// checkpoint lock, as for a single-table model.
pub async fn rebuild_lockers(
    pool: &PgPool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Rebuilt, RebuildError> {
    let started = Instant::now();
    let guard = one_rebuild_at_a_time(pool, lockers::NAME).await?;
    let result = run_lockers(pool, progress, started).await;
    if result.is_err() {
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {LOCKERS_SHADOW} CASCADE"))
            .execute(pool)
            .await
            .ok();
    }
    guard.close().await.ok();
    result
}

const LOCKERS_SHADOW: &str = "lockers__rebuild";

async fn run_lockers(
    pool: &PgPool,
    progress: &(dyn Fn(Progress) + Send + Sync),
    started: Instant,
) -> Result<Rebuilt, RebuildError> {
    let name = lockers::NAME;
    let mut ddl =
        format!("DROP SCHEMA IF EXISTS {LOCKERS_SHADOW} CASCADE; CREATE SCHEMA {LOCKERS_SHADOW};");
    for table in lockers::TABLES {
        ddl.push_str(&format!(
            "CREATE TABLE {LOCKERS_SHADOW}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    sqlx::raw_sql(&ddl).execute(pool).await?;
    let head = log::head(pool).await?;
    tracing::info!(name, head, "rebuild: folding the log");
    let mut position = 0i64;
    let mut events = 0u64;
    // 1 and 2: fold without locks until the head is less than a chunk away.
    loop {
        let mut tx = pool.begin().await?;
        let (next, folded, full) = fold_lockers(&mut tx, position).await?;
        tx.commit().await?;
        position = next;
        events += folded;
        progress(Progress {
            phase: "fold",
            position,
            head: head.max(position),
            events,
        });
        if !full {
            break;
        }
    }
    // 3. Hold the live projector off, fold the last events, swap, set the checkpoint.
    let swap_started = Instant::now();
    let mut tx = pool.begin().await?;
    hold_projector_off(&mut tx, name).await?;
    loop {
        let (next, folded, full) = fold_lockers(&mut tx, position).await?;
        position = next;
        events += folded;
        if !full {
            break;
        }
    }
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    for table in lockers::TABLES {
        let shadow = format!("{LOCKERS_SHADOW}.{table}");
        let old = indexes(&mut tx, &format!("public.{table}")).await?;
        let new = indexes(&mut tx, &shadow).await?;
        sqlx::raw_sql(&format!(
            "DROP TABLE public.{table}; ALTER TABLE {shadow} SET SCHEMA public;"
        ))
        .execute(&mut *tx)
        .await?;
        rename_indexes_back(&mut tx, &old, &new).await?;
    }
    sqlx::raw_sql(&format!("DROP SCHEMA {LOCKERS_SHADOW}"))
        .execute(&mut *tx)
        .await?;
    set_checkpoint(&mut tx, name, position).await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM public.locker_compartments")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let swap = swap_started.elapsed();
    progress(Progress {
        phase: "swapped",
        position,
        head: position,
        events,
    });
    tracing::info!(
        name,
        position,
        rows,
        events,
        swap_ms = swap.as_millis() as u64,
        "rebuild swapped in"
    );
    Ok(Rebuilt {
        name: name.to_owned(),
        position,
        events,
        positions: position,
        rows,
        elapsed: started.elapsed(),
        swap,
    })
}

/// Folds the next chunk of the log after `position` into the shadow lockers tables, inside the
/// caller's transaction. Returns the new position, the lockers events folded, and whether the
/// chunk was full (more may follow).
async fn fold_lockers(
    tx: &mut PgConnection,
    position: i64,
) -> Result<(i64, u64, bool), ProjectionError> {
    let events = log::read_range(&mut *tx, position, None, CHUNK as i64).await?;
    let Some(last) = events.last() else {
        return Ok((position, 0, false));
    };
    check_dense(position, &events)?;
    sqlx::query(&format!("SET LOCAL search_path = {LOCKERS_SHADOW}, public"))
        .execute(&mut *tx)
        .await?;
    LockersProjection.apply(&mut *tx, &events).await?;
    let folded = events
        .iter()
        .filter(|e| lockers::is_mine(&e.aggregate_type))
        .count() as u64;
    Ok((last.position, folded, events.len() == CHUNK))
}

pub async fn rebuild<M: Model>(
    pool: &PgPool,
    model: &M,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Rebuilt, RebuildError> {
    let started = Instant::now();
    let name = model.name();
    let shadow = format!("{name}__rebuild");
    let guard = one_rebuild_at_a_time(pool, name).await?;
    let result = run(pool, model, &shadow, progress, started).await;
    if result.is_err() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
            .execute(pool)
            .await
            .ok();
    }
    guard.close().await.ok();
    result
}

async fn run<M: Model>(
    pool: &PgPool,
    model: &M,
    shadow: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
    started: Instant,
) -> Result<Rebuilt, RebuildError> {
    let name = model.name();
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {shadow}; CREATE TABLE {shadow} (LIKE {name} INCLUDING ALL);"
    ))
    .execute(pool)
    .await?;
    let mut folder = Folder {
        model,
        shadow: shadow.to_owned(),
        cache: HashMap::new(),
        dirty: HashSet::new(),
        spilled: false,
        events: 0,
    };
    let mut writer = pool.acquire().await?;

    // 1. One ordered read from position 0 to the head as it is now.
    let head = log::head(pool).await?;
    tracing::info!(name, head, "rebuild: folding the log");
    let mut position = 0i64;
    {
        // Reading and decoding run in their own task, one chunk ahead of the fold, so Postgres
        // sending rows and this process folding them overlap.
        let (chunks, mut ready) =
            tokio::sync::mpsc::channel::<Result<Vec<LoggedEvent>, sqlx::Error>>(4);
        let reader_pool = pool.clone();
        let aggregate_type = model.aggregate_type();
        let reader = tokio::spawn(async move {
            let read = async {
                let mut conn = reader_pool.acquire().await?;
                let mut rows = sqlx::query(
                    "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
                            e.event_type, e.event_version, e.payload, e.recorded_at
                       FROM event_log l JOIN events e ON e.event_id = l.event_id
                      WHERE l.position <= $1 AND e.aggregate_type = $2
                      ORDER BY l.position",
                )
                .bind(head)
                .bind(aggregate_type)
                .fetch(&mut *conn);
                let mut chunk = Vec::with_capacity(CHUNK);
                while let Some(row) = rows.try_next().await? {
                    chunk.push(folded(&row)?);
                    if chunk.len() == CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        if chunks.send(Ok(full)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                if !chunk.is_empty() {
                    let _ = chunks.send(Ok(chunk)).await;
                }
                Ok::<(), sqlx::Error>(())
            };
            if let Err(e) = read.await {
                let _ = chunks.send(Err(e)).await;
            }
        });
        while let Some(chunk) = ready.recv().await {
            let chunk = chunk?;
            position = chunk.last().map_or(position, |e| e.position);
            folder.feed(&mut writer, &chunk).await?;
            progress(Progress {
                phase: "fold",
                position,
                head,
                events: folder.events,
            });
        }
        drop(ready);
        let _ = reader.await;
    }
    position = head;
    progress(Progress {
        phase: "fold",
        position,
        head,
        events: folder.events,
    });

    // 2. Catch up without locks while the head moves on.
    loop {
        let new_head = log::head(pool).await?;
        if new_head - position < CHUNK as i64 {
            break;
        }
        position = catch_up(pool, &mut writer, &mut folder, position).await?;
    }
    folder.flush(&mut writer).await?;
    drop(writer);

    // 3. Hold the live projector off, fold the last events, swap, set the checkpoint.
    let swap_started = Instant::now();
    let mut tx = pool.begin().await?;
    hold_projector_off(&mut tx, name).await?;
    position = catch_up_in(&mut tx, &mut folder, position).await?;
    folder.flush(&mut tx).await?;
    swap_tables(&mut tx, name, shadow).await?;
    set_checkpoint(&mut tx, name, position).await?;
    let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {name}"))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let swap = swap_started.elapsed();
    progress(Progress {
        phase: "swapped",
        position,
        head: position,
        events: folder.events,
    });
    tracing::info!(
        name,
        position,
        rows,
        events = folder.events,
        swap_ms = swap.as_millis() as u64,
        "rebuild swapped in"
    );
    Ok(Rebuilt {
        name: name.to_owned(),
        position,
        events: folder.events,
        positions: position,
        rows,
        elapsed: started.elapsed(),
        swap,
    })
}

/// One rebuild per model at a time: the lock lives and dies with the returned connection.
async fn one_rebuild_at_a_time(pool: &PgPool, name: &str) -> Result<PgConnection, RebuildError> {
    let mut guard = pool.acquire().await?.detach();
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(hashtext($1)::bigint)")
        .bind(format!("latch-rebuild:{name}"))
        .fetch_one(&mut guard)
        .await?;
    if !got {
        return Err(RebuildError::Busy(name.to_owned()));
    }
    Ok(guard)
}

/// Locks the projection's checkpoint row for the rest of `tx`: the live projector takes the
/// same lock to apply a batch, so it waits until the swap commits.
async fn hold_projector_off(tx: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL lock_timeout = '30s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn set_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2, updated_at = clock_timestamp() WHERE name = $1",
    )
    .bind(name)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn catch_up<M: Model>(
    pool: &PgPool,
    writer: &mut PgConnection,
    folder: &mut Folder<'_, M>,
    mut position: i64,
) -> Result<i64, ProjectionError> {
    loop {
        let events = log::read_range(pool, position, None, CHUNK as i64).await?;
        let Some(last) = events.last() else {
            return Ok(position);
        };
        check_dense(position, &events)?;
        position = last.position;
        folder.feed(writer, &events).await?;
    }
}

async fn catch_up_in<M: Model>(
    conn: &mut PgConnection,
    folder: &mut Folder<'_, M>,
    mut position: i64,
) -> Result<i64, ProjectionError> {
    loop {
        let events = log::read_range(&mut *conn, position, None, CHUNK as i64).await?;
        let Some(last) = events.last() else {
            return Ok(position);
        };
        check_dense(position, &events)?;
        position = last.position;
        folder.feed(conn, &events).await?;
    }
}

fn check_dense(after: i64, events: &[LoggedEvent]) -> Result<(), ProjectionError> {
    for (i, e) in events.iter().enumerate() {
        let expected = after + 1 + i as i64;
        if e.position != expected {
            return Err(ProjectionError::Gap {
                expected,
                found: Some(e.position),
            });
        }
    }
    Ok(())
}

/// Index definitions of `table` by everything but their name: `(unique, "USING ...")`.
async fn indexes(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, def)| {
            let unique = def.starts_with("CREATE UNIQUE");
            let body = def.split_once(" USING ").map_or("", |(_, b)| b);
            (name, format!("{unique} {body}"))
        })
        .collect())
}

async fn swap_tables(tx: &mut PgConnection, name: &str, shadow: &str) -> Result<(), sqlx::Error> {
    let old = indexes(tx, name).await?;
    let new = indexes(tx, shadow).await?;
    sqlx::raw_sql(&format!(
        "DROP TABLE {name}; ALTER TABLE {shadow} RENAME TO {name};"
    ))
    .execute(&mut *tx)
    .await?;
    rename_indexes_back(tx, &old, &new).await
}

/// Gives each index of a swapped-in table the name its twin had in the table it replaced.
async fn rename_indexes_back(
    tx: &mut PgConnection,
    old: &[(String, String)],
    new: &[(String, String)],
) -> Result<(), sqlx::Error> {
    for (new_name, def) in new {
        if let Some((old_name, _)) = old.iter().find(|(_, d)| d == def) {
            if old_name != new_name {
                sqlx::raw_sql(&format!(
                    "ALTER INDEX public.{new_name} RENAME TO {old_name}"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    Ok(())
}
