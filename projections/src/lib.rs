//! The read side of Latch.
//!
//! - [`log`]: the event log as every reader sees it: events in log-position order, each with its
//!   hash-chain link, and the canonical form that the chain hashes.
//! - [`projector`]: the exactly-once machinery. A [`projector::Projection`] applies one event to
//!   its read model inside a transaction that also advances its checkpoint; the same code serves
//!   live consumption, catch-up from Postgres and full rebuilds.
//! - [`audit`]: history streams and live follow, point-in-time folds, the hash-chain verifier,
//!   signed checkpoints and rebuilds into a shadow table swapped in.
//! - [`device_status`]: the device-status read model (a pure fold, its SQL, and its queries).
//! - [`lockers`]: parcel lockers: compartment ownership (current holder, per user, full history),
//!   sites, users, authorizers, grant request state and the notification inbox.
//! - [`orders`]: one row per shopping session: status, lines, totals, payment, refunds.
//! - [`qr_login_status`]: where each QR login stands (for the sweeper, operators and audits).
//!
//! Read models are never written by command handlers: only by projections folding the log. They
//! are read only through each model's `queries` module (typed rows over a `&PgPool`), so the SQL
//! of a table lives beside the projection that owns it; the API and workers hold no SQL of them.

pub mod audit;
pub mod device_status;
pub mod lockers;
pub mod log;
pub mod orders;
pub mod projector;
pub mod qr_login_status;

pub use log::LoggedEvent;
pub use projector::{Projection, ProjectionError};
