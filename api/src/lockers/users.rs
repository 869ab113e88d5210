//! Locker users: registration, disabling and enabling by operators, and the password login that
//! issues their session token.

use super::passwords::{dummy_hash, hash_password, verify_password};
use super::{unprocessable, SUBJECT_PREFIX};
use crate::auth::{revoke_all_of, Actor, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::login_events::{self, LoginToken};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use latch_domain::access::LoginRefusal;
use latch_domain::device::Label;
use latch_domain::locker::{UserCommand, UserNumber};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    /// The user's phone number.
    pub user_number: String,
    pub name: String,
    pub password: String,
}

#[utoipa::path(post, path = "/lockers/users", tag = "lockers", request_body = RegisterUser, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let number = UserNumber::parse("user_number", &body.value.user_number)?;
    let name = Label::parse("name", &body.value.name, 80)?;
    let password = body.value.password.clone();
    if !(8..=128).contains(&password.chars().count()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "password",
            "must be 8-128 characters",
        ));
    }
    let ctx = meta.context(&actor, &body.raw);
    // A retry with the same key answers from the first request without hashing again.
    let password_hash = state
        .lockers
        .password_work(move || hash_password(&password))
        .await??;
    // The hash goes to the credentials table; the event names it by a fresh id. A command that
    // is then refused leaves an unreferenced row, which nothing reads.
    let credential_id = state
        .store
        .vault
        .put_password_hash(number.as_str(), &password_hash)
        .await?;
    let command = UserCommand::Register {
        number: number.clone(),
        name: name.clone(),
        credential_id,
        at: state.clock.now(),
    };
    state
        .store
        .locker_users
        .execute(number.as_str(), command.name(), command, &ctx)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_number": number.as_str(), "name": name.as_str(), "status": "active" })),
    ))
}

async fn user_status(
    state: AppState,
    actor: Actor,
    meta: RequestMeta,
    number: String,
    disable: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let number = UserNumber::parse("number", &number)?;
    let at = state.clock.now();
    let command = if disable {
        UserCommand::Disable { at }
    } else {
        UserCommand::Enable { at }
    };
    // `UserDisabled` revokes every session the user holds: their next request is 401
    // `token_revoked`. The rows are revoked both before the event (a crash after it cannot leave
    // a disabled user's token working) and after it (sweeping a token a login racing this one
    // stored meanwhile; the login re-checks the user after storing, see `check_login`).
    let subject = format!("{SUBJECT_PREFIX}{number}");
    if disable {
        revoke_all_of(&state.pool, Role::User, &subject).await?;
    }
    state
        .store
        .locker_users
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, b""),
        )
        .await?;
    if disable {
        let n = revoke_all_of(&state.pool, Role::User, &subject).await?;
        tracing::info!(user = %number, late = n, "locker user disabled; sessions revoked");
    }
    Ok(Json(json!({
        "user_number": number.as_str(),
        "status": if disable { "disabled" } else { "active" },
    })))
}

#[utoipa::path(post, path = "/lockers/users/{number}/disable", tag = "lockers", params(("number" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn disable_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user_status(state, actor, meta, number, true).await
}

#[utoipa::path(post, path = "/lockers/users/{number}/enable", tag = "lockers", params(("number" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn enable_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user_status(state, actor, meta, number, false).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user_number: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoggedIn {
    pub token: String,
    pub user_number: String,
    pub name: String,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/lockers/login", tag = "lockers", request_body = Login,
    responses((status = 200, body = LoggedIn), (status = 429, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: crate::qr::Client,
    body: JsonBody<Login>,
) -> Result<Json<LoggedIn>, ApiError> {
    check_login(&state, &body.value, client.ip).await.map(Json)
}

/// Checks a user number and password and issues a session token: what `POST /lockers/login`
/// answers, and what the phone pages' login turns into a cookie.
pub(crate) async fn check_login(
    state: &AppState,
    login: &Login,
    ip: std::net::IpAddr,
) -> Result<LoggedIn, ApiError> {
    let number = UserNumber::parse("user_number", &login.user_number)?;
    state.lockers.limits.login(ip, &number)?;
    let refused = || {
        unprocessable(
            "invalid_credentials",
            "password",
            "the user number or password is wrong",
        )
    };
    let user = state
        .store
        .locker_users
        .load(number.as_str())
        .await?
        .unwrap_or_default();
    let hash = match user.number {
        Some(_) => state.store.vault.password_hash(&user.credential_id).await?,
        None => None,
    };
    let password = login.password.clone();
    // An unknown number (or a user without a usable credential) is checked against a dummy
    // hash of the same cost, so the answer's timing does not tell which numbers are users.
    let matched = state
        .lockers
        .password_work(move || match hash {
            Some(hash) => verify_password(&password, &hash),
            None => {
                verify_password(&password, dummy_hash());
                false
            }
        })
        .await?;
    let ok = user.number.is_some() && matched;
    if !ok {
        let why = match user.number {
            Some(_) => LoginRefusal::InvalidCredentials,
            None => LoginRefusal::UnknownUser,
        };
        login_events::refused(state, ip, &number, why).await?;
        return Err(refused());
    }
    if !user.is_active() {
        login_events::refused(state, ip, &number, LoginRefusal::UserDisabled).await?;
        return Err(unprocessable(
            "user_disabled",
            "user_number",
            "this user is disabled",
        ));
    }
    let subject = format!("{SUBJECT_PREFIX}{number}");
    let session = state.lockers.settings.session;
    let LoginToken { token, expires_at } =
        login_events::succeeded(state, &number, &subject, session).await?;
    // A disable that committed while this login ran must not leave it a working token: either
    // it committed before this re-read (refused here, token revoked) or after the token was
    // stored (its own sweep revokes it).
    let now_user = state.store.locker_users.load(number.as_str()).await?;
    if !now_user.is_some_and(|u| u.is_active()) {
        state.auth.revoke(&token).await?;
        return Err(unprocessable(
            "user_disabled",
            "user_number",
            "this user is disabled",
        ));
    }
    Ok(LoggedIn {
        token,
        user_number: number.to_string(),
        name: user.name.map(|n| n.as_str().to_owned()).unwrap_or_default(),
        expires_at,
    })
}
