//! The shopper's orders and paying for them (`pay`, and `sync` for a late callback).

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::vending::{parse_limit, parse_session};
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use latch_domain::device::Label;
use latch_domain::store::{CommandContext, IdempotencyKey};
use latch_domain::vending::{
    KazayaUserId, PaymentState, ProviderRef, SessionStage, ShoppingCommand, ShoppingSession,
};
use latch_projections::orders::{self, OrderRow};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::shopper::{shopper_ctx, Shopper};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
}

/// The shopper's orders, newest first.
#[utoipa::path(get, path = "/m/api/orders", tag = "vending",
    responses((status = 200, body = [OrderRow]), (status = 401, body = ErrorBody)))]
pub async fn my_orders(
    State(state): State<AppState>,
    shopper: Shopper,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<OrderRow>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    Ok(Json(
        orders::queries::by_user(&state.pool, shopper.user.as_str(), limit).await?,
    ))
}

async fn owned_order(state: &AppState, shopper: &Shopper, sid: Uuid) -> Result<OrderRow, ApiError> {
    match orders::queries::get(&state.pool, sid).await? {
        Some(r) if r.user_id == shopper.user.as_str() => Ok(r),
        _ => Err(ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid} of yours"),
        }),
    }
}

/// One of the shopper's orders, as it stands (the page polls this while the door is open).
#[utoipa::path(get, path = "/m/api/orders/{session_id}", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = OrderRow), (status = 404, body = ErrorBody)))]
pub async fn my_order(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<OrderRow>, ApiError> {
    let sid = parse_session(&session_id)?;
    owned_order(&state, &shopper, sid).await.map(Json)
}

async fn owned_session(
    state: &AppState,
    shopper: &Shopper,
    sid: Uuid,
) -> Result<ShoppingSession, ApiError> {
    match state.store.shopping_sessions.load(&sid.to_string()).await? {
        Some(s) if s.user.as_ref() == Some(&shopper.user) => Ok(s),
        _ => Err(ApiError::NotFound {
            code: "order_not_found",
            message: format!("no order {sid} of yours"),
        }),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PayRedirect {
    pub payment_id: Uuid,
    /// Send the shopper here (Kazaya's pay page).
    pub pay_url: String,
}

/// "Pay": starts (or resumes) the payment of an order at Kazaya.
#[utoipa::path(post, path = "/m/api/orders/{session_id}/pay", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = PayRedirect), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn pay(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<PayRedirect>, ApiError> {
    let sid = parse_session(&session_id)?;
    let session = owned_session(&state, &shopper, sid).await?;
    let kazaya = state.vending.kazaya()?;
    let (payment_id, amount) = match &session.payment {
        // Pressed again, or back from Kazaya without paying: the same attempt, same pay page.
        PaymentState::Pending { payment_id, amount } => (*payment_id, *amount),
        PaymentState::Succeeded { .. } => {
            return Err(ApiError::Conflict {
                code: "payment_already_succeeded",
                message: "this order is already paid".into(),
            })
        }
        PaymentState::None => {
            let total = session.payable_total().ok_or_else(|| ApiError::Conflict {
                code: "order_not_payable",
                message: match session.stage {
                    SessionStage::NeedsReview => {
                        "this order is being reviewed; it can be paid once resolved".into()
                    }
                    SessionStage::Open => "the door is still open; the order is not ready".into(),
                    _ => "this order has nothing to pay".into(),
                },
            })?;
            let payment_id = Uuid::now_v7();
            let command = ShoppingCommand::RequestPayment {
                payment_id,
                amount: total,
                at: state.clock.now(),
            };
            let ctx = shopper_ctx(&shopper, session.device_id.as_ref());
            state
                .store
                .shopping_sessions
                .execute(&sid.to_string(), command.name(), command, &ctx)
                .await?;
            (payment_id, total)
        }
    };
    let request = payment_request(&state, sid, &session, payment_id, amount, &shopper.user);
    match kazaya
        .create_payment(&payment_id.to_string(), &request)
        .await
    {
        Ok(created) => Ok(Json(PayRedirect {
            payment_id,
            pay_url: created.pay_url,
        })),
        Err(e) => {
            // Kazaya said no, or could not be reached: free the order for another attempt.
            let reason = Label::parse(
                "reason",
                &e.to_string().chars().take(200).collect::<String>(),
                200,
            )
            .unwrap_or_else(|_| {
                Label::parse("reason", "payment could not start", 200).expect("label")
            });
            let command = ShoppingCommand::RecordPaymentFailed {
                payment_id,
                reason,
                at: state.clock.now(),
            };
            let ctx = shopper_ctx(&shopper, session.device_id.as_ref());
            if let Err(record) = state
                .store
                .shopping_sessions
                .execute(&sid.to_string(), command.name(), command, &ctx)
                .await
            {
                tracing::warn!(error = %record, "could not record the failed payment start");
            }
            Err(e.into())
        }
    }
}

/// What Latch asks Kazaya for: a pure function of the attempt, so asking again with the same
/// idempotency key is the same request and finds the same payment.
fn payment_request(
    state: &AppState,
    sid: Uuid,
    session: &ShoppingSession,
    payment_id: Uuid,
    amount: latch_domain::vending::Money,
    user: &KazayaUserId,
) -> crate::kazaya::PaymentRequest {
    let base = &state.vending.config.public_url;
    let device = session.device_id.map(|d| d.to_string()).unwrap_or_default();
    crate::kazaya::PaymentRequest {
        order_id: payment_id.to_string(),
        amount: amount.minor(),
        currency: amount.currency().as_str().to_owned(),
        description: format!("Latch vending order {sid}"),
        user_id: user.as_str().to_owned(),
        return_url: format!("{base}/m/orders/{sid}?cabinet={device}&returned=1"),
        notify_url: format!("{base}/kazaya/webhooks"),
    }
}

/// Back from Kazaya before its callback arrived: ask Kazaya how the payment stands and record
/// it (the callback, when it comes, then changes nothing).
#[utoipa::path(post, path = "/m/api/orders/{session_id}/sync", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sid = parse_session(&session_id)?;
    let session = owned_session(&state, &shopper, sid).await?;
    let PaymentState::Pending { payment_id, amount } = session.payment else {
        return Ok(Json(serde_json::json!({ "changed": false })));
    };
    let kazaya = state.vending.kazaya()?;
    // Kazaya knows the attempt by our idempotency key: the same request finds the same payment.
    let request = payment_request(&state, sid, &session, payment_id, amount, &shopper.user);
    let created = kazaya
        .create_payment(&payment_id.to_string(), &request)
        .await?;
    let status = kazaya.payment_status(&created.payment_id).await?;
    // Trust what Kazaya reports only for the payment we asked for, as the callback does: a
    // status of another order, amount or currency marks nothing paid.
    check_reported_payment(&created.payment_id, payment_id, amount, &status)?;
    let changed = record_outcome(&state, sid, payment_id, &status, None).await?;
    Ok(Json(serde_json::json!({ "changed": changed })))
}

/// Refuses (409 `payment_mismatch`, logged) a payment status that is not the attempt we
/// requested: another payment id, another order id (our attempt id), amount or currency.
fn check_reported_payment(
    asked_for: &str,
    payment_id: Uuid,
    amount: latch_domain::vending::Money,
    reported: &crate::kazaya::Payment,
) -> Result<(), ApiError> {
    let mut wrong = Vec::new();
    if reported.payment_id != asked_for {
        wrong.push("payment_id");
    }
    if reported.order_id != payment_id.to_string() {
        wrong.push("order_id");
    }
    if reported.amount != amount.minor() {
        wrong.push("amount");
    }
    if reported.currency != amount.currency().as_str() {
        wrong.push("currency");
    }
    if wrong.is_empty() {
        return Ok(());
    }
    tracing::error!(
        %payment_id,
        kazaya_payment = %reported.payment_id,
        expected_amount = amount.minor(),
        reported_amount = reported.amount,
        expected_currency = amount.currency().as_str(),
        reported_currency = %reported.currency,
        reported_order = %reported.order_id,
        mismatched = %wrong.join(","),
        "Kazaya reported a payment that is not the one requested; nothing recorded"
    );
    Err(ApiError::Conflict {
        code: "payment_mismatch",
        message: format!(
            "Kazaya's payment differs from the one requested in {}; nothing was recorded",
            wrong.join(", ")
        ),
    })
}

pub(super) async fn record_outcome(
    state: &AppState,
    sid: Uuid,
    payment_id: Uuid,
    payment: &crate::kazaya::Payment,
    key: Option<IdempotencyKey>,
) -> Result<bool, ApiError> {
    use crate::kazaya::PaymentState as K;
    let now = state.clock.now();
    let command = match payment.status {
        K::Succeeded | K::Refunded => ShoppingCommand::RecordPaymentSucceeded {
            payment_id,
            provider_ref: ProviderRef::parse("payment_id", &payment.payment_id)?,
            at: now,
        },
        K::Failed => ShoppingCommand::RecordPaymentFailed {
            payment_id,
            reason: Label::parse("reason", "declined at Kazaya", 200)?,
            at: now,
        },
        _ => return Ok(false),
    };
    let mut ctx = CommandContext::new("system:kazaya");
    ctx.idempotency = key;
    let done = state
        .store
        .shopping_sessions
        .execute(&sid.to_string(), command.name(), command, &ctx)
        .await?;
    Ok(!done.replayed && !done.events.is_empty())
}
