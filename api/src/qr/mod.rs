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
//!
//! The files:
//! - `service`: the settings and the service kept in the app state (hub and limits);
//! - `mint`: the minting endpoints (picture, code, token);
//! - `secret`: the browser's secret cookie;
//! - `page`: the page's poll and push channel;
//! - `app`: the app's lock / confirm / cancel;
//! - `redeem`: redemption into a session, and `GET /me`;
//! - `fail`: the seed-shaped failure answer every endpoint uses;
//! - `client`: the caller's address and User-Agent;
//! - [`picture`]: drawing the QR PNG.

mod app;
mod client;
mod fail;
pub mod hub;
pub mod limits;
mod mint;
mod page;
pub mod picture;
mod redeem;
mod secret;
mod service;

pub use app::*;
pub use client::*;
pub use fail::*;
pub use mint::*;
pub use page::*;
pub use redeem::*;
pub use secret::*;
pub use service::*;

use crate::AppState;
use axum::routing::{get, post};
use axum::Router;

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
