//! Given / when / then tests of the shopping session, and the fixtures they share.

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

#[test]
fn start_records_the_session_and_the_baseline_weighing() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(start_command())
        .then_expect_events(started());
    SessionTest::with(())
        .given(started())
        .when(start_command())
        .then_expect_error(ShoppingError::AlreadyStarted);
}

#[test]
fn every_other_command_needs_a_started_session() {
    let commands = vec![
        ShoppingCommand::RecordWeighing {
            weighing: full(),
            phase: WeighingPhase::Before,
            at: t(1),
        },
        close(taken()),
        resolve(vec![]),
        request(1, 900),
        success(1),
        failure(1),
        refund(1, 100),
    ];
    for command in commands {
        SessionTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ShoppingError::NotStarted);
    }
    assert!(ShoppingError::NotStarted.is_not_found());
    assert_eq!(ShoppingError::NotStarted.code(), "session_not_started");
}

#[test]
fn record_weighing_keeps_every_new_reading_while_open() {
    let rebase = weighing(3560, 4400, true);
    SessionTest::with(())
        .given(started())
        .when(ShoppingCommand::RecordWeighing {
            weighing: rebase.clone(),
            phase: WeighingPhase::Before,
            at: t(2),
        })
        .then_expect_events(vec![ShoppingEvent::WeighingRecorded {
            phase: WeighingPhase::Before,
            weighing: rebase,
            at: t(2),
        }]);
    // The same baseline again is the cabinet repeating itself.
    SessionTest::with(())
        .given(started())
        .when(ShoppingCommand::RecordWeighing {
            weighing: full(),
            phase: WeighingPhase::Before,
            at: t(2),
        })
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given(started())
        .when(ShoppingCommand::RecordWeighing {
            weighing: taken(),
            phase: WeighingPhase::After,
            at: t(20),
        })
        .then_expect_events(vec![ShoppingEvent::WeighingRecorded {
            phase: WeighingPhase::After,
            weighing: taken(),
            at: t(20),
        }]);
    SessionTest::with(())
        .given(placed())
        .when(ShoppingCommand::RecordWeighing {
            weighing: full(),
            phase: WeighingPhase::Before,
            at: t(50),
        })
        .then_expect_error(ShoppingError::AlreadyClosed);
}

#[test]
fn the_latest_baseline_is_what_close_settles_against() {
    // The cabinet re-weighed before unlocking: one cola fewer than the start's reading.
    let mut events = started();
    events.push(ShoppingEvent::WeighingRecorded {
        phase: WeighingPhase::Before,
        weighing: weighing(3550 - 355, 4400, true),
        at: t(2),
    });
    let decided = state(events).decide(close(taken())).unwrap();
    assert!(matches!(
        &decided[1],
        ShoppingEvent::OrderPlaced { lines, total, .. }
            if lines[0].quantity == 1 && *total == cny(550)
    ));
}

#[test]
fn close_places_the_order() {
    SessionTest::with(())
        .given(started())
        .when(close(taken()))
        .then_expect_events(placed()[2..].to_vec());
    assert!(state(placed()).unpaid());
}

#[test]
fn close_with_nothing_taken_closes_empty() {
    SessionTest::with(())
        .given(started())
        .when(close(full()))
        .then_expect_events(closed_empty()[2..].to_vec());
    assert!(!state(closed_empty()).unpaid());
}

#[test]
fn close_with_doubtful_weights_goes_to_review() {
    SessionTest::with(())
        .given(started())
        .when(close(shaky()))
        .then_expect_events(in_review()[2..].to_vec());
    assert!(state(in_review()).unpaid());
}

#[test]
fn close_twice_is_a_no_op_only_with_the_same_weights() {
    SessionTest::with(())
        .given(placed())
        .when(close(taken()))
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given(placed())
        .when(close(full()))
        .then_expect_error(ShoppingError::AlreadyClosed);
}

#[test]
fn resolve_review_sets_the_final_lines_priced_from_the_snapshot() {
    SessionTest::with(())
        .given(in_review())
        .when(resolve(vec![
            review_line(2, "WATER", 1),
            review_line(1, "COLA", 2),
        ]))
        .then_expect_events(resolved(order_lines(), 900)[4..].to_vec());
    let s = state(resolved(order_lines(), 900));
    assert_eq!(s.stage, SessionStage::Resolved);
    assert!(s.unpaid());
    // The review's reasons stay for the record.
    assert!(s.review.is_some());
}

