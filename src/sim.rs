//! `latch sim`: simulated cabinets speaking the real device protocol over NATS.
//!
//! Each cabinet publishes heartbeats, obeys `open` commands (door opens, stays open for a while,
//! closes) and has a fault switch: a fault makes it refuse to open until cleared. Faults can be
//! set at start (`--fault ID`) or toggled at run time by publishing `on` / `off` to
//! `latch.sim.<id>.fault`.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use chrono::Utc;
use futures::StreamExt;
use latch_domain::telemetry::{OpenCommand, WireTelemetry};
use latch_nats::subjects;
use latch_workers::CancellationToken;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub devices: Vec<Uuid>,
    pub heartbeat: Duration,
    /// How long the door stays open after an open command.
    pub hold_open: Duration,
    /// Devices that start with a fault.
    pub faulty: Vec<Uuid>,
}

/// One simulated cabinet's publishing side.
#[derive(Clone)]
pub struct SimDevice {
    pub id: Uuid,
    js: Context,
    boot: i64,
    counter: Arc<AtomicU64>,
}

impl SimDevice {
    pub fn new(id: Uuid, js: Context) -> Self {
        Self {
            id,
            js,
            boot: Utc::now().timestamp_millis(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn wire(&self, kind: &str) -> WireTelemetry {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        WireTelemetry {
            v: 1,
            msg_id: format!("{}-{n}", self.boot),
            device_id: self.id.to_string(),
            sent_at: Utc::now(),
            kind: kind.to_owned(),
            uptime_s: None,
            temperature_c: None,
            state: None,
            request_id: None,
            code: None,
            message: None,
            active: None,
            session_id: None,
            phase: None,
            shelves: None,
        }
    }

    /// Publishes through JetStream and waits for the stream's ack, with the device-scoped
    /// message id the stream deduplicates on.
    pub async fn send(&self, wire: WireTelemetry) -> Result<(), async_nats::Error> {
        let subject = subjects::telemetry(&wire.device_id, &wire.kind);
        let msg_id = format!("{}.{}", wire.device_id, wire.msg_id);
        let body = serde_json::to_vec(&wire)?;
        self.js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(body.into())
                    .message_id(msg_id),
            )
            .await?
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, uptime_s: u64) -> Result<(), async_nats::Error> {
        let mut w = self.wire("heartbeat");
        w.uptime_s = Some(uptime_s.into());
        w.temperature_c = serde_json::Number::from_f64(4.0);
        self.send(w).await
    }

    pub async fn door(
        &self,
        open: bool,
        request_id: Option<Uuid>,
    ) -> Result<(), async_nats::Error> {
        let mut w = self.wire("door");
        w.state = Some(if open { "open" } else { "closed" }.to_owned());
        w.request_id = request_id;
        self.send(w).await
    }

    pub async fn fault(&self, active: bool, code: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("fault");
        w.code = Some(code.to_owned());
        w.message = Some(if active { "simulated fault" } else { "cleared" }.to_owned());
        w.active = Some(active);
        self.send(w).await
    }

    pub async fn refuse(&self, request_id: Uuid, reason: &str) -> Result<(), async_nats::Error> {
        let mut w = self.wire("open_refused");
        w.request_id = Some(request_id);
        w.message = Some(reason.to_owned());
        self.send(w).await
    }
}

/// Runs every configured cabinet until `shutdown`.
pub async fn run(client: async_nats::Client, config: SimConfig, shutdown: CancellationToken) {
    let js = latch_nats::jetstream(client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for id in &config.devices {
        let device = SimDevice::new(*id, js.clone());
        let faulty = config.faulty.contains(id);
        let span = tracing::info_span!("sim", device = %id);
        tasks.spawn(
            cabinet(
                client.clone(),
                device,
                faulty,
                config.clone(),
                shutdown.clone(),
            )
            .instrument(span),
        );
    }
    tracing::info!(devices = config.devices.len(), "simulator running");
    while tasks.join_next().await.is_some() {}
}

async fn cabinet(
    client: async_nats::Client,
    device: SimDevice,
    mut faulty: bool,
    config: SimConfig,
    shutdown: CancellationToken,
) {
    let id = device.id.to_string();
    let (mut commands, mut switch) = match (
        client.subscribe(subjects::device_commands_all(&id)).await,
        client.subscribe(format!("latch.sim.{id}.fault")).await,
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe");
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let _ = device.door(false, None).await;
    if faulty {
        let _ = device.fault(true, "simulated").await;
    }
    let mut beat = tokio::time::interval(config.heartbeat);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = beat.tick() => {
                if let Err(e) = device.heartbeat(started.elapsed().as_secs()).await {
                    tracing::warn!(error = %e, "heartbeat not delivered");
                }
            }
            Some(msg) = switch.next() => {
                faulty = msg.payload.as_ref() == b"on";
                let _ = device.fault(faulty, "simulated").await;
            }
            Some(msg) = commands.next() => {
                let Ok(open) = serde_json::from_slice::<OpenCommand>(&msg.payload) else {
                    tracing::warn!("unreadable command ignored");
                    continue;
                };
                if faulty {
                    let _ = device.refuse(open.request_id, "device fault").await;
                    continue;
                }
                tracing::info!(request_id = %open.request_id, "opening");
                let _ = device.door(true, Some(open.request_id)).await;
                let d = device.clone();
                let hold = config.hold_open;
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    let _ = d.door(false, None).await;
                });
            }
        }
    }
}
