//! A user's own side: reserving a compartment by size for a time window, what they hold (now and
//! later), their inbox.

use super::{me, parse_time, unprocessable};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use cqrs_es::Aggregate;
use latch_domain::device::SiteCode;
use latch_domain::locker::{Compartment, CompartmentCommand, CompartmentError, Size};
use latch_domain::store::CommandError;
use latch_projections::lockers::queries::{self as model, CompartmentRow, InboxItem};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    pub site: String,
    pub size: String,
    /// RFC 3339: when the window begins; default now. The compartment is held (grantable,
    /// depositable) only from then on.
    pub window_start: Option<String>,
    /// RFC 3339: when the window ends (exclusive); default window_start + the configured
    /// reservation length. Windows on one compartment never overlap; one may end exactly where
    /// the next begins.
    pub expires_at: Option<String>,
}

#[utoipa::path(post, path = "/lockers/reservations", tag = "lockers", request_body = Reserve, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn reserve(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<Reserve>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = me(&actor)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let size = Size::parse("size", &body.value.size)?;
    let window_start = parse_time("window_start", &body.value.window_start)?;
    let now = state.clock.now();
    let expires_at = parse_time("expires_at", &body.value.expires_at)?
        .unwrap_or_else(|| window_start.unwrap_or(now) + state.lockers.settings.reservation);
    let limits = &state.lockers.limits;
    let max = state.lockers.settings.reservation_max;
    if expires_at > now + max {
        return Err(unprocessable(
            "reservation_too_long",
            "expires_at",
            format!(
                "a reservation may run at most {} s from now",
                max.num_seconds()
            ),
        ));
    }
    limits.reserve(&user)?;
    if !state.store.exists("locker_site", site.as_str()).await? {
        return Err(ApiError::NotFound {
            code: "site_not_found",
            message: format!("no site {}", site.as_str()),
        });
    }
    // Compartments of the size with no window overlapping this one; the aggregate has the last
    // word (a race may have booked one since the read model saw it).
    let window = (window_start.unwrap_or(now), expires_at);
    let candidates =
        model::free_compartments(&state.pool, site.as_str(), size.as_str(), window, now, 20)
            .await?;
    let ctx = meta.context(&actor, &body.raw);
    // A retry of a reservation that went through names the compartment it reserved then.
    if let Some(key) = &ctx.idempotency {
        let earlier = state
            .store
            .idempotency_claim(&key.key)
            .await?
            .filter(|claim| claim.aggregate_type == Compartment::TYPE)
            .map(|claim| claim.aggregate_id);
        if let Some(id) = earlier {
            let command = CompartmentCommand::Reserve {
                user: user.clone(),
                window_start,
                expires_at,
                at: now,
            };
            let done = state
                .store
                .compartments
                .execute(&id, command.name(), command, &ctx)
                .await?;
            if let Some(latch_domain::locker::CompartmentEvent::CompartmentReserved {
                holder,
                window_start,
                expires_at,
                ..
            }) = done.events.first()
            {
                return Ok((
                    StatusCode::CREATED,
                    Json(json!({
                        "compartment_id": id,
                        "size": size.as_str(),
                        "holder": holder.as_str(),
                        "window_start": window_start,
                        "expires_at": expires_at,
                    })),
                ));
            }
        }
    }
    // A first attempt (a retry above answered already): one user may hold a bounded number of compartments, so no one can hold a whole site.
    let held: Vec<String> = model::held_by(&state.pool, user.as_str())
        .await?
        .into_iter()
        .map(|row| row.compartment_id)
        .collect();
    let cap = state.lockers.settings.reservations_per_user;
    let slot = limits
        .hold_slot(&user, &held, cap)
        .ok_or_else(|| ApiError::Conflict {
            code: "too_many_reservations",
            message: format!("a user may hold at most {cap} compartments at once"),
        })?;
    for id in candidates {
        let command = CompartmentCommand::Reserve {
            user: user.clone(),
            window_start,
            expires_at,
            at: now,
        };
        match state
            .store
            .compartments
            .execute(&id, command.name(), command, &ctx)
            .await
        {
            Ok(_) => {
                slot.reserved(&id);
                return Ok((
                    StatusCode::CREATED,
                    Json(json!({
                        "compartment_id": id,
                        "size": size.as_str(),
                        "holder": user.as_str(),
                        "window_start": window.0,
                        "expires_at": expires_at,
                    })),
                ));
            }
            Err(CommandError::Rejected(
                CompartmentError::NotFree | CompartmentError::WindowTaken,
            )) => continue,
            Err(CommandError::Rejected(CompartmentError::BadWindow)) => {
                return Err(unprocessable(
                    "invalid_window",
                    "expires_at",
                    "the reservation must end after it starts and after now",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Compartments of the size without a parcel in were all booked for part of this window.
    if model::bookable_compartments(&state.pool, site.as_str(), size.as_str()).await? > 0 {
        return Err(ApiError::Conflict {
            code: "window_taken",
            message: format!(
                "every {} compartment at {} is booked for part of the window from window_start {} to expires_at {}",
                size.as_str(),
                site.as_str(),
                window.0.to_rfc3339(),
                expires_at.to_rfc3339()
            ),
        });
    }
    Err(ApiError::Conflict {
        code: "no_free_compartment",
        message: format!("no free {} compartment at {}", size.as_str(), site.as_str()),
    })
}

#[utoipa::path(get, path = "/lockers/me/compartments", tag = "lockers",
    responses((status = 200, body = Vec<CompartmentRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn my_compartments(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
) -> Result<Json<Vec<CompartmentRow>>, ApiError> {
    let user = me(&actor)?;
    Ok(Json(model::held_by(&state.pool, user.as_str()).await?))
}

#[utoipa::path(get, path = "/lockers/me/inbox", tag = "lockers",
    responses((status = 200, body = Vec<InboxItem>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn my_inbox(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
) -> Result<Json<Vec<InboxItem>>, ApiError> {
    let user = me(&actor)?;
    let rows = model::inbox(&state.pool, &format!("user:{user}")).await?;
    Ok(Json(rows))
}
