//! What a shopping session can be told ([`ShoppingCommand`]), with the weighing phases and the
//! operator's review lines the commands carry.

use crate::device::{DeviceId, Label, SiteCode};
use crate::vending::planogram::Planogram;
use crate::vending::settle::Weighing;
use crate::vending::values::{
    KazayaUserId, Money, OperatorId, ProviderRef, SessionId, ShelfNo, Sku,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which side of the opening a weighing belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeighingPhase {
    /// Stable weights before the door opens: the baseline.
    Before,
    /// Stable weights after the door closed.
    After,
}

/// One line of an operator's resolution: the operator decides quantities, the snapshot prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewLine {
    pub shelf: ShelfNo,
    pub sku: Sku,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShoppingCommand {
    Start {
        session_id: SessionId,
        device_id: DeviceId,
        site: SiteCode,
        user: KazayaUserId,
        /// The device's open request this session answers.
        open_request_id: Uuid,
        planogram: Planogram,
        weighing_before: Weighing,
        at: DateTime<Utc>,
    },
    /// A reading while the session is open. The latest `Before` is the baseline at close (a
    /// cabinet may weigh again just before it unlocks); `After` readings are kept for the record.
    RecordWeighing {
        weighing: Weighing,
        phase: WeighingPhase,
        at: DateTime<Utc>,
    },
    Close {
        weighing_after: Weighing,
        at: DateTime<Utc>,
    },
    /// The door never opened after the baseline was taken (the cabinet refused, or the open
    /// request ran out of time): nothing can have been taken, so nothing is owed.
    Abandon { reason: Label, at: DateTime<Utc> },
    ResolveReview {
        operator: OperatorId,
        /// The final order; empty means no charge.
        lines: Vec<ReviewLine>,
        at: DateTime<Utc>,
    },
    RequestPayment {
        payment_id: Uuid,
        /// Must equal the order total: what the shopper was shown is what is charged.
        amount: Money,
        at: DateTime<Utc>,
    },
    RecordPaymentSucceeded {
        payment_id: Uuid,
        provider_ref: ProviderRef,
        at: DateTime<Utc>,
    },
    RecordPaymentFailed {
        payment_id: Uuid,
        reason: Label,
        at: DateTime<Utc>,
    },
    /// Reserves `amount` of the payment for a refund about to be asked of Kazaya. Recorded
    /// BEFORE the call, so concurrent refunds cannot together exceed what was paid: the
    /// stream's optimistic concurrency orders them and each sees the others' reservations.
    RequestRefund {
        refund_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
    },
    /// Kazaya refunded: a requested refund is done (or, for a refund never requested, one is
    /// recorded within what is left).
    Refund {
        refund_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
    },
    /// Kazaya refused a requested refund: its reservation is released.
    FailRefund {
        refund_id: Uuid,
        reason: Label,
        at: DateTime<Utc>,
    },
}

impl ShoppingCommand {
    /// A stable name for logs and metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "StartShoppingSession",
            Self::RecordWeighing { .. } => "RecordWeighing",
            Self::Close { .. } => "CloseShoppingSession",
            Self::Abandon { .. } => "AbandonShoppingSession",
            Self::ResolveReview { .. } => "ResolveReview",
            Self::RequestPayment { .. } => "RequestPayment",
            Self::RecordPaymentSucceeded { .. } => "RecordPaymentSucceeded",
            Self::RecordPaymentFailed { .. } => "RecordPaymentFailed",
            Self::RequestRefund { .. } => "RequestRefund",
            Self::Refund { .. } => "RefundPayment",
            Self::FailRefund { .. } => "FailRefund",
        }
    }
}
