//! Shared parcel lockers: sites, compartments, locker users, third-party authorizers and grants.
//!
//! A user who reserved an empty compartment holds the right to use it and may hand that right on,
//! directly to another user or through a third-party authorizer (a courier company) whose system
//! picks the receiver and calls back. Each piece is its own aggregate:
//!
//! - [`site`]: an outlet where lockers stand (site number, name).
//! - [`compartment`]: one compartment, stream id `"{site}:{number}"`: size, status, the holder of
//!   the empty-use right, reservation window, depositor and parcel.
//! - [`user`]: a locker user (user number = phone), password hash, active/disabled.
//! - [`authorizer`]: a third-party authorizer (number, name, endpoint, signing secret, status).
//! - [`grant`]: one stream per grant request, direct or via an authorizer, to its outcome.
//!
//! The authorizer's secret signs both directions (grant requests and answers) with Standard
//! Webhooks, through [`crate::webhooks`].
//!
//! Cross-aggregate checks (the receiver exists and is active, the authorizer is active) are made
//! by the caller from the other aggregates before it sends the command that changes the holder;
//! the compartment itself refuses a grant by anyone but its current holder, so two racing grants
//! of one compartment cannot both succeed.

pub mod authorizer;
pub mod compartment;
pub mod grant;
pub mod site;
pub mod user;
pub mod values;

/// Seconds before each grant-request delivery attempt: nine attempts over about four minutes,
/// inside the default five-minute grant timeout, after which delivering is pointless.
pub const DEFAULT_WEBHOOK_BACKOFF_SECS: [u64; 8] = [1, 2, 5, 10, 20, 30, 60, 120];

pub use authorizer::{Authorizer, AuthorizerCommand, AuthorizerError, AuthorizerEvent};
pub use compartment::{
    Compartment, CompartmentCommand, CompartmentError, CompartmentEvent, PickupProof, LEGACY_SHA256,
};
pub use grant::{Grant, GrantCommand, GrantError, GrantEvent, GrantTarget};
pub use site::{Site, SiteCommand, SiteError, SiteEvent};
pub use user::{LockerUser, UserCommand, UserError, UserEvent};
pub use values::{
    AuthorizerNumber, CompartmentId, CompartmentNumber, Endpoint, ParcelNumber, Size, UserNumber,
};
