//! A third-party authorizer (a courier company): one `locker_authorizer` stream per number.
//!
//! Its service endpoint receives grant requests as signed webhooks; the signing secret (Standard
//! Webhooks, `whsec_` + base64) signs both directions. The secret itself never enters an event
//! or this state: it is kept encrypted in the vault (`crate::vault`) and named here by its id.
//! Version 1 of `AuthorizerRegistered` / `AuthorizerReconfigured` carried it in plain text; their
//! upcaster replaces it with a reference the vault resolves.

use super::values::{AuthorizerNumber, Endpoint};
use crate::device::Label;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum AuthorizerCommand {
    Register {
        number: AuthorizerNumber,
        name: Label,
        endpoint: Endpoint,
        secret_id: String,
        at: DateTime<Utc>,
    },
    Deactivate {
        at: DateTime<Utc>,
    },
    Activate {
        at: DateTime<Utc>,
    },
    /// A new service endpoint and/or signing secret (a no-op when both are unchanged).
    Reconfigure {
        endpoint: Endpoint,
        secret_id: String,
        at: DateTime<Utc>,
    },
}

impl AuthorizerCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RegisterAuthorizer",
            Self::Deactivate { .. } => "DeactivateAuthorizer",
            Self::Activate { .. } => "ActivateAuthorizer",
            Self::Reconfigure { .. } => "ReconfigureAuthorizer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AuthorizerEvent {
    AuthorizerRegistered {
        number: AuthorizerNumber,
        name: Label,
        endpoint: Endpoint,
        secret_id: String,
        at: DateTime<Utc>,
    },
    AuthorizerDeactivated {
        at: DateTime<Utc>,
    },
    AuthorizerActivated {
        at: DateTime<Utc>,
    },
    AuthorizerReconfigured {
        endpoint: Endpoint,
        secret_id: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AuthorizerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AuthorizerRegistered { .. } => "AuthorizerRegistered",
            Self::AuthorizerDeactivated { .. } => "AuthorizerDeactivated",
            Self::AuthorizerActivated { .. } => "AuthorizerActivated",
            Self::AuthorizerReconfigured { .. } => "AuthorizerReconfigured",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        match self {
            // 2: the secret's id instead of the secret.
            Self::AuthorizerRegistered { .. } | Self::AuthorizerReconfigured { .. } => "2",
            Self::AuthorizerDeactivated { .. } | Self::AuthorizerActivated { .. } => "1",
        }
        .to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    #[error("this authorizer number is already registered")]
    AlreadyRegistered,
    #[error("no such authorizer")]
    NotRegistered,
}

impl AuthorizerError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "authorizer_already_registered",
            Self::NotRegistered => "authorizer_not_found",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotRegistered)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Authorizer {
    pub number: Option<AuthorizerNumber>,
    pub name: Option<Label>,
    pub endpoint: Option<Endpoint>,
    pub secret_id: String,
    pub inactive: bool,
}

impl Authorizer {
    pub fn is_active(&self) -> bool {
        self.number.is_some() && !self.inactive
    }

    pub fn decide(
        &self,
        command: AuthorizerCommand,
    ) -> Result<Vec<AuthorizerEvent>, AuthorizerError> {
        if let AuthorizerCommand::Register {
            number,
            name,
            endpoint,
            secret_id,
            at,
        } = command
        {
            if self.number.is_some() {
                return Err(AuthorizerError::AlreadyRegistered);
            }
            return Ok(vec![AuthorizerEvent::AuthorizerRegistered {
                number,
                name,
                endpoint,
                secret_id,
                at,
            }]);
        }
        if self.number.is_none() {
            return Err(AuthorizerError::NotRegistered);
        }
        Ok(match command {
            AuthorizerCommand::Register { .. } => unreachable!("handled above"),
            AuthorizerCommand::Deactivate { at } if !self.inactive => {
                vec![AuthorizerEvent::AuthorizerDeactivated { at }]
            }
            AuthorizerCommand::Activate { at } if self.inactive => {
                vec![AuthorizerEvent::AuthorizerActivated { at }]
            }
            AuthorizerCommand::Reconfigure {
                endpoint,
                secret_id,
                at,
            } => {
                if self.endpoint.as_ref() == Some(&endpoint) && self.secret_id == secret_id {
                    vec![]
                } else {
                    vec![AuthorizerEvent::AuthorizerReconfigured {
                        endpoint,
                        secret_id,
                        at,
                    }]
                }
            }
            AuthorizerCommand::Deactivate { .. } | AuthorizerCommand::Activate { .. } => vec![],
        })
    }
}

