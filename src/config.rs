//! Settings: from flags and environment for the binary, built directly by tests.

use clap::Args;
use latch_api::kazaya::KazayaConfig;
use latch_api::qr::QrConfig;
use latch_api::vending::VendingConfig;
use latch_domain::clock::{SharedClock, SystemClock};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/latch";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// The parts of `latch serve` (the registry is `latch_workers::roles`).
pub use latch_workers::roles::Role;

/// `LATCH_ENV`: production refuses to start on development defaults (see `crate::production`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LatchEnv {
    /// Today's defaults; what production would refuse is logged as one warning.
    #[default]
    Development,
    Production,
}

/// Where Latch finds its services. Shared by every subcommand that talks to them.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
}

/// `latch token`: issue a bearer token (shown once), or `latch token revoke <id>`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub cmd: Option<TokenCmd>,
    #[command(flatten)]
    pub connections: Connections,
    /// operator, user, auditor, device or kiosk (subject `kiosk:<site>`).
    #[arg(long, required = true)]
    pub role: Option<String>,
    /// Who the token belongs to.
    #[arg(long, required = true)]
    pub subject: Option<String>,
    /// Seconds until the token expires (then it is refused: 401 `token_expired`).
    #[arg(long, env = "LATCH_TOKEN_TTL_SECS", default_value_t = latch_api::tokens::DEFAULT_TOKEN_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=10 * 365 * 24 * 3600))]
    pub ttl: u64,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCmd {
    /// Revoke a token by its id (as `latch token` printed it, or as the log names it): every
    /// API process refuses it from the next request on (401 `token_revoked`).
    Revoke {
        #[command(flatten)]
        connections: Connections,
        /// The token's id (a UUID).
        id: uuid::Uuid,
    },
}

/// The key that signs checkpoints of the log's chain head (audit).
#[derive(Debug, Clone, Args)]
pub struct AuditKeyArgs {
    /// Ed25519 seed that signs chain-head checkpoints: 64 hex characters or base64 of 32 bytes.
    #[arg(long, env = "LATCH_AUDIT_SIGNING_KEY", hide_env_values = true)]
    pub audit_signing_key: Option<String>,
    /// File holding the seed (hex); generated there if missing (development).
    #[arg(long, env = "LATCH_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,
    /// Seconds between signed checkpoints of the chain head (relay role).
    #[arg(long, env = "LATCH_AUDIT_CHECKPOINT_SECS", default_value_t = 300)]
    pub audit_checkpoint_secs: u64,
}

impl Default for AuditKeyArgs {
    fn default() -> Self {
        Self {
            audit_signing_key: None,
            audit_signing_key_file: None,
            audit_checkpoint_secs: 300,
        }
    }
}

