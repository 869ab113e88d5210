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

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use chrono::Utc;
use futures::StreamExt;
use latch_domain::store::Store;
use latch_domain::telemetry::{OpenCommand, WireTelemetry};
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
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Shopper scripts
// ---------------------------------------------------------------------------------------------

/// `count` units from `shelf`: of `sku`, or of the shelf's products in SKU order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Take {
    pub shelf: u8,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

impl Take {
    fn check(&self, field: &str) -> Result<(), String> {
        check_shelf(&format!("{field}.shelf"), self.shelf)?;
        if self.count > MAX_SCRIPT_COUNT {
            return Err(format!("{field}.count must be at most {MAX_SCRIPT_COUNT}"));
        }
        if let Some(sku) = &self.sku {
            Sku::parse(&format!("{field}.sku"), sku).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Something that is not stock, left on a shelf (negative: removed again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Foreign {
    pub shelf: u8,
    pub grams: i64,
}

/// What a shopper does while the door is open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopperScript {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub take: Vec<Take>,
    /// Units put on the shelf (bought earlier, or taken and returned in this opening).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put_back: Vec<Take>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_grams: Vec<Foreign>,
    /// How long the door stays open; default [`SimConfig::hold_open`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
    /// This shelf's `after` reading reports a sensor fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faulty_shelf: Option<u8>,
    /// This shelf's `after` reading is not stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unstable_shelf: Option<u8>,
}

impl ShopperScript {
    /// A script that only takes.
    pub fn taking(take: Vec<Take>) -> Self {
        Self {
            take,
            ..Self::default()
        }
    }

    /// Parses and checks a script from a control message.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let script: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        script.check()?;
        Ok(script)
    }

    fn check(&self) -> Result<(), String> {
        for (name, list) in [("take", &self.take), ("put_back", &self.put_back)] {
            if list.len() > MAX_SCRIPT_LINES {
                return Err(format!("{name} must list at most {MAX_SCRIPT_LINES} lines"));
            }
            for (i, t) in list.iter().enumerate() {
                t.check(&format!("{name}[{i}]"))?;
            }
        }
        if self.foreign_grams.len() > MAX_SCRIPT_LINES {
            return Err(format!(
                "foreign_grams must list at most {MAX_SCRIPT_LINES} lines"
            ));
        }
        for (i, f) in self.foreign_grams.iter().enumerate() {
            check_shelf(&format!("foreign_grams[{i}].shelf"), f.shelf)?;
            if f.grams.abs() > MAX_FOREIGN_GRAMS {
                return Err(format!(
                    "foreign_grams[{i}].grams must be within ±{MAX_FOREIGN_GRAMS}"
                ));
            }
        }
        if self.hold_ms.is_some_and(|ms| ms > MAX_HOLD_MS) {
            return Err(format!("hold_ms must be at most {MAX_HOLD_MS}"));
        }
        if let Some(s) = self.faulty_shelf {
            check_shelf("faulty_shelf", s)?;
        }
        if let Some(s) = self.unstable_shelf {
            check_shelf("unstable_shelf", s)?;
        }
        Ok(())
    }
}

fn check_shelf(field: &str, shelf: u8) -> Result<(), String> {
    if (1..=ShelfNo::MAX).contains(&shelf) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be a shelf number from 1 to {}",
            ShelfNo::MAX
        ))
    }
}

/// Parses `SHELF:COUNT[:SKU],...` (e.g. `1:2,2:1:COLA`) into takes; an empty string takes
/// nothing. For a `--take` command-line option.
pub fn parse_take(raw: &str) -> Result<Vec<Take>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let takes = raw
        .split(',')
        .map(|item| {
            let item = item.trim();
            let bad = || format!("{item:?}: expected SHELF:COUNT or SHELF:COUNT:SKU");
            let mut parts = item.split(':');
            let (Some(shelf), Some(count)) = (parts.next(), parts.next()) else {
                return Err(bad());
            };
            let sku = parts.next().map(str::to_owned);
            if parts.next().is_some() {
                return Err(bad());
            }
            let take = Take {
                shelf: shelf.trim().parse().map_err(|_| bad())?,
                count: count.trim().parse().map_err(|_| bad())?,
                sku,
            };
            take.check(&format!("{item:?}"))?;
            Ok(take)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if takes.len() > MAX_SCRIPT_LINES {
        return Err(format!("at most {MAX_SCRIPT_LINES} takes"));
    }
    Ok(takes)
}

// ---------------------------------------------------------------------------------------------
// Stock and load cells
// ---------------------------------------------------------------------------------------------

/// Units that moved in one opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub shelf: u8,
    pub sku: String,
    pub count: u32,
}

