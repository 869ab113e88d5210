//! The shopper's side of vending, for the phone's browser (H5 pages under `/m/`), and Kazaya's
//! payment callbacks.
//!
//! 1. `GET /m/c/{cabinet}?k=...` is what the sticker's QR code opens. The link's signature is
//!    checked first; then a shopper without a session is sent to Kazaya (OAuth2 code flow with
//!    PKCE; `state` and the verifier ride in a short-lived, signed, HttpOnly cookie).
//! 2. `GET /m/auth/callback` exchanges the code, records the member (registered on first
//!    login, authorized on each) and leaves a session cookie; the shopper lands on the cabinet.
//! 3. `/m/api/...` is what the page calls: the cabinet and whether it can open (and if not,
//!    every reason), "open", the live order, "pay", and a reconcile for a late callback.
//!    Cookie-authenticated writes need the `X-Latch-Client` header, which a cross-site form
//!    cannot send, so the cookie cannot be ridden into a door opening.
//! 4. `POST /kazaya/webhooks`: signed (Standard Webhooks), deduplicated by webhook id through
//!    the command's idempotency key, so a replayed callback changes nothing.

use super::{parse_device, parse_limit, parse_session, scans, Vending};
use crate::auth::{bearer_or_cookie, Actor, Auth, CookieCaller, NewToken, Role, SESSION_COOKIE};
use crate::error::{from_command_error, ApiError, ErrorBody};
use crate::kazaya::{Kazaya, KazayaError, Pkce, WebhookKind};
use crate::AppState;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use hmac::{Hmac, Mac};
use latch_domain::device::{DeviceCommand, DeviceError, DeviceId, Label, ShopperOpen};
use latch_domain::store::{CommandContext, CommandError, IdempotencyKey};
use latch_domain::vending::{
    KazayaUserId, MemberCommand, PaymentState, Profile, ProviderRef, ScanVerdict, Session,
    SessionStage, ShoppingCommand, ShoppingSession,
};
use latch_projections::device_status;
use latch_projections::orders::{self, OrderRow};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use uuid::Uuid;

const OAUTH_COOKIE: &str = "latch_oauth";
const SHOP_HTML: &str = include_str!("../../../web/shop.html");
const SHOP_JS: &str = include_str!("../../../web/shop.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/m/c/{device_id}", get(sticker_landing))
        .route("/m/auth/callback", get(auth_callback))
        .route("/m/cabinet/{device_id}", get(|| async { shop_page() }))
        .route("/m/orders/{session_id}", get(|| async { shop_page() }))
        .route("/web/shop.js", get(|| async { shop_js() }))
        .route("/m/api/me", get(me))
        .route("/m/api/cabinets/{device_id}", get(cabinet))
        .route("/m/api/cabinets/{device_id}/open", post(open))
        .route("/m/api/orders", get(my_orders))
        .route("/m/api/orders/{session_id}", get(my_order))
        .route(
            "/m/api/orders/{session_id}/events",
            get(super::push::order_events),
        )
        .route("/m/api/orders/{session_id}/pay", post(pay))
        .route("/m/api/orders/{session_id}/sync", post(sync))
        .route("/kazaya/webhooks", post(webhook))
}

fn shop_page() -> Response {
    let mut res = Html(SHOP_HTML).into_response();
    secure_headers(res.headers_mut());
    res
}

fn shop_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SHOP_JS,
    )
        .into_response()
}

fn secure_headers(h: &mut HeaderMap) {
    use axum::http::HeaderValue;
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::pages::CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A plain page telling the shopper what went wrong, in both languages the stickers use.
fn notice(status: StatusCode, code: &str, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><link rel=\"stylesheet\" href=\"/web/latch.css\"></head>\
         <body class=\"shop\"><main><h1 id=\"notice-title\">{t}</h1>\
         <p id=\"notice-message\">{m}</p><p class=\"muted\">code: <code id=\"notice-code\">{c}</code></p>\
         </main></body></html>",
        t = escape(title),
        m = escape(message),
        c = escape(code)
    );
    let mut res = (status, Html(body)).into_response();
    secure_headers(res.headers_mut());
    res
}

// ---------------------------------------------------------------------------------------------
// Who is shopping

