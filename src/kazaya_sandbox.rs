//! `latch kazaya-sandbox`: a test-mode Kazaya (the member and payment platform) speaking the
//! same protocol as the real one, over real HTTP, like a payment provider's test mode.
//!
//! Latch talks to it through [`latch_api::kazaya::HttpKazaya`], exactly as it would to the real
//! platform; tests and the demo run against it (DESIGN.md section 7). It keeps everything in
//! memory and forgets it on exit. Nothing here is shared with the client side: the sandbox signs
//! callbacks with its own code, so a mistake in the scheme shows up as a failed verification.
//!
//! Endpoints:
//! - OAuth2 authorization code (RFC 6749, PKCE S256 per RFC 7636):
//!   `GET /oauth/authorize` shows a phone-number login page; an unknown number is sent through
//!   registration (phone, nickname, avatar URL), which creates a member; the member then
//!   confirms once that the client may see their profile (remembered per client), and the
//!   browser is sent (302) to `redirect_uri?code=..&state=..`. Codes are single-use and live
//!   60 s. An unknown `client_id` or unregistered `redirect_uri` is answered with an error page
//!   and never redirected. Test mode: no SMS code is asked for.
//! - `POST /oauth/token` (client authentication by HTTP Basic or form fields) answers
//!   `{access_token, token_type: "bearer", expires_in, scope, kazaya_user_id}`, or an RFC 6749
//!   error (`{"error": "invalid_grant", ...}`, 400). Replaying a code revokes the token issued
//!   for it.
//! - `GET /v1/userinfo` (Bearer): `{user_id, phone, nickname, avatar}`.
//! - Payments, client authentication by HTTP Basic (`client_id:client_secret`):
//!   `POST /v1/payments` (`Idempotency-Key` required) → 201 `{payment_id, status, pay_url, ..}`;
//!   `GET /v1/payments/{id}`; `POST /v1/payments/{id}/refunds` (`Idempotency-Key`, `{amount}`).
//!   The same key and body return the first answer (with `Idempotent-Replayed: true`); the same
//!   key with another body is 422 `idempotency_key_reused`.
//! - `GET /pay/{id}`: the hosted pay page (amount, payer, Pay / Decline); its `POST` settles the
//!   payment, queues the signed callback and sends the browser (303) to `return_url` with
//!   `payment_id` and `status` added.
//! - Callbacks: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`), body
//!   `{type, timestamp, data: {payment_id, order_id, amount, currency, status, ..}}`, retried
//!   with the same id and a fresh timestamp on a doubling schedule until a 2xx
//!   ([`RetryPolicy`]).
//! - `GET /sandbox/callbacks` (sandbox only, no real platform has it): every delivery attempt.
//! - `PUT /sandbox/misreport` `{order_id?, amount?, currency?, status?}` (sandbox only): from
//!   then on `GET /v1/payments/{id}` reports those values instead of the real ones (as a faulty
//!   or hostile platform might), so a client's checks can be tested; `DELETE` ends it.
//!
//! Errors of the `/v1` API have the shape `{"error": {"code", "message", "field"?}}`.

mod callbacks;
mod oauth;
mod pages;
mod payments;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use latch_workers::CancellationToken;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;

/// A client (relying party) registered with the sandbox.
#[derive(Clone)]
pub struct ClientRegistration {
    pub client_id: String,
    pub client_secret: String,
    /// Shown to members on the consent and pay pages.
    pub name: String,
    /// Exact matches only (no prefixes, no wildcards).
    pub redirect_uris: Vec<String>,
}

impl std::fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .finish_non_exhaustive()
    }
}

/// When callbacks are tried again: `first_delay`, doubling, at most `max_delay`, and no more
/// than `max_attempts` attempts in all.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    /// 0.5 s, 1 s, 2 s, 4 s ... capped at 60 s; 10 attempts (about 4.5 minutes).
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_attempts: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Port 0 picks a free port (see [`KazayaSandbox::port`]).
    pub addr: SocketAddr,
    /// How browsers and clients reach the sandbox (used in `pay_url`); default
    /// `http://{bound address}`, with 127.0.0.1 for an unspecified address.
    pub public_url: Option<String>,
    pub clients: Vec<ClientRegistration>,
    /// `whsec_` + base64 of the key that signs callbacks.
    pub webhook_secret: String,
    pub code_ttl: Duration,
    pub access_token_ttl: Duration,
    /// How long an unfinished login (the pages between authorize and redirect) stays usable.
    pub login_ttl: Duration,
    pub retry: RetryPolicy,
    /// Per callback attempt.
    pub callback_timeout: Duration,
    /// Trust anchors beyond the webpki roots, for a Latch served over HTTPS.
    pub roots: latch_domain::outbound::TlsRoots,
}

impl SandboxSettings {
    /// No clients yet, a fresh webhook secret, the protocol's usual lifetimes.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            public_url: None,
            clients: Vec::new(),
            webhook_secret: generate_webhook_secret(),
            code_ttl: Duration::from_secs(60),
            access_token_ttl: Duration::from_secs(3600),
            login_ttl: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            callback_timeout: Duration::from_secs(10),
            roots: Default::default(),
        }
    }
}

