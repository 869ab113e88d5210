//! Event names and their round trip.

use super::*;

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
