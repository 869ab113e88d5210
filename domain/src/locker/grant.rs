//! One grant request: a `locker_grant` stream per request id (UUIDv7).
//!
//! A direct grant names its receiver at once; a third-party grant names an authorizer, whose
//! system picks the receiver and answers before the deadline (accept or decline). An accepted
//! grant is completed once the compartment's holder has changed, or fails if the compartment
//! changed hands meanwhile. No answer before the deadline expires the request; the holder stays
//! as it was in every outcome but completion.

use super::values::{AuthorizerNumber, CompartmentId, Size, UserNumber};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// To whom the requester hands the compartment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GrantTarget {
    Direct { receiver: UserNumber },
    Authorizer { authorizer: AuthorizerNumber },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    #[default]
    None,
    Requested,
    Accepted,
    Completed,
    Declined,
    Expired,
    Failed,
}

impl GrantStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Requested => "requested",
            Self::Accepted => "accepted",
            Self::Completed => "completed",
            Self::Declined => "declined",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GrantCommand {
    Request {
        grant_id: Uuid,
        compartment: CompartmentId,
        size: Size,
        requester: UserNumber,
        target: GrantTarget,
        deadline: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The authorizer picked `receiver`.
    Accept {
        authorizer: AuthorizerNumber,
        receiver: UserNumber,
        at: DateTime<Utc>,
    },
    Decline {
        authorizer: AuthorizerNumber,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The compartment's holder changed to the receiver.
    Complete { at: DateTime<Utc> },
    /// The compartment refused the change (it changed hands meanwhile, ...).
    Fail { reason: String, at: DateTime<Utc> },
    /// No answer before the deadline; a no-op before it or after an answer.
    Expire { at: DateTime<Utc> },
}

impl GrantCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Request { .. } => "RequestGrant",
            Self::Accept { .. } => "AcceptGrant",
            Self::Decline { .. } => "DeclineGrant",
            Self::Complete { .. } => "CompleteGrant",
            Self::Fail { .. } => "FailGrant",
            Self::Expire { .. } => "ExpireGrant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GrantEvent {
    GrantRequested {
        grant_id: Uuid,
        compartment: CompartmentId,
        size: Size,
        requester: UserNumber,
        target: GrantTarget,
        deadline: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    GrantAccepted {
        authorizer: AuthorizerNumber,
        receiver: UserNumber,
        at: DateTime<Utc>,
    },
    GrantDeclined {
        authorizer: AuthorizerNumber,
        reason: String,
        at: DateTime<Utc>,
    },
    GrantCompleted {
        receiver: UserNumber,
        at: DateTime<Utc>,
    },
    GrantFailed {
        reason: String,
        at: DateTime<Utc>,
    },
    GrantExpired {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for GrantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::GrantRequested { .. } => "GrantRequested",
            Self::GrantAccepted { .. } => "GrantAccepted",
            Self::GrantDeclined { .. } => "GrantDeclined",
            Self::GrantCompleted { .. } => "GrantCompleted",
            Self::GrantFailed { .. } => "GrantFailed",
            Self::GrantExpired { .. } => "GrantExpired",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("no such grant request")]
    NotRequested,
    #[error("this grant request already exists")]
    AlreadyRequested,
    #[error("a compartment cannot be granted to its own holder")]
    GrantToSelf,
    #[error("this grant request was sent to another authorizer")]
    WrongAuthorizer,
    #[error("this grant request is no longer open (it is {0})")]
    NotOpen(&'static str),
    #[error("the grant request's deadline has passed")]
    DeadlinePassed,
    #[error("the deadline must be after the request")]
    BadDeadline,
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotRequested => "grant_not_found",
            Self::AlreadyRequested => "grant_already_requested",
            Self::GrantToSelf => "grant_to_self",
            Self::WrongAuthorizer => "wrong_authorizer",
            Self::NotOpen(_) => "grant_not_open",
            Self::DeadlinePassed => "grant_deadline_passed",
            Self::BadDeadline => "invalid_deadline",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotRequested)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: Option<Uuid>,
    pub compartment: Option<CompartmentId>,
    pub size: Option<Size>,
    pub requester: Option<UserNumber>,
    pub target: Option<GrantTarget>,
    pub deadline: Option<DateTime<Utc>>,
    pub status: GrantStatus,
    pub receiver: Option<UserNumber>,
}

impl Grant {
    pub fn decide(&self, command: GrantCommand) -> Result<Vec<GrantEvent>, GrantError> {
        use GrantCommand as C;
        use GrantEvent as E;
        if let C::Request {
            grant_id,
            compartment,
            size,
            requester,
            target,
            deadline,
            at,
        } = command
        {
            if self.grant_id.is_some() {
                return Err(GrantError::AlreadyRequested);
            }
            if matches!(&target, GrantTarget::Direct { receiver } if *receiver == requester) {
                return Err(GrantError::GrantToSelf);
            }
            if deadline <= at {
                return Err(GrantError::BadDeadline);
            }
            return Ok(vec![E::GrantRequested {
                grant_id,
                compartment,
                size,
                requester,
                target,
                deadline,
                at,
            }]);
        }
        if self.grant_id.is_none() {
            return Err(GrantError::NotRequested);
        }
        let via = |authorizer: &AuthorizerNumber| match &self.target {
            Some(GrantTarget::Authorizer { authorizer: a }) if a == authorizer => Ok(()),
            _ => Err(GrantError::WrongAuthorizer),
        };
        let open = |wanted: GrantStatus| {
            if self.status == wanted {
                Ok(())
            } else {
                Err(GrantError::NotOpen(self.status.as_str()))
            }
        };
        let before_deadline = |at: DateTime<Utc>| {
            if self.deadline.is_some_and(|d| at >= d) {
                Err(GrantError::DeadlinePassed)
            } else {
                Ok(())
            }
        };
        match command {
            C::Request { .. } => unreachable!("handled above"),
            C::Accept {
                authorizer,
                receiver,
                at,
            } => {
                via(&authorizer)?;
                open(GrantStatus::Requested)?;
                before_deadline(at)?;
                if self.requester.as_ref() == Some(&receiver) {
                    return Err(GrantError::GrantToSelf);
                }
                Ok(vec![E::GrantAccepted {
                    authorizer,
                    receiver,
                    at,
                }])
            }
            C::Decline {
                authorizer,
                reason,
                at,
            } => {
                via(&authorizer)?;
                open(GrantStatus::Requested)?;
                Ok(vec![E::GrantDeclined {
                    authorizer,
                    reason,
                    at,
                }])
            }
            C::Complete { at } => {
                let receiver = match (&self.status, &self.target, &self.receiver) {
                    (GrantStatus::Requested, Some(GrantTarget::Direct { receiver }), _) => {
                        receiver.clone()
                    }
                    (GrantStatus::Accepted, _, Some(receiver)) => receiver.clone(),
                    (GrantStatus::Completed, _, _) => return Ok(vec![]),
                    (status, _, _) => return Err(GrantError::NotOpen(status.as_str())),
                };
                Ok(vec![E::GrantCompleted { receiver, at }])
            }
            C::Fail { reason, at } => match self.status {
                GrantStatus::Requested | GrantStatus::Accepted => {
                    Ok(vec![E::GrantFailed { reason, at }])
                }
                status => Err(GrantError::NotOpen(status.as_str())),
            },
            C::Expire { at } => {
                let due = self.deadline.is_some_and(|d| at >= d);
                if self.status == GrantStatus::Requested && due {
                    Ok(vec![E::GrantExpired { at }])
                } else {
                    Ok(vec![])
                }
            }
        }
    }
}

impl crate::store::StateShape for Grant {}

impl Aggregate for Grant {
    const TYPE: &'static str = "locker_grant";
    type Command = GrantCommand;
    type Event = GrantEvent;
    type Error = GrantError;
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
        use GrantEvent as E;
        match event {
            E::GrantRequested {
                grant_id,
                compartment,
                size,
                requester,
                target,
                deadline,
                ..
            } => {
                if let GrantTarget::Direct { receiver } = &target {
                    self.receiver = Some(receiver.clone());
                }
                self.grant_id = Some(grant_id);
                self.compartment = Some(compartment);
                self.size = Some(size);
                self.requester = Some(requester);
                self.target = Some(target);
                self.deadline = Some(deadline);
                self.status = GrantStatus::Requested;
            }
            E::GrantAccepted { receiver, .. } => {
                self.receiver = Some(receiver);
                self.status = GrantStatus::Accepted;
            }
            E::GrantDeclined { .. } => self.status = GrantStatus::Declined,
            E::GrantCompleted { .. } => self.status = GrantStatus::Completed,
            E::GrantFailed { .. } => self.status = GrantStatus::Failed,
            E::GrantExpired { .. } => self.status = GrantStatus::Expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type GrantTest = TestFramework<Grant>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn user(n: &str) -> UserNumber {
        UserNumber::parse("user", n).unwrap()
    }
    fn zheng() -> UserNumber {
        user("13488888888")
    }
    fn wang() -> UserNumber {
        user("13466666666")
    }
    fn company(n: &str) -> AuthorizerNumber {
        AuthorizerNumber::parse("authorizer", n).unwrap()
    }
    fn requested(target: GrantTarget) -> GrantEvent {
        GrantEvent::GrantRequested {
            grant_id: Uuid::from_u128(1),
            compartment: CompartmentId::parse("c", "610091A01:01").unwrap(),
            size: Size::Large,
            requester: zheng(),
            target,
            deadline: t(300),
            at: t(0),
        }
    }
    fn via_a() -> GrantEvent {
        requested(GrantTarget::Authorizer {
            authorizer: company("0001"),
        })
    }
    fn request(target: GrantTarget) -> GrantCommand {
        GrantCommand::Request {
            grant_id: Uuid::from_u128(1),
            compartment: CompartmentId::parse("c", "610091A01:01").unwrap(),
            size: Size::Large,
            requester: zheng(),
            target,
            deadline: t(300),
            at: t(0),
        }
    }
    fn accept(by: &str, receiver: UserNumber, at: i64) -> GrantCommand {
        GrantCommand::Accept {
            authorizer: company(by),
            receiver,
            at: t(at),
        }
    }

    #[test]
    fn a_third_party_grant_is_requested_accepted_and_completed() {
        let target = GrantTarget::Authorizer {
            authorizer: company("0001"),
        };
        GrantTest::with(())
            .given_no_previous_events()
            .when(request(target))
            .then_expect_events(vec![via_a()]);
        GrantTest::with(())
            .given(vec![via_a()])
            .when(accept("0001", wang(), 10))
            .then_expect_events(vec![GrantEvent::GrantAccepted {
                authorizer: company("0001"),
                receiver: wang(),
                at: t(10),
            }]);
        let accepted = GrantEvent::GrantAccepted {
            authorizer: company("0001"),
            receiver: wang(),
            at: t(10),
        };
        GrantTest::with(())
            .given(vec![via_a(), accepted.clone()])
            .when(GrantCommand::Complete { at: t(11) })
            .then_expect_events(vec![GrantEvent::GrantCompleted {
                receiver: wang(),
                at: t(11),
            }]);
        // A second answer for the same request is refused.
        GrantTest::with(())
            .given(vec![via_a(), accepted])
            .when(accept("0001", user("13400000000"), 12))
            .then_expect_error(GrantError::NotOpen("accepted"));
    }

    #[test]
    fn a_direct_grant_completes_without_an_answer() {
        let direct = requested(GrantTarget::Direct {
            receiver: user("13499996666"),
        });
        GrantTest::with(())
            .given(vec![direct])
            .when(GrantCommand::Complete { at: t(1) })
            .then_expect_events(vec![GrantEvent::GrantCompleted {
                receiver: user("13499996666"),
                at: t(1),
            }]);
        GrantTest::with(())
            .given_no_previous_events()
            .when(request(GrantTarget::Direct { receiver: zheng() }))
            .then_expect_error(GrantError::GrantToSelf);
    }

    #[test]
    fn answers_must_come_from_the_named_authorizer_before_the_deadline() {
        GrantTest::with(())
            .given(vec![via_a()])
            .when(accept("0002", wang(), 10))
            .then_expect_error(GrantError::WrongAuthorizer);
        GrantTest::with(())
            .given(vec![via_a()])
            .when(accept("0001", wang(), 300))
            .then_expect_error(GrantError::DeadlinePassed);
        GrantTest::with(())
            .given(vec![via_a()])
            .when(accept("0001", zheng(), 10))
            .then_expect_error(GrantError::GrantToSelf);
        GrantTest::with(())
            .given_no_previous_events()
            .when(accept("0001", wang(), 10))
            .then_expect_error(GrantError::NotRequested);
    }

    #[test]
    fn decline_fail_and_expire_leave_the_request_closed() {
        GrantTest::with(())
            .given(vec![via_a()])
            .when(GrantCommand::Decline {
                authorizer: company("0001"),
                reason: "无人值班".into(),
                at: t(5),
            })
            .then_expect_events(vec![GrantEvent::GrantDeclined {
                authorizer: company("0001"),
                reason: "无人值班".into(),
                at: t(5),
            }]);
        GrantTest::with(())
            .given(vec![via_a()])
            .when(GrantCommand::Expire { at: t(299) })
            .then_expect_events(vec![]);
        GrantTest::with(())
            .given(vec![via_a()])
            .when(GrantCommand::Expire { at: t(300) })
            .then_expect_events(vec![GrantEvent::GrantExpired { at: t(300) }]);
        let expired = vec![via_a(), GrantEvent::GrantExpired { at: t(300) }];
        GrantTest::with(())
            .given(expired.clone())
            .when(accept("0001", wang(), 301))
            .then_expect_error(GrantError::NotOpen("expired"));
        GrantTest::with(())
            .given(expired)
            .when(GrantCommand::Complete { at: t(301) })
            .then_expect_error(GrantError::NotOpen("expired"));
        GrantTest::with(())
            .given(vec![
                via_a(),
                GrantEvent::GrantAccepted {
                    authorizer: company("0001"),
                    receiver: wang(),
                    at: t(10),
                },
            ])
            .when(GrantCommand::Fail {
                reason: "not_the_holder".into(),
                at: t(11),
            })
            .then_expect_events(vec![GrantEvent::GrantFailed {
                reason: "not_the_holder".into(),
                at: t(11),
            }]);
    }
}
