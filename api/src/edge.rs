//! The edge of the HTTP API: who the client is ([`ClientIp`], behind trusted proxies), how big
//! a body may be and how long a request may take ([`guard`]).
//!
//! The transport limits (header-read timeout, connection cap) live in the server's accept loop
//! (`latch::serve`); these are the ones that need a parsed request.

use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
pub use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body by default (every JSON command fits in far less).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// What the request-level guards need.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub trusted_proxies: TrustedProxies,
    /// Largest request body, refused from its Content-Length or as soon as a chunked body
    /// passes it, never buffered beyond.
    pub body_limit: usize,
    /// Longest a handler may take to answer (the response head; a WebSocket's life is not
    /// counted, it has its own limits).
    pub request_timeout: Duration,
    /// Positions the slowest read model may be behind before commands are refused
    /// ([`crate::backpressure`]); 0: never.
    pub max_read_model_lag: i64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::default(),
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: Duration::from_secs(30),
            max_read_model_lag: crate::backpressure::DEFAULT_MAX_LAG,
        }
    }
}

/// Proxies whose `X-Forwarded-For` is believed (`LATCH_TRUSTED_PROXIES`); none by default.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// Parses one trusted-proxy entry: a CIDR range, or a single address.
pub fn parse_net(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is neither a CIDR range nor an IP address"))
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// A comma-separated list of [`parse_net`] entries; empty means none.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of
    /// that were written by the client and prove nothing, so a client that sends its own
    /// `X-Forwarded-For` only adds to the part we ignore.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop we cannot read: the last address we could vouch for is the best we have.
            let Ok(ip) = hop.parse::<IpAddr>() else {
                return client;
            };
            client = canonical(ip);
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key a per-IP limit counts under: the address itself for IPv4, its /64 for IPv6 (one
/// subscriber usually gets a whole /64 and picks addresses from it at will).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The client's IP address, as [`guard`] resolved it (see [`TrustedProxies::client_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The key per-IP limits count under ([`limit_key`]).
    pub fn limit_key(&self) -> IpAddr {
        limit_key(self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(client_ip_of(parts))
    }
}

/// The resolved client IP of a request; the socket peer if [`guard`] did not run; loopback
/// when there is no socket at all (a router driven in-process).
pub fn client_ip_of(parts: &Parts) -> ClientIp {
    parts
        .extensions
        .get::<ClientIp>()
        .copied()
        .unwrap_or_else(|| {
            ClientIp(
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map_or(IpAddr::from([127, 0, 0, 1]), |c| canonical(c.0.ip())),
            )
        })
}

/// The body limit in force, for extractors to name in their refusal.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A connection's place under the server's connection cap. The server puts one in every
/// request's extensions; a WebSocket keeps it for its own life, since an upgraded connection
/// leaves the HTTP server's hands but still holds a socket.
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<dyn std::any::Any + Send + Sync>);

/// Resolves the client IP, refuses bodies declared over the limit, and bounds the time to an
/// answer.
pub async fn guard(State(edge): State<Arc<EdgeConfig>>, mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let ip = edge.trusted_proxies.client_ip(peer.ip(), req.headers());
        req.extensions_mut().insert(ClientIp(ip));
    }
    req.extensions_mut().insert(BodyLimit(edge.body_limit));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > edge.body_limit as u64) {
        return ApiError::PayloadTooLarge {
            limit: edge.body_limit,
        }
        .into_response();
    }
    match tokio::time::timeout(edge.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?edge.request_timeout, "request timed out");
            ApiError::Timeout {
                millis: edge.request_timeout.as_millis() as u64,
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec![parse_net("10.0.0.0/8").unwrap()]);
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &xff("1.2.3.4, 203.0.113.9, 10.0.0.7")),
            ip("203.0.113.9")
        );
        // From anyone else: the header is theirs to forge, and ignored.
        assert_eq!(
            proxies.client_ip(ip("198.51.100.1"), &xff("1.2.3.4")),
            ip("198.51.100.1")
        );
        // No proxies configured: never believed.
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.5"), &xff("1.2.3.4")),
            ip("10.0.0.5")
        );
        // An unreadable hop: the last address we could vouch for.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.5"), &xff("1.2.3.4, garbage")),
            ip("10.0.0.5")
        );
        // A single address is a /32.
        let one = TrustedProxies::new(vec![parse_net("127.0.0.1").unwrap()]);
        assert_eq!(
            one.client_ip(ip("::ffff:127.0.0.1"), &xff("2001:db8::1")),
            ip("2001:db8::1")
        );
        assert!(parse_net("not-a-net").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        assert_eq!(TrustedProxies::parse("10.0.0.0/8, ::1").unwrap().0.len(), 2);
        assert!(TrustedProxies::parse("10.0.0.0/8,bogus").is_err());
    }

    #[test]
    fn ipv6_clients_share_a_limit_per_64() {
        let a = limit_key(ip("2001:db8:1:2:aaaa::1"));
        let b = limit_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let other = limit_key(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_ne!(a, other);
        assert_eq!(limit_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
