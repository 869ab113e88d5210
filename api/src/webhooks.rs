//! Standard Webhooks for HTTP receivers: reads the three headers out of an axum [`HeaderMap`] and
//! hands them to the one implementation in [`latch_domain::webhooks`]; and how a refusal answers.
//!
//! Only the header reading lives here: signing, the tolerance and the constant-time comparison
//! are the domain's, shared with the workers and the sandboxes.

use crate::error::ApiError;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use latch_domain::webhooks::{self, Signed, WebhookError};

/// Verifies a signed request against `secret` (`whsec_` + base64): the secret first (a bad one
/// is our configuration, not the sender's fault), then the headers, then the signature.
pub fn verify(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Signed, WebhookError> {
    let key = webhooks::secret_key(secret).ok_or(WebhookError::InvalidSecret)?;
    let id = header(headers, webhooks::ID_HEADER)?;
    let timestamp = header(headers, webhooks::TIMESTAMP_HEADER)?;
    let signatures = header(headers, webhooks::SIGNATURE_HEADER)?;
    webhooks::verify(&key, id, timestamp, signatures, body, now)
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, WebhookError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(WebhookError::MissingHeader(name))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            // Our configuration, not the sender's fault.
            WebhookError::InvalidSecret => ApiError::Internal(e.to_string()),
            other => ApiError::BadRequest {
                code: other.code(),
                message: other.to_string(),
                field: other.field().map(str::to_owned),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(ts).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// The published Standard Webhooks test vector, through the headers.
    #[test]
    fn reads_the_headers_and_checks_the_secret_first() {
        let now = DateTime::from_timestamp(1614265330, 0).unwrap();
        let h = headers(ID, " 1614265330 ", SIG);
        assert_eq!(verify(SECRET, &h, BODY, now).unwrap().id, ID);
        let mut missing = h.clone();
        missing.remove("webhook-signature");
        assert_eq!(
            verify(SECRET, &missing, BODY, now),
            Err(WebhookError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            verify("whsec_***", &missing, BODY, now),
            Err(WebhookError::InvalidSecret)
        );
    }
}
