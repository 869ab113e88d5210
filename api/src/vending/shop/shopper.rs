//! Who is shopping: a `user` token whose subject is `kazaya:<member id>`, from a Bearer header
//! or the session cookie.

use crate::auth::{bearer_or_cookie, Actor, Auth, CookieCaller, Role, SESSION_COOKIE};
use crate::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use latch_domain::device::DeviceId;
use latch_domain::store::CommandContext;
use latch_domain::vending::KazayaUserId;
use std::sync::Arc;

/// A logged-in shopper: a `user` token whose subject is `kazaya:<member id>`, from a Bearer
/// header or the session cookie (cookie writes need [`crate::auth::CLIENT_HEADER`]).
#[derive(Debug, Clone)]
pub struct Shopper {
    pub actor: Actor,
    pub user: KazayaUserId,
}

pub(crate) fn owns(actor: &Actor, user_id: &str) -> bool {
    actor.role == Role::User && actor.subject.strip_prefix("kazaya:") == Some(user_id)
}

pub(super) fn shopper_of(actor: Actor) -> Result<Shopper, ApiError> {
    let user = match (actor.role, actor.subject.strip_prefix("kazaya:")) {
        (Role::User, Some(id)) => KazayaUserId::parse("user", id)
            .map_err(|_| ApiError::Forbidden("this needs a shopper's session".into()))?,
        _ => return Err(ApiError::Forbidden("this needs a shopper's session".into())),
    };
    Ok(Shopper { actor, user })
}

impl CookieCaller for Shopper {
    const COOKIE: &'static str = SESSION_COOKIE;

    /// Any door: a token that is not a shopper's is refused alike (403).
    fn admit(actor: Actor, _by_cookie: bool) -> Result<Self, ApiError> {
        shopper_of(actor)
    }
}

impl<S> FromRequestParts<S> for Shopper
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_or_cookie(parts, state).await
    }
}

pub(super) fn shopper_ctx(shopper: &Shopper, device: Option<&DeviceId>) -> CommandContext {
    let ctx = CommandContext::new(shopper.actor.to_string());
    match device {
        Some(d) => ctx.with_device(d.to_string()),
        None => ctx,
    }
}
