//! Shopper scripts: what a simulated shopper takes, puts back or leaves on a shelf.

use super::*;

/// `count` units from `shelf`: of `sku`, or of the shelf's products in SKU order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Take {
    pub shelf: u8,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

impl Take {
    fn check(&self, field: &str) -> Result<(), String> {
        check_shelf(&format!("{field}.shelf"), self.shelf)?;
        if self.count > MAX_SCRIPT_COUNT {
            return Err(format!("{field}.count must be at most {MAX_SCRIPT_COUNT}"));
        }
        if let Some(sku) = &self.sku {
            Sku::parse(&format!("{field}.sku"), sku).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Something that is not stock, left on a shelf (negative: removed again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Foreign {
    pub shelf: u8,
    pub grams: i64,
}

/// What a shopper does while the door is open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopperScript {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub take: Vec<Take>,
    /// Units put on the shelf (bought earlier, or taken and returned in this opening).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put_back: Vec<Take>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_grams: Vec<Foreign>,
    /// How long the door stays open; default [`SimConfig::hold_open`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
    /// This shelf's `after` reading reports a sensor fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faulty_shelf: Option<u8>,
    /// This shelf's `after` reading is not stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unstable_shelf: Option<u8>,
}

impl ShopperScript {
    /// A script that only takes.
    pub fn taking(take: Vec<Take>) -> Self {
        Self {
            take,
            ..Self::default()
        }
    }

    /// Parses and checks a script from a control message.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let script: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        script.check()?;
        Ok(script)
    }

    fn check(&self) -> Result<(), String> {
        for (name, list) in [("take", &self.take), ("put_back", &self.put_back)] {
            if list.len() > MAX_SCRIPT_LINES {
                return Err(format!("{name} must list at most {MAX_SCRIPT_LINES} lines"));
            }
            for (i, t) in list.iter().enumerate() {
                t.check(&format!("{name}[{i}]"))?;
            }
        }
        if self.foreign_grams.len() > MAX_SCRIPT_LINES {
            return Err(format!(
                "foreign_grams must list at most {MAX_SCRIPT_LINES} lines"
            ));
        }
        for (i, f) in self.foreign_grams.iter().enumerate() {
            check_shelf(&format!("foreign_grams[{i}].shelf"), f.shelf)?;
            if f.grams.abs() > MAX_FOREIGN_GRAMS {
                return Err(format!(
                    "foreign_grams[{i}].grams must be within ±{MAX_FOREIGN_GRAMS}"
                ));
            }
        }
        if self.hold_ms.is_some_and(|ms| ms > MAX_HOLD_MS) {
            return Err(format!("hold_ms must be at most {MAX_HOLD_MS}"));
        }
        if let Some(s) = self.faulty_shelf {
            check_shelf("faulty_shelf", s)?;
        }
        if let Some(s) = self.unstable_shelf {
            check_shelf("unstable_shelf", s)?;
        }
        Ok(())
    }
}

fn check_shelf(field: &str, shelf: u8) -> Result<(), String> {
    if (1..=ShelfNo::MAX).contains(&shelf) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be a shelf number from 1 to {}",
            ShelfNo::MAX
        ))
    }
}

/// Parses `SHELF:COUNT[:SKU],...` (e.g. `1:2,2:1:COLA`) into takes; an empty string takes
/// nothing. For a `--take` command-line option.
pub fn parse_take(raw: &str) -> Result<Vec<Take>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let takes = raw
        .split(',')
        .map(|item| {
            let item = item.trim();
            let bad = || format!("{item:?}: expected SHELF:COUNT or SHELF:COUNT:SKU");
            let mut parts = item.split(':');
            let (Some(shelf), Some(count)) = (parts.next(), parts.next()) else {
                return Err(bad());
            };
            let sku = parts.next().map(str::to_owned);
            if parts.next().is_some() {
                return Err(bad());
            }
            let take = Take {
                shelf: shelf.trim().parse().map_err(|_| bad())?,
                count: count.trim().parse().map_err(|_| bad())?,
                sku,
            };
            take.check(&format!("{item:?}"))?;
            Ok(take)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if takes.len() > MAX_SCRIPT_LINES {
        return Err(format!("at most {MAX_SCRIPT_LINES} takes"));
    }
    Ok(takes)
}
