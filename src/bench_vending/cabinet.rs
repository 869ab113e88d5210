//! The simulated cabinets and one opening as the shopper and the cabinet see it: press open,
//! the command, the cabinet's reports, the cabinet free again; and their registration.

use super::{Env, Error, SETUP_PARALLEL, SHELVES, STEP_TIMEOUT};
use crate::sim::SimDevice;
use futures::{StreamExt, TryStreamExt};
use latch_domain::telemetry::{OpenCommand, WireTelemetry};
use latch_domain::vending::RawReading;
use latch_nats::subjects;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One simulated cabinet: its publishing side and what it hears, each message timestamped on
/// arrival by a forwarding task (so a command that arrives before the HTTP answer is timed
/// when it arrived, not when the shopper got round to reading it).
pub(super) struct Cabinet {
    pub(super) id: Uuid,
    pub(super) sim: SimDevice,
    commands: mpsc::UnboundedReceiver<(OpenCommand, Instant)>,
    ended: mpsc::UnboundedReceiver<(Uuid, Instant)>,
}

impl Cabinet {
    pub(super) async fn new(
        id: Uuid,
        client: &async_nats::Client,
        js: &async_nats::jetstream::Context,
        forwarders: &mut tokio::task::JoinSet<()>,
    ) -> Result<Self, Error> {
        let did = id.to_string();
        let mut commands = client
            .subscribe(subjects::device_command(&did, "open"))
            .await?;
        let mut ended = client
            .subscribe(subjects::event("device", "ShoppingSessionEnded", &did))
            .await?;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        forwarders.spawn(async move {
            while let Some(msg) = commands.next().await {
                let at = Instant::now();
                match serde_json::from_slice::<OpenCommand>(&msg.payload) {
                    Ok(c) => {
                        if command_tx.send((c, at)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable open command"),
                }
            }
        });
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        forwarders.spawn(async move {
            while let Some(msg) = ended.next().await {
                let at = Instant::now();
                let session = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                    .ok()
                    .and_then(|v| {
                        v["payload"]["ShoppingSessionEnded"]["session_id"]
                            .as_str()
                            .and_then(|s| Uuid::parse_str(s).ok())
                    });
                match session {
                    Some(s) => {
                        if ended_tx.send((s, at)).is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!("unreadable ShoppingSessionEnded event"),
                }
            }
        });
        Ok(Self {
            id,
            sim: SimDevice::new(id, js.clone()),
            commands: command_rx,
            ended: ended_rx,
        })
    }

    /// A `weights` report for `session_id`; `taken` units are gone from shelf 1.
    pub(super) async fn weigh(
        &self,
        session_id: Uuid,
        phase: &str,
        taken: i64,
    ) -> Result<(), String> {
        let shelves = SHELVES
            .iter()
            .map(|&(shelf, _, _, grams, _, _, stock)| RawReading {
                shelf,
                grams: grams * (stock - if shelf == 1 { taken } else { 0 }),
                stable: true,
                fault: false,
            })
            .collect();
        let wire = WireTelemetry {
            v: 1,
            msg_id: format!("w{}", Uuid::now_v7().simple()),
            device_id: self.id.to_string(),
            sent_at: chrono::Utc::now(),
            kind: "weights".into(),
            uptime_s: None,
            temperature_c: None,
            state: None,
            request_id: None,
            code: None,
            message: None,
            active: None,
            session_id: Some(session_id),
            phase: Some(phase.into()),
            shelves: Some(shelves),
        };
        self.sim
            .send(wire)
            .await
            .map_err(|e| format!("weights {phase}: {e}"))
    }
}

/// An opening as the shopper and the cabinet saw it.
pub(super) struct Opened {
    pub(super) session_id: Uuid,
    pub(super) request_id: Uuid,
    /// Press -> 202 answer.
    pub(super) http: Duration,
    /// Press -> open command on the cabinet's subject.
    pub(super) command: Duration,
}

#[derive(serde::Deserialize)]
struct OpeningBody {
    session_id: Uuid,
    request_id: Uuid,
}

/// The shopper presses "open"; the cabinet waits for its command.
pub(super) async fn press_open(
    env: &Env,
    token: &str,
    cab: &mut Cabinet,
) -> Result<Opened, String> {
    // Commands of earlier, failed attempts are no longer of interest.
    while cab.commands.try_recv().is_ok() {}
    // The phone carries the sticker's signature (the served app signs with the default key).
    let k = latch_api::vending::sticker::signature(
        &latch_api::vending::VendingConfig::default().sticker_key,
        &latch_domain::device::DeviceId::from(cab.id),
    );
    let url = format!("{}/m/api/cabinets/{}/open?k={k}", env.base, cab.id);
    let pressed = Instant::now();
    let r = env
        .http
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("POST open: {e}"))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| format!("POST open: {e}"))?;
    let http = pressed.elapsed();
    if status != reqwest::StatusCode::ACCEPTED {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
        return Err(format!("POST open answered {status}: {text}"));
    }
    let opening: OpeningBody =
        serde_json::from_slice(&body).map_err(|e| format!("POST open body: {e}"))?;
    loop {
        let (command, at) = tokio::time::timeout(STEP_TIMEOUT, cab.commands.recv())
            .await
            .map_err(|_| format!("no open command within {STEP_TIMEOUT:?}"))?
            .ok_or("command subscription ended")?;
        if command.request_id == opening.request_id {
            if command.session_id != Some(opening.session_id) {
                return Err("the open command names another session".into());
            }
            return Ok(Opened {
                session_id: opening.session_id,
                request_id: opening.request_id,
                http,
                command: at.saturating_duration_since(pressed),
            });
        }
    }
}

/// The cabinet's side of an opening up to the door closing again: baseline, door open, closed.
pub(super) async fn open_and_close(cab: &Cabinet, opened: &Opened) -> Result<(), String> {
    cab.weigh(opened.session_id, "before", 0).await?;
    cab.sim
        .door(true, Some(opened.request_id))
        .await
        .map_err(|e| format!("door open: {e}"))?;
    cab.sim
        .door(false, None)
        .await
        .map_err(|e| format!("door closed: {e}"))
}

/// Waits until the cabinet is free again after `session_id`; when that was seen.
pub(super) async fn wait_ended(cab: &mut Cabinet, session_id: Uuid) -> Result<Instant, String> {
    loop {
        let (ended, at) = tokio::time::timeout(STEP_TIMEOUT, cab.ended.recv())
            .await
            .map_err(|_| format!("session {session_id} did not end within {STEP_TIMEOUT:?}"))?
            .ok_or("event subscription ended")?;
        if ended == session_id {
            return Ok(at);
        }
    }
}

/// Registers and stocks `n` cabinets over the API; their ids.
pub(super) async fn register_cabinets(
    env: &Env,
    operator: &str,
    n: usize,
) -> Result<Vec<Uuid>, Error> {
    let slots: Vec<serde_json::Value> = SHELVES
        .iter()
        .map(|&(shelf, sku, name, grams, tolerance, price, _)| {
            serde_json::json!({"shelf": shelf, "sku": sku, "name": name, "unit_weight": grams,
                               "tolerance": tolerance, "unit_price": price, "currency": "CNY"})
        })
        .collect();
    let planogram = serde_json::json!({ "slots": slots });
    let one = |i: usize| {
        let planogram = &planogram;
        async move {
            let r = env
                .http
                .post(format!("{}/devices", env.base))
                .bearer_auth(operator)
                .json(&serde_json::json!({"kind": "vending", "site": "BENCH", "label": format!("bench cabinet {i}")}))
                .send()
                .await?;
            if r.status() != 201 {
                return Err(
                    format!("POST /devices answered {}: {}", r.status(), r.text().await?).into(),
                );
            }
            let id: Uuid =
                serde_json::from_value(r.json::<serde_json::Value>().await?["device_id"].clone())?;
            let r = env
                .http
                .put(format!("{}/devices/{id}/planogram", env.base))
                .bearer_auth(operator)
                .json(planogram)
                .send()
                .await?;
            if r.status() != 200 {
                return Err(
                    format!("PUT planogram answered {}: {}", r.status(), r.text().await?).into(),
                );
            }
            Ok::<Uuid, Error>(id)
        }
    };
    futures::stream::iter(0..n)
        .map(one)
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect()
        .await
}
