//! `latch bench vending`: what scan-to-open vending costs, each figure beside a baseline
//! measured in the same run on the same machine.
//!
//! Like the other benches it makes its own database on the configured Postgres server and
//! starts its own nats-server, so it never touches real data. No Kazaya is involved: shoppers
//! hold `user` tokens for `kazaya:<member>` issued directly, and nothing is paid. Phases:
//! 1. baselines: a bare axum handler answering the open request's shape (202 + small JSON),
//!    raw single-row INSERTs over a pool the size of `latch serve`'s, and raw JetStream
//!    publishes (acked one by one from N publishers, as cabinets report; and pipelined);
//! 2. a `latch serve` child process (all roles) gets N vending cabinets, registered and stocked
//!    over its API, each online (heartbeat) with its door closed, driven by this process over
//!    NATS with [`SimDevice`] and hand-built `weights` reports;
//! 3. door opening: N shoppers, shopper i always at cabinet i, in a closed loop: press "open"
//!    (`POST /m/api/cabinets/{id}/open`), receive the `open` command on the cabinet's command
//!    subject, act as the cabinet (weights before, door open, door closed, weights after equal
//!    to before: nothing taken, so no unpaid order blocks the next round) and wait for the
//!    cabinet to be free again (`ShoppingSessionEnded` on the events stream), then again;
//! 4. settlement: in rounds, every cabinet gets an open session (one new member per session),
//!    then all the `after` reports (one unit taken) are published at once and the orders
//!    table is polled until each session's row has left `open`;
//! 5. memory and CPU of the `latch serve` process along the way.

use crate::bench::{
    closed_loop, hist, in_scratch_database, machine_note, mib, rss_kib, Rate, Report, Row,
};
use crate::bench_cpu::cpu_split;
use crate::config::Settings;
use crate::sim::SimDevice;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_domain::telemetry::{OpenCommand, WireTelemetry};
use latch_domain::vending::RawReading;
use latch_nats::server::NatsServer;
use latch_nats::subjects;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

type Error = Box<dyn std::error::Error>;

/// Registrations and planograms in flight at once while setting up.
const SETUP_PARALLEL: usize = 32;
/// How often the cabinets send heartbeats (the server's offline timeout is 30 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How long a shopper waits for the open command, and for the cabinet to be free again.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the settlement phase polls the orders table.
const ORDERS_POLL: Duration = Duration::from_millis(5);
/// How long setup waits for cabinets to come online, sessions to start, rows to settle.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Each cabinet's shelves: (shelf, sku, name, unit grams, tolerance, price in fen, stock).
const SHELVES: [(i64, &str, &str, i64, i64, i64, i64); 2] = [
    (1, "cola", "Cola", 350, 15, 350, 10),
    (2, "water", "Water", 550, 15, 200, 10),
];

#[derive(Debug, Clone, Args)]
pub struct VendingArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Cabinets, and shoppers (one per cabinet) in the door-opening phase.
    #[arg(long, default_value_t = 200)]
    pub cabinets: usize,
    /// Seconds the door-opening phase is measured (after one unmeasured round per shopper).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Settlement rounds (each settles one session per cabinet).
    #[arg(long, default_value_t = 5)]
    pub settle_rounds: usize,
    /// Seconds each closed-loop baseline runs.
    #[arg(long, default_value_t = 5)]
    pub baseline_seconds: u64,
    /// Messages of the pipelined raw-publish baseline.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
}

pub async fn run(args: VendingArgs) -> Result<Report, Error> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_vending", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    report.notes.push(format!(
        "peak RSS of the bench process (shoppers, cabinets, baselines): {}",
        mib(rss_kib("self", "VmHWM:"))
    ));
    report.notes.push(machine_note());
    Ok(report)
}

/// What the bench talks to while the `latch serve` child runs.
struct Env {
    pool: PgPool,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    http: reqwest::Client,
    base: String,
    pid: String,
    nats_pid: Option<u32>,
}

/// Baselines measured before the child starts, on the same machine.
struct Baselines {
    bare: Rate,
    insert: Rate,
    /// CPU per row of the raw INSERTs (this process and the Postgres backends).
    insert_cpu: crate::bench_cpu::Spent,
    publish_acked: Rate,
    publish_pipelined: f64,
    pool_size: u32,
}

