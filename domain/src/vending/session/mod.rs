//! The shopping-session aggregate: one stream per door opening, from the weighing before the
//! door opens to the order, its review, its payment and any refunds.
//!
//! The session keeps a snapshot of the planogram it started with, so a price change during or
//! after the opening does not change what this shopper owes. The order is decided once, by
//! [`settle`](crate::vending::settle::settle()) when the door closes; afterwards only an
//! operator's review can change it, and only while it is in review. Payment runs one attempt at
//! a time: a new attempt needs the last one to have failed, and a payment id is never reused
//! (it is Kazaya's idempotency key).
//!
//! The files: `command`, `event` and `error` hold what goes in, what comes out and why a
//! command is refused; `state` holds the session and how events change it; `decide` holds
//! the decisions themselves.

mod command;
mod decide;
mod error;
mod event;
mod state;
#[cfg(test)]
mod tests;

pub use command::*;
pub use error::*;
pub use event::*;
pub use state::*;
