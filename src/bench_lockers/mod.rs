//! `latch bench lockers`: what handing on a locker compartment costs, each figure beside a
//! baseline measured in the same run on the same machine.
//!
//! Like the other benches it makes its own database on the configured Postgres server and
//! starts its own nats-server, so it never touches real data. Phases:
//! 1. baselines: a bare axum handler answering a direct grant's shape (201 + small JSON) at the
//!    same concurrency, raw single-row INSERTs over a pool the size of `latch serve`'s, and the
//!    authorizer sandbox alone receiving signed grant webhooks (its callbacks going to a stub
//!    that answers 200 at once);
//! 2. a `latch serve` child process (all roles) gets a site, compartments and users over its
//!    API; users hold `locker:` tokens issued directly (login is argon2 per attempt and rate
//!    limited, and is not what is measured);
//! 3. direct grants: N holder pairs, each with one reserved compartment that its two users hand
//!    back and forth (`POST /lockers/grants`) in a closed loop, each grant timed from the request
//!    to the new holder showing in the `locker_compartments` read model;
//! 4. webhook delivery: M more compartments, each handed to authorizer 0001, which is the
//!    authorizer sandbox in this process; the grant-delivery role signs and POSTs each request,
//!    the sandbox picks its on-duty courier and calls back, and each grant is timed from the
//!    request to the courier showing as holder in the read model;
//! 5. memory of the `latch serve` process along the way, and where the CPU went.

mod baselines;
mod direct;
mod setup;
mod watch;
mod webhook;

use crate::bench::{
    free_port, in_scratch_database, machine_note, mib, rss_kib, wait_serving, Rate, Report, Row,
};
use crate::bench_cpu as cpu;
use crate::config::Settings;
use baselines::{bare_grant_phase, raw_insert_phase, sandbox_receive_phase};
use clap::Args;
use direct::{direct_phase, report_direct};
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::server::NatsServer;
use setup::setup;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use watch::{watch, Waiting};
use webhook::{report_webhook, webhook_phase};

type Error = Box<dyn std::error::Error>;

const DIRECT_SITE: &str = "BENCHD";
const WEBHOOK_SITE: &str = "BENCHW";
const SECRET: &str = "whsec_bGF0Y2gtYmVuY2gtYXV0aG9yaXplci1zaWduaW5nLXNlY3JldA==";
const COURIER: &str = "13900000000";
/// Registrations in flight at once while setting up (each hashes a password with argon2).
const SETUP_PARALLEL: usize = 8;
/// How long one direct grant may take to show in the read model before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole webhook phase may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the watcher reads the read model for changed holders.
const WATCH_POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Args)]
pub struct LockersArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Holder pairs granting directly at once (and concurrent clients of every baseline and of
    /// the webhook phase's requests).
    #[arg(long, default_value_t = 64)]
    pub holders: usize,
    /// Seconds the direct-grant phase is measured (after one unmeasured round per pair).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Grants sent through the authorizer sandbox in the webhook phase.
    #[arg(long, default_value_t = 1000)]
    pub grants: usize,
    /// Seconds each closed-loop baseline runs.
    #[arg(long, default_value_t = 5)]
    pub baseline_seconds: u64,
}

