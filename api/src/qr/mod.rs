//! QR-code login over HTTP: the seed's API (`/qr/loginpic`, `/qr/code`, `/qr/login`,
//! `/qr/lock`, `/qr/activate`, `/qr/cancel`), a push channel (`/qr/ws`), and the redemption that
//! turns a confirmed login into a web session (`/qr/redeem`, then `GET /me`).
//!
//! How the parts fit:
//! - minting appends `QrCodeMinted` and sets the browser's secret in an HttpOnly, SameSite=Strict
//!   cookie scoped to `/qr`; polls, the push channel and redemption are recognised by it alone,
//!   so the QR content in another browser polls to nothing;
//! - the app's lock / confirm / cancel are commands on the login's own stream (Bearer token of
//!   the app user), decided by [`latch_domain::qr_login::QrLogin`];
//! - pages are answered from [`hub::Hub`], an in-memory fold of each login kept current from the
//!   EVENTS stream;
//! - [`limits`] caps minting per client IP and app actions per user.
//!
//! Answers keep the seed's shape (`statusflag` 0 / 1 / 2 / -2 / -1) and add our error object:
//! a refusal is `{"statusflag": -1, "error": {code, message, field?}}` with a 4xx status; a code
//! that is no longer usable is `{"statusflag": -2, "state": ...}` (200); a system fault also
//! carries the seed's `errorCode: -1`.

pub mod hub;
pub mod limits;
pub mod picture;

use crate::auth::{Actor, NewToken, Role, SessionActor};
use crate::error::ApiError;
use crate::extract::{JsonBody, Query, RequestMeta};
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use hub::{Hub, Snapshot};
use latch_domain::device::ParseError;
use latch_domain::qr_login::{
    BrowserSecret, Ext, LoginId, LoginOrigin, PageStatus, QrLogin, QrLoginCommand, QrLoginError,
    QrToken,
};
use latch_domain::store::{CommandContext, CommandError};
use limits::Limit;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The cookie holding the minting browser's secret.
pub const SECRET_COOKIE: &str = "latch_qr";
const MAX_USER_AGENT: usize = 256;
/// Largest message (and frame) a page may send on the push channel.
pub const WS_MAX_MESSAGE: usize = 4096;

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
    mint_limit: Limit<IpAddr>,
    mint_global: Limit<()>,
    app_limit: Limit<String>,
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/qr/loginpic", get(loginpic))
        // The seed's own example writes `/qr/loginpic/?qrSize=...`.
        .route("/qr/loginpic/", get(loginpic_seed_form))
        .route("/qr/code", get(code))
        .route("/qr/token", get(token))
        .route("/qr/login", get(poll))
        .route("/qr/ws", get(push))
        .route("/qr/lock", post(lock))
        .route("/qr/activate", post(activate))
        .route("/qr/cancel", post(cancel))
        .route("/qr/redeem", get(redeem))
        .route("/me", get(me))
}

/// A QR endpoint's failure, in the seed's shape plus our error object.
#[derive(Debug)]
pub enum QrFail {
    /// Refused or faulted: `statusflag: -1`.
    Error(ApiError),
    /// The code is no longer usable: `statusflag: -2`, with which way it ended.
    Gone(QrLoginError),
}