/// What a script did to the stock; `ignored` names the lines that matched nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub taken: Vec<Moved>,
    pub put_back: Vec<Moved>,
    pub ignored: Vec<String>,
}

/// What one simulated cabinet physically holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stock {
    planogram: Planogram,
    seed: u64,
    /// Per (shelf, SKU) of the planogram.
    units: BTreeMap<(u8, String), u32>,
    /// Grams of foreign objects per shelf.
    foreign: BTreeMap<u8, i64>,
    /// Readings taken so far: the jitter's counter.
    weighings: u64,
}

impl Stock {
    /// A freshly stocked cabinet: `units_per_slot` of every product.
    pub fn new(device: Uuid, planogram: Planogram, units_per_slot: u32) -> Self {
        let (hi, lo) = device.as_u64_pair();
        let mut stock = Self {
            planogram,
            seed: mix(hi ^ mix(lo)),
            units: BTreeMap::new(),
            foreign: BTreeMap::new(),
            weighings: 0,
        };
        stock.restock(units_per_slot);
        stock
    }

    pub fn planogram(&self) -> &Planogram {
        &self.planogram
    }

    /// Switches to a new planogram: products still in it keep their count, new ones arrive
    /// with `units_per_slot`, removed ones leave.
    pub fn adopt(&mut self, planogram: Planogram, units_per_slot: u32) {
        self.units = planogram
            .slots()
            .iter()
            .map(|s| {
                let key = (s.shelf.get(), s.sku.as_str().to_owned());
                let n = self.units.get(&key).copied().unwrap_or(units_per_slot);
                (key, n)
            })
            .collect();
        self.planogram = planogram;
    }

    /// Every product back to `units_per_slot`; foreign objects removed.
    pub fn restock(&mut self, units_per_slot: u32) {
        self.units = self
            .planogram
            .slots()
            .iter()
            .map(|s| ((s.shelf.get(), s.sku.as_str().to_owned()), units_per_slot))
            .collect();
        self.foreign.clear();
    }