impl crate::store::StateShape for Authorizer {}

impl Aggregate for Authorizer {
    const TYPE: &'static str = "locker_authorizer";
    type Command = AuthorizerCommand;
    type Event = AuthorizerEvent;
    type Error = AuthorizerError;
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
            AuthorizerEvent::AuthorizerRegistered {
                number,
                name,
                endpoint,
                secret_id,
                ..
            } => {
                self.number = Some(number);
                self.name = Some(name);
                self.endpoint = Some(endpoint);
                self.secret_id = secret_id;
            }
            AuthorizerEvent::AuthorizerDeactivated { .. } => self.inactive = true,
            AuthorizerEvent::AuthorizerActivated { .. } => self.inactive = false,
            AuthorizerEvent::AuthorizerReconfigured {
                endpoint,
                secret_id,
                ..
            } => {
                self.endpoint = Some(endpoint);
                self.secret_id = secret_id;
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
    fn registered() -> AuthorizerEvent {
        AuthorizerEvent::AuthorizerRegistered {
            number: AuthorizerNumber::parse("n", "0001").unwrap(),
            name: Label::parse("name", "快递公司A", 80).unwrap(),
            endpoint: Endpoint::parse("e", "http://127.0.0.1:7000/grants").unwrap(),
            secret_id: "fp_1".into(),
            at: at(),
        }
    }

    #[test]
    fn register_with_a_chinese_name_then_deactivate() {
        TestFramework::<Authorizer>::with(())
            .given_no_previous_events()
            .when(AuthorizerCommand::Register {
                number: AuthorizerNumber::parse("n", "0001").unwrap(),
                name: Label::parse("name", "快递公司A", 80).unwrap(),
                endpoint: Endpoint::parse("e", "http://127.0.0.1:7000/grants").unwrap(),
                secret_id: "fp_1".into(),
                at: at(),
            })
            .then_expect_events(vec![registered()]);
        TestFramework::<Authorizer>::with(())
            .given(vec![registered()])
            .when(AuthorizerCommand::Deactivate { at: at() })
            .then_expect_events(vec![AuthorizerEvent::AuthorizerDeactivated { at: at() }]);
        TestFramework::<Authorizer>::with(())
            .given(vec![registered()])
            .when(AuthorizerCommand::Activate { at: at() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn reconfigure_records_only_a_change() {
        let endpoint = Endpoint::parse("e", "http://127.0.0.1:7001/grants").unwrap();
        TestFramework::<Authorizer>::with(())
            .given(vec![registered()])
            .when(AuthorizerCommand::Reconfigure {
                endpoint: endpoint.clone(),
                secret_id: "fp_1".into(),
                at: at(),
            })
            .then_expect_events(vec![AuthorizerEvent::AuthorizerReconfigured {
                endpoint,
                secret_id: "fp_1".into(),
                at: at(),
            }]);
        TestFramework::<Authorizer>::with(())
            .given(vec![registered()])
            .when(AuthorizerCommand::Reconfigure {
                endpoint: Endpoint::parse("e", "http://127.0.0.1:7000/grants").unwrap(),
                secret_id: "fp_1".into(),
                at: at(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn refusals() {
        TestFramework::<Authorizer>::with(())
            .given_no_previous_events()
            .when(AuthorizerCommand::Deactivate { at: at() })
            .then_expect_error(AuthorizerError::NotRegistered);
        TestFramework::<Authorizer>::with(())
            .given(vec![registered()])
            .when(AuthorizerCommand::Register {
                number: AuthorizerNumber::parse("n", "0001").unwrap(),
                name: Label::parse("name", "x", 80).unwrap(),
                endpoint: Endpoint::parse("e", "http://a/").unwrap(),
                secret_id: "fp_2".into(),
                at: at(),
            })
            .then_expect_error(AuthorizerError::AlreadyRegistered);
    }
}
