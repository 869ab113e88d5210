//! `latch bench soak`: sustained full load for minutes, watching whether the read models keep
//! up and whether memory stays flat (issue 16).
//!
//! A short bench shows a rate; a soak shows whether that rate can be held. The bench makes its
//! own database and nats-server, starts a `latch serve` child with every role, and then, for
//! `--minutes`, runs `--clients` closed-loop HTTP clients registering devices while a fleet of
//! `--devices` simulated cabinets heartbeats and reports its door opening and closing (events
//! through the ingest role). Every `--report-secs` it reads where each stage stands: commands
//! answered, the log head, what the relay has not published, how far the slowest read model is
//! behind (positions, and the age of its oldest unapplied event), and the server's RSS. At the
//! end it stops the load, times the drain, and reports the CPU per 1,000 events of the whole
//! run and the per-stage timings `latch serve` recorded (`latch_stage_*` in `/metrics`).
//! Baseline in the same run: raw single-row INSERTs from as many clients.

use crate::bench::{closed_loop, in_scratch_database, machine_note, mib, rss_kib, Report, Row};
use crate::bench_cpu as cpu;
use crate::sim::SimDevice;
use clap::Args;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::server::NatsServer;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Minutes of sustained load.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Closed-loop HTTP clients registering devices.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Simulated cabinets heartbeating and reporting their door.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Door reports (open or close) per second across the fleet.
    #[arg(long, default_value_t = 200)]
    pub door_rate: u64,
    /// Seconds between progress readings.
    #[arg(long, default_value_t = 30)]
    pub report_secs: u64,
}

pub async fn run(args: SoakArgs) -> Result<Report, Error> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_soak", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    report.notes.push(machine_note());
    Ok(report)
}

/// One progress reading.
struct Reading {
    at: Duration,
    commands: u64,
    head: i64,
    unpublished: i64,
    behind: i64,
    behind_model: String,
    behind_secs: f64,
    rss_kib: Option<u64>,
}