    /// Units of `sku` on `shelf` (0 for a product the planogram does not put there).
    pub fn units(&self, shelf: u8, sku: &str) -> u32 {
        self.units
            .get(&(shelf, sku.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The empty shelf's weight: 1 000–2 000 g, fixed per cabinet and shelf.
    pub fn tare(&self, shelf: u8) -> i64 {
        1_000 + (mix(self.seed ^ u64::from(shelf)) % 1_001) as i64
    }

    /// The shelf's true weight, without jitter.
    pub fn shelf_grams(&self, shelf: u8) -> i64 {
        let goods: i64 = self
            .planogram
            .slots()
            .iter()
            .filter(|s| s.shelf.get() == shelf)
            .map(|s| i64::from(self.units(shelf, s.sku.as_str())) * s.unit_weight.get())
            .sum();
        self.tare(shelf) + goods + self.foreign.get(&shelf).copied().unwrap_or(0)
    }

    /// How far this shelf's readings may stray: at most [`MAX_JITTER_GRAMS`], and at most half
    /// of the shelf's drift allowance so that two readings differ by no more than the drift.
    pub fn jitter_bound(&self, shelf: u8) -> i64 {
        let drift = ShelfNo::parse("shelf", i64::from(shelf))
            .ok()
            .and_then(|s| self.planogram.drift(s))
            .map_or(0, |g| g.get());
        MAX_JITTER_GRAMS.min(drift / 2).max(0)
    }

    /// One reading of every planogram shelf, as the cabinet reports it.
    pub fn weigh(&mut self, faulty: Option<u8>, unstable: Option<u8>) -> Vec<RawReading> {
        self.weighings += 1;
        let n = self.weighings;
        self.planogram
            .shelves()
            .into_iter()
            .map(|s| {
                let shelf = s.get();
                let bound = self.jitter_bound(shelf);
                RawReading {
                    shelf: i64::from(shelf),
                    grams: self.shelf_grams(shelf) + jitter(self.seed, shelf, n, bound),
                    stable: unstable != Some(shelf),
                    fault: faulty == Some(shelf),
                }
            })
            .collect()
    }

    /// Runs a script against the stock: takes what is there (never more), puts back, leaves
    /// foreign objects.
    pub fn apply(&mut self, script: &ShopperScript) -> Applied {
        let mut applied = Applied::default();
        for t in &script.take {
            let mut left = t.count;
            let mut matched = false;
            for key in self.keys_for(t) {
                matched = true;
                let have = self.units.get_mut(&key).expect("key from the map");
                let n = left.min(*have);
                if n > 0 {
                    *have -= n;
                    left -= n;
                    applied.taken.push(Moved {
                        shelf: key.0,
                        sku: key.1,
                        count: n,
                    });
                }
                if left == 0 {
                    break;
                }
            }
            if !matched {
                applied.ignored.push(format!("take {}", describe(t)));
            }
        }
        for t in &script.put_back {
            match self.keys_for(t).into_iter().next() {
                Some(key) => {
                    let have = self.units.get_mut(&key).expect("key from the map");
                    *have = have.saturating_add(t.count);
                    applied.put_back.push(Moved {
                        shelf: key.0,
                        sku: key.1,
                        count: t.count,
                    });
                }
                None => applied.ignored.push(format!("put_back {}", describe(t))),
            }
        }
        for f in &script.foreign_grams {
            let uses_shelf = self
                .planogram
                .slots()
                .iter()
                .any(|s| s.shelf.get() == f.shelf);
            if uses_shelf {
                *self.foreign.entry(f.shelf).or_default() += f.grams;
            } else {
                applied.ignored.push(format!(
                    "foreign_grams on shelf {} (no load cell reported)",
                    f.shelf
                ));
            }
        }
        applied
    }

    /// The stock entries a take or put-back line addresses, in SKU order.
    fn keys_for(&self, t: &Take) -> Vec<(u8, String)> {
        self.units
            .keys()
            .filter(|(shelf, sku)| *shelf == t.shelf && t.sku.as_ref().is_none_or(|s| s == sku))
            .cloned()
            .collect()
    }
}

fn describe(t: &Take) -> String {
    match &t.sku {
        Some(sku) => format!(
            "{}×{sku} from shelf {} (not on that shelf)",
            t.count, t.shelf
        ),
        None => format!("{} from shelf {} (no products there)", t.count, t.shelf),
    }
}

/// SplitMix64's finaliser: a cheap, well-spread hash for deterministic noise.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in `-bound..=bound`, fixed by cabinet, shelf and weighing number.
fn jitter(seed: u64, shelf: u8, weighing: u64, bound: i64) -> i64 {
    if bound <= 0 {
        return 0;
    }
    let span = (2 * bound + 1) as u64;
    (mix(seed ^ mix(weighing) ^ (u64::from(shelf) << 56)) % span) as i64 - bound
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// One simulated cabinet's publishing side.
#[derive(Clone)]
pub struct SimDevice {
    pub id: Uuid,
    js: Context,
    boot: i64,
    counter: Arc<AtomicU64>,
}

impl SimDevice {
    pub fn new(id: Uuid, js: Context) -> Self {
        Self {
            id,
            js,
            boot: Utc::now().timestamp_millis(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn wire(&self, kind: &str) -> WireTelemetry {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        WireTelemetry {
            v: 1,
            msg_id: format!("{}-{n}", self.boot),
            device_id: self.id.to_string(),
            sent_at: Utc::now(),
            kind: kind.to_owned(),
            uptime_s: None,
            temperature_c: None,
            state: None,
            request_id: None,
            code: None,
            message: None,
            active: None,
            session_id: None,
            phase: None,
            shelves: None,
        }
    }

    /// Publishes through JetStream and waits for the stream's ack. No Nats-Msg-Id: the
    /// stream's dedupe is shared by all devices (so not trusted); Latch deduplicates on
    /// (device, msg_id) from the subject and payload.
    pub async fn send(&self, wire: WireTelemetry) -> Result<(), async_nats::Error> {
        let subject = subjects::telemetry(&wire.device_id, &wire.kind);
        let body = serde_json::to_vec(&wire)?;
        self.js
            .send_publish(subject, PublishMessage::build().payload(body.into()))
            .await?
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, uptime_s: u64) -> Result<(), async_nats::Error> {
        let mut w = self.wire("heartbeat");
        w.uptime_s = Some(uptime_s.into());
        w.temperature_c = serde_json::Number::from_f64(4.0);
        self.send(w).await
    }

    pub async fn door(
        &self,
        open: bool,
        request_id: Option<Uuid>,
    ) -> Result<(), async_nats::Error> {
        let mut w = self.wire("door");
        w.state = Some(if open { "open" } else { "closed" }.to_owned());
        w.request_id = request_id;
        self.send(w).await
    }

    pub async fn fault(&self, active: bool, code: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("fault");
        w.code = Some(code.to_owned());
        w.message = Some(if active { "simulated fault" } else { "cleared" }.to_owned());
        w.active = Some(active);
        self.send(w).await
    }

    pub async fn refuse(&self, request_id: Uuid, reason: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("open_refused");
        w.request_id = Some(request_id);
        w.message = Some(reason.to_owned());
        self.send(w).await
    }

    /// A `weights` report for a shopper's session.
    pub async fn weights(
        &self,
        session_id: Uuid,
        phase: WeighingPhase,
        shelves: Vec<RawReading>,
    ) -> Result<(), async_nats::Error> {
        let mut w = self.wire("weights");
        w.session_id = Some(session_id);
        w.phase = Some(
            match phase {
                WeighingPhase::Before => "before",
                WeighingPhase::After => "after",
            }
            .to_owned(),
        );
        w.shelves = Some(shelves);
        self.send(w).await
    }
}

// ---------------------------------------------------------------------------------------------
// Running cabinets
// ---------------------------------------------------------------------------------------------

/// Runs every configured cabinet until `shutdown`.
pub async fn run(client: async_nats::Client, config: SimConfig, shutdown: CancellationToken) {
    let js = latch_nats::jetstream(client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for id in &config.devices {
        let device = SimDevice::new(*id, js.clone());
        let faulty = config.faulty.contains(id);
        let span = tracing::info_span!("sim", device = %id);
        tasks.spawn(
            cabinet(
                client.clone(),
                device,
                faulty,
                config.clone(),
                shutdown.clone(),
            )
            .instrument(span),
        );
    }
    tracing::info!(
        devices = config.devices.len(),
        load_cells = config.store.is_some(),
        "simulator running"
    );
    while tasks.join_next().await.is_some() {}
}

#[derive(Default)]
struct State {
    /// `None`: no planogram, so no load cells.
    stock: Option<Stock>,
    /// The one-shot script for the next shopper's opening.
    armed: Option<ShopperScript>,
}

/// What a cabinet's loop and its openings share.
struct Cabinet {
    client: async_nats::Client,
    device: SimDevice,
    config: SimConfig,
    state: Mutex<State>,
    /// Held for a whole opening: a second opening waits for the door to close.
    door: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    units: Option<u32>,
}

impl Cabinet {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the cabinet's planogram again; on a database error the last one stays.
    async fn refresh_planogram(&self) {
        let Some(store) = &self.config.store else {
            return;
        };
        let loaded = match store.planograms.load(&self.device.id.to_string()).await {
            Ok(found) => found.and_then(|c| c.current),
            Err(e) => {
                tracing::warn!(error = %e, "planogram not read; keeping the last one");
                return;
            }
        };
        let units = self.config.units_per_slot;
        let mut state = self.state();
        match (loaded, state.stock.as_mut()) {
            (None, Some(_)) => {
                state.stock = None;
                tracing::info!("planogram gone: load cells off");
            }
            (None, None) => {}
            (Some(p), Some(stock)) => {
                if *stock.planogram() != p {
                    stock.adopt(p, units);
                    tracing::info!(slots = stock.planogram().slots().len(), "planogram changed");
                }
            }
            (Some(p), None) => {
                let slots = p.slots().len();
                state.stock = Some(Stock::new(self.device.id, p, units));
                tracing::info!(slots, units_per_slot = units, "planogram loaded, stocked");
            }
        }
    }

    async fn reply(&self, msg: &async_nats::Message, outcome: Result<(), String>) {
        let body = match &outcome {
            Ok(()) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        };
        if let Some(reply) = &msg.reply {
            if let Err(e) = self
                .client
                .publish(reply.clone(), body.to_string().into())
                .await
            {
                tracing::warn!(error = %e, "control reply not sent");
            }
        }
    }

    /// A message on `latch.sim.<id>.<what>`.
    async fn control(&self, msg: async_nats::Message, faulty: &mut bool) {
        let what = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let outcome = match what.as_str() {
            "fault" => {
                *faulty = msg.payload.as_ref() == b"on";
                tracing::info!(faulty = *faulty, "fault switch");
                if let Err(e) = self.device.fault(*faulty, "simulated").await {
                    tracing::warn!(error = %e, "fault report not delivered");
                }
                Ok(())
            }
            "shopper" => match ShopperScript::parse(&msg.payload) {
                Ok(script) => {
                    tracing::info!(?script, "shopper script armed");
                    self.state().armed = Some(script);
                    Ok(())
                }
                Err(e) => Err(format!("shopper script refused: {e}")),
            },
            "restock" => self.restock(&msg.payload).await,
            other => Err(format!("unknown control subject {other:?}")),
        };
        if let Err(e) = &outcome {
            tracing::warn!(subject = %msg.subject, error = %e, "control message ignored");
        }
        self.reply(&msg, outcome).await;
    }

    async fn restock(&self, body: &[u8]) -> Result<(), String> {
        let units = if body.iter().all(u8::is_ascii_whitespace) {
            self.config.units_per_slot
        } else {
            let r: Restock = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let units = r.units.unwrap_or(self.config.units_per_slot);
            if units > MAX_RESTOCK_UNITS {
                return Err(format!("units must be at most {MAX_RESTOCK_UNITS}"));
            }
            units
        };
        self.refresh_planogram().await;
        match self.state().stock.as_mut() {
            Some(stock) => {
                stock.restock(units);
                tracing::info!(units, "restocked");
                Ok(())
            }
            None => Err("the cabinet has no planogram".into()),
        }
    }

    /// Keeps the door open for `hold`, or less if the simulator is stopping.
    async fn hold(&self, hold: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn open_door(&self, request_id: Uuid) {
        if let Err(e) = self.device.door(true, Some(request_id)).await {
            tracing::warn!(error = %e, "door-open event not delivered");
        }
    }

    async fn close_door(&self) {
        if let Err(e) = self.device.door(false, None).await {
            tracing::warn!(error = %e, "door-closed event not delivered");
        }
    }

    /// Carries out one open command (the cabinet is not faulty).
    async fn opening(self: Arc<Self>, open: OpenCommand) {
        let _door = self.door.lock().await;
        if open.deadline <= Utc::now() {
            // Waited behind another opening for too long: Latch has given up on this one.
            tracing::warn!(deadline = %open.deadline, "open command expired while the door was busy; ignored");
            return;
        }
        let Some(session_id) = open.session_id else {
            tracing::info!("operator opening");
            self.open_door(open.request_id).await;
            self.hold(self.config.hold_open).await;
            self.close_door().await;
            return;
        };
        self.refresh_planogram().await;
        let script = self
            .state()
            .armed
            .take()
            .unwrap_or_else(|| self.config.shopper.clone());
        let hold = script
            .hold_ms
            .map_or(self.config.hold_open, Duration::from_millis);
        let before = self.state().stock.as_mut().map(|s| s.weigh(None, None));
        match before {
            Some(shelves) => {
                if let Err(e) = self
                    .device
                    .weights(session_id, WeighingPhase::Before, shelves)
                    .await
                {
                    tracing::warn!(error = %e, "baseline not delivered; not opening");
                    let _ = self
                        .device
                        .refuse(open.request_id, "weighing not delivered")
                        .await;
                    return;
                }
            }
            None => tracing::info!("shopper opening without load cells (no planogram)"),
        }
        self.open_door(open.request_id).await;
        self.hold(hold).await;
        let applied = self.state().stock.as_mut().map(|s| s.apply(&script));
        if let Some(applied) = &applied {
            if !applied.ignored.is_empty() {
                tracing::warn!(ignored = ?applied.ignored, "script lines matched nothing");
            }
            tracing::info!(taken = ?applied.taken, put_back = ?applied.put_back, "shopper done");
        }
        self.close_door().await;
        let after = self
            .state()
            .stock
            .as_mut()
            .map(|s| s.weigh(script.faulty_shelf, script.unstable_shelf));
        if let Some(shelves) = after {
            if let Err(e) = self
                .device
                .weights(session_id, WeighingPhase::After, shelves)
                .await
            {
                tracing::warn!(error = %e, "closing weights not delivered");
            }
        }
    }
}

async fn cabinet(
    client: async_nats::Client,
    device: SimDevice,
    mut faulty: bool,
    config: SimConfig,
    shutdown: CancellationToken,
) {
    let id = device.id.to_string();
    let (mut commands, mut control) = match (
        client.subscribe(subjects::device_commands_all(&id)).await,
        client.subscribe(subjects::sim_controls_all(&id)).await,
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe");
            return;
        }
    };
    let heartbeat = config.heartbeat;
    let cab = Arc::new(Cabinet {
        client,
        device,
        config,
        state: Mutex::new(State::default()),
        door: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
    });
    cab.refresh_planogram().await;
    let started = tokio::time::Instant::now();
    // The first door report is what makes the cabinet usable; a busy or just-started
    // JetStream may not take it at once, so keep offering it until it is acknowledged.
    let mut wait = Duration::from_millis(200);
    while let Err(e) = cab.device.door(false, None).await {
        tracing::warn!(error = %e, "initial door state not delivered; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    if faulty {
        let _ = cab.device.fault(true, "simulated").await;
    }
    let mut openings = tokio::task::JoinSet::new();
    let mut recent: VecDeque<Uuid> = VecDeque::with_capacity(RECENT_REQUESTS);
    let mut beat = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => {
                if let Err(e) = cab.device.heartbeat(started.elapsed().as_secs()).await {
                    tracing::warn!(error = %e, "heartbeat not delivered");
                }
            }
            Some(msg) = control.next() => cab.control(msg, &mut faulty).await,
            Some(msg) = commands.next() => {
                if !msg.subject.ends_with(".open") {
                    tracing::warn!(subject = %msg.subject, "unknown command ignored");
                    continue;
                }
                let open = match serde_json::from_slice::<OpenCommand>(&msg.payload) {
                    Ok(open) => open,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable command ignored");
                        continue;
                    }
                };
                if recent.contains(&open.request_id) {
                    tracing::info!(request_id = %open.request_id, "repeated open command ignored");
                    continue;
                }
                if recent.len() == RECENT_REQUESTS {
                    recent.pop_front();
                }
                recent.push_back(open.request_id);
                if faulty {
                    tracing::info!(request_id = %open.request_id, "faulty: refusing to open");
                    let _ = cab.device.refuse(open.request_id, "device fault").await;
                    continue;
                }
                let span = tracing::info_span!(
                    "opening",
                    request_id = %open.request_id,
                    session_id = open.session_id.map(|s| s.to_string()),
                );
                openings.spawn(cab.clone().opening(open).instrument(span));
            }
            Some(done) = openings.join_next() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "opening task failed");
                }
            }
        }
    }
    // Openings under way close their doors at once and report.
    while let Some(done) = openings.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "opening task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_domain::vending::{settle, RawSlot, Settlement, Weighing};

    fn raw(shelf: i64, sku: &str, weight: i64, tolerance: i64) -> RawSlot {
        RawSlot {
            shelf,
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_weight: weight,
            tolerance,
            unit_price: 300,
            currency: "CNY".into(),
        }
    }

    /// Shelf 1: cola and chips (200 g, so that no handful of chips weighs like two colas);
    /// shelf 2: water; shelf 3: sweets with no tolerance to spare.
    fn planogram() -> Planogram {
        Planogram::parse(
            "slots",
            &[
                raw(1, "COLA", 355, 10),
                raw(1, "CHIPS", 200, 3),
                raw(2, "WATER", 550, 15),
                raw(3, "SWEET", 10, 1),
            ],
        )
        .unwrap()
    }

    fn stock() -> Stock {
        Stock::new(
            Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
            planogram(),
            10,
        )
    }

    fn weighing(shelves: &[RawReading]) -> Weighing {
        Weighing::parse("shelves", shelves).unwrap()
    }

    #[test]
    fn a_reading_is_tare_plus_units_within_jitter() {
        let mut s = stock();
        for shelf in 1..=3 {
            let tare = s.tare(shelf);
            assert!((1_000..=2_000).contains(&tare), "tare {tare}");
        }
        assert_eq!(s.shelf_grams(1), s.tare(1) + 10 * 355 + 10 * 200);
        assert_eq!(s.shelf_grams(2), s.tare(2) + 10 * 550);
        assert_eq!(s.shelf_grams(3), s.tare(3) + 10 * 10);
        let readings = s.weigh(None, None);
        assert_eq!(
            readings.iter().map(|r| r.shelf).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for r in &readings {
            let shelf = r.shelf as u8;
            assert!((r.grams - s.shelf_grams(shelf)).abs() <= MAX_JITTER_GRAMS);
            assert!(r.stable && !r.fault);
        }
        // Fixed per cabinet and shelf; another cabinet gets other tares.
        assert_eq!(stock().tare(1), s.tare(1));
        let other = Stock::new(Uuid::from_u128(2), planogram(), 10);
        assert_ne!(
            (1..=3).map(|n| other.tare(n)).collect::<Vec<_>>(),
            (1..=3).map(|n| s.tare(n)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn jitter_stays_within_half_the_drift() {
        let s = stock();
        assert_eq!(s.jitter_bound(1), 1); // drift 3
        assert_eq!(s.jitter_bound(2), 2); // drift 15
        assert_eq!(s.jitter_bound(3), 0); // drift 1: a 10 g sweet must not blur
        assert_eq!(s.jitter_bound(9), 0); // not in the planogram
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..2_000 {
            let j = jitter(s.seed, 1, n, 2);
            assert!((-2..=2).contains(&j));
            seen.insert(j);
        }
        assert_eq!(seen.len(), 5, "jitter uses the whole range");
        assert_eq!(jitter(s.seed, 1, 7, 2), jitter(s.seed, 1, 7, 2));
        assert_eq!(jitter(s.seed, 1, 7, 0), 0);
        // Two readings of an untouched cabinet always settle as nothing taken.
        let mut s = stock();
        for _ in 0..200 {
            let before = weighing(&s.weigh(None, None));
            let after = weighing(&s.weigh(None, None));
            assert_eq!(
                settle(s.planogram(), &before, &after),
                Settlement::NothingTaken
            );
        }
    }

    #[test]
    fn what_the_script_takes_is_what_latch_charges() {
        let mut s = stock();
        let before = weighing(&s.weigh(None, None));
        let script = ShopperScript::parse(
            br#"{"take":[{"shelf":1,"count":2,"sku":"COLA"},{"shelf":2,"count":1}],"hold_ms":300}"#,
        )
        .unwrap();
        assert_eq!(script.hold_ms, Some(300));
        let applied = s.apply(&script);
        assert!(applied.ignored.is_empty());
        assert_eq!(s.units(1, "COLA"), 8);
        assert_eq!(s.units(1, "CHIPS"), 10);
        assert_eq!(s.units(2, "WATER"), 9);
        let after = weighing(&s.weigh(None, None));
        let Settlement::Charged { lines, .. } = settle(s.planogram(), &before, &after) else {
            panic!("not charged");
        };
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.shelf.get(), l.sku.as_str().to_owned(), l.quantity))
            .collect();
        assert_eq!(got, [(1, "COLA".into(), 2), (2, "WATER".into(), 1)]);
    }

    #[test]
    fn taking_beyond_stock_takes_what_is_there() {
        let mut s = stock();
        let applied = s.apply(&ShopperScript::taking(vec![Take {
            shelf: 2,
            count: 15,
            sku: None,
        }]));
        assert_eq!(
            applied.taken,
            [Moved {
                shelf: 2,
                sku: "WATER".into(),
                count: 10
            }]
        );
        assert_eq!(s.units(2, "WATER"), 0);
        assert_eq!(s.shelf_grams(2), s.tare(2));
        let again = s.apply(&ShopperScript::taking(parse_take("2:1").unwrap()));
        assert!(again.taken.is_empty() && again.ignored.is_empty());
        // Without a SKU a shared shelf gives up its products in SKU order.
        let applied = s.apply(&ShopperScript::taking(parse_take("1:12").unwrap()));
        assert_eq!(
            applied.taken,
            [
                Moved {
                    shelf: 1,
                    sku: "CHIPS".into(),
                    count: 10
                },
                Moved {
                    shelf: 1,
                    sku: "COLA".into(),
                    count: 2
                }
            ]
        );
        // Lines that match nothing are named, not fatal.
        let applied = s.apply(&ShopperScript::taking(parse_take("5:1,1:1:FANTA").unwrap()));
        assert_eq!(applied.ignored.len(), 2);
        // A restock refills everything.
        s.restock(10);
        assert_eq!((s.units(1, "CHIPS"), s.units(2, "WATER")), (10, 10));
    }

    #[test]
    fn put_back_foreign_objects_and_sensor_faults_show_in_the_after_reading() {
        let mut s = stock();
        let script = ShopperScript::parse(
            br#"{"put_back":[{"shelf":2,"count":1}],"foreign_grams":[{"shelf":3,"grams":120},{"shelf":7,"grams":5}],"faulty_shelf":1,"unstable_shelf":2}"#,
        )
        .unwrap();
        let applied = s.apply(&script);
        assert_eq!(applied.put_back.len(), 1);
        assert_eq!(applied.ignored.len(), 1, "{applied:?}");
        assert_eq!(s.units(2, "WATER"), 11);
        assert_eq!(s.shelf_grams(3), s.tare(3) + 100 + 120);
        let after = s.weigh(script.faulty_shelf, script.unstable_shelf);
        assert!(after[0].fault && after[0].stable);
        assert!(!after[1].fault && !after[1].stable);
        assert!(!after[2].fault && after[2].stable);
        // The foreign object stays until a restock.
        assert_eq!(s.shelf_grams(3), s.tare(3) + 220);
        s.restock(10);
        assert_eq!(s.shelf_grams(3), s.tare(3) + 100);
    }

    #[test]
    fn a_new_planogram_keeps_the_counts_of_products_still_in_it() {
        let mut s = stock();
        s.apply(&ShopperScript::taking(parse_take("1:3:COLA,2:4").unwrap()));
        let next =
            Planogram::parse("slots", &[raw(1, "COLA", 355, 10), raw(4, "TEA", 500, 15)]).unwrap();
        s.adopt(next, 6);
        assert_eq!(s.units(1, "COLA"), 7);
        assert_eq!(s.units(1, "CHIPS"), 0);
        assert_eq!(s.units(2, "WATER"), 0);
        assert_eq!(s.units(4, "TEA"), 6);
        let shelves: Vec<_> = s.weigh(None, None).iter().map(|r| r.shelf).collect();
        assert_eq!(shelves, [1, 4]);
    }

    #[test]
    fn take_lists_parse() {
        assert_eq!(parse_take("").unwrap(), []);
        assert_eq!(
            parse_take("1:2, 2:1:COLA").unwrap(),
            [
                Take {
                    shelf: 1,
                    count: 2,
                    sku: None
                },
                Take {
                    shelf: 2,
                    count: 1,
                    sku: Some("COLA".into())
                }
            ]
        );
        for bad in [
            "1", "x:1", "1:-1", "0:1", "33:1", "1:2:3:4", "1:2:", "1:2:A B", "1:5000", "1:2,,",
        ] {
            assert!(parse_take(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_scripts_are_refused_with_a_reason() {
        assert_eq!(
            ShopperScript::parse(b"{}").unwrap(),
            ShopperScript::default()
        );
        let cases: [&[u8]; 8] = [
            b"not json",
            br#"{"take":[{"shelf":1}]}"#,
            br#"{"take":[{"shelf":0,"count":1}]}"#,
            br#"{"take":[{"shelf":1,"count":1,"colour":"red"}]}"#,
            br#"{"hold_ms":86400000}"#,
            br#"{"faulty_shelf":40}"#,
            br#"{"foreign_grams":[{"shelf":1,"grams":1000000}]}"#,
            br#"{"takes":[]}"#,
        ];
        for bytes in cases {
            let e = ShopperScript::parse(bytes).unwrap_err();
            assert!(!e.is_empty(), "{}", String::from_utf8_lossy(bytes));
        }
        assert!(ShopperScript::parse(br#"{"take":[{"shelf":1,"count":1}]}"#).is_ok());
    }
}
