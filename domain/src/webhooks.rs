//! Standard Webhooks (<https://www.standardwebhooks.com>): the one implementation of signing and
//! verifying, used by every sender and receiver in the project.
//!
//! A message is signed with `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)), where
//! the key is the base64 part of a `whsec_` secret. A receiver accepts it when the timestamp is
//! within [`TOLERANCE_SECS`] of its clock either way and one of the space-separated signatures
//! matches in constant time.
//!
//! The core here knows nothing of HTTP or NATS: callers hand in the three header values as text
//! (`latch-api` has the thin `HeaderMap` reader). Kazaya's payment callbacks, the authorizers'
//! grant requests and answers, and both sandboxes all go through it, so the sandboxes no longer
//! carry a second copy that could drift; the published test vector below is what keeps this one
//! honest against the reference implementation instead.

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signatures signed longer ago (or further ahead) than this are refused: Standard Webhooks'
/// five minutes, which bounds how long a captured delivery can be replayed.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The three headers a signed message carries, in the order [`verify`] takes them.
pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The key bytes of a `whsec_` + base64 secret (the prefix is optional); `None` if it is not
/// base64 or empty.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|k| !k.is_empty())
}

/// `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)): the value of
/// [`SIGNATURE_HEADER`].
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = mac(key, id, &timestamp.to_string(), body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The authenticated part of a message, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The sender's message id: the same on every retry, so receivers deduplicate by it.
    pub id: String,
    /// When this delivery attempt was signed.
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the {0} header is missing or not text")]
    MissingHeader(&'static str),
    #[error("the webhook secret is not `whsec_` + base64")]
    InvalidSecret,
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the callback was signed {0} s ago, more than the tolerance allows")]
    TooOld(i64),
    #[error("the callback is dated {0} s in the future, more than the tolerance allows")]
    TooNew(i64),
    #[error("no webhook-signature matches the body")]
    BadSignature,
    /// Signed correctly, but the body is not what the receiver expects; set by receivers after
    /// [`verify`], kept here so one error type answers for the whole check.
    #[error("the callback body is not a Kazaya event: {0}")]
    MalformedBody(String),
}

impl WebhookError {
    /// The machine-readable code an HTTP receiver answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "webhook_header_missing",
            Self::InvalidSecret => "webhook_secret_invalid",
            Self::BadTimestamp => "webhook_timestamp_invalid",
            Self::TooOld(_) => "webhook_too_old",
            Self::TooNew(_) => "webhook_too_new",
            Self::BadSignature => "webhook_signature_invalid",
            Self::MalformedBody(_) => "webhook_body_invalid",
        }
    }

    /// The header (or `body`) at fault; `None` when the fault is the receiver's own secret.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::MissingHeader(h) => Some(h),
            Self::BadTimestamp | Self::TooOld(_) | Self::TooNew(_) => Some(TIMESTAMP_HEADER),
            Self::BadSignature => Some(SIGNATURE_HEADER),
            Self::MalformedBody(_) => Some("body"),
            Self::InvalidSecret => None,
        }
    }
}

/// The Standard Webhooks check of one message: `timestamp` within [`TOLERANCE_SECS`] of `now`
/// either way, and one of the space-separated `v1,` `signatures` equal (in constant time) to
/// HMAC-SHA256(key, `{id}.{timestamp}.{body}`).
///
/// The timestamp is signed as the text received, not as re-formatted digits, so a sender's
/// `0123` cannot verify as `123`.
pub fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Signed, WebhookError> {
    let seconds: i64 = timestamp.parse().map_err(|_| WebhookError::BadTimestamp)?;
    let signed_at =
        DateTime::<Utc>::from_timestamp(seconds, 0).ok_or(WebhookError::BadTimestamp)?;
    let age = now.timestamp() - seconds;
    if age > TOLERANCE_SECS {
        return Err(WebhookError::TooOld(age));
    }
    if -age > TOLERANCE_SECS {
        return Err(WebhookError::TooNew(-age));
    }
    let mac = mac(key, id, timestamp, body);
    let matches = signatures
        .split_ascii_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        // `verify_slice` compares in constant time, so a forger learns nothing from timing.
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if !matches {
        return Err(WebhookError::BadSignature);
    }
    Ok(Signed {
        id: id.to_owned(),
        timestamp: signed_at,
    })
}

/// [`verify`] with the secret as configured (`whsec_` + base64) rather than its key bytes.
pub fn verify_with_secret(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Signed, WebhookError> {
    let key = secret_key(secret).ok_or(WebhookError::InvalidSecret)?;
    verify(&key, id, timestamp, signatures, body, now)
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(ts, 0).unwrap()
    }

    fn check(
        secret: &str,
        id: &str,
        sigs: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Signed, WebhookError> {
        verify_with_secret(secret, id, &TS.to_string(), sigs, body, at(now))
    }

    #[test]
    fn signs_like_the_reference_implementation() {
        let key = secret_key(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), SIG);
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("whsec_not base64!"), None);
    }

    #[test]
    fn accepts_the_reference_signature_among_others() {
        let signed = check(SECRET, ID, &format!("v1,bm9wZQ== {SIG}"), BODY, TS).unwrap();
        assert_eq!(
            signed,
            Signed {
                id: ID.into(),
                timestamp: at(TS)
            }
        );
        // A bare base64 secret works too.
        check(&SECRET[6..], ID, SIG, BODY, TS).unwrap();
    }

    #[test]
    fn refuses_what_it_should() {
        assert_eq!(
            check(SECRET, ID, SIG, br#"{"test": 2432232315}"#, TS),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check(SECRET, ID, SIG, BODY, TS + 301),
            Err(WebhookError::TooOld(301))
        );
        check(SECRET, ID, SIG, BODY, TS + 300).unwrap();
        assert_eq!(
            check(SECRET, ID, SIG, BODY, TS - 301),
            Err(WebhookError::TooNew(301))
        );
        assert_eq!(
            check(SECRET, "msg_other", SIG, BODY, TS),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check(SECRET, ID, &SIG.replace("v1,", "v2,"), BODY, TS),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_with_secret(SECRET, ID, "yesterday", SIG, BODY, at(TS)),
            Err(WebhookError::BadTimestamp)
        );
        // The timestamp is signed as sent: the same second written differently does not verify.
        assert_eq!(
            verify_with_secret(SECRET, ID, "01614265330", SIG, BODY, at(TS)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check("whsec_***", ID, SIG, BODY, TS),
            Err(WebhookError::InvalidSecret)
        );
    }
}