async fn phases(args: &SoakArgs, db_url: &str, report: &mut Report) -> Result<(), Error> {
    let nats = NatsServer::start().await?;
    let pool = latch_domain::store::connect(db_url, 20, Duration::from_secs(10)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;

    // Baseline: raw single-row INSERTs from as many clients, CPU included.
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&pool)
        .await?;
    let bench_only = cpu::Processes {
        latch: "self".into(),
        latch_includes_clients: true,
        nats: None,
    };
    let before = cpu::sample(&pool, &bench_only).await;
    let raw = {
        let pool = pool.clone();
        closed_loop(args.clients, 5, move |i| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                    .bind(serde_json::json!({"kind": "vending", "label": format!("raw {i}")}))
                    .execute(&pool)
                    .await
                    .is_ok()
            }
        })
        .await
    };
    let raw_cpu = cpu::spent(
        &before,
        &cpu::sample(&pool, &bench_only).await,
        raw.hist.len(),
        &bench_only,
    );

    let port = crate::bench::free_port()?;
    let (mut child, pid) = crate::bench::spawn_serve(db_url, &nats.url(), port)?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let result = async {
        crate::bench::wait_serving(&http, &base, "/readyz", Duration::from_secs(60), &mut child)
            .await?;
        let operator = issue_token(&pool, TokenRole::Operator, "bench").await?;
        let procs = cpu::Processes {
            latch: pid.clone(),
            latch_includes_clients: false,
            nats: nats.pid(),
        };
        soak(
            args, &pool, &http, &base, &operator, &nats, &procs, &raw, &raw_cpu, report,
        )
        .await
    }
    .await;
    crate::bench::stop_serve(&mut child, &pid, "", report).await?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn soak(
    args: &SoakArgs,
    pool: &PgPool,
    http: &reqwest::Client,
    base: &str,
    operator: &str,
    nats: &NatsServer,
    procs: &cpu::Processes,
    raw: &crate::bench::Rate,
    raw_cpu: &cpu::Spent,
    report: &mut Report,
) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let js = latch_nats::jetstream(latch_nats::connect(&nats.url(), "bench-soak").await?);

    // The fleet: registered over HTTP, then heartbeating and opening and closing its doors.
    let mut fleet = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let res = http
            .post(format!("{base}/devices"))
            .bearer_auth(operator)
            .json(&serde_json::json!({"kind": "vending", "site": "SOAK", "label": format!("cab {i}")}))
            .send()
            .await?
            .error_for_status()?;
        let body: serde_json::Value = res.json().await?;
        let id = body["device_id"].as_str().ok_or("no device_id")?.parse()?;
        fleet.push(SimDevice::new(id, js.clone()));
    }
    let fleet = Arc::new(fleet);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        tasks.spawn(async move {
            let mut uptime = 0;
            while !stop.load(Ordering::Relaxed) {
                for device in fleet.iter() {
                    let _ = device.heartbeat(uptime).await;
                }
                uptime += 5;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    if args.door_rate > 0 {
        let (fleet, stop, rate) = (fleet.clone(), stop.clone(), args.door_rate);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0usize;
            let mut open = vec![false; fleet.len()];
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let i = n % fleet.len();
                open[i] = !open[i];
                let _ = fleet[i].door(open[i], None).await;
                n += 1;
            }
        });
    }
    for c in 0..args.clients {
        let (http, stop, answered, failed) =
            (http.clone(), stop.clone(), answered.clone(), failed.clone());
        let (url, token) = (format!("{base}/devices"), operator.to_owned());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"kind": "locker", "site": "SOAKREG", "label": format!("c{c} n{i}")}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201);
                if ok { &answered } else { &failed }.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }

    let started = Instant::now();
    let (cpu_before, events_before) = (cpu::sample(pool, procs).await, cpu::events(pool).await);
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let mut readings = Vec::new();
    while started.elapsed() < total {
        let next = Duration::from_secs(args.report_secs).min(total - started.elapsed());
        tokio::time::sleep(next).await;
        let r = read(
            pool,
            &procs.latch,
            started.elapsed(),
            answered.load(Ordering::Relaxed),
        )
        .await;
        tracing::info!(
            secs = r.at.as_secs(),
            commands = r.commands,
            head = r.head,
            unpublished = r.unpublished,
            behind = r.behind,
            behind_secs = r.behind_secs,
            rss_mib = r.rss_kib.unwrap_or(0) / 1024,
            "soak progress"
        );
        readings.push(r);
    }
    stop.store(true, Ordering::Relaxed);
    let load_ended = started.elapsed();
    while tasks.join_next().await.is_some() {}
    let end = read(
        pool,
        &procs.latch,
        load_ended,
        answered.load(Ordering::Relaxed),
    )
    .await;
    let drain_started = Instant::now();
    let drained = cpu::drained(pool, Duration::from_secs(300)).await;
    let drain = drain_started.elapsed();
    let spent = cpu::spent(
        &cpu_before,
        &cpu::sample(pool, procs).await,
        cpu::events(pool).await - events_before,
        procs,
    );

    // The figures.
    let commands_per_sec = end.commands as f64 / load_ended.as_secs_f64();
    let events_per_sec = (end.head as f64) / load_ended.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "sustained load, {:.1} min: {} HTTP clients registering devices + {} cabinets \
             (heartbeats every 5 s, {} door reports/s), every role in one `latch serve`",
            args.minutes, args.clients, args.devices, args.door_rate
        ),
        value: format!(
            "{commands_per_sec:.0} commands/s ({} failed); log grew {events_per_sec:.0} events/s",
            failed.load(Ordering::Relaxed)
        ),
        baseline: format!("raw INSERT, {} clients: {:.0}/s", args.clients, raw.per_sec),
        ratio: format!("{:.2}x", commands_per_sec / raw.per_sec),
        target: ">= 0.4x".into(),
    });
    report.rows.push(Row {
        what: "read models at the end of the load (slowest)".into(),
        value: format!(
            "{} positions behind ({}), oldest unapplied event {:.2} s old; relay unpublished {}; \
             drained in {:.1} s{}",
            end.behind,
            end.behind_model,
            end.behind_secs,
            end.unpublished,
            drain.as_secs_f64(),
            if drained {
                ""
            } else {
                " (NOT drained in 300 s)"
            }
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "lag < 1 s".into(),
    });
    let warm = readings.first().and_then(|r| r.rss_kib);
    report.rows.push(Row {
        what: "`latch serve` RSS over the soak".into(),
        value: format!(
            "after the first {} s {}; at the end {}; peak reading {}",
            args.report_secs,
            mib(warm),
            mib(end.rss_kib),
            mib(readings.iter().filter_map(|r| r.rss_kib).max())
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "flat after warm-up".into(),
    });
    report.rows.push(cpu::row(
        "the soak (all of it, drained)",
        &spent,
        raw_cpu,
        "-",
    ));
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(operator)
        .send()
        .await?
        .text()
        .await?;
    for (what, name, labels) in STAGES {
        if let Some((p50, p99, count)) = histogram_quantiles(&metrics, name, labels) {
            report.rows.push(Row {
                what: format!("stage: {what}"),
                value: format!("p50 <= {} ms, p99 <= {} ms ({count} batches)", p50, p99),
                baseline: "-".into(),
                ratio: "-".into(),
                target: "-".into(),
            });
        }
    }
    report.notes.push(format!(
        "progress (s: commands answered, log head, unpublished, slowest model behind / age s, RSS): {}",
        readings
            .iter()
            .map(|r| format!(
                "{}: {}, {}, {}, {} / {:.1}, {}",
                r.at.as_secs(),
                r.commands,
                r.head,
                r.unpublished,
                r.behind,
                r.behind_secs,
                mib(r.rss_kib)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    report.notes.push(
        "stage figures are bucket upper bounds from latch serve's /metrics (latch_stage_*: the \
         age of a batch's last event when the stage finished it; the HTTP and command figures \
         time one request or command)"
            .into(),
    );
    Ok(())
}

/// A stage row: what it is called, the histogram series, and the labels that pick it.
type Stage = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// What the stages rows read from `/metrics`.
const STAGES: &[Stage] = &[
    (
        "HTTP request (POST /devices)",
        "latch_http_request_duration_seconds_bucket",
        &[("route", "/devices"), ("method", "POST")],
    ),
    (
        "command: load, decide, append (RegisterDevice)",
        "latch_command_duration_seconds_bucket",
        &[("command", "RegisterDevice")],
    ),
    (
        "commit -> sequenced by the relay (age at batch end)",
        "latch_stage_delay_seconds_bucket",
        &[("stage", "sequence")],
    ),
    (
        "commit -> published to EVENTS (age at batch end)",
        "latch_stage_delay_seconds_bucket",
        &[("stage", "publish")],
    ),
    (
        "commit -> applied to device_status (age at batch end)",
        "latch_stage_delay_seconds_bucket",
        &[("stage", "apply"), ("projector", "device_status")],
    ),
    (
        "one device_status batch (apply + checkpoint + commit)",
        "latch_stage_batch_seconds_bucket",
        &[("stage", "apply"), ("projector", "device_status")],
    ),
    (
        "one relay sequencing batch",
        "latch_stage_batch_seconds_bucket",
        &[("stage", "sequence")],
    ),
    (
        "one relay publishing batch (send + acks)",
        "latch_stage_batch_seconds_bucket",
        &[("stage", "publish")],
    ),
];

/// p50 and p99 (the upper bound, in ms, of the bucket each falls in) and the count of a
/// Prometheus histogram, summed over the series whose labels include `labels`.
fn histogram_quantiles(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<(String, String, u64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let (series, value) = line.rsplit_once(' ')?;
        if !labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let le = series.split("le=\"").nth(1)?.split('"').next()?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let count: f64 = value.parse().ok()?;
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let at = |q: f64| {
        let le = buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le);
        if le.is_infinite() {
            "inf".to_owned()
        } else {
            format!("{}", le * 1000.0)
        }
    };
    Some((at(0.5), at(0.99), total as u64))
}

async fn read(pool: &PgPool, latch_pid: &str, at: Duration, commands: u64) -> Reading {
    let (head, unpublished) = latch_projections::log::relay_figures(pool)
        .await
        .unwrap_or((0, 0));
    let lags = latch_projections::projector::lags(pool, latch_projections::audit::rebuild::NAMES)
        .await
        .unwrap_or_default();
    let (behind_model, checkpoint, behind) = lags
        .into_iter()
        .max_by_key(|(_, _, lag)| *lag)
        .unwrap_or_default();
    // The age of the oldest event the slowest model has not applied.
    let behind_secs = if behind > 0 {
        sqlx::query_scalar::<_, f64>(
            "SELECT EXTRACT(EPOCH FROM (now() - e.recorded_at))::float8
               FROM event_log l JOIN events e ON e.id = l.event_row_id
              WHERE l.position = $1",
        )
        .bind(checkpoint + 1)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0.0)
    } else {
        0.0
    };
    Reading {
        at,
        commands,
        head,
        unpublished,
        behind,
        behind_model,
        behind_secs,
        rss_kib: rss_kib(latch_pid, "VmRSS:"),
    }
}
