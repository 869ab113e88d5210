//! The phone app's side: `POST /qr/lock`, `/qr/activate` and `/qr/cancel`, commands on the
//! login's own stream by the app user (Bearer token), limited per user.

use super::client::browser_summary;
use super::fail::{too_many, QrFail};
use crate::auth::{Actor, Role};
use crate::error::ApiError;
use crate::extract::{JsonBody, RequestMeta};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use latch_domain::qr_login::{Ext, LoginOrigin, QrLoginCommand, QrToken};
use serde::Deserialize;
use serde_json::json;

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
