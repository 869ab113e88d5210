//! A site (outlet) where parcel lockers stand: one `locker_site` stream per site number.

use crate::device::{Label, SiteCode};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum SiteCommand {
    Register {
        site: SiteCode,
        name: Label,
        at: DateTime<Utc>,
    },
    Rename {
        name: Label,
        at: DateTime<Utc>,
    },
}

impl SiteCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RegisterSite",
            Self::Rename { .. } => "RenameSite",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SiteEvent {
    SiteRegistered {
        site: SiteCode,
        name: Label,
        at: DateTime<Utc>,
    },
    SiteRenamed {
        name: Label,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SiteEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SiteRegistered { .. } => "SiteRegistered",
            Self::SiteRenamed { .. } => "SiteRenamed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    #[error("this site is already registered")]
    AlreadyRegistered,
    #[error("no such site")]
    NotRegistered,
}

impl SiteError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "site_already_registered",
            Self::NotRegistered => "site_not_found",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotRegistered)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub site: Option<SiteCode>,
    pub name: Option<Label>,
}

impl crate::store::StateShape for Site {}

impl Aggregate for Site {
    const TYPE: &'static str = "locker_site";
    type Command = SiteCommand;
    type Event = SiteEvent;
    type Error = SiteError;
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
            SiteEvent::SiteRegistered { site, name, .. } => {
                self.site = Some(site);
                self.name = Some(name);
            }
            SiteEvent::SiteRenamed { name, .. } => self.name = Some(name),
        }
    }
}

impl Site {
    pub fn decide(&self, command: SiteCommand) -> Result<Vec<SiteEvent>, SiteError> {
        match command {
            SiteCommand::Register { site, name, at } => {
                if self.site.is_some() {
                    return Err(SiteError::AlreadyRegistered);
                }
                Ok(vec![SiteEvent::SiteRegistered { site, name, at }])
            }
            SiteCommand::Rename { name, at } => {
                if self.site.is_none() {
                    return Err(SiteError::NotRegistered);
                }
                if self.name.as_ref() == Some(&name) {
                    return Ok(vec![]);
                }
                Ok(vec![SiteEvent::SiteRenamed { name, at }])
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
    fn registered() -> SiteEvent {
        SiteEvent::SiteRegistered {
            site: SiteCode::parse("site", "610091A01").unwrap(),
            name: Label::parse("name", "西湖驿站", 80).unwrap(),
            at: at(),
        }
    }

    #[test]
    fn register_once_with_a_utf8_name() {
        TestFramework::<Site>::with(())
            .given_no_previous_events()
            .when(SiteCommand::Register {
                site: SiteCode::parse("site", "610091A01").unwrap(),
                name: Label::parse("name", "西湖驿站", 80).unwrap(),
                at: at(),
            })
            .then_expect_events(vec![registered()]);
        TestFramework::<Site>::with(())
            .given(vec![registered()])
            .when(SiteCommand::Register {
                site: SiteCode::parse("site", "610091A01").unwrap(),
                name: Label::parse("name", "x", 80).unwrap(),
                at: at(),
            })
            .then_expect_error(SiteError::AlreadyRegistered);
    }

    #[test]
    fn rename_needs_a_site_and_ignores_the_same_name() {
        let name = Label::parse("name", "西湖驿站", 80).unwrap();
        TestFramework::<Site>::with(())
            .given_no_previous_events()
            .when(SiteCommand::Rename {
                name: name.clone(),
                at: at(),
            })
            .then_expect_error(SiteError::NotRegistered);
        TestFramework::<Site>::with(())
            .given(vec![registered()])
            .when(SiteCommand::Rename { name, at: at() })
            .then_expect_events(vec![]);
    }
}
