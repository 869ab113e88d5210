//! Refunds, and a session abandoned or left unpaid.

use super::*;

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
