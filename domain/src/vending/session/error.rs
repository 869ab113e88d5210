//! Why a shopping-session command was refused ([`ShoppingError`]), each with a stable code.

use crate::vending::values::{ShelfNo, Sku};

/// Why a shopping-session command was refused. Each has a stable code for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShoppingError {
    #[error("no such shopping session")]
    NotStarted,
    #[error("this shopping session was already started")]
    AlreadyStarted,
    #[error("the door of this session already closed and its order was decided")]
    AlreadyClosed,
    #[error("this order does not need review")]
    ReviewNotNeeded,
    #[error("the review of this order was already resolved")]
    ReviewAlreadyResolved,
    #[error("shelf {shelf} holds no product {sku} in this session's planogram")]
    UnknownSku { shelf: ShelfNo, sku: Sku },
    #[error("{sku} on shelf {shelf} is listed twice")]
    DuplicateLine { shelf: ShelfNo, sku: Sku },
    #[error("{sku} on shelf {shelf} has quantity zero; leave the line out instead")]
    ZeroQuantity { shelf: ShelfNo, sku: Sku },
    #[error("the order total is out of range")]
    AmountOverflow,
    #[error("there is nothing to pay: the order is not placed, is in review, or is free")]
    OrderNotPayable,
    #[error("the amount must equal the order total of {expected_minor} {currency} minor units")]
    AmountMismatch {
        expected_minor: i64,
        currency: String,
    },
    #[error("another payment for this order is still pending")]
    PaymentPending,
    #[error("this order is already paid")]
    PaymentAlreadySucceeded,
    #[error("this payment already failed; request a new payment")]
    PaymentAlreadyFailed,
    #[error("this payment id was already used for a failed payment")]
    PaymentIdReused,
    #[error("no such payment for this order")]
    UnknownPayment,
    #[error("this order has not been paid")]
    OrderNotPaid,
    #[error("a refund must be a positive amount in the payment's currency")]
    InvalidRefund,
    #[error("the refund exceeds what was paid and not yet refunded")]
    RefundExceedsPayment,
    #[error("this refund id was already used for a different amount")]
    RefundIdReused,
}

impl ShoppingError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotStarted => "session_not_started",
            Self::AlreadyStarted => "session_already_started",
            Self::AlreadyClosed => "session_already_closed",
            Self::ReviewNotNeeded => "review_not_needed",
            Self::ReviewAlreadyResolved => "review_already_resolved",
            Self::UnknownSku { .. } => "unknown_sku",
            Self::DuplicateLine { .. } => "duplicate_line",
            Self::ZeroQuantity { .. } => "zero_quantity",
            Self::AmountOverflow => "amount_overflow",
            Self::OrderNotPayable => "order_not_payable",
            Self::AmountMismatch { .. } => "amount_mismatch",
            Self::PaymentPending => "payment_pending",
            Self::PaymentAlreadySucceeded => "payment_already_succeeded",
            Self::PaymentAlreadyFailed => "payment_already_failed",
            Self::PaymentIdReused => "payment_id_reused",
            Self::UnknownPayment => "unknown_payment",
            Self::OrderNotPaid => "order_not_paid",
            Self::InvalidRefund => "invalid_refund",
            Self::RefundExceedsPayment => "refund_exceeds_payment",
            Self::RefundIdReused => "refund_id_reused",
        }
    }

    /// Not-started is "not found" to a client; everything else is a state conflict or bad input.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotStarted)
    }
}