#[test]
fn resolve_review_with_no_lines_means_no_charge() {
    SessionTest::with(())
        .given(in_review())
        .when(resolve(vec![]))
        .then_expect_events(resolved(vec![], 0)[4..].to_vec());
    let s = state(resolved(vec![], 0));
    assert!(!s.unpaid());
    assert_eq!(s.decide(request(1, 0)), Err(ShoppingError::OrderNotPayable));
}

#[test]
fn resolve_review_refusals() {
    for (given, error) in [
        (started(), ShoppingError::ReviewNotNeeded),
        (placed(), ShoppingError::ReviewNotNeeded),
        (closed_empty(), ShoppingError::ReviewNotNeeded),
        (resolved(vec![], 0), ShoppingError::ReviewAlreadyResolved),
    ] {
        SessionTest::with(())
            .given(given)
            .when(resolve(vec![review_line(1, "COLA", 1)]))
            .then_expect_error(error);
    }
    SessionTest::with(())
        .given(in_review())
        .when(resolve(vec![review_line(2, "COLA", 1)]))
        .then_expect_error(ShoppingError::UnknownSku {
            shelf: shelf(2),
            sku: sku("COLA"),
        });
    SessionTest::with(())
        .given(in_review())
        .when(resolve(vec![
            review_line(1, "COLA", 1),
            review_line(1, "COLA", 2),
        ]))
        .then_expect_error(ShoppingError::DuplicateLine {
            shelf: shelf(1),
            sku: sku("COLA"),
        });
    SessionTest::with(())
        .given(in_review())
        .when(resolve(vec![review_line(1, "COLA", 0)]))
        .then_expect_error(ShoppingError::ZeroQuantity {
            shelf: shelf(1),
            sku: sku("COLA"),
        });
}

#[test]
fn resolve_review_refuses_a_total_out_of_range() {
    // An operator's quantities are priced in checked arithmetic like the settlement's.
    let slot = |shelf, sku: &str, w| RawSlot {
        shelf,
        sku: sku.into(),
        name: sku.into(),
        unit_weight: w,
        tolerance: 1,
        unit_price: i64::MAX / 4,
        currency: "CNY".into(),
    };
    let pricey = Planogram::parse("slots", &[slot(1, "A", 100), slot(2, "B", 100)]).unwrap();
    let mut s = state(in_review());
    s.planogram = Some(pricey);
    assert_eq!(
        s.decide(resolve(vec![review_line(1, "A", 5)])),
        Err(ShoppingError::AmountOverflow)
    );
    assert_eq!(
        s.decide(resolve(vec![
            review_line(1, "A", 3),
            review_line(2, "B", 2)
        ])),
        Err(ShoppingError::AmountOverflow)
    );
    assert!(s
        .decide(resolve(vec![
            review_line(1, "A", 2),
            review_line(2, "B", 1)
        ]))
        .is_ok());
}

#[test]
fn request_payment_for_a_placed_or_resolved_order() {
    SessionTest::with(())
        .given(placed())
        .when(request(1, 900))
        .then_expect_events(requested(vec![], 1, 900));
    SessionTest::with(())
        .given(resolved(vec![line(1, "COLA", 1)], 350))
        .when(request(1, 350))
        .then_expect_events(requested(vec![], 1, 350));
    // Asking again for the same payment is a no-op.
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(request(1, 900))
        .then_expect_events(vec![]);
}

#[test]
fn request_payment_refusals() {
    for given in [started(), in_review(), closed_empty()] {
        SessionTest::with(())
            .given(given)
            .when(request(1, 900))
            .then_expect_error(ShoppingError::OrderNotPayable);
    }
    SessionTest::with(())
        .given(placed())
        .when(request(1, 899))
        .then_expect_error(ShoppingError::AmountMismatch {
            expected_minor: 900,
            currency: "CNY".into(),
        });
    SessionTest::with(())
        .given(placed())
        .when(ShoppingCommand::RequestPayment {
            payment_id: pay(1),
            amount: Money::new(900, Currency::parse("c", "EUR").unwrap()),
            at: t(40),
        })
        .then_expect_error(ShoppingError::AmountMismatch {
            expected_minor: 900,
            currency: "CNY".into(),
        });
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(request(2, 900))
        .then_expect_error(ShoppingError::PaymentPending);
    SessionTest::with(())
        .given(paid())
        .when(request(2, 900))
        .then_expect_error(ShoppingError::PaymentAlreadySucceeded);
    SessionTest::with(())
        .given(failed(requested(placed(), 1, 900), 1))
        .when(request(1, 900))
        .then_expect_error(ShoppingError::PaymentIdReused);
}

