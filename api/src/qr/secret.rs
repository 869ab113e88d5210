//! The minting browser's secret: the HttpOnly `latch_qr` cookie that carries it, and reading
//! it back. Polls, the push channel and redemption recognise a browser by it alone.

use crate::error::ApiError;
use crate::AppState;
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use latch_domain::qr_login::BrowserSecret;

/// The cookie holding the minting browser's secret.
pub const SECRET_COOKIE: &str = "latch_qr";

pub(super) fn secret_cookie(state: &AppState, secret: &BrowserSecret) -> Cookie<'static> {
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

pub(super) fn time_duration(d: chrono::Duration) -> cookie::time::Duration {
    cookie::time::Duration::seconds(d.num_seconds())
}

/// The browser's secret from its cookie.
pub(super) fn browser_secret(jar: &CookieJar) -> Result<BrowserSecret, ApiError> {
    let cookie = jar.get(SECRET_COOKIE).ok_or(ApiError::Unprocessable {
        code: "no_browser_secret",
        message:
            "this browser has no QR login in progress (no latch_qr cookie); load a QR code first"
                .into(),
        field: Some(SECRET_COOKIE.into()),
    })?;
    Ok(BrowserSecret::parse(SECRET_COOKIE, cookie.value())?)
}
