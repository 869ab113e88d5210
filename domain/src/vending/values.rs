//! The small value types of vending, each parsed at the edge with the field it came from named.
//!
//! Deserialising from stored events does not re-validate: events were validated when they were
//! decided, and a rule tightened later must not make old history unreadable.

use crate::device::{Label, ParseError};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// One door opening's stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh UUIDv7 id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ParseError::new(field, "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for SessionId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An ISO 4217 alphabetic code such as `CNY`: three ASCII capitals.
///
/// Whether the code is one ISO actually assigned is the payment provider's business; what
/// matters here is that amounts in different currencies are never added together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        match raw.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(ParseError::new(
                field,
                "must be an ISO 4217 code of three capital letters, e.g. \"CNY\"",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII capitals.
        std::str::from_utf8(&self.0).expect("ASCII currency code")
    }
}

impl TryFrom<String> for Currency {
    type Error = ParseError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse("currency", &raw)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why money arithmetic was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot combine amounts in {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// An amount in integer minor units (fen for CNY, cents for EUR) of one currency.
///
/// Never a float: `0.1 + 0.2 != 0.3` has no place on a receipt. All arithmetic is checked, so
/// an overflow is an error to handle rather than a wrapped (or panicking) total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// Any amount, including a negative one (a difference); edges use [`Money::parse`].
    pub const fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub const fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// An amount from outside: prices, payments and refunds are never negative.
    pub fn parse(field: &str, minor: i64, currency: &str) -> Result<Self, ParseError> {
        let currency = Currency::parse(&format!("{field}.currency"), currency)?;
        if minor < 0 {
            return Err(ParseError::new(
                format!("{field}.minor"),
                "must not be negative",
            ));
        }
        Ok(Self { minor, currency })
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }

    pub fn is_positive(&self) -> bool {
        self.minor > 0
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    /// A unit price times a quantity.
    pub fn checked_mul(&self, quantity: u32) -> Result<Money, MoneyError> {
        let minor = self
            .minor
            .checked_mul(i64::from(quantity))
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(minor, self.currency))
    }

    /// The sum of `amounts`, all in `currency` (zero when there are none).
    pub fn checked_sum<'a>(
        currency: Currency,
        amounts: impl IntoIterator<Item = &'a Money>,
    ) -> Result<Money, MoneyError> {
        amounts
            .into_iter()
            .try_fold(Self::zero(currency), |sum, m| sum.checked_add(m))
    }
}

/// A weight in whole grams.
///
/// Integers, not floats: cabinet load cells resolve to a gram at best, integer comparisons are
/// exact, and an event replayed on any machine settles to the same order (no rounding mode or
/// float formatting in the log). Tolerances (see [`crate::vending::planogram`]) absorb the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Grams(i64);

impl Grams {
    /// Any weight, as a device reported it (settlement judges whether it is plausible).
    pub const fn new(grams: i64) -> Self {
        Self(grams)
    }

    /// A configured weight: within `min..=max`.
    pub fn parse(field: &str, raw: i64, min: i64, max: i64) -> Result<Self, ParseError> {
        if (min..=max).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(ParseError::new(
                field,
                format!("must be whole grams from {min} to {max}"),
            ))
        }
    }

    pub const fn get(&self) -> i64 {
        self.0
    }
}

impl fmt::Display for Grams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} g", self.0)
    }
}

/// A shelf of one cabinet, numbered from 1 (top) to 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShelfNo(u8);

impl ShelfNo {
    pub const MAX: u8 = 32;

    pub fn parse(field: &str, raw: i64) -> Result<Self, ParseError> {
        match u8::try_from(raw) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ParseError::new(
                field,
                format!("must be a shelf number from 1 to {}", Self::MAX),
            )),
        }
    }

    pub fn get(&self) -> u8 {
        self.0
    }
}

