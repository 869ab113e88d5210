//! What a shopping session records ([`ShoppingEvent`]), with the fixed names and version each
//! event is stored under.

use super::WeighingPhase;
use crate::device::{DeviceId, Label, SiteCode};
use crate::vending::planogram::Planogram;
use crate::vending::settle::{OrderLine, ReviewReason, Weighing};
use crate::vending::values::{KazayaUserId, Money, OperatorId, ProviderRef, SessionId};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShoppingEvent {
    SessionStarted {
        session_id: SessionId,
        device_id: DeviceId,
        site: SiteCode,
        user: KazayaUserId,
        open_request_id: Uuid,
        planogram: Planogram,
        at: DateTime<Utc>,
    },
    WeighingRecorded {
        phase: WeighingPhase,
        weighing: Weighing,
        at: DateTime<Utc>,
    },
    OrderPlaced {
        lines: Vec<OrderLine>,
        total: Money,
        at: DateTime<Utc>,
    },
    OrderNeedsReview {
        reasons: Vec<ReviewReason>,
        provisional: Vec<OrderLine>,
        at: DateTime<Utc>,
    },
    SessionClosedEmpty {
        at: DateTime<Utc>,
    },
    SessionAbandoned {
        reason: Label,
        at: DateTime<Utc>,
    },
    ReviewResolved {
        operator: OperatorId,
        lines: Vec<OrderLine>,
        total: Money,
        at: DateTime<Utc>,
    },
    PaymentRequested {
        payment_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
    },
    PaymentSucceeded {
        payment_id: Uuid,
        amount: Money,
        provider_ref: ProviderRef,
        at: DateTime<Utc>,
    },
    PaymentFailed {
        payment_id: Uuid,
        reason: Label,
        at: DateTime<Utc>,
    },
    /// A refund asked of Kazaya: its amount is reserved until it is `Refunded` or
    /// `RefundFailed`.
    RefundRequested {
        refund_id: Uuid,
        payment_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
    },
    Refunded {
        refund_id: Uuid,
        payment_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
    },
    RefundFailed {
        refund_id: Uuid,
        reason: Label,
        at: DateTime<Utc>,
    },
}

impl ShoppingEvent {
    pub const VERSION: &'static str = "1";
    pub const TYPES: [&'static str; 13] = [
        "SessionStarted",
        "WeighingRecorded",
        "OrderPlaced",
        "OrderNeedsReview",
        "SessionClosedEmpty",
        "SessionAbandoned",
        "ReviewResolved",
        "PaymentRequested",
        "PaymentSucceeded",
        "PaymentFailed",
        "RefundRequested",
        "Refunded",
        "RefundFailed",
    ];

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::SessionStarted { at, .. }
            | Self::WeighingRecorded { at, .. }
            | Self::OrderPlaced { at, .. }
            | Self::OrderNeedsReview { at, .. }
            | Self::SessionClosedEmpty { at }
            | Self::SessionAbandoned { at, .. }
            | Self::ReviewResolved { at, .. }
            | Self::PaymentRequested { at, .. }
            | Self::PaymentSucceeded { at, .. }
            | Self::PaymentFailed { at, .. }
            | Self::RefundRequested { at, .. }
            | Self::Refunded { at, .. }
            | Self::RefundFailed { at, .. } => *at,
        }
    }
}

impl DomainEvent for ShoppingEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::SessionStarted { .. } => "SessionStarted",
            Self::WeighingRecorded { .. } => "WeighingRecorded",
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderNeedsReview { .. } => "OrderNeedsReview",
            Self::SessionClosedEmpty { .. } => "SessionClosedEmpty",
            Self::SessionAbandoned { .. } => "SessionAbandoned",
            Self::ReviewResolved { .. } => "ReviewResolved",
            Self::PaymentRequested { .. } => "PaymentRequested",
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::RefundRequested { .. } => "RefundRequested",
            Self::Refunded { .. } => "Refunded",
            Self::RefundFailed { .. } => "RefundFailed",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}
