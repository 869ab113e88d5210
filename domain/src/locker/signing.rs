//! The authorizer's signing secret and the Standard Webhooks signature it makes.
//!
//! One secret signs both directions: Latch's grant requests to the authorizer and the
//! authorizer's answers. It lives here, beside the [`Authorizer`](super::Authorizer) that holds
//! it, because both the API (registration, callbacks) and the delivery worker need the same
//! reading of it.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key bytes of a `whsec_` + base64 secret (the prefix is optional); `None` if it is not
/// base64 or empty.
/// Seconds before each grant-request delivery attempt: nine attempts over about four minutes,
/// inside the default five-minute grant timeout, after which delivering is pointless.
pub const DEFAULT_WEBHOOK_BACKOFF_SECS: [u64; 8] = [1, 2, 5, 10, 20, 30, 60, 120];

pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|k| !k.is_empty())
}

/// `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)): the Standard Webhooks signature.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Standard Webhooks test vector.
    #[test]
    fn signs_like_the_reference_implementation() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("whsec_not base64!"), None);
    }
}
