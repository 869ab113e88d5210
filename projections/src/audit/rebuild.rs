//! `latch projections rebuild NAME`: a read model replayed from position 0 into a fresh table,
//! then swapped in; readers keep being served from the live table throughout.
//!
//! Every read model goes the same way, through its one [`Rebuild`] implementation (a
//! [`Model`] has it for free; the lockers projection, seven tables fed by five aggregate types,
//! has its own [`Fold`]):
//!
//! 1. A schema `NAME__rebuild` gets a copy of each of the model's tables, filled by folding the
//!    log from position 0 to the head (one ordered read of the model's aggregate types; a
//!    [`Model`]'s rows are folded in memory with its own pure `evolve` and written in large
//!    batches).
//! 2. It catches up to the new head without locks, as often as that moves it.
//! 3. In one transaction: the projection's checkpoint row is locked `FOR UPDATE` (the live
//!    projector takes the same lock to apply a batch, so it waits here and cannot write in
//!    between), the last few events are folded in, each live table is dropped and its rebuilt
//!    copy moved into its place (with its indexes renamed back), and the checkpoint is set to
//!    the last position folded. On commit the live projector resumes from that checkpoint.
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
use std::future::Future;
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

/// What a rebuild needs of a read model: its name, its tables, the aggregate types it reads, and
/// a [`Fold`] that writes into copies of its tables in another schema.
pub trait Rebuild: Send + Sync {
    type Fold<'m>: Fold
    where
        Self: 'm;

    /// The projection's (and its checkpoint's) name.
    fn name(&self) -> &'static str;
    /// Every table the model writes, replaced together.
    fn tables(&self) -> Vec<&'static str>;
    /// The table whose rows a rebuild reports.
    fn counted_table(&self) -> &'static str;
    /// The aggregate types whose events it reads: the long first read asks for these only.
    fn aggregate_types(&self) -> Vec<&'static str>;
    /// A fold into the copies of [`Rebuild::tables`] in `schema`.
    fn fold(&self, schema: &str) -> Self::Fold<'_>;
}

/// Events in log order into a rebuild's copies of the tables.
pub trait Fold: Send {
    /// Folds a run of consecutive events (of any aggregate type; others are ignored).
    fn feed(
        &mut self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
    /// Writes whatever is still held in memory.
    fn flush(
        &mut self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Events of the model's aggregate types folded so far.
    fn events(&self) -> u64;
}

impl<M: Model> Rebuild for M {
    type Fold<'m>
        = Folder<'m, M>
    where
        M: 'm;

    fn name(&self) -> &'static str {
        Model::name(self)
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![Model::name(self)]
    }

    fn counted_table(&self) -> &'static str {
        Model::name(self)
    }

    fn aggregate_types(&self) -> Vec<&'static str> {
        vec![self.aggregate_type()]
    }

    fn fold(&self, schema: &str) -> Folder<'_, M> {
        Folder {
            model: self,
            shadow: format!("{schema}.{}", Model::name(self)),
            cache: HashMap::new(),
            dirty: HashSet::new(),
            spilled: false,
            events: 0,
        }
    }
}

/// A [`Model`]'s fold: rows kept in memory and written in large batches.
pub struct Folder<'m, M: Model> {
    model: &'m M,
    shadow: String,
    cache: HashMap<Uuid, M::Row>,
    dirty: HashSet<Uuid>,
    /// The cache was dropped once: rows not in it may be in the shadow table.
    spilled: bool,
    events: u64,
}

impl<M: Model> Fold for Folder<'_, M> {
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

    fn events(&self) -> u64 {
        self.events
    }
}

impl Rebuild for LockersProjection {
    type Fold<'m> = LockersFold;

    fn name(&self) -> &'static str {
        lockers::NAME
    }

    fn tables(&self) -> Vec<&'static str> {
        lockers::TABLES.to_vec()
    }

    fn counted_table(&self) -> &'static str {
        "locker_compartments"
    }

    fn aggregate_types(&self) -> Vec<&'static str> {
        lockers::AGGREGATE_TYPES.to_vec()
    }

    fn fold(&self, schema: &str) -> LockersFold {
        LockersFold {
            schema: schema.to_owned(),
            events: 0,
        }
    }
}

/// The lockers projection's fold: its own writes, aimed at the copies. Its SQL names tables
/// unqualified and reads rows it wrote before (a direct grant takes the compartment's size), so
/// each run gets a transaction with the copies' schema first on the search path rather than a
/// second set of queries that could drift from the live ones.
pub struct LockersFold {
    schema: String,
    events: u64,
}