#[test]
fn payment_success_is_recorded_once() {
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(success(1))
        .then_expect_events(paid()[5..].to_vec());
    assert!(!state(paid()).unpaid());
    assert!(state(requested(placed(), 1, 900)).unpaid());
    // Kazaya's callback arriving twice.
    SessionTest::with(())
        .given(paid())
        .when(success(1))
        .then_expect_events(vec![]);
}

#[test]
fn payment_success_for_another_payment_is_refused() {
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(success(2))
        .then_expect_error(ShoppingError::UnknownPayment);
    SessionTest::with(())
        .given(paid())
        .when(success(2))
        .then_expect_error(ShoppingError::UnknownPayment);
    SessionTest::with(())
        .given(placed())
        .when(success(1))
        .then_expect_error(ShoppingError::UnknownPayment);
    SessionTest::with(())
        .given(failed(requested(placed(), 1, 900), 1))
        .when(success(1))
        .then_expect_error(ShoppingError::PaymentAlreadyFailed);
}

#[test]
fn payment_failure_allows_a_new_request() {
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(failure(1))
        .then_expect_events(failed(vec![], 1));
    let after_failure = failed(requested(placed(), 1, 900), 1);
    assert!(state(after_failure.clone()).unpaid());
    SessionTest::with(())
        .given(after_failure.clone())
        .when(failure(1))
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given(after_failure.clone())
        .when(request(2, 900))
        .then_expect_events(requested(vec![], 2, 900));
    // And the second attempt can succeed.
    SessionTest::with(())
        .given(requested(after_failure, 2, 900))
        .when(success(2))
        .then_expect_events(succeeded(vec![], 2, 900));
}

#[test]
fn payment_failure_refusals() {
    SessionTest::with(())
        .given(paid())
        .when(failure(1))
        .then_expect_error(ShoppingError::PaymentAlreadySucceeded);
    SessionTest::with(())
        .given(requested(placed(), 1, 900))
        .when(failure(2))
        .then_expect_error(ShoppingError::UnknownPayment);
}

#[test]
fn refunds_up_to_what_was_paid() {
    SessionTest::with(())
        .given(paid())
        .when(refund(1, 350))
        .then_expect_events(refunded(vec![], 1, 350));
    SessionTest::with(())
        .given(refunded(paid(), 1, 350))
        .when(refund(2, 550))
        .then_expect_events(refunded(vec![], 2, 550));
    // The same refund again changes nothing.
    SessionTest::with(())
        .given(refunded(paid(), 1, 350))
        .when(refund(1, 350))
        .then_expect_events(vec![]);
    let s = state(refunded(paid(), 1, 350));
    assert_eq!(s.refundable(), Some(cny(550)));
    assert!(!s.unpaid());
}

#[test]
fn a_requested_refund_reserves_its_amount_until_done_or_failed() {
    SessionTest::with(())
        .given(paid())
        .when(request_refund(1, 900))
        .then_expect_events(refund_requested(vec![], 1, 900));
    // Reserved: a second request, even of one cent, exceeds what is left.
    let reserved = refund_requested(paid(), 1, 900);
    assert_eq!(state(reserved.clone()).refundable(), Some(cny(0)));
    SessionTest::with(())
        .given(reserved.clone())
        .when(request_refund(2, 1))
        .then_expect_error(ShoppingError::RefundExceedsPayment);
    // The same request again (a retry) records nothing; another amount under its id is
    // refused.
    SessionTest::with(())
        .given(reserved.clone())
        .when(request_refund(1, 900))
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given(reserved.clone())
        .when(request_refund(1, 800))
        .then_expect_error(ShoppingError::RefundIdReused);
    // Done: the reservation becomes the refund.
    SessionTest::with(())
        .given(reserved.clone())
        .when(refund(1, 900))
        .then_expect_events(refunded(vec![], 1, 900));
    let done = refunded(reserved.clone(), 1, 900);
    assert_eq!(state(done.clone()).refundable(), Some(cny(0)));
    assert!(state(done.clone()).pending_refunds.is_empty());
    SessionTest::with(())
        .given(done)
        .when(ShoppingCommand::FailRefund {
            refund_id: refund_id(1),
            reason: Label::parse("reason", "late", 200).unwrap(),
            at: t(102),
        })
        .then_expect_events(vec![]);
    // Failed: the amount is free again.
    SessionTest::with(())
        .given(reserved.clone())
        .when(ShoppingCommand::FailRefund {
            refund_id: refund_id(1),
            reason: Label::parse("reason", "refused", 200).unwrap(),
            at: t(101),
        })
        .then_expect_events(vec![refund_failed(1)]);
    let mut failed = reserved;
    failed.push(refund_failed(1));
    assert_eq!(state(failed.clone()).refundable(), Some(cny(900)));
    SessionTest::with(())
        .given(failed)
        .when(request_refund(2, 900))
        .then_expect_events(refund_requested(vec![], 2, 900));
}

