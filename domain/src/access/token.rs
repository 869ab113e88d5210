//! An API token: one `api_token` stream per token id (a UUIDv7 chosen when it is issued).
//!
//! The stream is short by construction: at most `TokenIssued` and `TokenRevoked`. A token
//! issued by a login (see the module above) has no `TokenIssued` here, since the login's own
//! event already records the issue with this id; its stream holds only the revocation. A
//! revocation is therefore accepted on an empty stream, and carries the role and subject (read
//! from the credential store) so that it reads on its own.

use crate::device::ParseError;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// What a token lets its holder do (the API's roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Operator,
    User,
    Auditor,
    Device,
    /// A locker's own screen, for one site.
    Kiosk,
}

impl TokenRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::User => "user",
            Self::Auditor => "auditor",
            Self::Device => "device",
            Self::Kiosk => "kiosk",
        }
    }
}

/// Whom a token acts for: `locker:<number>`, `kazaya:<member>`, an operator's name...
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subject(String);

impl Subject {
    pub const MAX_LEN: usize = 200;

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(ParseError::new(
                field,
                format!("must be 1-{} printable characters", Self::MAX_LEN),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a token recorded by `TokenIssued` came to be. (Sessions from a login are not here: the
/// login's own event issues them, see the module above.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenVia {
    /// Handed out by someone with access to the installation: `latch token`, the dev and bench
    /// set-ups.
    Provisioned,
}

/// Why a token stopped working before its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// Its holder logged out.
    Logout,
    /// Someone with access to the installation revoked it (`latch token revoke`).
    Revoked,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenCommand {
    Issue {
        token_id: Uuid,
        role: TokenRole,
        subject: Subject,
        expires_at: Option<DateTime<Utc>>,
        via: TokenVia,
        at: DateTime<Utc>,
    },
    Revoke {
        token_id: Uuid,
        role: TokenRole,
        subject: Subject,
        reason: RevokeReason,
        at: DateTime<Utc>,
    },
}

impl TokenCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Issue { .. } => "IssueToken",
            Self::Revoke { .. } => "RevokeToken",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokenEvent {
    TokenIssued {
        token_id: Uuid,
        role: TokenRole,
        subject: Subject,
        expires_at: Option<DateTime<Utc>>,
        via: TokenVia,
        at: DateTime<Utc>,
    },
    TokenRevoked {
        token_id: Uuid,
        role: TokenRole,
        subject: Subject,
        reason: RevokeReason,
        at: DateTime<Utc>,
    },
}

impl TokenEvent {
    pub const VERSION: &'static str = "1";
}

impl DomainEvent for TokenEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TokenIssued { .. } => "TokenIssued",
            Self::TokenRevoked { .. } => "TokenRevoked",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this token id has already been issued")]
    AlreadyIssued,
    #[error("the command names another token than its stream")]
    WrongStream,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyIssued => "token_already_issued",
            Self::WrongStream => "token_id_mismatch",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub token_id: Option<Uuid>,
    pub issued: bool,
    pub revoked: bool,
}

impl ApiToken {
    pub fn decide(&self, command: TokenCommand) -> Result<Vec<TokenEvent>, TokenError> {
        let id = match &command {
            TokenCommand::Issue { token_id, .. } | TokenCommand::Revoke { token_id, .. } => {
                *token_id
            }
        };
        if self.token_id.is_some_and(|known| known != id) {
            return Err(TokenError::WrongStream);
        }
        Ok(match command {
            TokenCommand::Issue {
                token_id,
                role,
                subject,
                expires_at,
                via,
                at,
            } => {
                // A revoked stream is spent too: its id was issued by a login.
                if self.issued || self.revoked {
                    return Err(TokenError::AlreadyIssued);
                }
                vec![TokenEvent::TokenIssued {
                    token_id,
                    role,
                    subject,
                    expires_at,
                    via,
                    at,
                }]
            }
            // Revoking twice (a logout retried) records nothing new.
            TokenCommand::Revoke { .. } if self.revoked => vec![],
            TokenCommand::Revoke {
                token_id,
                role,
                subject,
                reason,
                at,
            } => vec![TokenEvent::TokenRevoked {
                token_id,
                role,
                subject,
                reason,
                at,
            }],
        })
    }
}

impl crate::store::StateShape for ApiToken {}

impl Aggregate for ApiToken {
    const TYPE: &'static str = "api_token";
    type Command = TokenCommand;
    type Event = TokenEvent;
    type Error = TokenError;
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
            TokenEvent::TokenIssued { token_id, .. } => {
                self.token_id = Some(token_id);
                self.issued = true;
            }
            TokenEvent::TokenRevoked { token_id, .. } => {
                self.token_id = Some(token_id);
                self.revoked = true;
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
    fn id() -> Uuid {
        Uuid::from_u128(7)
    }
    fn subject() -> Subject {
        Subject::parse("subject", "locker:13455555555").unwrap()
    }
    fn issue() -> TokenCommand {
        TokenCommand::Issue {
            token_id: id(),
            role: TokenRole::User,
            subject: subject(),
            expires_at: Some(at()),
            via: TokenVia::Provisioned,
            at: at(),
        }
    }
    fn issued() -> TokenEvent {
        TokenEvent::TokenIssued {
            token_id: id(),
            role: TokenRole::User,
            subject: subject(),
            expires_at: Some(at()),
            via: TokenVia::Provisioned,
            at: at(),
        }
    }
    fn revoke() -> TokenCommand {
        TokenCommand::Revoke {
            token_id: id(),
            role: TokenRole::User,
            subject: subject(),
            reason: RevokeReason::Logout,
            at: at(),
        }
    }
    fn revoked() -> TokenEvent {
        TokenEvent::TokenRevoked {
            token_id: id(),
            role: TokenRole::User,
            subject: subject(),
            reason: RevokeReason::Logout,
            at: at(),
        }
    }

    #[test]
    fn issue_once() {
        TestFramework::<ApiToken>::with(())
            .given_no_previous_events()
            .when(issue())
            .then_expect_events(vec![issued()]);
        TestFramework::<ApiToken>::with(())
            .given(vec![issued()])
            .when(issue())
            .then_expect_error(TokenError::AlreadyIssued);
        TestFramework::<ApiToken>::with(())
            .given(vec![revoked()])
            .when(issue())
            .then_expect_error(TokenError::AlreadyIssued);
    }

    #[test]
    fn revoke_an_issued_token_or_one_issued_by_a_login_once() {
        TestFramework::<ApiToken>::with(())
            .given(vec![issued()])
            .when(revoke())
            .then_expect_events(vec![revoked()]);
        // Issued by a login: the issue is in the login's stream, this one starts here.
        TestFramework::<ApiToken>::with(())
            .given_no_previous_events()
            .when(revoke())
            .then_expect_events(vec![revoked()]);
        TestFramework::<ApiToken>::with(())
            .given(vec![issued(), revoked()])
            .when(revoke())
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_command_for_another_token_is_refused() {
        let TokenCommand::Revoke {
            role,
            subject,
            reason,
            at,
            ..
        } = revoke()
        else {
            unreachable!()
        };
        TestFramework::<ApiToken>::with(())
            .given(vec![issued()])
            .when(TokenCommand::Revoke {
                token_id: Uuid::from_u128(8),
                role,
                subject,
                reason,
                at,
            })
            .then_expect_error(TokenError::WrongStream);
    }

    #[test]
    fn events_name_no_secret_and_read_back() {
        for event in [issued(), revoked()] {
            let json = serde_json::to_value(&event).unwrap();
            let text = json.to_string();
            assert!(!text.contains("hash") && !text.contains("password"));
            assert!(!text.contains("\"token\""), "{text}");
            assert_eq!(serde_json::from_value::<TokenEvent>(json).unwrap(), event);
            assert_eq!(event.event_version(), "1");
        }
        assert_eq!(issued().event_type(), "TokenIssued");
        assert_eq!(revoked().event_type(), "TokenRevoked");
        assert!(Subject::parse("s", "").is_err());
        assert!(Subject::parse("s", "a\nb").is_err());
        assert!(Subject::parse("s", &"x".repeat(201)).is_err());
    }
}