impl AuditKeyArgs {
    /// The signing key, if one is configured (the file is created when missing).
    pub fn key(
        &self,
    ) -> Result<
        Option<latch_projections::audit::signing::Key>,
        latch_projections::audit::signing::KeyError,
    > {
        match (&self.audit_signing_key, &self.audit_signing_key_file) {
            (Some(raw), _) => latch_projections::audit::signing::parse_key(raw).map(Some),
            (None, Some(path)) => {
                latch_projections::audit::signing::load_or_generate(path).map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

/// Limits on what clients may ask and how (issue 13). Defaults suit one instance on the
/// internet; tests lower them.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// HTTP connections open at once (WebSockets included); more wait in the listen queue.
    #[arg(long, env = "LATCH_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Milliseconds a client has to send a whole request head before the connection is closed.
    #[arg(long, env = "LATCH_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Milliseconds a request may take to be answered (503 request_timeout after).
    #[arg(long, env = "LATCH_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_request_timeout_ms: u64,
    /// Positions the slowest read model may be behind the log before commands are refused
    /// (503 read_models_behind); 0: never refuse.
    #[arg(long, env = "LATCH_MAX_READ_MODEL_LAG", default_value_t = latch_api::backpressure::DEFAULT_MAX_LAG)]
    pub max_read_model_lag: i64,
    /// Largest request body in bytes (413 body_too_large beyond, before it is buffered).
    #[arg(long, env = "LATCH_HTTP_BODY_LIMIT_BYTES", default_value_t = latch_api::edge::DEFAULT_BODY_LIMIT)]
    pub http_body_limit_bytes: usize,
    /// Proxies whose X-Forwarded-For is believed (comma-separated CIDR ranges or addresses).
    #[arg(long, env = "LATCH_TRUSTED_PROXIES", value_parser = latch_api::edge::TrustedProxies::parse)]
    pub trusted_proxies: Option<latch_api::edge::TrustedProxies>,
    /// QR codes minted per minute by the whole process.
    #[arg(long, env = "LATCH_QR_MINT_PER_MINUTE_GLOBAL", default_value_t = 6000)]
    pub qr_mint_per_minute_global: u32,
    /// Push channels (/qr/ws) one QR login may have open at once.
    #[arg(long, env = "LATCH_QR_SOCKETS_PER_LOGIN", default_value_t = 4)]
    pub qr_sockets_per_login: usize,
    /// Locker login attempts per client IP (IPv6: per /64) per minute.
    #[arg(
        long,
        env = "LATCH_LOGIN_ATTEMPTS_PER_MINUTE_PER_IP",
        default_value_t = 60
    )]
    pub login_attempts_per_minute_per_ip: u32,
    /// Locker login attempts per minute for the whole process.
    #[arg(
        long,
        env = "LATCH_LOGIN_ATTEMPTS_PER_MINUTE_GLOBAL",
        default_value_t = 600
    )]
    pub login_attempts_per_minute_global: u32,
    /// Longest a reservation may run from now, in seconds.
    #[arg(long, env = "LATCH_RESERVATION_MAX_SECS", default_value_t = 7 * 24 * 3600)]
    pub reservation_max_secs: u64,
    /// Compartments one locker user may hold at once.
    #[arg(long, env = "LATCH_RESERVATIONS_PER_USER", default_value_t = 10)]
    pub reservations_per_user: usize,
    /// Reservation requests per locker user per minute.
    #[arg(
        long,
        env = "LATCH_RESERVATIONS_PER_MINUTE_PER_USER",
        default_value_t = 20
    )]
    pub reservations_per_minute_per_user: u32,
    /// Grant requests per locker user per minute.
    #[arg(long, env = "LATCH_GRANTS_PER_MINUTE_PER_USER", default_value_t = 20)]
    pub grants_per_minute_per_user: u32,
    /// Grant requests per compartment per minute.
    #[arg(
        long,
        env = "LATCH_GRANTS_PER_MINUTE_PER_COMPARTMENT",
        default_value_t = 10
    )]
    pub grants_per_minute_per_compartment: u32,
    /// Pickup-code attempts per caller per minute.
    #[arg(
        long,
        env = "LATCH_PICKUP_ATTEMPTS_PER_MINUTE_PER_USER",
        default_value_t = 10
    )]
    pub pickup_attempts_per_minute_per_user: u32,
    /// Pickup-code attempts per minute for the whole process by callers who were wrong lately.
    #[arg(
        long,
        env = "LATCH_PICKUP_ATTEMPTS_PER_MINUTE_GLOBAL",
        default_value_t = 300
    )]
    pub pickup_attempts_per_minute_global: u32,
    /// nats-server authorization file rendered with every issued NATS identity (unset: none).
    #[arg(long, env = "LATCH_NATS_AUTH_FILE")]
    pub nats_auth_file: Option<PathBuf>,
    /// nats-server pid file; the server is sent SIGHUP (reload) after each render.
    #[arg(long, env = "LATCH_NATS_PID_FILE")]
    pub nats_pid_file: Option<PathBuf>,
    /// NATS user Latch's own processes connect as, written into the rendered file.
    #[arg(long, env = "LATCH_NATS_SERVICE_USER", default_value = "latch")]
    pub nats_service_user: String,
    /// Its password (put the same user and password in NATS_URL).
    #[arg(
        long,
        env = "LATCH_NATS_SERVICE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub nats_service_password: String,
    /// TELEMETRY stream: most bytes kept (oldest discarded beyond).
    #[arg(long, env = "LATCH_TELEMETRY_MAX_BYTES", default_value_t = latch_nats::streams::TELEMETRY_LIMITS.max_bytes)]
    pub telemetry_max_bytes: i64,
    /// TELEMETRY stream: most messages kept.
    #[arg(long, env = "LATCH_TELEMETRY_MAX_MSGS", default_value_t = latch_nats::streams::TELEMETRY_LIMITS.max_messages)]
    pub telemetry_max_msgs: i64,
    /// TELEMETRY stream: largest message accepted, in bytes.
    #[arg(long, env = "LATCH_TELEMETRY_MAX_MSG_SIZE", default_value_t = latch_nats::streams::TELEMETRY_LIMITS.max_message_size)]
    pub telemetry_max_msg_size: i32,
    /// DEADLETTER stream: most bytes kept (oldest discarded beyond).
    #[arg(long, env = "LATCH_DEADLETTER_MAX_BYTES", default_value_t = latch_nats::streams::DEADLETTER_LIMITS.max_bytes)]
    pub deadletter_max_bytes: i64,
    /// DEADLETTER stream: most messages kept.
    #[arg(long, env = "LATCH_DEADLETTER_MAX_MSGS", default_value_t = latch_nats::streams::DEADLETTER_LIMITS.max_messages)]
    pub deadletter_max_msgs: i64,
    /// DEADLETTER stream: largest message accepted, in bytes.
    #[arg(long, env = "LATCH_DEADLETTER_MAX_MSG_SIZE", default_value_t = latch_nats::streams::DEADLETTER_LIMITS.max_message_size)]
    pub deadletter_max_msg_size: i32,
    /// Servers each JetStream stream is kept on: 1 on one nats-server, 3 in a cluster.
    #[arg(long, env = "LATCH_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// JetStream domains of edge sites' leaf nodes whose buffered telemetry TELEMETRY sources
    /// (comma-separated, e.g. `site1,site2`).
    #[arg(long, env = "LATCH_EDGE_DOMAINS", value_delimiter = ',')]
    pub edge_domains: Vec<String>,
}

