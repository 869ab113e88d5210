//! `latch bench pipeline`: throughput, latency percentiles and memory of the write pipeline,
//! each beside a baseline measured in the same run on the same machine.
//!
//! It makes its own database on the configured Postgres server and starts its own nats-server
//! (from PATH), so it never touches real data. Phases:
//! 1. raw single-row INSERT rate at N concurrent clients (baseline for 2);
//! 2. HTTP commands/s (POST /devices) at N concurrent clients against a full `latch serve`;
//! 3. raw async-nats JetStream publish rate with pipelined acks (baseline for 4);
//! 4. relay rate: events appended while no relay runs, then sequenced, chained and published;
//! 5. commit-to-read-model lag at a fixed command rate;
//! 6. idle RSS of a `latch serve` process, and this process's peak RSS.

use crate::app::Application;
use crate::bench_cpu as cpu;
use crate::config::{Role, Settings};
use async_nats::jetstream::message::PublishMessage;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::server::NatsServer;
use latch_workers::CancellationToken;
use sqlx::{Connection, PgConnection, PgPool};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum Which {
    /// HTTP commands, relay publishing and commit-to-read-model lag.
    Pipeline(PipelineArgs),
    /// QR login pages: poll throughput beside a bare handler, memory of open push connections.
    Qr(crate::bench_qr::QrArgs),
    /// Vending: door-open latency, openings/s and settlement under many cabinets, with memory.
    Vending(crate::bench_vending::VendingArgs),
    /// Audit: rebuild rate beside a raw ordered read of the same log, and `audit verify`.
    Audit(crate::bench_audit::AuditArgs),
    /// Lockers: direct grants/s to the read model, and webhook grants through the sandbox.
    Lockers(crate::bench_lockers::LockersArgs),
    /// Streams: a command on a device with 0, 10k, 100k and 1M events, beside a fresh one.
    Streams(crate::bench_streams::StreamsArgs),
    /// Soak: minutes of sustained full load; read-model lag, memory and CPU per event.
    Soak(crate::bench_soak::SoakArgs),
    /// Failover: a three-node NATS cluster and two `latch serve`; kill the relay's holder, then
    /// the EVENTS leader, under load; time until publishing resumes; nothing lost or doubled.
    Failover(crate::bench_failover::FailoverArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Concurrent clients for the insert and HTTP phases.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Events for the relay and raw-publish phases (enough that start-up is amortised).
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Commands per second offered during the lag phase.
    #[arg(long, default_value_t = 1000)]
    pub lag_rate: u64,
}

pub async fn run(which: Which) -> Result<Report, Box<dyn std::error::Error>> {
    match which {
        Which::Pipeline(args) => pipeline(args).await,
        Which::Qr(args) => crate::bench_qr::run(args).await,
        Which::Vending(args) => crate::bench_vending::run(args).await,
        Which::Audit(args) => crate::bench_audit::run(args).await,
        Which::Lockers(args) => crate::bench_lockers::run(args).await,
        Which::Streams(args) => crate::bench_streams::run(args).await,
        Which::Soak(args) => crate::bench_soak::run(args).await,
        Which::Failover(args) => crate::bench_failover::run(args).await,
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct Row {
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| measure | Latch | baseline (same run) | ratio | target |\n|---|---|---|---|---|"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} |",
                r.what, r.value, r.baseline, r.ratio, r.target
            )?;
        }
        for n in &self.notes {
            writeln!(f, "\n{n}")?;
        }
        Ok(())
    }
}

pub(crate) struct Rate {
    pub(crate) per_sec: f64,
    pub(crate) hist: Histogram<u64>,
    pub(crate) errors: u64,
}

