//! Exactly-once in effect: an event's change and the checkpoint move in one transaction.
//!
//! Events may arrive twice (redelivery), late (a redelivery overtaken by newer messages) or not
//! at all (NATS down). [`apply_batch`] makes all three harmless: positions at or below the
//! checkpoint are skipped, a gap is filled from the Postgres log before going on, and
//! [`catch_up`] reads the log directly when nothing arrives.

use crate::log::{self, LoggedEvent};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("unknown event type {aggregate_type}/{event_type} v{version} at position {position}")]
    UnknownEvent {
        position: i64,
        aggregate_type: String,
        event_type: String,
        version: String,
    },
    #[error("event at position {position} does not parse: {detail}")]
    BadPayload { position: i64, detail: String },
    #[error("the log has a gap: expected position {expected}, found {found:?}")]
    Gap { expected: i64, found: Option<i64> },
}

/// A read model folded from the log.
pub trait Projection: Send + Sync {
    /// The checkpoint's name; also the durable consumer's name.
    fn name(&self) -> &str;

    /// Whether events of `aggregate_type` can change this read model. A live projector passes a
    /// run of events it does not want without a transaction of its own (see [`Passed`]).
    fn wants(&self, aggregate_type: &str) -> bool;

    /// Applies consecutive events (ordered, no gaps, all past the checkpoint) to the read model
    /// inside the caller's transaction. Events this projection does not care about must be
    /// accepted and ignored. Taking a whole run lets a projection load and write each row once
    /// per batch instead of once per event.
    fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

/// A read model that is a fold per aggregate into one row, kept in one table: the live
/// projector ([`apply_model`]) and a rebuild (into a shadow table) drive it the same way.
pub trait Model: Send + Sync {
    type Row: Clone + Send + Sync;
    /// Table and checkpoint name.
    fn name(&self) -> &'static str;
    fn aggregate_type(&self) -> &'static str;
    fn key(&self, event: &LoggedEvent) -> Result<Uuid, ProjectionError>;
    fn evolve(
        &self,
        current: Option<Self::Row>,
        event: &LoggedEvent,
    ) -> Result<Option<Self::Row>, ProjectionError>;
    fn load(
        &self,
        conn: &mut PgConnection,
        table: &str,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<(Uuid, Self::Row)>, sqlx::Error>> + Send;
    fn write(
        &self,
        conn: &mut PgConnection,
        table: &str,
        rows: &[&Self::Row],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The whole of a [`Model`]'s live projection: the batch's events of its aggregate type, each
/// row loaded once, evolved event by event, and every changed row written once.
pub async fn apply_model<M: Model>(
    model: &M,
    conn: &mut PgConnection,
    events: &[LoggedEvent],
) -> Result<(), ProjectionError> {
    let mine: Vec<&LoggedEvent> = events
        .iter()
        .filter(|e| e.aggregate_type == model.aggregate_type())
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(mine.len());
    for e in &mine {
        ids.push(model.key(e)?);
    }
    let mut rows: HashMap<Uuid, M::Row> = model
        .load(&mut *conn, model.name(), &ids)
        .await?
        .into_iter()
        .collect();
    let mut changed = BTreeSet::new();
    for (event, id) in mine.into_iter().zip(ids) {
        if let Some(next) = model.evolve(rows.remove(&id), event)? {
            rows.insert(id, next);
            changed.insert(id);
        }
    }
    let changed: Vec<&M::Row> = changed.iter().filter_map(|id| rows.get(id)).collect();
    model.write(conn, model.name(), &changed).await?;
    Ok(())
}

pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(row.map_or(0, |(p,)| p))
}

/// How far each read model stands behind the log: (name, checkpoint, positions behind the
/// log's head). A projector passes other aggregates' events without writing its checkpoint
/// (see [`Passed`]), so an idle-looking model may read up to a thousand positions behind while
/// a busy stream of others' events goes by.
pub async fn lags(pool: &PgPool, names: &[&str]) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.name, COALESCE(c.position, 0),
                GREATEST((SELECT COALESCE(max(position), 0) FROM event_log) - COALESCE(c.position, 0), 0)
           FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
           LEFT JOIN projection_checkpoints c USING (name)
          ORDER BY n.i",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}

/// The checkpoint, locked for this transaction (created at 0 on first use).
async fn locked_checkpoint(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    let select = "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE";
    if let Some((position,)) = sqlx::query_as(select)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(position);
    }
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let (position,) = sqlx::query_as(select)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(position)
}

/// Positions a live projector has seen and found it does not want: `(base, through]`, an
/// unbroken run read in order from the stream. Carrying them into the next [`apply_batch`] lets
/// the checkpoint jump over them in the same transaction as the next wanted change, instead of
/// a transaction for every batch of other aggregates' events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passed {
    base: i64,
    through: i64,
}

impl Passed {
    /// Nothing passed yet; the checkpoint is believed to be `checkpoint`.
    pub fn at(checkpoint: i64) -> Self {
        Self {
            base: checkpoint,
            through: checkpoint,
        }
    }

