//! Door-command dispatch: a DoorOpenRequested event becomes an `open` command on the device's
//! subject. The device's door event, not this message, is what confirms the opening; a command
//! that gets lost simply runs into the request's deadline.

use crate::consume::{next_batch, pause, Next};
use async_nats::jetstream::Context;
use async_nats::Client;
use latch_domain::clock::SharedClock;
use latch_domain::device::DeviceEvent;
use latch_domain::telemetry::OpenCommand;
use latch_nats::{streams, subjects};
use latch_projections::LoggedEvent;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const CONSUMER: &str = "door-dispatch";

pub struct Dispatch {
    pub client: Client,
    pub js: Context,
    pub clock: SharedClock,
}

impl Dispatch {
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.consume(&shutdown).await {
                tracing::warn!(error = %e, "door dispatch consumer unavailable");
                pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
        tracing::info!("door dispatch stopped");
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
        let filter = subjects::events_of_type("device", "DoorOpenRequested");
        let config = streams::durable(CONSUMER, &filter);
        let consumer = streams::ensure_consumer(&self.js, subjects::EVENTS_STREAM, config).await?;
        let mut messages = consumer.messages().await?;
        loop {
            let batch = match next_batch(&mut messages, 100, Duration::from_secs(5), shutdown).await
            {
                Next::Stop => return Ok(()),
                Next::Failed(e) => return Err(e.into()),
                Next::Idle => continue,
                Next::Batch(batch) => batch,
            };
            for message in batch {
                self.send(&message.payload).await?;
                message.ack().await?;
            }
            self.client.flush().await?;
        }
    }

    async fn send(&self, payload: &[u8]) -> Result<(), async_nats::Error> {
        let event: LoggedEvent = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "unreadable event message skipped");
                return Ok(());
            }
        };
        let Ok(DeviceEvent::DoorOpenRequested {
            request_id,
            deadline,
            shopper,
            ..
        }) = serde_json::from_value(event.payload.clone())
        else {
            return Ok(());
        };
        if deadline <= self.clock.now() {
            tracing::info!(%request_id, device = %event.aggregate_id, "open request already expired; not sent");
            return Ok(());
        }
        let command = OpenCommand {
            request_id,
            deadline,
            session_id: shopper.map(|s| s.session_id),
        };
        let subject = subjects::device_command(&event.aggregate_id, "open");
        self.client
            .publish(subject, serde_json::to_vec(&command)?.into())
            .await?;
        tracing::info!(%request_id, device = %event.aggregate_id, "open command sent");
        Ok(())
    }
}
