//! Payments of the order.

use super::*;

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