impl Rate {
    pub(crate) fn latency(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            self.hist.value_at_quantile(0.5) as f64 / 1000.0,
            self.hist.value_at_quantile(0.99) as f64 / 1000.0
        )
    }
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op` from `clients` concurrent loops for `secs`; latencies in microseconds.
pub(crate) async fn closed_loop<F, Fut>(clients: usize, secs: u64, op: F) -> Rate
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut errors = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(c * 1_000_000 + i).await {
                    h.saturating_record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (h, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = hist();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("bench task");
        total.add(&h).expect("same bounds");
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Rate {
        per_sec: total.len() as f64 / elapsed,
        hist: total,
        errors,
    }
}

pub(crate) fn rss_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `phases` against a database of its own (named `{prefix}_{time}` beside the one in
/// `database_url`), dropped afterwards however the phases ended.
pub(crate) async fn in_scratch_database<F, Fut>(
    database_url: &str,
    prefix: &str,
    phases: F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let (server, _) = database_url
        .rsplit_once('/')
        .ok_or("DATABASE_URL has no database name")?;
    let name = format!("{prefix}_{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let admin_url = format!("{server}/postgres");
    {
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
    }
    let result = phases(format!("{server}/{name}")).await;
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

/// The note every report ends with: how many cores, and whether the figures are real.
/// Starts this binary as a `latch serve` child with every role on `port` (already migrated
/// database); returns it with its pid for CPU and memory readings.
pub(crate) fn spawn_serve(
    db_url: &str,
    nats_url: &str,
    port: u16,
) -> Result<(tokio::process::Child, String), std::io::Error> {
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("LATCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LATCH_MIGRATE", "false")
        // Each bench shopper opens again as soon as their last visit is settled: measure the
        // pipeline, not the per-member limit on presses.
        .env("LATCH_SHOPPER_OPENS_PER_MINUTE", "1000000")
        // Benches measure throughput from one address, not abuse: the per-user and per-IP
        // limits (issue 13) would measure themselves.
        .env("LATCH_GRANTS_PER_MINUTE_PER_USER", "100000000")
        .env("LATCH_GRANTS_PER_MINUTE_PER_COMPARTMENT", "100000000")
        .env("LATCH_RESERVATIONS_PER_MINUTE_PER_USER", "100000000")
        // The lockers bench's webhook requesters each hold many compartments (1,000 grants
        // over 64 holders).
        .env("LATCH_RESERVATIONS_PER_USER", "100000")
        .env("LATCH_LOGIN_ATTEMPTS_PER_MINUTE_PER_IP", "100000000")
        .env("LATCH_LOGIN_ATTEMPTS_PER_MINUTE_GLOBAL", "100000000")
        .env("LATCH_HTTP_MAX_CONNECTIONS", "100000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    Ok((child, pid))
}

/// Stops a `latch serve` child: SIGTERM, then kill if it has not finished in 30 s. How it ended
/// goes into the report's notes when it was not a clean exit.
pub(crate) async fn stop_serve(
    child: &mut tokio::process::Child,
    pid: &str,
    phase: &str,
    report: &mut Report,
) -> Result<(), std::io::Error> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", pid])
        .status();
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                report
                    .notes
                    .push(format!("{phase}latch serve exited with {status}"));
            }
        }
        Err(_) => {
            report.notes.push(format!(
                "{phase}latch serve did not stop in 30 s after SIGTERM; killed"
            ));
            child.kill().await.ok();
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until the `latch serve` child answers `GET {base}{path}` with a success (`/healthz`:
/// it listens; `/readyz`: its database and NATS answer too). Fails at once if the child exits
/// meanwhile, and after `limit`.
pub(crate) async fn wait_serving(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    limit: Duration,
    child: &mut tokio::process::Child,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("latch serve exited at start: {status}").into());
        }
        if http
            .get(format!("{base}{path}"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(
                format!("latch serve did not answer {path} in {} s", limit.as_secs()).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn machine_note() -> String {
    format!(
        "machine: {} cores; build: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug (use --release for real figures)"
        } else {
            "release"
        }
    )
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

async fn pipeline(args: PipelineArgs) -> Result<Report, Box<dyn std::error::Error>> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    report.notes.push(format!(
        "peak RSS of the bench process (clients + in-process server): {}",
        mib(rss_kib("self", "VmHWM:"))
    ));
    Ok(report)
}

async fn phases(
    args: &PipelineArgs,
    db_url: &str,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let nats = NatsServer::start().await?;
    let pool =
        latch_domain::store::connect(db_url, args.concurrency as u32 + 4, Duration::from_secs(10))
            .await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;
    tracing::info!(db = %db_url, nats = %nats.url(), "bench environment ready");

    // 1. Raw single-row INSERT.
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&pool)
        .await?;
    let in_process = cpu::Processes {
        latch: "self".into(),
        latch_includes_clients: true,
        nats: nats.pid(),
    };
    let cpu_before = cpu::sample(&pool, &in_process).await;
    let raw = {
        let pool = pool.clone();
        closed_loop(args.concurrency, args.seconds, move |i| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                    .bind(serde_json::json!({"kind": "vending", "site": "BENCH", "label": format!("raw {i}")}))
                    .execute(&pool)
                    .await
                    .is_ok()
            }
        })
        .await
    };
    let raw_cpu = cpu::spent(
        &cpu_before,
        &cpu::sample(&pool, &in_process).await,
        raw.hist.len(),
        &in_process,
    );
    tracing::info!(rate = raw.per_sec, "raw insert measured");
    // The same single-row INSERT, but of an event row like a command's into a copy of the events
    // table (its indexes, checks and stamping trigger): the database write a command cannot
    // avoid. A copy, so the relay and projector later have no backlog of these to work through.
    sqlx::raw_sql(
        "CREATE TABLE bench_events (LIKE events INCLUDING ALL);
         CREATE TRIGGER bench_events_stamp BEFORE INSERT ON bench_events
             FOR EACH ROW EXECUTE FUNCTION latch_events_stamp();
         CREATE TRIGGER bench_events_claim AFTER INSERT ON bench_events
             FOR EACH ROW WHEN (NEW.metadata ? 'idempotency_key')
             EXECUTE FUNCTION latch_claim_command_key();",
    )
    .execute(&pool)
    .await?;
    let raw_event = {
        let pool = pool.clone();
        closed_loop(args.concurrency, args.seconds, move |i| {
            let pool = pool.clone();
            async move {
                let id = uuid::Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                     VALUES ('device', $1, 1, 'DeviceRegistered', '1', $2, $3)",
                )
                .bind(id.to_string())
                .bind(serde_json::json!({"DeviceRegistered": {"device_id": id, "kind": "vending", "site": "BENCH", "label": format!("raw {i}"), "at": "2026-11-21T08:00:00Z"}}))
                .bind(serde_json::json!({"actor": "operator:bench", "correlation_id": id, "causation_id": id, "request_id": id, "command": "RegisterDevice"}))
                .execute(&pool)
                .await
                .is_ok()
            }
        })
        .await
    };

    // 2. HTTP commands: against the API role alone, then against a full serve whose relay,
    // projector and NATS share the same two cores.
    let token = issue_token(&pool, TokenRole::Operator, "bench").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let mut settings = Settings::new(db_url, nats.url());
    settings.http_addr = "127.0.0.1:0".parse()?;
    settings.db_max_connections = args.concurrency as u32 + 8;
    // This bench measures the ceiling: the API-only phase leaves the read models a backlog the
    // full serve then works through, and push-back would measure itself (`bench soak` measures
    // sustained load with it on).
    settings.edge.max_read_model_lag = 0;
    let bare = bare_axum_phase(&http, args).await?;
    let mut api_only = settings.clone();
    api_only.roles = vec![Role::Api];
    let (port, stop_api, api_task) = start_app(api_only).await?;
    let alone = http_phase(&http, port, &token, args).await;
    stop_api.cancel();
    api_task.await??;
    let (port, stop_app, app_task) = start_app(settings.clone()).await?;
    let url = format!("http://127.0.0.1:{port}/devices");
    let (cpu_before, events_before) = (
        cpu::sample(&pool, &in_process).await,
        cpu::events(&pool).await,
    );
    let commands = http_phase(&http, port, &token, args).await;
    // The whole path: until the relay and the read models have done what the commands caused.
    let drained = cpu::drained(&pool, Duration::from_secs(60)).await;
    let full_cpu = cpu::spent(
        &cpu_before,
        &cpu::sample(&pool, &in_process).await,
        cpu::events(&pool).await - events_before,
        &in_process,
    );
    tracing::info!(
        alone = alone.per_sec,
        full = commands.per_sec,
        "http commands measured"
    );
    report.rows.push(Row {
        what: format!(
            "bare axum handler (JSON in, 201 out), {} clients",
            args.concurrency
        ),
        value: format!("{:.0}/s ({})", bare.per_sec, bare.latency()),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "(HTTP ceiling on this machine)".into(),
    });
    let baselines = [
        ("INSERT into a bare table", &raw),
        ("INSERT of the same event row", &raw_event),
    ];
    for (what, rate) in [("API role alone", &alone), ("full serve", &commands)] {
        for (base, b) in baselines {
            report.rows.push(Row {
                what: format!("commands/s over HTTP, {} clients, {what}", args.concurrency),
                value: format!(
                    "{:.0}/s ({}; {} errors)",
                    rate.per_sec,
                    rate.latency(),
                    rate.errors
                ),
                baseline: format!("raw {base}: {:.0}/s ({})", b.per_sec, b.latency()),
                ratio: format!("{:.2}x", rate.per_sec / b.per_sec),
                target: ">= 0.5x".into(),
            });
        }
    }

    report.rows.push(cpu::row(
        &format!(
            "HTTP commands through the full serve to the read models{}",
            if drained {
                ""
            } else {
                " (not drained in 60 s)"
            }
        ),
        &full_cpu,
        &raw_cpu,
        ">= 2x lower than before issue 16",
    ));

    // 5. Lag at a fixed rate, while the full serve is still up.
    let lag = lag_phase(&pool, &http, &url, &token, args.lag_rate, args.seconds).await?;
    report.rows.push(Row {
        what: format!("commit -> read model lag at {}/s", args.lag_rate),
        value: format!(
            "p50 {:.1} ms, p99 {:.1} ms ({} events)",
            lag.value_at_quantile(0.5) as f64 / 1000.0,
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            lag.len()
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "p99 < 100 ms".into(),
    });
    stop_app.cancel();
    app_task.await??;

    // 3. Raw JetStream publish, pipelined like the relay (windows of 1000).
    let client = latch_nats::connect(&nats.url(), "bench").await?;
    let js = latch_nats::jetstream(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let body = vec![b'x'; 600];
    let started = Instant::now();
    for window in 0..args.events.div_ceil(1000) {
        let mut acks = Vec::with_capacity(1000);
        for i in 0..1000.min(args.events - window * 1000) {
            let n = window * 1000 + i;
            acks.push(
                js.send_publish(
                    format!("bench.raw.{n}"),
                    PublishMessage::build()
                        .payload(body.clone().into())
                        .message_id(n.to_string())
                        .expected_last_sequence(n as u64),
                )
                .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    let raw_publish = args.events as f64 / started.elapsed().as_secs_f64();
    tracing::info!(rate = raw_publish, "raw publish measured");

    // 4. Relay: a backlog appended with no relay running, then drained by one.
    let before = latch_projections::log::head(&pool).await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'device', gen_random_uuid()::text, 1, 'DeviceRegistered', '1',
                jsonb_build_object('DeviceRegistered', jsonb_build_object(
                    'device_id', gen_random_uuid(), 'kind', 'vending', 'site', 'BENCH',
                    'label', 'relay ' || g, 'at', '2026-11-21T08:00:00Z')),
                '{\"correlation_id\":\"bench\",\"causation_id\":\"bench\",\"actor\":\"bench\",\"request_id\":\"bench\"}'
           FROM generate_series(1, $1) g",
    )
    .bind(args.events as i64)
    .execute(&pool)
    .await?;
    let target = before + args.events as i64;
    let mut relay_settings = settings.clone();
    relay_settings.roles = vec![Role::Relay];
    let started = Instant::now();
    let (_, stop_relay, relay_task) = start_app(relay_settings).await?;
    let mut events_stream = js.get_stream(latch_nats::subjects::EVENTS_STREAM).await?;
    let mut sequenced_in = None;
    loop {
        if sequenced_in.is_none() && latch_projections::log::head(&pool).await? >= target {
            sequenced_in = Some(started.elapsed());
        }
        if events_stream.info().await?.state.last_sequence as i64 >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("relay did not drain the backlog in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sequenced_in = sequenced_in.unwrap_or_else(|| started.elapsed());
    let relay_rate = args.events as f64 / started.elapsed().as_secs_f64();
    stop_relay.cancel();
    relay_task.await??;
    report.rows.push(Row {
        what: format!("relay: sequence + chain + publish, {} events", args.events),
        value: format!(
            "{relay_rate:.0} events/s (sequencing alone reached the head at {:.0}/s)",
            args.events as f64 / sequenced_in.as_secs_f64()
        ),
        baseline: format!("raw JetStream publish {raw_publish:.0}/s"),
        ratio: format!("{:.2}x", relay_rate / raw_publish),
        target: ">= 0.5x".into(),
    });

    // 6. Idle RSS of a real `latch serve` process.
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let idle = rss_kib(&pid, "VmRSS:");
    child.kill().await.ok();
    report.rows.push(Row {
        what: "`latch serve` idle RSS (all roles, 5 s after start)".into(),
        value: mib(idle),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "< 100 MB".into(),
    });
    report.notes.push(machine_note());
    Ok(())
}

/// The same requests against an axum handler that does nothing: what HTTP alone costs here.
async fn bare_axum_phase(
    http: &reqwest::Client,
    args: &PipelineArgs,
) -> Result<Rate, Box<dyn std::error::Error>> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/devices",
        post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
            (axum::http::StatusCode::CREATED, axum::Json(v))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let rate = http_phase(http, port, "bare", args).await;
    server.abort();
    Ok(rate)
}

async fn http_phase(http: &reqwest::Client, port: u16, token: &str, args: &PipelineArgs) -> Rate {
    let url = format!("http://127.0.0.1:{port}/devices");
    let (http, token) = (http.clone(), token.to_owned());
    closed_loop(args.concurrency, args.seconds, move |i| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            http.post(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"kind": "vending", "site": "BENCH", "label": format!("d{i}")}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    })
    .await
}

pub(crate) async fn start_app(
    settings: Settings,
) -> Result<
    (
        u16,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    Box<dyn std::error::Error>,
> {
    let app = Application::build(settings).await?;
    let port = app.port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move { s.cancelled().await })
            .await
    });
    Ok((port, stop, task))
}

/// Offers `rate` commands per second for `secs` while watching the device-status checkpoint;
/// each event's lag is the time its position was first seen applied minus its recorded_at.
async fn lag_phase(
    pool: &PgPool,
    http: &reqwest::Client,
    url: &str,
    token: &str,
    rate: u64,
    secs: u64,
) -> Result<Histogram<u64>, Box<dyn std::error::Error>> {
    // Let the projector finish the earlier phase's backlog first.
    let head = latch_projections::log::head(pool).await?;
    let wait = Instant::now();
    while latch_projections::projector::checkpoint(pool, latch_projections::device_status::NAME)
        .await?
        < head
    {
        if wait.elapsed() > Duration::from_secs(120) {
            return Err("projector did not catch up in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lags = Arc::new(Mutex::new(hist()));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, lags, done) = (pool.clone(), lags.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = latch_projections::projector::checkpoint(
                &pool,
                latch_projections::device_status::NAME,
            )
            .await
            .unwrap_or(0);
            while !done.load(Ordering::Relaxed) {
                let now = chrono::Utc::now();
                let cp = latch_projections::projector::checkpoint(
                    &pool,
                    latch_projections::device_status::NAME,
                )
                .await
                .unwrap_or(seen);
                if cp > seen {
                    let rows: Vec<(chrono::DateTime<chrono::Utc>,)> = sqlx::query_as(
                        "SELECT e.recorded_at FROM event_log l JOIN events e USING (event_id)
                          WHERE l.position > $1 AND l.position <= $2",
                    )
                    .bind(seen)
                    .bind(cp)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                    let mut h = lags.lock().expect("lag histogram");
                    for (recorded,) in rows {
                        let us = (now - recorded).num_microseconds().unwrap_or(0).max(1) as u64;
                        h.saturating_record(us);
                    }
                    seen = cp;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
        sends.spawn(async move {
            let _ = http
                .post(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"kind": "vending", "site": "LAG", "label": format!("lag {i}")}))
                .send()
                .await;
        });
    }
    while sends.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    watcher.await?;
    let h = lags.lock().expect("lag histogram").clone();
    Ok(h)
}
