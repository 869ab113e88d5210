//! The small types of the locker context, each parsed at the edge with the offending field named.

use crate::device::{ParseError, SiteCode};
use serde::{Deserialize, Serialize};
use std::fmt;

fn token(field: &str, raw: &str, max: usize, what: &str) -> Result<String, ParseError> {
    let ok = (1..=max).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ParseError::new(
            field,
            format!("must be {what} of 1-{max} characters A-Z, a-z, 0-9, '-' or '_'"),
        ))
    }
}

/// A locker user's number: their phone number, 5-20 digits (an optional leading '+').
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserNumber(String);

impl UserNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        if (5..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                field,
                "must be a phone number of 5-20 digits",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compartment's number within its site's locker, e.g. `01`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CompartmentNumber(String);

impl CompartmentNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        token(field, raw, 16, "a compartment number").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A compartment: its site and number; the stream id is `"{site}:{number}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompartmentId {
    pub site: SiteCode,
    pub number: CompartmentNumber,
}

impl CompartmentId {
    pub fn new(site: SiteCode, number: CompartmentNumber) -> Self {
        Self { site, number }
    }

    /// Parses `"{site}:{number}"`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let (site, number) = raw
            .split_once(':')
            .ok_or_else(|| ParseError::new(field, "must be \"{site}:{number}\""))?;
        Ok(Self {
            site: SiteCode::parse(field, site)?,
            number: CompartmentNumber::parse(field, number)?,
        })
    }
}

impl fmt::Display for CompartmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.site.as_str(), self.number.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        match raw {
            "small" => Ok(Self::Small),
            "medium" => Ok(Self::Medium),
            "large" => Ok(Self::Large),
            _ => Err(ParseError::new(
                field,
                "must be \"small\", \"medium\" or \"large\"",
            )),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
        }
    }
}

/// A third-party authorizer's number, e.g. `0001`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthorizerNumber(String);

impl AuthorizerNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        token(field, raw, 16, "an authorizer number").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuthorizerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parcel number recorded at deposit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParcelNumber(String);

impl ParcelNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        token(field, raw, 64, "a parcel number").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An authorizer's service endpoint: an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Endpoint(String);

impl Endpoint {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let rest = raw
            .strip_prefix("http://")
            .or_else(|| raw.strip_prefix("https://"));
        let ok = raw.len() <= 500
            && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                field,
                "must be an absolute http:// or https:// URL of at most 500 characters",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_names_the_field() {
        assert!(UserNumber::parse("u", "13455555555").is_ok());
        assert_eq!(UserNumber::parse("u", "1345x").unwrap_err().field, "u");
        assert!(UserNumber::parse("u", "12").is_err());
        let id = CompartmentId::parse("c", "610091A01:01").unwrap();
        assert_eq!(id.to_string(), "610091A01:01");
        assert!(CompartmentId::parse("c", "610091A01").is_err());
        assert_eq!(Size::parse("size", "large").unwrap(), Size::Large);
        assert!(Size::parse("size", "huge").is_err());
        assert!(AuthorizerNumber::parse("a", "0001").is_ok());
        assert!(AuthorizerNumber::parse("a", "").is_err());
        assert!(Endpoint::parse("e", "http://127.0.0.1:9/grants").is_ok());
        assert!(Endpoint::parse("e", "ftp://x").is_err());
        assert!(Endpoint::parse("e", "http://").is_err());
    }
}
