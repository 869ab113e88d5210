//! Turning the passage of time into events: devices that fell silent go offline, remote openings
//! that missed their deadline fail, shopping sessions whose cabinet closed without reporting
//! the weights after go to review (and free the cabinet), QR login codes past their deadline
//! expire. Time comes from the injected clock, so tests move it instead of sleeping.

use crate::consume::pause;
use chrono::Duration as ChronoDuration;
use latch_domain::clock::SharedClock;
use latch_domain::device::{DeviceCommand, DeviceId, OpenFailure};
use latch_domain::qr_login::QrLoginCommand;
use latch_domain::store::{CommandContext, CommandError, Store};
use latch_domain::vending::{ShoppingCommand, Weighing};
use latch_projections::{device_status, qr_login_status};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// A device with no heartbeat for this long is offline.
    pub heartbeat_timeout: ChronoDuration,
    /// How often to look.
    pub interval: Duration,
    /// A shopping session whose cabinet closed its door this long ago without reporting the
    /// weights after is settled without them: into review (nothing is charged on a guess), and
    /// the cabinet is freed for the next shopper.
    pub weights_after_timeout: ChronoDuration,
}

pub struct Sweeper {
    pub store: Arc<Store>,
    /// The read models it sweeps over.
    pub pool: sqlx::PgPool,
    pub clock: SharedClock,
    pub config: SweeperConfig,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "sweep failed; will try again");
            }
            pause(&shutdown, self.config.interval).await;
        }
        tracing::info!("sweeper stopped");
    }

    /// One pass. Returns how many commands it issued.
    pub async fn sweep(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let mut issued = 0;
        let silent =
            device_status::queries::silent_since(&self.pool, now - self.config.heartbeat_timeout)
                .await?;
        for device in silent {
            let command = DeviceCommand::ReportOffline {
                last_seen: device.last_seen.unwrap_or(device.last_event_at),
                at: now,
            };
            issued += self
                .issue(device.device_id, command, "system:liveness")
                .await;
        }
        let overdue = device_status::queries::overdue_openings(&self.pool, now).await?;
        for (device, request_id) in overdue {
            let id = DeviceId::from(device);
            let ctx = CommandContext::new("system:open-timeout").with_device(id.to_string());
            match crate::vending::fail_open(
                &self.store,
                &id,
                request_id,
                OpenFailure::Timeout,
                now,
                &ctx,
            )
            .await
            {
                crate::vending::Step::Done => issued += 1,
                // The read model lags the log: the opening may already be settled.
                crate::vending::Step::Refused(reason, _) => {
                    tracing::debug!(device = %id, reason, "open timeout refused")
                }
                crate::vending::Step::Retry(e) => {
                    tracing::warn!(device = %id, error = %e, "open timeout failed")
                }
            }
        }
        let silent_after_close = device_status::queries::quiet_after_close(
            &self.pool,
            now - self.config.weights_after_timeout,
            500,
        )
        .await?;
        for (session, device) in silent_after_close {
            issued += self.settle_without_weights(session, device, now).await;
        }
        for login in qr_login_status::queries::due(&self.pool, now, 500).await? {
            issued += self.expire_login(login, now).await;
        }
        Ok(issued)
    }

    async fn settle_without_weights(
        &self,
        session: Uuid,
        device: Uuid,
        now: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        let ctx = CommandContext::new("system:weights-timeout").with_device(device.to_string());
        let Ok(nothing) = Weighing::parse("shelves", &[]) else {
            return 0;
        };
        tracing::warn!(%session, %device, "no weights after the door closed; order goes to review");
        let close = ShoppingCommand::Close {
            weighing_after: nothing,
            at: now,
        };
        match self
            .store
            .shopping_sessions
            .execute(&session.to_string(), close.name(), close, &ctx)
            .await
        {
            Ok(_) | Err(CommandError::Rejected(_)) => {}
            Err(e) => {
                tracing::warn!(%session, error = %e, "settling without weights failed");
                return 0;
            }
        }
        let end = DeviceCommand::EndSession {
            session_id: session,
            at: now,
        };
        self.issue(device, end, "system:weights-timeout")
            .await
            .max(1)
    }

    async fn expire_login(&self, login: Uuid, now: chrono::DateTime<chrono::Utc>) -> usize {
        let id = login.to_string();
        let ctx = CommandContext::new("system:qr-expiry");
        let command = QrLoginCommand::Expire { at: now };
        let name = command.name();
        match self.store.qr_logins.execute(&id, name, command, &ctx).await {
            Ok(done) => done.events.len().min(1),
            Err(CommandError::Rejected(e)) => {
                tracing::debug!(login = %id, reason = e.code(), "expiry refused");
                0
            }
            Err(e) => {
                tracing::warn!(login = %id, error = %e, "expiry failed");
                0
            }
        }
    }

    async fn issue(&self, device: Uuid, command: DeviceCommand, actor: &str) -> usize {
        let id = device.to_string();
        let ctx = CommandContext::new(actor).with_device(id.clone());
        let name = command.name();
        match self.store.devices.execute(&id, name, command, &ctx).await {
            Ok(done) => done.events.len().min(1),
            // The read model lags the log: the state may already have moved on.
            Err(CommandError::Rejected(e)) => {
                tracing::debug!(device = %id, reason = e.code(), "sweep command refused");
                0
            }
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "sweep command failed");
                0
            }
        }
    }
}