impl From<ApiError> for QrFail {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl From<ParseError> for QrFail {
    fn from(e: ParseError) -> Self {
        Self::Error(e.into())
    }
}

impl From<sqlx::Error> for QrFail {
    fn from(e: sqlx::Error) -> Self {
        Self::Error(e.into())
    }
}

impl From<CommandError<QrLoginError>> for QrFail {
    fn from(e: CommandError<QrLoginError>) -> Self {
        match e {
            CommandError::Rejected(e) if e.statusflag() == -2 => Self::Gone(e),
            CommandError::Rejected(e) => Self::Error(refusal(e)),
            other => Self::Error(crate::error::from_command_error(other)),
        }
    }
}

fn refusal(e: QrLoginError) -> ApiError {
    use QrLoginError as E;
    let (code, message) = (e.code(), e.to_string());
    match e {
        E::UnknownCode => ApiError::NotFound { code, message },
        E::NotLockOwner | E::WrongBrowser => ApiError::Forbidden(message),
        _ => ApiError::Conflict { code, message },
    }
}

impl IntoResponse for QrFail {
    fn into_response(self) -> Response {
        match self {
            Self::Gone(e) => {
                let state = match e {
                    QrLoginError::Cancelled => PageStatus::Cancelled,
                    QrLoginError::AlreadyRedeemed => PageStatus::Redeemed,
                    _ => PageStatus::Expired,
                };
                Json(json!({
                    "statusflag": -2,
                    "state": state.as_str(),
                    "error": { "code": e.code(), "message": e.to_string() },
                }))
                .into_response()
            }
            Self::Error(e) => {
                let (status, body) = e.to_body();
                let mut value = json!({ "statusflag": -1, "error": body.error });
                if status.is_server_error() {
                    value["errorCode"] = json!(-1);
                    value["message"] = json!(body.error.message);
                }
                // Forbidden carries a generic code in ApiError; keep the precise one.
                if let ApiError::Forbidden(_) = e {
                    value["error"]["code"] = json!(forbidden_code(&body.error.message));
                }
                let mut response = (status, Json(value)).into_response();
                e.add_headers(&mut response);
                response
            }
        }
    }
}

fn forbidden_code(message: &str) -> &'static str {
    if message == QrLoginError::NotLockOwner.to_string() {
        QrLoginError::NotLockOwner.code()
    } else if message == QrLoginError::WrongBrowser.to_string() {
        QrLoginError::WrongBrowser.code()
    } else {
        "forbidden"
    }
}

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

fn too_many(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::TooManyRequests {
        code: "rate_limited",
        message: format!("too many {what}; try again in {secs} s"),
        retry_after_secs: secs,
    }
}

fn secret_cookie(state: &AppState, secret: &BrowserSecret) -> Cookie<'static> {
    let config = &state.qr.config;
    let max_age = config.code_ttl + latch_domain::qr_login::REDEEM_WINDOW;
    Cookie::build((SECRET_COOKIE, secret.encode()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/qr")
        .secure(config.secure_cookies)
        .max_age(time_duration(max_age))
        .build()
}

fn time_duration(d: chrono::Duration) -> cookie::time::Duration {
    cookie::time::Duration::seconds(d.num_seconds())
}

struct Minted {
    token: QrToken,
    secret: BrowserSecret,
    expires_at: DateTime<Utc>,
}

async fn mint(state: &AppState, client: &Client, meta: &RequestMeta) -> Result<Minted, QrFail> {
    state
        .qr
        .mint_limit
        .check(&crate::edge::limit_key(client.ip))
        .map_err(|wait| too_many("QR codes from this address", wait))?;
    state
        .qr
        .mint_global
        .check(&())
        .map_err(|wait| too_many("QR codes are being made right now", wait))?;
    let login_id = LoginId::generate();
    let token = QrToken::mint(login_id);
    let secret = BrowserSecret::mint(login_id);
    let at = state.clock.now();
    let expires_at = at + state.qr.config.code_ttl;
    let command = QrLoginCommand::Mint {
        login_id,
        token_hash: token.hash(),
        secret_hash: secret.hash(),
        origin: LoginOrigin {
            ip: client.ip.to_string(),
            user_agent: client.user_agent.clone(),
        },
        at,
        expires_at,
    };
    let mut ctx = CommandContext::new(format!("browser:{}", client.ip));
    ctx.request_id = meta.request_id;
    ctx.causation_id = meta.request_id;
    ctx.correlation_id = meta.correlation_id;
    let done = state
        .store
        .qr_logins
        .create(&login_id.to_string(), command.name(), command, &ctx)
        .await?;
    state.qr.hub.insert_minted(login_id, done.events);
    Ok(Minted {
        token,
        secret,
        expires_at,
    })
}

#[derive(Debug, Deserialize)]
pub struct PictureQuery {
    #[serde(rename = "qrSize")]
    qr_size: Option<String>,
    #[serde(rename = "logoSize")]
    logo_size: Option<String>,
    logo: Option<String>,
}

/// A new code drawn as asked: the picture's parameters are checked first, so a bad request
/// mints nothing.
async fn mint_pictured(
    state: &AppState,
    client: &Client,
    meta: &RequestMeta,
    query: Result<Query<PictureQuery>, ApiError>,
) -> Result<(Minted, Vec<u8>), QrFail> {
    let Query(q) = query?;
    let picture = picture::Picture::parse(
        q.qr_size.as_deref(),
        q.logo_size.as_deref(),
        q.logo.as_deref(),
    )?;
    let minted = mint(state, client, meta).await?;
    let png = picture::render_png(minted.token.as_str(), &picture)?;
    Ok((minted, png))
}

/// `GET /qr/loginpic`: a new code as a PNG, its secret in the cookie.
#[utoipa::path(get, path = "/qr/loginpic", tag = "qr login",
    params(("qrSize" = Option<u32>, Query, description = "pixels, 90-512, default 94"),
           ("logoSize" = Option<u32>, Query, description = "pixels, 1-256, default 32; drawn at most 40% of the QR side so it still scans"),
           ("logo" = Option<u32>, Query, description = "a registered logo number")),
    responses((status = 200, description = "PNG; Set-Cookie latch_qr (HttpOnly, SameSite=Strict, Path=/qr)", content_type = "image/png"),
              (status = 400, description = "a parameter out of range, named in error.field", body = crate::error::ErrorBody),
              (status = 429, description = "too many codes from this address", body = crate::error::ErrorBody)))]
