//! Kazaya, the member and payment platform, as Latch sees it.
//!
//! Latch never keeps members or takes payments itself. A shopper opening the H5 page is sent to
//! Kazaya to log in (Kazaya registers them first if they are not a member yet); Kazaya sends them
//! back with an OAuth2 authorization code, which Latch exchanges for the Kazaya user id and basic
//! information (phone, nickname, avatar). To pay for an order the shopper is sent to Kazaya's pay
//! page; the outcome reaches Latch as a signed callback.
//!
//! - [`Kazaya`] is the boundary (DESIGN.md section 7): everything Latch asks of Kazaya, over real
//!   HTTP. [`HttpKazaya`] is the implementation, configured by [`KazayaConfig`], so the sandbox
//!   (`latch kazaya-sandbox`) and the real platform differ only by configuration.
//! - Outgoing payment calls carry an `Idempotency-Key` chosen by the caller: repeating a call with
//!   the same key (after a timeout, say) returns the first outcome instead of charging twice.
//!   [`HttpKazaya`] does not retry by itself; a caller seeing [`KazayaError::Unavailable`] retries
//!   with the same key.
//! - Callbacks are [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//!   `{id}.{timestamp}.{body}`, checked by [`verify_webhook`] through the one Standard Webhooks
//!   implementation ([`latch_domain::webhooks`]), five-minute tolerance.
//!   Kazaya retries a callback (same id) until it gets a 2xx, so the receiver must deduplicate by
//!   [`WebhookEvent::id`] — that is the caller's job, not this module's.
//!
//! Transport: `http` or `https` (rustls, webpki roots plus [`KazayaConfig::roots`], from
//! `LATCH_EXTRA_CA_FILE`), through [`latch_domain::outbound::client_builder`]: certificates are
//! always verified and redirects never followed. Production mode refuses a non-https base URL.

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use latch_domain::outbound::{self, TlsRoots};
pub use latch_domain::webhooks::WebhookError;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The scope Latch asks for: the member's id, phone, nickname and avatar.
pub const SCOPE: &str = "profile";

/// Everything Latch asks of Kazaya. Object-safe: hold it as `Arc<dyn Kazaya>`.
#[async_trait]
pub trait Kazaya: Send + Sync {
    /// Where to send a browser to log in / register and authorize Latch. `state` comes back
    /// unchanged on the redirect (bind it to the browser); `pkce_challenge` is the S256 challenge
    /// of a verifier the caller keeps (see [`Pkce`]).
    fn authorize_url(&self, state: &str, pkce_challenge: Option<&str>) -> Url;

    /// Exchanges the code from the redirect for the member (token endpoint, then userinfo).
    /// A code works once; a second exchange is [`KazayaError::Rejected`] with `invalid_grant`.
    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: Option<&str>,
    ) -> Result<Member, KazayaError>;

    /// Starts a payment; send the shopper to [`PaymentCreated::pay_url`]. The same key with the
    /// same request returns the same payment; the same key with another request is rejected
    /// (`idempotency_key_reused`).
    async fn create_payment(
        &self,
        idempotency_key: &str,
        request: &PaymentRequest,
    ) -> Result<PaymentCreated, KazayaError>;

    /// The payment as Kazaya has it now (for reconciling when a callback is late).
    async fn payment_status(&self, payment_id: &str) -> Result<Payment, KazayaError>;

    /// Refunds `amount` (minor units, at most what is left) of a succeeded payment.
    async fn refund(
        &self,
        idempotency_key: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<Refund, KazayaError>;

    /// Checks a callback's signature and freshness and parses it (see [`verify_webhook`]).
    fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookError>;
}

