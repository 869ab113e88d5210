//! A locker user: one `locker_user` stream per user number (their phone number).
//!
//! The password is stored only as a slow hash (argon2, PHC string), computed by the caller and
//! kept in the vault's `credentials` table (`crate::vault`); events and this state carry only the
//! credential's id, so nothing password-derived reaches the log or a snapshot. Version 1 of
//! `LockerUserRegistered` / `LockerUserPasswordChanged` carried the hash; their upcaster replaces
//! it with a reference the vault resolves.

use super::values::UserNumber;
use crate::device::Label;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    Register {
        number: UserNumber,
        name: Label,
        credential_id: String,
        at: DateTime<Utc>,
    },
    ChangePassword {
        credential_id: String,
        at: DateTime<Utc>,
    },
    Disable {
        at: DateTime<Utc>,
    },
    Enable {
        at: DateTime<Utc>,
    },
}

impl UserCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RegisterLockerUser",
            Self::ChangePassword { .. } => "ChangeLockerUserPassword",
            Self::Disable { .. } => "DisableLockerUser",
            Self::Enable { .. } => "EnableLockerUser",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    LockerUserRegistered {
        number: UserNumber,
        name: Label,
        credential_id: String,
        at: DateTime<Utc>,
    },
    LockerUserPasswordChanged {
        credential_id: String,
        at: DateTime<Utc>,
    },
    LockerUserDisabled {
        at: DateTime<Utc>,
    },
    LockerUserEnabled {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::LockerUserRegistered { .. } => "LockerUserRegistered",
            Self::LockerUserPasswordChanged { .. } => "LockerUserPasswordChanged",
            Self::LockerUserDisabled { .. } => "LockerUserDisabled",
            Self::LockerUserEnabled { .. } => "LockerUserEnabled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        match self {
            // 2: the credential's id instead of the password hash.
            Self::LockerUserRegistered { .. } | Self::LockerUserPasswordChanged { .. } => "2",
            Self::LockerUserDisabled { .. } | Self::LockerUserEnabled { .. } => "1",
        }
        .to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("this user number is already registered")]
    AlreadyRegistered,
    #[error("no such user")]
    NotRegistered,
}

impl UserError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "user_already_registered",
            Self::NotRegistered => "user_not_found",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotRegistered)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockerUser {
    pub number: Option<UserNumber>,
    pub name: Option<Label>,
    pub credential_id: String,
    pub disabled: bool,
}

impl LockerUser {
    /// Registered and not disabled: may log in, receive grants.
    pub fn is_active(&self) -> bool {
        self.number.is_some() && !self.disabled
    }

    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        if let UserCommand::Register {
            number,
            name,
            credential_id,
            at,
        } = command
        {
            if self.number.is_some() {
                return Err(UserError::AlreadyRegistered);
            }
            return Ok(vec![UserEvent::LockerUserRegistered {
                number,
                name,
                credential_id,
                at,
            }]);
        }
        if self.number.is_none() {
            return Err(UserError::NotRegistered);
        }
        Ok(match command {
            UserCommand::Register { .. } => unreachable!("handled above"),
            UserCommand::ChangePassword { credential_id, at } => {
                vec![UserEvent::LockerUserPasswordChanged { credential_id, at }]
            }
            UserCommand::Disable { at } if !self.disabled => {
                vec![UserEvent::LockerUserDisabled { at }]
            }
            UserCommand::Enable { at } if self.disabled => {
                vec![UserEvent::LockerUserEnabled { at }]
            }
            UserCommand::Disable { .. } | UserCommand::Enable { .. } => vec![],
        })
    }
}

impl crate::store::StateShape for LockerUser {}

impl Aggregate for LockerUser {
    const TYPE: &'static str = "locker_user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
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
        match event {
            UserEvent::LockerUserRegistered {
                number,
                name,
                credential_id,
                ..
            } => {
                self.number = Some(number);
                self.name = Some(name);
                self.credential_id = credential_id;
            }
            UserEvent::LockerUserPasswordChanged { credential_id, .. } => {
                self.credential_id = credential_id
            }
            UserEvent::LockerUserDisabled { .. } => self.disabled = true,
            UserEvent::LockerUserEnabled { .. } => self.disabled = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    fn at() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }
    fn registered() -> UserEvent {
        UserEvent::LockerUserRegistered {
            number: UserNumber::parse("n", "13455555555").unwrap(),
            name: Label::parse("name", "李", 80).unwrap(),
            credential_id: "cred_1".into(),
            at: at(),
        }
    }

    #[test]
    fn register_then_disable_and_enable_as_transitions() {
        TestFramework::<LockerUser>::with(())
            .given_no_previous_events()
            .when(UserCommand::Register {
                number: UserNumber::parse("n", "13455555555").unwrap(),
                name: Label::parse("name", "李", 80).unwrap(),
                credential_id: "cred_1".into(),
                at: at(),
            })
            .then_expect_events(vec![registered()]);
        TestFramework::<LockerUser>::with(())
            .given(vec![registered()])
            .when(UserCommand::Disable { at: at() })
            .then_expect_events(vec![UserEvent::LockerUserDisabled { at: at() }]);
        TestFramework::<LockerUser>::with(())
            .given(vec![
                registered(),
                UserEvent::LockerUserDisabled { at: at() },
            ])
            .when(UserCommand::Disable { at: at() })
            .then_expect_events(vec![]);
        TestFramework::<LockerUser>::with(())
            .given(vec![registered()])
            .when(UserCommand::Enable { at: at() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn refusals() {
        TestFramework::<LockerUser>::with(())
            .given(vec![registered()])
            .when(UserCommand::Register {
                number: UserNumber::parse("n", "13455555555").unwrap(),
                name: Label::parse("name", "x", 80).unwrap(),
                credential_id: "cred_2".into(),
                at: at(),
            })
            .then_expect_error(UserError::AlreadyRegistered);
        TestFramework::<LockerUser>::with(())
            .given_no_previous_events()
            .when(UserCommand::Disable { at: at() })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn active_means_registered_and_not_disabled() {
        let mut user = LockerUser::default();
        assert!(!user.is_active());
        user.apply(registered());
        assert!(user.is_active());
        user.apply(UserEvent::LockerUserDisabled { at: at() });
        assert!(!user.is_active());
    }
}