pub async fn loginpic(
    State(state): State<AppState>,
    client: Client,
    meta: RequestMeta,
    jar: CookieJar,
    query: Result<Query<PictureQuery>, ApiError>,
) -> Result<Response, QrFail> {
    let (minted, png) = mint_pictured(&state, &client, &meta, query).await?;
    let jar = jar.add(secret_cookie(&state, &minted.secret));
    Ok((
        jar,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        png,
    )
        .into_response())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeAnswer {
    pub code: String,
    pub expires_at: DateTime<Utc>,
    pub ttl_seconds: i64,
}

/// `GET /qr/loginpic/`: the seed's own spelling of [`loginpic`], trailing slash and all.
#[utoipa::path(get, path = "/qr/loginpic/", tag = "qr login",
    params(("qrSize" = Option<u32>, Query, description = "as /qr/loginpic"),
           ("logoSize" = Option<u32>, Query, description = "as /qr/loginpic"),
           ("logo" = Option<u32>, Query, description = "as /qr/loginpic")),
    responses((status = 200, description = "PNG, as /qr/loginpic", content_type = "image/png"),
              (status = 400, body = crate::error::ErrorBody, description = "a parameter out of range, named in error.field"),
              (status = 429, body = crate::error::ErrorBody, description = "too many codes from this address")))]
pub async fn loginpic_seed_form(
    state: State<AppState>,
    client: Client,
    meta: RequestMeta,
    jar: CookieJar,
    query: Result<Query<PictureQuery>, ApiError>,
) -> Result<Response, QrFail> {
    loginpic(state, client, meta, jar, query).await
}

/// `GET /qr/code`: a new code's content, for pages that draw the QR themselves.
#[utoipa::path(get, path = "/qr/code", tag = "qr login",
    responses((status = 200, description = "{code, expiresAt, ttlSeconds}; Set-Cookie latch_qr", body = Object),
              (status = 429, description = "too many codes from this address", body = crate::error::ErrorBody)))]
pub async fn code(
    State(state): State<AppState>,
    client: Client,
    meta: RequestMeta,
    jar: CookieJar,
) -> Result<Response, QrFail> {
    let minted = mint(&state, &client, &meta).await?;
    let jar = jar.add(secret_cookie(&state, &minted.secret));
    let answer = CodeAnswer {
        code: minted.token.as_str().to_owned(),
        expires_at: minted.expires_at,
        ttl_seconds: state.qr.config.code_ttl.num_seconds(),
    };
    Ok((
        jar,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(answer),
    )
        .into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnswer {
    /// The code's content: what the phone scans and sends back as `code`.
    pub token: String,
    /// The QR picture, a PNG in base64 (`data:image/png;base64,` + this shows it).
    pub image: String,
    pub expires_at: DateTime<Utc>,
    pub ttl_seconds: i64,
}

/// `GET /qr/token`: seed 003's one call, the code's token and its picture together.
#[utoipa::path(get, path = "/qr/token", tag = "qr login",
    params(("qrSize" = Option<u32>, Query, description = "pixels, 90-512, default 94"),
           ("logoSize" = Option<u32>, Query, description = "pixels, 1-256, default 32"),
           ("logo" = Option<u32>, Query, description = "a registered logo number")),
    responses((status = 200, body = TokenAnswer, description = "Set-Cookie latch_qr"),
              (status = 400, description = "a parameter out of range, named in error.field"),
              (status = 429, description = "too many codes from this address")))]
