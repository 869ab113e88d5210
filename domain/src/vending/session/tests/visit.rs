//! Starting, weighing and closing a session.

use super::*;

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
