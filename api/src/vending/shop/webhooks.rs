//! Kazaya's signed payment callbacks (`POST /kazaya/webhooks`), and the vending state.

use crate::error::{ApiError, ErrorBody};
use crate::kazaya::{Kazaya, WebhookKind};
use crate::vending::Vending;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use latch_domain::store::IdempotencyKey;
use latch_domain::vending::PaymentState;
use latch_projections::orders::{self};
use std::sync::Arc;
use uuid::Uuid;

use super::checkout::record_outcome;

/// Kazaya's signed payment callbacks.
#[utoipa::path(post, path = "/kazaya/webhooks", tag = "vending",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
               (status = 409, body = ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> Result<StatusCode, ApiError> {
    let kazaya = state.vending.kazaya()?;
    let event = kazaya.verify_webhook(&headers, &body, state.clock.now())?;
    let span =
        tracing::info_span!("kazaya_webhook", webhook_id = %event.id, kind = event.kind.as_str());
    let _guard = span.enter();
    let data = &event.data;
    if matches!(
        event.kind,
        WebhookKind::RefundSucceeded | WebhookKind::Other(_)
    ) {
        // Refunds are recorded when we ask for them; unknown kinds are for a newer build.
        return Ok(StatusCode::NO_CONTENT);
    }
    let payment_id = Uuid::parse_str(&data.order_id).map_err(|_| ApiError::NotFound {
        code: "unknown_payment",
        message: format!("order_id {:?} is not a payment of ours", data.order_id),
    })?;
    // The orders model keeps every attempt's id. It lags the commit by milliseconds, while a
    // callback follows the shopper paying at Kazaya, and a miss is retried by Kazaya anyway.
    let Some(sid) = orders::queries::session_of_payment(&state.pool, payment_id).await? else {
        return Err(ApiError::NotFound {
            code: "unknown_payment",
            message: format!("no payment {payment_id}"),
        });
    };
    let session = state
        .store
        .shopping_sessions
        .load(&sid.to_string())
        .await?
        .unwrap_or_default();
    let requested = match &session.payment {
        PaymentState::Pending {
            payment_id: p,
            amount,
        } if *p == payment_id => Some(*amount),
        PaymentState::Succeeded {
            payment_id: p,
            amount,
            ..
        } if *p == payment_id => Some(*amount),
        _ => None,
    };
    if let Some(amount) = requested {
        if amount.minor() != data.amount || amount.currency().as_str() != data.currency {
            tracing::error!(
                expected = amount.minor(),
                got = data.amount,
                "callback amount differs"
            );
            return Err(ApiError::Conflict {
                code: "amount_mismatch",
                message: "the callback's amount is not what was requested".into(),
            });
        }
    }
    let key = IdempotencyKey::new("kazaya-webhook", &event.id, &body);
    let payment = crate::kazaya::Payment {
        payment_id: data.payment_id.clone(),
        order_id: data.order_id.clone(),
        amount: data.amount,
        currency: data.currency.clone(),
        status: match event.kind {
            WebhookKind::PaymentFailed => crate::kazaya::PaymentState::Failed,
            _ => data.status,
        },
        refunded_amount: data.refunded_amount,
        user_id: String::new(),
    };
    record_outcome(&state, sid, payment_id, &payment, Some(key)).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl Vending {
    pub fn new(
        config: crate::vending::VendingConfig,
        kazaya: Option<Arc<dyn Kazaya>>,
        clock: latch_domain::clock::SharedClock,
    ) -> Self {
        Self {
            opens: crate::vending::opens::OpenLimit::new(config.opens_per_minute, clock),
            config,
            kazaya,
            scans: crate::vending::scans::Scans::default(),
        }
    }
}
