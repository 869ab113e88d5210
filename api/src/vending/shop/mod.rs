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

mod cabinet;
mod checkout;
mod login;
mod shopper;
mod webhooks;

pub use cabinet::*;
pub use checkout::*;
pub use login::*;
pub use shopper::*;
pub use webhooks::*;

use crate::AppState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

const OAUTH_COOKIE: &str = "latch_oauth";
const SHOP_HTML: &str = include_str!("../../../../web/shop.html");
const SHOP_JS: &str = include_str!("../../../../web/shop.js");

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
            get(crate::vending::push::order_events),
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
