//! Latch's background roles. Each is a long-running task that stops when its
//! [`CancellationToken`](tokio_util::sync::CancellationToken) is cancelled, after finishing the
//! message in hand; each can run in its own process (`latch serve --roles ...`) so they scale
//! apart, and every one of them is safe to kill at any instant.
//!
//! - [`relay`]: Postgres events -> dense log positions + hash chain -> EVENTS stream.
//! - [`projector`]: EVENTS stream (or the Postgres log when NATS is away) -> read models,
//!   exactly once in effect.
//! - [`ingest`]: device telemetry from the TELEMETRY stream -> validated commands, or the
//!   dead-letter stream with a reason.
//! - [`dispatch`]: DoorOpenRequested events -> the device's command subject.
//! - [`sweeper`]: silence -> DeviceWentOffline; missed deadlines -> DoorOpenFailed.
//! - [`vending`]: a cabinet's weights -> shopping session started / settled; failed openings
//!   abandon the session they were for.
//! - [`grant_delivery`]: GrantRequested events naming an authorizer -> its NATS subject and a
//!   signed webhook to its endpoint, retried on a backoff schedule, dead-lettered when given up.
//! - [`locker_doors`]: a parcel deposited or collected -> the compartment door's open request.
//! - [`grant_process`]: an authorizer's acceptance -> the compartment's holder change -> the
//!   grant completed (or failed when the compartment refuses).
//! - [`locker_notifier`]: a holder change -> SMS, NATS notices and authorizer confirmations,
//!   each carrying the event id for dedup.
//! - [`locker_holder`]: a holder change -> the compartment door's device, which keeps its own
//!   record of who holds each compartment; acked only once the device has it.
//! - [`locker_sweeper`]: unused reservations and unanswered grant requests expire.
//! - [`authorizer_answers`]: authorizers' signed answers over NATS -> the API's callback check.
//! - [`event_consumer`]: the durable EVENTS consumer loop the process managers share.
//! - [`consume`]: the batching loop shared by the JetStream consumers.
//! - [`stages`]: per-stage timings (sequence, publish, apply) as metrics.
//! - [`roles`]: the registry: each role `latch serve` can run, and the tasks it spawns.

pub mod authorizer_answers;
pub mod consume;
pub mod dispatch;
pub mod event_consumer;
pub mod grant_delivery;
pub mod grant_feed;
pub mod grant_process;
pub mod ingest;
pub mod lanes;
pub mod locker_doors;
pub mod locker_holder;
pub mod locker_notifier;
pub mod locker_sweeper;
pub mod projector;
pub mod reconcile;
pub mod relay;
pub mod roles;
pub mod stages;
pub mod sweeper;
pub mod vending;

pub use tokio_util::sync::CancellationToken;
