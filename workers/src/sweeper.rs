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
        let silent: Vec<(
            Uuid,
            Option<chrono::DateTime<chrono::Utc>>,
            chrono::DateTime<chrono::Utc>,
        )> = sqlx::query_as(
            "SELECT s.device_id, l.last_seen, s.last_event_at FROM device_status s
               LEFT JOIN device_liveness l ON l.device_id = s.device_id
              WHERE s.online AND coalesce(l.last_seen, s.last_event_at) < $1",
        )
        .bind(now - self.config.heartbeat_timeout)
        .fetch_all(&self.store.pool)
        .await?;
        for (device, last_seen, last_event) in silent {
            let command = DeviceCommand::ReportOffline {
                last_seen: last_seen.unwrap_or(last_event),
                at: now,
            };
            issued += self.issue(device, command, "system:liveness").await;
        }
        let overdue: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT device_id, pending_open_request FROM device_status
              WHERE pending_open_request IS NOT NULL AND pending_open_deadline < $1",
        )
        .bind(now)
        .fetch_all(&self.store.pool)
        .await?;
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
        let silent_after_close: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT o.session_id, o.device_id FROM orders o
               JOIN device_status d ON d.device_id = o.device_id
              WHERE d.current_session = o.session_id
                AND d.door = 'closed' AND d.pending_open_request IS NULL
                AND d.last_event_at < $1
              LIMIT 500",
        )
        .bind(now - self.config.weights_after_timeout)
        .fetch_all(&self.store.pool)
        .await?;
        for (session, device) in silent_after_close {
            issued += self.settle_without_weights(session, device, now).await;
        }
        for login in latch_projections::qr_login_status::due(&self.store.pool, now, 500).await? {
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