impl Fold for LockersFold {
    async fn feed(
        &mut self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> Result<(), ProjectionError> {
        // A transaction of its own, or a savepoint inside the swap's.
        let mut tx = conn.begin().await?;
        sqlx::query(&format!("SET LOCAL search_path = {}, public", self.schema))
            .execute(&mut *tx)
            .await?;
        LockersProjection.apply(&mut tx, events).await?;
        tx.commit().await?;
        self.events += events
            .iter()
            .filter(|e| lockers::is_mine(&e.aggregate_type))
            .count() as u64;
        Ok(())
    }

    async fn flush(&mut self, _conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Every change was written as it was folded.
        Ok(())
    }

    fn events(&self) -> u64 {
        self.events
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
        lockers::NAME => rebuild(pool, &LockersProjection, progress).await,
        other => Err(RebuildError::UnknownProjection(other.to_owned())),
    }
}

/// Rebuilds one read model: copies of its tables in the schema `NAME__rebuild`, folded from
/// position 0, swapped in under the checkpoint lock.
pub async fn rebuild<R: Rebuild>(
    pool: &PgPool,
    model: &R,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Rebuilt, RebuildError> {
    let started = Instant::now();
    let name = model.name();
    let shadow = format!("{name}__rebuild");
    let guard = one_rebuild_at_a_time(pool, name).await?;
    let result = run(pool, model, &shadow, progress, started).await;
    if result.is_err() {
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
            .execute(pool)
            .await
            .ok();
    }
    guard.close().await.ok();
    result
}

async fn run<R: Rebuild>(
    pool: &PgPool,
    model: &R,
    shadow: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
    started: Instant,
) -> Result<Rebuilt, RebuildError> {
    let name = model.name();
    let mut ddl = format!("DROP SCHEMA IF EXISTS {shadow} CASCADE; CREATE SCHEMA {shadow};");
    for table in model.tables() {
        ddl.push_str(&format!(
            "CREATE TABLE {shadow}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    sqlx::raw_sql(&ddl).execute(pool).await?;
    let mut folder = model.fold(shadow);
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
        let aggregate_types: Vec<String> = model
            .aggregate_types()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let reader = tokio::spawn(async move {
            let read = async {
                let mut conn = reader_pool.acquire().await?;
                let mut rows = sqlx::query(
                    "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
                            e.event_type, e.event_version, e.payload, e.recorded_at
                       FROM event_log l JOIN events e ON e.event_id = l.event_id
                      WHERE l.position <= $1 AND e.aggregate_type = ANY($2)
                      ORDER BY l.position",
                )
                .bind(head)
                .bind(aggregate_types)
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
                events: folder.events(),
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
        events: folder.events(),
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
    swap_tables(&mut tx, &model.tables(), shadow).await?;
    set_checkpoint(&mut tx, name, position).await?;
    let counted = model.counted_table();
    let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM public.{counted}"))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let swap = swap_started.elapsed();
    progress(Progress {
        phase: "swapped",
        position,
        head: position,
        events: folder.events(),
    });
    tracing::info!(
        name,
        position,
        rows,
        events = folder.events(),
        swap_ms = swap.as_millis() as u64,
        "rebuild swapped in"
    );
    Ok(Rebuilt {
        name: name.to_owned(),
        position,
        events: folder.events(),
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

async fn catch_up<F: Fold>(
    pool: &PgPool,
    writer: &mut PgConnection,
    folder: &mut F,
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

async fn catch_up_in<F: Fold>(
    conn: &mut PgConnection,
    folder: &mut F,
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

/// Moves each rebuilt copy in `shadow` into `public` in place of its live table, then drops the
/// emptied schema.
async fn swap_tables(
    tx: &mut PgConnection,
    tables: &[&str],
    shadow: &str,
) -> Result<(), sqlx::Error> {
    // A lockers fold leaves the shadow schema first on this transaction's search path.
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    for table in tables {
        let copy = format!("{shadow}.{table}");
        let old = indexes(tx, &format!("public.{table}")).await?;
        let new = indexes(tx, &copy).await?;
        sqlx::raw_sql(&format!(
            "DROP TABLE public.{table}; ALTER TABLE {copy} SET SCHEMA public;"
        ))
        .execute(&mut *tx)
        .await?;
        rename_indexes_back(tx, &old, &new).await?;
    }
    sqlx::raw_sql(&format!("DROP SCHEMA {shadow}"))
        .execute(&mut *tx)
        .await?;
    Ok(())
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
