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

mod baselines;
mod cabinet;
mod settlement;
mod shopping;

use crate::bench::{
    free_port, in_scratch_database, machine_note, mib, rss_kib, wait_serving, Rate, Report, Row,
};
use crate::config::Settings;
use crate::sim::SimDevice;
use baselines::{bare_open_phase, raw_insert_phase, raw_publish_phase};
use cabinet::{register_cabinets, Cabinet};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::server::NatsServer;
use latch_nats::subjects;
use settlement::{report_settlement, settlement_phase};
use shopping::{report_shopping, shopping_phase};
use sqlx::PgPool;
use std::time::{Duration, Instant};
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

// ---------------------------------------------------------------------------------------------
// The phases against `latch serve`

async fn against_serve(
    env: &Env,
    child: &mut tokio::process::Child,
    args: &VendingArgs,
    base: &Baselines,
    report: &mut Report,
) -> Result<(), Error> {
    wait_serving(
        &env.http,
        &env.base,
        "/healthz",
        Duration::from_secs(30),
        child,
    )
    .await?;
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