pub async fn token(
    State(state): State<AppState>,
    client: Client,
    meta: RequestMeta,
    jar: CookieJar,
    query: Result<Query<PictureQuery>, ApiError>,
) -> Result<Response, QrFail> {
    use base64::Engine as _;
    let (minted, png) = mint_pictured(&state, &client, &meta, query).await?;
    let jar = jar.add(secret_cookie(&state, &minted.secret));
    let answer = TokenAnswer {
        token: minted.token.as_str().to_owned(),
        image: base64::engine::general_purpose::STANDARD.encode(png),
        expires_at: minted.expires_at,
        ttl_seconds: state.qr.config.code_ttl.num_seconds(),
    };
    Ok((
        jar,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(answer),
    )
        .into_response())
}

/// The browser's secret from its cookie.
fn browser_secret(jar: &CookieJar) -> Result<BrowserSecret, ApiError> {
    let cookie = jar.get(SECRET_COOKIE).ok_or(ApiError::Unprocessable {
        code: "no_browser_secret",
        message:
            "this browser has no QR login in progress (no latch_qr cookie); load a QR code first"
                .into(),
        field: Some(SECRET_COOKIE.into()),
    })?;
    Ok(BrowserSecret::parse(SECRET_COOKIE, cookie.value())?)
}

/// The page's view of a login, checked against the browser's secret.
async fn page_login(
    state: &AppState,
    secret: &BrowserSecret,
) -> Result<tokio::sync::watch::Receiver<Snapshot>, QrFail> {
    let rx = state
        .qr
        .hub
        .watch(secret.login_id())
        .await?
        .ok_or(ApiError::NotFound {
            code: "unknown_code",
            message: "no such QR login".into(),
        })?;
    if rx.borrow().login.secret_hash != secret.hash() {
        return Err(refusal(QrLoginError::WrongBrowser).into());
    }
    Ok(rx)
}

/// The poll / push body: the seed's fields plus the state that tells -2 answers apart.
fn status_body(login: &QrLogin, secret: &BrowserSecret, now: DateTime<Utc>) -> Value {
    let status = login.page_status(now);
    let mut body = json!({
        "statusflag": status.statusflag(),
        "state": status.as_str(),
        "expiresAt": login.expires_at,
    });
    if status == PageStatus::Confirmed {
        body["url"] = json!(format!("/qr/redeem?loginCode={}", secret.login_code()));
        body["ext"] = json!(login.ext().map(Ext::as_str));
    }
    body
}

/// `GET /qr/login`: where this browser's login stands.
#[utoipa::path(get, path = "/qr/login", tag = "qr login",
    responses((status = 200, description = "{statusflag: 0 waiting | 1 scanned | 2 confirmed (with url, ext) | -2 expired/cancelled/redeemed, state, expiresAt}", body = Object),
              (status = 400, description = "malformed latch_qr cookie", body = crate::error::ErrorBody), (status = 403, description = "wrong_browser", body = crate::error::ErrorBody),
              (status = 404, description = "unknown_code", body = crate::error::ErrorBody), (status = 422, description = "no_browser_secret", body = crate::error::ErrorBody),
              (status = 429, description = "poll_too_fast, with intervalSeconds", body = crate::error::ErrorBody)))]
