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

use crate::auth::{NewToken, Role};
use crate::error::{from_command_error, ApiError};
use crate::AppState;
use chrono::Utc;
use latch_domain::access::{ApiToken, RevokeReason, Subject, TokenCommand, TokenRole, TokenVia};
use latch_domain::store::{AggregateStore, CommandContext, DEFAULT_CONFLICT_RETRIES};
use sqlx::PgPool;

/// The domain's name for an API role.
pub fn token_role(role: Role) -> TokenRole {
    match role {
        Role::Operator => TokenRole::Operator,
        Role::User => TokenRole::User,
        Role::Auditor => TokenRole::Auditor,
        Role::Device => TokenRole::Device,
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
    pub token_id: uuid::Uuid,
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

/// Issues a token to someone with access to the installation (`latch token`, `latch dev`):
/// `TokenIssued` via `provisioned`, then the credential. Runs outside the API process, so it
/// builds its own command entry point on `pool`.
pub async fn provision(
    pool: &PgPool,
    role: Role,
    subject_raw: &str,
    actor: &str,
) -> Result<Issued, ApiError> {
    let tokens = AggregateStore::<ApiToken>::new(pool.clone(), DEFAULT_CONFLICT_RETRIES);
    let new = NewToken::generate();
    let command = TokenCommand::Issue {
        token_id: new.token_id,
        role: token_role(role),
        subject: subject(subject_raw)?,
        expires_at: None,
        via: TokenVia::Provisioned,
        at: Utc::now(),
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
    new.store(pool, role, subject_raw, None).await?;
    Ok(Issued {
        token: new.token,
        token_id: new.token_id,
    })
}
