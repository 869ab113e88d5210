//! The session's state ([`ShoppingSession`]): its stage, order, payment and refunds, and how
//! each event changes it.

use super::{ShoppingCommand, ShoppingError, ShoppingEvent, WeighingPhase};
use crate::device::DeviceId;
use crate::vending::planogram::Planogram;
use crate::vending::settle::{OrderLine, ReviewReason, Weighing};
use crate::vending::values::{KazayaUserId, Money, ProviderRef, SessionId};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