/// A logged-in shopper: a `user` token whose subject is `kazaya:<member id>`, from a Bearer
/// header or the session cookie (cookie writes need [`crate::auth::CLIENT_HEADER`]).
#[derive(Debug, Clone)]
pub struct Shopper {
    pub actor: Actor,
    pub user: KazayaUserId,
}

pub(crate) fn owns(actor: &Actor, user_id: &str) -> bool {
    actor.role == Role::User && actor.subject.strip_prefix("kazaya:") == Some(user_id)
}

fn shopper_of(actor: Actor) -> Result<Shopper, ApiError> {
    let user = match (actor.role, actor.subject.strip_prefix("kazaya:")) {
        (Role::User, Some(id)) => KazayaUserId::parse("user", id)
            .map_err(|_| ApiError::Forbidden("this needs a shopper's session".into()))?,
        _ => return Err(ApiError::Forbidden("this needs a shopper's session".into())),
    };
    Ok(Shopper { actor, user })
}

impl CookieCaller for Shopper {
    const COOKIE: &'static str = SESSION_COOKIE;

    /// Any door: a token that is not a shopper's is refused alike (403).
    fn admit(actor: Actor, _by_cookie: bool) -> Result<Self, ApiError> {
        shopper_of(actor)
    }
}

impl<S> FromRequestParts<S> for Shopper
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_or_cookie(parts, state).await
    }
}

fn shopper_ctx(shopper: &Shopper, device: Option<&DeviceId>) -> CommandContext {
    let ctx = CommandContext::new(shopper.actor.to_string());
    match device {
        Some(d) => ctx.with_device(d.to_string()),
        None => ctx,
    }
}

// ---------------------------------------------------------------------------------------------
// Sticker and login

#[derive(Debug, Deserialize)]
pub struct StickerQuery {
    k: Option<String>,
}

fn oauth_hmac(key: &[u8], value: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"latch-oauth-cookie:v1:");
    mac.update(value.as_bytes());
    mac
}

fn oauth_mac(key: &[u8], value: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(oauth_hmac(key, value).finalize().into_bytes())
}

