//! Tokens as facts: each issue and revocation is one command on the `api_token` aggregate,
//! appended before the credential row in `api_tokens` changes.
//!
//! The row is what requests are authenticated against (like a secrets table, it holds only the
//! token's hash); the event names the token by its id, with role, subject and expiry. Ordering
//! the event first means the log never misses a working token: a crash after the event and
//! before the row leaves a recorded token nobody holds (issue) or one still working until the
//! retried logout, which then records nothing new and revokes the row (revocation).
//!
//! Tokens that come out of another fact are issued by that fact's own command, with the token
//! id in its event, so the request stays one command: a locker login
//! ([`crate::login_events`]), a QR-login redemption (`QrLoginRedeemed.session_id`) and a
//! shopper's Kazaya login (`MemberAuthorized.session`).

use crate::auth::{NewToken, Role, CLIENT_HEADER, SESSION_COOKIE};
use crate::error::{from_command_error, ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar};
use chrono::Utc;
use latch_domain::access::{ApiToken, RevokeReason, Subject, TokenCommand, TokenRole, TokenVia};
use latch_domain::store::{AggregateStore, CommandContext, DEFAULT_CONFLICT_RETRIES};
use sqlx::PgPool;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/logout", post(logout))
}

/// Ends a web session (the `latch_session` cookie of a QR login or a shopper's Kazaya login),
/// or, with a Bearer header, that token: the token is revoked server-side (`TokenRevoked`,
/// reason `logout`) and the cookie cleared, so a copy of the old cookie is refused (401
/// `token_revoked`). A cookie logout needs the `X-Latch-Client` header, so a cross-site form
/// cannot log anyone out. Logging out twice, or without a session, is a 204 that changes
/// nothing.
#[utoipa::path(post, path = "/logout", tag = "qr login",
    params(("X-Latch-Client" = Option<String>, Header, description = "any value; required with the cookie")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<(CookieJar, StatusCode), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .map(str::to_owned);
    let token = match bearer {
        Some(t) => Some(t),
        None => {
            if !headers.contains_key(CLIENT_HEADER) {
                return Err(ApiError::Forbidden(format!(
                    "a cookie logout needs the {CLIENT_HEADER} header"
                )));
            }
            jar.get(SESSION_COOKIE)
                .map(|c| c.value().to_owned())
                .filter(|t| !t.is_empty() && t.len() <= 200)
        }
    };
    if let Some(token) = token {
        revoke(&state, &token, RevokeReason::Logout).await?;
    }
    let gone = Cookie::build((SESSION_COOKIE, "")).path("/").build();
    Ok((jar.remove(gone), StatusCode::NO_CONTENT))
}

/// The domain's name for an API role.
pub fn token_role(role: Role) -> TokenRole {
    match role {
        Role::Operator => TokenRole::Operator,
        Role::User => TokenRole::User,
        Role::Auditor => TokenRole::Auditor,
        Role::Device => TokenRole::Device,
        Role::Kiosk => TokenRole::Kiosk,
    }
}

/// A token subject as the domain takes it. Subjects are built by Latch itself, so a bad one is
/// a bug, not a client mistake.
pub fn subject(raw: &str) -> Result<Subject, ApiError> {
    Subject::parse("subject", raw).map_err(|e| ApiError::Internal(format!("token subject: {e:?}")))
}

/// A token issued: the secret to hand over once, and its id.
pub struct Issued {
    pub token: String,
    pub token_id: Uuid,
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

/// Revokes `token` if it is live: `TokenRevoked` first, then the row (and this process's
/// lookup cache). An unknown or already revoked token changes nothing. The token's holder is
/// the actor: only they can present it.
pub async fn revoke(state: &AppState, token: &str, reason: RevokeReason) -> Result<(), ApiError> {
    let Some(live) = state.auth.lookup(token).await? else {
        return Ok(());
    };
    let command = TokenCommand::Revoke {
        token_id: live.token_id,
        role: token_role(live.actor.role),
        subject: subject(&live.actor.subject)?,
        reason,
        at: state.clock.now(),
    };
    state
        .store
        .api_tokens
        .execute(
            &live.token_id.to_string(),
            command.name(),
            command,
            &CommandContext::new(live.actor.to_string()),
        )
        .await
        .map_err(from_command_error)?;
    state.auth.revoke(token).await?;
    Ok(())
}

/// How long a provisioned token lasts unless `latch token --ttl` says otherwise
/// (`LATCH_TOKEN_TTL_SECS`): 30 days.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// Issues a token to someone with access to the installation (`latch token`, `latch dev`):
/// `TokenIssued` via `provisioned`, then the credential. It expires after `ttl` (`None`: never,
/// for fixtures only; people always get an expiry) counted from `now`. Runs outside the API
/// process, so it builds its own command entry point on `pool`.
pub async fn provision(
    pool: &PgPool,
    role: Role,
    subject_raw: &str,
    actor: &str,
    ttl: Option<std::time::Duration>,
    now: chrono::DateTime<Utc>,
) -> Result<Issued, ApiError> {
    let tokens = AggregateStore::<ApiToken>::new(pool.clone(), DEFAULT_CONFLICT_RETRIES);
    let new = NewToken::generate();
    let expires_at = ttl
        .map(|t| {
            chrono::Duration::from_std(t)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| ApiError::bad_request("invalid_field", "ttl", "ttl: too long"))
        })
        .transpose()?;
    let command = TokenCommand::Issue {
        token_id: new.token_id,
        role: token_role(role),
        subject: subject(subject_raw)?,
        expires_at,
        via: TokenVia::Provisioned,
        at: now,
    };
    tokens
        .create(
            &new.token_id.to_string(),
            command.name(),
            command,
            &CommandContext::new(actor),
        )
        .await
        .map_err(from_command_error)?;
    new.store(pool, role, subject_raw, expires_at).await?;
    Ok(Issued {
        token: new.token,
        token_id: new.token_id,
        expires_at,
    })
}

/// Revokes the token named `token_id` (`latch token revoke`): `TokenRevoked` (reason
/// `revoked`), then the credential row, after which every API process refuses it on the next
/// request. An already revoked token records nothing new; an unknown id is an error.
pub async fn revoke_by_id(pool: &PgPool, token_id: Uuid, actor: &str) -> Result<(), ApiError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT role, subject FROM api_tokens WHERE token_id = $1")
            .bind(token_id)
            .fetch_optional(pool)
            .await?;
    let (role, subject_raw) = row.ok_or_else(|| ApiError::NotFound {
        code: "token_not_found",
        message: format!("no token {token_id}"),
    })?;
    let role = Role::parse(&role).ok_or_else(|| ApiError::Internal(format!("role {role:?}")))?;
    let tokens = AggregateStore::<ApiToken>::new(pool.clone(), DEFAULT_CONFLICT_RETRIES);
    let command = TokenCommand::Revoke {
        token_id,
        role: token_role(role),
        subject: subject(&subject_raw)?,
        reason: RevokeReason::Revoked,
        at: Utc::now(),
    };
    tokens
        .execute(
            &token_id.to_string(),
            command.name(),
            command,
            &CommandContext::new(actor),
        )
        .await
        .map_err(from_command_error)?;
    crate::auth::revoke_by_id(pool, token_id).await?;
    Ok(())
}
