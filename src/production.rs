//! Production mode (`LATCH_ENV=production`): what `latch serve` refuses to start on.
//!
//! Development keeps its convenient defaults (a fixed sticker key, plain http, cookies without
//! `Secure`) so `latch dev` and the tests run with no setup. Those same defaults on the internet
//! would let anyone forge sticker links, read client secrets and payment status off the wire, or
//! lift a session cookie from a plain-http request. So production names every such problem in one
//! error and does not start; development logs the same list once as a warning.
//!
//! The checks read only settings, plus the authorizers already registered (their endpoints are
//! data, not configuration): [`problems`] is pure, [`authorizer_problems`] asks the database.

use crate::config::Settings;
use sqlx::PgPool;

/// Keys Latch signs with must have at least this many bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Everything production refuses, one line each, naming its setting. Empty: fit to run.
pub fn problems(s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let sticker = &s.vending.sticker_key;
    if sticker.as_slice() == latch_api::vending::DEV_STICKER_KEY.as_bytes() {
        out.push("LATCH_STICKER_KEY is the development default".to_owned());
    } else if sticker.len() < MIN_KEY_BYTES {
        out.push(format!(
            "LATCH_STICKER_KEY is {} bytes; at least {MIN_KEY_BYTES} are required",
            sticker.len()
        ));
    }
    // The audit key is an Ed25519 seed, 32 bytes by construction; the development default is
    // the file generated on the spot when it is missing.
    if s.audit.audit_signing_key.is_none() {
        if let Some(path) = &s.audit.audit_signing_key_file {
            if !path.exists() {
                out.push(format!(
                    "LATCH_AUDIT_SIGNING_KEY_FILE {} does not exist (development generates a key; \
                     production must be given one)",
                    path.display()
                ));
            }
        }
    }
    if !is_https(&s.vending.public_url) {
        out.push(format!(
            "LATCH_PUBLIC_URL {:?} is not https (sticker links, the OAuth redirect and payment \
             callbacks are built from it)",
            s.vending.public_url
        ));
    }
    if !s.qr.secure_cookies || !s.vending.secure_cookies {
        out.push("cookies are not Secure (LATCH_SECURE_COOKIES=false)".to_owned());
    }
    if let Some(k) = &s.kazaya {
        if !is_https(&k.base_url) {
            out.push(format!("LATCH_KAZAYA_URL {:?} is not https", k.base_url));
        }
        if k.webhook_secret.is_empty() {
            out.push(
                "LATCH_KAZAYA_WEBHOOK_SECRET is empty (Kazaya's callbacks cannot be verified)"
                    .to_owned(),
            );
        } else if latch_domain::webhooks::secret_key(&k.webhook_secret).is_none() {
            out.push("LATCH_KAZAYA_WEBHOOK_SECRET is not `whsec_` + base64".to_owned());
        }
        if k.client_secret.is_empty() {
            out.push("LATCH_KAZAYA_CLIENT_SECRET is empty".to_owned());
        }
    }
    if s.secrets_key.is_none() {
        out.push("LATCH_SECRETS_KEY is not set (authorizer secrets would be encrypted under the development key)".to_owned());
    }
    let pepper = &s.lockers.pickup_pepper;
    if pepper.is_development() {
        out.push("LATCH_PICKUP_PEPPER is the development default".to_owned());
    } else if pepper.len() < MIN_KEY_BYTES {
        out.push(format!(
            "LATCH_PICKUP_PEPPER is {} bytes; at least {MIN_KEY_BYTES} are required",
            pepper.len()
        ));
    }
    out
}

/// Registered authorizers whose grant-request endpoint is not https, one line each. Their
/// endpoints are data, so production also refuses to deliver to a plain-http one registered
/// later (`insecure_endpoint`, dead-lettered).
pub async fn authorizer_problems(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT number, endpoint FROM locker_authorizers
          WHERE status = 'active' AND endpoint NOT ILIKE 'https://%' ORDER BY number",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(number, endpoint)| {
            format!("authorizer {number}'s endpoint {endpoint:?} is not https")
        })
        .collect())
}

fn is_https(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
}

/// The problems as one error: `refusing to start in production: 3 problems: 1) ...; 2) ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Vec<String>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing to start in production: {} problem{}: ",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}) {p}", i + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_api::kazaya::KazayaConfig;

    #[test]
    fn development_defaults_name_every_problem() {
        let mut s = Settings::new("postgres://x/y", "nats://x");
        s.kazaya = Some(KazayaConfig::new(
            "http://kazaya.example",
            "latch",
            "",
            "http://127.0.0.1:8080/m/auth/callback",
            "",
        ));
        let p = problems(&s);
        let all = p.join("\n");
        for needle in [
            "LATCH_STICKER_KEY is the development default",
            "LATCH_PUBLIC_URL",
            "cookies are not Secure",
            "LATCH_KAZAYA_URL",
            "LATCH_KAZAYA_WEBHOOK_SECRET is empty",
            "LATCH_KAZAYA_CLIENT_SECRET is empty",
            "LATCH_SECRETS_KEY is not set",
            "LATCH_PICKUP_PEPPER is the development default",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        assert_eq!(p.len(), 8, "{all}");
        let shown = Refused(p).to_string();
        assert!(shown.starts_with("refusing to start in production: 8 problems: 1) "));
    }

    #[test]
    fn a_short_key_and_a_missing_key_file_are_named() {
        let mut s = Settings::new("postgres://x/y", "nats://x");
        s.vending.sticker_key = b"short".to_vec();
        s.audit.audit_signing_key_file = Some("/nonexistent/latch/audit.key".into());
        let all = problems(&s).join("\n");
        assert!(
            all.contains("LATCH_STICKER_KEY is 5 bytes; at least 32"),
            "{all}"
        );
        assert!(
            all.contains("/nonexistent/latch/audit.key does not exist"),
            "{all}"
        );
    }

    #[test]
    fn good_settings_have_no_problem() {
        let mut s = Settings::new("postgres://x/y", "nats://x");
        s.vending.sticker_key = vec![7; 32];
        s.vending.public_url = "https://latch.example".into();
        s.vending.secure_cookies = true;
        s.qr.secure_cookies = true;
        s.secrets_key = Some("3f".repeat(32));
        s.lockers.pickup_pepper = latch_api::lockers::PickupPepper::new(vec![9; 32]);
        s.kazaya = Some(KazayaConfig::new(
            "https://kazaya.example/",
            "latch",
            "client-secret",
            "https://latch.example/m/auth/callback",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ));
        assert_eq!(problems(&s), Vec::<String>::new());
    }
}
