//! Minting a code: `GET /qr/loginpic` (and the seed's `/qr/loginpic/`), `/qr/code` and
//! `/qr/token`. Each appends `QrCodeMinted` under the per-address and global caps and sets the
//! browser's secret cookie; the picture's parameters are checked before anything is minted.

use super::client::Client;
use super::fail::{too_many, QrFail};
use super::picture;
use super::secret::secret_cookie;
use crate::error::ApiError;
use crate::extract::{Query, RequestMeta};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use latch_domain::qr_login::{BrowserSecret, LoginId, LoginOrigin, QrLoginCommand, QrToken};
use latch_domain::store::CommandContext;
use serde::{Deserialize, Serialize};

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
