//! `latch bench failover`: how long the EVENTS stream stands still when the relay's instance or
//! the NATS node leading `EVENTS` dies (issue 15), beside the relay's normal commit-to-publish
//! delay measured in the same run, and whether anything was lost or doubled meanwhile.
//!
//! It makes its own database, a three-node nats-server cluster on loopback (streams on three
//! replicas) and two `latch serve` child processes with every role, then keeps a steady load on
//! them (HTTP registrations from a few clients, retried onto the other instance with the same
//! `Idempotency-Key` on connection errors, and cabinet heartbeats over JetStream). Phases:
//! 1. baseline: commit (the event row's `recorded_at`) to the event's arrival on its EVENTS
//!    subject, under the same load and with nothing killed;
//! 2. `--rounds` times: kill -9 the instance holding the relay's advisory lock (found in
//!    `pg_locks`, each instance naming its connections), time until the stream's last sequence
//!    moves past where it stood (polled every 10 ms), then start a fresh standby;
//! 3. `--leader-rounds` times: kill -9 the node leading EVENTS, time until publishing resumes,
//!    restart the node and time until its replica is current again;
//! 4. the load stops, the relay drains, and the checks run: the log dense, EVENTS == log,
//!    nothing doubled, every acknowledged command logged and projected once.

mod checks;
mod load;
mod report;

use crate::bench::{hist, in_scratch_database, machine_note, mib, rss_kib, Report};
use clap::Args;
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::cluster::{self, Cluster};
use latch_nats::subjects::EVENTS_STREAM;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// How long one failover may take before the round counts as failed.
const RESUME_LIMIT: Duration = Duration::from_secs(60);
/// Events the baseline window must see at least (it is stretched until it has).
const MIN_BASELINE_EVENTS: usize = 20;
/// How often the stream's last sequence is read while waiting.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Relay failovers: kill -9 the instance holding the relay lock, then start a fresh standby.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// EVENTS leader failovers: kill -9 the node leading the stream, then restart it.
    #[arg(long, default_value_t = 3)]
    pub leader_rounds: usize,
    /// Seconds of the baseline window (steady load, nothing killed).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of steady load after each round, before the next kill.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Commands per second offered in all, spread over --clients.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Cabinets sending heartbeats throughout.
    #[arg(long, default_value_t = 50)]
    pub cabinets: usize,
    /// Milliseconds between one cabinet's heartbeats.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// A directory to keep each `latch serve`'s log in (default: discarded).
    #[arg(long)]
    pub serve_logs: Option<PathBuf>,
}

pub async fn run(args: FailoverArgs) -> Result<Report, Error> {
    if args.clients == 0 || args.rate == 0 {
        return Err("--clients and --rate must be at least 1".into());
    }
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(
        &args.database_url,
        "latch_bench_failover",
        |db| async move {
            // Interrupted (Ctrl-C, SIGTERM), the phases are dropped: the instances and nodes
            // are killed with them and the database is dropped, instead of outliving the bench.
            tokio::select! {
                done = phases(a, &db, r) => done,
                () = crate::app::shutdown_signal() => Err("interrupted".into()),
            }
        },
    )
    .await?;
    Ok(report)
}

/// A `latch serve` child process with every role. Its database connections carry its name as
/// their application name, which is how the relay lock's holder is found.
struct Instance {
    name: String,
    base: String,
    child: tokio::process::Child,
}

impl Instance {
    async fn start(
        args: &FailoverArgs,
        db_url: &str,
        nats_urls: &str,
        n: usize,
        http: &reqwest::Client,
    ) -> Result<Self, Error> {
        let name = format!("latch-failover-{n}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let separator = if db_url.contains('?') { '&' } else { '?' };
        let log = |suffix: &str| -> Result<std::process::Stdio, Error> {
            Ok(match &args.serve_logs {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    std::fs::File::create(dir.join(format!("{name}.{suffix}")))?.into()
                }
                None => std::process::Stdio::null(),
            })
        };
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
            .env(
                "DATABASE_URL",
                format!("{db_url}{separator}application_name={name}"),
            )
            .env("NATS_URL", nats_urls)
            .env("LATCH_STREAM_REPLICAS", "3")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log("out")?)
            .stderr(log("log")?)
            .kill_on_drop(true)
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(format!("{name} exited at start: {status}").into());
            }
            let health = http
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} did not answer /healthz in 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(%name, %base, "instance up");
        Ok(Self { name, base, child })
    }

    fn pid(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }

    /// SIGKILL, and reaped: as abrupt as a crash.
    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The application name of the connection holding the relay's advisory lock, if any.