    /// How many positions are passed but not yet written to the checkpoint.
    pub fn pending(&self) -> i64 {
        self.through - self.base
    }

    /// Takes `events` into the run if they continue it without a gap and none is wanted.
    /// Returns false (and takes nothing) otherwise: the caller must apply them.
    pub fn absorb<P: Projection>(&mut self, projection: &P, events: &[LoggedEvent]) -> bool {
        let mut through = self.through;
        for event in events {
            if event.position != through + 1 || projection.wants(&event.aggregate_type) {
                return false;
            }
            through = event.position;
        }
        self.through = through;
        true
    }
}

/// Applies `events` (in any order, duplicates allowed) and returns the new checkpoint. A
/// checkpoint inside `passed`'s run first moves to its end: those positions hold nothing for
/// this projection.
pub async fn apply_batch<P: Projection>(
    pool: &PgPool,
    projection: &P,
    events: &[LoggedEvent],
    passed: Passed,
) -> Result<i64, ProjectionError> {
    let mut ordered: Vec<&LoggedEvent> = events.iter().collect();
    ordered.sort_by_key(|e| e.position);
    let mut tx = pool.begin().await?;
    // A read model is derived: the log can always rebuild it. Were this commit lost to a
    // Postgres crash, the change and its checkpoint would be lost together (one transaction),
    // and the next batch finds the checkpoint behind and fills the gap from the log, which
    // keeps it exactly once in effect. So the projector need not wait for the WAL flush; the
    // event store and the relay's log still do.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    // The row lock also keeps two replicas of one projector from applying the same batch.
    let start = locked_checkpoint(&mut tx, projection.name()).await?;
    // Only a checkpoint inside the run may jump: one behind `base` has a gap before the run
    // that the log must fill, one past `through` has already moved on.
    let mut position = if (passed.base..passed.through).contains(&start) {
        passed.through
    } else {
        start
    };
    // The consecutive run past the checkpoint, with any gap filled from the log.
    let mut run: Vec<LoggedEvent> = Vec::with_capacity(ordered.len());
    for event in ordered {
        if event.position <= position {
            continue;
        }
        if event.position > position + 1 {
            let missing =
                log::read_range(&mut *tx, position, Some(event.position - 1), i64::MAX).await?;
            for m in missing {
                if m.position != position + 1 {
                    return Err(ProjectionError::Gap {
                        expected: position + 1,
                        found: Some(m.position),
                    });
                }
                position = m.position;
                run.push(m);
            }
            if position + 1 != event.position {
                return Err(ProjectionError::Gap {
                    expected: position + 1,
                    found: Some(event.position),
                });
            }
        }
        position = event.position;
        run.push(event.clone());
    }
    if !run.is_empty() {
        projection.apply(&mut tx, &run).await?;
    }
    if position != start {
        sqlx::query(
            "UPDATE projection_checkpoints SET position = $2, updated_at = clock_timestamp() WHERE name = $1",
        )
        .bind(projection.name())
        .bind(position)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(position)
}

/// Reads the Postgres log from the checkpoint to its head, in batches. Returns the checkpoint.
pub async fn catch_up<P: Projection>(
    pool: &PgPool,
    projection: &P,
    batch: i64,
) -> Result<i64, ProjectionError> {
    let mut position = checkpoint(pool, projection.name()).await?;
    loop {
        let events = log::read_range(pool, position, None, batch).await?;
        if events.is_empty() {
            return Ok(position);
        }
        position = apply_batch(pool, projection, &events, Passed::default()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnlyDevices;

    impl Projection for OnlyDevices {
        fn name(&self) -> &str {
            "only_devices"
        }
        fn wants(&self, aggregate_type: &str) -> bool {
            aggregate_type == "device"
        }
        async fn apply(
            &self,
            _: &mut PgConnection,
            _: &[LoggedEvent],
        ) -> Result<(), ProjectionError> {
            Ok(())
        }
    }

    fn event(position: i64, aggregate_type: &str) -> LoggedEvent {
        LoggedEvent {
            position,
            event_id: Uuid::nil(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: "a".into(),
            sequence: 1,
            event_type: "X".into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: chrono::Utc::now(),
            hash: String::new(),
        }
    }

    #[test]
    fn only_an_unbroken_run_of_unwanted_events_is_passed() {
        let mut passed = Passed::at(10);
        assert!(passed.absorb(&OnlyDevices, &[event(11, "order"), event(12, "site")]));
        assert_eq!(passed.pending(), 2);
        // A wanted event stops the run, and nothing of its batch is taken.
        assert!(!passed.absorb(&OnlyDevices, &[event(13, "order"), event(14, "device")]));
        assert_eq!(passed.pending(), 2);
        // So does a gap: what lies between was never seen.
        assert!(!passed.absorb(&OnlyDevices, &[event(15, "order")]));
        assert_eq!(
            passed,
            Passed {
                base: 10,
                through: 12
            }
        );
        // Nothing passed is nothing to jump.
        assert!(Passed::default().absorb(&OnlyDevices, &[]));
    }
}
