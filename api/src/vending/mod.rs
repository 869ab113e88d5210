//! Scan-to-open vending over HTTP.
//!
//! - [`shop`]: the shopper's side: the signed cabinet link on the sticker, login through
//!   Kazaya, the cabinet page with "open", the live order, payment and receipt; and Kazaya's
//!   signed payment callbacks.
//! - this module: the operator's side: planograms and prices per cabinet, the cabinet's
//!   sticker link, orders by cabinet and status, review resolution and refunds.
//!
//! Every write is a command on an aggregate (`planogram`, `device`, `shopping_session`,
//! `member`); every list is a read model built by projections.

pub mod opens;
pub mod push;
pub mod scans;
pub mod shop;
pub mod sticker;

use crate::auth::{Actor, Role, SessionActor};
use crate::error::{from_command_error, ApiError, ErrorBody};
use crate::extract::{JsonBody, Query, RequestMeta};
use crate::kazaya::{Kazaya, KazayaError};
use crate::ops_pages::OpsCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use latch_domain::device::Label;
use latch_domain::device::{DeviceId, ParseError};
use latch_domain::store::{CommandContext, CommandError};
use latch_domain::vending::{
    Money, OperatorId, PaymentState, Planogram, PlanogramCommand, RawSlot, ReviewLine, ShelfNo,
    ShoppingCommand, ShoppingError, ShoppingSession, Sku,
};
use latch_projections::orders::{self, OrderRow};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// The sticker key development runs with; production mode refuses it.
pub const DEV_STICKER_KEY: &str = "latch-dev-sticker-key-change-me";

/// How Latch presents itself to shoppers and to Kazaya.
#[derive(Clone)]
pub struct VendingConfig {
    /// Latch's own address as phones and Kazaya reach it (no trailing slash), for sticker
    /// links, the OAuth redirect, payment return pages and callbacks.
    pub public_url: String,
    /// Signs cabinet links, so a forged or swapped sticker is recognised.
    pub sticker_key: Vec<u8>,
    pub secure_cookies: bool,
    /// How long a shopper stays logged in on the phone.
    pub session_ttl: chrono::Duration,
    /// "Open" presses one member may make per minute (`LATCH_SHOPPER_OPENS_PER_MINUTE`).
    pub opens_per_minute: u32,
}

impl std::fmt::Debug for VendingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendingConfig")
            .field("public_url", &self.public_url)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

/// "Open" presses per member per minute unless configured.
pub const DEFAULT_OPENS_PER_MINUTE: u32 = 10;

impl Default for VendingConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            sticker_key: DEV_STICKER_KEY.as_bytes().to_vec(),
            secure_cookies: false,
            session_ttl: chrono::Duration::hours(12),
            opens_per_minute: DEFAULT_OPENS_PER_MINUTE,
        }
    }
}

/// The vending side's configuration and its one external party.
pub struct Vending {
    pub config: VendingConfig,
    /// `None` when no Kazaya is configured: shopper logins and payments answer 503.
    pub kazaya: Option<Arc<dyn Kazaya>>,
    /// Sticker scans: the per-IP recording limit and the swapped-sticker index.
    pub scans: scans::Scans,
    /// "Open" presses per member ([`VendingConfig::opens_per_minute`]).
    pub opens: opens::OpenLimit,
}

impl Vending {
    /// Without a configured platform the payment endpoints do not exist here: a 404 with its own
    /// code, not a 503 that tells clients (and the fuzzer) to come back later.
    pub fn kazaya(&self) -> Result<&dyn Kazaya, ApiError> {
        self.kazaya.as_deref().ok_or_else(|| ApiError::NotFound {
            code: "kazaya_not_configured",
            message: "no Kazaya platform is configured on this server".into(),
        })
    }
}

impl From<CommandError<ShoppingError>> for ApiError {
    fn from(e: CommandError<ShoppingError>) -> Self {
        match e {
            CommandError::Rejected(s) if s.is_not_found() => Self::NotFound {
                code: s.code(),
                message: s.to_string(),
            },
            CommandError::Rejected(s) => Self::Conflict {
                code: s.code(),
                message: s.to_string(),
            },
            other => from_command_error(other),
        }
    }
}

