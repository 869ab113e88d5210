//! Loading an aggregate through a snapshot of its state gives the same state as folding its
//! whole stream, for every aggregate type (issue 12, DESIGN.md section 4).
//!
//! A snapshot is the aggregate as `serde_json::to_value(&state)`, read back with
//! `serde_json::from_value`, followed by the events after it. That is only sound if every state
//! the domain can reach survives the JSON round trip: a `#[serde(skip)]` field, a map with
//! non-string keys, a float, a field whose `Deserialize` differs from its `Serialize` or a
//! default that differs would make a snapshot load quietly disagree with the events.
//!
//! How: each aggregate gets a small script language (steps over small pools of users, ids and
//! amounts, with times that only move forward). A script is run through the aggregate's own
//! decision (`decide`, which its `Aggregate::handle` calls), refused commands are skipped and
//! accepted events applied, so every stream here is one the domain can really write. Each event
//! is then stored as the store keeps it (a `SerializedEvent` with its type and version) and read
//! back through [`latch_domain::upcast::upcast`] and `serde_json`. For every split point `k`,
//! the state folded from `events[..k]`, round-tripped through JSON and then given `events[k..]`,
//! must equal the fold of all events: compared as JSON, as `Debug` (which also shows anything
//! serde would skip) and with `PartialEq` where the aggregate has it.
//!
//! Old versions: device streams whose registration is stored as `DeviceRegistered` version 0
//! (`name`, no `kind`) are read through the upcaster and checked the same way.
//!
//! `every_event_variant_is_generated` keeps the generators honest: over a fixed-seed sample,
//! each aggregate's generator must produce every one of its event types.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use latch_domain::access::{
    ApiToken, LockerLogin, LoginCommand, LoginEvent, LoginRefusal, RevokeReason, Subject,
    TokenCommand, TokenEvent, TokenRole, TokenVia,
};
use latch_domain::device::{
    Device, DeviceCommand, DeviceEvent, DeviceId, DeviceKind, DoorState, FaultCode, Label,
    OpenFailure, ShopperOpen, SiteCode,
};
use latch_domain::locker::{
    Authorizer, AuthorizerCommand, AuthorizerNumber, Compartment, CompartmentCommand,
    CompartmentId, CompartmentNumber, Endpoint, Grant, GrantCommand, GrantTarget, LockerUser,
    ParcelNumber, Site, SiteCommand, Size, UserCommand, UserNumber,
};
use latch_domain::qr_login::{Ext, LoginId, LoginOrigin, QrLogin, QrLoginCommand, QrLoginEvent};
use latch_domain::upcast::upcast;
use latch_domain::vending::{
    CabinetPlanogram, Currency, KazayaUserId, Member, MemberCommand, Money, OperatorId,
    PaymentState, Planogram, PlanogramCommand, Profile, ProviderRef, RawReading, RawSlot,
    ReviewLine, ScanCommand, ScanEvent, ScanVerdict, Session, SessionId, ShelfNo, ShoppingCommand,
    ShoppingEvent, ShoppingSession, Sku, StickerScan, Weighing, WeighingPhase,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Debug;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Modest: the whole file runs in a few seconds in a debug build.
const CASES: u32 = 96;

fn config() -> Config {
    Config {
        cases: CASES,
        // Failing cases are kept next to this file, in `snapshot_fold.proptest-regressions`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Times carry nanoseconds, so a snapshot that lost precision would show.
fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap()
}

/// The time between two steps: up to `max` seconds, with odd nanoseconds.
fn gap(max: i64) -> impl Strategy<Value = Duration> {
    (0..max * 1_000, 0i64..1_000)
        .prop_map(|(ms, ns)| Duration::milliseconds(ms) + Duration::nanoseconds(ns))
}

/// A script: a first step (registration, minting, ...), then up to `max` more, each after a gap
/// of up to `max_gap` seconds.
fn script<S: Clone + Debug>(
    first: impl Strategy<Value = S>,
    step: impl Strategy<Value = S>,
    max: usize,
    max_gap: i64,
) -> impl Strategy<Value = Vec<(Duration, S)>> {
    (
        (gap(max_gap), first),
        prop::collection::vec((gap(max_gap), step), 0..max),
    )
        .prop_map(|(first, mut rest)| {
            rest.insert(0, first);
            rest
        })
}

/// What a step needs besides the state: the time, and a number no other step of the script has
/// (for fresh ids: request ids, session ids, payment ids are never reused by the real callers).
#[derive(Clone, Copy)]
struct Now {
    at: DateTime<Utc>,
    fresh: u128,
}

impl Now {
    fn id(&self, kind: u128) -> Uuid {
        Uuid::from_u128((kind << 64) | self.fresh)
    }
}

/// Runs a script through the aggregate's own decision: refused commands are skipped, accepted
/// events are applied and kept, so the stream is one the domain can really produce.
fn run<A, S, E>(
    steps: &[(Duration, S)],
    command: impl Fn(&A, &S, Now) -> A::Command,
    decide: impl Fn(&A, A::Command) -> Result<Vec<A::Event>, E>,
) -> Vec<A::Event>
where
    A: Aggregate,
{
    let mut state = A::default();
    let mut at = t0();
    let mut events = Vec::new();
    for (i, (dt, step)) in steps.iter().enumerate() {
        at += *dt;
        let now = Now {
            at,
            fresh: i as u128 + 1,
        };
        if let Ok(new) = decide(&state, command(&state, step, now)) {
            for event in new {
                state.apply(event.clone());
                events.push(event);
            }
        }
    }
    events
}

/// The events as the store keeps them: one row each, with type, version and JSON payload.
fn store<A: Aggregate>(events: &[A::Event]) -> Vec<SerializedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            SerializedEvent::new(
                "aggregate-under-test".into(),
                i + 1,
                A::TYPE.into(),
                event.event_type(),
                event.event_version(),
                serde_json::to_value(event).expect("an event serializes"),
                json!({}),
            )
        })
        .collect()
}

/// The rows read back as the store reads them: through the upcasters, then `serde_json`.
fn read<A: Aggregate>(rows: &[SerializedEvent]) -> Vec<A::Event> {
    rows.iter()
        .cloned()
        .map(|row| {
            let row = upcast(row);
            serde_json::from_value(row.payload).expect("a stored event reads back")
        })
        .collect()
}

fn fold<A: Aggregate>(mut state: A, events: &[A::Event]) -> A {
    for event in events {
        state.apply(event.clone());
    }
    state
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("a state serializes")
}

