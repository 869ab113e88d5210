//! A vending cabinet's planogram as operators publish it: one `planogram` stream per cabinet
//! (keyed by the device id), each publication a new version.
//!
//! A shopping session snapshots the version current when the cabinet's baseline arrives, so a
//! restock or price change never rewrites what an earlier shopper owes.

use super::planogram::Planogram;
use super::values::OperatorId;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum PlanogramCommand {
    Publish {
        planogram: Planogram,
        operator: OperatorId,
        at: DateTime<Utc>,
    },
}

impl PlanogramCommand {
    pub fn name(&self) -> &'static str {
        "PublishPlanogram"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlanogramEvent {
    PlanogramPublished {
        version: u32,
        planogram: Planogram,
        operator: OperatorId,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PlanogramEvent {
    fn event_type(&self) -> String {
        "PlanogramPublished".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanogramError {
    /// Never raised today; kept so the aggregate has an error type that can grow.
    #[error("the planogram cannot be published")]
    Refused,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CabinetPlanogram {
    pub version: u32,
    pub current: Option<Planogram>,
}

impl crate::store::StateShape for CabinetPlanogram {}

impl Aggregate for CabinetPlanogram {
    const TYPE: &'static str = "planogram";
    type Command = PlanogramCommand;
    type Event = PlanogramEvent;
    type Error = PlanogramError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let PlanogramEvent::PlanogramPublished {
            version, planogram, ..
        } = event;
        self.version = version;
        self.current = Some(planogram);
    }
}

impl CabinetPlanogram {
    /// Publishing the planogram that is already current is a no-op, so operators' tools can
    /// push their whole configuration repeatedly.
    pub fn decide(&self, command: PlanogramCommand) -> Vec<PlanogramEvent> {
        let PlanogramCommand::Publish {
            planogram,
            operator,
            at,
        } = command;
        if self.current.as_ref() == Some(&planogram) {
            return vec![];
        }
        vec![PlanogramEvent::PlanogramPublished {
            version: self.version + 1,
            planogram,
            operator,
            at,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vending::RawSlot;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    fn plan(price: i64) -> Planogram {
        Planogram::parse(
            "slots",
            &[RawSlot {
                shelf: 1,
                sku: "cola-330".into(),
                name: "可乐 330ml".into(),
                unit_weight: 350,
                tolerance: 15,
                unit_price: price,
                currency: "CNY".into(),
            }],
        )
        .unwrap()
    }
    fn publish(price: i64) -> PlanogramCommand {
        PlanogramCommand::Publish {
            planogram: plan(price),
            operator: OperatorId::parse("operator", "ops").unwrap(),
            at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        }
    }
    fn published(version: u32, price: i64) -> PlanogramEvent {
        PlanogramEvent::PlanogramPublished {
            version,
            planogram: plan(price),
            operator: OperatorId::parse("operator", "ops").unwrap(),
            at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn first_publication_is_version_one() {
        TestFramework::<CabinetPlanogram>::with(())
            .given_no_previous_events()
            .when(publish(350))
            .then_expect_events(vec![published(1, 350)]);
    }

    #[test]
    fn a_price_change_is_a_new_version() {
        TestFramework::<CabinetPlanogram>::with(())
            .given(vec![published(1, 350)])
            .when(publish(400))
            .then_expect_events(vec![published(2, 400)]);
    }

    #[test]
    fn publishing_the_same_planogram_again_changes_nothing() {
        TestFramework::<CabinetPlanogram>::with(())
            .given(vec![published(1, 350)])
            .when(publish(350))
            .then_expect_events(vec![]);
    }
}