/// A Kazaya member, as the userinfo endpoint describes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: String,
    pub phone: String,
    pub nickname: String,
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// Latch's order id; echoed back in callbacks.
    pub order_id: String,
    /// Minor units (fen for CNY).
    pub amount: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    pub description: String,
    /// The Kazaya user id of the payer.
    pub user_id: String,
    /// Where the pay page sends the browser afterwards (with `payment_id` and `status` added;
    /// trust only the callback or [`Kazaya::payment_status`], never these parameters).
    pub return_url: String,
    /// Where the signed callbacks go.
    pub notify_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    Pending,
    Succeeded,
    Failed,
    /// Refunded in full. A partly refunded payment stays `Succeeded`.
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentCreated {
    pub payment_id: String,
    pub status: PaymentState,
    pub pay_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentState,
    #[serde(default)]
    pub refunded_amount: i64,
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KazayaError {
    /// Kazaya could not be reached, timed out, failed (5xx, 429) or answered something we cannot
    /// read. Nothing is known to have happened; retry (with the same idempotency key).
    #[error("Kazaya is unavailable: {0}")]
    Unavailable(String),
    /// Kazaya understood and said no (4xx): `code` is Kazaya's (`invalid_grant`,
    /// `idempotency_key_reused`, `amount_exceeds_refundable`, ...). Retrying will not help.
    #[error("Kazaya refused ({code}): {message}")]
    Rejected { code: String, message: String },
}

impl KazayaError {
    fn unavailable(e: impl fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }

    /// A transport failure with its causes (a TLS failure names the certificate problem).
    fn transport(e: reqwest::Error) -> Self {
        Self::Unavailable(outbound::error_chain(&e))
    }
}

/// A configuration that cannot work (unparsable URL, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid Kazaya configuration: {0}")]
pub struct InvalidConfig(pub String);

/// How to reach Kazaya. The sandbox and the real platform differ only in these values.
#[derive(Clone)]
pub struct KazayaConfig {
    /// Kazaya's root, e.g. `http://127.0.0.1:8090/` (a path prefix is kept).
    pub base_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Latch's callback for the authorization code; must be registered with Kazaya exactly.
    pub redirect_uri: String,
    /// Signs Kazaya's callbacks: `whsec_` + base64.
    pub webhook_secret: String,
    /// Per request, connecting included.
    pub timeout: Duration,
    /// Trust anchors beyond the webpki roots (a private CA in front of Kazaya, a test CA).
    pub roots: TlsRoots,
}

impl KazayaConfig {
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
        webhook_secret: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            webhook_secret: webhook_secret.into(),
            timeout: Duration::from_secs(10),
            roots: TlsRoots::none(),
        }
    }

    /// The same, trusting `roots` too.
    pub fn with_roots(mut self, roots: TlsRoots) -> Self {
        self.roots = roots;
        self
    }
}

impl fmt::Debug for KazayaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KazayaConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_uri", &self.redirect_uri)
            .field("webhook_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("roots", &self.roots)
            .finish()
    }
}

/// A PKCE pair: send `challenge` with [`Kazaya::authorize_url`], keep `verifier` (server side,
/// bound to the browser) for [`Kazaya::exchange_code`].
#[derive(Clone)]
pub struct Pkce {
    pub challenge: String,
    pub verifier: String,
}

impl Pkce {
    /// A fresh random verifier (32 bytes, base64url) and its S256 challenge.
    pub fn new_s256() -> Self {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        Self {
            challenge: challenge.as_str().to_owned(),
            verifier: verifier.secret().clone(),
        }
    }
}

/// What Kazaya's token endpoint adds to the standard fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KazayaTokenFields {
    kazaya_user_id: String,
}

impl oauth2::ExtraTokenFields for KazayaTokenFields {}

type KazayaTokenResponse = StandardTokenResponse<KazayaTokenFields, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    KazayaTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// [`Kazaya`] over HTTP: the `oauth2` crate for the authorization-code exchange (client
/// authentication by HTTP Basic), reqwest for the rest.
pub struct HttpKazaya {
    config: KazayaConfig,
    base: Url,
    oauth: OAuthClient,
    http: reqwest::Client,
}