impl From<KazayaError> for ApiError {
    fn from(e: KazayaError) -> Self {
        match e {
            KazayaError::Unavailable(detail) => {
                tracing::warn!(%detail, "kazaya unavailable");
                Self::Unavailable(format!("the payment platform is unavailable: {detail}"))
            }
            KazayaError::Rejected { code, message, .. } => {
                tracing::warn!(%code, %message, "kazaya refused");
                Self::Conflict {
                    code: "kazaya_rejected",
                    message: format!("the payment platform refused: {message} ({code})"),
                }
            }
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/devices/{device_id}/planogram",
            get(show_planogram).put(publish_planogram),
        )
        .route("/devices/{device_id}/sticker", get(sticker_link))
        .route("/orders", get(list_orders))
        .route("/orders/{session_id}", get(show_order))
        .route("/orders/{session_id}/review", post(resolve_review))
        .route("/orders/{session_id}/refunds", post(refund))
        .merge(shop::router())
}

pub(crate) fn parse_device(raw: &str) -> Result<DeviceId, ApiError> {
    Ok(DeviceId::parse("device_id", raw)?)
}

pub(crate) fn parse_session(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request("invalid_field", "session_id", "session_id: must be a UUID")
    })
}

fn operator(actor: &Actor) -> Result<OperatorId, ApiError> {
    actor.require(Role::Operator)?;
    Ok(OperatorId::parse("operator", &actor.subject)?)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishPlanogram {
    /// Each slot: shelf (1-32), sku, name, unit_weight and tolerance (grams), unit_price
    /// (minor units) and currency (ISO 4217).
    #[schema(value_type = Vec<Object>)]
    pub slots: Vec<RawSlot>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanogramView {
    pub device_id: Uuid,
    pub version: u32,
    #[schema(value_type = Vec<Object>)]
    pub slots: Vec<RawSlot>,
}

fn raw_slots(p: &Planogram) -> Vec<RawSlot> {
    p.slots()
        .iter()
        .map(|s| RawSlot {
            shelf: s.shelf.get() as i64,
            sku: s.sku.as_str().to_owned(),
            name: s.name.as_str().to_owned(),
            unit_weight: s.unit_weight.get(),
            tolerance: s.tolerance.get(),
            unit_price: s.unit_price.minor(),
            currency: s.unit_price.currency().as_str().to_owned(),
        })
        .collect()
}

/// Publish a cabinet's planogram (products, unit weights, tolerances and prices per shelf).
#[utoipa::path(put, path = "/devices/{device_id}/planogram", tag = "vending",
    params(("device_id" = Uuid, Path)), request_body = PublishPlanogram,
    responses((status = 200, body = PlanogramView), (status = 400, body = ErrorBody),
               (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish_planogram(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(device_id): Path<String>,
    body: JsonBody<PublishPlanogram>,
) -> Result<Json<PlanogramView>, ApiError> {
    let operator = operator(&actor)?;
    let device_id = parse_device(&device_id)?;
    let planogram = Planogram::parse("slots", &body.value.slots)?;
    let did = device_id.to_string();
    match state.store.devices.load(&did).await? {
        Some(d) if d.kind == Some(latch_domain::device::DeviceKind::Vending) => {}
        Some(_) => {
            return Err(ApiError::Conflict {
                code: "not_a_vending_cabinet",
                message: format!("device {did} is not a vending cabinet"),
            })
        }
        None => {
            return Err(ApiError::NotFound {
                code: "device_not_found",
                message: format!("no device {did}"),
            })
        }
    }
    let command = PlanogramCommand::Publish {
        planogram,
        operator,
        at: state.clock.now(),
    };
    let ctx = meta.context(&actor, &body.raw).with_device(did.clone());
    state
        .store
        .planograms
        .execute(&did, command.name(), command, &ctx)
        .await
        .map_err(from_command_error)?;
    current_planogram(&state, device_id).await.map(Json)
}

async fn current_planogram(
    state: &AppState,
    device_id: DeviceId,
) -> Result<PlanogramView, ApiError> {
    let did = device_id.to_string();
    let found = state.store.planograms.load(&did).await?;
    match found.and_then(|p| p.current.map(|c| (p.version, c))) {
        Some((version, p)) => Ok(PlanogramView {
            device_id: device_id.as_uuid(),
            version,
            slots: raw_slots(&p),
        }),
        None => Err(ApiError::NotFound {
            code: "planogram_not_found",
            message: format!("cabinet {did} has no planogram"),
        }),
    }
}

/// A cabinet's current planogram.
#[utoipa::path(get, path = "/devices/{device_id}/planogram", tag = "vending",
    params(("device_id" = Uuid, Path)),
    responses((status = 200, body = PlanogramView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_planogram(
    State(state): State<AppState>,
    _actor: SessionActor,
    Path(device_id): Path<String>,
) -> Result<Json<PlanogramView>, ApiError> {
    let device_id = parse_device(&device_id)?;
    current_planogram(&state, device_id).await.map(Json)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StickerLink {
    pub device_id: Uuid,
    /// What the QR code on the cabinet encodes.
    pub url: String,
}

/// The signed link to print on a cabinet's sticker.
#[utoipa::path(get, path = "/devices/{device_id}/sticker", tag = "vending",
    params(("device_id" = Uuid, Path)),
    responses((status = 200, body = StickerLink), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sticker_link(
    State(state): State<AppState>,
    actor: Actor,
    Path(device_id): Path<String>,
) -> Result<Json<StickerLink>, ApiError> {
    actor.require(Role::Operator)?;
    let device_id = parse_device(&device_id)?;
    Ok(Json(StickerLink {
        device_id: device_id.as_uuid(),
        url: sticker::link(&state.vending.config, &device_id),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OrderQuery {
    pub device: Option<String>,
    /// open, placed, needs_review, no_charge, abandoned, payment_pending, paid, refunded.
    pub status: Option<String>,
    pub limit: Option<String>,
}

const STATUSES: [&str; 8] = [
    "open",
    "placed",
    "needs_review",
    "no_charge",
    "abandoned",
    "payment_pending",
    "paid",
    "refunded",
];

pub(crate) fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(50),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_field", "limit", "limit: 1 to 500")),
    }
}

/// Orders, newest first, by cabinet and status (operators).
#[utoipa::path(get, path = "/orders", tag = "vending", params(OrderQuery),
    responses((status = 200, body = [OrderRow]), (status = 400, body = ErrorBody),
               (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_orders(
    State(state): State<AppState>,
    OpsCaller(actor): OpsCaller,
    query: Result<Query<OrderQuery>, ApiError>,
) -> Result<Json<Vec<OrderRow>>, ApiError> {
    actor.require(Role::Operator)?;
    let Query(q) = query?;
    let device = q.device.as_deref().map(parse_device).transpose()?;
    if let Some(s) = q.status.as_deref() {
        if !STATUSES.contains(&s) {
            return Err(ApiError::bad_request(
                "invalid_field",
                "status",
                format!("status: one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = parse_limit(q.limit.as_deref())?;
    let rows = orders::queries::list(
        &state.pool,
        device.map(|d| d.as_uuid()),
        q.status.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(rows))
}

/// One order: operators see every order, a shopper only their own.
#[utoipa::path(get, path = "/orders/{session_id}", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = OrderRow), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_order(
    State(state): State<AppState>,
    SessionActor(actor): SessionActor,
    Path(session_id): Path<String>,
) -> Result<Json<OrderRow>, ApiError> {
    let sid = parse_session(&session_id)?;
    let row = orders::queries::get(&state.pool, sid).await?;
    match row {
        Some(r) if actor.role == Role::Operator || shop::owns(&actor, &r.user_id) => Ok(Json(r)),
        _ => Err(ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid}"),
        }),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveReview {
    /// The final order; an empty list closes it without charge.
    pub lines: Vec<RawReviewLine>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReviewLine {
    pub shelf: i64,
    pub sku: String,
    pub quantity: i64,
}

/// Resolve an order in review: the operator decides the quantities, the session's planogram
/// snapshot prices them.
#[utoipa::path(post, path = "/orders/{session_id}/review", tag = "vending",
    params(("session_id" = Uuid, Path)), request_body = ResolveReview,
    responses((status = 200, body = OrderRow), (status = 400, body = ErrorBody),
               (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resolve_review(
    State(state): State<AppState>,
    OpsCaller(actor): OpsCaller,
    meta: RequestMeta,
    Path(session_id): Path<String>,
    body: JsonBody<ResolveReview>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operator = operator(&actor)?;
    let sid = parse_session(&session_id)?;
    let mut lines = Vec::with_capacity(body.value.lines.len());
    for (i, l) in body.value.lines.iter().enumerate() {
        let field = format!("lines[{i}]");
        let quantity = u32::try_from(l.quantity)
            .ok()
            .filter(|q| *q <= 10_000)
            .ok_or_else(|| {
                ApiError::from(ParseError::new(
                    format!("{field}.quantity"),
                    "must be 0 to 10000",
                ))
            })?;
        lines.push(ReviewLine {
            shelf: ShelfNo::parse(&format!("{field}.shelf"), l.shelf)?,
            sku: Sku::parse(&format!("{field}.sku"), &l.sku)?,
            quantity,
        });
    }
    let command = ShoppingCommand::ResolveReview {
        operator,
        lines,
        at: state.clock.now(),
    };
    let ctx = meta.context(&actor, &body.raw);
    let done = state
        .store
        .shopping_sessions
        .execute(&sid.to_string(), command.name(), command, &ctx)
        .await?;
    Ok(Json(serde_json::to_value(&done.events).unwrap_or_default()))
}

/// Kazaya's refusal as the `RefundFailed` event keeps it (bounded, printable).
fn refusal_label(e: &KazayaError) -> Label {
    let text: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    Label::parse("reason", &text, 200)
        .or_else(|_| Label::parse("reason", "refused by Kazaya", 200))
        .expect("a non-empty label")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Minor units, at most what is left of the payment.
    pub amount_minor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefundDone {
    pub refund_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
}

/// Refund part or all of a paid order through Kazaya.
#[utoipa::path(post, path = "/orders/{session_id}/refunds", tag = "vending",
    params(("session_id" = Uuid, Path)), request_body = RefundRequest,
    responses((status = 201, body = RefundDone), (status = 400, body = ErrorBody),
               (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
               (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    OpsCaller(actor): OpsCaller,
    meta: RequestMeta,
    Path(session_id): Path<String>,
    body: JsonBody<RefundRequest>,
) -> Result<(StatusCode, Json<RefundDone>), ApiError> {
    operator(&actor)?;
    let sid = parse_session(&session_id)?;
    let session: ShoppingSession = state
        .store
        .shopping_sessions
        .load(&sid.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid}"),
        })?;
    let PaymentState::Succeeded {
        amount: paid,
        provider_ref,
        ..
    } = &session.payment
    else {
        return Err(ApiError::Conflict {
            code: "order_not_paid",
            message: "only a paid order can be refunded".into(),
        });
    };
    let amount = Money::parse(
        "amount_minor",
        body.value.amount_minor,
        paid.currency().as_str(),
    )?;
    // More than was ever paid is a bad request; more than is left (other refunds done or
    // under way) is a conflict with them, decided by the command below.
    if !amount.is_positive() || amount.minor() > paid.minor() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "amount_minor",
            format!("amount_minor: 1 to {} (the payment)", paid.minor()),
        ));
    }
    let provider_ref = provider_ref.clone();
    // The request's own id keys the refund at Kazaya, so a retried request cannot refund twice.
    let ctx = meta.context(&actor, &body.raw);
    let refund_id = ctx.idempotency.as_ref().map_or(Uuid::now_v7(), |k| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(k.key.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    });
    let kazaya = state.vending.kazaya()?;
    // First the reservation (`RefundRequested`), then Kazaya: of concurrent refunds only those
    // that fit in what is left are ever asked of Kazaya; the others are 409
    // `refund_exceeds_payment` with nothing written.
    let stream = sid.to_string();
    let request = ShoppingCommand::RequestRefund {
        refund_id,
        amount,
        at: state.clock.now(),
    };
    state
        .store
        .shopping_sessions
        .execute(&stream, request.name(), request, &ctx)
        .await?;
    let outcome = kazaya
        .refund(
            &refund_id.to_string(),
            provider_ref.as_str(),
            amount.minor(),
        )
        .await;
    // Kazaya's answer settles the reservation, keyed by the refund id (a retry records
    // nothing twice). Unavailable: the reservation stays; retrying with the same
    // Idempotency-Key asks Kazaya again under the same refund id.
    let system = CommandContext::new(actor.to_string());
    let (settle, answer) = match outcome {
        Ok(_) => (
            ShoppingCommand::Refund {
                refund_id,
                amount,
                at: state.clock.now(),
            },
            Ok(()),
        ),
        Err(e @ KazayaError::Rejected { .. }) => (
            ShoppingCommand::FailRefund {
                refund_id,
                reason: refusal_label(&e),
                at: state.clock.now(),
            },
            Err(ApiError::from(e)),
        ),
        Err(e) => return Err(e.into()),
    };
    state
        .store
        .shopping_sessions
        .execute(&stream, settle.name(), settle, &system)
        .await?;
    answer?;
    Ok((
        StatusCode::CREATED,
        Json(RefundDone {
            refund_id,
            amount_minor: amount.minor(),
            currency: amount.currency().as_str().to_owned(),
        }),
    ))
}
