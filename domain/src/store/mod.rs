//! The Postgres event store and the command bus in front of it.
//!
//! - [`journal`]: reading a stream from its snapshot on, appending a command's events in one
//!   statement (group commit for one-event commands), keeping snapshots.
//! - [`snapshot`]: the cqrs-es [`EventStore`](cqrs_es::EventStore) that loads aggregates from
//!   their snapshot plus the events after it, so a command costs the same whatever the length of
//!   the history, and the [`StateShape`] that keeps a snapshot of an older state from being
//!   misread.
//!
//! The database stamps each row with its event id, transaction id and time, and claims the
//! command's idempotency key in the same transaction (see migrations/0001).
//!
//! [`AggregateStore::execute`] is the one way a command runs:
//! 1. the aggregate decides, and its events are appended with the command's idempotency key
//!    claimed in the same statement; an optimistic conflict is retried a bounded number of
//!    times, then reported as [`CommandError::Conflict`];
//! 2. a key that an earlier request already claimed is answered from that request's stored
//!    events, appending nothing (a key reused for a different request is refused);
//! 3. the events it appended come back to the caller, so a response can be built from them the
//!    same way whether it is the first answer or a replay.

pub mod journal;
pub mod snapshot;

pub use journal::Loaded;
pub use snapshot::{StateShape, SNAPSHOT_EVERY};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{AggregateContext, AggregateError, EventStore};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::access::{ApiToken, LockerLogin};
use crate::device::Device;
use crate::locker::{Authorizer, Compartment, Grant, LockerUser, Site};
use crate::qr_login::QrLogin;
use crate::vending::{CabinetPlanogram, Member, ShoppingSession, StickerScan};
use journal::Journal;
use snapshot::{Context, SnapshotStore};

/// Where a command's first attempt gets the aggregate from.
enum Start<A> {
    /// Read it from the store.
    Read,
    /// The caller has it (or knows the stream is new and empty).
    From(Loaded<A>),
}

impl<A> Start<A> {
    fn name(&self) -> &'static str {
        match self {
            Start::Read => "read",
            Start::From(_) => "given",
        }
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How many times an optimistic conflict is retried before the caller gets a 409.
pub const DEFAULT_CONFLICT_RETRIES: usize = 5;

/// Pool settings shared by every pool Latch opens. Connections are not pinged before each use
/// (sqlx's default): that is one more round trip per statement, and a dead connection already
/// fails its statement with an I/O error, which callers answer with 503, and is then dropped.
fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
}

/// Connects a pool that fails fast when Postgres is gone, so callers can answer 503 promptly.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections, acquire_timeout)
        .connect(url)
        .await
}

/// Connects without touching the server, for processes that must start while Postgres is down.
pub fn connect_lazy(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections, acquire_timeout).connect_lazy(url)
}

/// True when the error means "the database cannot be reached right now", as opposed to a bug or
/// a refused statement.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03" || c == "53300"
        }),
        _ => false,
    }
}

/// Who is acting and why: copied onto every event the command appends.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// `operator:<name>`, `user:<id>`, `device:<id>`, `system:<worker>`.
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub request_id: Uuid,
    pub device: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
}

impl CommandContext {
    /// A context for a command that starts a new chain of causes.
    pub fn new(actor: impl Into<String>) -> Self {
        let id = Uuid::now_v7();
        Self {
            actor: actor.into(),
            correlation_id: id,
            causation_id: id,
            request_id: id,
            device: None,
            idempotency: None,
        }
    }

    pub fn with_idempotency(mut self, key: IdempotencyKey) -> Self {
        self.idempotency = Some(key);
        self
    }

    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    fn metadata(&self, command: &str) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("actor".to_owned(), self.actor.clone()),
            ("correlation_id".to_owned(), self.correlation_id.to_string()),
            ("causation_id".to_owned(), self.causation_id.to_string()),
            ("request_id".to_owned(), self.request_id.to_string()),
            ("command".to_owned(), command.to_owned()),
        ]);
        if let Some(device) = &self.device {
            m.insert("device".to_owned(), device.clone());
        }
        if let Some(key) = &self.idempotency {
            m.insert("idempotency_key".to_owned(), key.key.clone());
            m.insert("fingerprint".to_owned(), key.fingerprint.clone());
        }
        m
    }
}

