//! Operators' side of the building: sites, compartments and the doors wired to them, and who
//! held a compartment at a given moment.

use super::{me, parse_time, unprocessable};
use crate::auth::{Actor, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use latch_domain::device::{Label, SiteCode};
use latch_domain::locker::{
    CompartmentCommand, CompartmentId, CompartmentNumber, SiteCommand, Size,
};
use latch_projections::lockers::queries::{self as model, CompartmentRow};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSite {
    pub site: String,
    pub name: String,
}

#[utoipa::path(post, path = "/lockers/sites", tag = "lockers", request_body = RegisterSite, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_site(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterSite>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let name = Label::parse("name", &body.value.name, 80)?;
    let command = SiteCommand::Register {
        site: site.clone(),
        name: name.clone(),
        at: state.clock.now(),
    };
    state
        .store
        .locker_sites
        .execute(
            site.as_str(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "site": site.as_str(), "name": name.as_str() })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallCompartment {
    pub site: String,
    pub number: String,
    /// small, medium or large.
    pub size: String,
    /// The registered device (kind `locker`, same site) that opens this compartment's door.
    pub door_device: Option<String>,
}

/// `raw` names a registered locker device at `site`: a door for one of its compartments.
async fn locker_door(
    state: &AppState,
    site: &SiteCode,
    raw: &str,
) -> Result<latch_domain::device::DeviceId, ApiError> {
    use latch_domain::device::{DeviceId, DeviceKind};
    let id = DeviceId::parse("door_device", raw)?;
    let device = state.store.devices.load(&id.to_string()).await?;
    match device {
        Some(d) if d.registered => {
            if d.kind != Some(DeviceKind::Locker) {
                return Err(unprocessable(
                    "door_not_a_locker",
                    "door_device",
                    "a compartment door must be a device of kind locker",
                ));
            }
            if d.site.as_ref() != Some(site) {
                return Err(unprocessable(
                    "door_at_another_site",
                    "door_device",
                    format!("device {id} is not at site {}", site.as_str()),
                ));
            }
            Ok(id)
        }
        _ => Err(ApiError::NotFound {
            code: "device_not_found",
            message: format!("no device {id}"),
        }),
    }
}

#[utoipa::path(post, path = "/lockers/compartments", tag = "lockers", request_body = InstallCompartment, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn install_compartment(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<InstallCompartment>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let number = CompartmentNumber::parse("number", &body.value.number)?;
    let size = Size::parse("size", &body.value.size)?;
    if !state.store.exists("locker_site", site.as_str()).await? {
        return Err(ApiError::NotFound {
            code: "site_not_found",
            message: format!("no site {}", site.as_str()),
        });
    }
    let door = match &body.value.door_device {
        Some(raw) => Some(locker_door(&state, &site, raw).await?),
        None => None,
    };
    let id = CompartmentId::new(site, number);
    let command = CompartmentCommand::Install {
        id: id.clone(),
        size,
        door,
        at: state.clock.now(),
    };
    state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "compartment_id": id.to_string(),
            "size": size.as_str(),
            "status": "free",
            "door_device": door.map(|d| d.to_string()),
        })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WireDoor {
    /// The registered device (kind `locker`, same site) that opens this compartment's door.
    pub door_device: String,
}

/// Fits (or replaces) the device that opens a compartment's door.
#[utoipa::path(post, path = "/lockers/compartments/{id}/door", tag = "lockers", request_body = WireDoor,
    params(("id" = String, Path, description = "\"{site}:{number}\"")),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn wire_door(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<WireDoor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let id = CompartmentId::parse("id", &id)?;
    let door = locker_door(&state, &id.site, &body.value.door_device).await?;
    let command = CompartmentCommand::WireDoor {
        door,
        at: state.clock.now(),
    };
    state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok(Json(
        json!({ "compartment_id": id.to_string(), "door_device": door.to_string() }),
    ))
}

/// A compartment, with its door: for operators, its holder and its depositor.
#[utoipa::path(get, path = "/lockers/compartments/{id}", tag = "lockers",
    params(("id" = String, Path, description = "\"{site}:{number}\"")),
    responses((status = 200, body = CompartmentRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_compartment(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    Path(id): Path<String>,
) -> Result<Json<CompartmentRow>, ApiError> {
    let id = CompartmentId::parse("id", &id)?.to_string();
    let not_found = || ApiError::NotFound {
        code: "compartment_not_found",
        message: format!("no compartment {id}"),
    };
    // Operators see every booked window; a user only their own.
    let user = match actor.role {
        Role::Operator => None,
        _ => Some(me(&actor)?),
    };
    let mut row = model::compartment(&state.pool, &id, user.as_ref().map(|u| u.as_str()))
        .await?
        .ok_or_else(not_found)?;
    if let Some(user) = &user {
        // Someone else's compartment is answered as absent, so ids cannot be probed.
        if row.holder.as_deref() != Some(user.as_str())
            && row.depositor.as_deref() != Some(user.as_str())
            && row.windows.is_empty()
        {
            return Err(not_found());
        }
        // Whose window comes first is not theirs to know unless it is theirs.
        if row.holder.as_deref() != Some(user.as_str()) {
            row.holder = None;
            row.window_start = None;
            row.expires_at = None;
        }
    }
    Ok(Json(row))
}

#[derive(Debug, Deserialize)]
pub struct HolderAt {
    pub at: Option<String>,
}

/// Who held a compartment at a moment (operators and auditors).
#[utoipa::path(get, path = "/lockers/compartments/{id}/holder", tag = "lockers", params(("id" = String, Path), ("at" = Option<String>, Query, description = "RFC 3339; default now")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn holder_at(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    crate::extract::Query(q): crate::extract::Query<HolderAt>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if actor.role != Role::Auditor {
        actor.require(Role::Operator)?;
    }
    let id = CompartmentId::parse("id", &id)?;
    let at = parse_time("at", &q.at)?.unwrap_or_else(|| state.clock.now());
    let holder = model::holder_at(&state.pool, &id.to_string(), at).await?;
    Ok(Json(
        json!({ "compartment_id": id.to_string(), "at": at, "holder": holder }),
    ))
}

/// A site with its compartments, their holders and doors, as operators see it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SiteView {
    #[serde(flatten)]
    pub site: model::SiteRow,
    pub compartments: Vec<CompartmentRow>,
}

/// Sites read at most, per request.
const SITES_SHOWN: i64 = 200;

/// Every site (up to 200, by site code) with its compartments, who holds each and its door
/// (operators).
#[utoipa::path(get, path = "/lockers/sites", tag = "lockers",
    responses((status = 200, body = [SiteView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sites(
    State(state): State<AppState>,
    crate::ops_pages::OpsCaller(actor): crate::ops_pages::OpsCaller,
) -> Result<Json<Vec<SiteView>>, ApiError> {
    actor.require(Role::Operator)?;
    let sites = model::sites(&state.pool, SITES_SHOWN).await?;
    let codes: Vec<String> = sites.iter().map(|s| s.site.clone()).collect();
    let mut by_site: std::collections::HashMap<String, Vec<CompartmentRow>> =
        std::collections::HashMap::new();
    for c in model::compartments_at(&state.pool, &codes).await? {
        by_site.entry(c.site.clone()).or_default().push(c);
    }
    let views = sites
        .into_iter()
        .map(|site| SiteView {
            compartments: by_site.remove(&site.site).unwrap_or_default(),
            site,
        })
        .collect();
    Ok(Json(views))
}
