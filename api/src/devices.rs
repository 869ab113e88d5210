//! Devices over HTTP: operators register cabinets and ask them to open; any session reads status.

use crate::auth::{Actor, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Query, RequestMeta};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latch_domain::device::{DeviceCommand, DeviceEvent, DeviceId, DeviceKind, Label, SiteCode};
use latch_projections::device_status::{self, queries::DeviceView};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", post(register).get(list))
        .route("/devices/{device_id}", get(show))
        .route("/devices/{device_id}/open", post(open))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// `vending` or `locker`.
    pub kind: String,
    /// Site (outlet) number, e.g. `610091A01`.
    pub site: String,
    /// Name shown to people (any script, at most 80 characters).
    pub label: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    pub device_id: Uuid,
    pub kind: String,
    pub site: String,
    pub label: String,
    pub registered_at: DateTime<Utc>,
    /// The device's own NATS identity (its name and nkey seed), shown only in the first answer
    /// (absent when a registration is replayed): Latch keeps only the nkey's public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<crate::nats_identities::NatsCredentials>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenRequested {
    pub device_id: Uuid,
    pub request_id: Uuid,
    /// If no door event confirms the opening by then, it is recorded as failed.
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListParams {
    pub site: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<String>,
}

fn parse_device_id(raw: &str) -> Result<DeviceId, ApiError> {
    Ok(DeviceId::parse("device_id", raw)?)
}

/// Register a device.
#[utoipa::path(post, path = "/devices", request_body = RegisterDevice,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = Registered), (status = 400, body = ErrorBody),
               (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
               (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterDevice>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    actor.require(Role::Operator)?;
    let req = &body.value;
    let kind = DeviceKind::parse("kind", &req.kind)?;
    let site = SiteCode::parse("site", &req.site)?;
    let label = Label::parse("label", &req.label, 80)?;
    let device_id = DeviceId::generate();
    let command = DeviceCommand::Register {
        device_id,
        kind,
        site,
        label,
        at: state.clock.now(),
    };
    let ctx = meta.context(&actor, &body.raw);
    let done = state
        .store
        .devices
        .create(&device_id.to_string(), command.name(), command, &ctx)
        .await?;
    // Built from the events, so a replayed request answers exactly as the first one did.
    match done.events.first() {
        Some(DeviceEvent::DeviceRegistered {
            device_id,
            kind,
            site,
            label,
            at,
        }) => Ok((
            StatusCode::CREATED,
            Json(Registered {
                nats: crate::nats_identities::issue_and_publish(
                    &state.pool,
                    &state.nats_auth,
                    &latch_nats::auth::Principal::Device(device_id.to_string()),
                )
                .await?,
                device_id: device_id.as_uuid(),
                kind: kind.as_str().to_owned(),
                site: site.as_str().to_owned(),
                label: label.as_str().to_owned(),
                registered_at: *at,
            }),
        )),
        other => Err(ApiError::Internal(format!(
            "registration produced {other:?}"
        ))),
    }
}

/// Ask a device to open its door.
#[utoipa::path(post, path = "/devices/{device_id}/open",
    params(("device_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, body = OpenRequested), (status = 400, body = ErrorBody),
               (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
               (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn open(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(device_id): Path<String>,
) -> Result<(StatusCode, Json<OpenRequested>), ApiError> {
    actor.require(Role::Operator)?;
    let device_id = parse_device_id(&device_id)?;
    let now = state.clock.now();
    let command = DeviceCommand::RequestOpen {
        request_id: Uuid::now_v7(),
        deadline: now + state.open_timeout,
        shopper: None,
        at: now,
    };
    let ctx = meta.context(&actor, b"").with_device(device_id.to_string());
    let done = state
        .store
        .devices
        .execute(&device_id.to_string(), command.name(), command, &ctx)
        .await?;
    match done.events.first() {
        Some(DeviceEvent::DoorOpenRequested {
            request_id,
            deadline,
            ..
        }) => Ok((
            StatusCode::ACCEPTED,
            Json(OpenRequested {
                device_id: device_id.as_uuid(),
                request_id: *request_id,
                deadline: *deadline,
            }),
        )),
        other => Err(ApiError::Internal(format!("open produced {other:?}"))),
    }
}

/// A device's status.
#[utoipa::path(get, path = "/devices/{device_id}", params(("device_id" = Uuid, Path)),
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody),
               (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    _actor: Actor,
    Path(device_id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let device_id = parse_device_id(&device_id)?;
    device_status::queries::get(&state.pool, device_id.as_uuid())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound {
            code: "device_not_found",
            message: format!("no device {device_id}"),
        })
}

/// All devices, optionally at one site.
#[utoipa::path(get, path = "/devices", params(ListParams),
    responses((status = 200, body = [DeviceView]), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: crate::ops_pages::OpsCaller,
    params: Result<Query<ListParams>, ApiError>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let Query(params) = params?;
    let site = params
        .site
        .as_deref()
        .map(|s| SiteCode::parse("site", s))
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_field", "limit", "must be 1 to 1000"))?,
    };
    let rows =
        device_status::queries::list(&state.pool, site.as_ref().map(|s| s.as_str()), limit).await?;
    Ok(Json(rows))
}