pub async fn poll(State(state): State<AppState>, jar: CookieJar) -> Result<Response, QrFail> {
    let secret = browser_secret(&jar)?;
    let now = state.clock.now();
    let interval = state.qr.config.poll_interval;
    let rx = page_login(&state, &secret).await?;
    if state.qr.hub.poll_too_soon(secret.login_id(), now, interval) {
        let secs = interval.num_milliseconds() as f64 / 1000.0;
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "error": {
                    "code": "poll_too_fast",
                    "message": format!("poll at most once every {secs} s, or use the push channel /qr/ws"),
                },
                "intervalSeconds": secs,
            })),
        )
            .into_response();
        let retry = (interval.num_milliseconds().max(1000) / 1000).to_string();
        if let Ok(v) = HeaderValue::from_str(&retry) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(response);
    }
    let body = status_body(&rx.borrow().login, &secret, now);
    Ok(Json(body).into_response())
}

/// `GET /qr/ws`: the same answers as the poll, pushed: the current state first (on every
/// connect, so a reconnecting page misses nothing), then each change, until the login is over.
#[utoipa::path(get, path = "/qr/ws", tag = "qr login",
    responses((status = 101, description = "WebSocket: the poll body now and at every change, until the login is over"),
              (status = 403, description = "cross-origin or wrong_browser", body = crate::error::ErrorBody), (status = 422, description = "no_browser_secret", body = crate::error::ErrorBody)))]
pub async fn push(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::edge::ConnectionSlot>>,
    ws: WebSocketUpgrade,
) -> Result<Response, QrFail> {
    // Browsers send cookies on cross-site WebSocket handshakes; only our own pages may listen.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split("://").nth(1).unwrap_or("");
        if origin_host != host {
            return Err(ApiError::Forbidden("cross-origin push channel refused".into()).into());
        }
    }
    let secret = browser_secret(&jar)?;
    let rx = page_login(&state, &secret).await?;
    // One login, a bounded number of channels: the cookie is all it takes to open one, and each
    // holds a socket and a task for up to the login's lifetime.
    let claim = state
        .qr
        .hub
        .claim_socket(secret.login_id(), state.qr.config.sockets_per_login)
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "too_many_sockets",
            message: format!(
                "this login already has {} push channels open; close one first",
                state.qr.config.sockets_per_login
            ),
            retry_after_secs: 1,
        })?;
    // Frames are ~100 bytes each way; the default 128 KiB read buffer per channel would cost
    // over a gigabyte for 10,000 open pages (measured by `latch bench qr`). The page sends
    // nothing but closes and pings, so messages and frames are capped small.
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Both held until the channel ends: its place under the connection cap and its
            // place among the login's channels.
            let _held = (slot, claim);
            follow(socket, state, secret, rx).await
        }))
}

