//! The steady load `latch bench failover` keeps on both instances while it kills things: HTTP
//! registrations at a fixed rate, each retried onto another instance with the same
//! `Idempotency-Key` when the connection fails (a client behind a load balancer), and cabinet
//! heartbeats over JetStream.

use super::Error;
use crate::bench::hist;
use crate::sim::SimDevice;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The instances' base URLs, as the bench replaces killed ones.
pub(super) type Bases = Arc<RwLock<Vec<String>>>;

/// Attempts per command before it counts as unanswered (spread over every instance).
const ATTEMPTS: usize = 20;

enum Outcome {
    Answered(Uuid),
    /// A 4xx: the request itself was wrong, retrying cannot help.
    Refused(String),
    /// No connection, a timeout or a 5xx.
    Failed(String),
}

async fn register_once(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
    label: &str,
) -> Outcome {
    let res = http
        .post(format!("{base}/devices"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"kind": "vending", "site": "FAILOVER", "label": label}))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match res {
        Ok(r) if r.status().is_success() => {
            let body: serde_json::Value = match r.json().await {
                Ok(b) => b,
                Err(e) => return Outcome::Failed(format!("reading the answer: {e}")),
            };
            match body["device_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                Some(id) => Outcome::Answered(id),
                None => Outcome::Refused(format!("answer without a device_id: {body}")),
            }
        }
        Ok(r) if r.status().is_client_error() => Outcome::Refused(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        )),
        Ok(r) => Outcome::Failed(format!("{}", r.status())),
        Err(e) => Outcome::Failed(chain(&e)),
    }
}

/// An error with its causes: reqwest's own text ("error sending request") names none.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// One command, tried on each instance in turn with the same key until one answers.
/// Returns the outcome and how many attempts failed first.
async fn register(
    http: &reqwest::Client,
    bases: &Bases,
    token: &str,
    key: &str,
    label: &str,
    start: usize,
) -> (Outcome, usize) {
    let mut last = Outcome::Failed("no instance".into());
    for attempt in 0..ATTEMPTS {
        let base = {
            let b = bases.read().expect("bases");
            if b.is_empty() {
                None
            } else {
                Some(b[(start + attempt) % b.len()].clone())
            }
        };
        if let Some(base) = base {
            match register_once(http, &base, token, key, label).await {
                Outcome::Failed(e) => {
                    tracing::debug!(%base, error = %e, attempt, "command failed; retrying elsewhere");
                    last = Outcome::Failed(e);
                }
                done => return (done, attempt),
            }
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1).min(10))).await;
    }
    (last, ATTEMPTS)
}

/// The cabinets that send heartbeats, registered before the run (on any instance).
pub(super) async fn register_cabinets(
    http: &reqwest::Client,
    bases: &Bases,
    token: &str,
    n: usize,
) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("failover-cabinet-{i}");
        match register(http, bases, token, &key, &format!("cabinet {i}"), i).await {
            (Outcome::Answered(id), _) => ids.push(id),
            (Outcome::Refused(e) | Outcome::Failed(e), _) => {
                return Err(format!("registering cabinet {i}: {e}").into())
            }
        }
    }
    Ok(ids)
}

/// What the command clients saw.
pub(super) struct Tally {
    pub(super) answered: u64,
    pub(super) retried: u64,
    pub(super) unanswered: u64,
    pub(super) refused: u64,
    pub(super) held_back: u64,
    /// Microseconds from the first attempt to the answer, over the whole run.
    pub(super) latency: Histogram<u64>,
    /// The same, during the baseline window only.
    pub(super) quiet: Histogram<u64>,
    pub(super) acknowledged: Vec<Uuid>,
    pub(super) elapsed: Duration,
}

