//! The cabinet as the shopper sees it, and "open".

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::vending::parse_device;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use latch_domain::device::{DeviceCommand, DeviceError, DeviceId, ShopperOpen};
use latch_domain::store::CommandError;
use latch_projections::device_status;
use latch_projections::orders::{self};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::shopper::{shopper_ctx, Shopper};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user_id: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
}

/// The logged-in shopper.
#[utoipa::path(get, path = "/m/api/me", tag = "vending",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, shopper: Shopper) -> Result<Json<Me>, ApiError> {
    let member = state.store.members.load(shopper.user.as_str()).await?;
    let profile = member.and_then(|m| m.profile);
    Ok(Json(Me {
        user_id: shopper.user.as_str().to_owned(),
        nickname: profile.as_ref().map(|p| p.nickname.clone()),
        avatar: profile.and_then(|p| p.avatar),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub shelf: u8,
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CabinetView {
    pub device_id: Uuid,
    pub label: String,
    pub site: String,
    pub online: bool,
    pub door: String,
    pub can_open: bool,
    /// Every reason it cannot open now (empty when it can).
    pub blocked: Vec<Reason>,
    pub products: Vec<Product>,
    /// The shopper's orders that must be paid (or reviewed) before opening again.
    pub unpaid_orders: Vec<Uuid>,
    /// With `?request=`: how that opening went (pending, confirmed, timeout, refused: ...).
    pub open_outcome: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CabinetQuery {
    request: Option<String>,
}

async fn cabinet_view(
    state: &AppState,
    device: &DeviceId,
    shopper: &Shopper,
    request: Option<Uuid>,
) -> Result<CabinetView, ApiError> {
    let row = device_status::queries::get(&state.pool, device.as_uuid())
        .await?
        .filter(|r| r.status.kind == "vending")
        .ok_or_else(|| ApiError::NotFound {
            code: "cabinet_not_found",
            message: format!("no vending cabinet {device}"),
        })?;
    let s = &row.status;
    let planogram = state
        .store
        .planograms
        .load(&device.to_string())
        .await?
        .and_then(|p| p.current);
    let unpaid = orders::queries::unpaid_of(&state.pool, shopper.user.as_str()).await?;
    let mut blocked = Vec::new();
    if !s.online {
        blocked.push(Reason {
            code: "device_offline",
            message: "The cabinet is offline. 柜子离线".into(),
        });
    }
    if s.door != "closed" {
        blocked.push(Reason {
            code: "door_not_closed",
            message: "The cabinet's door is not closed. 柜门未关闭".into(),
        });
    }
    if let Some(code) = &s.fault_code {
        blocked.push(Reason {
            code: "device_faulted",
            message: format!("The cabinet reports a fault ({code}). 柜子故障"),
        });
    }
    if s.current_session.is_some() || s.pending_open_request.is_some() {
        blocked.push(Reason {
            code: "cabinet_busy",
            message: "Someone is shopping at this cabinet. 有人正在购物".into(),
        });
    }
    if !unpaid.is_empty() {
        blocked.push(Reason {
            code: "unpaid_order",
            message: "You have an order to pay first. 您有未支付的订单".into(),
        });
    }
    if planogram.is_none() {
        blocked.push(Reason {
            code: "cabinet_not_stocked",
            message: "This cabinet has no products set up yet. 柜子尚未上架".into(),
        });
    }
    let products = planogram
        .map(|p| {
            p.slots()
                .iter()
                .map(|slot| Product {
                    shelf: slot.shelf.get(),
                    name: slot.name.as_str().to_owned(),
                    unit_price_minor: slot.unit_price.minor(),
                    currency: slot.unit_price.currency().as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    let open_outcome = request.map(|r| {
        if s.pending_open_request == Some(r) {
            "pending".to_owned()
        } else if s.last_open_request == Some(r) {
            s.last_open_outcome
                .clone()
                .unwrap_or_else(|| "unknown".into())
        } else {
            "unknown".to_owned()
        }
    });
    Ok(CabinetView {
        device_id: s.device_id,
        label: s.label.clone(),
        site: s.site.clone(),
        online: s.online,
        door: s.door.clone(),
        can_open: blocked.is_empty(),
        blocked,
        products,
        unpaid_orders: unpaid,
        open_outcome,
    })
}

/// The cabinet as the shopper's home page shows it.
#[utoipa::path(get, path = "/m/api/cabinets/{device_id}", tag = "vending",
    params(("device_id" = Uuid, Path)),
    responses((status = 200, body = CabinetView), (status = 404, body = ErrorBody)))]
pub async fn cabinet(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(device_id): Path<String>,
    Query(q): Query<CabinetQuery>,
) -> Result<Json<CabinetView>, ApiError> {
    let device = parse_device(&device_id)?;
    let request = q
        .request
        .as_deref()
        .map(|r| {
            Uuid::parse_str(r).map_err(|_| {
                ApiError::bad_request("invalid_field", "request", "request: must be a UUID")
            })
        })
        .transpose()?;
    cabinet_view(&state, &device, &shopper, request)
        .await
        .map(Json)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Opening {
    pub session_id: Uuid,
    pub request_id: Uuid,
    pub deadline: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize)]
pub struct OpenQuery {
    /// The signature from the cabinet's sticker (`k` of its link).
    k: Option<String>,
}

/// "Open": asks the cabinet to unlock for this shopper. Exactly one of several shoppers
/// pressing at once gets the cabinet; the others are told it is busy.
///
/// Only someone standing at the cabinet may open it: the request carries the sticker's
/// signature (`?k=`, which the sticker landing hands on to the page), so knowing a cabinet's
/// id is not enough (403 `sticker_required` / `forged_cabinet_link`). A member opens one
/// cabinet at a time (409 `shopper_session_active` while their last opening still holds its
/// cabinet) and at most `LATCH_SHOPPER_OPENS_PER_MINUTE` times a minute (429 `too_many_opens`).
/// Every refusal is decided before anything is written.
#[utoipa::path(post, path = "/m/api/cabinets/{device_id}/open", tag = "vending",
    params(("device_id" = Uuid, Path), ("k" = String, Query, description = "the sticker's signature")),
    responses((status = 202, body = Opening), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn open(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(device_id): Path<String>,
    Query(q): Query<OpenQuery>,
) -> Result<(StatusCode, Json<Opening>), ApiError> {
    let device = parse_device(&device_id)?;
    state.vending.opens.check(shopper.user.as_str())?;
    crate::vending::opens::check_sticker(&state.vending.config, &device, q.k.as_deref())?;
    let unpaid = orders::queries::unpaid_of(&state.pool, shopper.user.as_str()).await?;
    if let Some(first) = unpaid.first() {
        return Err(ApiError::Conflict {
            code: "unpaid_order",
            message: format!("order {first} must be paid before opening a cabinet again"),
        });
    }
    let has_planogram = state
        .store
        .planograms
        .load(&device.to_string())
        .await?
        .is_some_and(|p| p.current.is_some());
    if !has_planogram {
        if !state.store.exists("device", &device.to_string()).await? {
            return Err(ApiError::NotFound {
                code: "cabinet_not_found",
                message: format!("no vending cabinet {device}"),
            });
        }
        return Err(ApiError::Conflict {
            code: "cabinet_not_stocked",
            message: "this cabinet has no products set up yet".into(),
        });
    }
    let session_id = Uuid::now_v7();
    // One opening at a time per member: claimed here, settled once the device has answered.
    let claim =
        crate::vending::opens::Claim::take(&state, shopper.user.as_str(), &device, session_id)
            .await?;
    let now = state.clock.now();
    let command = DeviceCommand::RequestOpen {
        request_id: Uuid::now_v7(),
        deadline: now + state.open_timeout,
        shopper: Some(ShopperOpen {
            session_id,
            user: shopper.user.as_str().to_owned(),
        }),
        at: now,
    };
    let ctx = shopper_ctx(&shopper, Some(&device));
    let done = state
        .store
        .devices
        .execute(&device.to_string(), command.name(), command, &ctx)
        .await;
    claim.settle().await?;
    let done = done.map_err(|e| match e {
        CommandError::Rejected(DeviceError::NotRegistered) => ApiError::NotFound {
            code: "cabinet_not_found",
            message: format!("no vending cabinet {device}"),
        },
        CommandError::Rejected(DeviceError::OpenPending) => ApiError::Conflict {
            code: "cabinet_busy",
            message: "someone else is opening this cabinet".into(),
        },
        other => other.into(),
    })?;
    match done.events.first() {
        Some(latch_domain::device::DeviceEvent::DoorOpenRequested {
            request_id,
            deadline,
            ..
        }) => Ok((
            StatusCode::ACCEPTED,
            Json(Opening {
                session_id,
                request_id: *request_id,
                deadline: *deadline,
            }),
        )),
        other => Err(ApiError::Internal(format!("open produced {other:?}"))),
    }
}
