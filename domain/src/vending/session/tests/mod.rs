//! Given / when / then tests of the shopping session, one file per part of its life, and the
//! fixtures they share.

use super::*;
use crate::device::{DeviceId, Label, SiteCode};
use crate::vending::planogram::{Planogram, RawSlot};
use crate::vending::settle::{OrderLine, RawReading, ReviewReason, Weighing};
use crate::vending::values::{
    Currency, KazayaUserId, Money, OperatorId, ProviderRef, SessionId, ShelfNo, Sku,
};
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use uuid::Uuid;

mod events;
mod payment;
mod refund;
mod review;
mod visit;

type SessionTest = TestFramework<ShoppingSession>;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}
fn shelf(n: i64) -> ShelfNo {
    ShelfNo::parse("shelf", n).unwrap()
}
fn sku(s: &str) -> Sku {
    Sku::parse("sku", s).unwrap()
}
fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::parse("c", "CNY").unwrap())
}
fn pay(n: u128) -> Uuid {
    Uuid::from_u128(500 + n)
}
fn refund_id(n: u128) -> Uuid {
    Uuid::from_u128(900 + n)
}
fn operator() -> OperatorId {
    OperatorId::parse("operator", "ops-lin").unwrap()
}
fn provider_ref() -> ProviderRef {
    ProviderRef::parse("ref", "KZ20261121-0001").unwrap()
}
fn declined() -> Label {
    Label::parse("reason", "card declined", 200).unwrap()
}

/// Shelf 1: cola 355 g ± 10 at 3.50; shelf 2: water 550 g ± 15 at 2.00.
fn planogram() -> Planogram {
    let slot = |shelf, sku: &str, w, t, price| RawSlot {
        shelf,
        sku: sku.into(),
        name: format!("{sku} name"),
        unit_weight: w,
        tolerance: t,
        unit_price: price,
        currency: "CNY".into(),
    };
    Planogram::parse(
        "slots",
        &[
            slot(1, "COLA", 355, 10, 350),
            slot(2, "WATER", 550, 15, 200),
        ],
    )
    .unwrap()
}

fn weighing(cola: i64, water: i64, stable: bool) -> Weighing {
    Weighing::parse(
        "weighing",
        &[
            RawReading {
                shelf: 1,
                grams: cola,
                stable,
                fault: false,
            },
            RawReading {
                shelf: 2,
                grams: water,
                stable: true,
                fault: false,
            },
        ],
    )
    .unwrap()
}
fn full() -> Weighing {
    weighing(3550, 4400, true)
}
/// Two colas and a water gone.
fn taken() -> Weighing {
    weighing(3550 - 710, 4400 - 550, true)
}
/// The cola shelf still moving when the door closed.
fn shaky() -> Weighing {
    weighing(3550 - 710, 4400 - 550, false)
}

fn line(s: i64, code: &str, quantity: u32) -> OrderLine {
    let p = planogram();
    OrderLine::of(p.slot(shelf(s), &sku(code)).unwrap(), quantity).unwrap()
}
fn order_lines() -> Vec<OrderLine> {
    vec![line(1, "COLA", 2), line(2, "WATER", 1)]
}

