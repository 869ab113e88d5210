//! Locker password logins as facts: each checked attempt is one command on its own
//! `locker_login` stream (see `latch_domain::access::login`).
//!
//! A good login is ONE append: `LockerLoginSucceeded` carries the id, role, subject and expiry
//! of the token it issues (its stream id is that token id), and only then is the credential
//! stored. A refused one records why. Attempts over the per-number rate limit are answered 429
//! without an event: they are refused before any check, and recording each would let anyone
//! grow the log at request rate (the limit is logged instead). For the same reason refusals of
//! unknown numbers are recorded within a per-client-IP budget.
//!
//! Nothing here sees the password's hash and nothing recorded holds the password or the token.

use crate::auth::{NewToken, Role};
use crate::error::{from_command_error, ApiError};
use crate::tokens::subject;
use crate::AppState;
use chrono::{DateTime, Utc};
use latch_domain::access::{LoginCommand, LoginRefusal};
use latch_domain::locker::UserNumber;
use latch_domain::store::CommandContext;
use std::net::IpAddr;
use uuid::Uuid;

/// A token issued by a good login, with the expiry it was recorded with.
pub struct LoginToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Records a refused login. The caller answers the client as before (an unknown number looks
/// like a wrong password to them; the event tells auditors which it was).
///
/// Refusals for unknown numbers are recorded within a per-client-IP budget
/// ([`crate::auth::ANONYMOUS_REFUSALS_PER_MINUTE_PER_IP`]): the per-number rate limit bounds
/// attempts on real users, but anyone can try any number of numbers nobody holds.
pub async fn refused(
    state: &AppState,
    ip: IpAddr,
    number: &UserNumber,
    reason: LoginRefusal,
) -> Result<(), ApiError> {
    tracing::info!(user = %number, reason = reason.as_str(), "locker login refused");
    if reason == LoginRefusal::UnknownUser && !state.auth.admit_anonymous_refusal(ip) {
        tracing::warn!(%ip, "unknown-user login refusals over the per-IP limit: not recorded");
        return Ok(());
    }
    let command = LoginCommand::Refuse {
        user_number: number.clone(),
        reason,
        at: state.clock.now(),
    };
    let ctx = CommandContext::new("anonymous:locker-login");
    state
        .store
        .locker_logins
        .create(&Uuid::now_v7().to_string(), command.name(), command, &ctx)
        .await
        .map_err(from_command_error)?;
    Ok(())
}

/// Records a good login with the token it issues, then stores the token's credential.
pub async fn succeeded(
    state: &AppState,
    number: &UserNumber,
    subject_raw: &str,
    session: chrono::Duration,
) -> Result<LoginToken, ApiError> {
    let at = state.clock.now();
    let expires_at = at + session;
    let new = NewToken::generate();
    let command = LoginCommand::Succeed {
        user_number: number.clone(),
        token_id: new.token_id,
        subject: subject(subject_raw)?,
        expires_at,
        at,
    };
    let ctx = CommandContext::new(format!("user:{subject_raw}"));
    state
        .store
        .locker_logins
        .create(&new.token_id.to_string(), command.name(), command, &ctx)
        .await
        .map_err(from_command_error)?;
    new.store(&state.pool, Role::User, subject_raw, Some(expires_at))
        .await?;
    Ok(LoginToken {
        token: new.token,
        expires_at,
    })
}
