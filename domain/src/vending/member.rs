//! A shopper as Latch knows them: one `member` stream per Kazaya member id.
//!
//! The first login through Kazaya registers the member with Latch (`MemberRegistered`, with the
//! profile Kazaya shared); every login is a `MemberAuthorized`, so the log shows who came in
//! and when. A changed profile (new nickname or avatar) is recorded as it arrives.

use super::values::KazayaUserId;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What Kazaya shares about a member (its "user basic information").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub phone: String,
    pub nickname: String,
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MemberCommand {
    Authorize {
        user: KazayaUserId,
        profile: Profile,
        /// The web session token this login issues (role user, subject `kazaya:<member>`).
        session: Session,
        at: DateTime<Utc>,
    },
}

/// A shopper's web session token as the log names it: by id, never by the token or its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl MemberCommand {
    pub fn name(&self) -> &'static str {
        "AuthorizeMember"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MemberEvent {
    MemberRegistered {
        user: KazayaUserId,
        profile: Profile,
        at: DateTime<Utc>,
    },
    MemberProfileChanged {
        profile: Profile,
        at: DateTime<Utc>,
    },
    /// A login; also the issue of the session token it names, so a login stays one command.
    /// Logins recorded before the token was named here have no `session`.
    MemberAuthorized {
        #[serde(default)]
        session: Option<Session>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MemberEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MemberRegistered { .. } => "MemberRegistered",
            Self::MemberProfileChanged { .. } => "MemberProfileChanged",
            Self::MemberAuthorized { .. } => "MemberAuthorized",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("the login belongs to another member")]
    WrongMember,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user: Option<KazayaUserId>,
    pub profile: Option<Profile>,
    pub logins: u64,
}

impl crate::store::StateShape for Member {}

impl Aggregate for Member {
    const TYPE: &'static str = "member";
    type Command = MemberCommand;
    type Event = MemberEvent;
    type Error = MemberError;
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
            MemberEvent::MemberRegistered { user, profile, .. } => {
                self.user = Some(user);
                self.profile = Some(profile);
            }
            MemberEvent::MemberProfileChanged { profile, .. } => self.profile = Some(profile),
            MemberEvent::MemberAuthorized { .. } => self.logins += 1,
        }
    }
}

impl Member {
    pub fn decide(&self, command: MemberCommand) -> Result<Vec<MemberEvent>, MemberError> {
        let MemberCommand::Authorize {
            user,
            profile,
            session,
            at,
        } = command;
        let mut events = Vec::new();
        match (&self.user, &self.profile) {
            (None, _) => events.push(MemberEvent::MemberRegistered { user, profile, at }),
            (Some(known), _) if *known != user => return Err(MemberError::WrongMember),
            (Some(_), Some(p)) if *p == profile => {}
            (Some(_), _) => events.push(MemberEvent::MemberProfileChanged { profile, at }),
        }
        events.push(MemberEvent::MemberAuthorized {
            session: Some(session),
            at,
        });
        Ok(events)
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
    fn user(id: &str) -> KazayaUserId {
        KazayaUserId::parse("user", id).unwrap()
    }
    fn profile(nick: &str) -> Profile {
        Profile {
            phone: "13455555555".into(),
            nickname: nick.into(),
            avatar: None,
        }
    }
    fn session() -> Session {
        Session {
            token_id: Uuid::from_u128(3),
            expires_at: at(),
        }
    }
    fn authorize(id: &str, nick: &str) -> MemberCommand {
        MemberCommand::Authorize {
            user: user(id),
            profile: profile(nick),
            session: session(),
            at: at(),
        }
    }
    fn authorized() -> MemberEvent {
        MemberEvent::MemberAuthorized {
            session: Some(session()),
            at: at(),
        }
    }

    #[test]
    fn first_login_registers_then_authorizes() {
        TestFramework::<Member>::with(())
            .given_no_previous_events()
            .when(authorize("ky_1", "小李"))
            .then_expect_events(vec![
                MemberEvent::MemberRegistered {
                    user: user("ky_1"),
                    profile: profile("小李"),
                    at: at(),
                },
                authorized(),
            ]);
    }

    #[test]
    fn later_logins_only_authorize_unless_the_profile_changed() {
        let registered = MemberEvent::MemberRegistered {
            user: user("ky_1"),
            profile: profile("小李"),
            at: at(),
        };
        TestFramework::<Member>::with(())
            .given(vec![registered.clone()])
            .when(authorize("ky_1", "小李"))
            .then_expect_events(vec![authorized()]);
        TestFramework::<Member>::with(())
            .given(vec![registered])
            .when(authorize("ky_1", "李四"))
            .then_expect_events(vec![
                MemberEvent::MemberProfileChanged {
                    profile: profile("李四"),
                    at: at(),
                },
                authorized(),
            ]);
    }

    #[test]
    fn a_login_for_another_member_is_refused() {
        TestFramework::<Member>::with(())
            .given(vec![MemberEvent::MemberRegistered {
                user: user("ky_1"),
                profile: profile("小李"),
                at: at(),
            }])
            .when(authorize("ky_2", "x"))
            .then_expect_error(MemberError::WrongMember);
    }

    #[test]
    fn a_login_recorded_before_sessions_were_named_still_reads() {
        let old = serde_json::json!({"MemberAuthorized": {"at": "2026-01-01T00:00:00Z"}});
        assert!(matches!(
            serde_json::from_value::<MemberEvent>(old).unwrap(),
            MemberEvent::MemberAuthorized { session: None, .. }
        ));
    }
}
