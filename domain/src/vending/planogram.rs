//! What a cabinet's shelves hold: per product, its unit weight, tolerance and price.
//!
//! The tolerance of a product is how far a measured change may stray from a whole number of
//! units and still count as that number: it absorbs both the spread of real units (a can is
//! rarely exactly 355 g) and the load cell's drift between the two weighings. The rules checked
//! here are the ones that keep a single change from meaning two things by construction; the
//! ambiguities that remain (several units of different products adding up alike) are found by
//! [`settle`](super::settle()) and sent to review.

use super::values::{Currency, Grams, Money, ProductName, ShelfNo, Sku};
use crate::device::ParseError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// More products on one shelf make more changes ambiguous and the search for the combination
/// that explains a change grow as `21^n`; four keeps it below 200 000 combinations.
pub const MAX_PRODUCTS_PER_SHELF: usize = 4;
/// Every shelf full.
pub const MAX_SLOTS: usize = ShelfNo::MAX as usize * MAX_PRODUCTS_PER_SHELF;
/// A configured unit weight above this (100 kg) is a typo, not a product.
pub const MAX_UNIT_WEIGHT_GRAMS: i64 = 100_000;

/// One product on one shelf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub shelf: ShelfNo,
    pub sku: Sku,
    pub name: ProductName,
    pub unit_weight: Grams,
    pub tolerance: Grams,
    pub unit_price: Money,
}

/// The wire shape of a slot, as an operator's configuration or an API body sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawSlot {
    pub shelf: i64,
    pub sku: String,
    pub name: String,
    /// Grams per unit.
    pub unit_weight: i64,
    /// Grams either side of a whole quantity (per unit, see `settle`).
    pub tolerance: i64,
    /// Minor units per unit.
    pub unit_price: i64,
    pub currency: String,
}

/// A cabinet's planogram, snapshotted into each session so a later re-stocking or price change
/// does not rewrite what a past shopper owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planogram {
    /// Sorted by shelf, then SKU.
    slots: Vec<Slot>,
    currency: Currency,
}

impl Planogram {
    /// Validates a whole planogram; errors name the slot and field, e.g. `slots[2].unit_weight`.
    pub fn parse(field: &str, raw: &[RawSlot]) -> Result<Self, ParseError> {
        if raw.is_empty() {
            return Err(ParseError::new(field, "must list at least one product"));
        }
        if raw.len() > MAX_SLOTS {
            return Err(ParseError::new(
                field,
                format!("must list at most {MAX_SLOTS} products"),
            ));
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(raw.len());
        // Index into `raw` of each slot already accepted, per shelf, to name earlier conflicts.
        let mut by_shelf: BTreeMap<ShelfNo, Vec<usize>> = BTreeMap::new();
        let mut currency: Option<Currency> = None;
        for (i, r) in raw.iter().enumerate() {
            let at = |name: &str| format!("{field}[{i}].{name}");
            let slot = parse_slot(r, &at)?;
            match currency {
                None => currency = Some(slot.unit_price.currency()),
                Some(c) if c != slot.unit_price.currency() => {
                    return Err(ParseError::new(
                        at("currency"),
                        format!("must be {c}, like the rest of the planogram"),
                    ))
                }
                Some(_) => {}
            }
            let same_shelf = by_shelf.entry(slot.shelf).or_default();
            if same_shelf.len() == MAX_PRODUCTS_PER_SHELF {
                return Err(ParseError::new(
                    at("shelf"),
                    format!(
                        "shelf {} already holds {MAX_PRODUCTS_PER_SHELF} products, the most one shelf may",
                        slot.shelf
                    ),
                ));
            }
            for &j in same_shelf.iter() {
                let other = &slots[j];
                if other.sku == slot.sku {
                    return Err(ParseError::new(
                        at("sku"),
                        format!("duplicates {field}[{j}] on shelf {}", slot.shelf),
                    ));
                }
                // If one unit of either product could read as one unit of the other, every
                // single-item take from this shelf would be ambiguous: refuse the layout.
                let gap = (other.unit_weight.get() - slot.unit_weight.get()).abs();
                if gap <= other.tolerance.get() + slot.tolerance.get() {
                    return Err(ParseError::new(
                        at("unit_weight"),
                        format!(
                            "is within tolerance of {field}[{j}] ({}) on shelf {}: one unit could be either product",
                            other.sku, slot.shelf
                        ),
                    ));
                }
            }
            same_shelf.push(i);
            slots.push(slot);
        }
        slots.sort_by(|a, b| (a.shelf, &a.sku).cmp(&(b.shelf, &b.sku)));
        Ok(Self {
            slots,
            currency: currency.expect("at least one slot"),
        })
    }

    /// Sorted by shelf, then SKU.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The products on one shelf, by SKU (empty for a shelf the planogram does not use).
    pub fn shelf(&self, shelf: ShelfNo) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(move |s| s.shelf == shelf)
    }