impl HttpKazaya {
    pub fn new(config: KazayaConfig) -> Result<Self, InvalidConfig> {
        let mut base = Url::parse(&config.base_url)
            .map_err(|e| InvalidConfig(format!("base_url {:?}: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(InvalidConfig(format!(
                "base_url {:?}: expected an http(s) URL",
                config.base_url
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let join = |path: &str| {
            base.join(path)
                .map_err(|e| InvalidConfig(format!("{path}: {e}")))
        };
        let auth_url = AuthUrl::from_url(join("oauth/authorize")?);
        let token_url = TokenUrl::from_url(join("oauth/token")?);
        let redirect = RedirectUrl::new(config.redirect_uri.clone())
            .map_err(|e| InvalidConfig(format!("redirect_uri {:?}: {e}", config.redirect_uri)))?;
        let oauth = oauth2::Client::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(config.client_secret.clone()))
            .set_auth_uri(auth_url)
            .set_token_uri(token_url)
            .set_redirect_uri(redirect);
        // Never follows redirects (oauth2's advice for the token endpoint: SSRF).
        let http = outbound::client_builder(&config.roots)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| InvalidConfig(format!("http client: {e}")))?;
        Ok(Self {
            config,
            base,
            oauth,
            http,
        })
    }

    pub fn config(&self) -> &KazayaConfig {
        &self.config
    }

    fn url(&self, path: &str) -> Result<Url, KazayaError> {
        self.base.join(path).map_err(|e| KazayaError::Rejected {
            code: "invalid_request".into(),
            message: format!("cannot build a URL for {path:?}: {e}"),
        })
    }

    fn client_auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(&self.config.client_id, Some(&self.config.client_secret))
    }

    async fn userinfo(&self, access_token: &str) -> Result<Member, KazayaError> {
        let request = self
            .http
            .get(self.url("v1/userinfo")?)
            .bearer_auth(access_token);
        call(request).await
    }
}

/// Percent-encodes one path segment (ids come from Kazaya, but never trust them to be tidy).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

/// Sends a request and reads a JSON answer, sorting failures into unavailable / rejected.
async fn call<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, KazayaError> {
    let response = request.send().await.map_err(KazayaError::transport)?;
    let status = response.status();
    let body = response.bytes().await.map_err(KazayaError::unavailable)?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| KazayaError::Unavailable(format!("unreadable answer ({status}): {e}")));
    }
    if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        return Err(KazayaError::Unavailable(format!(
            "Kazaya answered {status}"
        )));
    }
    match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(e) => Err(KazayaError::Rejected {
            code: e.error.code,
            message: e.error.message,
        }),
        Err(_) => Err(KazayaError::Rejected {
            code: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }),
    }
}

#[async_trait]
impl Kazaya for HttpKazaya {
    fn authorize_url(&self, state: &str, pkce_challenge: Option<&str>) -> Url {
        let mut request = self
            .oauth
            .authorize_url(|| CsrfToken::new(state.to_owned()))
            .add_scope(Scope::new(SCOPE.into()));
        if let Some(challenge) = pkce_challenge {
            request = request
                .add_extra_param("code_challenge", challenge)
                .add_extra_param("code_challenge_method", "S256");
        }
        request.url().0
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: Option<&str>,
    ) -> Result<Member, KazayaError> {
        let mut request = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.to_owned()));
        if let Some(verifier) = pkce_verifier {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
        }
        let token = request
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(e) => KazayaError::Rejected {
                    code: e.error().as_ref().to_owned(),
                    message: e
                        .error_description()
                        .cloned()
                        .unwrap_or_else(|| "the token endpoint refused the code".into()),
                },
                RequestTokenError::Request(e) => {
                    KazayaError::Unavailable(outbound::error_chain(&e))
                }
                RequestTokenError::Parse(e, _) => {
                    KazayaError::Unavailable(format!("unreadable token answer: {e}"))
                }
                RequestTokenError::Other(e) => KazayaError::Unavailable(e),
            })?;
        if *token.token_type() != BasicTokenType::Bearer {
            return Err(KazayaError::Unavailable(format!(
                "unexpected token type {:?}",
                token.token_type()
            )));
        }
        let member = self.userinfo(token.access_token().secret()).await?;
        if member.user_id != token.extra_fields().kazaya_user_id {
            return Err(KazayaError::Unavailable(
                "userinfo describes another user than the token".into(),
            ));
        }
        Ok(member)
    }

    async fn create_payment(
        &self,
        idempotency_key: &str,
        request: &PaymentRequest,
    ) -> Result<PaymentCreated, KazayaError> {
        let http = self
            .http
            .post(self.url("v1/payments")?)
            .header("idempotency-key", idempotency_key)
            .json(request);
        call(self.client_auth(http)).await
    }

    async fn payment_status(&self, payment_id: &str) -> Result<Payment, KazayaError> {
        let url = self.url(&format!("v1/payments/{}", segment(payment_id)))?;
        call(self.client_auth(self.http.get(url))).await
    }

    async fn refund(
        &self,
        idempotency_key: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<Refund, KazayaError> {
        let url = self.url(&format!("v1/payments/{}/refunds", segment(payment_id)))?;
        let http = self
            .http
            .post(url)
            .header("idempotency-key", idempotency_key)
            .json(&serde_json::json!({ "amount": amount }));
        call(self.client_auth(http)).await
    }

    fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookError> {
        verify_webhook(&self.config.webhook_secret, headers, body, now)
    }
}