async fn phases(args: &VendingArgs, db_url: &str, report: &mut Report) -> Result<(), Error> {
    let nats = NatsServer::start().await?;
    // The pool `latch serve` runs with by default: the raw INSERT baseline gets the same.
    let pool_size = Settings::new(db_url, nats.url()).db_max_connections;
    let pool = latch_domain::store::connect(db_url, pool_size, Duration::from_secs(10)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;
    let client = latch_nats::connect(&nats.url(), "bench-vending").await?;
    let js = latch_nats::jetstream(client.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.cabinets)
        .build()?;
    tracing::info!(db = %db_url, nats = %nats.url(), "bench environment ready");

    // 1. Baselines, while nothing else runs.
    let bare = bare_open_phase(&http, args).await?;
    tracing::info!(rate = bare.per_sec, "bare handler measured");
    let bench_only = crate::bench_cpu::Processes {
        latch: "self".into(),
        latch_includes_clients: true,
        nats: None,
    };
    let cpu_before = crate::bench_cpu::sample(&pool, &bench_only).await;
    let insert = raw_insert_phase(&pool, args).await?;
    let insert_cpu = crate::bench_cpu::spent(
        &cpu_before,
        &crate::bench_cpu::sample(&pool, &bench_only).await,
        insert.hist.len(),
        &bench_only,
    );
    tracing::info!(rate = insert.per_sec, "raw insert measured");
    let (publish_acked, publish_pipelined) = raw_publish_phase(&js, args).await?;
    tracing::info!(
        acked = publish_acked.per_sec,
        pipelined = publish_pipelined,
        "raw publish measured"
    );
    let baselines = Baselines {
        bare,
        insert,
        insert_cpu,
        publish_acked,
        publish_pipelined,
        pool_size,
    };

    // 2-5. Against a real `latch serve` process.
    let port = free_port()?;
    let (mut child, pid) = crate::bench::spawn_serve(db_url, &nats.url(), port)?;
    let env = Env {
        pool,
        client,
        js,
        http,
        base: format!("http://127.0.0.1:{port}"),
        pid: pid.clone(),
        nats_pid: nats.pid(),
    };
    let result = against_serve(&env, &mut child, args, &baselines, report).await;
    crate::bench::stop_serve(&mut child, &pid, "", report).await?;
    result
}

// ---------------------------------------------------------------------------------------------
// Baselines

/// An axum handler that answers the open request's shape and does nothing else.
async fn bare_open_phase(http: &reqwest::Client, args: &VendingArgs) -> Result<Rate, Error> {
    let app = axum::Router::new().route(
        "/m/api/cabinets/{device_id}/open",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "session_id": Uuid::now_v7(),
                    "request_id": Uuid::now_v7(),
                    "deadline": chrono::Utc::now() + chrono::Duration::seconds(15),
                })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let cabinets: Arc<[Uuid]> = (0..args.cabinets).map(|_| Uuid::now_v7()).collect();
    let (http, n) = (http.clone(), args.cabinets);
    let op = move |i: usize| {
        let url = format!(
            "{base}/m/api/cabinets/{}/open",
            cabinets[(i / 1_000_000) % n]
        );
        let http = http.clone();
        async move {
            match http.post(&url).bearer_auth("bare").send().await {
                Ok(r) => r.status() == 202 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    // The first second opens the keep-alive connections, unmeasured.
    let _ = closed_loop(args.cabinets, 1, op.clone()).await;
    let rate = closed_loop(args.cabinets, args.baseline_seconds, op).await;
    server.abort();
    Ok(rate)
}

/// Single-row INSERTs from as many clients as shoppers, over the pool `latch serve` has.
async fn raw_insert_phase(pool: &PgPool, args: &VendingArgs) -> Result<Rate, Error> {
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(pool)
        .await?;
    let pool = pool.clone();
    Ok(closed_loop(args.cabinets, args.baseline_seconds, move |i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                .bind(serde_json::json!({"kind": "weights", "phase": "after", "n": i}))
                .execute(&pool)
                .await
                .is_ok()
        }
    })
    .await)
}

/// JetStream publishes of a weights-sized message: acked one at a time from as many publishers
/// as cabinets (what a cabinet's report costs), then pipelined in windows of 1000 (as the relay).
async fn raw_publish_phase(
    js: &async_nats::jetstream::Context,
    args: &VendingArgs,
) -> Result<(Rate, f64), Error> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let body = vec![b'x'; 400];
    let acked = {
        let (js, body) = (js.clone(), body.clone());
        closed_loop(args.cabinets, args.baseline_seconds, move |i| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                let subject = format!("bench.dev.{}.weights", i / 1_000_000);
                match js.publish(subject, body.into()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    };
    let started = Instant::now();
    for window in 0..args.events.div_ceil(1000) {
        let mut acks = Vec::with_capacity(1000);
        for i in 0..1000.min(args.events - window * 1000) {
            let n = window * 1000 + i;
            acks.push(
                js.publish(format!("bench.raw.{n}"), body.clone().into())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    let pipelined = args.events as f64 / started.elapsed().as_secs_f64();
    Ok((acked, pipelined))
}

// ---------------------------------------------------------------------------------------------
// The cabinets

/// One simulated cabinet: its publishing side and what it hears, each message timestamped on
/// arrival by a forwarding task (so a command that arrives before the HTTP answer is timed
/// when it arrived, not when the shopper got round to reading it).
struct Cabinet {
    id: Uuid,
    sim: SimDevice,
    commands: mpsc::UnboundedReceiver<(OpenCommand, Instant)>,
    ended: mpsc::UnboundedReceiver<(Uuid, Instant)>,
}

impl Cabinet {
    async fn new(
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
    async fn weigh(&self, session_id: Uuid, phase: &str, taken: i64) -> Result<(), String> {
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
struct Opened {
    session_id: Uuid,
    request_id: Uuid,
    /// Press -> 202 answer.
    http: Duration,
    /// Press -> open command on the cabinet's subject.
    command: Duration,
}

/// One whole visit's stages after the command arrived.
struct Visit {
    opened: Opened,
    /// Command -> the cabinet's four reports published and acked by the stream.
    reports: Duration,
    /// Last report acked -> `ShoppingSessionEnded` seen (ingest of the four reports, relay).
    settle: Duration,
}

#[derive(serde::Deserialize)]
struct OpeningBody {
    session_id: Uuid,
    request_id: Uuid,
}

/// The shopper presses "open"; the cabinet waits for its command.
async fn press_open(env: &Env, token: &str, cab: &mut Cabinet) -> Result<Opened, String> {
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
async fn open_and_close(cab: &Cabinet, opened: &Opened) -> Result<(), String> {
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
async fn wait_ended(cab: &mut Cabinet, session_id: Uuid) -> Result<Instant, String> {
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
async fn register_cabinets(env: &Env, operator: &str, n: usize) -> Result<Vec<Uuid>, Error> {
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

/// Polls `sql` (which counts with `$1` = `ids`) until it reaches `want`.
async fn wait_count(pool: &PgPool, sql: &str, ids: &[Uuid], want: i64) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let (n,): (i64,) = sqlx::query_as(sql).bind(ids).fetch_one(pool).await?;
        if n >= want {
            return Ok(());
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err(
                format!("waited {WAIT_LIMIT:?} for {want} rows of {sql:?}; have {n}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_healthy(env: &Env, child: &mut tokio::process::Child) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("latch serve exited at start: {status}").into());
        }
        if env
            .http
            .get(format!("{}/healthz", env.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("latch serve did not answer /healthz in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The phases against `latch serve`

async fn against_serve(
    env: &Env,
    child: &mut tokio::process::Child,
    args: &VendingArgs,
    base: &Baselines,
    report: &mut Report,
) -> Result<(), Error> {
    wait_healthy(env, child).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(&env.pid, "VmRSS:");

    // Setup: cabinets registered, stocked, online, door closed.
    let setup_started = Instant::now();
    let operator = issue_token(&env.pool, TokenRole::Operator, "bench").await?;
    let ids = register_cabinets(env, &operator, args.cabinets).await?;
    let mut forwarders = tokio::task::JoinSet::new();
    let mut cabinets = Vec::with_capacity(ids.len());
    for id in &ids {
        cabinets.push(Cabinet::new(*id, &env.client, &env.js, &mut forwarders).await?);
    }
    env.client.flush().await?;
    let sims: Vec<SimDevice> = cabinets.iter().map(|c| c.sim.clone()).collect();
    let booted = Instant::now();
    futures::stream::iter(&sims)
        .map(|s| async move {
            s.heartbeat(0).await?;
            s.door(false, None).await
        })
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| format!("cabinet start-up: {e}"))?;
    let heartbeats = tokio::spawn(async move {
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        loop {
            beat.tick().await;
            let uptime = booted.elapsed().as_secs();
            let failed = futures::future::join_all(
                sims.iter()
                    .cloned()
                    .map(|s| async move { s.heartbeat(uptime).await.is_err() }),
            )
            .await
            .into_iter()
            .filter(|failed| *failed)
            .count();
            if failed > 0 {
                tracing::warn!(failed, "heartbeats not delivered");
            }
        }
    });
    let result = async {
        wait_count(
            &env.pool,
            "SELECT count(*) FROM device_status WHERE device_id = ANY($1) AND online AND door = 'closed'",
            &ids,
            ids.len() as i64,
        )
        .await?;
        report.notes.push(format!(
            "setup: {} cabinets registered and stocked over the API (2 shelves each), online and \
             closed in {:.1} s; they send heartbeats every {} s throughout",
            ids.len(),
            setup_started.elapsed().as_secs_f64(),
            HEARTBEAT_EVERY.as_secs()
        ));
        let ready = rss_kib(&env.pid, "VmRSS:");
        let shopping = shopping_phase(env, &mut cabinets, args).await?;
        let after_shopping = (rss_kib(&env.pid, "VmRSS:"), rss_kib(&env.pid, "VmHWM:"));
        report_shopping(&shopping, base, args, report);
        let settlement = settlement_phase(env, &mut cabinets, args).await?;
        report_settlement(&settlement, base, args, report);
        let end = (rss_kib(&env.pid, "VmRSS:"), rss_kib(&env.pid, "VmHWM:"));
        report.rows.push(Row {
            what: "`latch serve` RSS (all roles)".into(),
            value: format!(
                "idle {}; {} cabinets ready {}; after the door-opening phase {}; after \
                 settlement {}; peak (VmHWM) {}",
                mib(idle),
                ids.len(),
                mib(ready),
                mib(after_shopping.0),
                mib(end.0),
                mib(end.1)
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
        });
        sanity_notes(env, report).await?;
        Ok::<(), Error>(())
    }
    .await;
    heartbeats.abort();
    forwarders.abort_all();
    result
}

/// The door-opening phase: its histograms (microseconds) and counts.
struct Shopping {
    http: Histogram<u64>,
    command: Histogram<u64>,
    cycle: Histogram<u64>,
    reports: Histogram<u64>,
    settle: Histogram<u64>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    /// CPU used meanwhile, per process, in % of one core.
    cpu: String,
    /// CPU of latch serve, its Postgres backends and nats-server per event, drained.
    path_cpu: Option<crate::bench_cpu::Spent>,
}

async fn shopping_phase(
    env: &Env,
    cabinets: &mut Vec<Cabinet>,
    args: &VendingArgs,
) -> Result<Shopping, Error> {
    let mut tokens = Vec::with_capacity(cabinets.len());
    for i in 0..cabinets.len() {
        let subject = format!("kazaya:bench-{i:04}");
        tokens.push(issue_token(&env.pool, TokenRole::User, &subject).await?);
    }
    let env = Arc::new(Env {
        pool: env.pool.clone(),
        client: env.client.clone(),
        js: env.js.clone(),
        http: env.http.clone(),
        base: env.base.clone(),
        pid: env.pid.clone(),
        nats_pid: env.nats_pid,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(tokio::sync::Barrier::new(cabinets.len() + 1));
    let mut tasks = Vec::with_capacity(cabinets.len());
    for (mut cab, token) in cabinets.drain(..).zip(tokens) {
        let (env, stop, start) = (env.clone(), stop.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let (mut http, mut command, mut cycle) = (hist(), hist(), hist());
            let (mut reports, mut settle) = (hist(), hist());
            let (mut errors, mut first_error) = (0u64, None);
            // One unmeasured round: connections open, caches warm.
            if let Err(e) = shop_once(&env, &token, &mut cab).await {
                tracing::warn!(error = %e, "warm-up round failed");
            }
            start.wait().await;
            while !stop.load(Ordering::Relaxed) {
                let pressed = Instant::now();
                match shop_once(&env, &token, &mut cab).await {
                    Ok(visit) => {
                        http.saturating_record(visit.opened.http.as_micros() as u64);
                        command.saturating_record(visit.opened.command.as_micros() as u64);
                        reports.saturating_record(visit.reports.as_micros() as u64);
                        settle.saturating_record(visit.settle.as_micros() as u64);
                        cycle.saturating_record(pressed.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        // Let a stuck opening run into its deadline rather than spin on 409s.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let hists = [http, command, cycle, reports, settle];
            (cab, hists, errors, first_error)
        }));
    }
    start.wait().await;
    let cpu_before = cpu_split(&env.pid);
    let procs = crate::bench_cpu::Processes {
        latch: env.pid.clone(),
        latch_includes_clients: false,
        nats: env.nats_pid,
    };
    let (path_before, events_before) = (
        crate::bench_cpu::sample(&env.pool, &procs).await,
        crate::bench_cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut shopping = Shopping {
        http: hist(),
        command: hist(),
        cycle: hist(),
        reports: hist(),
        settle: hist(),
        elapsed: Duration::ZERO,
        errors: 0,
        first_error: None,
        cpu: String::new(),
        path_cpu: None,
    };
    for task in tasks {
        let (cab, [http, command, cycle, reports, settle], errors, first_error) = task.await?;
        cabinets.push(cab);
        shopping.http.add(&http).expect("same bounds");
        shopping.command.add(&command).expect("same bounds");
        shopping.cycle.add(&cycle).expect("same bounds");
        shopping.reports.add(&reports).expect("same bounds");
        shopping.settle.add(&settle).expect("same bounds");
        shopping.errors += errors;
        if shopping.first_error.is_none() {
            shopping.first_error = first_error;
        }
    }
    shopping.elapsed = started.elapsed();
    let secs = shopping.elapsed.as_secs_f64();
    shopping.cpu = cpu_split(&env.pid)
        .iter()
        .zip(&cpu_before)
        .map(|((who, after), (_, before))| format!("{who} {:.0}%", (after - before) / secs * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    crate::bench_cpu::drained(&env.pool, Duration::from_secs(60)).await;
    shopping.path_cpu = Some(crate::bench_cpu::spent(
        &path_before,
        &crate::bench_cpu::sample(&env.pool, &procs).await,
        crate::bench_cpu::events(&env.pool).await - events_before,
        &procs,
    ));
    Ok(shopping)
}

/// One whole visit: open, the cabinet's reports with nothing taken, the cabinet free again.
async fn shop_once(env: &Env, token: &str, cab: &mut Cabinet) -> Result<Visit, String> {
    let opened = press_open(env, token, cab).await?;
    let reporting = Instant::now();
    open_and_close(cab, &opened).await?;
    cab.weigh(opened.session_id, "after", 0).await?;
    let reported = Instant::now();
    let ended = wait_ended(cab, opened.session_id).await?;
    Ok(Visit {
        opened,
        reports: reported - reporting,
        settle: ended.saturating_duration_since(reported),
    })
}

fn percentiles(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

fn report_shopping(s: &Shopping, base: &Baselines, args: &VendingArgs, report: &mut Report) {
    let n = args.cabinets;
    if let Some(spent) = &s.path_cpu {
        report.rows.push(crate::bench_cpu::row(
            "whole visits (open, door, weights, settlement, read models)",
            spent,
            &base.insert_cpu,
            "-",
        ));
    }
    let openings = s.cycle.len() as f64 / s.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "door-open latency: press (POST open) -> open command on the cabinet's subject, \
             {n} shoppers at {n} cabinets"
        ),
        value: format!("{} ({} openings)", percentiles(&s.command), s.command.len()),
        baseline: format!(
            "bare axum handler, same request, {n} clients: {}",
            percentiles(&base.bare.hist)
        ),
        ratio: format!(
            "p50 {:.1}x",
            s.command.value_at_quantile(0.5) as f64
                / base.bare.hist.value_at_quantile(0.5).max(1) as f64
        ),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: POST open -> 202 answer".into(),
        value: percentiles(&s.http),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: command -> the cabinet's 4 reports (before, door open, door closed, \
               after) acked by JetStream"
            .into(),
        value: percentiles(&s.reports),
        baseline: format!(
            "one raw acked publish: {}",
            percentiles(&base.publish_acked.hist)
        ),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: `after` report acked -> cabinet free again (ShoppingSessionEnded \
               seen on the events stream)"
            .into(),
        value: percentiles(&s.settle),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: format!(
            "openings/s, {n} shoppers in a closed loop (open, command, weights before, door \
             open, door closed, weights after, cabinet free again)"
        ),
        value: format!(
            "{openings:.0}/s (whole visit {}; {} errors)",
            percentiles(&s.cycle),
            s.errors
        ),
        baseline: format!(
            "bare axum handler {:.0}/s; raw INSERT ({n} clients, {}-connection pool) {:.0}/s",
            base.bare.per_sec, base.pool_size, base.insert.per_sec
        ),
        ratio: format!(
            "{:.3}x bare; {:.2}x INSERT",
            openings / base.bare.per_sec,
            openings / base.insert.per_sec
        ),
        target: "-".into(),
    });
    report.notes.push(format!(
        "door-opening phase: {} s measured after one unmeasured visit per shopper; a shopper \
         takes nothing (weights after = before, order no_charge), so it may open again at once. \
         The command is timed when this process's subscription received it (a forwarding task \
         per cabinet timestamps each message). In a closed loop a visit's latency is \
         shoppers / throughput (Little's law). CPU meanwhile, % of one core (the machine has \
         {} cores): {}{}",
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.cpu,
        s.first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; first error: {e}"))
    ));
}

/// The settlement phase's figures.
struct Settlement {
    /// Report published -> row visible, microseconds.
    latency: Histogram<u64>,
    settled: usize,
    /// Sum over rounds of first publish -> last row visible.
    window: Duration,
    /// Sum over rounds of first publish -> last publish acked.
    publishing: Duration,
    open_failures: usize,
    first_error: Option<String>,
}

async fn settlement_phase(
    env: &Env,
    cabinets: &mut [Cabinet],
    args: &VendingArgs,
) -> Result<Settlement, Error> {
    let mut out = Settlement {
        latency: hist(),
        settled: 0,
        window: Duration::ZERO,
        publishing: Duration::ZERO,
        open_failures: 0,
        first_error: None,
    };
    for round in 0..args.settle_rounds {
        // A new member per session: each leaves an unpaid order behind.
        let mut tokens = Vec::with_capacity(cabinets.len());
        for i in 0..cabinets.len() {
            let subject = format!("kazaya:bench-r{round}-{i:04}");
            tokens.push(issue_token(&env.pool, TokenRole::User, &subject).await?);
        }
        let opened: Vec<Result<Opened, String>> =
            futures::future::join_all(cabinets.iter_mut().zip(&tokens).map(
                |(cab, token)| async move {
                    let opened = press_open(env, token, cab).await?;
                    open_and_close(cab, &opened).await?;
                    Ok(opened)
                },
            ))
            .await;
        let mut open: Vec<(usize, Uuid)> = Vec::new();
        for (i, o) in opened.into_iter().enumerate() {
            match o {
                Ok(o) => open.push((i, o.session_id)),
                Err(e) => {
                    out.open_failures += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
        let sessions: Vec<Uuid> = open.iter().map(|(_, s)| *s).collect();
        let devices: Vec<Uuid> = open.iter().map(|(i, _)| cabinets[*i].id).collect();
        // Quiet first: every session open in the read model, every door event applied.
        wait_count(
            &env.pool,
            "SELECT count(*) FROM orders WHERE session_id = ANY($1) AND status = 'open'",
            &sessions,
            sessions.len() as i64,
        )
        .await?;
        wait_count(
            &env.pool,
            "SELECT count(*) FROM device_status WHERE device_id = ANY($1) AND door = 'closed'
                AND pending_open_request IS NULL AND current_session IS NOT NULL",
            &devices,
            devices.len() as i64,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;

        // All the `after` reports at once, one unit taken from shelf 1.
        let started = Instant::now();
        let published: Vec<(Uuid, Instant, Result<(), String>)> =
            futures::future::join_all(open.iter().map(|&(i, sid)| {
                let cab = &cabinets[i];
                async move {
                    let t = Instant::now();
                    (sid, t, cab.weigh(sid, "after", 1).await)
                }
            }))
            .await;
        out.publishing += started.elapsed();
        let mut sent_at = std::collections::HashMap::new();
        for (sid, t, r) in published {
            match r {
                Ok(()) => {
                    sent_at.insert(sid, t);
                }
                Err(e) => {
                    out.first_error.get_or_insert(e);
                }
            }
        }
        let pending: Vec<Uuid> = sent_at.keys().copied().collect();
        let mut seen = std::collections::HashSet::new();
        let mut last = started;
        while seen.len() < pending.len() {
            let rows: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT session_id FROM orders WHERE session_id = ANY($1) AND status <> 'open'",
            )
            .bind(&pending)
            .fetch_all(&env.pool)
            .await?;
            let now = Instant::now();
            for (sid,) in rows {
                if seen.insert(sid) {
                    last = now;
                    let t = sent_at[&sid];
                    out.latency
                        .saturating_record(now.saturating_duration_since(t).as_micros() as u64);
                }
            }
            if started.elapsed() > WAIT_LIMIT {
                return Err(format!(
                    "round {round}: only {} of {} orders settled in {WAIT_LIMIT:?}",
                    seen.len(),
                    pending.len()
                )
                .into());
            }
            tokio::time::sleep(ORDERS_POLL).await;
        }
        out.settled += seen.len();
        out.window += last.saturating_duration_since(started);
        tracing::info!(
            round,
            settled = seen.len(),
            secs = last.saturating_duration_since(started).as_secs_f64(),
            "settlement round"
        );
        // Every cabinet free again before the next round.
        for (i, sid) in &open {
            wait_ended(&mut cabinets[*i], *sid).await?;
        }
    }
    Ok(out)
}

fn report_settlement(s: &Settlement, base: &Baselines, args: &VendingArgs, report: &mut Report) {
    let rate = s.settled as f64 / s.window.as_secs_f64().max(1e-9);
    let n = args.cabinets;
    report.rows.push(Row {
        what: format!(
            "settlement: `after` weights report -> order row placed, {} rounds of {n} \
             reports published at once",
            args.settle_rounds
        ),
        value: format!("{rate:.0} orders/s ({} orders)", s.settled),
        baseline: format!(
            "raw JetStream publish, acked, {n} publishers: {:.0}/s; raw INSERT {:.0}/s",
            base.publish_acked.per_sec, base.insert.per_sec
        ),
        ratio: format!(
            "{:.3}x publish; {:.2}x INSERT",
            rate / base.publish_acked.per_sec,
            rate / base.insert.per_sec
        ),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "settlement latency: report publish -> order row visible".into(),
        value: percentiles(&s.latency),
        baseline: format!(
            "raw acked publish: {}",
            percentiles(&base.publish_acked.hist)
        ),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.notes.push(format!(
        "settlement phase: before each round every cabinet got an open session (a new member \
         each, as each leaves an unpaid order) and the bench waited until every session was \
         open in the orders table and every door event applied; then the {n} `after` reports \
         (one Cola taken) went out at once ({:.0} ms on average to have all acked) and the \
         orders table was polled every {} ms until each row left `open` (so latencies carry up \
         to that much polling error); throughput = orders / (first publish -> last row \
         visible), summed over rounds. Openings that failed while setting up rounds: {}{}. \
         Raw pipelined JetStream publish (windows of 1000, as the relay): {:.0}/s",
        s.publishing.as_secs_f64() * 1000.0 / args.settle_rounds.max(1) as f64,
        ORDERS_POLL.as_millis(),
        s.open_failures,
        s.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first error: {e})")),
        base.publish_pipelined
    ));
}

/// How the orders ended and whether anything was dead-lettered.
async fn sanity_notes(env: &Env, report: &mut Report) -> Result<(), Error> {
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&env.pool)
            .await?;
    let dead = match env.js.get_stream(subjects::DEADLETTER_STREAM).await {
        Ok(mut s) => s
            .info()
            .await
            .map_or("n/a".into(), |i| i.state.messages.to_string()),
        Err(e) => format!("n/a ({e})"),
    };
    report.notes.push(format!(
        "orders by status at the end: {}; dead-lettered telemetry: {dead}",
        statuses
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
