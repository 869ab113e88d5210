//! Stock and load cells: what a simulated cabinet physically holds and how it weighs.

use super::*;

/// Units that moved in one opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub shelf: u8,
    pub sku: String,
    pub count: u32,
}

/// What a script did to the stock; `ignored` names the lines that matched nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub taken: Vec<Moved>,
    pub put_back: Vec<Moved>,
    pub ignored: Vec<String>,
}

/// What one simulated cabinet physically holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stock {
    planogram: Planogram,
    pub(super) seed: u64,
    /// Per (shelf, SKU) of the planogram.
    units: BTreeMap<(u8, String), u32>,
    /// Grams of foreign objects per shelf.
    foreign: BTreeMap<u8, i64>,
    /// Readings taken so far: the jitter's counter.
    weighings: u64,
}

impl Stock {
    /// A freshly stocked cabinet: `units_per_slot` of every product.
    pub fn new(device: Uuid, planogram: Planogram, units_per_slot: u32) -> Self {
        let (hi, lo) = device.as_u64_pair();
        let mut stock = Self {
            planogram,
            seed: mix(hi ^ mix(lo)),
            units: BTreeMap::new(),
            foreign: BTreeMap::new(),
            weighings: 0,
        };
        stock.restock(units_per_slot);
        stock
    }

    pub fn planogram(&self) -> &Planogram {
        &self.planogram
    }

    /// Switches to a new planogram: products still in it keep their count, new ones arrive
    /// with `units_per_slot`, removed ones leave.
    pub fn adopt(&mut self, planogram: Planogram, units_per_slot: u32) {
        self.units = planogram
            .slots()
            .iter()
            .map(|s| {
                let key = (s.shelf.get(), s.sku.as_str().to_owned());
                let n = self.units.get(&key).copied().unwrap_or(units_per_slot);
                (key, n)
            })
            .collect();
        self.planogram = planogram;
    }

    /// Every product back to `units_per_slot`; foreign objects removed.
    pub fn restock(&mut self, units_per_slot: u32) {
        self.units = self
            .planogram
            .slots()
            .iter()
            .map(|s| ((s.shelf.get(), s.sku.as_str().to_owned()), units_per_slot))
            .collect();
        self.foreign.clear();
    }

    /// Units of `sku` on `shelf` (0 for a product the planogram does not put there).
    pub fn units(&self, shelf: u8, sku: &str) -> u32 {
        self.units
            .get(&(shelf, sku.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The empty shelf's weight: 1 000–2 000 g, fixed per cabinet and shelf.
    pub fn tare(&self, shelf: u8) -> i64 {
        1_000 + (mix(self.seed ^ u64::from(shelf)) % 1_001) as i64
    }

    /// The shelf's true weight, without jitter.
    pub fn shelf_grams(&self, shelf: u8) -> i64 {
        let goods: i64 = self
            .planogram
            .slots()
            .iter()
            .filter(|s| s.shelf.get() == shelf)
            .map(|s| i64::from(self.units(shelf, s.sku.as_str())) * s.unit_weight.get())
            .sum();
        self.tare(shelf) + goods + self.foreign.get(&shelf).copied().unwrap_or(0)
    }

    /// How far this shelf's readings may stray: at most [`MAX_JITTER_GRAMS`], and at most half
    /// of the shelf's drift allowance so that two readings differ by no more than the drift.
    pub fn jitter_bound(&self, shelf: u8) -> i64 {
        let drift = ShelfNo::parse("shelf", i64::from(shelf))
            .ok()
            .and_then(|s| self.planogram.drift(s))
            .map_or(0, |g| g.get());
        MAX_JITTER_GRAMS.min(drift / 2).max(0)
    }

    /// One reading of every planogram shelf, as the cabinet reports it.
    pub fn weigh(&mut self, faulty: Option<u8>, unstable: Option<u8>) -> Vec<RawReading> {
        self.weighings += 1;
        let n = self.weighings;
        self.planogram
            .shelves()
            .into_iter()
            .map(|s| {
                let shelf = s.get();
                let bound = self.jitter_bound(shelf);
                RawReading {
                    shelf: i64::from(shelf),
                    grams: self.shelf_grams(shelf) + jitter(self.seed, shelf, n, bound),
                    stable: unstable != Some(shelf),
                    fault: faulty == Some(shelf),
                }
            })
            .collect()
    }

    /// Runs a script against the stock: takes what is there (never more), puts back, leaves
    /// foreign objects.
    pub fn apply(&mut self, script: &ShopperScript) -> Applied {
        let mut applied = Applied::default();
        for t in &script.take {
            let mut left = t.count;
            let mut matched = false;
            for key in self.keys_for(t) {
                matched = true;
                let have = self.units.get_mut(&key).expect("key from the map");
                let n = left.min(*have);
                if n > 0 {
                    *have -= n;
                    left -= n;
                    applied.taken.push(Moved {
                        shelf: key.0,
                        sku: key.1,
                        count: n,
                    });
                }
                if left == 0 {
                    break;
                }
            }
            if !matched {
                applied.ignored.push(format!("take {}", describe(t)));
            }
        }
        for t in &script.put_back {
            match self.keys_for(t).into_iter().next() {
                Some(key) => {
                    let have = self.units.get_mut(&key).expect("key from the map");
                    *have = have.saturating_add(t.count);
                    applied.put_back.push(Moved {
                        shelf: key.0,
                        sku: key.1,
                        count: t.count,
                    });
                }
                None => applied.ignored.push(format!("put_back {}", describe(t))),
            }
        }
        for f in &script.foreign_grams {
            let uses_shelf = self
                .planogram
                .slots()
                .iter()
                .any(|s| s.shelf.get() == f.shelf);
            if uses_shelf {
                *self.foreign.entry(f.shelf).or_default() += f.grams;
            } else {
                applied.ignored.push(format!(
                    "foreign_grams on shelf {} (no load cell reported)",
                    f.shelf
                ));
            }
        }
        applied
    }

    /// The stock entries a take or put-back line addresses, in SKU order.
    fn keys_for(&self, t: &Take) -> Vec<(u8, String)> {
        self.units
            .keys()
            .filter(|(shelf, sku)| *shelf == t.shelf && t.sku.as_ref().is_none_or(|s| s == sku))
            .cloned()
            .collect()
    }
}

fn describe(t: &Take) -> String {
    match &t.sku {
        Some(sku) => format!(
            "{}×{sku} from shelf {} (not on that shelf)",
            t.count, t.shelf
        ),
        None => format!("{} from shelf {} (no products there)", t.count, t.shelf),
    }
}

/// SplitMix64's finaliser: a cheap, well-spread hash for deterministic noise.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in `-bound..=bound`, fixed by cabinet, shelf and weighing number.
pub(super) fn jitter(seed: u64, shelf: u8, weighing: u64, bound: i64) -> i64 {
    if bound <= 0 {
        return 0;
    }
    let span = (2 * bound + 1) as u64;
    (mix(seed ^ mix(weighing) ^ (u64::from(shelf) << 56)) % span) as i64 - bound
}
