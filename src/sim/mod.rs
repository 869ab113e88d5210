//! `latch sim`: simulated cabinets speaking the real device protocol over NATS.
//!
//! # What a cabinet publishes
//!
//! Every message goes through JetStream on `latch.dev.<id>.<type>` and is published only after
//! the previous one was acknowledged, so the stream holds them in the order below.
//!
//! - At start: `door` `closed` (and `fault` active if the cabinet starts faulty), then a
//!   `heartbeat` every `heartbeat` interval.
//! - On an `open` command (`latch.cmd.<id>.open`, an [`OpenCommand`]); a repeated `request_id`
//!   is ignored, a faulty cabinet answers `open_refused` instead:
//!   - an operator's opening (no `session_id`): `door` `open` (with `request_id`), the door
//!     stays open for `hold_open`, then `door` `closed`;
//!   - a shopper's opening (with `session_id`) at a cabinet with a planogram: `weights`
//!     `before` (one stable reading per planogram shelf), `door` `open`, the shopper's script
//!     runs while the door stays open, `door` `closed`, `weights` `after`. Without a
//!     planogram the cabinet has no load cells: door open, hold, door closed, no weights.
//!
//! # Load cells
//!
//! A cabinet with a planogram (read from the event store at start and again before each
//! shopper's opening) holds physical [`Stock`]: per shelf a tare of 1 000–2 000 g (fixed per
//! cabinet and shelf), `units_per_slot` units of each product, and any foreign object left on
//! it. A reading is `tare + Σ units × unit_weight + foreign`, plus a deterministic jitter of at
//! most [`MAX_JITTER_GRAMS`] and never more than half the shelf's drift allowance, so two
//! readings of an untouched shelf always settle as "nothing taken". Stock persists across
//! openings until a restock.
//!
//! # Control subjects (core NATS, not JetStream)
//!
//! Each answers `{"ok":true}` or `{"ok":false,"error":"..."}` when the message has a reply
//! subject; a bad message is logged and otherwise ignored.
//!
//! - `latch.sim.<id>.fault`: `on` breaks the cabinet (it refuses to open), anything else clears
//!   the fault. Faults can also be set at start ([`SimConfig::faulty`]).
//! - `latch.sim.<id>.shopper`: arms a one-shot [`ShopperScript`] for the next shopper's opening
//!   (a later message replaces an armed one), e.g.
//!   `{"take":[{"shelf":1,"count":2},{"shelf":2,"count":1,"sku":"COLA"}],"hold_ms":300}`.
//!   Other fields: `put_back` (same shape as `take`), `foreign_grams`
//!   (`[{"shelf":3,"grams":120}]`), `faulty_shelf` and `unstable_shelf` (a shelf number whose
//!   `after` reading says `fault: true` / `stable: false`). Unknown fields are refused. The
//!   reply comes once the script is armed. Without an armed script a shopper's opening runs
//!   [`SimConfig::shopper`] (empty by default: nothing taken).
//! - `latch.sim.<id>.restock`: re-reads the planogram, refills every product to
//!   `units_per_slot` (or `{"units":n}`) and removes foreign objects.
//! - `latch.sim.<id>.holders`: answers `{"ok":true,"holders":{"<compartment>":{"holder":..,
//!   "position":..}}}`, the locker's own record of who holds each compartment it opens.
//!
//! # Holders (lockers)
//!
//! A `holder` command (`latch.cmd.<id>.holder`, a [`HolderCommand`] request) updates the
//! device's holder table when its log position is newer than the one it has, and is answered
//! `{"ok":true}` once kept (also for a repeat, which changes nothing); see [`holder`]. With
//! [`SimConfig::state_dir`] the table is kept in `<dir>/<id>.holders.json` across restarts.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use chrono::Utc;
use futures::StreamExt;
use latch_domain::store::Store;
use latch_domain::telemetry::{HolderCommand, OpenCommand, WireTelemetry};
use latch_domain::vending::{Planogram, RawReading, ShelfNo, Sku, WeighingPhase};
use latch_nats::subjects;
use latch_workers::CancellationToken;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// The most a reading strays from the shelf's true weight (less on tightly toleranced shelves).
pub const MAX_JITTER_GRAMS: i64 = 2;
/// Units of each product after a restock, unless configured otherwise.
pub const DEFAULT_UNITS_PER_SLOT: u32 = 10;
/// Bounds on control messages, so a typo cannot make a cabinet hold its door for a day.
const MAX_SCRIPT_COUNT: u32 = 1_000;
const MAX_SCRIPT_LINES: usize = 64;
const MAX_HOLD_MS: u64 = 600_000;
const MAX_FOREIGN_GRAMS: i64 = 100_000;
const MAX_RESTOCK_UNITS: u32 = 10_000;
/// Request ids remembered to ignore a redelivered open command.
const RECENT_REQUESTS: usize = 256;

#[derive(Clone)]
pub struct SimConfig {
    pub devices: Vec<Uuid>,
    pub heartbeat: Duration,
    /// How long the door stays open after an open command (unless a shopper script says).
    pub hold_open: Duration,
    /// Devices that start with a fault.
    pub faulty: Vec<Uuid>,
    /// Where planograms come from. `None`: no cabinet has load cells (no `weights` reports).
    pub store: Option<Arc<Store>>,
    /// Units of each planogram product at start and after a restock.
    pub units_per_slot: u32,
    /// What a shopper does when no one-shot script is armed (default: takes nothing).
    pub shopper: ShopperScript,
    /// Each cabinet's own NATS login (authorization on); `None`: all share the given client.
    pub logins: Option<DeviceLogins>,
    /// Where each locker keeps its holder table (`<dir>/<id>.holders.json`); `None`: in memory
    /// only, forgotten when the simulator stops.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            heartbeat: Duration::from_secs(5),
            hold_open: Duration::from_secs(3),
            faulty: Vec::new(),
            store: None,
            units_per_slot: DEFAULT_UNITS_PER_SLOT,
            shopper: ShopperScript::default(),
            logins: None,
            state_dir: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("devices", &self.devices)
            .field("heartbeat", &self.heartbeat)
            .field("hold_open", &self.hold_open)
            .field("faulty", &self.faulty)
            .field("store", &self.store.as_ref().map(|_| "Store"))
            .field("units_per_slot", &self.units_per_slot)
            .field("shopper", &self.shopper)
            .field("logins", &self.logins)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

mod cabinet;
mod device;
pub mod holder;
mod identity;
mod script;
mod stock;
#[cfg(test)]
mod tests;

pub use cabinet::run;
pub use device::SimDevice;
pub use identity::{issue_logins, DeviceLogins};
pub use script::{parse_take, Foreign, ShopperScript, Take};
pub use stock::{Applied, Moved, Stock};