impl fmt::Display for ShelfNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn plain_token(raw: &str, max: usize) -> bool {
    (1..=max).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A stock-keeping unit code, e.g. `COLA-330`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        if plain_token(raw, 32) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                field,
                "must be 1-32 characters of A-Z, a-z, 0-9, '-' or '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A product's name as shoppers see it on their order (any script, 1-80 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProductName(String);

impl ProductName {
    pub const MAX_CHARS: usize = 80;

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        Label::parse(field, raw, Self::MAX_CHARS).map(|l| Self(l.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An opaque identifier from outside (Kazaya's user ids and transaction references, operator
/// names): printable ASCII without spaces, so it is safe in logs and metadata.
fn opaque(field: &str, raw: &str, max: usize) -> Result<String, ParseError> {
    if (1..=max).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_graphic()) {
        Ok(raw.to_owned())
    } else {
        Err(ParseError::new(
            field,
            format!("must be 1-{max} printable ASCII characters without spaces"),
        ))
    }
}

/// The shopper, as Kazaya (the member and payment platform) identifies them after login.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KazayaUserId(String);

impl KazayaUserId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        opaque(field, raw, 64).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The operator who resolved a review, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperatorId(String);

impl OperatorId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        opaque(field, raw, 64).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Kazaya's own reference for a completed payment (what its support desk asks for).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderRef(String);

impl ProviderRef {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        opaque(field, raw, 128).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny() -> Currency {
        Currency::parse("currency", "CNY").unwrap()
    }

    #[test]
    fn money_adds_only_within_one_currency_and_refuses_overflow() {
        let a = Money::new(250, cny());
        assert_eq!(a.checked_add(&a), Ok(Money::new(500, cny())));
        assert_eq!(a.checked_mul(3), Ok(Money::new(750, cny())));
        assert_eq!(a.checked_sub(&a).map(|m| m.is_zero()), Ok(true));
        let eur = Money::new(1, Currency::parse("c", "EUR").unwrap());
        assert!(matches!(
            a.checked_add(&eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        let big = Money::new(i64::MAX, cny());
        assert_eq!(big.checked_add(&a), Err(MoneyError::Overflow));
        assert_eq!(big.checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(
            Money::new(i64::MIN, cny()).checked_sub(&a),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::checked_sum(cny(), [&big, &a]),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Money::checked_sum(cny(), []), Ok(Money::zero(cny())));
    }

    #[test]
    fn money_serialises_as_minor_units_and_a_code() {
        let m = Money::parse("price", 1250, "CNY").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"minor":1250,"currency":"CNY"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Money>(r#"{"minor":1,"currency":"cny"}"#).is_err());
    }

    #[test]
    fn parsing_names_the_field() {
        assert_eq!(
            Money::parse("price", -1, "CNY").unwrap_err().field,
            "price.minor"
        );
        assert_eq!(
            Money::parse("price", 1, "yuan").unwrap_err().field,
            "price.currency"
        );
        for bad in ["", "CN", "CNYY", "cny", "C1Y", "ÇNY"] {
            assert!(Currency::parse("c", bad).is_err(), "{bad}");
        }
        assert!(ShelfNo::parse("shelf", 1).is_ok());
        assert!(ShelfNo::parse("shelf", 32).is_ok());
        for bad in [0, 33, -1, 256 + 1] {
            assert_eq!(ShelfNo::parse("shelf", bad).unwrap_err().field, "shelf");
        }
        assert!(Sku::parse("sku", "COLA-330_b").is_ok());
        assert!(Sku::parse("sku", &"x".repeat(32)).is_ok());
        for bad in ["", "a b", "可乐", &"x".repeat(33)] {
            assert!(Sku::parse("sku", bad).is_err(), "{bad}");
        }
        assert!(ProductName::parse("name", "可口可乐 330ml").is_ok());
        assert!(ProductName::parse("name", &"乐".repeat(80)).is_ok());
        assert!(ProductName::parse("name", &"乐".repeat(81)).is_err());
        assert!(ProductName::parse("name", " ").is_err());
        assert!(Grams::parse("w", 0, 1, 10).is_err());
        assert_eq!(Grams::parse("w", 10, 1, 10), Ok(Grams::new(10)));
        assert!(KazayaUserId::parse("user", "kz_10086").is_ok());
        assert!(KazayaUserId::parse("user", "a b").is_err());
        assert!(KazayaUserId::parse("user", "").is_err());
        assert!(ProviderRef::parse("ref", &"r".repeat(129)).is_err());
        assert!(SessionId::parse("session_id", "nope").is_err());
    }
}