    /// Every shelf in use, ascending.
    pub fn shelves(&self) -> Vec<ShelfNo> {
        let mut shelves: Vec<ShelfNo> = self.slots.iter().map(|s| s.shelf).collect();
        shelves.dedup();
        shelves
    }

    pub fn slot(&self, shelf: ShelfNo, sku: &Sku) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.shelf == shelf && s.sku == *sku)
    }

    /// The drift a shelf may show with nothing taken: its products' smallest tolerance.
    ///
    /// Not the largest: with a 20 g allowance on a shelf that also holds 10 g sweets, a sweet
    /// could vanish into "drift". The smallest tolerance is below half of every unit weight on
    /// the shelf, so "nothing" and "one unit of anything" never overlap.
    pub fn drift(&self, shelf: ShelfNo) -> Option<Grams> {
        self.shelf(shelf).map(|s| s.tolerance).min()
    }

    /// The smallest tolerance anywhere: how much a shelf the planogram does not use may move.
    pub fn min_tolerance(&self) -> Grams {
        self.slots
            .iter()
            .map(|s| s.tolerance)
            .min()
            .unwrap_or(Grams::new(0))
    }

    /// For tests that need a planogram the parser would refuse (old events may hold one).
    #[cfg(test)]
    pub(crate) fn unchecked(slots: Vec<Slot>) -> Self {
        let currency = slots[0].unit_price.currency();
        Self { slots, currency }
    }
}

