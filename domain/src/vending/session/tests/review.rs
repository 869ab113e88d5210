//! Review of doubtful weighings.

use super::*;

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
