//! A locker user's password login: one `locker_login` stream per attempt, one event in it.
//!
//! Attempts are short streams (never the user's own stream, which lives for years and would
//! grow with every wrong password anyone types for that number). A successful attempt's stream
//! id is the id of the token it issued, so `LockerLoginSucceeded` and the token's later
//! `TokenRevoked` share an id; a refused attempt gets a fresh UUIDv7.
//!
//! The password is checked by the caller (argon2 against the user's stored hash); nothing here
//! sees the password, its hash or the token.

use super::token::{Subject, TokenRole};
use crate::locker::UserNumber;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a login was refused. The caller of the API sees `invalid_credentials` for both a wrong
/// password and an unknown number (so the API does not tell which numbers exist); the log tells
/// auditors which it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginRefusal {
    InvalidCredentials,
    UnknownUser,
    UserDisabled,
}

impl LoginRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::UnknownUser => "unknown_user",
            Self::UserDisabled => "user_disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LoginCommand {
    /// The password matched an active user; a token with this id is being issued.
    Succeed {
        user_number: UserNumber,
        token_id: Uuid,
        subject: Subject,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    Refuse {
        user_number: UserNumber,
        reason: LoginRefusal,
        at: DateTime<Utc>,
    },
}

impl LoginCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Succeed { .. } => "SucceedLockerLogin",
            Self::Refuse { .. } => "RefuseLockerLogin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LoginEvent {
    LockerLoginSucceeded {
        user_number: UserNumber,
        token_id: Uuid,
        role: TokenRole,
        subject: Subject,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    LockerLoginRefused {
        user_number: UserNumber,
        reason: LoginRefusal,
        at: DateTime<Utc>,
    },
}

impl LoginEvent {
    pub const VERSION: &'static str = "1";
}

impl DomainEvent for LoginEvent {
    fn event_type(&self) -> String {
        match self {
            Self::LockerLoginSucceeded { .. } => "LockerLoginSucceeded",
            Self::LockerLoginRefused { .. } => "LockerLoginRefused",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("this login attempt has already been decided")]
    AlreadyDecided,
}

impl LoginError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyDecided => "login_already_decided",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockerLogin {
    pub decided: bool,
}

impl LockerLogin {
    pub fn decide(&self, command: LoginCommand) -> Result<Vec<LoginEvent>, LoginError> {
        if self.decided {
            return Err(LoginError::AlreadyDecided);
        }
        Ok(vec![match command {
            LoginCommand::Succeed {
                user_number,
                token_id,
                subject,
                expires_at,
                at,
            } => LoginEvent::LockerLoginSucceeded {
                user_number,
                token_id,
                role: TokenRole::User,
                subject,
                expires_at,
                at,
            },
            LoginCommand::Refuse {
                user_number,
                reason,
                at,
            } => LoginEvent::LockerLoginRefused {
                user_number,
                reason,
                at,
            },
        }])
    }
}

impl crate::store::StateShape for LockerLogin {}

impl Aggregate for LockerLogin {
    const TYPE: &'static str = "locker_login";
    type Command = LoginCommand;
    type Event = LoginEvent;
    type Error = LoginError;
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
            LoginEvent::LockerLoginSucceeded { .. } | LoginEvent::LockerLoginRefused { .. } => {
                self.decided = true
            }
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
    fn number() -> UserNumber {
        UserNumber::parse("n", "13455555555").unwrap()
    }
    fn subject() -> Subject {
        Subject::parse("subject", "locker:13455555555").unwrap()
    }
    fn succeed() -> LoginCommand {
        LoginCommand::Succeed {
            user_number: number(),
            token_id: Uuid::from_u128(9),
            subject: subject(),
            expires_at: at(),
            at: at(),
        }
    }
    fn succeeded() -> LoginEvent {
        LoginEvent::LockerLoginSucceeded {
            user_number: number(),
            token_id: Uuid::from_u128(9),
            role: TokenRole::User,
            subject: subject(),
            expires_at: at(),
            at: at(),
        }
    }
    fn refused(reason: LoginRefusal) -> LoginEvent {
        LoginEvent::LockerLoginRefused {
            user_number: number(),
            reason,
            at: at(),
        }
    }

    #[test]
    fn a_good_login_records_the_token_it_issues() {
        TestFramework::<LockerLogin>::with(())
            .given_no_previous_events()
            .when(succeed())
            .then_expect_events(vec![succeeded()]);
    }

    #[test]
    fn a_refused_login_records_why() {
        for reason in [
            LoginRefusal::InvalidCredentials,
            LoginRefusal::UnknownUser,
            LoginRefusal::UserDisabled,
        ] {
            TestFramework::<LockerLogin>::with(())
                .given_no_previous_events()
                .when(LoginCommand::Refuse {
                    user_number: number(),
                    reason,
                    at: at(),
                })
                .then_expect_events(vec![refused(reason)]);
        }
    }

    #[test]
    fn an_attempt_is_decided_once() {
        TestFramework::<LockerLogin>::with(())
            .given(vec![succeeded()])
            .when(succeed())
            .then_expect_error(LoginError::AlreadyDecided);
        TestFramework::<LockerLogin>::with(())
            .given(vec![refused(LoginRefusal::UserDisabled)])
            .when(succeed())
            .then_expect_error(LoginError::AlreadyDecided);
    }

    #[test]
    fn events_carry_no_secret() {
        for event in [succeeded(), refused(LoginRefusal::UnknownUser)] {
            let json = serde_json::to_value(&event).unwrap();
            let text = json.to_string();
            assert!(
                !text.contains("password") && !text.contains("hash"),
                "{text}"
            );
            assert_eq!(serde_json::from_value::<LoginEvent>(json).unwrap(), event);
            assert_eq!(event.event_version(), "1");
        }
        assert_eq!(
            serde_json::to_value(refused(LoginRefusal::UnknownUser)).unwrap()["LockerLoginRefused"]
                ["reason"],
            "unknown_user"
        );
    }
}