fn start_command() -> ShoppingCommand {
    ShoppingCommand::Start {
        session_id: SessionId::from(Uuid::from_u128(1)),
        device_id: DeviceId::from(Uuid::from_u128(7)),
        site: SiteCode::parse("site", "610091A01").unwrap(),
        user: KazayaUserId::parse("user", "kz_10086").unwrap(),
        open_request_id: Uuid::from_u128(42),
        planogram: planogram(),
        weighing_before: full(),
        at: t(0),
    }
}
fn started() -> Vec<ShoppingEvent> {
    vec![
        ShoppingEvent::SessionStarted {
            session_id: SessionId::from(Uuid::from_u128(1)),
            device_id: DeviceId::from(Uuid::from_u128(7)),
            site: SiteCode::parse("site", "610091A01").unwrap(),
            user: KazayaUserId::parse("user", "kz_10086").unwrap(),
            open_request_id: Uuid::from_u128(42),
            planogram: planogram(),
            at: t(0),
        },
        ShoppingEvent::WeighingRecorded {
            phase: WeighingPhase::Before,
            weighing: full(),
            at: t(0),
        },
    ]
}
fn after(w: Weighing) -> ShoppingEvent {
    ShoppingEvent::WeighingRecorded {
        phase: WeighingPhase::After,
        weighing: w,
        at: t(30),
    }
}
fn placed() -> Vec<ShoppingEvent> {
    let mut e = started();
    e.push(after(taken()));
    e.push(ShoppingEvent::OrderPlaced {
        lines: order_lines(),
        total: cny(900),
        at: t(30),
    });
    e
}
fn in_review() -> Vec<ShoppingEvent> {
    let mut e = started();
    e.push(after(shaky()));
    e.push(ShoppingEvent::OrderNeedsReview {
        reasons: vec![ReviewReason::Unstable { shelf: shelf(1) }],
        provisional: vec![line(2, "WATER", 1)],
        at: t(30),
    });
    e
}
fn closed_empty() -> Vec<ShoppingEvent> {
    let mut e = started();
    e.push(after(full()));
    e.push(ShoppingEvent::SessionClosedEmpty { at: t(30) });
    e
}
fn resolved(lines: Vec<OrderLine>, total: i64) -> Vec<ShoppingEvent> {
    let mut e = in_review();
    e.push(ShoppingEvent::ReviewResolved {
        operator: operator(),
        lines,
        total: cny(total),
        at: t(60),
    });
    e
}
fn requested(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
    e.push(ShoppingEvent::PaymentRequested {
        payment_id: pay(n),
        amount: cny(amount),
        at: t(40),
    });
    e
}
fn failed(mut e: Vec<ShoppingEvent>, n: u128) -> Vec<ShoppingEvent> {
    e.push(ShoppingEvent::PaymentFailed {
        payment_id: pay(n),
        reason: declined(),
        at: t(41),
    });
    e
}
fn succeeded(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
    e.push(ShoppingEvent::PaymentSucceeded {
        payment_id: pay(n),
        amount: cny(amount),
        provider_ref: provider_ref(),
        at: t(42),
    });
    e
}
fn paid() -> Vec<ShoppingEvent> {
    succeeded(requested(placed(), 1, 900), 1, 900)
}
fn refunded(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
    e.push(ShoppingEvent::Refunded {
        refund_id: refund_id(n),
        payment_id: pay(1),
        amount: cny(amount),
        at: t(100),
    });
    e
}

fn refund_requested(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
    e.push(ShoppingEvent::RefundRequested {
        refund_id: refund_id(n),
        payment_id: pay(1),
        amount: cny(amount),
        at: t(99),
    });
    e
}
fn refund_failed(n: u128) -> ShoppingEvent {
    ShoppingEvent::RefundFailed {
        refund_id: refund_id(n),
        reason: Label::parse("reason", "refused", 200).unwrap(),
        at: t(101),
    }
}
fn request_refund(n: u128, amount: i64) -> ShoppingCommand {
    ShoppingCommand::RequestRefund {
        refund_id: refund_id(n),
        amount: cny(amount),
        at: t(99),
    }
}

fn close(w: Weighing) -> ShoppingCommand {
    ShoppingCommand::Close {
        weighing_after: w,
        at: t(30),
    }
}
fn resolve(lines: Vec<ReviewLine>) -> ShoppingCommand {
    ShoppingCommand::ResolveReview {
        operator: operator(),
        lines,
        at: t(60),
    }
}
fn review_line(s: i64, code: &str, quantity: u32) -> ReviewLine {
    ReviewLine {
        shelf: shelf(s),
        sku: sku(code),
        quantity,
    }
}
fn request(n: u128, amount: i64) -> ShoppingCommand {
    ShoppingCommand::RequestPayment {
        payment_id: pay(n),
        amount: cny(amount),
        at: t(40),
    }
}
fn success(n: u128) -> ShoppingCommand {
    ShoppingCommand::RecordPaymentSucceeded {
        payment_id: pay(n),
        provider_ref: provider_ref(),
        at: t(42),
    }
}
fn failure(n: u128) -> ShoppingCommand {
    ShoppingCommand::RecordPaymentFailed {
        payment_id: pay(n),
        reason: declined(),
        at: t(41),
    }
}
fn refund(n: u128, amount: i64) -> ShoppingCommand {
    ShoppingCommand::Refund {
        refund_id: refund_id(n),
        amount: cny(amount),
        at: t(100),
    }
}

fn state(events: Vec<ShoppingEvent>) -> ShoppingSession {
    let mut s = ShoppingSession::default();
    for e in events {
        s.apply(e);
    }
    s
}
