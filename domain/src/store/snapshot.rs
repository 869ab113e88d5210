//! Loading an aggregate costs the same whatever the length of its history.
//!
//! A snapshot is the aggregate's state (its serde JSON) after some sequence, kept in the
//! `snapshots` table; a load reads it and only the events after it, and a command or a load that
//! finds [`SNAPSHOT_EVERY`] or more events past the snapshot writes a new one. Snapshots are a
//! cache, never the truth: the events stay where they are, every reader that folds the log
//! (projections, rebuilds, point-in-time answers, audit verify) ignores snapshots, and the table
//! can be emptied at any time.
//!
//! cqrs-es 0.5 has a snapshot mode of its own, but it applies events twice (DESIGN.md section 4),
//! so Latch implements cqrs-es's [`EventStore`] here instead: the framework still loads, decides
//! and commits, and this store decides where the state comes from.
//!
//! A snapshot is only read by code whose state has the same [`Shape`]: the aggregate's declared
//! [`StateShape::SHAPE`] together with the field names its default state serializes with. A
//! snapshot written by older code is ignored (the stream is folded whole, and a snapshot of the
//! current shape replaces it), so it is never misread as the new state.

use super::journal::{Journal, Loaded};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{
    Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope, EventStore,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Events past the last snapshot after which a new one is taken. A load folds at most this many
/// events, whatever the history. Loads outnumber appends (the vending bench loaded 2.3
/// aggregates per command, and Postgres turns every event it returns from jsonb back into
/// text), so a short tail is cheaper than fewer snapshot writes: at 50, a load returned 11
/// events on average in a 10-second bench and would approach 25 on a long-lived device.
pub const SNAPSHOT_EVERY: usize = 10;

/// The version of an aggregate's state as snapshots store it.
///
/// Bump `SHAPE` whenever the state changes in a way its serialized field names do not show (a
/// field's meaning or type, an enum's variants): a snapshot of another shape is ignored.
/// Adding, removing or renaming a field changes the shape by itself.
pub trait StateShape: Aggregate {
    const SHAPE: u32 = 1;
}

/// `SHAPE` plus a digest of the field names of the default state, e.g. `1-3fa2c81d0b9e`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(String);

impl Shape {
    pub fn of<A: StateShape>() -> Self {
        let mut names = Vec::new();
        if let Ok(state) = serde_json::to_value(A::default()) {
            field_names("", &state, &mut names);
        }
        names.sort();
        let digest = Sha256::digest(names.join(",").as_bytes());
        Self(format!("{}-{}", A::SHAPE, &hex::encode(digest)[..12]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn field_names(prefix: &str, value: &Value, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = format!("{prefix}.{key}");
            field_names(&path, inner, out);
            out.push(path);
        }
    }
}

/// cqrs-es's view of a loaded aggregate.
pub struct Context<A> {
    aggregate_id: String,
    loaded: Loaded<A>,
}

impl<A> Context<A> {
    /// A context over a state the caller already has.
    pub fn new(aggregate_id: &str, loaded: Loaded<A>) -> Self {
        Self {
            aggregate_id: aggregate_id.to_owned(),
            loaded,
        }
    }
}

impl<A: Aggregate> AggregateContext<A> for Context<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.loaded.aggregate
    }
}

/// The [`EventStore`] every [`AggregateStore`](super::AggregateStore) runs its commands through.
pub struct SnapshotStore<A> {
    journal: Arc<Journal>,
    shape: Shape,
    _a: PhantomData<A>,
}

impl<A: StateShape> SnapshotStore<A> {
    pub fn new(journal: Arc<Journal>) -> Self {
        Self {
            journal,
            shape: Shape::of::<A>(),
            _a: PhantomData,
        }
    }

    /// The aggregate as it stands, from its snapshot on; takes a new snapshot when the one it
    /// started from is [`SNAPSHOT_EVERY`] events old or more.
    pub async fn read(&self, aggregate_id: &str) -> Result<Loaded<A>, sqlx::Error> {
        let mut loaded = self.journal.load::<A>(aggregate_id, &self.shape).await?;
        if loaded.due_for_snapshot() {
            self.journal
                .save_snapshot(
                    aggregate_id,
                    loaded.sequence,
                    &self.shape,
                    &loaded.aggregate,
                )
                .await;
            loaded.snapshot_sequence = loaded.sequence;
        }
        Ok(loaded)
    }
}

impl<A: StateShape> EventStore<A> for SnapshotStore<A> {
    type AC = Context<A>;

    async fn load_events(
        &self,
        _aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        // cqrs-es calls this only from its replay helpers, which Latch does not use: readers of
        // the whole history go through the log (latch-projections), in log order.
        Err(AggregateError::UnexpectedError(
            "whole streams are read from the log, not through the command store".into(),
        ))
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Context<A>, AggregateError<A::Error>> {
        let loaded = self.read(aggregate_id).await.map_err(|e| {
            if super::is_unavailable(&e) {
                AggregateError::DatabaseConnectionError(Box::new(e))
            } else {
                AggregateError::UnexpectedError(Box::new(e))
            }
        })?;
        Ok(Context::new(aggregate_id, loaded))
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Context<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let Context {
            aggregate_id,
            mut loaded,
        } = context;
        let metadata_json = serde_json::to_value(&metadata)?;
        let mut serialized = Vec::with_capacity(events.len());
        let mut envelopes: Vec<EventEnvelope<A>> = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let sequence = loaded.sequence + i + 1;
            serialized.push(SerializedEvent::new(
                aggregate_id.clone(),
                sequence,
                A::TYPE.to_owned(),
                event.event_type(),
                event.event_version(),
                serde_json::to_value(&event)?,
                metadata_json.clone(),
            ));
            envelopes.push(EventEnvelope {
                aggregate_id: aggregate_id.clone(),
                sequence,
                payload: event,
                metadata: metadata.clone(),
            });
        }
        self.journal.append::<A>(&serialized).await?;
        // `loaded.aggregate` already holds these events: cqrs-es's `EventSink::write`, through
        // which every `handle` emits them, applies each one as it is written. Applying them
        // again here would put them in the snapshot twice (a list grew twice, a count went up
        // by two), and every later command would decide on that state.
        if loaded.sequence + envelopes.len() - loaded.snapshot_sequence >= SNAPSHOT_EVERY {
            loaded.sequence += envelopes.len();
            self.journal
                .save_snapshot(
                    &aggregate_id,
                    loaded.sequence,
                    &self.shape,
                    &loaded.aggregate,
                )
                .await;
        }
        Ok(envelopes)
    }
}
