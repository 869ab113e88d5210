//! The grant process: what follows an authorizer's acceptance, from the log.
//!
//! The callback records only `GrantAccepted` (one request, one command). This worker then
//! - on `GrantAccepted`: hands the compartment from the requester to the receiver
//!   (`CompartmentCommand::Grant`, via the authorizer); if the compartment refuses (it changed
//!   hands, the reservation expired), fails the grant with the refusal's code;
//! - on `HolderChanged` naming an authorizer: completes the grant it names.
//!
//! Each command is keyed by the id of the event it follows from, caused by it and in its
//! correlation; the message is acked only after the command is recorded, so a redelivery after
//! a crash replays the first outcome instead of acting twice. Two durable consumers, as
//! nats-server 2.9 takes one filter subject per consumer. A direct grant has no process: its
//! one `HolderChanged` is the whole grant.

use crate::event_consumer::{self, context_for, EventHandler, Outcome};
use async_nats::jetstream::Context;
use cqrs_es::Aggregate;
use latch_domain::clock::SharedClock;
use latch_domain::locker::grant::GrantStatus;
use latch_domain::locker::{
    Compartment, CompartmentCommand, CompartmentEvent, Grant, GrantCommand, GrantError, GrantEvent,
    GrantTarget,
};
use latch_domain::store::{CommandError, Store};
use latch_nats::subjects;
use latch_projections::LoggedEvent;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Consumes `GrantAccepted`.
pub const ACCEPTED_CONSUMER: &str = "grant-process-accepted";
/// Consumes `HolderChanged`.
pub const HOLDERS_CONSUMER: &str = "grant-process-holders";

pub struct GrantProcess {
    pub store: Arc<Store>,
    pub js: Context,
    pub clock: SharedClock,
}

impl GrantProcess {
    pub async fn run(self, shutdown: CancellationToken) {
        let accepted = event_consumer::run(
            self.js.clone(),
            ACCEPTED_CONSUMER,
            subjects::events_of_type(Grant::TYPE, "GrantAccepted"),
            &self,
            shutdown.clone(),
        );
        let holders = event_consumer::run(
            self.js.clone(),
            HOLDERS_CONSUMER,
            subjects::events_of_type(Compartment::TYPE, "HolderChanged"),
            &self,
            shutdown.clone(),
        );
        // Authorizers that subscribe get their grants' events on their own subjects.
        let feed = crate::grant_feed::GrantFeed {
            store: self.store.clone(),
            js: self.js.clone(),
            fed: Default::default(),
        };
        let feed = event_consumer::run(
            self.js.clone(),
            crate::grant_feed::CONSUMER,
            subjects::events_of_aggregate(Grant::TYPE),
            &feed,
            shutdown.clone(),
        );
        tokio::join!(accepted, holders, feed);
    }

    /// The grant accepted in `event` (a `locker_grant` event): the holder changes, or the
    /// grant fails with the compartment's reason.
    async fn hand_over(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        let grant = self
            .store
            .grants
            .load(&event.aggregate_id)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        // Completed or failed already: a redelivery after the process moved on.
        if grant.status != GrantStatus::Accepted {
            return Ok(Outcome::Done);
        }
        let (Some(grant_id), Some(compartment), Some(from), Some(to), Some(target)) = (
            grant.grant_id,
            grant.compartment,
            grant.requester,
            grant.receiver,
            grant.target,
        ) else {
            tracing::error!("accepted grant without compartment, requester or receiver");
            return Ok(Outcome::Done);
        };
        let via = match target {
            GrantTarget::Authorizer { authorizer } => Some(authorizer),
            GrantTarget::Direct { .. } => None,
        };
        let command = CompartmentCommand::Grant {
            grant_id,
            from,
            to,
            via,
            // An authorizer's grant hands on the requester's whole current window.
            window: None,
            at: self.clock.now(),
        };
        let ctx = context_for(ACCEPTED_CONSUMER, event, "");
        match self
            .store
            .compartments
            .execute(&compartment.to_string(), command.name(), command, &ctx)
            .await
        {
            Ok(done) => {
                tracing::info!(%compartment, replayed = done.replayed, "compartment handed over");
                Ok(Outcome::Done)
            }
            Err(CommandError::Rejected(refused)) => {
                tracing::info!(%compartment, code = refused.code(), "compartment refused; grant fails");
                let fail = GrantCommand::Fail {
                    reason: refused.code().to_owned(),
                    at: self.clock.now(),
                };
                let ctx = context_for(ACCEPTED_CONSUMER, event, "fail");
                self.on_grant(&event.aggregate_id, fail, &ctx).await
            }
            Err(CommandError::Unavailable(e)) => Err(e),
            Err(e) => Ok(Outcome::Later(e.to_string())),
        }
    }

    /// The holder changed for an authorizer's grant: the grant is completed.
    async fn complete(&self, event: &LoggedEvent, grant_id: Uuid) -> Result<Outcome, String> {
        let command = GrantCommand::Complete {
            at: self.clock.now(),
        };
        let ctx = context_for(HOLDERS_CONSUMER, event, "");
        self.on_grant(&grant_id.to_string(), command, &ctx).await
    }

    async fn on_grant(
        &self,
        grant_id: &str,
        command: GrantCommand,
        ctx: &latch_domain::store::CommandContext,
    ) -> Result<Outcome, String> {
        let name = command.name();
        match self
            .store
            .grants
            .execute(grant_id, name, command, ctx)
            .await
        {
            Ok(done) => {
                tracing::info!(
                    grant = grant_id,
                    command = name,
                    replayed = done.replayed,
                    "grant moved on"
                );
                Ok(Outcome::Done)
            }
            // Nothing left to move: the grant is unknown or already over.
            Err(CommandError::Rejected(
                e @ (GrantError::NotRequested | GrantError::NotOpen(_)),
            )) => {
                tracing::warn!(
                    grant = grant_id,
                    command = name,
                    code = e.code(),
                    "grant not moved"
                );
                Ok(Outcome::Done)
            }
            Err(CommandError::Unavailable(e)) => Err(e),
            Err(e) => Ok(Outcome::Later(e.to_string())),
        }
    }
}

impl EventHandler for GrantProcess {
    /// `Err` is a passing failure (Postgres away): the message is tried again later.
    async fn handle(&self, event: &LoggedEvent) -> Result<Outcome, String> {
        if event.aggregate_type == Grant::TYPE {
            return match serde_json::from_value::<GrantEvent>(event.payload.clone()) {
                Ok(GrantEvent::GrantAccepted { .. }) => self.hand_over(event).await,
                _ => Ok(Outcome::Done),
            };
        }
        if event.aggregate_type == Compartment::TYPE {
            return match serde_json::from_value::<CompartmentEvent>(event.payload.clone()) {
                Ok(CompartmentEvent::HolderChanged {
                    grant_id,
                    via: Some(_),
                    ..
                }) => self.complete(event, grant_id).await,
                _ => Ok(Outcome::Done),
            };
        }
        Ok(Outcome::Done)
    }
}