// ---------------------------------------------------------------------------------------------
// Callbacks (Standard Webhooks)

/// What a callback is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookKind {
    PaymentSucceeded,
    PaymentFailed,
    RefundSucceeded,
    /// A type this build does not know: acknowledge it and ignore it.
    Other(String),
}

impl WebhookKind {
    pub fn parse(s: &str) -> Self {
        match s {
            "payment.succeeded" => Self::PaymentSucceeded,
            "payment.failed" => Self::PaymentFailed,
            "refund.succeeded" => Self::RefundSucceeded,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::PaymentSucceeded => "payment.succeeded",
            Self::PaymentFailed => "payment.failed",
            Self::RefundSucceeded => "refund.succeeded",
            Self::Other(s) => s,
        }
    }
}

/// The `data` of every Kazaya callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEventData {
    pub payment_id: String,
    pub order_id: String,
    /// The payment's amount; for `refund.succeeded`, the amount of this refund.
    pub amount: i64,
    pub currency: String,
    /// The payment's status after the event.
    pub status: PaymentState,
    /// Set on `refund.succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Refunded so far, this refund included.
    #[serde(default)]
    pub refunded_amount: i64,
}

/// A callback that passed [`verify_webhook`]. The same `id` arrives again on every retry:
/// deduplicate by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: String,
    /// When this delivery attempt was signed.
    pub timestamp: DateTime<Utc>,
    pub kind: WebhookKind,
    pub data: PaymentEventData,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: PaymentEventData,
}

/// Verifies a Kazaya callback (see [`crate::webhooks::verify`]) and parses its body
/// (`{type, data: {payment_id, order_id, amount, currency, status, ...}}`).
///
/// Deduplicating by [`WebhookEvent::id`] is the caller's job: Kazaya sends the same id again
/// until it sees a 2xx, and a replay within the tolerance verifies again.
pub fn verify_webhook(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<WebhookEvent, WebhookError> {
    let signed = crate::webhooks::verify(secret, headers, body, now)?;
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| WebhookError::MalformedBody(e.to_string()))?;
    Ok(WebhookEvent {
        id: signed.id,
        timestamp: signed.timestamp,
        kind: WebhookKind::parse(&envelope.kind),
        data: envelope.data,
    })
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

    fn at(ts: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(ts, 0).unwrap()
    }

    /// The published Standard Webhooks test vector verifies (the scheme itself is tested in
    /// `latch_domain::webhooks`), but its body is not a Kazaya event.
    #[test]
    fn a_signed_body_that_is_not_a_kazaya_event_is_refused() {
        let h = headers(ID, "1614265330", &format!("v1,bm9wZQ== {SIG}"));
        assert!(matches!(
            verify_webhook(SECRET, &h, BODY, at(1614265330)),
            Err(WebhookError::MalformedBody(_))
        ));
    }

    #[test]
    fn authorize_url_carries_state_scope_and_pkce() {
        let kazaya = HttpKazaya::new(KazayaConfig::new(
            "http://127.0.0.1:9/prefix",
            "latch",
            "s3cret",
            "http://127.0.0.1:8080/kazaya/callback",
            SECRET,
        ))
        .unwrap();
        let pkce = Pkce::new_s256();
        let url = kazaya.authorize_url("st4te", Some(&pkce.challenge));
        assert_eq!(url.path(), "/prefix/oauth/authorize");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "latch");
        assert_eq!(q["state"], "st4te");
        assert_eq!(q["scope"], SCOPE);
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/kazaya/callback");
        assert_eq!(q["code_challenge"], pkce.challenge);
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!format!("{:?}", kazaya.config()).contains("s3cret"));
    }
}