/// A client's idempotency key, scoped to who sent it, with a fingerprint of what they asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// `scope` keeps two clients' keys apart; `request` is everything that makes the request
    /// what it is (method, path, body), so reusing a key for something else is detected.
    pub fn new(scope: &str, key: &str, request: &[u8]) -> Self {
        Self {
            key: format!("{scope}:{key}"),
            fingerprint: hex::encode(Sha256::digest(request)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    #[error(transparent)]
    Rejected(E),
    #[error("the aggregate kept changing underneath the command; try again")]
    Conflict,
    #[error("this idempotency key was already used for a different request")]
    IdempotencyMismatch,
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<E> {
    /// True when an earlier request with the same idempotency key had already done it.
    pub replayed: bool,
    pub events: Vec<E>,
}

/// One aggregate type's command entry point.
pub struct AggregateStore<A: StateShape> {
    pool: PgPool,
    store: SnapshotStore<A>,
    services: A::Services,
    retries: usize,
}

impl<A> AggregateStore<A>
where
    A: StateShape + 'static,
    A::Command: Clone,
    A::Event: DeserializeOwned,
    A::Services: Default,
{
    pub fn new(pool: PgPool, retries: usize) -> Self {
        let journal = Arc::new(Journal::new(pool.clone()));
        Self {
            pool,
            store: SnapshotStore::new(journal),
            services: A::Services::default(),
            retries,
        }
    }

    /// The aggregate as its stream stands now (`None` when the stream is empty), for reads that
    /// need the decision-making state itself: read exactly as a command reads it (from the
    /// snapshot on, every event through the upcasters).
    pub async fn load(&self, aggregate_id: &str) -> Result<Option<A>, sqlx::Error> {
        let loaded = self.store.read(aggregate_id).await?;
        Ok((loaded.sequence > 0).then_some(loaded.aggregate))
    }

    /// As [`load`](Self::load), with where the stream and its snapshot stand. A caller that reads
    /// an aggregate to choose its command hands the result to [`execute_on`](Self::execute_on).
    pub async fn load_with_position(&self, aggregate_id: &str) -> Result<Loaded<A>, sqlx::Error> {
        self.store.read(aggregate_id).await
    }

    pub async fn execute(
        &self,
        aggregate_id: &str,
        command_name: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        self.measured(aggregate_id, command_name, command, ctx, Start::Read)
            .await
    }

    /// As [`execute`](Self::execute), for a command that starts a new stream under an id the
    /// caller has just generated (a UUIDv7): the empty stream is not read back from the database.
    /// Were the id somehow taken, the append would hit the primary key and come back as an
    /// optimistic conflict, whose retry reads for real.
    pub async fn create(
        &self,
        aggregate_id: &str,
        command_name: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        self.measured(
            aggregate_id,
            command_name,
            command,
            ctx,
            Start::From(Loaded::empty()),
        )
        .await
    }

    /// As [`execute`](Self::execute), deciding first on `loaded`, which the caller has just read
    /// with [`load_with_position`](Self::load_with_position) to choose the command: the stream
    /// is not read twice. A stale `loaded` is safe. Events decided on it are appended after
    /// `loaded.sequence`, so if another writer got there first the append conflicts and the
    /// retry reads for real; a command that appends nothing is answered as of the moment
    /// `loaded` was read.
    pub async fn execute_on(
        &self,
        loaded: Loaded<A>,
        aggregate_id: &str,
        command_name: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        self.measured(
            aggregate_id,
            command_name,
            command,
            ctx,
            Start::From(loaded),
        )
        .await
    }

    /// [`run`](Self::run), counted and timed for `/metrics` by aggregate, command and outcome.
    async fn measured(
        &self,
        aggregate_id: &str,
        command_name: &str,
        command: A::Command,
        ctx: &CommandContext,
        start: Start<A>,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        let started = std::time::Instant::now();
        let result = self
            .run(aggregate_id, command_name, command, ctx, start)
            .await;
        let outcome = match &result {
            Ok(done) if done.replayed => "replayed",
            Ok(_) => "applied",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict) => "conflict",
            Err(CommandError::IdempotencyMismatch) => "idempotency_mismatch",
            Err(CommandError::Unavailable(_)) => "unavailable",
            Err(CommandError::Internal(_)) => "internal",
        };
        let command = command_name.to_owned();
        metrics::counter!("latch_commands_total", "aggregate" => A::TYPE, "command" => command.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("latch_command_duration_seconds", "aggregate" => A::TYPE, "command" => command)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Decides and appends, retrying optimistic conflicts.
    ///
    /// An idempotency key is not looked up before deciding: the append claims it in the same
    /// statement (migrations/0001), and a key that is already claimed fails that append as a
    /// conflict. So the lookup runs only when the outcome could be a retry's: a conflict, a
    /// rejection, or a decision that appends nothing (a retried command often finds its work
    /// done). A first request, by far the usual case, pays no extra round trip.
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(aggregate = A::TYPE, id = %aggregate_id, command = command_name, actor = %ctx.actor, request_id = %ctx.request_id, start = start.name())
    )]
    async fn run(
        &self,
        aggregate_id: &str,
        command_name: &str,
        command: A::Command,
        ctx: &CommandContext,
        start: Start<A>,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        let metadata = ctx.metadata(command_name);
        // Only the first attempt may start from a state the caller gave.
        let mut given = match start {
            Start::Read => None,
            Start::From(loaded) => Some(loaded),
        };
        for attempt in 0..=self.retries {
            let result = self
                .attempt(
                    aggregate_id,
                    command.clone(),
                    metadata.clone(),
                    given.take(),
                )
                .await;
            match result {
                Ok(events) => {
                    if events.is_empty() {
                        if let Some(done) = self.replay(ctx).await? {
                            tracing::debug!("answered from an earlier request with the same key");
                            return Ok(done);
                        }
                    }
                    tracing::debug!(events = events.len(), "command applied");
                    return Ok(Executed {
                        replayed: false,
                        events,
                    });
                }
                Err(AggregateError::UserError(e)) => {
                    if let Some(done) = self.replay(ctx).await? {
                        tracing::debug!("answered from an earlier request with the same key");
                        return Ok(done);
                    }
                    return Err(CommandError::Rejected(e));
                }
                Err(AggregateError::AggregateConflict) => {
                    // Either another writer moved the stream on, or the key was claimed: by an
                    // earlier request, or by a concurrent retry of this same request that
                    // committed first.
                    if let Some(done) = self.replay(ctx).await? {
                        return Ok(done);
                    }
                    tracing::debug!(attempt, "optimistic conflict, retrying");
                }
                Err(AggregateError::DatabaseConnectionError(e)) => {
                    return Err(CommandError::Unavailable(e.to_string()))
                }
                Err(AggregateError::UnexpectedError(e)) => {
                    return Err(match e.downcast_ref::<sqlx::Error>() {
                        Some(sql) if is_unavailable(sql) => {
                            CommandError::Unavailable(e.to_string())
                        }
                        _ => CommandError::Internal(e.to_string()),
                    })
                }
                Err(AggregateError::DeserializationError(e)) => {
                    return Err(CommandError::Internal(e.to_string()))
                }
            }
        }
        Err(CommandError::Conflict)
    }

    /// One load, decide, append: what cqrs-es's `CqrsFramework::execute_with_metadata` does,
    /// through the same [`EventStore`](cqrs_es::EventStore) and `Aggregate::handle`, except that
    /// the state may be given instead of loaded, and the appended events come straight back.
    async fn attempt(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        given: Option<Loaded<A>>,
    ) -> Result<Vec<A::Event>, AggregateError<A::Error>> {
        let mut context = match given {
            Some(loaded) => Context::new(aggregate_id, loaded),
            None => self.store.load_aggregate(aggregate_id).await?,
        };
        let sink = EventSink::default();
        context
            .aggregate()
            .handle(command, &self.services, &sink)
            .await
            .map_err(AggregateError::UserError)?;
        let events = sink.collect().await;
        let committed = self.store.commit(events, context, metadata).await?;
        Ok(committed.into_iter().map(|e| e.payload).collect())
    }

    /// The events of the earlier request that claimed this command's idempotency key, if one
    /// did (a key claimed for another request is refused).
    async fn replay(
        &self,
        ctx: &CommandContext,
    ) -> Result<Option<Executed<A::Event>>, CommandError<A::Error>> {
        let Some(key) = &ctx.idempotency else {
            return Ok(None);
        };
        let map_err = |e: sqlx::Error| {
            if is_unavailable(&e) {
                CommandError::Unavailable(e.to_string())
            } else {
                CommandError::Internal(e.to_string())
            }
        };
        let claimed: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, fingerprint FROM command_keys WHERE idempotency_key = $1",
        )
        .bind(&key.key)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some((aggregate_type, aggregate_id, fingerprint)) = claimed else {
            return Ok(None);
        };
        if aggregate_type != A::TYPE || fingerprint.as_deref() != Some(key.fingerprint.as_str()) {
            return Err(CommandError::IdempotencyMismatch);
        }
        let payloads: Vec<(serde_json::Value,)> = sqlx::query_as(
            "SELECT payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND metadata ->> 'idempotency_key' = $3
              ORDER BY sequence",
        )
        .bind(&aggregate_type)
        .bind(&aggregate_id)
        .bind(&key.key)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let events = payloads
            .into_iter()
            .map(|(p,)| serde_json::from_value(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        Ok(Some(Executed {
            replayed: true,
            events,
        }))
    }
}

/// The command an idempotency key was first used for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyClaim {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The request's fingerprint (`None` for keys recorded before fingerprints were kept).
    pub fingerprint: Option<String>,
}

/// Every aggregate's command entry point over one pool.
pub struct Store {
    /// Private: read models are read through `latch_projections`, credential tables through
    /// the pool their owner holds; only the store itself touches the event tables here.
    pool: PgPool,
    pub devices: AggregateStore<Device>,
    pub qr_logins: AggregateStore<QrLogin>,
    pub shopping_sessions: AggregateStore<ShoppingSession>,
    pub planograms: AggregateStore<CabinetPlanogram>,
    pub members: AggregateStore<Member>,
    pub locker_sites: AggregateStore<Site>,
    pub compartments: AggregateStore<Compartment>,
    pub locker_users: AggregateStore<LockerUser>,
    pub authorizers: AggregateStore<Authorizer>,
    pub grants: AggregateStore<Grant>,
    pub api_tokens: AggregateStore<ApiToken>,
    pub locker_logins: AggregateStore<LockerLogin>,
    pub sticker_scans: AggregateStore<StickerScan>,
    /// The secrets events name only by id (signing secrets, password hashes).
    pub vault: crate::vault::Vault,
}

impl Store {
    /// A store whose vault uses the development secrets key (tests, benches, tools that do not
    /// read secrets); `latch serve` uses [`Store::with_vault_key`].
    pub fn new(pool: PgPool) -> Self {
        Self::with_vault_key(pool, crate::vault::VaultKey::development())
    }

    pub fn with_vault_key(pool: PgPool, key: crate::vault::VaultKey) -> Self {
        Self {
            vault: crate::vault::Vault::new(pool.clone(), key),
            devices: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            qr_logins: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            shopping_sessions: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            planograms: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            members: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            locker_sites: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            compartments: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            locker_users: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            authorizers: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            grants: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            api_tokens: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            locker_logins: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            sticker_scans: AggregateStore::new(pool.clone(), DEFAULT_CONFLICT_RETRIES),
            pool,
        }
    }

    /// What idempotency key `key` was first used for, if it was: the event store records each
    /// key beside the command's events (`command_keys`), and some callers must answer a retry
    /// before they know which command it is.
    pub async fn idempotency_claim(&self, key: &str) -> Result<Option<KeyClaim>, sqlx::Error> {
        sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, fingerprint FROM command_keys WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
    }

    /// Whether an aggregate has any event at all (sequence 1 is the first one postgres-es writes).
    pub async fn exists(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT sequence FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}