/// A snapshot taken and loaded, exactly as the store does it.
fn through_snapshot<A: Aggregate>(state: &A) -> A {
    serde_json::from_value(to_json(state)).expect("a snapshot reads back")
}

/// The property, on stored rows: for every split point `k`, loading the snapshot of the fold of
/// `events[..k]` and applying `events[k..]` equals the fold of all events.
fn snapshot_equals_fold<A>(
    rows: &[SerializedEvent],
    same: impl Fn(&A, &A) -> bool,
) -> Result<(), TestCaseError>
where
    A: Aggregate + Debug,
{
    let events = read::<A>(rows);
    let full = fold(A::default(), &events);
    let (full_json, full_debug) = (to_json(&full), format!("{full:?}"));
    let mut prefix = A::default();
    for k in 0..=events.len() {
        let loaded = fold(through_snapshot(&prefix), &events[k..]);
        prop_assert_eq!(
            &to_json(&loaded),
            &full_json,
            "JSON differs, snapshot at {}",
            k
        );
        prop_assert_eq!(
            &format!("{loaded:?}"),
            &full_debug,
            "state differs, snapshot at {}",
            k
        );
        prop_assert!(same(&loaded, &full), "not equal, snapshot at {}", k);
        if let Some(event) = events.get(k) {
            prefix.apply(event.clone());
        }
    }
    Ok(())
}

/// The property for a stream of current-version events, which must also read back unchanged.
fn check<A>(events: &[A::Event], same: impl Fn(&A, &A) -> bool) -> Result<(), TestCaseError>
where
    A: Aggregate + Debug,
{
    let rows = store::<A>(events);
    prop_assert_eq!(&read::<A>(&rows), events, "events do not survive the store");
    snapshot_equals_fold::<A>(&rows, same)
}

/// Picks from a pool by a generated index (any index: it wraps).
fn pick<T: Clone>(pool: &[T], i: u8) -> T {
    pool[usize::from(i) % pool.len()].clone()
}

fn label(raw: &str) -> Label {
    Label::parse("label", raw, 200).unwrap()
}

fn site_code(raw: &str) -> SiteCode {
    SiteCode::parse("site", raw).unwrap()
}

fn user_number(raw: &str) -> UserNumber {
    UserNumber::parse("user", raw).unwrap()
}

fn authorizer_number(raw: &str) -> AuthorizerNumber {
    AuthorizerNumber::parse("authorizer", raw).unwrap()
}

fn endpoint(raw: &str) -> Endpoint {
    Endpoint::parse("endpoint", raw).unwrap()
}

const SITES: [&str; 2] = ["610091A01", "hz-west_2"];
const NAMES: [&str; 3] = ["西湖驿站", "Depot 7", "Ünïcødé ✓ \"quoted\""];
const USERS: [&str; 3] = ["13800000001", "13800000002", "+8613800000003"];
const AUTHORIZERS: [&str; 2] = ["0001", "SF-EXPRESS"];

// ---------------------------------------------------------------------------------------------
// Device: registration, online/offline, door, faults, remote openings held by shopping sessions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum DeviceStep {
    Register(DeviceKind),
    Online,
    Offline,
    /// The door reported open or closed; `confirms` names the pending open request, if any.
    Door {
        open: bool,
        confirms: bool,
    },
    Fault(u8),
    ClearFault,
    RequestOpen {
        shopper: Option<u8>,
    },
    /// `current`: the session holding the cabinet; otherwise one it never had.
    EndSession {
        current: bool,
    },
    /// `pending`: the pending request; otherwise a stale or unknown one.
    FailOpen {
        pending: bool,
        refused: bool,
    },
}

fn device_step() -> impl Strategy<Value = DeviceStep> {
    use DeviceStep as S;
    prop_oneof![
        1 => prop_oneof![Just(DeviceKind::Vending), Just(DeviceKind::Locker)].prop_map(S::Register),
        2 => Just(S::Online),
        1 => Just(S::Offline),
        6 => (any::<bool>(), any::<bool>()).prop_map(|(open, confirms)| S::Door { open, confirms }),
        1 => any::<u8>().prop_map(S::Fault),
        2 => Just(S::ClearFault),
        6 => prop::option::weighted(0.6, any::<u8>()).prop_map(|shopper| S::RequestOpen { shopper }),
        3 => prop::bool::weighted(0.8).prop_map(|current| S::EndSession { current }),
        2 => (prop::bool::weighted(0.8), any::<bool>())
            .prop_map(|(pending, refused)| S::FailOpen { pending, refused }),
    ]
}

fn device_command(device: &Device, step: &DeviceStep, now: Now) -> DeviceCommand {
    use DeviceCommand as C;
    use DeviceStep as S;
    let at = now.at;
    let pending = device.pending_open.as_ref().map(|p| p.request_id);
    match step {
        S::Register(kind) => C::Register {
            device_id: DeviceId::from(Uuid::from_u128(7)),
            kind: *kind,
            site: site_code(SITES[0]),
            label: label("一号柜 (fridge #1)"),
            at,
        },
        S::Online => C::ReportOnline { at },
        S::Offline => C::ReportOffline {
            last_seen: at - Duration::seconds(31),
            at,
        },
        S::Door { open, confirms } => C::ReportDoor {
            state: if *open {
                DoorState::Open
            } else {
                DoorState::Closed
            },
            request_id: if *confirms { pending } else { None },
            at,
        },
        S::Fault(code) => C::RaiseFault {
            code: FaultCode::parse("code", pick(&["door_jammed", "scale_3", "motor"], *code))
                .unwrap(),
            message: label("the door motor stalled"),
            at,
        },
        S::ClearFault => C::ClearFault { at },
        S::RequestOpen { shopper } => C::RequestOpen {
            request_id: now.id(1),
            deadline: at + Duration::seconds(15),
            shopper: shopper.map(|user| ShopperOpen {
                session_id: now.id(2),
                user: pick(&["ky_10086", "ky_42"], user).into(),
            }),
            at,
        },
        S::EndSession { current } => C::EndSession {
            session_id: match (&device.session, current) {
                (Some(session), true) => session.session_id,
                _ => now.id(2),
            },
            at,
        },
        S::FailOpen {
            pending: wants_pending,
            refused,
        } => C::FailOpen {
            request_id: match (pending, wants_pending) {
                (Some(id), true) => id,
                // A late timeout of the last resolved request (a no-op), or an unknown one.
                _ => device.last_resolved_open.unwrap_or_else(|| now.id(1)),
            },
            failure: if *refused {
                OpenFailure::Refused {
                    reason: "lock busy: 门锁忙".into(),
                }
            } else {
                OpenFailure::Timeout
            },
            at,
        },
    }
}