/// A fresh Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
pub fn generate_webhook_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid sandbox settings: {0}")]
    Settings(String),
}

/// The sandbox server, bound but not yet serving.
pub struct KazayaSandbox {
    listener: TcpListener,
    port: u16,
    shared: Arc<Shared>,
}

impl KazayaSandbox {
    pub async fn build(settings: SandboxSettings) -> Result<Self, SandboxError> {
        let key =
            latch_domain::webhooks::secret_key(&settings.webhook_secret).ok_or_else(|| {
                SandboxError::Settings("webhook_secret must be `whsec_` + base64".into())
            })?;
        let mut clients = HashMap::new();
        for client in &settings.clients {
            if client.client_id.is_empty() || client.client_secret.is_empty() {
                return Err(SandboxError::Settings(
                    "a client needs an id and a secret".into(),
                ));
            }
            for uri in &client.redirect_uris {
                let url = reqwest::Url::parse(uri)
                    .map_err(|e| SandboxError::Settings(format!("redirect URI {uri:?}: {e}")))?;
                if url.fragment().is_some() || !matches!(url.scheme(), "http" | "https") {
                    return Err(SandboxError::Settings(format!(
                        "redirect URI {uri:?}: must be http(s) without a fragment"
                    )));
                }
            }
            if clients
                .insert(client.client_id.clone(), client.clone())
                .is_some()
            {
                return Err(SandboxError::Settings(format!(
                    "client {:?} registered twice",
                    client.client_id
                )));
            }
        }
        let listener =
            TcpListener::bind(settings.addr)
                .await
                .map_err(|source| SandboxError::Bind {
                    addr: settings.addr,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: settings.addr,
            source,
        })?;
        let base_url = match &settings.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if local.ip().is_unspecified() => format!("http://127.0.0.1:{}", local.port()),
            None => format!("http://{local}"),
        };
        let http = latch_domain::outbound::client_builder(&settings.roots)
            .timeout(settings.callback_timeout)
            .build()
            .map_err(|e| SandboxError::Settings(format!("http client: {e}")))?;
        Ok(Self {
            listener,
            port: local.port(),
            shared: Arc::new(Shared {
                clients,
                key,
                base_url,
                http,
                stop: CancellationToken::new(),
                db: Mutex::new(Db::default()),
                settings,
            }),
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the sandbox is reached, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    pub fn webhook_secret(&self) -> &str {
        &self.shared.settings.webhook_secret
    }

    /// Serves until `shutdown` resolves; callbacks still waiting for a retry are dropped then.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.shared.stop.clone();
        let app = router(self.shared.clone());
        tracing::info!(url = %self.shared.base_url, "kazaya sandbox is running");
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.cancel();
            })
            .await;
        self.shared.stop.cancel();
        tracing::info!("kazaya sandbox stopped");
        result
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/oauth/authorize", get(oauth::authorize))
        .route("/oauth/login", post(oauth::login))
        .route("/oauth/register", post(oauth::register))
        .route("/oauth/consent", post(oauth::consent))
        .route("/oauth/token", post(oauth::token))
        .route("/v1/userinfo", get(oauth::userinfo))
        .route("/v1/payments", post(payments::create))
        .route("/v1/payments/{id}", get(payments::status))
        .route("/v1/payments/{id}/refunds", post(payments::refund))
        .route(
            "/pay/{id}",
            get(payments::pay_page).post(payments::pay_submit),
        )
        .route("/sandbox/callbacks", get(callbacks::list))
        .route(
            "/sandbox/misreport",
            axum::routing::put(payments::set_misreport).delete(payments::clear_misreport),
        )
        .fallback(|| async {
            ApiFail::new(StatusCode::NOT_FOUND, "no_such_route", "no such endpoint")
        })
        .with_state(shared)
}

pub(crate) struct Shared {
    clients: HashMap<String, ClientRegistration>,
    key: Vec<u8>,
    base_url: String,
    http: reqwest::Client,
    stop: CancellationToken,
    db: Mutex<Db>,
    settings: SandboxSettings,
}

impl Shared {
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client named by HTTP Basic credentials, if they are right.
    fn basic_client(&self, headers: &HeaderMap) -> Option<&ClientRegistration> {
        let (id, secret) = basic_credentials(headers)?;
        self.check_client(&id, &secret)
    }

    fn check_client(&self, id: &str, secret: &str) -> Option<&ClientRegistration> {
        // RFC 6749 2.3.1 form-encodes both before Basic; accept the raw form too.
        let client = self
            .clients
            .get(id)
            .or_else(|| self.clients.get(&form_decode(id)))?;
        let ok = constant_eq(client.client_secret.as_bytes(), secret.as_bytes())
            || constant_eq(
                client.client_secret.as_bytes(),
                form_decode(secret).as_bytes(),
            );
        ok.then_some(client)
    }
}