async fn follow(
    mut socket: WebSocket,
    state: AppState,
    secret: BrowserSecret,
    mut rx: tokio::sync::watch::Receiver<Snapshot>,
) {
    let mut last_sent: Option<Value> = None;
    loop {
        let now = state.clock.now();
        let (body, deadline) = {
            let snapshot = rx.borrow_and_update();
            (
                status_body(&snapshot.login, &secret, now),
                snapshot.login.deadline(),
            )
        };
        if last_sent.as_ref() != Some(&body) {
            if socket
                .send(Message::Text(body.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            let done = body["statusflag"] == json!(-2) || body["statusflag"] == json!(-1);
            last_sent = Some(body);
            if done {
                break;
            }
        }
        // Expiry is a deadline, not only an event: wake at it so the page flips to "expired" on
        // time even if the sweeper's event is late (and otherwise sleep, so idle channels cost
        // nothing).
        let until = deadline
            .and_then(|d| (d - now).to_std().ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60))
            + Duration::from_millis(10);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(until) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = state.shutdown.cancelled() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    /// The QR content.
    pub code: String,
    /// Free-form, handed to the page on success (at most 512 bytes).
    pub ext: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    pub code: String,
}

fn app_user(state: &AppState, actor: &Actor) -> Result<(), ApiError> {
    actor.require(Role::User)?;
    state
        .qr
        .app_limit
        .check(&actor.subject)
        .map_err(|wait| too_many("QR actions from this user", wait))
}

async fn run(
    state: &AppState,
    actor: &Actor,
    meta: &RequestMeta,
    raw: &[u8],
    token: &QrToken,
    command: QrLoginCommand,
) -> Result<(), QrFail> {
    let ctx = meta.context(actor, raw);
    let id = token.login_id().to_string();
    state
        .store
        .qr_logins
        .execute(&id, command.name(), command, &ctx)
        .await?;
    Ok(())
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

/// `POST /qr/lock` (app): claim the scanned code; the answer says where the login comes from.
#[utoipa::path(post, path = "/qr/lock", tag = "qr login", request_body = LockBody,
    responses((status = 200, description = "{statusflag: 0, type, origin: {ip, browser, userAgent, mintedAt}, expiresAt}, or {statusflag: -2, state}", body = Object),
              (status = 400, description = "code or ext malformed", body = crate::error::ErrorBody), (status = 404, description = "unknown_code", body = crate::error::ErrorBody),
              (status = 409, description = "already_locked / already_confirmed", body = crate::error::ErrorBody), (status = 429, description = "rate_limited", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn lock(
    State(state): State<AppState>,
    actor: Result<Actor, ApiError>,
    meta: Result<RequestMeta, ApiError>,
    body: Result<JsonBody<LockBody>, ApiError>,
) -> Result<Response, QrFail> {
    // Extractor refusals answer in the seed's shape too.
    let (actor, meta, body) = (actor?, meta?, body?);
    app_user(&state, &actor)?;
    let token = QrToken::parse("code", &body.value.code)?;
    let ext = body
        .value
        .ext
        .as_deref()
        .map(|e| Ext::parse("ext", e))
        .transpose()?;
    let command = QrLoginCommand::Lock {
        token_hash: token.hash(),
        user: actor.subject.clone(),
        ext,
        at: state.clock.now(),
    };
    run(&state, &actor, &meta, &body.raw, &token, command).await?;
    let rx = state
        .qr
        .hub
        .watch(token.login_id())
        .await?
        .ok_or_else(|| ApiError::Internal("a locked login vanished".into()))?;
    let login = rx.borrow().login.clone();
    let origin = login.origin.unwrap_or(LoginOrigin {
        ip: String::new(),
        user_agent: String::new(),
    });
    Ok(Json(json!({
        "statusflag": 0,
        "type": "login",
        "origin": {
            "ip": origin.ip,
            "browser": browser_summary(&origin.user_agent),
            "userAgent": origin.user_agent,
            "mintedAt": login.minted_at,
        },
        "expiresAt": login.expires_at,
    }))
    .into_response())
}

/// `POST /qr/activate` (app, the user who locked it): log the page in.
#[utoipa::path(post, path = "/qr/activate", tag = "qr login", request_body = CodeBody,
    responses((status = 200, description = "{statusflag: 0}, or {statusflag: -2, state}", body = Object),
              (status = 403, description = "not_lock_owner", body = crate::error::ErrorBody), (status = 409, description = "not_locked", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn activate(
    State(state): State<AppState>,
    actor: Result<Actor, ApiError>,
    meta: Result<RequestMeta, ApiError>,
    body: Result<JsonBody<CodeBody>, ApiError>,
) -> Result<Response, QrFail> {
    decide_as_locker(state, actor, meta, body, |token_hash, user, at| {
        QrLoginCommand::Confirm {
            token_hash,
            user,
            at,
        }
    })
    .await
}

/// `POST /qr/cancel` (app, the user who locked it): decline; the code is dead for good.
#[utoipa::path(post, path = "/qr/cancel", tag = "qr login", request_body = CodeBody,
    responses((status = 200, description = "{statusflag: 0}, or {statusflag: -2, state}", body = Object),
              (status = 403, description = "not_lock_owner", body = crate::error::ErrorBody), (status = 409, description = "not_locked / already_confirmed", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    actor: Result<Actor, ApiError>,
    meta: Result<RequestMeta, ApiError>,
    body: Result<JsonBody<CodeBody>, ApiError>,
) -> Result<Response, QrFail> {
    decide_as_locker(state, actor, meta, body, |token_hash, user, at| {
        QrLoginCommand::Cancel {
            token_hash,
            user,
            at,
        }
    })
    .await
}

/// Confirm and cancel: the same checks, then the command the locking user chose.
async fn decide_as_locker(
    state: AppState,
    actor: Result<Actor, ApiError>,
    meta: Result<RequestMeta, ApiError>,
    body: Result<JsonBody<CodeBody>, ApiError>,
    command: impl FnOnce(String, String, DateTime<Utc>) -> QrLoginCommand,
) -> Result<Response, QrFail> {
    // Extractor refusals answer in the seed's shape too.
    let (actor, meta, body) = (actor?, meta?, body?);
    app_user(&state, &actor)?;
    let token = QrToken::parse("code", &body.value.code)?;
    let command = command(token.hash(), actor.subject.clone(), state.clock.now());
    run(&state, &actor, &meta, &body.raw, &token, command).await?;
    Ok(Json(json!({ "statusflag": 0 })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RedeemQuery {
    #[serde(rename = "loginCode")]
    login_code: Option<String>,
}

/// `GET /qr/redeem?loginCode=` (the page, following the poll's `url`): the one-time login code
/// and the browser's secret together buy a session cookie, then a redirect to the landing page.
#[utoipa::path(get, path = "/qr/redeem", tag = "qr login",
    params(("loginCode" = String, Query, description = "from the confirmed poll answer's url")),
    responses((status = 303, description = "Set-Cookie latch_session; Location: the landing page"),
              (status = 403, description = "not this browser's login", body = crate::error::ErrorBody), (status = 409, description = "login_code_used / not_confirmed", body = crate::error::ErrorBody)))]
pub async fn redeem(
    State(state): State<AppState>,
    meta: RequestMeta,
    jar: CookieJar,
    query: Result<Query<RedeemQuery>, ApiError>,
) -> Result<Response, ApiError> {
    let login_code = query
        .ok()
        .and_then(|Query(q)| q.login_code)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_field", "loginCode", "is required"))?;
    let secret = browser_secret(&jar)?;
    if login_code.len() > 64 || login_code != secret.login_code() {
        return Err(ApiError::Forbidden(
            "this login code does not belong to this browser's login".into(),
        ));
    }
    let at = state.clock.now();
    // The redemption records the session token's id and expiry: one command issues it.
    let session = NewToken::generate();
    let session_id = session.token_id;
    let expires_at = at + state.qr.config.session_ttl;
    let command = QrLoginCommand::Redeem {
        secret_hash: secret.hash(),
        session_id,
        session_expires_at: expires_at,
        at,
    };
    let mut ctx = CommandContext::new(format!("browser:{}", secret.login_id()));
    ctx.request_id = meta.request_id;
    ctx.causation_id = meta.request_id;
    ctx.correlation_id = meta.correlation_id;
    let id = secret.login_id().to_string();
    let done = state
        .store
        .qr_logins
        .execute(&id, command.name(), command, &ctx)
        .await
        .map_err(|e| match e {
            CommandError::Rejected(e) => refusal(e),
            other => crate::error::from_command_error(other),
        })?;
    let user = match done.events.first() {
        Some(latch_domain::qr_login::QrLoginEvent::QrLoginRedeemed { user, .. }) => user.clone(),
        other => return Err(ApiError::Internal(format!("redeem produced {other:?}"))),
    };
    // The login is spent before the session exists: a crash in between costs the user a new
    // scan, never a second session from one code.
    session
        .store(&state.pool, Role::User, &user, Some(expires_at))
        .await?;
    let token = session.token;
    tracing::info!(login = %id, %session_id, "qr login redeemed");
    let session = Cookie::build((crate::auth::SESSION_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(state.qr.config.secure_cookies)
        .max_age(time_duration(state.qr.config.session_ttl))
        .build();
    let spent = Cookie::build((SECRET_COOKIE, "")).path("/qr").build();
    let jar = jar.add(session).remove(spent);
    Ok((jar, Redirect::to(&state.qr.config.landing_url)).into_response())
}

/// `GET /me`: who this session (cookie or Bearer token) belongs to.
#[utoipa::path(get, path = "/me", tag = "qr login",
    responses((status = 200, description = "{userId, role}", body = Object), (status = 401, description = "no session", body = crate::error::ErrorBody)))]
pub async fn me(SessionActor(actor): SessionActor) -> Json<Value> {
    Json(json!({ "userId": actor.subject, "role": actor.role.as_str() }))
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