impl LimitArgs {
    fn apply(&self, s: &mut Settings) {
        s.http.max_connections = self.http_max_connections;
        s.telemetry_limits = latch_nats::streams::StreamLimits {
            max_bytes: self.telemetry_max_bytes.max(1),
            max_messages: self.telemetry_max_msgs.max(1),
            max_message_size: self.telemetry_max_msg_size.max(1),
        };
        s.deadletter_limits = latch_nats::streams::StreamLimits {
            max_bytes: self.deadletter_max_bytes.max(1),
            max_messages: self.deadletter_max_msgs.max(1),
            max_message_size: self.deadletter_max_msg_size.max(1),
        };
        s.stream_replicas = usize::from(self.stream_replicas);
        s.edge_domains = self
            .edge_domains
            .iter()
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        s.nats_auth = latch_api::nats_identities::NatsAuthConfig {
            auth_file: self.nats_auth_file.clone(),
            pid_file: self.nats_pid_file.clone(),
            service_user: self.nats_service_user.clone(),
            service_password: self.nats_service_password.clone(),
        };
        s.http.header_read_timeout = Duration::from_millis(self.http_header_timeout_ms.max(1));
        s.edge.request_timeout = Duration::from_millis(self.http_request_timeout_ms.max(1));
        s.edge.body_limit = self.http_body_limit_bytes;
        s.edge.max_read_model_lag = self.max_read_model_lag;
        s.edge.trusted_proxies = self.trusted_proxies.clone().unwrap_or_default();
        s.qr.mint_per_minute_global = self.qr_mint_per_minute_global;
        s.qr.sockets_per_login = self.qr_sockets_per_login.max(1);
        let l = &mut s.lockers;
        l.login_attempts_per_minute_per_ip = self.login_attempts_per_minute_per_ip;
        l.login_attempts_per_minute_global = self.login_attempts_per_minute_global;
        l.reservation_max = chrono::Duration::seconds(self.reservation_max_secs.max(60) as i64);
        l.reservations_per_user = self.reservations_per_user.max(1);
        l.reservations_per_minute_per_user = self.reservations_per_minute_per_user;
        l.grants_per_minute_per_user = self.grants_per_minute_per_user;
        l.grants_per_minute_per_compartment = self.grants_per_minute_per_compartment;
        l.pickup_attempts_per_minute_per_user = self.pickup_attempts_per_minute_per_user;
        l.pickup_attempts_per_minute_global = self.pickup_attempts_per_minute_global;
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub connections: Connections,
    /// Address the HTTP API listens on.
    #[arg(long, env = "LATCH_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Which roles to run in this process (comma-separated); all by default.
    #[arg(long, env = "LATCH_ROLES", value_delimiter = ',', value_parser = Role::parse)]
    pub roles: Vec<Role>,
    /// Seconds without a heartbeat before a device is marked offline.
    #[arg(long, env = "LATCH_HEARTBEAT_TIMEOUT_SECS", default_value_t = 30)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds a remote door opening may take before it is recorded as failed.
    #[arg(long, env = "LATCH_OPEN_TIMEOUT_SECS", default_value_t = 15)]
    pub open_timeout_secs: u64,
    /// A cabinet that closed its door without reporting weights after, for this long, has its
    /// session settled into review and is freed.
    #[arg(long, env = "LATCH_WEIGHTS_AFTER_TIMEOUT_SECS", default_value_t = 120)]
    pub weights_after_timeout_secs: u64,
    /// Milliseconds between liveness / deadline sweeps.
    #[arg(long, env = "LATCH_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// Milliseconds the relay waits between polls when idle.
    #[arg(long, env = "LATCH_RELAY_POLL_MS", default_value_t = 5)]
    pub relay_poll_ms: u64,
    /// Postgres pool size.
    #[arg(long, env = "LATCH_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Milliseconds to wait for a Postgres connection before answering 503.
    #[arg(long, env = "LATCH_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,
    /// Apply database migrations before serving.
    #[arg(long, env = "LATCH_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Seconds a QR login code can be scanned.
    #[arg(long, env = "LATCH_QR_TTL_SECS", default_value_t = 120)]
    pub qr_ttl_secs: u64,
    /// Shortest interval, in milliseconds, a login page may poll `/qr/login` at.
    #[arg(long, env = "LATCH_QR_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub qr_poll_interval_ms: u64,
    /// QR codes one client IP may mint per minute.
    #[arg(long, env = "LATCH_QR_MINT_PER_MINUTE", default_value_t = 30)]
    pub qr_mint_per_minute: u32,
    /// Lock / confirm / cancel actions one app user may take per minute.
    #[arg(long, env = "LATCH_QR_APP_ACTIONS_PER_MINUTE", default_value_t = 30)]
    pub qr_app_actions_per_minute: u32,
    /// Hours a web session from a QR login lasts.
    #[arg(long, env = "LATCH_SESSION_TTL_HOURS", default_value_t = 12)]
    pub session_ttl_hours: u64,
    /// "Open" presses one shopper (Kazaya member) may make per minute.
    #[arg(long, env = "LATCH_SHOPPER_OPENS_PER_MINUTE", default_value_t = latch_api::vending::DEFAULT_OPENS_PER_MINUTE)]
    pub shopper_opens_per_minute: u32,
    /// Mark cookies Secure (serve behind HTTPS); default: on in production, off in development.
    #[arg(
        long,
        env = "LATCH_SECURE_COOKIES",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub secure_cookies: Option<bool>,
    /// `development` (default) or `production`: production refuses to start on development
    /// defaults, short keys, plain-http endpoints or cookies without Secure, naming each.
    #[arg(long = "env", env = "LATCH_ENV", value_enum, default_value_t = LatchEnv::Development)]
    pub latch_env: LatchEnv,
    /// PEM file of CA certificates trusted beyond the webpki roots for outbound HTTPS
    /// (Kazaya, authorizers' endpoints); may hold several.
    #[arg(long, env = "LATCH_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
    /// Milliseconds between grant-request webhook attempts (comma-separated): one attempt,
    /// then one more after each pause, then the request is dead-lettered. Default
    /// 1000,2000,5000,10000,20000,30000,60000,120000.
    #[arg(long, env = "LATCH_GRANT_WEBHOOK_BACKOFF_MS", value_delimiter = ',')]
    pub grant_webhook_backoff_ms: Vec<u64>,
    /// Milliseconds a locker device has to acknowledge a holder update before it is offered
    /// again.
    #[arg(long, env = "LATCH_HOLDER_REPLY_TIMEOUT_MS", default_value_t = 2000)]
    pub holder_reply_timeout_ms: u64,
    /// Longest pause, in milliseconds, between offers of a holder update a locker device has
    /// not acknowledged (pauses double from 500 ms up to this).
    #[arg(long, env = "LATCH_HOLDER_RETRY_MAX_MS", default_value_t = 30000)]
    pub holder_retry_max_ms: u64,
    #[command(flatten)]
    pub audit: AuditKeyArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Latch's address as phones and Kazaya reach it (sticker links, OAuth redirect, payment
    /// callbacks); default: http:// + the HTTP address.
    #[arg(long, env = "LATCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Key that signs cabinet sticker links (any string; keep it secret and stable).
    #[arg(
        long,
        env = "LATCH_STICKER_KEY",
        hide_env_values = true,
        default_value = latch_api::vending::DEV_STICKER_KEY
    )]
    pub sticker_key: String,
    /// Key that encrypts authorizers' signing secrets at rest: 64 hex characters or base64 of
    /// 32 bytes. Default: a development key, with a warning. Keep it stable: the stored secrets
    /// do not decrypt under another key.
    #[arg(long, env = "LATCH_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
    /// Server-side key of the pickup codes' MAC (any string of 32 bytes or more). Default: a
    /// development pepper, with a warning. Changing it voids uncollected parcels' codes.
    #[arg(long, env = "LATCH_PICKUP_PEPPER", hide_env_values = true)]
    pub pickup_pepper: Option<String>,
    /// Kazaya's base URL; without it shopper login and payments answer 503.
    #[arg(long, env = "LATCH_KAZAYA_URL")]
    pub kazaya_url: Option<String>,
    #[arg(long, env = "LATCH_KAZAYA_CLIENT_ID", default_value = "latch")]
    pub kazaya_client_id: String,
    #[arg(
        long,
        env = "LATCH_KAZAYA_CLIENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub kazaya_client_secret: String,
    /// `whsec_` + base64, as Kazaya issued it for our callback endpoint.
    #[arg(
        long,
        env = "LATCH_KAZAYA_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub kazaya_webhook_secret: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub nats_url: String,
    pub http_addr: SocketAddr,
    pub roles: Vec<Role>,
    pub heartbeat_timeout: Duration,
    pub open_timeout: Duration,
    pub weights_after_timeout: Duration,
    pub sweep_interval: Duration,
    pub relay_poll: Duration,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    pub migrate: bool,
    pub clock: SharedClock,
    pub qr: QrConfig,
    pub audit: AuditKeyArgs,
    pub vending: VendingConfig,
    /// The member and payment platform; `None` leaves shopper login and payment unavailable.
    pub kazaya: Option<KazayaConfig>,
    /// Parcel lockers: login limits, session length, grant timeout, webhook backoff, pickup
    /// pepper.
    pub lockers: latch_api::lockers::LockerSettings,
    /// `LATCH_SECRETS_KEY` as given (parsed at start); `None`: the development key.
    pub secrets_key: Option<String>,
    /// Development or production (what `latch serve` refuses to start on).
    pub env: LatchEnv,
    /// PEM file of extra CA roots for every outbound client; read at start.
    pub extra_ca_file: Option<PathBuf>,
    /// HTTP transport limits: connections, header-read timeout.
    pub http: crate::serve::HttpLimits,
    /// Request-level limits: body size, request timeout, trusted proxies.
    pub edge: latch_api::edge::EdgeConfig,
    /// Where NATS identities are rendered for nats-server and how it is reloaded.
    pub nats_auth: latch_api::nats_identities::NatsAuthConfig,
    /// Size limits of the TELEMETRY and DEADLETTER streams (discard old when reached).
    pub telemetry_limits: latch_nats::streams::StreamLimits,
    pub deadletter_limits: latch_nats::streams::StreamLimits,
    /// Servers each JetStream stream is kept on (R1 by default, R3 in a cluster).
    pub stream_replicas: usize,
    /// Edge sites' JetStream domains, sourced into TELEMETRY.
    pub edge_domains: Vec<String>,
    /// Holder updates to locker devices: reply timeout and longest retry pause.
    pub holder: latch_workers::locker_holder::HolderConfig,
}