/// Constant-time check of the cookie's MAC (the HMAC crate's own comparison).
fn oauth_mac_ok(key: &[u8], value: &str, mac: &str) -> bool {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(mac)
        .is_ok_and(|tag| oauth_hmac(key, value).verify_slice(&tag).is_ok())
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `GET /m/c/{cabinet}?k=...`: what the sticker opens. Every scan is recorded (one command:
/// genuine, swapped or forged, with the shopper when the phone has a session), within the
/// per-IP limit of [`super::scans`].
pub async fn sticker_landing(
    State(state): State<AppState>,
    client: crate::qr::Client,
    jar: CookieJar,
    Path(device_id): Path<String>,
    Query(q): Query<StickerQuery>,
) -> Response {
    let forged = || {
        notice(
            StatusCode::FORBIDDEN,
            "forged_cabinet_link",
            "这不是有效的柜子二维码 · Not a valid cabinet code",
            "This QR code was not issued for this cabinet. Do not use it; please tell the \
             operator (the sticker may have been replaced). 此二维码无效，请联系运营人员。",
        )
    };
    let device = DeviceId::parse("device_id", &device_id).ok();
    let config = &state.vending.config;
    let verdict = match scans::classify(&state, device.as_ref(), q.k.as_deref()).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    // Already logged in as a shopper: the scan names them, and they go straight on.
    let mut shopper = None;
    if let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) {
        if let Ok(actor) = state.auth.authenticate(&token).await {
            shopper = shopper_of(actor).ok();
        }
    }
    let genuine = verdict == ScanVerdict::Genuine;
    if !genuine {
        tracing::warn!(cabinet = ?device, ?verdict, "forged or swapped cabinet link");
    }
    let who = shopper.as_ref().map(|s| s.user.clone());
    if let Err(e) = scans::record(&state, client.ip, device, verdict, who).await {
        return e.into_response();
    }
    let Some(device) = device.filter(|_| genuine) else {
        return forged();
    };
    let home = cabinet_page(config, &device);
    if shopper.is_some() {
        return Redirect::to(&home).into_response();
    }
    let Ok(kazaya) = state.vending.kazaya() else {
        return notice(
            StatusCode::SERVICE_UNAVAILABLE,
            "kazaya_not_configured",
            "暂时无法登录 · Login unavailable",
            "The member platform is not configured for this installation.",
        );
    };
    let oauth_state = random_token();
    let pkce = Pkce::new_s256();
    let value = format!("{oauth_state}.{}.{device}", pkce.verifier);
    let cookie_value = format!("{value}.{}", oauth_mac(&config.sticker_key, &value));
    let cookie = Cookie::build((OAUTH_COOKIE, cookie_value))
        .http_only(true)
        // Lax: the cookie must come back on Kazaya's top-level redirect to our callback.
        .same_site(SameSite::Lax)
        .path("/m/auth")
        .secure(config.secure_cookies)
        .max_age(cookie::time::Duration::minutes(15))
        .build();
    let url = kazaya.authorize_url(&oauth_state, Some(&pkce.challenge));
    (jar.add(cookie), Redirect::to(url.as_str())).into_response()
}

/// The cabinet's page, carrying the sticker's signature on to "open" (which needs it): only
/// reached from a genuine scan, directly or through the login the scan started.
fn cabinet_page(config: &super::VendingConfig, device: &DeviceId) -> String {
    format!(
        "/m/cabinet/{device}?k={}",
        super::sticker::signature(&config.sticker_key, device)
    )
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /m/auth/callback`: Kazaya sends the shopper back here.
pub async fn auth_callback(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let failed = |code: &str, message: &str| {
        notice(
            StatusCode::BAD_REQUEST,
            code,
            "登录未完成 · Login not completed",
            message,
        )
    };
    let config = &state.vending.config;
    let Some(raw) = jar.get(OAUTH_COOKIE).map(|c| c.value().to_owned()) else {
        return failed(
            "login_expired",
            "This login was started elsewhere or took too long. Scan the cabinet again.",
        );
    };
    let Some((value, mac)) = raw.rsplit_once('.') else {
        return failed("login_expired", "Scan the cabinet again.");
    };
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() != 3 || !oauth_mac_ok(&config.sticker_key, value, mac) {
        return failed("login_expired", "Scan the cabinet again.");
    }
    let (saved_state, verifier, device) = (parts[0], parts[1], parts[2]);
    if q.state.as_deref() != Some(saved_state) {
        return failed(
            "login_state_mismatch",
            "This answer from Kazaya does not belong to this login. Scan the cabinet again.",
        );
    }
    if let Some(error) = q.error.as_deref() {
        return failed(
            "login_declined",
            &format!(
                "Kazaya did not authorize the login ({error}). Scan the cabinet to try again."
            ),
        );
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 512)
    else {
        return failed("login_code_missing", "Kazaya sent no authorization code.");
    };
    let Ok(device) = DeviceId::parse("device", device) else {
        return failed("login_expired", "Scan the cabinet again.");
    };
    let kazaya = match state.vending.kazaya() {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let member = match kazaya.exchange_code(code, Some(verifier)).await {
        Ok(m) => m,
        Err(KazayaError::Rejected { code, message }) => {
            tracing::info!(%code, %message, "kazaya refused the authorization code");
            return failed(
                "login_code_rejected",
                "Kazaya did not accept this login (it may have been used already). Scan the cabinet again.",
            );
        }
        Err(KazayaError::Unavailable(detail)) => {
            tracing::warn!(%detail, "kazaya unavailable during login");
            return notice(
                StatusCode::SERVICE_UNAVAILABLE,
                "kazaya_unavailable",
                "暂时无法登录 · Login unavailable",
                "The member platform did not answer. Please scan again in a moment.",
            );
        }
    };
    let Ok(user) = KazayaUserId::parse("user_id", &member.user_id) else {
        return ApiError::Internal(format!("kazaya member id {:?}", member.user_id))
            .into_response();
    };
    let now = state.clock.now();
    // The login records the session token's id and expiry: one command issues it.
    let session = NewToken::generate();
    let expires = now + config.session_ttl;
    let command = MemberCommand::Authorize {
        user: user.clone(),
        profile: Profile {
            phone: member.phone,
            nickname: member.nickname,
            avatar: member.avatar,
        },
        session: Session {
            token_id: session.token_id,
            expires_at: expires,
        },
        at: now,
    };
    let ctx = CommandContext::new(format!("user:kazaya:{}", user.as_str()));
    if let Err(e) = state
        .store
        .members
        .execute(user.as_str(), command.name(), command, &ctx)
        .await
    {
        return from_command_error(e).into_response();
    }
    let subject = format!("kazaya:{}", user.as_str());
    if let Err(e) = session
        .store(&state.pool, Role::User, &subject, Some(expires))
        .await
    {
        return ApiError::from(e).into_response();
    }
    let token = session.token;
    let session = Cookie::build((SESSION_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(config.secure_cookies)
        .max_age(cookie::time::Duration::seconds(
            config.session_ttl.num_seconds(),
        ))
        .build();
    let spent = Cookie::build((OAUTH_COOKIE, "")).path("/m/auth").build();
    (
        jar.add(session).remove(spent),
        Redirect::to(&cabinet_page(config, &device)),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// The cabinet

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user_id: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
}

/// The logged-in shopper.
#[utoipa::path(get, path = "/m/api/me", tag = "vending",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, shopper: Shopper) -> Result<Json<Me>, ApiError> {
    let member = state.store.members.load(shopper.user.as_str()).await?;
    let profile = member.and_then(|m| m.profile);
    Ok(Json(Me {
        user_id: shopper.user.as_str().to_owned(),
        nickname: profile.as_ref().map(|p| p.nickname.clone()),
        avatar: profile.and_then(|p| p.avatar),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub shelf: u8,
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CabinetView {
    pub device_id: Uuid,
    pub label: String,
    pub site: String,
    pub online: bool,
    pub door: String,
    pub can_open: bool,
    /// Every reason it cannot open now (empty when it can).
    pub blocked: Vec<Reason>,
    pub products: Vec<Product>,
    /// The shopper's orders that must be paid (or reviewed) before opening again.
    pub unpaid_orders: Vec<Uuid>,
    /// With `?request=`: how that opening went (pending, confirmed, timeout, refused: ...).
    pub open_outcome: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CabinetQuery {
    request: Option<String>,
}

async fn cabinet_view(
    state: &AppState,
    device: &DeviceId,
    shopper: &Shopper,
    request: Option<Uuid>,
) -> Result<CabinetView, ApiError> {
    let row = device_status::queries::get(&state.pool, device.as_uuid())
        .await?
        .filter(|r| r.status.kind == "vending")
        .ok_or_else(|| ApiError::NotFound {
            code: "cabinet_not_found",
            message: format!("no vending cabinet {device}"),
        })?;
    let s = &row.status;
    let planogram = state
        .store
        .planograms
        .load(&device.to_string())
        .await?
        .and_then(|p| p.current);
    let unpaid = orders::queries::unpaid_of(&state.pool, shopper.user.as_str()).await?;
    let mut blocked = Vec::new();
    if !s.online {
        blocked.push(Reason {
            code: "device_offline",
            message: "The cabinet is offline. 柜子离线".into(),
        });
    }
    if s.door != "closed" {
        blocked.push(Reason {
            code: "door_not_closed",
            message: "The cabinet's door is not closed. 柜门未关闭".into(),
        });
    }
    if let Some(code) = &s.fault_code {
        blocked.push(Reason {
            code: "device_faulted",
            message: format!("The cabinet reports a fault ({code}). 柜子故障"),
        });
    }
    if s.current_session.is_some() || s.pending_open_request.is_some() {
        blocked.push(Reason {
            code: "cabinet_busy",
            message: "Someone is shopping at this cabinet. 有人正在购物".into(),
        });
    }
    if !unpaid.is_empty() {
        blocked.push(Reason {
            code: "unpaid_order",
            message: "You have an order to pay first. 您有未支付的订单".into(),
        });
    }
    if planogram.is_none() {
        blocked.push(Reason {
            code: "cabinet_not_stocked",
            message: "This cabinet has no products set up yet. 柜子尚未上架".into(),
        });
    }
    let products = planogram
        .map(|p| {
            p.slots()
                .iter()
                .map(|slot| Product {
                    shelf: slot.shelf.get(),
                    name: slot.name.as_str().to_owned(),
                    unit_price_minor: slot.unit_price.minor(),
                    currency: slot.unit_price.currency().as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    let open_outcome = request.map(|r| {
        if s.pending_open_request == Some(r) {
            "pending".to_owned()
        } else if s.last_open_request == Some(r) {
            s.last_open_outcome
                .clone()
                .unwrap_or_else(|| "unknown".into())
        } else {
            "unknown".to_owned()
        }
    });
    Ok(CabinetView {
        device_id: s.device_id,
        label: s.label.clone(),
        site: s.site.clone(),
        online: s.online,
        door: s.door.clone(),
        can_open: blocked.is_empty(),
        blocked,
        products,
        unpaid_orders: unpaid,
        open_outcome,
    })
}

/// The cabinet as the shopper's home page shows it.
#[utoipa::path(get, path = "/m/api/cabinets/{device_id}", tag = "vending",
    params(("device_id" = Uuid, Path)),
    responses((status = 200, body = CabinetView), (status = 404, body = ErrorBody)))]
pub async fn cabinet(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(device_id): Path<String>,
    Query(q): Query<CabinetQuery>,
) -> Result<Json<CabinetView>, ApiError> {
    let device = parse_device(&device_id)?;
    let request = q
        .request
        .as_deref()
        .map(|r| {
            Uuid::parse_str(r).map_err(|_| {
                ApiError::bad_request("invalid_field", "request", "request: must be a UUID")
            })
        })
        .transpose()?;
    cabinet_view(&state, &device, &shopper, request)
        .await
        .map(Json)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Opening {
    pub session_id: Uuid,
    pub request_id: Uuid,
    pub deadline: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize)]
pub struct OpenQuery {
    /// The signature from the cabinet's sticker (`k` of its link).
    k: Option<String>,
}

/// "Open": asks the cabinet to unlock for this shopper. Exactly one of several shoppers
/// pressing at once gets the cabinet; the others are told it is busy.
///
/// Only someone standing at the cabinet may open it: the request carries the sticker's
/// signature (`?k=`, which the sticker landing hands on to the page), so knowing a cabinet's
/// id is not enough (403 `sticker_required` / `forged_cabinet_link`). A member opens one
/// cabinet at a time (409 `shopper_session_active` while their last opening still holds its
/// cabinet) and at most `LATCH_SHOPPER_OPENS_PER_MINUTE` times a minute (429 `too_many_opens`).
/// Every refusal is decided before anything is written.
#[utoipa::path(post, path = "/m/api/cabinets/{device_id}/open", tag = "vending",
    params(("device_id" = Uuid, Path), ("k" = String, Query, description = "the sticker's signature")),
    responses((status = 202, body = Opening), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn open(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(device_id): Path<String>,
    Query(q): Query<OpenQuery>,
) -> Result<(StatusCode, Json<Opening>), ApiError> {
    let device = parse_device(&device_id)?;
    state.vending.opens.check(shopper.user.as_str())?;
    super::opens::check_sticker(&state.vending.config, &device, q.k.as_deref())?;
    let unpaid = orders::queries::unpaid_of(&state.pool, shopper.user.as_str()).await?;
    if let Some(first) = unpaid.first() {
        return Err(ApiError::Conflict {
            code: "unpaid_order",
            message: format!("order {first} must be paid before opening a cabinet again"),
        });
    }
    let has_planogram = state
        .store
        .planograms
        .load(&device.to_string())
        .await?
        .is_some_and(|p| p.current.is_some());
    if !has_planogram {
        if !state.store.exists("device", &device.to_string()).await? {
            return Err(ApiError::NotFound {
                code: "cabinet_not_found",
                message: format!("no vending cabinet {device}"),
            });
        }
        return Err(ApiError::Conflict {
            code: "cabinet_not_stocked",
            message: "this cabinet has no products set up yet".into(),
        });
    }
    let session_id = Uuid::now_v7();
    // One opening at a time per member: claimed here, settled once the device has answered.
    let claim =
        super::opens::Claim::take(&state, shopper.user.as_str(), &device, session_id).await?;
    let now = state.clock.now();
    let command = DeviceCommand::RequestOpen {
        request_id: Uuid::now_v7(),
        deadline: now + state.open_timeout,
        shopper: Some(ShopperOpen {
            session_id,
            user: shopper.user.as_str().to_owned(),
        }),
        at: now,
    };
    let ctx = shopper_ctx(&shopper, Some(&device));
    let done = state
        .store
        .devices
        .execute(&device.to_string(), command.name(), command, &ctx)
        .await;
    claim.settle().await?;
    let done = done.map_err(|e| match e {
        CommandError::Rejected(DeviceError::NotRegistered) => ApiError::NotFound {
            code: "cabinet_not_found",
            message: format!("no vending cabinet {device}"),
        },
        CommandError::Rejected(DeviceError::OpenPending) => ApiError::Conflict {
            code: "cabinet_busy",
            message: "someone else is opening this cabinet".into(),
        },
        other => other.into(),
    })?;
    match done.events.first() {
        Some(latch_domain::device::DeviceEvent::DoorOpenRequested {
            request_id,
            deadline,
            ..
        }) => Ok((
            StatusCode::ACCEPTED,
            Json(Opening {
                session_id,
                request_id: *request_id,
                deadline: *deadline,
            }),
        )),
        other => Err(ApiError::Internal(format!("open produced {other:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Orders and payment

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
}

/// The shopper's orders, newest first.
#[utoipa::path(get, path = "/m/api/orders", tag = "vending",
    responses((status = 200, body = [OrderRow]), (status = 401, body = ErrorBody)))]
pub async fn my_orders(
    State(state): State<AppState>,
    shopper: Shopper,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<OrderRow>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    Ok(Json(
        orders::queries::by_user(&state.pool, shopper.user.as_str(), limit).await?,
    ))
}

async fn owned_order(state: &AppState, shopper: &Shopper, sid: Uuid) -> Result<OrderRow, ApiError> {
    match orders::queries::get(&state.pool, sid).await? {
        Some(r) if r.user_id == shopper.user.as_str() => Ok(r),
        _ => Err(ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid} of yours"),
        }),
    }
}

/// One of the shopper's orders, as it stands (the page polls this while the door is open).
#[utoipa::path(get, path = "/m/api/orders/{session_id}", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = OrderRow), (status = 404, body = ErrorBody)))]
pub async fn my_order(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<OrderRow>, ApiError> {
    let sid = parse_session(&session_id)?;
    owned_order(&state, &shopper, sid).await.map(Json)
}

async fn owned_session(
    state: &AppState,
    shopper: &Shopper,
    sid: Uuid,
) -> Result<ShoppingSession, ApiError> {
    match state.store.shopping_sessions.load(&sid.to_string()).await? {
        Some(s) if s.user.as_ref() == Some(&shopper.user) => Ok(s),
        _ => Err(ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid} of yours"),
        }),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PayRedirect {
    pub payment_id: Uuid,
    /// Send the shopper here (Kazaya's pay page).
    pub pay_url: String,
}

/// "Pay": starts (or resumes) the payment of an order at Kazaya.
#[utoipa::path(post, path = "/m/api/orders/{session_id}/pay", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = PayRedirect), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<PayRedirect>, ApiError> {
    let sid = parse_session(&session_id)?;
    let session = owned_session(&state, &shopper, sid).await?;
    let kazaya = state.vending.kazaya()?;
    let (payment_id, amount) = match &session.payment {
        // Pressed again, or back from Kazaya without paying: the same attempt, same pay page.
        PaymentState::Pending { payment_id, amount } => (*payment_id, *amount),
        PaymentState::Succeeded { .. } => {
            return Err(ApiError::Conflict {
                code: "payment_already_succeeded",
                message: "this order is already paid".into(),
            })
        }
        PaymentState::None => {
            let total = session.payable_total().ok_or_else(|| ApiError::Conflict {
                code: "order_not_payable",
                message: match session.stage {
                    SessionStage::NeedsReview => {
                        "this order is being reviewed; it can be paid once resolved".into()
                    }
                    SessionStage::Open => "the door is still open; the order is not ready".into(),
                    _ => "this order has nothing to pay".into(),
                },
            })?;
            let payment_id = Uuid::now_v7();
            let command = ShoppingCommand::RequestPayment {
                payment_id,
                amount: total,
                at: state.clock.now(),
            };
            let ctx = shopper_ctx(&shopper, session.device_id.as_ref());
            state
                .store
                .shopping_sessions
                .execute(&sid.to_string(), command.name(), command, &ctx)
                .await?;
            (payment_id, total)
        }
    };
    let request = payment_request(&state, sid, &session, payment_id, amount, &shopper.user);
    match kazaya
        .create_payment(&payment_id.to_string(), &request)
        .await
    {
        Ok(created) => Ok(Json(PayRedirect {
            payment_id,
            pay_url: created.pay_url,
        })),
        Err(e) => {
            // Kazaya said no, or could not be reached: free the order for another attempt.
            let reason = Label::parse(
                "reason",
                &e.to_string().chars().take(200).collect::<String>(),
                200,
            )
            .unwrap_or_else(|_| {
                Label::parse("reason", "payment could not start", 200).expect("label")
            });
            let command = ShoppingCommand::RecordPaymentFailed {
                payment_id,
                reason,
                at: state.clock.now(),
            };
            let ctx = shopper_ctx(&shopper, session.device_id.as_ref());
            if let Err(record) = state
                .store
                .shopping_sessions
                .execute(&sid.to_string(), command.name(), command, &ctx)
                .await
            {
                tracing::warn!(error = %record, "could not record the failed payment start");
            }
            Err(e.into())
        }
    }
}

/// What Latch asks Kazaya for: a pure function of the attempt, so asking again with the same
/// idempotency key is the same request and finds the same payment.
fn payment_request(
    state: &AppState,
    sid: Uuid,
    session: &ShoppingSession,
    payment_id: Uuid,
    amount: latch_domain::vending::Money,
    user: &KazayaUserId,
) -> crate::kazaya::PaymentRequest {
    let base = &state.vending.config.public_url;
    let device = session.device_id.map(|d| d.to_string()).unwrap_or_default();
    crate::kazaya::PaymentRequest {
        order_id: payment_id.to_string(),
        amount: amount.minor(),
        currency: amount.currency().as_str().to_owned(),
        description: format!("Latch vending order {sid}"),
        user_id: user.as_str().to_owned(),
        return_url: format!("{base}/m/orders/{sid}?cabinet={device}&returned=1"),
        notify_url: format!("{base}/kazaya/webhooks"),
    }
}

/// Back from Kazaya before its callback arrived: ask Kazaya how the payment stands and record
/// it (the callback, when it comes, then changes nothing).
#[utoipa::path(post, path = "/m/api/orders/{session_id}/sync", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sid = parse_session(&session_id)?;
    let session = owned_session(&state, &shopper, sid).await?;
    let PaymentState::Pending { payment_id, amount } = session.payment else {
        return Ok(Json(serde_json::json!({ "changed": false })));
    };
    let kazaya = state.vending.kazaya()?;
    // Kazaya knows the attempt by our idempotency key: the same request finds the same payment.
    let request = payment_request(&state, sid, &session, payment_id, amount, &shopper.user);
    let created = kazaya
        .create_payment(&payment_id.to_string(), &request)
        .await?;
    let status = kazaya.payment_status(&created.payment_id).await?;
    // Trust what Kazaya reports only for the payment we asked for, as the callback does: a
    // status of another order, amount or currency marks nothing paid.
    check_reported_payment(&created.payment_id, payment_id, amount, &status)?;
    let changed = record_outcome(&state, sid, payment_id, &status, None).await?;
    Ok(Json(serde_json::json!({ "changed": changed })))
}

/// Refuses (409 `payment_mismatch`, logged) a payment status that is not the attempt we
/// requested: another payment id, another order id (our attempt id), amount or currency.
fn check_reported_payment(
    asked_for: &str,
    payment_id: Uuid,
    amount: latch_domain::vending::Money,
    reported: &crate::kazaya::Payment,
) -> Result<(), ApiError> {
    let mut wrong = Vec::new();
    if reported.payment_id != asked_for {
        wrong.push("payment_id");
    }
    if reported.order_id != payment_id.to_string() {
        wrong.push("order_id");
    }
    if reported.amount != amount.minor() {
        wrong.push("amount");
    }
    if reported.currency != amount.currency().as_str() {
        wrong.push("currency");
    }
    if wrong.is_empty() {
        return Ok(());
    }
    tracing::error!(
        %payment_id,
        kazaya_payment = %reported.payment_id,
        expected_amount = amount.minor(),
        reported_amount = reported.amount,
        expected_currency = amount.currency().as_str(),
        reported_currency = %reported.currency,
        reported_order = %reported.order_id,
        mismatched = %wrong.join(","),
        "Kazaya reported a payment that is not the one requested; nothing recorded"
    );
    Err(ApiError::Conflict {
        code: "payment_mismatch",
        message: format!(
            "Kazaya's payment differs from the one requested in {}; nothing was recorded",
            wrong.join(", ")
        ),
    })
}

async fn record_outcome(
    state: &AppState,
    sid: Uuid,
    payment_id: Uuid,
    payment: &crate::kazaya::Payment,
    key: Option<IdempotencyKey>,
) -> Result<bool, ApiError> {
    use crate::kazaya::PaymentState as K;
    let now = state.clock.now();
    let command = match payment.status {
        K::Succeeded | K::Refunded => ShoppingCommand::RecordPaymentSucceeded {
            payment_id,
            provider_ref: ProviderRef::parse("payment_id", &payment.payment_id)?,
            at: now,
        },
        K::Failed => ShoppingCommand::RecordPaymentFailed {
            payment_id,
            reason: Label::parse("reason", "declined at Kazaya", 200)?,
            at: now,
        },
        _ => return Ok(false),
    };
    let mut ctx = CommandContext::new("system:kazaya");
    ctx.idempotency = key;
    let done = state
        .store
        .shopping_sessions
        .execute(&sid.to_string(), command.name(), command, &ctx)
        .await?;
    Ok(!done.replayed && !done.events.is_empty())
}

/// Kazaya's signed payment callbacks.
#[utoipa::path(post, path = "/kazaya/webhooks", tag = "vending",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> Result<StatusCode, ApiError> {
    let kazaya = state.vending.kazaya()?;
    let event = kazaya.verify_webhook(&headers, &body, state.clock.now())?;
    let span =
        tracing::info_span!("kazaya_webhook", webhook_id = %event.id, kind = event.kind.as_str());
    let _guard = span.enter();
    let data = &event.data;
    if matches!(
        event.kind,
        WebhookKind::RefundSucceeded | WebhookKind::Other(_)
    ) {
        // Refunds are recorded when we ask for them; unknown kinds are for a newer build.
        return Ok(StatusCode::NO_CONTENT);
    }
    let payment_id = Uuid::parse_str(&data.order_id).map_err(|_| ApiError::NotFound {
        code: "unknown_payment",
        message: format!("order_id {:?} is not a payment of ours", data.order_id),
    })?;
    // The orders model keeps every attempt's id. It lags the commit by milliseconds, while a
    // callback follows the shopper paying at Kazaya, and a miss is retried by Kazaya anyway.
    let Some(sid) = orders::queries::session_of_payment(&state.pool, payment_id).await? else {
        return Err(ApiError::NotFound {
            code: "unknown_payment",
            message: format!("no payment {payment_id}"),
        });
    };
    let session = state
        .store
        .shopping_sessions
        .load(&sid.to_string())
        .await?
        .unwrap_or_default();
    let requested = match &session.payment {
        PaymentState::Pending {
            payment_id: p,
            amount,
        } if *p == payment_id => Some(*amount),
        PaymentState::Succeeded {
            payment_id: p,
            amount,
            ..
        } if *p == payment_id => Some(*amount),
        _ => None,
    };
    if let Some(amount) = requested {
        if amount.minor() != data.amount || amount.currency().as_str() != data.currency {
            tracing::error!(
                expected = amount.minor(),
                got = data.amount,
                "callback amount differs"
            );
            return Err(ApiError::Conflict {
                code: "amount_mismatch",
                message: "the callback's amount is not what was requested".into(),
            });
        }
    }
    let key = IdempotencyKey::new("kazaya-webhook", &event.id, &body);
    let payment = crate::kazaya::Payment {
        payment_id: data.payment_id.clone(),
        order_id: data.order_id.clone(),
        amount: data.amount,
        currency: data.currency.clone(),
        status: match event.kind {
            WebhookKind::PaymentFailed => crate::kazaya::PaymentState::Failed,
            _ => data.status,
        },
        refunded_amount: data.refunded_amount,
        user_id: String::new(),
    };
    record_outcome(&state, sid, payment_id, &payment, Some(key)).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl Vending {
    pub fn new(
        config: super::VendingConfig,
        kazaya: Option<Arc<dyn Kazaya>>,
        clock: latch_domain::clock::SharedClock,
    ) -> Self {
        Self {
            opens: super::opens::OpenLimit::new(config.opens_per_minute, clock),
            config,
            kazaya,
            scans: super::scans::Scans::default(),
        }
    }
}
