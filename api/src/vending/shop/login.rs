//! The sticker and the login: `GET /m/c/{cabinet}?k=...` and Kazaya's OAuth2 return to
//! `GET /m/auth/callback`.

use crate::auth::{NewToken, Role, SESSION_COOKIE};
use crate::error::{from_command_error, ApiError};
use crate::extract::Query;
use crate::kazaya::{KazayaError, Pkce};
use crate::vending::scans;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use hmac::{Hmac, Mac};
use latch_domain::device::DeviceId;
use latch_domain::store::CommandContext;
use latch_domain::vending::{KazayaUserId, MemberCommand, Profile, ScanVerdict, Session};
use rand::RngCore;
use serde::Deserialize;
use sha2::Sha256;

use super::shopper::shopper_of;
use super::{notice, OAUTH_COOKIE};

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
/// per-IP limit of [`crate::vending::scans`].
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
fn cabinet_page(config: &crate::vending::VendingConfig, device: &DeviceId) -> String {
    format!(
        "/m/cabinet/{device}?k={}",
        crate::vending::sticker::signature(&config.sticker_key, device)
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