pub async fn run(args: LockersArgs) -> Result<Report, Error> {
    let mut report = Report::default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_lockers", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    report.notes.push(format!(
        "peak RSS of the bench process (clients, authorizer sandbox, baselines): {}",
        mib(rss_kib("self", "VmHWM:"))
    ));
    report.notes.push(format!(
        "{}; load average at start (1, 5, 15 min): {}",
        machine_note(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(report)
}

struct Baselines {
    bare: Rate,
    insert: Rate,
    /// CPU per row of the raw INSERTs (this process and the Postgres backends).
    insert_cpu: cpu::Spent,
    sandbox: Rate,
}

struct Env {
    pool: PgPool,
    http: reqwest::Client,
    base: String,
    pid: String,
    nats_pid: Option<u32>,
    operator: String,
}

impl Env {
    /// The processes on the path, for CPU readings.
    fn processes(&self) -> cpu::Processes {
        cpu::Processes {
            latch: self.pid.clone(),
            latch_includes_clients: false,
            nats: self.nats_pid,
        }
    }
}

async fn phases(args: &LockersArgs, db_url: &str, report: &mut Report) -> Result<(), Error> {
    let nats = NatsServer::start().await?;
    let pool_size = Settings::new(db_url, nats.url()).db_max_connections;
    let pool = latch_domain::store::connect(db_url, pool_size, Duration::from_secs(10)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.holders * 2)
        .build()?;
    tracing::info!(db = %db_url, nats = %nats.url(), "bench environment ready");

    // 1. Baselines, while nothing else runs.
    let bare = bare_grant_phase(&http, args).await?;
    tracing::info!(rate = bare.per_sec, "bare handler measured");
    let bench_only = cpu::Processes {
        latch: "self".into(),
        latch_includes_clients: true,
        nats: None,
    };
    let cpu_before = cpu::sample(&pool, &bench_only).await;
    let insert = raw_insert_phase(&pool, args).await?;
    let insert_cpu = cpu::spent(
        &cpu_before,
        &cpu::sample(&pool, &bench_only).await,
        insert.hist.len(),
        &bench_only,
    );
    tracing::info!(rate = insert.per_sec, "raw insert measured");
    let sandbox = sandbox_receive_phase(&http, args).await?;
    tracing::info!(rate = sandbox.per_sec, "sandbox receive measured");
    let base = Baselines {
        bare,
        insert,
        insert_cpu,
        sandbox,
    };

    // 2-5. Against a real `latch serve` process.
    let port = free_port()?;
    let (mut child, pid) = crate::bench::spawn_serve(db_url, &nats.url(), port)?;
    let env = Env {
        operator: issue_token(&pool, TokenRole::Operator, "bench").await?,
        pool,
        http,
        base: format!("http://127.0.0.1:{port}"),
        pid: pid.clone(),
        nats_pid: nats.pid(),
    };
    let result = against_serve(&env, &mut child, args, &base, report).await;
    crate::bench::stop_serve(&mut child, &pid, "", report).await?;
    result
}

async fn against_serve(
    env: &Env,
    child: &mut tokio::process::Child,
    args: &LockersArgs,
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
    let setup_started = Instant::now();
    let tokens = setup(env, args).await?;
    report.notes.push(format!(
        "setup: {} + {} compartments, {} users registered over the API and {} reservations in \
         {:.1} s",
        args.holders,
        args.grants,
        args.holders * 2 + 1,
        args.holders + args.grants,
        setup_started.elapsed().as_secs_f64()
    ));
    let ready = rss_kib(&env.pid, "VmRSS:");
    // Registration hashes passwords with argon2 (19 MiB each, several at once), which would
    // set the peak; reset it (Linux clear_refs 5) so the peak below is the grant phases' own.
    let setup_peak = rss_kib(&env.pid, "VmHWM:");
    let _ = std::fs::write(format!("/proc/{}/clear_refs", env.pid), "5");

    let waiting: Waiting = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(env.pool.clone(), waiting.clone(), stop.clone());
    let result = async {
        let direct = direct_phase(env, args, &tokens, &waiting).await?;
        let after_direct = rss_kib(&env.pid, "VmRSS:");
        report_direct(&direct, base, args, report);
        let webhook = webhook_phase(env, args, &tokens, &waiting).await?;
        report_webhook(&webhook, base, args, report);
        let end = (rss_kib(&env.pid, "VmRSS:"), rss_kib(&env.pid, "VmHWM:"));
        report.rows.push(Row {
            what: "`latch serve` RSS (all roles)".into(),
            value: format!(
                "idle {}; set up {} (peak during setup {}); after direct grants {}; after \
                 webhook grants {}; peak during the grant phases (VmHWM, reset after setup) {}",
                mib(idle),
                mib(ready),
                mib(setup_peak),
                mib(after_direct),
                mib(end.0),
                mib(end.1)
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
        });
        Ok::<(), Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.ok();
    result
}

fn cpu_share(
    before: &[(&'static str, f64)],
    after: &[(&'static str, f64)],
    over: Duration,
) -> String {
    after
        .iter()
        .map(|(name, secs)| {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, s)| *s);
            format!("{name} {:.0}%", (secs - was) / over.as_secs_f64() * 100.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
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
