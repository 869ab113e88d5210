//! The shopping-session aggregate: one stream per door opening, from the weighing before the
//! door opens to the order, its review, its payment and any refunds.
//!
//! The session keeps a snapshot of the planogram it started with, so a price change during or
//! after the opening does not change what this shopper owes. The order is decided once, by
//! [`settle`] when the door closes; afterwards only an operator's review can change it, and
//! only while it is in review. Payment runs one attempt at a time: a new attempt needs the last
//! one to have failed, and a payment id is never reused (it is Kazaya's idempotency key).

use super::planogram::Planogram;
use super::settle::{settle, OrderLine, ReviewReason, Settlement, Weighing};
use super::values::{KazayaUserId, Money, OperatorId, ProviderRef, SessionId, ShelfNo, Sku};
use crate::device::{DeviceId, Label, SiteCode};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
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

/// Where a session stands. Forward only: Open, then one of Placed / NeedsReview / ClosedEmpty,
/// and NeedsReview on to Resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStage {
    #[default]
    NotStarted,
    Open,
    Placed,
    NeedsReview,
    Resolved,
    ClosedEmpty,
    /// The door never opened.
    Abandoned,
}

/// The order as it stands: settled at close, or set by the operator's resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub lines: Vec<OrderLine>,
    pub total: Money,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentState {
    #[default]
    None,
    Pending {
        payment_id: Uuid,
        amount: Money,
    },
    Succeeded {
        payment_id: Uuid,
        amount: Money,
        provider_ref: ProviderRef,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: Uuid,
    pub amount: Money,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShoppingSession {
    pub stage: SessionStage,
    pub session_id: Option<SessionId>,
    pub device_id: Option<DeviceId>,
    pub user: Option<KazayaUserId>,
    pub planogram: Option<Planogram>,
    pub before: Option<Weighing>,
    pub after: Option<Weighing>,
    /// Set when placed or resolved.
    pub order: Option<Order>,
    /// Set when the order went to review; kept after resolution for the record.
    pub review: Option<Vec<ReviewReason>>,
    pub provisional: Vec<OrderLine>,
    pub payment: PaymentState,
    /// Payment ids that failed: never reused, and a repeated failure report is a no-op.
    pub failed_payments: Vec<Uuid>,
    pub refunds: Vec<Refund>,
    /// Refunds requested of Kazaya and not yet done or failed: their amounts are reserved.
    #[serde(default)]
    pub pending_refunds: Vec<Refund>,
}

impl crate::store::StateShape for ShoppingSession {}

impl Aggregate for ShoppingSession {
    const TYPE: &'static str = "shopping_session";
    type Command = ShoppingCommand;
    type Event = ShoppingEvent;
    type Error = ShoppingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use ShoppingEvent as E;
        match event {
            E::SessionStarted {
                session_id,
                device_id,
                user,
                planogram,
                ..
            } => {
                self.stage = SessionStage::Open;
                self.session_id = Some(session_id);
                self.device_id = Some(device_id);
                self.user = Some(user);
                self.planogram = Some(planogram);
            }
            E::WeighingRecorded {
                phase: WeighingPhase::Before,
                weighing,
                ..
            } => self.before = Some(weighing),
            E::WeighingRecorded {
                phase: WeighingPhase::After,
                weighing,
                ..
            } => self.after = Some(weighing),
            E::OrderPlaced { lines, total, .. } => {
                self.stage = SessionStage::Placed;
                self.order = Some(Order { lines, total });
            }
            E::OrderNeedsReview {
                reasons,
                provisional,
                ..
            } => {
                self.stage = SessionStage::NeedsReview;
                self.review = Some(reasons);
                self.provisional = provisional;
            }
            E::SessionClosedEmpty { .. } => self.stage = SessionStage::ClosedEmpty,
            E::SessionAbandoned { .. } => self.stage = SessionStage::Abandoned,
            E::ReviewResolved { lines, total, .. } => {
                self.stage = SessionStage::Resolved;
                self.order = Some(Order { lines, total });
            }
            E::PaymentRequested {
                payment_id, amount, ..
            } => self.payment = PaymentState::Pending { payment_id, amount },
            E::PaymentSucceeded {
                payment_id,
                amount,
                provider_ref,
                ..
            } => {
                self.payment = PaymentState::Succeeded {
                    payment_id,
                    amount,
                    provider_ref,
                }
            }
            E::PaymentFailed { payment_id, .. } => {
                self.payment = PaymentState::None;
                self.failed_payments.push(payment_id);
            }
            E::RefundRequested {
                refund_id, amount, ..
            } => self.pending_refunds.push(Refund { refund_id, amount }),
            E::Refunded {
                refund_id, amount, ..
            } => {
                self.pending_refunds.retain(|r| r.refund_id != refund_id);
                self.refunds.push(Refund { refund_id, amount });
            }
            E::RefundFailed { refund_id, .. } => {
                self.pending_refunds.retain(|r| r.refund_id != refund_id);
            }
        }
    }
}

impl ShoppingSession {
    /// The whole decision, synchronous and pure. An empty list means the command is already
    /// satisfied (a device or callback repeating itself).
    pub fn decide(&self, command: ShoppingCommand) -> Result<Vec<ShoppingEvent>, ShoppingError> {
        use ShoppingCommand as C;
        use ShoppingError as Err;
        use ShoppingEvent as E;
        if let C::Start {
            session_id,
            device_id,
            site,
            user,
            open_request_id,
            planogram,
            weighing_before,
            at,
        } = command
        {
            if self.stage != SessionStage::NotStarted {
                return Err(Err::AlreadyStarted);
            }
            return Ok(vec![
                E::SessionStarted {
                    session_id,
                    device_id,
                    site,
                    user,
                    open_request_id,
                    planogram,
                    at,
                },
                E::WeighingRecorded {
                    phase: WeighingPhase::Before,
                    weighing: weighing_before,
                    at,
                },
            ]);
        }
        let Some(planogram) = &self.planogram else {
            return Err(Err::NotStarted);
        };
        match command {
            C::Start { .. } => unreachable!("handled above"),
            C::RecordWeighing {
                weighing,
                phase,
                at,
            } => {
                if self.stage != SessionStage::Open {
                    return Err(Err::AlreadyClosed);
                }
                let last = match phase {
                    WeighingPhase::Before => &self.before,
                    WeighingPhase::After => &self.after,
                };
                if last.as_ref() == Some(&weighing) {
                    return Ok(vec![]);
                }
                Ok(vec![E::WeighingRecorded {
                    phase,
                    weighing,
                    at,
                }])
            }
            C::Close { weighing_after, at } => {
                if self.stage != SessionStage::Open {
                    // The cabinet repeating its close report changes nothing; different
                    // weights after the order was decided belong to another opening.
                    return if self.after.as_ref() == Some(&weighing_after) {
                        Ok(vec![])
                    } else {
                        Err(Err::AlreadyClosed)
                    };
                }
                let before = self.before.as_ref().expect("Start records a weighing");
                let outcome = match settle(planogram, before, &weighing_after) {
                    Settlement::Charged { lines, total } => E::OrderPlaced { lines, total, at },
                    Settlement::NothingTaken => E::SessionClosedEmpty { at },
                    Settlement::NeedsReview {
                        reasons,
                        provisional,
                    } => E::OrderNeedsReview {
                        reasons,
                        provisional,
                        at,
                    },
                };
                Ok(vec![
                    E::WeighingRecorded {
                        phase: WeighingPhase::After,
                        weighing: weighing_after,
                        at,
                    },
                    outcome,
                ])
            }
            C::Abandon { reason, at } => match self.stage {
                SessionStage::Open => Ok(vec![E::SessionAbandoned { reason, at }]),
                SessionStage::Abandoned => Ok(vec![]),
                _ => Err(Err::AlreadyClosed),
            },
            C::ResolveReview {
                operator,
                lines,
                at,
            } => {
                match self.stage {
                    SessionStage::NeedsReview => {}
                    SessionStage::Resolved => return Err(Err::ReviewAlreadyResolved),
                    _ => return Err(Err::ReviewNotNeeded),
                }
                let lines = price_review(planogram, lines)?;
                let total =
                    Money::checked_sum(planogram.currency(), lines.iter().map(|l| &l.line_total))
                        .map_err(|_| Err::AmountOverflow)?;
                Ok(vec![E::ReviewResolved {
                    operator,
                    lines,
                    total,
                    at,
                }])
            }
            C::RequestPayment {
                payment_id,
                amount,
                at,
            } => {
                let total = self.payable_total().ok_or(Err::OrderNotPayable)?;
                match &self.payment {
                    PaymentState::Succeeded { .. } => return Err(Err::PaymentAlreadySucceeded),
                    PaymentState::Pending { payment_id: p, .. } if *p != payment_id => {
                        return Err(Err::PaymentPending)
                    }
                    PaymentState::Pending { .. } | PaymentState::None => {}
                }
                if self.failed_payments.contains(&payment_id) {
                    return Err(Err::PaymentIdReused);
                }
                if amount != total {
                    return Err(Err::AmountMismatch {
                        expected_minor: total.minor(),
                        currency: total.currency().to_string(),
                    });
                }
                if matches!(self.payment, PaymentState::Pending { .. }) {
                    // The same request again (same id, same amount): already asked.
                    return Ok(vec![]);
                }
                Ok(vec![E::PaymentRequested {
                    payment_id,
                    amount,
                    at,
                }])
            }
            C::RecordPaymentSucceeded {
                payment_id,
                provider_ref,
                at,
            } => {
                if self.failed_payments.contains(&payment_id) {
                    // Kazaya reporting success for an attempt it already failed is for a person
                    // to look at (money may have moved twice), not for us to paper over.
                    return Err(Err::PaymentAlreadyFailed);
                }
                match &self.payment {
                    PaymentState::Pending {
                        payment_id: p,
                        amount,
                    } if *p == payment_id => Ok(vec![E::PaymentSucceeded {
                        payment_id,
                        amount: *amount,
                        provider_ref,
                        at,
                    }]),
                    PaymentState::Succeeded { payment_id: p, .. } if *p == payment_id => Ok(vec![]),
                    _ => Err(Err::UnknownPayment),
                }
            }
            C::RecordPaymentFailed {
                payment_id,
                reason,
                at,
            } => {
                if self.failed_payments.contains(&payment_id) {
                    return Ok(vec![]);
                }
                match &self.payment {
                    PaymentState::Pending { payment_id: p, .. } if *p == payment_id => {
                        Ok(vec![E::PaymentFailed {
                            payment_id,
                            reason,
                            at,
                        }])
                    }
                    PaymentState::Succeeded { payment_id: p, .. } if *p == payment_id => {
                        Err(Err::PaymentAlreadySucceeded)
                    }
                    _ => Err(Err::UnknownPayment),
                }
            }
            C::RequestRefund {
                refund_id,
                amount,
                at,
            } => {
                let payment_id = self.check_refund(amount)?;
                if self.refund_known(refund_id, amount)? {
                    return Ok(vec![]);
                }
                self.check_refundable(amount)?;
                Ok(vec![E::RefundRequested {
                    refund_id,
                    payment_id,
                    amount,
                    at,
                }])
            }
            C::Refund {
                refund_id,
                amount,
                at,
            } => {
                let payment_id = self.check_refund(amount)?;
                if self.refunds.iter().any(|r| r.refund_id == refund_id) {
                    // Done already: the same refund again changes nothing.
                    self.refund_known(refund_id, amount)?;
                    return Ok(vec![]);
                }
                match self
                    .pending_refunds
                    .iter()
                    .find(|r| r.refund_id == refund_id)
                {
                    Some(p) if p.amount != amount => return Err(Err::RefundIdReused),
                    // Its amount was reserved when it was requested.
                    Some(_) => {}
                    None => self.check_refundable(amount)?,
                }
                Ok(vec![E::Refunded {
                    refund_id,
                    payment_id,
                    amount,
                    at,
                }])
            }
            C::FailRefund {
                refund_id,
                reason,
                at,
            } => {
                // Only a refund still waiting can fail; anything else is a repeat.
                if !self
                    .pending_refunds
                    .iter()
                    .any(|r| r.refund_id == refund_id)
                {
                    return Ok(vec![]);
                }
                Ok(vec![E::RefundFailed {
                    refund_id,
                    reason,
                    at,
                }])
            }
        }
    }

    /// A refund's amount must be positive, in the currency of a successful payment: its id.
    fn check_refund(&self, amount: Money) -> Result<Uuid, ShoppingError> {
        let PaymentState::Succeeded {
            payment_id,
            amount: paid,
            ..
        } = &self.payment
        else {
            return Err(ShoppingError::OrderNotPaid);
        };
        if amount.currency() != paid.currency() || !amount.is_positive() {
            return Err(ShoppingError::InvalidRefund);
        }
        Ok(*payment_id)
    }

    /// Whether `refund_id` is already requested or done with this amount (`Err` when with
    /// another amount: an id is never reused).
    fn refund_known(&self, refund_id: Uuid, amount: Money) -> Result<bool, ShoppingError> {
        match self
            .refunds
            .iter()
            .chain(&self.pending_refunds)
            .find(|r| r.refund_id == refund_id)
        {
            Some(r) if r.amount == amount => Ok(true),
            Some(_) => Err(ShoppingError::RefundIdReused),
            None => Ok(false),
        }
    }

    fn check_refundable(&self, amount: Money) -> Result<(), ShoppingError> {
        let left = self
            .refundable()
            .ok_or(ShoppingError::RefundExceedsPayment)?;
        if amount.minor() > left.minor() {
            return Err(ShoppingError::RefundExceedsPayment);
        }
        Ok(())
    }

    /// The total the shopper has to pay, if the order is decided and not free (paid or not).
    pub fn payable_total(&self) -> Option<Money> {
        match (self.stage, &self.order) {
            (SessionStage::Placed | SessionStage::Resolved, Some(order))
                if order.total.is_positive() =>
            {
                Some(order.total)
            }
            _ => None,
        }
    }

    /// Whether the shopper owes on this session: a charged order not (yet) paid, or an order
    /// still in review. A review counts whatever its provisional lines say, because what is
    /// owed is not known until an operator decides; the shopper is not let in again meanwhile.
    pub fn unpaid(&self) -> bool {
        match self.stage {
            SessionStage::NeedsReview => true,
            SessionStage::Placed | SessionStage::Resolved => {
                self.payable_total().is_some()
                    && !matches!(self.payment, PaymentState::Succeeded { .. })
            }
            SessionStage::NotStarted
            | SessionStage::Open
            | SessionStage::ClosedEmpty
            | SessionStage::Abandoned => false,
        }
    }

    /// What is left to refund of a successful payment (`None` before one): the payment less
    /// the refunds done and those requested and still waiting.
    pub fn refundable(&self) -> Option<Money> {
        let PaymentState::Succeeded { amount, .. } = &self.payment else {
            return None;
        };
        self.refunds
            .iter()
            .chain(&self.pending_refunds)
            .try_fold(*amount, |left, r| left.checked_sub(&r.amount))
            .ok()
    }
}

/// Prices an operator's lines from the session's planogram, sorted like settled lines.
fn price_review(
    planogram: &Planogram,
    lines: Vec<ReviewLine>,
) -> Result<Vec<OrderLine>, ShoppingError> {
    let mut seen = BTreeSet::new();
    let mut priced = Vec::with_capacity(lines.len());
    for ReviewLine {
        shelf,
        sku,
        quantity,
    } in lines
    {
        let Some(slot) = planogram.slot(shelf, &sku) else {
            return Err(ShoppingError::UnknownSku { shelf, sku });
        };
        if !seen.insert((shelf, sku.clone())) {
            return Err(ShoppingError::DuplicateLine { shelf, sku });
        }
        if quantity == 0 {
            return Err(ShoppingError::ZeroQuantity { shelf, sku });
        }
        priced.push(OrderLine::of(slot, quantity).map_err(|_| ShoppingError::AmountOverflow)?);
    }
    priced.sort_by(|a, b| (a.shelf, &a.sku).cmp(&(b.shelf, &b.sku)));
    Ok(priced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vending::planogram::RawSlot;
    use crate::vending::settle::RawReading;
    use crate::vending::values::Currency;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type SessionTest = TestFramework<ShoppingSession>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn shelf(n: i64) -> ShelfNo {
        ShelfNo::parse("shelf", n).unwrap()
    }
    fn sku(s: &str) -> Sku {
        Sku::parse("sku", s).unwrap()
    }
    fn cny(minor: i64) -> Money {
        Money::new(minor, Currency::parse("c", "CNY").unwrap())
    }
    fn pay(n: u128) -> Uuid {
        Uuid::from_u128(500 + n)
    }
    fn refund_id(n: u128) -> Uuid {
        Uuid::from_u128(900 + n)
    }
    fn operator() -> OperatorId {
        OperatorId::parse("operator", "ops-lin").unwrap()
    }
    fn provider_ref() -> ProviderRef {
        ProviderRef::parse("ref", "KZ20261121-0001").unwrap()
    }
    fn declined() -> Label {
        Label::parse("reason", "card declined", 200).unwrap()
    }

    /// Shelf 1: cola 355 g ± 10 at 3.50; shelf 2: water 550 g ± 15 at 2.00.
    fn planogram() -> Planogram {
        let slot = |shelf, sku: &str, w, t, price| RawSlot {
            shelf,
            sku: sku.into(),
            name: format!("{sku} name"),
            unit_weight: w,
            tolerance: t,
            unit_price: price,
            currency: "CNY".into(),
        };
        Planogram::parse(
            "slots",
            &[
                slot(1, "COLA", 355, 10, 350),
                slot(2, "WATER", 550, 15, 200),
            ],
        )
        .unwrap()
    }

    fn weighing(cola: i64, water: i64, stable: bool) -> Weighing {
        Weighing::parse(
            "weighing",
            &[
                RawReading {
                    shelf: 1,
                    grams: cola,
                    stable,
                    fault: false,
                },
                RawReading {
                    shelf: 2,
                    grams: water,
                    stable: true,
                    fault: false,
                },
            ],
        )
        .unwrap()
    }
    fn full() -> Weighing {
        weighing(3550, 4400, true)
    }
    /// Two colas and a water gone.
    fn taken() -> Weighing {
        weighing(3550 - 710, 4400 - 550, true)
    }
    /// The cola shelf still moving when the door closed.
    fn shaky() -> Weighing {
        weighing(3550 - 710, 4400 - 550, false)
    }

    fn line(s: i64, code: &str, quantity: u32) -> OrderLine {
        let p = planogram();
        OrderLine::of(p.slot(shelf(s), &sku(code)).unwrap(), quantity).unwrap()
    }
    fn order_lines() -> Vec<OrderLine> {
        vec![line(1, "COLA", 2), line(2, "WATER", 1)]
    }

    fn start_command() -> ShoppingCommand {
        ShoppingCommand::Start {
            session_id: SessionId::from(Uuid::from_u128(1)),
            device_id: DeviceId::from(Uuid::from_u128(7)),
            site: SiteCode::parse("site", "610091A01").unwrap(),
            user: KazayaUserId::parse("user", "kz_10086").unwrap(),
            open_request_id: Uuid::from_u128(42),
            planogram: planogram(),
            weighing_before: full(),
            at: t(0),
        }
    }
    fn started() -> Vec<ShoppingEvent> {
        vec![
            ShoppingEvent::SessionStarted {
                session_id: SessionId::from(Uuid::from_u128(1)),
                device_id: DeviceId::from(Uuid::from_u128(7)),
                site: SiteCode::parse("site", "610091A01").unwrap(),
                user: KazayaUserId::parse("user", "kz_10086").unwrap(),
                open_request_id: Uuid::from_u128(42),
                planogram: planogram(),
                at: t(0),
            },
            ShoppingEvent::WeighingRecorded {
                phase: WeighingPhase::Before,
                weighing: full(),
                at: t(0),
            },
        ]
    }
    fn after(w: Weighing) -> ShoppingEvent {
        ShoppingEvent::WeighingRecorded {
            phase: WeighingPhase::After,
            weighing: w,
            at: t(30),
        }
    }
    fn placed() -> Vec<ShoppingEvent> {
        let mut e = started();
        e.push(after(taken()));
        e.push(ShoppingEvent::OrderPlaced {
            lines: order_lines(),
            total: cny(900),
            at: t(30),
        });
        e
    }
    fn in_review() -> Vec<ShoppingEvent> {
        let mut e = started();
        e.push(after(shaky()));
        e.push(ShoppingEvent::OrderNeedsReview {
            reasons: vec![ReviewReason::Unstable { shelf: shelf(1) }],
            provisional: vec![line(2, "WATER", 1)],
            at: t(30),
        });
        e
    }
    fn closed_empty() -> Vec<ShoppingEvent> {
        let mut e = started();
        e.push(after(full()));
        e.push(ShoppingEvent::SessionClosedEmpty { at: t(30) });
        e
    }
    fn resolved(lines: Vec<OrderLine>, total: i64) -> Vec<ShoppingEvent> {
        let mut e = in_review();
        e.push(ShoppingEvent::ReviewResolved {
            operator: operator(),
            lines,
            total: cny(total),
            at: t(60),
        });
        e
    }
    fn requested(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
        e.push(ShoppingEvent::PaymentRequested {
            payment_id: pay(n),
            amount: cny(amount),
            at: t(40),
        });
        e
    }
    fn failed(mut e: Vec<ShoppingEvent>, n: u128) -> Vec<ShoppingEvent> {
        e.push(ShoppingEvent::PaymentFailed {
            payment_id: pay(n),
            reason: declined(),
            at: t(41),
        });
        e
    }
    fn succeeded(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
        e.push(ShoppingEvent::PaymentSucceeded {
            payment_id: pay(n),
            amount: cny(amount),
            provider_ref: provider_ref(),
            at: t(42),
        });
        e
    }
    fn paid() -> Vec<ShoppingEvent> {
        succeeded(requested(placed(), 1, 900), 1, 900)
    }
    fn refunded(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
        e.push(ShoppingEvent::Refunded {
            refund_id: refund_id(n),
            payment_id: pay(1),
            amount: cny(amount),
            at: t(100),
        });
        e
    }

    fn refund_requested(mut e: Vec<ShoppingEvent>, n: u128, amount: i64) -> Vec<ShoppingEvent> {
        e.push(ShoppingEvent::RefundRequested {
            refund_id: refund_id(n),
            payment_id: pay(1),
            amount: cny(amount),
            at: t(99),
        });
        e
    }
    fn refund_failed(n: u128) -> ShoppingEvent {
        ShoppingEvent::RefundFailed {
            refund_id: refund_id(n),
            reason: Label::parse("reason", "refused", 200).unwrap(),
            at: t(101),
        }
    }
    fn request_refund(n: u128, amount: i64) -> ShoppingCommand {
        ShoppingCommand::RequestRefund {
            refund_id: refund_id(n),
            amount: cny(amount),
            at: t(99),
        }
    }

    fn close(w: Weighing) -> ShoppingCommand {
        ShoppingCommand::Close {
            weighing_after: w,
            at: t(30),
        }
    }
    fn resolve(lines: Vec<ReviewLine>) -> ShoppingCommand {
        ShoppingCommand::ResolveReview {
            operator: operator(),
            lines,
            at: t(60),
        }
    }
    fn review_line(s: i64, code: &str, quantity: u32) -> ReviewLine {
        ReviewLine {
            shelf: shelf(s),
            sku: sku(code),
            quantity,
        }
    }
    fn request(n: u128, amount: i64) -> ShoppingCommand {
        ShoppingCommand::RequestPayment {
            payment_id: pay(n),
            amount: cny(amount),
            at: t(40),
        }
    }
    fn success(n: u128) -> ShoppingCommand {
        ShoppingCommand::RecordPaymentSucceeded {
            payment_id: pay(n),
            provider_ref: provider_ref(),
            at: t(42),
        }
    }
    fn failure(n: u128) -> ShoppingCommand {
        ShoppingCommand::RecordPaymentFailed {
            payment_id: pay(n),
            reason: declined(),
            at: t(41),
        }
    }
    fn refund(n: u128, amount: i64) -> ShoppingCommand {
        ShoppingCommand::Refund {
            refund_id: refund_id(n),
            amount: cny(amount),
            at: t(100),
        }
    }

    fn state(events: Vec<ShoppingEvent>) -> ShoppingSession {
        let mut s = ShoppingSession::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    #[test]
    fn start_records_the_session_and_the_baseline_weighing() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(start_command())
            .then_expect_events(started());
        SessionTest::with(())
            .given(started())
            .when(start_command())
            .then_expect_error(ShoppingError::AlreadyStarted);
    }

    #[test]
    fn every_other_command_needs_a_started_session() {
        let commands = vec![
            ShoppingCommand::RecordWeighing {
                weighing: full(),
                phase: WeighingPhase::Before,
                at: t(1),
            },
            close(taken()),
            resolve(vec![]),
            request(1, 900),
            success(1),
            failure(1),
            refund(1, 100),
        ];
        for command in commands {
            SessionTest::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ShoppingError::NotStarted);
        }
        assert!(ShoppingError::NotStarted.is_not_found());
        assert_eq!(ShoppingError::NotStarted.code(), "session_not_started");
    }

    #[test]
    fn record_weighing_keeps_every_new_reading_while_open() {
        let rebase = weighing(3560, 4400, true);
        SessionTest::with(())
            .given(started())
            .when(ShoppingCommand::RecordWeighing {
                weighing: rebase.clone(),
                phase: WeighingPhase::Before,
                at: t(2),
            })
            .then_expect_events(vec![ShoppingEvent::WeighingRecorded {
                phase: WeighingPhase::Before,
                weighing: rebase,
                at: t(2),
            }]);
        // The same baseline again is the cabinet repeating itself.
        SessionTest::with(())
            .given(started())
            .when(ShoppingCommand::RecordWeighing {
                weighing: full(),
                phase: WeighingPhase::Before,
                at: t(2),
            })
            .then_expect_events(vec![]);
        SessionTest::with(())
            .given(started())
            .when(ShoppingCommand::RecordWeighing {
                weighing: taken(),
                phase: WeighingPhase::After,
                at: t(20),
            })
            .then_expect_events(vec![ShoppingEvent::WeighingRecorded {
                phase: WeighingPhase::After,
                weighing: taken(),
                at: t(20),
            }]);
        SessionTest::with(())
            .given(placed())
            .when(ShoppingCommand::RecordWeighing {
                weighing: full(),
                phase: WeighingPhase::Before,
                at: t(50),
            })
            .then_expect_error(ShoppingError::AlreadyClosed);
    }

    #[test]
    fn the_latest_baseline_is_what_close_settles_against() {
        // The cabinet re-weighed before unlocking: one cola fewer than the start's reading.
        let mut events = started();
        events.push(ShoppingEvent::WeighingRecorded {
            phase: WeighingPhase::Before,
            weighing: weighing(3550 - 355, 4400, true),
            at: t(2),
        });
        let decided = state(events).decide(close(taken())).unwrap();
        assert!(matches!(
            &decided[1],
            ShoppingEvent::OrderPlaced { lines, total, .. }
                if lines[0].quantity == 1 && *total == cny(550)
        ));
    }

    #[test]
    fn close_places_the_order() {
        SessionTest::with(())
            .given(started())
            .when(close(taken()))
            .then_expect_events(placed()[2..].to_vec());
        assert!(state(placed()).unpaid());
    }

    #[test]
    fn close_with_nothing_taken_closes_empty() {
        SessionTest::with(())
            .given(started())
            .when(close(full()))
            .then_expect_events(closed_empty()[2..].to_vec());
        assert!(!state(closed_empty()).unpaid());
    }

    #[test]
    fn close_with_doubtful_weights_goes_to_review() {
        SessionTest::with(())
            .given(started())
            .when(close(shaky()))
            .then_expect_events(in_review()[2..].to_vec());
        assert!(state(in_review()).unpaid());
    }

    #[test]
    fn close_twice_is_a_no_op_only_with_the_same_weights() {
        SessionTest::with(())
            .given(placed())
            .when(close(taken()))
            .then_expect_events(vec![]);
        SessionTest::with(())
            .given(placed())
            .when(close(full()))
            .then_expect_error(ShoppingError::AlreadyClosed);
    }

    #[test]
    fn resolve_review_sets_the_final_lines_priced_from_the_snapshot() {
        SessionTest::with(())
            .given(in_review())
            .when(resolve(vec![
                review_line(2, "WATER", 1),
                review_line(1, "COLA", 2),
            ]))
            .then_expect_events(resolved(order_lines(), 900)[4..].to_vec());
        let s = state(resolved(order_lines(), 900));
        assert_eq!(s.stage, SessionStage::Resolved);
        assert!(s.unpaid());
        // The review's reasons stay for the record.
        assert!(s.review.is_some());
    }

    #[test]
    fn resolve_review_with_no_lines_means_no_charge() {
        SessionTest::with(())
            .given(in_review())
            .when(resolve(vec![]))
            .then_expect_events(resolved(vec![], 0)[4..].to_vec());
        let s = state(resolved(vec![], 0));
        assert!(!s.unpaid());
        assert_eq!(s.decide(request(1, 0)), Err(ShoppingError::OrderNotPayable));
    }

    #[test]
    fn resolve_review_refusals() {
        for (given, error) in [
            (started(), ShoppingError::ReviewNotNeeded),
            (placed(), ShoppingError::ReviewNotNeeded),
            (closed_empty(), ShoppingError::ReviewNotNeeded),
            (resolved(vec![], 0), ShoppingError::ReviewAlreadyResolved),
        ] {
            SessionTest::with(())
                .given(given)
                .when(resolve(vec![review_line(1, "COLA", 1)]))
                .then_expect_error(error);
        }
        SessionTest::with(())
            .given(in_review())
            .when(resolve(vec![review_line(2, "COLA", 1)]))
            .then_expect_error(ShoppingError::UnknownSku {
                shelf: shelf(2),
                sku: sku("COLA"),
            });
        SessionTest::with(())
            .given(in_review())
            .when(resolve(vec![
                review_line(1, "COLA", 1),
                review_line(1, "COLA", 2),
            ]))
            .then_expect_error(ShoppingError::DuplicateLine {
                shelf: shelf(1),
                sku: sku("COLA"),
            });
        SessionTest::with(())
            .given(in_review())
            .when(resolve(vec![review_line(1, "COLA", 0)]))
            .then_expect_error(ShoppingError::ZeroQuantity {
                shelf: shelf(1),
                sku: sku("COLA"),
            });
    }

    #[test]
    fn resolve_review_refuses_a_total_out_of_range() {
        // An operator's quantities are priced in checked arithmetic like the settlement's.
        let slot = |shelf, sku: &str, w| RawSlot {
            shelf,
            sku: sku.into(),
            name: sku.into(),
            unit_weight: w,
            tolerance: 1,
            unit_price: i64::MAX / 4,
            currency: "CNY".into(),
        };
        let pricey = Planogram::parse("slots", &[slot(1, "A", 100), slot(2, "B", 100)]).unwrap();
        let mut s = state(in_review());
        s.planogram = Some(pricey);
        assert_eq!(
            s.decide(resolve(vec![review_line(1, "A", 5)])),
            Err(ShoppingError::AmountOverflow)
        );
        assert_eq!(
            s.decide(resolve(vec![
                review_line(1, "A", 3),
                review_line(2, "B", 2)
            ])),
            Err(ShoppingError::AmountOverflow)
        );
        assert!(s
            .decide(resolve(vec![
                review_line(1, "A", 2),
                review_line(2, "B", 1)
            ]))
            .is_ok());
    }

    #[test]
    fn request_payment_for_a_placed_or_resolved_order() {
        SessionTest::with(())
            .given(placed())
            .when(request(1, 900))
            .then_expect_events(requested(vec![], 1, 900));
        SessionTest::with(())
            .given(resolved(vec![line(1, "COLA", 1)], 350))
            .when(request(1, 350))
            .then_expect_events(requested(vec![], 1, 350));
        // Asking again for the same payment is a no-op.
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(request(1, 900))
            .then_expect_events(vec![]);
    }

    #[test]
    fn request_payment_refusals() {
        for given in [started(), in_review(), closed_empty()] {
            SessionTest::with(())
                .given(given)
                .when(request(1, 900))
                .then_expect_error(ShoppingError::OrderNotPayable);
        }
        SessionTest::with(())
            .given(placed())
            .when(request(1, 899))
            .then_expect_error(ShoppingError::AmountMismatch {
                expected_minor: 900,
                currency: "CNY".into(),
            });
        SessionTest::with(())
            .given(placed())
            .when(ShoppingCommand::RequestPayment {
                payment_id: pay(1),
                amount: Money::new(900, Currency::parse("c", "EUR").unwrap()),
                at: t(40),
            })
            .then_expect_error(ShoppingError::AmountMismatch {
                expected_minor: 900,
                currency: "CNY".into(),
            });
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(request(2, 900))
            .then_expect_error(ShoppingError::PaymentPending);
        SessionTest::with(())
            .given(paid())
            .when(request(2, 900))
            .then_expect_error(ShoppingError::PaymentAlreadySucceeded);
        SessionTest::with(())
            .given(failed(requested(placed(), 1, 900), 1))
            .when(request(1, 900))
            .then_expect_error(ShoppingError::PaymentIdReused);
    }

    #[test]
    fn payment_success_is_recorded_once() {
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(success(1))
            .then_expect_events(paid()[5..].to_vec());
        assert!(!state(paid()).unpaid());
        assert!(state(requested(placed(), 1, 900)).unpaid());
        // Kazaya's callback arriving twice.
        SessionTest::with(())
            .given(paid())
            .when(success(1))
            .then_expect_events(vec![]);
    }

    #[test]
    fn payment_success_for_another_payment_is_refused() {
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(success(2))
            .then_expect_error(ShoppingError::UnknownPayment);
        SessionTest::with(())
            .given(paid())
            .when(success(2))
            .then_expect_error(ShoppingError::UnknownPayment);
        SessionTest::with(())
            .given(placed())
            .when(success(1))
            .then_expect_error(ShoppingError::UnknownPayment);
        SessionTest::with(())
            .given(failed(requested(placed(), 1, 900), 1))
            .when(success(1))
            .then_expect_error(ShoppingError::PaymentAlreadyFailed);
    }

    #[test]
    fn payment_failure_allows_a_new_request() {
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(failure(1))
            .then_expect_events(failed(vec![], 1));
        let after_failure = failed(requested(placed(), 1, 900), 1);
        assert!(state(after_failure.clone()).unpaid());
        SessionTest::with(())
            .given(after_failure.clone())
            .when(failure(1))
            .then_expect_events(vec![]);
        SessionTest::with(())
            .given(after_failure.clone())
            .when(request(2, 900))
            .then_expect_events(requested(vec![], 2, 900));
        // And the second attempt can succeed.
        SessionTest::with(())
            .given(requested(after_failure, 2, 900))
            .when(success(2))
            .then_expect_events(succeeded(vec![], 2, 900));
    }

    #[test]
    fn payment_failure_refusals() {
        SessionTest::with(())
            .given(paid())
            .when(failure(1))
            .then_expect_error(ShoppingError::PaymentAlreadySucceeded);
        SessionTest::with(())
            .given(requested(placed(), 1, 900))
            .when(failure(2))
            .then_expect_error(ShoppingError::UnknownPayment);
    }

    #[test]
    fn refunds_up_to_what_was_paid() {
        SessionTest::with(())
            .given(paid())
            .when(refund(1, 350))
            .then_expect_events(refunded(vec![], 1, 350));
        SessionTest::with(())
            .given(refunded(paid(), 1, 350))
            .when(refund(2, 550))
            .then_expect_events(refunded(vec![], 2, 550));
        // The same refund again changes nothing.
        SessionTest::with(())
            .given(refunded(paid(), 1, 350))
            .when(refund(1, 350))
            .then_expect_events(vec![]);
        let s = state(refunded(paid(), 1, 350));
        assert_eq!(s.refundable(), Some(cny(550)));
        assert!(!s.unpaid());
    }

    #[test]
    fn a_requested_refund_reserves_its_amount_until_done_or_failed() {
        SessionTest::with(())
            .given(paid())
            .when(request_refund(1, 900))
            .then_expect_events(refund_requested(vec![], 1, 900));
        // Reserved: a second request, even of one cent, exceeds what is left.
        let reserved = refund_requested(paid(), 1, 900);
        assert_eq!(state(reserved.clone()).refundable(), Some(cny(0)));
        SessionTest::with(())
            .given(reserved.clone())
            .when(request_refund(2, 1))
            .then_expect_error(ShoppingError::RefundExceedsPayment);
        // The same request again (a retry) records nothing; another amount under its id is
        // refused.
        SessionTest::with(())
            .given(reserved.clone())
            .when(request_refund(1, 900))
            .then_expect_events(vec![]);
        SessionTest::with(())
            .given(reserved.clone())
            .when(request_refund(1, 800))
            .then_expect_error(ShoppingError::RefundIdReused);
        // Done: the reservation becomes the refund.
        SessionTest::with(())
            .given(reserved.clone())
            .when(refund(1, 900))
            .then_expect_events(refunded(vec![], 1, 900));
        let done = refunded(reserved.clone(), 1, 900);
        assert_eq!(state(done.clone()).refundable(), Some(cny(0)));
        assert!(state(done.clone()).pending_refunds.is_empty());
        SessionTest::with(())
            .given(done)
            .when(ShoppingCommand::FailRefund {
                refund_id: refund_id(1),
                reason: Label::parse("reason", "late", 200).unwrap(),
                at: t(102),
            })
            .then_expect_events(vec![]);
        // Failed: the amount is free again.
        SessionTest::with(())
            .given(reserved.clone())
            .when(ShoppingCommand::FailRefund {
                refund_id: refund_id(1),
                reason: Label::parse("reason", "refused", 200).unwrap(),
                at: t(101),
            })
            .then_expect_events(vec![refund_failed(1)]);
        let mut failed = reserved;
        failed.push(refund_failed(1));
        assert_eq!(state(failed.clone()).refundable(), Some(cny(900)));
        SessionTest::with(())
            .given(failed)
            .when(request_refund(2, 900))
            .then_expect_events(refund_requested(vec![], 2, 900));
    }

    #[test]
    fn refund_refusals() {
        SessionTest::with(())
            .given(refunded(paid(), 1, 350))
            .when(refund(2, 551))
            .then_expect_error(ShoppingError::RefundExceedsPayment);
        SessionTest::with(())
            .given(paid())
            .when(refund(1, 901))
            .then_expect_error(ShoppingError::RefundExceedsPayment);
        SessionTest::with(())
            .given(refunded(paid(), 1, 350))
            .when(refund(1, 100))
            .then_expect_error(ShoppingError::RefundIdReused);
        for given in [placed(), requested(placed(), 1, 900), closed_empty()] {
            SessionTest::with(())
                .given(given)
                .when(refund(1, 100))
                .then_expect_error(ShoppingError::OrderNotPaid);
        }
        SessionTest::with(())
            .given(paid())
            .when(refund(1, 0))
            .then_expect_error(ShoppingError::InvalidRefund);
        SessionTest::with(())
            .given(paid())
            .when(ShoppingCommand::Refund {
                refund_id: refund_id(1),
                amount: Money::new(100, Currency::parse("c", "EUR").unwrap()),
                at: t(100),
            })
            .then_expect_error(ShoppingError::InvalidRefund);
    }

    #[test]
    fn a_session_whose_door_never_opened_is_abandoned_once_and_owes_nothing() {
        let abandon = || ShoppingCommand::Abandon {
            reason: Label::parse("reason", "timeout", 200).unwrap(),
            at: t(30),
        };
        let abandoned = ShoppingEvent::SessionAbandoned {
            reason: Label::parse("reason", "timeout", 200).unwrap(),
            at: t(30),
        };
        SessionTest::with(())
            .given(started())
            .when(abandon())
            .then_expect_events(vec![abandoned.clone()]);
        let mut given = started();
        given.push(abandoned);
        assert!(!state(given.clone()).unpaid());
        SessionTest::with(())
            .given(given)
            .when(abandon())
            .then_expect_events(vec![]);
        SessionTest::with(())
            .given(placed())
            .when(abandon())
            .then_expect_error(ShoppingError::AlreadyClosed);
        SessionTest::with(())
            .given_no_previous_events()
            .when(abandon())
            .then_expect_error(ShoppingError::NotStarted);
    }

    #[test]
    fn unpaid_across_the_life_of_a_session() {
        assert!(!ShoppingSession::default().unpaid());
        assert!(!state(started()).unpaid());
        assert!(state(placed()).unpaid());
        assert!(state(in_review()).unpaid());
        assert!(!state(closed_empty()).unpaid());
        assert!(!state(paid()).unpaid());
        assert!(!state(resolved(vec![], 0)).unpaid());
    }

    #[test]
    fn events_have_fixed_names_and_round_trip() {
        let mut all = paid();
        all.extend(in_review()[3..].to_vec());
        all.extend(resolved(vec![], 0)[4..].to_vec());
        all.push(ShoppingEvent::SessionClosedEmpty { at: t(1) });
        all.push(ShoppingEvent::SessionAbandoned {
            reason: Label::parse("reason", "the cabinet did not open in time", 200).unwrap(),
            at: t(1),
        });
        all.push(failed(vec![], 3).remove(0));
        all = refund_requested(all, 1, 10);
        all = refunded(all, 1, 10);
        all.push(refund_failed(2));
        let mut names: Vec<String> = all.iter().map(|e| e.event_type()).collect();
        names.sort();
        names.dedup();
        let mut expected = ShoppingEvent::TYPES.map(String::from).to_vec();
        expected.sort();
        assert_eq!(names, expected);
        for e in all {
            assert_eq!(e.event_version(), "1");
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<ShoppingEvent>(&json).unwrap(), e);
        }
        // The aggregate's own state survives serialisation too (cqrs-es requires it).
        let s = state(refunded(paid(), 1, 350));
        let back: ShoppingSession =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.refundable().map(|m| m.minor()), Some(550));
    }
}