async fn relay_holder(pool: &PgPool) -> Option<String> {
    sqlx::query_as::<_, (String,)>(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(latch_workers::relay::LEADER_LOCK)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
    .map(|(name,)| name)
}

async fn stream_last(js: &async_nats::jetstream::Context) -> Option<u64> {
    tokio::time::timeout(
        Duration::from_secs(1),
        cluster::stream_last(js, EVENTS_STREAM),
    )
    .await
    .ok()
    .flatten()
}

/// Polls until `check` yields a value, up to `limit`.
async fn wait_some<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `check` holds, up to `limit`; the time it took.
async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    wait_some(limit, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
    .map(|()| started.elapsed())
}

/// From `killed_at`, how long until the stream's last sequence passes `before`.
async fn until_published(
    js: &async_nats::jetstream::Context,
    before: u64,
    killed_at: Instant,
) -> Option<Duration> {
    let waited = wait_for(RESUME_LIMIT, || async {
        stream_last(js).await.is_some_and(|last| last > before)
    })
    .await;
    waited.map(|_| killed_at.elapsed())
}

async fn phases(args: &FailoverArgs, db_url: &str, report: &mut Report) -> Result<(), Error> {
    let pool = latch_domain::store::connect(db_url, 8, Duration::from_secs(10)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;
    let mut nats = Cluster::start(3).await?;
    let urls = nats.urls();
    let client = latch_nats::connect(&urls, "bench-failover").await?;
    let js = latch_nats::jetstream(client.clone());
    cluster::form(&js, 3, Duration::from_secs(60)).await?;
    // One client per node, to read the stream through a node that is not the one killed.
    let mut node_js = Vec::new();
    for node in nats.nodes() {
        let c = latch_nats::connect(&node.url(), "bench-failover-probe").await?;
        node_js.push(latch_nats::jetstream(c));
    }
    tracing::info!(db = %db_url, nats = %urls, "bench environment ready");

    let token = issue_token(&pool, TokenRole::Operator, "bench").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let mut started = 0;
    let mut instances = Vec::new();
    for _ in 0..2 {
        started += 1;
        instances.push(Instance::start(args, db_url, &urls, started, &http).await?);
        // The first takes the relay lock before the second exists: a known holder to begin.
        if started == 1 {
            wait_for(Duration::from_secs(30), || async {
                relay_holder(&pool).await.as_deref() == Some("latch-failover-1")
            })
            .await
            .ok_or("the first instance did not take the relay lock in 30 s")?;
        }
    }
    let bases = Arc::new(RwLock::new(
        instances.iter().map(|i| i.base.clone()).collect::<Vec<_>>(),
    ));

    // The load: cabinets registered and beating, then commands throughout.
    let cabinets = load::register_cabinets(&http, &bases, &token, args.cabinets).await?;
    let heartbeats = load::Heartbeats::start(
        &js,
        &cabinets,
        Duration::from_millis(args.heartbeat_ms.max(1)),
    );
    let commands = load::Commands::start(&http, &bases, &token, args.rate, args.clients);

    // 1. Baseline: commit to publish with nothing killed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = publish_delay(&client, &pool, &commands, args.seconds).await?;

    // 2. Relay failovers.
    let mut relay_times = Vec::new();
    for round in 1..=args.rounds {
        let holder = wait_some(Duration::from_secs(30), || relay_holder(&pool))
            .await
            .ok_or("no instance holds the relay lock")?;
        let index = instances
            .iter()
            .position(|i| i.name == holder)
            .ok_or_else(|| format!("the relay lock is held by {holder}, not an instance"))?;
        let killed_at = Instant::now();
        instances[index].kill().await;
        let before = wait_some(RESUME_LIMIT, || stream_last(&node_js[0]))
            .await
            .ok_or("EVENTS unreadable after the relay holder was killed")?;
        let resumed = until_published(&node_js[0], before, killed_at).await;
        let successor = relay_holder(&pool).await.unwrap_or_default();
        tracing::info!(round, %holder, %successor, resumed_ms = resumed.map(|d| d.as_millis() as u64), "relay failover");
        relay_times.push(resumed);
        let mut dead = instances.remove(index);
        dead.kill().await;
        started += 1;
        let fresh = Instance::start(args, db_url, &urls, started, &http).await?;
        {
            let mut b = bases.write().expect("bases");
            b.retain(|u| *u != dead.base);
            b.push(fresh.base.clone());
        }
        instances.push(fresh);
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
    }

    // 3. EVENTS leader failovers.
    let mut leader_times = Vec::new();
    let mut elections = Vec::new();
    let mut catch_up = Vec::new();
    for round in 1..=args.leader_rounds {
        let index = wait_some(Duration::from_secs(30), || async {
            for j in &node_js {
                if let Some(l) = cluster::stream_leader(j, EVENTS_STREAM).await {
                    return cluster::node_index(&l);
                }
            }
            None
        })
        .await
        .ok_or("EVENTS has no leader in 30 s")?;
        let probe = &node_js[(index + 1) % node_js.len()];
        let before = wait_some(RESUME_LIMIT, || stream_last(probe))
            .await
            .ok_or("EVENTS unreadable before the leader was killed")?;
        let killed_at = Instant::now();
        nats.node_mut(index).stop();
        // Publishing cannot resume before the survivors have elected a leader: that moment,
        // seen through the same node, splits the figure into election and relay.
        let old_leader = cluster::node_name(index);
        let elected_in = std::cell::Cell::new(None);
        let resumed = wait_for(RESUME_LIMIT, || {
            let elected = elected_in
                .get()
                .is_none()
                .then(|| cluster::stream_leader(probe, EVENTS_STREAM));
            let (elected_in, old_leader) = (&elected_in, &old_leader);
            async move {
                if let Some(leader) = elected {
                    let leader = tokio::time::timeout(Duration::from_secs(1), leader).await;
                    if leader.ok().flatten().is_some_and(|l| l != *old_leader) {
                        elected_in.set(Some(killed_at.elapsed()));
                    }
                }
                stream_last(probe).await.is_some_and(|last| last > before)
            }
        })
        .await
        .map(|_| killed_at.elapsed());
        elections.push(elected_in.get().or(resumed));
        nats.node_mut(index).restart().await?;
        let current = wait_for(Duration::from_secs(120), || {
            cluster::stream_replicas_current(probe, EVENTS_STREAM, 3)
        })
        .await;
        tracing::info!(round, leader = %cluster::node_name(index), resumed_ms = resumed.map(|d| d.as_millis() as u64), "leader failover");
        leader_times.push(resumed);
        catch_up.push(current);
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
    }

    // 4. Stop the load, let everything drain, check.
    let commands = commands.stop().await;
    let beats = heartbeats.stop();
    let outcome = checks::run(&pool, &js, &commands.acknowledged).await?;
    let rss: Vec<String> = instances
        .iter()
        .map(|i| {
            let pid = i.pid();
            format!(
                "{}: {} (peak {})",
                i.name,
                mib(rss_kib(&pid, "VmRSS:")),
                mib(rss_kib(&pid, "VmHWM:"))
            )
        })
        .collect();
    for i in &mut instances {
        i.kill().await;
    }

    report::fill(
        report,
        args,
        report::Figures {
            baseline,
            relay_times,
            leader_times,
            elections,
            catch_up,
            commands,
            beats,
            checks: outcome,
            rss,
            instances: started,
        },
    );
    report.notes.push(machine_note());
    pool.close().await;
    Ok(())
}

/// Commit-to-EVENTS delay of every event published during `secs` of the running load.
async fn publish_delay(
    client: &async_nats::Client,
    pool: &PgPool,
    commands: &load::Commands,
    secs: u64,
) -> Result<Histogram<u64>, Error> {
    use futures::StreamExt;
    let mut sub = client.subscribe(latch_nats::subjects::EVENTS_ALL).await?;
    client.flush().await?;
    commands.quiet(true);
    let mut seen = Vec::new();
    // The window, stretched (up to a minute) on a machine so busy that it saw too few events.
    let started = tokio::time::Instant::now();
    let mut until = started + Duration::from_secs(secs);
    loop {
        if tokio::time::Instant::now() >= until
            && seen.len() < MIN_BASELINE_EVENTS
            && started.elapsed() < Duration::from_secs(60)
        {
            until += Duration::from_secs(1);
        }
        match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(msg)) => {
                let at = chrono::Utc::now();
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .and_then(|v| uuid::Uuid::parse_str(v.as_str()).ok());
                if let Some(id) = id {
                    seen.push((id, at));
                }
            }
            Ok(None) => break,
            Err(_)
                if seen.len() >= MIN_BASELINE_EVENTS
                    || started.elapsed() >= Duration::from_secs(60) =>
            {
                break
            }
            Err(_) => {}
        }
    }
    commands.quiet(false);
    drop(sub);
    let ids: Vec<uuid::Uuid> = seen.iter().map(|(id, _)| *id).collect();
    let recorded: std::collections::HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as("SELECT event_id, recorded_at FROM events WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut h = hist();
    for (id, at) in seen {
        if let Some(rec) = recorded.get(&id) {
            let us = (at - *rec).num_microseconds().unwrap_or(0).max(1) as u64;
            h.saturating_record(us);
        }
    }
    if h.is_empty() {
        return Err("no event reached the EVENTS subjects in the baseline window".into());
    }
    Ok(h)
}