/// Device streams, registered first as `kind` (any kind when `None`).
fn device_events(kind: Option<DeviceKind>) -> impl Strategy<Value = Vec<DeviceEvent>> {
    let first = match kind {
        Some(kind) => Just(kind).boxed(),
        None => prop_oneof![3 => Just(DeviceKind::Vending), 1 => Just(DeviceKind::Locker)].boxed(),
    };
    script(first.prop_map(DeviceStep::Register), device_step(), 80, 60)
        .prop_map(|steps| run(&steps, device_command, Device::decide))
}

/// The rows as the prototype cabinets wrote them: the registration as version 0
/// (`{"DeviceRegistered": {device_id, site, name, at}}`), everything else as today.
fn with_v0_registration(mut rows: Vec<SerializedEvent>) -> Vec<SerializedEvent> {
    for row in &mut rows {
        if row.event_type != "DeviceRegistered" {
            continue;
        }
        let body = &row.payload["DeviceRegistered"];
        row.payload = json!({"DeviceRegistered": {
            "device_id": body["device_id"],
            "site": body["site"],
            "name": body["label"],
            "at": body["at"],
        }});
        row.event_version = "0".into();
    }
    rows
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn device_snapshot_equals_fold(events in device_events(None)) {
        // Device has no PartialEq: JSON and Debug equality stand for it.
        check::<Device>(&events, |_, _| true)?;
    }

    #[test]
    fn device_with_a_v0_registration_snapshot_equals_fold(
        events in device_events(Some(DeviceKind::Vending))
    ) {
        let rows = with_v0_registration(store::<Device>(&events));
        prop_assert_eq!(&rows[0].event_version, "0");
        // The upcast stream is the stream the current code would have written.
        prop_assert_eq!(&read::<Device>(&rows), &events);
        snapshot_equals_fold::<Device>(&rows, |_, _| true)?;
    }
}

// ---------------------------------------------------------------------------------------------
// QrLogin: minted, scanned (locked), confirmed, cancelled, expired, redeemed
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum QrStep {
    Mint,
    Lock { user: u8, ext: u8, forged: bool },
    Confirm { user: u8 },
    Cancel { user: u8 },
    Expire,
    Redeem { other_browser: bool },
}

const QR_USERS: [&str; 3] = ["ky_10086", "ky_10086", "ky_42"];

fn qr_step() -> impl Strategy<Value = QrStep> {
    use QrStep as S;
    prop_oneof![
        1 => Just(S::Mint),
        4 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(user, ext, forged)| S::Lock { user, ext, forged }),
        4 => any::<u8>().prop_map(|user| S::Confirm { user }),
        1 => any::<u8>().prop_map(|user| S::Cancel { user }),
        3 => Just(S::Expire),
        3 => prop::bool::weighted(0.1).prop_map(|other_browser| S::Redeem { other_browser }),
    ]
}

fn qr_command(login: &QrLogin, step: &QrStep, now: Now) -> QrLoginCommand {
    use QrLoginCommand as C;
    use QrStep as S;
    let at = now.at;
    let user = |i: &u8| pick(&QR_USERS, *i).to_owned();
    match step {
        S::Mint => C::Mint {
            login_id: LoginId::from(Uuid::from_u128(0x0195_f0c2_0000_7000_8000_0000_0000_0001)),
            token_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            secret_hash: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752".into(),
            origin: LoginOrigin {
                ip: "2001:db8::1".into(),
                user_agent: "Mozilla/5.0 (iPhone; 中文)".into(),
            },
            at,
            expires_at: at + Duration::seconds(120),
        },
        S::Lock {
            user: u,
            ext,
            forged,
        } => C::Lock {
            token_hash: if *forged {
                "forged".into()
            } else {
                login.token_hash.clone()
            },
            user: user(u),
            ext: pick(
                &[
                    None,
                    Some(""),
                    Some("{\"shop\":\"西湖\"}"),
                    Some("line 1\n\tline 2"),
                ],
                *ext,
            )
            .map(|raw| Ext::parse("ext", raw).unwrap()),
            at,
        },
        S::Confirm { user: u } => C::Confirm {
            token_hash: login.token_hash.clone(),
            user: user(u),
            at,
        },
        S::Cancel { user: u } => C::Cancel {
            token_hash: login.token_hash.clone(),
            user: user(u),
            at,
        },
        S::Expire => C::Expire { at },
        S::Redeem { other_browser } => C::Redeem {
            secret_hash: if *other_browser {
                "another browser".into()
            } else {
                login.secret_hash.clone()
            },
            session_id: now.id(3),
            session_expires_at: at + Duration::hours(12),
            at,
        },
    }
}