fn parse_slot(r: &RawSlot, at: &dyn Fn(&str) -> String) -> Result<Slot, ParseError> {
    let shelf = ShelfNo::parse(&at("shelf"), r.shelf)?;
    let sku = Sku::parse(&at("sku"), &r.sku)?;
    let name = ProductName::parse(&at("name"), &r.name)?;
    let unit_weight = Grams::parse(&at("unit_weight"), r.unit_weight, 1, MAX_UNIT_WEIGHT_GRAMS)?;
    let tolerance = Grams::parse(&at("tolerance"), r.tolerance, 0, MAX_UNIT_WEIGHT_GRAMS)?;
    // At half a unit or more, a change halfway between two quantities would match both.
    if 2 * tolerance.get() >= unit_weight.get() {
        return Err(ParseError::new(
            at("tolerance"),
            "must be less than half of unit_weight, or two quantities could match one change",
        ));
    }
    let currency = Currency::parse(&at("currency"), &r.currency)?;
    if r.unit_price <= 0 {
        return Err(ParseError::new(
            at("unit_price"),
            "must be a positive amount in minor units",
        ));
    }
    Ok(Slot {
        shelf,
        sku,
        name,
        unit_weight,
        tolerance,
        unit_price: Money::new(r.unit_price, currency),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(shelf: i64, sku: &str, weight: i64, tolerance: i64, price: i64) -> RawSlot {
        RawSlot {
            shelf,
            sku: sku.into(),
            name: format!("product {sku}"),
            unit_weight: weight,
            tolerance,
            unit_price: price,
            currency: "CNY".into(),
        }
    }

    fn err(slots: &[RawSlot]) -> ParseError {
        Planogram::parse("slots", slots).unwrap_err()
    }

    #[test]
    fn a_valid_planogram_is_sorted_by_shelf_then_sku() {
        let p = Planogram::parse(
            "slots",
            &[
                raw(2, "WATER", 550, 15, 200),
                raw(1, "COLA", 355, 10, 350),
                raw(1, "CHIPS", 70, 5, 600),
            ],
        )
        .unwrap();
        let order: Vec<_> = p
            .slots()
            .iter()
            .map(|s| (s.shelf.get(), s.sku.as_str()))
            .collect();
        assert_eq!(order, [(1, "CHIPS"), (1, "COLA"), (2, "WATER")]);
        assert_eq!(p.currency().as_str(), "CNY");
        assert_eq!(p.shelves().len(), 2);
        assert_eq!(
            p.drift(ShelfNo::parse("s", 1).unwrap()),
            Some(Grams::new(5))
        );
        assert_eq!(p.drift(ShelfNo::parse("s", 3).unwrap()), None);
        assert_eq!(p.min_tolerance(), Grams::new(5));
        let back: Planogram = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn each_slot_field_is_checked_and_named() {
        assert_eq!(err(&[]).field, "slots");
        let cases = [
            (raw(0, "A", 100, 10, 1), "slots[0].shelf"),
            (raw(1, "A B", 100, 10, 1), "slots[0].sku"),
            (raw(1, "A", 0, 0, 1), "slots[0].unit_weight"),
            (raw(1, "A", 100, -1, 1), "slots[0].tolerance"),
            (raw(1, "A", 100, 50, 1), "slots[0].tolerance"),
            (raw(1, "A", 100, 10, 0), "slots[0].unit_price"),
        ];
        for (slot, field) in cases {
            assert_eq!(err(&[slot]).field, field);
        }
        let mut no_name = raw(1, "A", 100, 10, 1);
        no_name.name = "".into();
        assert_eq!(err(&[no_name]).field, "slots[0].name");
        let mut bad_currency = raw(1, "A", 100, 10, 1);
        bad_currency.currency = "rmb".into();
        assert_eq!(err(&[bad_currency]).field, "slots[0].currency");
        // Just under half a unit is the loosest tolerance allowed.
        assert!(Planogram::parse("slots", &[raw(1, "A", 101, 50, 1)]).is_ok());
    }

    #[test]
    fn one_currency_for_the_whole_planogram() {
        let mut eur = raw(2, "B", 100, 10, 1);
        eur.currency = "EUR".into();
        let e = err(&[raw(1, "A", 100, 10, 1), eur]);
        assert_eq!(e.field, "slots[1].currency");
        assert!(e.message.contains("CNY"), "{e}");
    }

    #[test]
    fn no_duplicate_sku_on_one_shelf_but_fine_on_two() {
        let e = err(&[raw(1, "A", 100, 10, 1), raw(1, "A", 300, 10, 1)]);
        assert_eq!(e.field, "slots[1].sku");
        assert!(
            Planogram::parse("slots", &[raw(1, "A", 100, 10, 1), raw(2, "A", 100, 10, 1)]).is_ok()
        );
    }

    #[test]
    fn products_one_unit_of_which_could_be_the_other_may_not_share_a_shelf() {
        let e = err(&[raw(3, "A", 100, 10, 1), raw(3, "B", 115, 5, 1)]);
        assert_eq!(e.field, "slots[1].unit_weight");
        assert!(
            Planogram::parse("slots", &[raw(3, "A", 100, 10, 1), raw(3, "B", 116, 5, 1)]).is_ok()
        );
    }

    #[test]
    fn a_shelf_holds_at_most_four_products() {
        let mut slots: Vec<_> = (0..4)
            .map(|i| raw(1, &format!("P{i}"), 100 + 100 * i, 10, 1))
            .collect();
        assert!(Planogram::parse("slots", &slots).is_ok());
        slots.push(raw(1, "P9", 1000, 10, 1));
        assert_eq!(err(&slots).field, "slots[4].shelf");
        let too_many: Vec<_> = (0..=MAX_SLOTS).map(|_| raw(1, "A", 1, 0, 1)).collect();
        assert_eq!(err(&too_many).field, "slots");
    }
}
