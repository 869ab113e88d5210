//! Handing a compartment on: directly to another user, or through an authorizer; and each grant's
//! state.

use super::{me, parse_time, unprocessable};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use latch_domain::device::SiteCode;
use latch_domain::locker::compartment::Status;
use latch_domain::locker::{
    Authorizer, AuthorizerNumber, Compartment, CompartmentCommand, CompartmentError,
    CompartmentEvent, CompartmentId, CompartmentNumber, GrantCommand, GrantTarget, LockerUser,
    Size, UserNumber,
};
use latch_domain::store::{CommandError, Store};
use latch_projections::lockers::queries::{self, GrantRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantDirect {
    pub site: String,
    pub compartment: String,
    /// The receiver's user number.
    pub receiver: String,
    /// RFC 3339, with `window_end`: hand on only [window_start, window_end), a part of the
    /// window the caller holds now; they keep the rest. Default: the whole current window.
    pub window_start: Option<String>,
    /// RFC 3339 (exclusive), with `window_start`.
    pub window_end: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantOutcome {
    pub grant_id: Uuid,
    pub compartment_id: String,
    pub status: String,
    pub holder: String,
    /// The part of the window handed on.
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
}

/// The receiver must exist and be active.
pub(super) async fn active_receiver(
    store: &Store,
    receiver: &UserNumber,
    field: &str,
) -> Result<LockerUser, ApiError> {
    match store.locker_users.load(receiver.as_str()).await? {
        None => Err(unprocessable(
            "receiver_not_found",
            field,
            format!("no user {receiver}"),
        )),
        Some(u) if !u.is_active() => Err(unprocessable(
            "receiver_disabled",
            field,
            format!("user {receiver} is disabled"),
        )),
        Some(u) => Ok(u),
    }
}

/// The compartment, which `holder` must hold at `now` (inside a window of theirs).
async fn held(
    store: &Store,
    id: &CompartmentId,
    holder: &UserNumber,
    now: DateTime<Utc>,
) -> Result<Compartment, ApiError> {
    let compartment = store
        .compartments
        .load(&id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "compartment_not_found",
            message: format!("no compartment {id}"),
        })?;
    if !compartment.held_by(holder, now)
        && compartment.status != Status::Occupied
        && compartment.booked_later(holder, now)
    {
        return Err(ApiError::Conflict {
            code: "outside_window",
            message: format!("{holder}'s window on compartment {id} has not begun"),
        });
    }
    if !compartment.held_by(holder, now) {
        return Err(ApiError::Conflict {
            code: "not_the_holder",
            message: format!("{holder} does not hold compartment {id}"),
        });
    }
    Ok(compartment)
}

#[utoipa::path(post, path = "/lockers/grants", tag = "lockers", request_body = GrantDirect, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = GrantOutcome), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn grant_direct(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<GrantDirect>,
) -> Result<(StatusCode, Json<GrantOutcome>), ApiError> {
    let holder = me(&actor)?;
    let id = CompartmentId::new(
        SiteCode::parse("site", &body.value.site)?,
        CompartmentNumber::parse("compartment", &body.value.compartment)?,
    );
    let receiver = UserNumber::parse("receiver", &body.value.receiver)?;
    let window = match (
        parse_time("window_start", &body.value.window_start)?,
        parse_time("window_end", &body.value.window_end)?,
    ) {
        (Some(start), Some(end)) => Some((start, end)),
        (None, None) => None,
        (start, _) => {
            let missing = if start.is_some() {
                "window_end"
            } else {
                "window_start"
            };
            return Err(unprocessable(
                "invalid_grant_window",
                missing,
                "window_start and window_end go together",
            ));
        }
    };
    state.lockers.limits.grant(&holder, &id)?;
    if receiver == holder {
        return Err(unprocessable(
            "grant_to_self",
            "receiver",
            "a compartment cannot be granted to its own holder",
        ));
    }
    active_receiver(&state.store, &receiver, "receiver").await?;
    // The one command (it refuses a caller who does not hold the compartment): the compartment's holder changes (`HolderChanged`, via no authorizer).
    // The grant's row in the read model, the notices and the SMS all follow from that event.
    let command = CompartmentCommand::Grant {
        grant_id: Uuid::now_v7(),
        from: holder.clone(),
        to: receiver.clone(),
        via: None,
        window,
        at: state.clock.now(),
    };
    let done = match state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await
    {
        Err(CommandError::Rejected(e @ CompartmentError::BadGrantWindow)) => {
            return Err(unprocessable(e.code(), "window_start", e.to_string()))
        }
        other => other?,
    };
    let (grant_id, window_start, window_end) = done
        .events
        .iter()
        .find_map(|e| match e {
            CompartmentEvent::HolderChanged {
                grant_id,
                window_start,
                window_end,
                ..
            } => Some((*grant_id, *window_start, *window_end)),
            _ => None,
        })
        .ok_or_else(|| ApiError::Internal("grant produced no holder change".into()))?;
    Ok((
        StatusCode::CREATED,
        Json(GrantOutcome {
            grant_id,
            compartment_id: id.to_string(),
            status: "completed".into(),
            holder: receiver.to_string(),
            window_start,
            window_end,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantViaAuthorizer {
    pub site: String,
    pub compartment: String,
    /// The authorizer's number, e.g. `0001`.
    pub authorizer: String,
}

#[utoipa::path(post, path = "/lockers/grants/via-authorizer", tag = "lockers", request_body = GrantViaAuthorizer, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn grant_via_authorizer(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<GrantViaAuthorizer>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let holder = me(&actor)?;
    let id = CompartmentId::new(
        SiteCode::parse("site", &body.value.site)?,
        CompartmentNumber::parse("compartment", &body.value.compartment)?,
    );
    let number = AuthorizerNumber::parse("authorizer", &body.value.authorizer)?;
    state.lockers.limits.grant(&holder, &id)?;
    active_authorizer(&state.store, &number, "authorizer").await?;
    let now = state.clock.now();
    let compartment = held(&state.store, &id, &holder, now).await?;
    let grant_id = Uuid::now_v7();
    let deadline = now + state.lockers.settings.grant_timeout;
    let command = GrantCommand::Request {
        grant_id,
        compartment: id.clone(),
        size: compartment.size.unwrap_or(Size::Medium),
        requester: holder.clone(),
        target: GrantTarget::Authorizer {
            authorizer: number.clone(),
        },
        deadline,
        at: now,
    };
    let done = state
        .store
        .grants
        .create(
            &grant_id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    // The grant-delivery worker sends the request from the logged event, not from here: a
    // crash after the commit must not lose it.
    let Some(latch_domain::locker::GrantEvent::GrantRequested {
        grant_id, deadline, ..
    }) = done.events.first().cloned()
    else {
        return Err(ApiError::Internal("grant request produced no event".into()));
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "grant_id": grant_id,
            "compartment_id": id.to_string(),
            "authorizer": number.as_str(),
            "status": "requested",
            "deadline": deadline,
        })),
    ))
}

async fn active_authorizer(
    store: &Store,
    number: &AuthorizerNumber,
    field: &str,
) -> Result<Authorizer, ApiError> {
    match store.authorizers.load(number.as_str()).await? {
        None => Err(ApiError::NotFound {
            code: "authorizer_not_found",
            message: format!("no authorizer {number}"),
        }),
        Some(a) if !a.is_active() => Err(unprocessable(
            "authorizer_inactive",
            field,
            format!("authorizer {number} is not active"),
        )),
        Some(a) => Ok(a),
    }
}

/// A grant request's state (its requester, or an operator).
#[utoipa::path(get, path = "/lockers/grants/{grant_id}", tag = "lockers", params(("grant_id" = Uuid, Path)),
    responses((status = 200, body = GrantRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_grant(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    Path(grant_id): Path<String>,
) -> Result<Json<GrantRow>, ApiError> {
    let grant_id = Uuid::parse_str(&grant_id)
        .map_err(|_| ApiError::bad_request("invalid_field", "grant_id", "must be a UUID"))?;
    let row = queries::grant(&state.pool, grant_id).await?;
    let not_found = || ApiError::NotFound {
        code: "grant_not_found",
        message: format!("no grant request {grant_id}"),
    };
    let row = row.ok_or_else(not_found)?;
    if actor.role != Role::Operator && me(&actor)?.as_str() != row.requester {
        return Err(not_found());
    }
    Ok(Json(row))
}

/// Open grant requests read at most, per request.
const OPEN_GRANTS_SHOWN: i64 = 500;

/// Grant requests not settled yet (`requested` or `accepted`), oldest first, at most 500
/// (operators).
#[utoipa::path(get, path = "/lockers/grants", tag = "lockers",
    responses((status = 200, body = [GrantRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn open_grants(
    State(state): State<AppState>,
    crate::ops_pages::OpsCaller(actor): crate::ops_pages::OpsCaller,
) -> Result<Json<Vec<GrantRow>>, ApiError> {
    actor.require(Role::Operator)?;
    Ok(Json(
        queries::open_grants(&state.pool, OPEN_GRANTS_SHOWN).await?,
    ))
}