#[derive(Default)]
struct Db {
    members: HashMap<String, oauth::MemberRec>,
    by_phone: HashMap<String, String>,
    /// (member id, client id) pairs the member has approved.
    consents: HashSet<(String, String)>,
    logins: HashMap<String, oauth::PendingLogin>,
    codes: HashMap<String, oauth::CodeRec>,
    tokens: HashMap<String, oauth::TokenRec>,
    payments: HashMap<String, payments::PaymentRec>,
    idempotency: HashMap<(String, String), payments::StoredAnswer>,
    attempts: Vec<callbacks::Attempt>,
    /// Set through `PUT /sandbox/misreport`: how payment status answers lie.
    misreport: Option<payments::Misreport>,
}

/// `HTTP Basic` credentials, as sent.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random, URL-safe token with 256 bits of entropy.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A `/v1` API failure: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug)]
struct ApiFail {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiFail {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "HTTP Basic client_id:client_secret of a registered client is required",
        )
    }
}

impl IntoResponse for ApiFail {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kazaya\""),
            );
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

/// `latch kazaya-sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "KAZAYA_SANDBOX_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// How browsers and clients reach the sandbox (used in pay URLs); default http://ADDR.
    #[arg(long, env = "KAZAYA_SANDBOX_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A client: CLIENT_ID:CLIENT_SECRET:REDIRECT_URI. Repeat it for more clients, or with the
    /// same id and secret for more redirect URIs.
    #[arg(
        long = "client",
        required = true,
        value_name = "ID:SECRET:REDIRECT_URI"
    )]
    pub clients: Vec<String>,
    /// Signing secret for callbacks (`whsec_` + base64); default: a fresh one, printed.
    #[arg(long, env = "KAZAYA_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Callback attempts before giving up (retries wait 0.5 s, 1 s, 2 s, ... up to 60 s).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// PEM file of CA certificates trusted beyond the webpki roots (a Latch over HTTPS).
    #[arg(long, env = "LATCH_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<std::path::PathBuf>,
}

/// Turns `ID:SECRET:REDIRECT_URI` flags into registrations (the client's name is its id).
pub fn parse_clients(flags: &[String]) -> Result<Vec<ClientRegistration>, String> {
    let mut clients: Vec<ClientRegistration> = Vec::new();
    for flag in flags {
        let mut parts = flag.splitn(3, ':');
        let (Some(id), Some(secret), Some(uri)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "--client {flag:?}: expected ID:SECRET:REDIRECT_URI"
            ));
        };
        if id.is_empty() || secret.is_empty() || uri.is_empty() {
            return Err(format!(
                "--client {flag:?}: expected ID:SECRET:REDIRECT_URI"
            ));
        }
        match clients.iter_mut().find(|c| c.client_id == id) {
            Some(c) if c.client_secret != secret => {
                return Err(format!("--client {id}: given with two different secrets"));
            }
            Some(c) => c.redirect_uris.push(uri.to_owned()),
            None => clients.push(ClientRegistration {
                client_id: id.to_owned(),
                client_secret: secret.to_owned(),
                name: id.to_owned(),
                redirect_uris: vec![uri.to_owned()],
            }),
        }
    }
    Ok(clients)
}

/// Runs the sandbox from the command line until `shutdown` resolves.
pub async fn serve(
    args: SandboxArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut settings = SandboxSettings::new(args.addr);
    settings.public_url = args.public_url;
    settings.clients = parse_clients(&args.clients)?;
    settings.retry.max_attempts = args.max_attempts.max(1);
    if let Some(path) = &args.extra_ca_file {
        settings.roots = latch_domain::outbound::TlsRoots::from_pem_file(path)?;
    }
    let generated = args.webhook_secret.is_none();
    if let Some(secret) = args.webhook_secret {
        settings.webhook_secret = secret;
    }
    let sandbox = KazayaSandbox::build(settings).await?;
    tracing::info!(url = %sandbox.base_url(), "Kazaya sandbox (test mode) is serving");
    for client in sandbox.shared.clients.values() {
        tracing::info!(
            client_id = %client.client_id,
            redirect_uris = %client.redirect_uris.join(", "),
            "client registered"
        );
    }
    if generated {
        // Generated for this run only: the operator needs it to configure Latch's side.
        tracing::info!(webhook_secret = %sandbox.webhook_secret(), "webhook secret generated");
    }
    sandbox.run_until_stopped(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_doubles_up_to_the_cap() {
        let r = RetryPolicy::default();
        let delays: Vec<_> = (1..=9).map(|a| r.delay_after(a).as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(r.delay_after(1000), Duration::from_secs(60));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%2Bb+c%3a%"), "a+b c:%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn client_flags() {
        let clients = parse_clients(&[
            "latch:s3cret:http://127.0.0.1:8080/a".into(),
            "latch:s3cret:http://127.0.0.1:8080/b".into(),
        ])
        .unwrap();
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].redirect_uris.len(), 2);
        assert!(parse_clients(&["latch:http".into()]).is_err());
        assert!(
            parse_clients(&["latch:one:http://x/".into(), "latch:two:http://x/".into()]).is_err()
        );
    }
}
