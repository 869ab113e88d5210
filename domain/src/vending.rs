//! Scan-to-open vending: what a shopper took, what it costs, and how the order gets paid.
//!
//! A shopper scans a cabinet, logs in through Kazaya and taps "open". Each door opening is one
//! [`ShoppingSession`] stream. The cabinet's load cells report stable per-shelf weights before
//! the door opens and after it closes; [`settle()`] compares the two against the cabinet's
//! [`Planogram`] and either charges whole quantities, closes the session empty, or puts the
//! order in review. Settlement never guesses: a change that is not explained by exactly one
//! combination of whole items within tolerance, an unstable or faulty sensor, a missing
//! reading, weight that appeared from nowhere — each is named as a [`ReviewReason`] for an
//! operator, and nothing is charged until the operator resolves it.
//!
//! - [`values`]: money (integer minor units, checked arithmetic), grams, shelf numbers, SKUs and
//!   the other small types, each parsed at the edge with the offending field named.
//! - [`planogram`]: what each shelf holds, at what unit weight, tolerance and price.
//! - [`settle`](mod@settle): the pure weight-to-order calculation and its outcomes.
//! - [`cabinet`]: the planogram operators publish per cabinet, versioned.
//! - [`member`]: shoppers as Kazaya identified them; registration and each login.
//! - [`session`]: the shopping-session aggregate (weighings, order, review, payment, refunds).
//! - [`sticker_scan`]: one stream per scan of a cabinet sticker: genuine, swapped or forged.

pub mod cabinet;
pub mod member;
pub mod planogram;
pub mod session;
pub mod settle;
pub mod sticker_scan;
pub mod values;

pub use cabinet::{CabinetPlanogram, PlanogramCommand, PlanogramEvent};
pub use member::{Member, MemberCommand, MemberEvent, Profile, Session};
pub use planogram::{Planogram, RawSlot, Slot, MAX_PRODUCTS_PER_SHELF, MAX_SLOTS};
pub use session::{
    Order, PaymentState, Refund, ReviewLine, SessionStage, ShoppingCommand, ShoppingError,
    ShoppingEvent, ShoppingSession, WeighingPhase,
};
pub use settle::{
    settle, OrderLine, Pick, RawReading, ReviewReason, Settlement, ShelfReading, Weighing,
    MAX_CANDIDATES, MAX_READING_GRAMS, MAX_UNITS_PER_PRODUCT,
};
pub use sticker_scan::{ScanCommand, ScanError, ScanEvent, ScanVerdict, StickerScan};
pub use values::{
    Currency, Grams, KazayaUserId, Money, MoneyError, OperatorId, ProductName, ProviderRef,
    SessionId, ShelfNo, Sku,
};
