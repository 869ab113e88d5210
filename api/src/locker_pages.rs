//! The compartment holder's phone pages (`/lockers/app`, `web/lockers.html` + `lockers.js`) and
//! the cookie session they run on.
//!
//! The pages log in with `POST /lockers/page/login`, which checks the password exactly like
//! `POST /lockers/login` but keeps the session token in an `HttpOnly; SameSite=Strict` cookie
//! scoped to `/lockers`, so page script never sees it. The lockers endpoints a holder uses take
//! that cookie or a Bearer token ([`LockerCaller`]); a cookie-authenticated change must also
//! carry the `X-Latch-Client` header, which a cross-site form cannot send, like the shop pages.
//! API clients keep using Bearer tokens from `POST /lockers/login`.

use crate::auth::{bearer_or_cookie, Actor, Auth, CookieCaller, Role, CLIENT_HEADER};
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::lockers::users::{check_login, Login};
use crate::lockers::SUBJECT_PREFIX;
use crate::AppState;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{DateTime, Utc};
use latch_domain::access::RevokeReason;
use serde::Serialize;
use std::sync::Arc;

/// The locker session cookie: its own name, so a shopper's `latch_session` on the same phone
/// is neither replaced nor accepted here.
pub const LOCKER_COOKIE: &str = "latch_locker";
/// The cookie travels only with the lockers API and pages.
const COOKIE_PATH: &str = "/lockers";

const LOCKERS_HTML: &str = include_str!("../../web/lockers.html");
const LOCKERS_JS: &str = include_str!("../../web/lockers.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lockers/app", get(|| async { page() }))
        .route("/web/lockers.js", get(|| async { script() }))
        .route("/lockers/page/login", post(page_login))
        .route("/lockers/page/logout", post(page_logout))
        .route("/lockers/me", get(whoami))
}

fn page() -> Response {
    locked_down(LOCKERS_HTML)
}

/// A page of ours with the headers every one gets: no caching, the pages' CSP, no framing.
pub(crate) fn locked_down(html: &'static str) -> Response {
    let mut res = Html(html).into_response();
    let h = res.headers_mut();
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
    res
}

fn script() -> Response {
    script_of(LOCKERS_JS)
}

/// A page script, revalidated on each load.
pub(crate) fn script_of(js: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        js,
    )
        .into_response()
}

/// A locker user (or, by Bearer, any token holder; handlers check the role): from a Bearer
/// header, or from the pages' cookie. Cookie-authenticated changes need [`CLIENT_HEADER`].
pub struct LockerCaller(pub Actor);

impl CookieCaller for LockerCaller {
    const COOKIE: &'static str = LOCKER_COOKIE;

    fn admit(actor: Actor, by_cookie: bool) -> Result<Self, ApiError> {
        // Only a locker user's session may ride in this cookie.
        if by_cookie && (actor.role != Role::User || !actor.subject.starts_with(SUBJECT_PREFIX)) {
            return Err(ApiError::Unauthorized);
        }
        Ok(Self(actor))
    }
}

impl<S> FromRequestParts<S> for LockerCaller
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_or_cookie(parts, state).await
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(LOCKER_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 200)
}

fn require_client_header(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(CLIENT_HEADER) {
        Ok(())
    } else {
        // Without it a cross-site form could log the phone into someone else's account.
        Err(ApiError::Forbidden(format!(
            "the page login needs the {CLIENT_HEADER} header"
        )))
    }
}

/// What the pages learn about their session (never the token itself).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageSession {
    pub user_number: String,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The pages' login: the same checks and limits as `POST /lockers/login`; the token goes into
/// the HttpOnly cookie.
#[utoipa::path(post, path = "/lockers/page/login", tag = "lockers", request_body = Login,
    params(("X-Latch-Client" = String, Header, description = "any value; required")),
    responses((status = 200, body = PageSession), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
               (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn page_login(
    State(state): State<AppState>,
    client: crate::qr::Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: JsonBody<Login>,
) -> Result<(CookieJar, Json<PageSession>), ApiError> {
    require_client_header(&headers)?;
    let logged = check_login(&state, &body.value, client.ip).await?;
    let max_age = (logged.expires_at - state.clock.now()).num_seconds().max(0);
    let cookie = Cookie::build((LOCKER_COOKIE, logged.token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(COOKIE_PATH)
        .secure(state.vending.config.secure_cookies)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build();
    Ok((
        jar.add(cookie),
        Json(PageSession {
            user_number: logged.user_number,
            name: logged.name,
            expires_at: Some(logged.expires_at),
        }),
    ))
}

/// Ends the page's session: the token is revoked and the cookie cleared.
#[utoipa::path(post, path = "/lockers/page/logout", tag = "lockers",
    params(("X-Latch-Client" = String, Header, description = "any value; required")),
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn page_logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<(CookieJar, StatusCode), ApiError> {
    require_client_header(&headers)?;
    if let Some(token) = cookie_token(&headers) {
        crate::tokens::revoke(&state, &token, RevokeReason::Logout).await?;
    }
    let gone = Cookie::build((LOCKER_COOKIE, "")).path(COOKIE_PATH).build();
    Ok((jar.remove(gone), StatusCode::NO_CONTENT))
}

/// The logged-in locker user (the pages ask this first to choose between login and home).
#[utoipa::path(get, path = "/lockers/me", tag = "lockers",
    responses((status = 200, body = PageSession), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
) -> Result<Json<PageSession>, ApiError> {
    actor.require(Role::User)?;
    let number = actor
        .subject
        .strip_prefix(SUBJECT_PREFIX)
        .ok_or_else(|| ApiError::Forbidden("this needs a locker user's token".into()))?;
    let name = latch_projections::lockers::queries::user_name(&state.pool, number).await?;
    Ok(Json(PageSession {
        user_number: number.to_owned(),
        name: name.unwrap_or_default(),
        expires_at: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_nothing_inline_the_policy_would_block() {
        crate::pages::assert_nothing_inline(LOCKERS_HTML, LOCKERS_JS);
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
}