fn qr_events() -> impl Strategy<Value = Vec<QrLoginEvent>> {
    script(Just(QrStep::Mint), qr_step(), 16, 30)
        .prop_map(|steps| run(&steps, qr_command, QrLogin::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn qr_login_snapshot_equals_fold(events in qr_events()) {
        check::<QrLogin>(&events, QrLogin::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// ShoppingSession: weighings, order placed / in review / empty / abandoned, review, payments,
// refunds
// ---------------------------------------------------------------------------------------------

fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::parse("currency", "CNY").unwrap())
}

fn shelf(n: i64) -> ShelfNo {
    ShelfNo::parse("shelf", n).unwrap()
}

fn sku(raw: &str) -> Sku {
    Sku::parse("sku", raw).unwrap()
}

fn raw_slot(shelf: i64, sku: &str, name: &str, weight: i64, tolerance: i64, price: i64) -> RawSlot {
    RawSlot {
        shelf,
        sku: sku.into(),
        name: name.into(),
        unit_weight: weight,
        tolerance,
        unit_price: price,
        currency: "CNY".into(),
    }
}

/// Shelf 1: cola; shelf 2: water; shelf 3: gum and bars, where two gums weigh one bar (so a
/// 200 g change there is ambiguous). `price_up` raises the cola's price (a new version).
fn planogram(price_up: i64) -> Planogram {
    Planogram::parse(
        "slots",
        &[
            raw_slot(1, "COLA", "可口可乐 330ml", 355, 10, 350 + price_up),
            raw_slot(2, "WATER", "Nongfu water", 550, 15, 200),
            raw_slot(3, "GUM", "Gum", 100, 5, 100),
            raw_slot(3, "BAR", "Chocolate bar", 200, 5, 300),
        ],
    )
    .unwrap()
}

/// One shelf's reading: mostly `full` less a few whole units (none before the door opens) and
/// drift within tolerance; now and then missing, below zero, unstable, faulty, off by more than
/// the tolerance or heavier than before.
fn reading(
    shelf: i64,
    full: i64,
    unit: i64,
    before: bool,
) -> impl Strategy<Value = Option<RawReading>> {
    let at = move |grams: i64, stable: bool, fault: bool| {
        Some(RawReading {
            shelf,
            grams,
            stable,
            fault,
        })
    };
    let taken = if before {
        Just(0i64).boxed()
    } else {
        prop_oneof![2 => Just(0i64), 1 => 1i64..4].boxed()
    };
    prop_oneof![
        if before { 120 } else { 60 } => (taken, -4i64..=4).prop_map(move |(n, drift)| at(full - n * unit + drift, true, false)),
        1 => Just(None),
        1 => (-100i64..0).prop_map(move |grams| at(grams, true, false)),
        1 => Just(at(full - unit, false, false)),
        1 => Just(at(full - unit, true, true)),
        1 => (-300i64..300).prop_map(move |noise| at(full + noise, true, false)),
        1 => (1i64..3).prop_map(move |n| at(full + n * unit, true, false)),
    ]
}

/// A whole weighing: the three shelves of the planogram and, rarely, shelf 4 it does not use.
fn weighing(before: bool) -> impl Strategy<Value = Weighing> {
    let unused = prop_oneof![
        15 => Just(None),
        1 => (-10i64..400).prop_map(|grams| Some(RawReading {
            shelf: 4,
            grams,
            stable: true,
            fault: false,
        })),
    ];
    (
        reading(1, 3550, 355, before),
        reading(2, 4400, 550, before),
        reading(3, 1000, 100, before),
        unused,
    )
        .prop_map(|(a, b, c, d)| {
            let raw: Vec<RawReading> = [a, b, c, d].into_iter().flatten().collect();
            Weighing::parse("weighing", &raw).unwrap()
        })
}

#[derive(Debug, Clone)]
enum ShopStep {
    Start {
        before: Weighing,
        price_up: bool,
    },
    Weigh(WeighingPhase, Weighing),
    Close(Weighing),
    Abandon,
    Resolve(u8),
    /// `exact`: the order's total (otherwise a wrong amount); `repeat`: the attempt in flight.
    Pay {
        exact: bool,
        repeat: bool,
    },
    /// `pending`: the attempt in flight; otherwise an earlier (failed) or unknown one.
    Succeed {
        pending: bool,
    },
    Fail {
        pending: bool,
    },
    /// An amount from a pool, or (part 0) all that is left. `how`: recorded at once, requested
    /// (reserved), or a waiting request completed or failed.
    Refund {
        part: u8,
        again: bool,
        how: u8,
    },
}

fn shop_step() -> impl Strategy<Value = ShopStep> {
    use ShopStep as S;
    let phase = prop_oneof![Just(WeighingPhase::Before), Just(WeighingPhase::After)];
    prop_oneof![
        1 => (weighing(true), any::<bool>())
            .prop_map(|(before, price_up)| S::Start { before, price_up }),
        1 => (phase, any::<bool>())
            .prop_flat_map(|(p, before)| weighing(before).prop_map(move |w| S::Weigh(p, w))),
        6 => weighing(false).prop_map(S::Close),
        1 => Just(S::Abandon),
        3 => any::<u8>().prop_map(S::Resolve),
        5 => (prop::bool::weighted(0.9), prop::bool::weighted(0.3))
            .prop_map(|(exact, repeat)| S::Pay { exact, repeat }),
        4 => prop::bool::weighted(0.9).prop_map(|pending| S::Succeed { pending }),
        2 => prop::bool::weighted(0.9).prop_map(|pending| S::Fail { pending }),
        6 => (any::<u8>(), prop::bool::weighted(0.2), any::<u8>())
            .prop_map(|(part, again, how)| S::Refund { part, again, how }),
    ]
}

/// The operator's review answers: good ones, and refused ones (zero, unknown, duplicate).
fn review_lines(i: u8) -> Vec<ReviewLine> {
    let line = |s, code: &str, quantity| ReviewLine {
        shelf: shelf(s),
        sku: sku(code),
        quantity,
    };
    match i % 8 {
        0 => vec![],
        1 => vec![line(1, "COLA", 1)],
        2 => vec![line(2, "WATER", 1), line(1, "COLA", 2)],
        3 => vec![line(3, "GUM", 2)],
        4 => vec![line(3, "BAR", 1), line(3, "GUM", 3), line(1, "COLA", 1)],
        5 => vec![line(1, "COLA", 0)],
        6 => vec![line(1, "WATER", 1)],
        _ => vec![line(1, "COLA", 1), line(1, "COLA", 2)],
    }
}

fn payment_in_flight(session: &ShoppingSession) -> Option<Uuid> {
    match &session.payment {
        PaymentState::Pending { payment_id, .. } | PaymentState::Succeeded { payment_id, .. } => {
            Some(*payment_id)
        }
        PaymentState::None => None,
    }
}

fn shop_command(session: &ShoppingSession, step: &ShopStep, now: Now) -> ShoppingCommand {
    use ShopStep as S;
    use ShoppingCommand as C;
    let at = now.at;
    let attempt = |pending: bool| match (payment_in_flight(session), pending) {
        (Some(id), true) => id,
        _ => session
            .failed_payments
            .first()
            .copied()
            .unwrap_or(now.id(4)),
    };
    match step {
        S::Start { before, price_up } => C::Start {
            session_id: SessionId::from(Uuid::from_u128(1)),
            device_id: DeviceId::from(Uuid::from_u128(7)),
            site: site_code(SITES[0]),
            user: KazayaUserId::parse("user", "kz_10086").unwrap(),
            open_request_id: Uuid::from_u128(42),
            planogram: planogram(if *price_up { 20 } else { 0 }),
            weighing_before: before.clone(),
            at,
        },
        S::Weigh(phase, weighing) => C::RecordWeighing {
            weighing: weighing.clone(),
            phase: *phase,
            at,
        },
        S::Close(weighing) => C::Close {
            weighing_after: weighing.clone(),
            at,
        },
        S::Abandon => C::Abandon {
            reason: label("door left open: 门未关"),
            at,
        },
        S::Resolve(i) => C::ResolveReview {
            operator: OperatorId::parse("operator", "ops-lin").unwrap(),
            lines: review_lines(*i),
            at,
        },
        S::Pay { exact, repeat } => C::RequestPayment {
            payment_id: match &session.payment {
                // The client repeating its request for the attempt in flight.
                PaymentState::Pending { payment_id, .. } if *repeat => *payment_id,
                _ => now.id(4),
            },
            amount: match (session.payable_total(), exact) {
                (Some(total), true) => total,
                _ => cny(1),
            },
            at,
        },
        S::Succeed { pending } => C::RecordPaymentSucceeded {
            payment_id: attempt(*pending),
            provider_ref: ProviderRef::parse("ref", "KZ20261121-0001").unwrap(),
            at,
        },
        S::Fail { pending } => C::RecordPaymentFailed {
            payment_id: attempt(*pending),
            reason: label("card declined"),
            at,
        },
        S::Refund { part, again, how } => {
            let earlier = session.refunds.first().filter(|_| *again);
            let refund_id = earlier.map_or(now.id(5), |r| r.refund_id);
            let amount = match (earlier, part % 5) {
                (Some(r), _) => r.amount,
                (None, 0) => session.refundable().unwrap_or(cny(1)),
                (None, p) => cny(pick(&[1, 100, 350, 100_000], p - 1)),
            };
            let waiting = session.pending_refunds.first();
            match (how % 4, waiting) {
                (1, _) => C::RequestRefund {
                    refund_id,
                    amount,
                    at,
                },
                (2, Some(w)) => C::Refund {
                    refund_id: w.refund_id,
                    amount: w.amount,
                    at,
                },
                (3, Some(w)) => C::FailRefund {
                    refund_id: w.refund_id,
                    reason: label("refused"),
                    at,
                },
                _ => C::Refund {
                    refund_id,
                    amount,
                    at,
                },
            }
        }
    }
}

fn shop_events() -> impl Strategy<Value = Vec<ShoppingEvent>> {
    let start = (weighing(true), any::<bool>())
        .prop_map(|(before, price_up)| ShopStep::Start { before, price_up });
    script(start, shop_step(), 40, 60)
        .prop_map(|steps| run(&steps, shop_command, ShoppingSession::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn shopping_session_snapshot_equals_fold(events in shop_events()) {
        check::<ShoppingSession>(&events, ShoppingSession::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// CabinetPlanogram: versions published (and republishing the current one is a no-op)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Publish {
    planogram: u8,
    operator: u8,
}

fn cabinet_command(_: &CabinetPlanogram, step: &Publish, now: Now) -> PlanogramCommand {
    PlanogramCommand::Publish {
        planogram: planogram(pick(&[0, 20, -50], step.planogram)),
        operator: OperatorId::parse("operator", pick(&["ops-lin", "ops-wang"], step.operator))
            .unwrap(),
        at: now.at,
    }
}

fn cabinet_events() -> impl Strategy<Value = Vec<latch_domain::vending::PlanogramEvent>> {
    let publish = || {
        (any::<u8>(), any::<u8>()).prop_map(|(planogram, operator)| Publish {
            planogram,
            operator,
        })
    };
    script(publish(), publish(), 12, 3600).prop_map(|steps| {
        run(&steps, cabinet_command, |cabinet: &CabinetPlanogram, c| {
            Ok::<_, ()>(cabinet.decide(c))
        })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cabinet_planogram_snapshot_equals_fold(events in cabinet_events()) {
        check::<CabinetPlanogram>(&events, CabinetPlanogram::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Member: registered at the first login, profile changes, every login counted
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Login {
    user: u8,
    profile: u8,
}

fn member_command(_: &Member, step: &Login, now: Now) -> MemberCommand {
    let profiles = [
        Profile {
            phone: "13455555555".into(),
            nickname: "小明".into(),
            avatar: None,
        },
        Profile {
            phone: "13455555555".into(),
            nickname: "小明 🐱".into(),
            avatar: Some("https://cdn.kazaya.example/a/1.png".into()),
        },
        Profile {
            phone: "+8613455555555".into(),
            nickname: "".into(),
            avatar: Some("".into()),
        },
    ];
    MemberCommand::Authorize {
        // Mostly the stream's own member; now and then another (refused).
        user: KazayaUserId::parse("user", pick(&["kz_1", "kz_1", "kz_1", "kz_2"], step.user))
            .unwrap(),
        profile: pick(&profiles, step.profile),
        session: Session {
            token_id: now.id(5),
            expires_at: now.at + Duration::hours(12),
        },
        at: now.at,
    }
}

fn member_events() -> impl Strategy<Value = Vec<latch_domain::vending::MemberEvent>> {
    let login = (any::<u8>(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()])
        .prop_map(|(user, profile)| Login { user, profile });
    script(login.clone(), login, 20, 86_400)
        .prop_map(|steps| run(&steps, member_command, Member::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn member_snapshot_equals_fold(events in member_events()) {
        check::<Member>(&events, Member::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Site: registered, renamed
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum SiteStep {
    Register { site: u8, name: u8 },
    Rename(u8),
}

fn site_command(_: &Site, step: &SiteStep, now: Now) -> SiteCommand {
    match step {
        SiteStep::Register { site, name } => SiteCommand::Register {
            site: site_code(pick(&SITES, *site)),
            name: label(pick(&NAMES, *name)),
            at: now.at,
        },
        SiteStep::Rename(name) => SiteCommand::Rename {
            name: label(pick(&NAMES, *name)),
            at: now.at,
        },
    }
}

fn site_events() -> impl Strategy<Value = Vec<latch_domain::locker::SiteEvent>> {
    let register =
        || (any::<u8>(), any::<u8>()).prop_map(|(site, name)| SiteStep::Register { site, name });
    let step = prop_oneof![1 => register(), 4 => any::<u8>().prop_map(SiteStep::Rename)];
    script(register(), step, 10, 86_400).prop_map(|steps| run(&steps, site_command, Site::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn site_snapshot_equals_fold(events in site_events()) {
        check::<Site>(&events, Site::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Compartment: installed, door wired, reserved, granted on, deposited, collected, expired
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum CompartmentStep {
    Install {
        size: Size,
        door: Option<u8>,
    },
    Wire(u8),
    /// A window starting `start` seconds from now (or now), ending `ttl` seconds after it.
    Reserve {
        user: u8,
        start: Option<i64>,
        ttl: i64,
    },
    Expire,
    /// `by_holder`: the holder hands the right on; otherwise someone else tries.
    Grant {
        by_holder: bool,
        to: u8,
        via: Option<u8>,
    },
    Deposit {
        by_holder: bool,
        parcel: u8,
    },
    Collect {
        right_code: bool,
    },
}

fn compartment_step() -> impl Strategy<Value = CompartmentStep> {
    use CompartmentStep as S;
    prop_oneof![
        1 => (size(), prop::option::of(any::<u8>())).prop_map(|(size, door)| S::Install { size, door }),
        1 => any::<u8>().prop_map(S::Wire),
        5 => (any::<u8>(), prop::option::weighted(0.3, -60i64..120), -30i64..300)
            .prop_map(|(user, start, ttl)| S::Reserve { user, start, ttl }),
        3 => Just(S::Expire),
        4 => (prop::bool::weighted(0.85), any::<u8>(), prop::option::of(any::<u8>()))
            .prop_map(|(by_holder, to, via)| S::Grant { by_holder, to, via }),
        4 => (prop::bool::weighted(0.85), any::<u8>())
            .prop_map(|(by_holder, parcel)| S::Deposit { by_holder, parcel }),
        3 => prop::bool::weighted(0.85).prop_map(|right_code| S::Collect { right_code }),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![Just(Size::Small), Just(Size::Medium), Just(Size::Large)]
}

fn door(i: u8) -> DeviceId {
    DeviceId::from(Uuid::from_u128(0x1000 + u128::from(i % 3)))
}

fn compartment_command(
    compartment: &Compartment,
    step: &CompartmentStep,
    now: Now,
) -> CompartmentCommand {
    use CompartmentCommand as C;
    use CompartmentStep as S;
    let at = now.at;
    // The holder of the window now falls in, else of the first booked one.
    let holder = compartment
        .windows
        .iter()
        .find(|w| w.contains(at))
        .or(compartment.windows.first())
        .map(|w| &w.holder);
    let holder_or = |by_holder: bool, i: u8| match (holder, by_holder) {
        (Some(holder), true) => holder.clone(),
        _ => user_number(pick(&USERS, i)),
    };
    match step {
        S::Install { size, door: d } => C::Install {
            id: CompartmentId::new(
                site_code(SITES[0]),
                CompartmentNumber::parse("number", "A-01").unwrap(),
            ),
            size: *size,
            door: d.map(door),
            at,
        },
        S::Wire(d) => C::WireDoor { door: door(*d), at },
        S::Reserve { user, start, ttl } => {
            let window_start = start.map(|s| at + Duration::seconds(s));
            C::Reserve {
                user: user_number(pick(&USERS, *user)),
                window_start,
                expires_at: window_start.unwrap_or(at) + Duration::seconds(*ttl),
                at,
            }
        }
        S::Expire => C::Expire { at },
        S::Grant { by_holder, to, via } => C::Grant {
            grant_id: now.id(6),
            from: holder_or(*by_holder, to.wrapping_add(1)),
            to: user_number(pick(&USERS, *to)),
            via: via.map(|a| authorizer_number(pick(&AUTHORIZERS, a))),
            // Now and then only the second half of the window in use.
            window: compartment
                .windows
                .iter()
                .find(|w| w.contains(at))
                .filter(|_| to % 3 == 0)
                .map(|w| (w.start + (w.end - w.start) / 2, w.end)),
            at,
        },
        S::Deposit { by_holder, parcel } => C::Deposit {
            user: holder_or(*by_holder, *parcel),
            parcel: ParcelNumber::parse("parcel", pick(&["SF1234567890", "YT-0001_x"], *parcel))
                .unwrap(),
            pickup_code_mac: format!("code-mac-{}", now.fresh),
            at,
        },
        S::Collect { right_code } => C::Collect {
            proof: latch_domain::locker::PickupProof {
                mac: match (&compartment.pickup_code_mac, right_code) {
                    (Some(mac), true) => mac.clone(),
                    _ => "wrong".into(),
                },
                legacy_sha256: "wrong".into(),
            },
            at,
        },
    }
}

fn compartment_events() -> impl Strategy<Value = Vec<latch_domain::locker::CompartmentEvent>> {
    let install = (size(), prop::option::of(any::<u8>()))
        .prop_map(|(size, door)| CompartmentStep::Install { size, door });
    script(install, compartment_step(), 60, 60)
        .prop_map(|steps| run(&steps, compartment_command, Compartment::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compartment_snapshot_equals_fold(events in compartment_events()) {
        check::<Compartment>(&events, Compartment::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// LockerUser: registered, password changed, disabled, enabled
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum UserStep {
    Register { number: u8, name: u8, hash: u8 },
    ChangePassword(u8),
    Disable,
    Enable,
}

/// Credential ids (the hashes themselves live in the vault, not in events).
const CREDENTIALS: [&str; 2] = [
    "cred_0195f0c2000070008000000000000001",
    "cred_0195f0c2000070008000000000000002",
];

fn user_command(_: &LockerUser, step: &UserStep, now: Now) -> UserCommand {
    let at = now.at;
    match step {
        UserStep::Register { number, name, hash } => UserCommand::Register {
            number: user_number(pick(&USERS, *number)),
            name: label(pick(&NAMES, *name)),
            credential_id: pick(&CREDENTIALS, *hash).into(),
            at,
        },
        UserStep::ChangePassword(hash) => UserCommand::ChangePassword {
            credential_id: pick(&CREDENTIALS, *hash).into(),
            at,
        },
        UserStep::Disable => UserCommand::Disable { at },
        UserStep::Enable => UserCommand::Enable { at },
    }
}

fn user_events() -> impl Strategy<Value = Vec<latch_domain::locker::UserEvent>> {
    let register = || {
        (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(number, name, hash)| UserStep::Register { number, name, hash })
    };
    let step = prop_oneof![
        1 => register(),
        3 => any::<u8>().prop_map(UserStep::ChangePassword),
        3 => Just(UserStep::Disable),
        3 => Just(UserStep::Enable),
    ];
    script(register(), step, 16, 86_400)
        .prop_map(|steps| run(&steps, user_command, LockerUser::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn locker_user_snapshot_equals_fold(events in user_events()) {
        check::<LockerUser>(&events, LockerUser::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Authorizer: registered, deactivated, activated, reconfigured
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum AuthorizerStep {
    Register { number: u8, name: u8 },
    Deactivate,
    Activate,
    Reconfigure { endpoint: u8, secret: u8 },
}

const ENDPOINTS: [&str; 2] = [
    "http://127.0.0.1:9100/grants",
    "https://courier.example/hooks/latch?v=2",
];
/// Secret ids (the secrets themselves live in the vault, not in events).
const SECRETS: [&str; 2] = [
    "fp_00112233445566778899aabbccddeeff",
    "fp_ffeeddccbbaa99887766554433221100",
];

fn authorizer_command(_: &Authorizer, step: &AuthorizerStep, now: Now) -> AuthorizerCommand {
    let at = now.at;
    match step {
        AuthorizerStep::Register { number, name } => AuthorizerCommand::Register {
            number: authorizer_number(pick(&AUTHORIZERS, *number)),
            name: label(pick(&NAMES, *name)),
            endpoint: endpoint(ENDPOINTS[0]),
            secret_id: SECRETS[0].into(),
            at,
        },
        AuthorizerStep::Deactivate => AuthorizerCommand::Deactivate { at },
        AuthorizerStep::Activate => AuthorizerCommand::Activate { at },
        AuthorizerStep::Reconfigure {
            endpoint: e,
            secret,
        } => AuthorizerCommand::Reconfigure {
            endpoint: endpoint(pick(&ENDPOINTS, *e)),
            secret_id: pick(&SECRETS, *secret).into(),
            at,
        },
    }
}

fn authorizer_events() -> impl Strategy<Value = Vec<latch_domain::locker::AuthorizerEvent>> {
    let register = || {
        (any::<u8>(), any::<u8>())
            .prop_map(|(number, name)| AuthorizerStep::Register { number, name })
    };
    let step = prop_oneof![
        1 => register(),
        3 => Just(AuthorizerStep::Deactivate),
        3 => Just(AuthorizerStep::Activate),
        3 => (any::<u8>(), any::<u8>())
            .prop_map(|(endpoint, secret)| AuthorizerStep::Reconfigure { endpoint, secret }),
    ];
    script(register(), step, 16, 86_400)
        .prop_map(|steps| run(&steps, authorizer_command, Authorizer::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn authorizer_snapshot_equals_fold(events in authorizer_events()) {
        check::<Authorizer>(&events, Authorizer::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Grant: requested (direct or via an authorizer), accepted, declined, completed, failed, expired
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum GrantStep {
    /// `via`: an authorizer picks the receiver; otherwise user `to` directly. The deadline is
    /// `deadline` seconds after the request (not after: refused).
    Request {
        requester: u8,
        to: u8,
        via: Option<u8>,
        deadline: i64,
    },
    /// `right`: from the authorizer the request went to; otherwise from the first of the pool.
    Accept {
        right: bool,
        receiver: u8,
    },
    Decline {
        right: bool,
    },
    Complete,
    Fail,
    Expire,
}

fn grant_request() -> impl Strategy<Value = GrantStep> {
    (
        any::<u8>(),
        any::<u8>(),
        prop::option::weighted(0.6, any::<u8>()),
        prop_oneof![1 => -5i64..=0, 15 => 1i64..180],
    )
        .prop_map(|(requester, to, via, deadline)| GrantStep::Request {
            requester,
            to,
            via,
            deadline,
        })
}

fn grant_step() -> impl Strategy<Value = GrantStep> {
    use GrantStep as S;
    prop_oneof![
        1 => grant_request(),
        4 => (prop::bool::weighted(0.85), any::<u8>())
            .prop_map(|(right, receiver)| S::Accept { right, receiver }),
        2 => prop::bool::weighted(0.85).prop_map(|right| S::Decline { right }),
        3 => Just(S::Complete),
        1 => Just(S::Fail),
        2 => Just(S::Expire),
    ]
}

fn grant_command(grant: &Grant, step: &GrantStep, now: Now) -> GrantCommand {
    use GrantCommand as C;
    use GrantStep as S;
    let at = now.at;
    let authorizer = |right: bool| match (&grant.target, right) {
        (Some(GrantTarget::Authorizer { authorizer }), true) => authorizer.clone(),
        _ => authorizer_number(AUTHORIZERS[0]),
    };
    match step {
        S::Request {
            requester,
            to,
            via,
            deadline,
        } => C::Request {
            grant_id: now.id(7),
            compartment: CompartmentId::parse("compartment", "610091A01:A-01").unwrap(),
            size: Size::Medium,
            requester: user_number(pick(&USERS, *requester)),
            target: match via {
                Some(a) => GrantTarget::Authorizer {
                    authorizer: authorizer_number(pick(&AUTHORIZERS, *a)),
                },
                None => GrantTarget::Direct {
                    // Another user; now and then the requester themself (refused).
                    receiver: user_number(match to % 8 {
                        0 => pick(&USERS, *requester),
                        n => pick(&USERS, requester.wrapping_add(1 + n % 2)),
                    }),
                },
            },
            deadline: at + Duration::seconds(*deadline),
            at,
        },
        S::Accept { right, receiver } => C::Accept {
            authorizer: authorizer(*right),
            receiver: user_number(pick(&USERS, *receiver)),
            at,
        },
        S::Decline { right } => C::Decline {
            authorizer: authorizer(*right),
            reason: "receiver unknown: 收件人不存在".into(),
            at,
        },
        S::Complete => C::Complete { at },
        S::Fail => C::Fail {
            reason: "the compartment changed hands".into(),
            at,
        },
        S::Expire => C::Expire { at },
    }
}

fn grant_events() -> impl Strategy<Value = Vec<latch_domain::locker::GrantEvent>> {
    script(grant_request(), grant_step(), 8, 60)
        .prop_map(|steps| run(&steps, grant_command, Grant::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn grant_snapshot_equals_fold(events in grant_events()) {
        check::<Grant>(&events, Grant::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// ApiToken: issued, revoked (one short stream per token id)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum TokenStep {
    Issue {
        other: bool,
        role: u8,
        expires: bool,
    },
    Revoke {
        other: bool,
        role: u8,
    },
}

fn token_role(i: u8) -> TokenRole {
    pick(
        &[
            TokenRole::Operator,
            TokenRole::User,
            TokenRole::Auditor,
            TokenRole::Device,
        ],
        i,
    )
}

fn token_command(_: &ApiToken, step: &TokenStep, now: Now) -> TokenCommand {
    // The stream's own token id, now and then another one (refused).
    let id = |other: bool| Uuid::from_u128(if other { 2 } else { 1 });
    let subject = Subject::parse("subject", "locker:13455555555").unwrap();
    match step {
        TokenStep::Issue {
            other,
            role,
            expires,
        } => TokenCommand::Issue {
            token_id: id(*other),
            role: token_role(*role),
            subject,
            expires_at: expires.then(|| now.at + Duration::hours(12)),
            via: TokenVia::Provisioned,
            at: now.at,
        },
        TokenStep::Revoke { other, role } => TokenCommand::Revoke {
            token_id: id(*other),
            role: token_role(*role),
            subject,
            reason: RevokeReason::Logout,
            at: now.at,
        },
    }
}

fn token_events() -> impl Strategy<Value = Vec<TokenEvent>> {
    let other = prop::bool::weighted(0.1);
    let issue =
        (other, any::<u8>(), any::<bool>()).prop_map(|(other, role, expires)| TokenStep::Issue {
            other,
            role,
            expires,
        });
    let revoke = (other, any::<u8>()).prop_map(|(other, role)| TokenStep::Revoke { other, role });
    let step = prop_oneof![issue.clone(), revoke.clone()];
    script(prop_oneof![issue, revoke], step, 4, 86_400)
        .prop_map(|steps| run(&steps, token_command, ApiToken::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn api_token_snapshot_equals_fold(events in token_events()) {
        check::<ApiToken>(&events, ApiToken::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// LockerLogin: one attempt, succeeded or refused
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum LoginStep {
    Succeed,
    Refuse(u8),
}

fn login_command(_: &LockerLogin, step: &LoginStep, now: Now) -> LoginCommand {
    let user_number = user_number("13455555555");
    match step {
        LoginStep::Succeed => LoginCommand::Succeed {
            user_number,
            token_id: now.id(6),
            subject: Subject::parse("subject", "locker:13455555555").unwrap(),
            expires_at: now.at + Duration::hours(12),
            at: now.at,
        },
        LoginStep::Refuse(i) => LoginCommand::Refuse {
            user_number,
            reason: pick(
                &[
                    LoginRefusal::InvalidCredentials,
                    LoginRefusal::UnknownUser,
                    LoginRefusal::UserDisabled,
                ],
                *i,
            ),
            at: now.at,
        },
    }
}

fn login_events() -> impl Strategy<Value = Vec<LoginEvent>> {
    let step = prop_oneof![
        Just(LoginStep::Succeed),
        any::<u8>().prop_map(LoginStep::Refuse)
    ];
    script(step.clone(), step, 3, 60)
        .prop_map(|steps| run(&steps, login_command, LockerLogin::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn locker_login_snapshot_equals_fold(events in login_events()) {
        check::<LockerLogin>(&events, LockerLogin::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// StickerScan: one scan, genuine, swapped or forged
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ScanStep {
    cabinet: Option<u8>,
    verdict: u8,
    shopper: bool,
}

fn scan_command(_: &StickerScan, step: &ScanStep, now: Now) -> ScanCommand {
    let cabinet = |i: u8| DeviceId::from(Uuid::from_u128(u128::from(i % 3) + 1));
    ScanCommand::Record {
        cabinet: step.cabinet.map(cabinet),
        verdict: match step.verdict % 3 {
            0 => ScanVerdict::Genuine,
            1 => ScanVerdict::Swapped {
                genuine_for: cabinet(step.verdict / 3),
            },
            _ => ScanVerdict::Forged,
        },
        shopper: step
            .shopper
            .then(|| KazayaUserId::parse("user", "kz_1").unwrap()),
        at: now.at,
    }
}

fn scan_events() -> impl Strategy<Value = Vec<ScanEvent>> {
    let step = (
        prop_oneof![4 => any::<u8>().prop_map(Some), 1 => Just(None)],
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(cabinet, verdict, shopper)| ScanStep {
            cabinet,
            verdict,
            shopper,
        });
    script(step.clone(), step, 3, 60)
        .prop_map(|steps| run(&steps, scan_command, StickerScan::decide))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sticker_scan_snapshot_equals_fold(events in scan_events()) {
        check::<StickerScan>(&events, StickerScan::eq)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The generators reach every event variant
// ---------------------------------------------------------------------------------------------

/// How many times each event type occurs over `samples` streams drawn with a fixed seed.
fn variant_counts<E: DomainEvent>(
    strategy: impl Strategy<Value = Vec<E>>,
    samples: usize,
) -> BTreeMap<String, usize> {
    let mut runner = TestRunner::deterministic();
    let mut counts = BTreeMap::new();
    for _ in 0..samples {
        let events = strategy.new_tree(&mut runner).unwrap().current();
        for event in events {
            *counts.entry(event.event_type()).or_insert(0) += 1;
        }
    }
    counts
}

fn assert_all_generated<E: DomainEvent>(
    strategy: impl Strategy<Value = Vec<E>>,
    expected: &[&str],
) {
    let counts = variant_counts(strategy, CASES as usize);
    let missing: Vec<_> = expected
        .iter()
        .filter(|t| !counts.contains_key(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "never generated: {missing:?} (counts: {counts:?})"
    );
}

#[test]
fn every_event_variant_is_generated() {
    assert_all_generated(
        device_events(None),
        &[
            "DeviceRegistered",
            "DeviceCameOnline",
            "DeviceWentOffline",
            "DoorOpened",
            "DoorClosed",
            "FaultRaised",
            "FaultCleared",
            "DoorOpenRequested",
            "ShoppingSessionEnded",
            "DoorOpenConfirmed",
            "DoorOpenFailed",
        ],
    );
    assert_all_generated(qr_events(), &QrLoginEvent::TYPES);
    assert_all_generated(shop_events(), &ShoppingEvent::TYPES);
    assert_all_generated(cabinet_events(), &["PlanogramPublished"]);
    assert_all_generated(
        member_events(),
        &[
            "MemberRegistered",
            "MemberProfileChanged",
            "MemberAuthorized",
        ],
    );
    assert_all_generated(site_events(), &["SiteRegistered", "SiteRenamed"]);
    assert_all_generated(
        compartment_events(),
        &[
            "CompartmentInstalled",
            "CompartmentDoorWired",
            "CompartmentReserved",
            "ReservationExpired",
            "HolderChanged",
            "ParcelDeposited",
            "ParcelCollected",
        ],
    );
    assert_all_generated(
        user_events(),
        &[
            "LockerUserRegistered",
            "LockerUserPasswordChanged",
            "LockerUserDisabled",
            "LockerUserEnabled",
        ],
    );
    assert_all_generated(
        authorizer_events(),
        &[
            "AuthorizerRegistered",
            "AuthorizerDeactivated",
            "AuthorizerActivated",
            "AuthorizerReconfigured",
        ],
    );
    assert_all_generated(token_events(), &["TokenIssued", "TokenRevoked"]);
    assert_all_generated(
        login_events(),
        &["LockerLoginSucceeded", "LockerLoginRefused"],
    );
    assert_all_generated(
        scan_events(),
        &[
            "StickerScanned",
            "SwappedStickerScanned",
            "ForgedStickerScanned",
        ],
    );
    assert_all_generated(
        grant_events(),
        &[
            "GrantRequested",
            "GrantAccepted",
            "GrantDeclined",
            "GrantCompleted",
            "GrantFailed",
            "GrantExpired",
        ],
    );
}
