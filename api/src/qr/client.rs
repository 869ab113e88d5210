//! Who is asking, as the network tells it: the client address and User-Agent ([`Client`]), and
//! the short description of that User-Agent the app's confirm screen shows.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use std::net::IpAddr;

const MAX_USER_AGENT: usize = 256;

/// Who is asking, as far as the network tells: the client address ([`crate::edge::ClientIp`])
/// and the User-Agent.
pub struct Client {
    pub ip: IpAddr,
    pub user_agent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Behind a trusted proxy, the address it forwarded for (see `crate::edge`).
        let ip = crate::edge::client_ip_of(parts).0;
        let user_agent: String = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(MAX_USER_AGENT)
            .collect();
        Ok(Self { ip, user_agent })
    }
}

/// A rough "Chrome 156 on Linux" from a User-Agent, for the confirm screen.
pub fn browser_summary(user_agent: &str) -> String {
    let version = |marker: &str| {
        user_agent.split(marker).nth(1).map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Version/", "Safari"),
    ]
    .iter()
    .find_map(|(marker, name)| version(marker).map(|v| format!("{name} {v}")))
    .unwrap_or_else(|| "an unknown browser".into());
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(marker, _)| user_agent.contains(marker))
    .map_or("an unknown system", |(_, name)| name);
    format!("{browser} on {os}")
}

#[cfg(test)]
mod tests {
    use super::browser_summary;

    #[test]
    fn browser_summaries() {
        assert_eq!(
            browser_summary("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"),
            "Chrome 156 on Linux"
        );
        assert_eq!(
            browser_summary(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
            ),
            "Firefox 133 on Windows"
        );
        assert_eq!(
            browser_summary(""),
            "an unknown browser on an unknown system"
        );
    }
}
