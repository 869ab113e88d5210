use super::stock::jitter;
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
