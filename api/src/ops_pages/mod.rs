//! The operator console (`/ops`, `web/ops.html` + `ops.js`) and the cookie session it runs on.
//!
//! Operators log in by pasting an operator token (`latch token --role operator`); `POST
//! /ops/login` checks it and keeps it in an `HttpOnly; SameSite=Strict` cookie, so page script
//! never holds it after the login form. The endpoints the console reads and changes take that
//! cookie or a Bearer token ([`OpsCaller`]); only an operator's token may ride in the cookie,
//! and a cookie-authenticated change must carry the `X-Latch-Client` header, which a cross-site
//! form cannot send. Logging out clears the cookie but does not revoke the token: it is the
//! operator's own credential, which they may use elsewhere (`latch token revoke` ends it).
//!
//! What changed is pushed over `GET /ops/live` ([`live`]), fed from the log; the page then
//! re-reads that screen from the ordinary JSON endpoints.

pub mod live;

use crate::auth::{bearer_or_cookie, Actor, Auth, CookieCaller, Role, CLIENT_HEADER};
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::locker_pages::{locked_down, script_of};
use crate::AppState;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The console's session cookie: its own name, so no other page's session is taken for an
/// operator's.
pub const OPS_COOKIE: &str = "latch_ops";
/// The console reads devices, orders, lockers and dead letters, which live under several
/// prefixes; `SameSite=Strict` and the client header keep it from being ridden cross-site.
const COOKIE_PATH: &str = "/";

const OPS_HTML: &str = include_str!("../../../web/ops.html");
const OPS_JS: &str = include_str!("../../../web/ops.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ops", get(|| async { page() }))
        .route("/web/ops.js", get(|| async { script_of(OPS_JS) }))
        .route("/ops/login", post(login))
        .route("/ops/logout", post(logout))
        .route("/ops/me", get(whoami))
        .route("/ops/live", get(live::live))
}

fn page() -> Response {
    locked_down(OPS_HTML)
}

/// An operator by the console's cookie, or any token holder by Bearer (handlers check the
/// role, as they always did). Cookie-authenticated changes need [`CLIENT_HEADER`].
pub struct OpsCaller(pub Actor);

impl CookieCaller for OpsCaller {
    const COOKIE: &'static str = OPS_COOKIE;

    fn admit(actor: Actor, by_cookie: bool) -> Result<Self, ApiError> {
        // The login only ever stores an operator's token here; anything else is not ours.
        if by_cookie && actor.role != Role::Operator {
            return Err(ApiError::Unauthorized);
        }
        Ok(Self(actor))
    }
}

impl<S> FromRequestParts<S> for OpsCaller
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_or_cookie(parts, state).await
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsLogin {
    /// An operator token (`latch token --role operator`).
    pub token: String,
}

/// Who the console is logged in as (never the token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpsSession {
    pub role: String,
    pub subject: String,
}

fn require_client_header(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(CLIENT_HEADER) {
        Ok(())
    } else {
        // Without it a cross-site form could log the console into someone else's session.
        Err(ApiError::Forbidden(format!(
            "the console login needs the {CLIENT_HEADER} header"
        )))
    }
}

/// The console's login: the token must be a live operator token; it goes into the HttpOnly
/// cookie (a browser-session cookie: it ends with the browser, or at logout).
#[utoipa::path(post, path = "/ops/login", tag = "ops", request_body = OpsLogin,
    params(("X-Latch-Client" = String, Header, description = "any value; required")),
    responses((status = 200, body = OpsSession), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
               (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    body: JsonBody<OpsLogin>,
) -> Result<(CookieJar, Json<OpsSession>), ApiError> {
    require_client_header(&headers)?;
    let token = body.value.token.trim();
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "token",
            "token: an operator token (1 to 200 characters)",
        ));
    }
    let actor = state.auth.authenticate(token).await?;
    actor.require(Role::Operator)?;
    let cookie = Cookie::build((OPS_COOKIE, token.to_owned()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(COOKIE_PATH)
        .secure(state.vending.config.secure_cookies)
        .build();
    Ok((
        jar.add(cookie),
        Json(OpsSession {
            role: actor.role.as_str().to_owned(),
            subject: actor.subject,
        }),
    ))
}

/// Ends the console's session: the cookie is cleared (the token itself stays valid).
#[utoipa::path(post, path = "/ops/logout", tag = "ops",
    params(("X-Latch-Client" = String, Header, description = "any value; required")),
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn logout(
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<(CookieJar, StatusCode), ApiError> {
    require_client_header(&headers)?;
    let gone = Cookie::build((OPS_COOKIE, "")).path(COOKIE_PATH).build();
    Ok((jar.remove(gone), StatusCode::NO_CONTENT))
}

/// The logged-in operator (the page asks this first to choose between login and console).
#[utoipa::path(get, path = "/ops/me", tag = "ops",
    responses((status = 200, body = OpsSession), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(OpsCaller(actor): OpsCaller) -> Result<Json<OpsSession>, ApiError> {
    actor.require(Role::Operator)?;
    Ok(Json(OpsSession {
        role: actor.role.as_str().to_owned(),
        subject: actor.subject,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_nothing_inline_the_policy_would_block() {
        crate::pages::assert_nothing_inline(OPS_HTML, OPS_JS);
    }

    #[test]
    fn the_page_is_locked_down() {
        let res = page();
        let h = res.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    }

    #[test]
    fn only_an_operator_rides_in_the_cookie() {
        let as_role = |role| Actor {
            role,
            subject: "x".into(),
        };
        assert!(OpsCaller::admit(as_role(Role::Operator), true).is_ok());
        assert!(OpsCaller::admit(as_role(Role::User), true).is_err());
        assert!(OpsCaller::admit(as_role(Role::Auditor), true).is_err());
        // By Bearer the handler decides, as before the console existed.
        assert!(OpsCaller::admit(as_role(Role::User), false).is_ok());
    }
}
