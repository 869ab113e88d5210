//! The write side of Latch.
//!
//! Every domain fact is an event that an aggregate decided to emit in answer to a command.
//! This crate holds those decisions and the machinery that persists them:
//!
//! - [`device`]: the cabinet / locker aggregate (registration, liveness transitions, door, faults,
//!   remote door opening) with its commands, events and errors.
//! - [`qr_login`]: one QR-code login from minting to a redeemed web session, with the code and
//!   browser-secret types that keep the QR content alone from logging anyone in.
//! - [`vending`]: scan-to-open vending: money, planograms, settling shelf weights into an order
//!   (or a review that names each doubtful shelf), and the shopping-session aggregate from door
//!   opening to payment and refunds.
//! - [`locker`]: shared parcel lockers: sites, compartments and who holds them, locker users,
//!   third-party authorizers, and grant requests (direct or through an authorizer).
//! - [`access`]: API tokens issued and revoked, and locker users' password logins, as facts
//!   (the credentials themselves stay in their own table).
//! - [`telemetry`]: the wire formats cabinets publish on NATS and the commands sent back to them,
//!   parsed into domain types (anything that does not parse has a named reason).
//! - [`store`]: the Postgres event store (cqrs-es + postgres-es, event-sourced mode only) and the
//!   [`store::CommandBus`] that stamps metadata, retries optimistic conflicts a bounded number of
//!   times and makes every command idempotent by key.
//! - [`upcast`]: older shapes of stored events read as the current one (rows never rewritten).
//! - [`vault`]: the secrets events only name: authorizers' signing secrets (encrypted) and
//!   locker users' password hashes.
//! - [`webhooks`]: Standard Webhooks signing and verification, the one copy every sender and
//!   receiver (Kazaya callbacks, authorizers, the sandboxes) uses.
//! - [`outbound`]: the one HTTP client builder for calls to third parties (rustls, extra CA
//!   roots from configuration, no redirects).
//! - [`clock`]: time as a dependency, so deadlines and liveness can be tested without sleeping.
//!
//! Nothing here talks to NATS or serves HTTP; those live in `latch-workers` and `latch-api`.

pub mod access;
pub mod clock;
pub mod device;
pub mod group_commit;
pub mod locker;
pub mod outbound;
pub mod qr_login;
pub mod store;
pub mod telemetry;
pub mod upcast;
pub mod vault;
pub mod vending;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