struct Shared {
    answered: AtomicU64,
    retried: AtomicU64,
    unanswered: AtomicU64,
    refused: AtomicU64,
    /// Sends that waited because `MAX_IN_FLIGHT` commands were still unanswered.
    held_back: AtomicU64,
    quiet: AtomicBool,
    first_refusal: Mutex<Option<String>>,
    acknowledged: Mutex<Vec<Uuid>>,
    latency: Mutex<Histogram<u64>>,
    quiet_latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            answered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            quiet: AtomicBool::new(false),
            first_refusal: Mutex::new(None),
            acknowledged: Mutex::new(Vec::new()),
            latency: Mutex::new(hist()),
            quiet_latency: Mutex::new(hist()),
        }
    }

    fn record(&self, outcome: Outcome, failed: usize, started: Instant, in_quiet: bool) {
        match outcome {
            Outcome::Answered(id) => {
                let us = started.elapsed().as_micros() as u64;
                self.latency.lock().expect("latency").saturating_record(us);
                if in_quiet {
                    self.quiet_latency
                        .lock()
                        .expect("latency")
                        .saturating_record(us);
                }
                self.answered.fetch_add(1, Ordering::Relaxed);
                if failed > 0 {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                }
                self.acknowledged.lock().expect("acknowledged").push(id);
            }
            Outcome::Refused(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_refusal.lock().expect("refusal");
                if first.is_none() {
                    tracing::warn!(error = %e, "a command was refused");
                    *first = Some(e);
                }
            }
            Outcome::Failed(e) => {
                tracing::warn!(error = %e, "a command went unanswered");
                self.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Commands one client may have unanswered at once; past it, the client waits (and the
/// offered rate is not met, which the report shows).
pub(super) const MAX_IN_FLIGHT: usize = 32;

pub(super) struct Commands {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Commands {
    /// `rate` registrations per second in all from `clients` loops, each on its own schedule
    /// whatever the answers take (an open loop: a slow or dead instance does not slow the load).
    pub(super) fn start(
        http: &reqwest::Client,
        bases: &Bases,
        token: &str,
        rate: u64,
        clients: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::new());
        let every = Duration::from_secs_f64(clients as f64 / rate as f64);
        let tasks = (0..clients)
            .map(|c| {
                let (http, bases, token) = (http.clone(), bases.clone(), token.to_owned());
                let (stop, shared) = (stop.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut in_flight = tokio::task::JoinSet::new();
                    let mut ticker = tokio::time::interval(every);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        ticker.tick().await;
                        while in_flight.try_join_next().is_some() {}
                        if in_flight.len() >= MAX_IN_FLIGHT {
                            shared.held_back.fetch_add(1, Ordering::Relaxed);
                            in_flight.join_next().await;
                        }
                        n += 1;
                        let key = format!("failover-{c}-{n}");
                        let (http, bases, token, shared) =
                            (http.clone(), bases.clone(), token.clone(), shared.clone());
                        in_flight.spawn(async move {
                            let in_quiet = shared.quiet.load(Ordering::Relaxed);
                            let t = Instant::now();
                            let (outcome, failed) =
                                register(&http, &bases, &token, &key, &key, c + n).await;
                            shared.record(outcome, failed, t, in_quiet);
                        });
                    }
                    while in_flight.join_next().await.is_some() {}
                })
            })
            .collect();
        Self {
            stop,
            shared,
            tasks,
            started: Instant::now(),
        }
    }

    /// Marks the commands sent from now as inside (or outside) the baseline window.
    pub(super) fn quiet(&self, on: bool) {
        self.shared.quiet.store(on, Ordering::Relaxed);
    }

    /// Stops sending and waits for the commands still unanswered.
    pub(super) async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        for t in self.tasks {
            // A command retries for some seconds at most; a client stuck longer is a bench bug.
            match tokio::time::timeout(Duration::from_secs(120), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "a command client failed"),
                Err(_) => tracing::warn!("a command client did not stop in 120 s"),
            }
        }
        let s = &self.shared;
        Tally {
            answered: s.answered.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            unanswered: s.unanswered.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            held_back: s.held_back.load(Ordering::Relaxed),
            latency: s.latency.lock().expect("latency").clone(),
            quiet: s.quiet_latency.lock().expect("latency").clone(),
            acknowledged: std::mem::take(&mut *s.acknowledged.lock().expect("acknowledged")),
            elapsed,
        }
    }
}

/// Heartbeats acknowledged by the TELEMETRY stream, and those that were not.
pub(super) struct Beats {
    pub(super) sent: u64,
    pub(super) failed: u64,
}

pub(super) struct Heartbeats {
    task: tokio::task::JoinHandle<()>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Heartbeats {
    /// Every cabinet beats once per `every`, all together, through JetStream.
    pub(super) fn start(
        js: &async_nats::jetstream::Context,
        cabinets: &[Uuid],
        every: Duration,
    ) -> Self {
        let sims: Vec<SimDevice> = cabinets
            .iter()
            .map(|id| SimDevice::new(*id, js.clone()))
            .collect();
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, f) = (sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let booted = Instant::now();
            let mut beat = tokio::time::interval(every);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                let uptime = booted.elapsed().as_secs();
                let results = futures::future::join_all(sims.iter().map(|sim| async move {
                    tokio::time::timeout(Duration::from_secs(5), sim.heartbeat(uptime))
                        .await
                        .is_ok_and(|r| r.is_ok())
                }))
                .await;
                for ok in results {
                    if ok { &s } else { &f }.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self { task, sent, failed }
    }

    pub(super) fn stop(self) -> Beats {
        self.task.abort();
        Beats {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}
