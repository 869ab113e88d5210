//! The role registry: every long-running part of `latch serve` by name, and the tasks each one
//! runs.
//!
//! `latch serve --roles ...` picks roles; `src/app.rs` asks [`tasks`] for each one it runs and
//! spawns what comes back, so a new worker is one line here rather than a block in the
//! application. The API role's tasks belong to the HTTP server (its push hub and tidying), so
//! the application adds them itself.

use crate::authorizer_answers::AnswerHandler;
use crate::dispatch::Dispatch;
use crate::grant_delivery::{DeliveryConfig, GrantDelivery};
use crate::grant_process::GrantProcess;
use crate::ingest::Ingest;
use crate::locker_doors::LockerDoors;
use crate::locker_holder::{HolderConfig, LockerHolder};
use crate::locker_notifier::{LockerNotifier, SmsSender};
use crate::relay::{self, RelayConfig};
use crate::sweeper::{Sweeper, SweeperConfig};
use async_nats::jetstream::Context;
use latch_domain::clock::SharedClock;
use latch_domain::store::Store;
use latch_projections::audit::signing::Key;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The parts of `latch serve`, each of which can run in its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API.
    Api,
    /// Postgres events -> log positions -> EVENTS stream (one active at a time), and the signed
    /// checkpoints of the chain head.
    Relay,
    /// Read models from the log.
    Projector,
    /// Device telemetry -> commands.
    Ingest,
    /// Open requests -> device command subjects; locker deposits and collections -> open
    /// requests for the compartment door.
    Dispatch,
    /// Liveness, open-deadline, reservation and grant-deadline sweeps.
    Sweeper,
    /// Grant requests -> authorizers' NATS subjects and signed webhooks, retried.
    GrantDelivery,
    /// An authorizer's acceptance -> the compartment's holder change -> the grant completed
    /// (or failed when the compartment refuses).
    GrantProcess,
    /// Holder changes -> SMS, NATS notices and authorizer confirmations.
    LockerNotifier,
    /// Authorizers' signed answers over NATS (`latch.authorizers.{n}.answers`).
    AuthorizerAnswers,
    /// Holder changes -> the compartment door's device (`latch.cmd.<device>.holder`), until it
    /// acknowledges.
    LockerHolder,
}

impl Role {
    pub const ALL: [Role; 11] = [
        Role::Api,
        Role::Relay,
        Role::Projector,
        Role::Ingest,
        Role::Dispatch,
        Role::Sweeper,
        Role::GrantDelivery,
        Role::GrantProcess,
        Role::LockerNotifier,
        Role::AuthorizerAnswers,
        Role::LockerHolder,
    ];

    /// The name `LATCH_ROLES` and `--roles` use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Relay => "relay",
            Role::Projector => "projector",
            Role::Ingest => "ingest",
            Role::Dispatch => "dispatch",
            Role::Sweeper => "sweeper",
            Role::GrantDelivery => "grant-delivery",
            Role::GrantProcess => "grant-process",
            Role::LockerNotifier => "locker-notifier",
            Role::AuthorizerAnswers => "authorizer-answers",
            Role::LockerHolder => "locker-holder",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(Role::as_str).collect();
                format!("unknown role {raw:?}; roles are {}", names.join(", "))
            })
    }
}

/// What the workers are given: connections, the clock, and their settings.
pub struct Deps {
    pub pool: sqlx::PgPool,
    pub store: Arc<Store>,
    pub nats: async_nats::Client,
    pub js: Context,
    pub clock: SharedClock,
    pub relay: RelayConfig,
    pub sweeper: SweeperConfig,
    /// How long a device has to report a door opening that a worker asked for.
    pub open_timeout: chrono::Duration,
    pub delivery: DeliveryConfig,
    /// Signs chain-head checkpoints every `audit_checkpoint_every`, when configured.
    pub audit_key: Option<Key>,
    pub audit_checkpoint_every: Duration,
    pub sms: Arc<dyn SmsSender>,
    /// Checks and records an authorizer's answer (the API's callback logic).
    pub answers: Arc<dyn AnswerHandler>,
    /// How long a locker device has to acknowledge a holder update, and the longest pause
    /// between attempts.
    pub holder: HolderConfig,
}

pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The tasks `role` runs, each stopping when `shutdown` is cancelled.
pub fn tasks(role: Role, d: &Deps, shutdown: &CancellationToken) -> Vec<Task> {
    let stop = shutdown.clone();
    match role {
        Role::Api => vec![],
        Role::Relay => {
            let mut tasks: Vec<Task> = vec![Box::pin(relay::run(
                d.pool.clone(),
                d.js.clone(),
                d.relay.clone(),
                stop.clone(),
            ))];
            if let Some(key) = d.audit_key.clone() {
                tasks.push(Box::pin(latch_projections::audit::signing::run_signer(
                    d.pool.clone(),
                    key,
                    d.audit_checkpoint_every,
                    stop,
                )));
            }
            tasks
        }
        Role::Projector => {
            use crate::projector::run;
            use latch_projections::{device_status, lockers, orders, qr_login_status};
            let (pool, js) = (&d.pool, &d.js);
            vec![
                Box::pin(run(
                    pool.clone(),
                    js.clone(),
                    device_status::DeviceStatusProjection,
                    stop.clone(),
                )),
                Box::pin(run(
                    pool.clone(),
                    js.clone(),
                    qr_login_status::QrLoginStatusProjection,
                    stop.clone(),
                )),
                Box::pin(run(
                    pool.clone(),
                    js.clone(),
                    orders::OrdersProjection,
                    stop.clone(),
                )),
                Box::pin(run(
                    pool.clone(),
                    js.clone(),
                    lockers::LockersProjection,
                    stop,
                )),
            ]
        }
        Role::Ingest => vec![Box::pin(
            Ingest::new(
                d.store.clone(),
                d.pool.clone(),
                d.js.clone(),
                d.clock.clone(),
            )
            .run(stop),
        )],
        Role::Dispatch => vec![
            Box::pin(
                Dispatch {
                    client: d.nats.clone(),
                    js: d.js.clone(),
                    clock: d.clock.clone(),
                }
                .run(stop.clone()),
            ),
            Box::pin(
                LockerDoors {
                    store: d.store.clone(),
                    js: d.js.clone(),
                    clock: d.clock.clone(),
                    open_timeout: d.open_timeout,
                }
                .run(stop),
            ),
        ],
        Role::Sweeper => vec![
            Box::pin(
                Sweeper {
                    store: d.store.clone(),
                    pool: d.pool.clone(),
                    clock: d.clock.clone(),
                    config: d.sweeper.clone(),
                }
                .run(stop.clone()),
            ),
            Box::pin(crate::locker_sweeper::run(
                d.store.clone(),
                d.pool.clone(),
                d.clock.clone(),
                d.sweeper.interval,
                stop,
            )),
        ],
        Role::GrantDelivery => vec![Box::pin(
            GrantDelivery::new(
                d.store.clone(),
                d.nats.clone(),
                d.js.clone(),
                d.clock.clone(),
                d.delivery.clone(),
            )
            .run(stop),
        )],
        Role::GrantProcess => vec![Box::pin(
            GrantProcess {
                store: d.store.clone(),
                js: d.js.clone(),
                clock: d.clock.clone(),
            }
            .run(stop),
        )],
        Role::LockerNotifier => vec![Box::pin(
            LockerNotifier {
                nats: d.nats.clone(),
                js: d.js.clone(),
                sms: d.sms.clone(),
            }
            .run(stop),
        )],
        Role::AuthorizerAnswers => vec![Box::pin(crate::authorizer_answers::run(
            d.nats.clone(),
            d.answers.clone(),
            stop,
        ))],
        Role::LockerHolder => vec![Box::pin(
            LockerHolder::new(
                d.store.clone(),
                d.nats.clone(),
                d.js.clone(),
                d.holder.clone(),
            )
            .run(stop),
        )],
    }
}

/// Calls `tick` every `interval` until `shutdown`: housekeeping that belongs to some in-memory
/// state (the QR push hub's limiters, say) rather than to the log.
pub async fn every(interval: Duration, shutdown: CancellationToken, tick: impl Fn() + Send) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => tick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_parses_from_its_own_name() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        let err = Role::parse("realy").unwrap_err();
        assert!(err.contains("grant-delivery"), "{err}");
    }
}
