//! What the QR login endpoints share: their settings ([`QrConfig`]) and the service that holds
//! the hub and the rate limits ([`QrService`]), kept in the app state.

use super::hub::Hub;
use super::limits::Limit;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct QrConfig {
    /// How long a fresh code can be scanned (the seed's codes expire; default 120 s).
    pub code_ttl: chrono::Duration,
    /// The shortest interval a page may poll at (the seed: every 2-3 s).
    pub poll_interval: chrono::Duration,
    pub mint_per_minute_per_ip: u32,
    /// Codes the whole process mints per minute, whoever asks (each is an event kept forever).
    pub mint_per_minute_global: u32,
    pub app_actions_per_minute_per_user: u32,
    /// Push channels one login may have open at once (a page and a reconnect or two).
    pub sockets_per_login: usize,
    pub session_ttl: chrono::Duration,
    /// Where a browser lands once logged in.
    pub landing_url: String,
    /// Mark cookies `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
}

impl Default for QrConfig {
    fn default() -> Self {
        Self {
            code_ttl: chrono::Duration::seconds(120),
            poll_interval: chrono::Duration::seconds(2),
            mint_per_minute_per_ip: 30,
            mint_per_minute_global: 6000,
            app_actions_per_minute_per_user: 30,
            sockets_per_login: 4,
            session_ttl: chrono::Duration::hours(12),
            landing_url: "/console".into(),
            secure_cookies: false,
        }
    }
}

pub struct QrService {
    pub hub: Arc<Hub>,
    pub config: QrConfig,
    pub(super) mint_limit: Limit<IpAddr>,
    pub(super) mint_global: Limit<()>,
    pub(super) app_limit: Limit<String>,
}

impl QrService {
    pub fn new(hub: Arc<Hub>, config: QrConfig, clock: latch_domain::clock::SharedClock) -> Self {
        Self {
            hub,
            mint_limit: Limit::per_minute(config.mint_per_minute_per_ip, clock.clone()),
            mint_global: Limit::per_minute(config.mint_per_minute_global, clock.clone()),
            app_limit: Limit::per_minute(config.app_actions_per_minute_per_user, clock),
            config,
        }
    }

    /// Drops rate-limit state nobody needs any more.
    pub fn tidy(&self) {
        self.mint_limit.tidy();
        self.mint_global.tidy();
        self.app_limit.tidy();
    }
}
