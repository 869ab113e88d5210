//! Turning a confirmed login into a web session: `GET /qr/redeem` spends the login and sets the
//! session cookie, and `GET /me` says whose session it is.

use super::fail::refusal;
use super::secret::{browser_secret, time_duration, SECRET_COOKIE};
use crate::auth::{NewToken, Role, SessionActor};
use crate::error::ApiError;
use crate::extract::{Query, RequestMeta};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use latch_domain::qr_login::QrLoginCommand;
use latch_domain::store::{CommandContext, CommandError};
use serde::Deserialize;
use serde_json::{json, Value};

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
