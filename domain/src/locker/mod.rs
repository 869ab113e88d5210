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
//! - [`signing`]: the authorizer's Standard Webhooks secret and signature.
//!
//! Cross-aggregate checks (the receiver exists and is active, the authorizer is active) are made
//! by the caller from the other aggregates before it sends the command that changes the holder;
//! the compartment itself refuses a grant by anyone but its current holder, so two racing grants
//! of one compartment cannot both succeed.

pub mod authorizer;
pub mod compartment;
pub mod grant;
pub mod signing;
pub mod site;
pub mod user;
pub mod values;

pub use authorizer::{Authorizer, AuthorizerCommand, AuthorizerError, AuthorizerEvent};
pub use compartment::{Compartment, CompartmentCommand, CompartmentError, CompartmentEvent};
pub use grant::{Grant, GrantCommand, GrantError, GrantEvent, GrantTarget};
pub use site::{Site, SiteCommand, SiteError, SiteEvent};
pub use user::{LockerUser, UserCommand, UserError, UserEvent};
pub use values::{
    AuthorizerNumber, CompartmentId, CompartmentNumber, Endpoint, ParcelNumber, Size, UserNumber,
};
