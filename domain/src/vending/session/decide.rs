//! The decisions: each command checked against the session's state, giving the events to
//! record (or a refusal), and the amounts the session still owes or may refund.

use super::{
    PaymentState, ReviewLine, SessionStage, ShoppingCommand, ShoppingError, ShoppingEvent,
    ShoppingSession, WeighingPhase,
};
use crate::vending::planogram::Planogram;
use crate::vending::settle::{settle, OrderLine, Settlement};
use crate::vending::values::Money;
use std::collections::BTreeSet;
use uuid::Uuid;

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