#[test]
fn refund_refusals() {
    SessionTest::with(())
        .given(refunded(paid(), 1, 350))
        .when(refund(2, 551))
        .then_expect_error(ShoppingError::RefundExceedsPayment);
    SessionTest::with(())
        .given(paid())
        .when(refund(1, 901))
        .then_expect_error(ShoppingError::RefundExceedsPayment);
    SessionTest::with(())
        .given(refunded(paid(), 1, 350))
        .when(refund(1, 100))
        .then_expect_error(ShoppingError::RefundIdReused);
    for given in [placed(), requested(placed(), 1, 900), closed_empty()] {
        SessionTest::with(())
            .given(given)
            .when(refund(1, 100))
            .then_expect_error(ShoppingError::OrderNotPaid);
    }
    SessionTest::with(())
        .given(paid())
        .when(refund(1, 0))
        .then_expect_error(ShoppingError::InvalidRefund);
    SessionTest::with(())
        .given(paid())
        .when(ShoppingCommand::Refund {
            refund_id: refund_id(1),
            amount: Money::new(100, Currency::parse("c", "EUR").unwrap()),
            at: t(100),
        })
        .then_expect_error(ShoppingError::InvalidRefund);
}

#[test]
fn a_session_whose_door_never_opened_is_abandoned_once_and_owes_nothing() {
    let abandon = || ShoppingCommand::Abandon {
        reason: Label::parse("reason", "timeout", 200).unwrap(),
        at: t(30),
    };
    let abandoned = ShoppingEvent::SessionAbandoned {
        reason: Label::parse("reason", "timeout", 200).unwrap(),
        at: t(30),
    };
    SessionTest::with(())
        .given(started())
        .when(abandon())
        .then_expect_events(vec![abandoned.clone()]);
    let mut given = started();
    given.push(abandoned);
    assert!(!state(given.clone()).unpaid());
    SessionTest::with(())
        .given(given)
        .when(abandon())
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given(placed())
        .when(abandon())
        .then_expect_error(ShoppingError::AlreadyClosed);
    SessionTest::with(())
        .given_no_previous_events()
        .when(abandon())
        .then_expect_error(ShoppingError::NotStarted);
}

#[test]
fn unpaid_across_the_life_of_a_session() {
    assert!(!ShoppingSession::default().unpaid());
    assert!(!state(started()).unpaid());
    assert!(state(placed()).unpaid());
    assert!(state(in_review()).unpaid());
    assert!(!state(closed_empty()).unpaid());
    assert!(!state(paid()).unpaid());
    assert!(!state(resolved(vec![], 0)).unpaid());
}

#[test]
fn events_have_fixed_names_and_round_trip() {
    let mut all = paid();
    all.extend(in_review()[3..].to_vec());
    all.extend(resolved(vec![], 0)[4..].to_vec());
    all.push(ShoppingEvent::SessionClosedEmpty { at: t(1) });
    all.push(ShoppingEvent::SessionAbandoned {
        reason: Label::parse("reason", "the cabinet did not open in time", 200).unwrap(),
        at: t(1),
    });
    all.push(failed(vec![], 3).remove(0));
    all = refund_requested(all, 1, 10);
    all = refunded(all, 1, 10);
    all.push(refund_failed(2));
    let mut names: Vec<String> = all.iter().map(|e| e.event_type()).collect();
    names.sort();
    names.dedup();
    let mut expected = ShoppingEvent::TYPES.map(String::from).to_vec();
    expected.sort();
    assert_eq!(names, expected);
    for e in all {
        assert_eq!(e.event_version(), "1");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<ShoppingEvent>(&json).unwrap(), e);
    }
    // The aggregate's own state survives serialisation too (cqrs-es requires it).
    let s = state(refunded(paid(), 1, 350));
    let back: ShoppingSession = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.refundable().map(|m| m.minor()), Some(550));
}