impl Settings {
    /// Defaults for everything but the two connections.
    pub fn new(database_url: impl Into<String>, nats_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("a valid address"),
            roles: Role::ALL.to_vec(),
            heartbeat_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(15),
            weights_after_timeout: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(1),
            relay_poll: Duration::from_millis(5),
            db_max_connections: 20,
            db_acquire_timeout: Duration::from_secs(2),
            migrate: false,
            clock: Arc::new(SystemClock),
            qr: QrConfig::default(),
            audit: AuditKeyArgs::default(),
            vending: VendingConfig::default(),
            kazaya: None,
            lockers: latch_api::lockers::LockerSettings::default(),
            secrets_key: None,
            env: LatchEnv::Development,
            extra_ca_file: None,
            http: crate::serve::HttpLimits::default(),
            edge: latch_api::edge::EdgeConfig::default(),
            nats_auth: latch_api::nats_identities::NatsAuthConfig::default(),
            telemetry_limits: latch_nats::streams::TELEMETRY_LIMITS,
            deadletter_limits: latch_nats::streams::DEADLETTER_LIMITS,
            stream_replicas: 1,
            edge_domains: Vec::new(),
            holder: latch_workers::locker_holder::HolderConfig::default(),
        }
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl From<ServeArgs> for Settings {
    fn from(a: ServeArgs) -> Self {
        let public_url = a
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", a.http_addr))
            .trim_end_matches('/')
            .to_owned();
        let kazaya = a.kazaya_url.as_ref().map(|url| {
            KazayaConfig::new(
                url.clone(),
                a.kazaya_client_id.clone(),
                a.kazaya_client_secret.clone(),
                format!("{public_url}/m/auth/callback"),
                a.kazaya_webhook_secret.clone(),
            )
        });
        // Production makes cookies Secure unless told otherwise (and then refuses to start).
        let secure_cookies = a
            .secure_cookies
            .unwrap_or(a.latch_env == LatchEnv::Production);
        let vending = VendingConfig {
            public_url,
            sticker_key: a.sticker_key.clone().into_bytes(),
            secure_cookies,
            session_ttl: chrono::Duration::hours(a.session_ttl_hours.clamp(1, 24 * 30) as i64),
            opens_per_minute: a.shopper_opens_per_minute.max(1),
        };
        let mut lockers = latch_api::lockers::LockerSettings::default();
        if !a.grant_webhook_backoff_ms.is_empty() {
            lockers.webhook_backoff = a
                .grant_webhook_backoff_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
        }
        if let Some(pepper) = &a.pickup_pepper {
            lockers.pickup_pepper = latch_api::lockers::PickupPepper::new(pepper.as_str());
        }
        let limits = a.limits.clone();
        let mut settings = Self {
            vending,
            kazaya,
            lockers,
            secrets_key: a.secrets_key.clone(),
            roles: if a.roles.is_empty() {
                Role::ALL.to_vec()
            } else {
                a.roles
            },
            http_addr: a.http_addr,
            heartbeat_timeout: Duration::from_secs(a.heartbeat_timeout_secs),
            open_timeout: Duration::from_secs(a.open_timeout_secs),
            weights_after_timeout: Duration::from_secs(a.weights_after_timeout_secs.max(1)),
            sweep_interval: Duration::from_millis(a.sweep_interval_ms),
            relay_poll: Duration::from_millis(a.relay_poll_ms),
            db_max_connections: a.db_max_connections,
            db_acquire_timeout: Duration::from_millis(a.db_acquire_timeout_ms),
            migrate: a.migrate,
            audit: a.audit,
            qr: QrConfig {
                code_ttl: chrono::Duration::seconds(a.qr_ttl_secs.clamp(10, 3600) as i64),
                poll_interval: chrono::Duration::milliseconds(a.qr_poll_interval_ms as i64),
                mint_per_minute_per_ip: a.qr_mint_per_minute,
                app_actions_per_minute_per_user: a.qr_app_actions_per_minute,
                session_ttl: chrono::Duration::hours(a.session_ttl_hours.clamp(1, 24 * 30) as i64),
                secure_cookies,
                ..QrConfig::default()
            },
            env: a.latch_env,
            extra_ca_file: a.extra_ca_file,
            holder: latch_workers::locker_holder::HolderConfig {
                reply_timeout: Duration::from_millis(a.holder_reply_timeout_ms.max(1)),
                retry_max: Duration::from_millis(a.holder_retry_max_ms.max(500)),
            },
            ..Self::new(a.connections.database_url, a.connections.nats_url)
        };
        limits.apply(&mut settings);
        settings
    }
}
