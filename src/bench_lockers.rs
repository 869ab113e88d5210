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

use crate::authorizer_sandbox::{AuthorizerSandbox, AuthorizerSandboxSettings, Courier};
use crate::bench::{
    closed_loop, hist, in_scratch_database, machine_note, mib, rss_kib, Rate, Report, Row,
};
use crate::bench_cpu::{self as cpu, cpu_split};
use crate::bench_vending::free_port;
use crate::config::Settings;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_nats::server::NatsServer;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

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

// ---------------------------------------------------------------------------------------------
// Baselines

/// An axum handler that answers a direct grant's shape and does nothing else.
async fn bare_grant_phase(http: &reqwest::Client, args: &LockersArgs) -> Result<Rate, Error> {
    let app = axum::Router::new().route(
        "/lockers/grants",
        axum::routing::post(|axum::Json(v): axum::Json<Value>| async move {
            (
                axum::http::StatusCode::CREATED,
                axum::Json(json!({
                    "grant_id": Uuid::now_v7(),
                    "compartment_id": format!("{}:{}", v["site"], v["compartment"]),
                    "status": "completed",
                    "holder": v["receiver"],
                })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/lockers/grants", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = http.clone();
    let op = move |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .bearer_auth("bare")
                .json(&json!({"site": DIRECT_SITE, "compartment": format!("{:04}", i / 1_000_000), "receiver": "13911112222"}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    };
    // The first second opens the keep-alive connections, unmeasured.
    let _ = closed_loop(args.holders, 1, op.clone()).await;
    let rate = closed_loop(args.holders, args.baseline_seconds, op).await;
    server.abort();
    Ok(rate)
}

/// Single-row INSERTs from as many clients as holders, over the pool `latch serve` has.
async fn raw_insert_phase(pool: &PgPool, args: &LockersArgs) -> Result<Rate, Error> {
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(pool)
        .await?;
    let pool = pool.clone();
    Ok(closed_loop(args.holders, args.baseline_seconds, move |i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                .bind(json!({"kind": "grant", "from": "13911110000", "to": "13911112222", "n": i}))
                .execute(&pool)
                .await
                .is_ok()
        }
    })
    .await)
}

/// The authorizer sandbox alone: signed grant webhooks straight at it, each with its own id, its
/// callbacks answered 200 at once by a stub standing in for Latch.
async fn sandbox_receive_phase(http: &reqwest::Client, args: &LockersArgs) -> Result<Rate, Error> {
    let stub = axum::Router::new().route(
        "/lockers/authorizers/{number}/callback",
        axum::routing::post(|| async { axum::Json(json!({"status": "accepted"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stub_url = format!("http://{}", listener.local_addr()?);
    let stub_server = tokio::spawn(async move { axum::serve(listener, stub).await });
    let (endpoint, stop, sandbox) = start_sandbox(&stub_url).await?;
    let key = latch_domain::webhooks::secret_key(SECRET).ok_or("bench secret")?;
    let http = http.clone();
    let op = move |_: usize| {
        let (http, endpoint, key) = (http.clone(), endpoint.clone(), key.clone());
        async move {
            let request_id = Uuid::now_v7();
            let body = json!({"type": "grant.requested", "data": {
                "request_id": request_id, "site": WEBHOOK_SITE, "compartment": "0001",
                "size": "large", "authorizer": "0001", "requester": "13911110000",
                "deadline": chrono::Utc::now() + chrono::Duration::minutes(5),
            }})
            .to_string();
            let id = latch_workers::grant_delivery::webhook_id(request_id);
            let ts = chrono::Utc::now().timestamp();
            let signature = latch_domain::webhooks::sign(&key, &id, ts, body.as_bytes());
            http.post(&endpoint)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let _ = closed_loop(args.holders, 1, op.clone()).await;
    let rate = closed_loop(args.holders, args.baseline_seconds, op).await;
    stop.cancel();
    sandbox.await.ok();
    stub_server.abort();
    Ok(rate)
}

/// An authorizer sandbox for number 0001 with one courier on duty; its endpoint, a stop token
/// and its task.
async fn start_sandbox(
    latch_url: &str,
) -> Result<
    (
        String,
        latch_workers::CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    Error,
> {
    let mut settings =
        AuthorizerSandboxSettings::new("127.0.0.1:0".parse()?, "0001", SECRET, latch_url);
    settings.roster = vec![Courier {
        user_number: COURIER.into(),
        name: "王".into(),
        on_duty: true,
    }];
    let sandbox = AuthorizerSandbox::build(settings).await?;
    let endpoint = sandbox.endpoint();
    let stop = latch_workers::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(sandbox.run_until_stopped(async move { s.cancelled().await }));
    Ok((endpoint, stop, task))
}

// ---------------------------------------------------------------------------------------------
// Watching the read model

/// Compartments whose next holder someone is waiting for: compartment id -> (holder, waker).
type Waiting = Arc<Mutex<HashMap<String, (String, oneshot::Sender<Instant>)>>>;

/// One poller for every waiting client: reads the rows the lockers projector changed since the
/// last look, and wakes whoever waits for a compartment that now has the holder they expect.
fn watch(pool: PgPool, waiting: Waiting, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: i64 = sqlx::query_as::<_, (Option<i64>,)>(
            "SELECT max(last_position) FROM locker_compartments",
        )
        .fetch_one(&pool)
        .await
        .map(|(p,)| p.unwrap_or(0))
        .unwrap_or(0);
        while !stop.load(Ordering::Relaxed) {
            let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                "SELECT compartment_id, holder, last_position FROM locker_compartments
                  WHERE last_position > $1",
            )
            .bind(seen)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            let now = Instant::now();
            if !rows.is_empty() {
                let mut w = waiting.lock().expect("waiting map");
                for (id, holder, position) in rows {
                    seen = seen.max(position);
                    let arrived =
                        matches!((w.get(&id), &holder), (Some((want, _)), Some(h)) if want == h);
                    if arrived {
                        if let Some((_, tx)) = w.remove(&id) {
                            let _ = tx.send(now);
                        }
                    }
                }
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    })
}

fn expect(waiting: &Waiting, compartment: &str, holder: &str) -> oneshot::Receiver<Instant> {
    let (tx, rx) = oneshot::channel();
    waiting
        .lock()
        .expect("waiting map")
        .insert(compartment.to_owned(), (holder.to_owned(), tx));
    rx
}

// ---------------------------------------------------------------------------------------------
// Against `latch serve`

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

async fn post(env: &Env, path: &str, token: &str, body: Value) -> Result<Value, String> {
    let res = env
        .http
        .post(format!("{}{path}", env.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{path}: {status} {body}"))
    }
}

fn user_number(i: usize) -> String {
    format!("139{:08}", i + 1)
}

/// Holder i's pair partner is user holders + i; webhook requesters are the first holders.
async fn setup(env: &Env, args: &LockersArgs) -> Result<Vec<String>, Error> {
    let op = &env.operator;
    for (site, name) in [(DIRECT_SITE, "直接授权"), (WEBHOOK_SITE, "快递授权")] {
        post(
            env,
            "/lockers/sites",
            op,
            json!({"site": site, "name": name}),
        )
        .await?;
    }
    let installs = (0..args.holders)
        .map(|n| (DIRECT_SITE, n))
        .chain((0..args.grants).map(|n| (WEBHOOK_SITE, n)));
    futures::stream::iter(installs)
        .map(|(site, n)| {
            post(
                env,
                "/lockers/compartments",
                op,
                json!({"site": site, "number": format!("{n:04}"), "size": "large"}),
            )
        })
        .buffer_unordered(SETUP_PARALLEL * 4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let users: Vec<String> = (0..args.holders * 2)
        .map(user_number)
        .chain([COURIER.to_owned()])
        .collect();
    futures::stream::iter(&users)
        .map(|u| {
            post(
                env,
                "/lockers/users",
                op,
                json!({"user_number": u, "name": "测试用户", "password": "bench-password-1"}),
            )
        })
        .buffer_unordered(SETUP_PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = Vec::with_capacity(users.len());
    for u in &users {
        tokens.push(issue_token(&env.pool, TokenRole::User, &format!("locker:{u}")).await?);
    }
    // Reservations one at a time: each takes the first free compartment the read model shows,
    // and running them at once would mostly race for the same one.
    for (i, token) in tokens.iter().enumerate().take(args.holders) {
        reserve(env, token, DIRECT_SITE)
            .await
            .map_err(|e| format!("holder {i}: {e}"))?;
    }
    for n in 0..args.grants {
        reserve(env, &tokens[n % args.holders], WEBHOOK_SITE)
            .await
            .map_err(|e| format!("webhook compartment {n}: {e}"))?;
    }
    wait_reserved(&env.pool, args.holders + args.grants).await?;
    Ok(tokens)
}

/// Reserves a large compartment; the API picks among the first free ones the read model shows,
/// which can all be taken already when the projector is behind, so it waits and tries again.
async fn reserve(env: &Env, token: &str, site: &str) -> Result<Value, String> {
    let mut tries = 0;
    loop {
        match post(
            env,
            "/lockers/reservations",
            token,
            json!({"site": site, "size": "large"}),
        )
        .await
        {
            Err(e) if e.contains("no_free_compartment") && tries < 500 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn wait_reserved(pool: &PgPool, want: usize) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM locker_compartments WHERE status = 'reserved'")
                .fetch_one(pool)
                .await?;
        if n as usize >= want {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {n} of {want} reservations projected in 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn against_serve(
    env: &Env,
    child: &mut tokio::process::Child,
    args: &LockersArgs,
    base: &Baselines,
    report: &mut Report,
) -> Result<(), Error> {
    wait_healthy(env, child).await?;
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

/// The direct-grant phase: histograms in microseconds, counts.
struct Direct {
    answered: Histogram<u64>,
    changed: Histogram<u64>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    cpu: String,
    /// CPU of latch serve, its Postgres backends and nats-server per event, drained.
    path_cpu: cpu::Spent,
}

/// One grant from `from` to `to` of `compartment`: (to 201, to holder changed), microseconds.
async fn grant_once(
    env: &Env,
    waiting: &Waiting,
    token: &str,
    compartment: &str,
    to: &str,
) -> Result<(u64, u64), String> {
    let number = compartment
        .split_once(':')
        .map(|(_, n)| n)
        .unwrap_or_default();
    let changed = expect(waiting, compartment, to);
    let started = Instant::now();
    post(
        env,
        "/lockers/grants",
        token,
        json!({"site": DIRECT_SITE, "compartment": number, "receiver": to}),
    )
    .await?;
    let answered = started.elapsed();
    let at = tokio::time::timeout(STEP_TIMEOUT, changed)
        .await
        .map_err(|_| format!("{compartment}: holder {to} not projected in {STEP_TIMEOUT:?}"))?
        .map_err(|_| "watcher stopped".to_owned())?;
    Ok((
        answered.as_micros() as u64,
        at.duration_since(started).as_micros() as u64,
    ))
}

async fn direct_phase(
    env: &Env,
    args: &LockersArgs,
    tokens: &[String],
    waiting: &Waiting,
) -> Result<Direct, Error> {
    let pairs: Vec<(String, usize, usize)> = {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT compartment_id, holder FROM locker_compartments WHERE site = $1",
        )
        .bind(DIRECT_SITE)
        .fetch_all(&env.pool)
        .await?;
        rows.into_iter()
            .filter_map(|(id, holder)| {
                let i = holder?.get(3..)?.parse::<usize>().ok()?.checked_sub(1)?;
                Some((id, i, i + args.holders))
            })
            .collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let env = Arc::new(Env {
        pool: env.pool.clone(),
        http: env.http.clone(),
        base: env.base.clone(),
        pid: env.pid.clone(),
        nats_pid: env.nats_pid,
        operator: env.operator.clone(),
    });
    let tokens: Arc<[String]> = tokens.into();
    let mut clients = tokio::task::JoinSet::new();
    for (compartment, a, b) in pairs {
        let (env, waiting, tokens, stop, measuring) = (
            env.clone(),
            waiting.clone(),
            tokens.clone(),
            stop.clone(),
            measuring.clone(),
        );
        clients.spawn(async move {
            let (mut answered, mut changed) = (hist(), hist());
            let (mut errors, mut first_error) = (0u64, None);
            let (mut from, mut to) = (a, b);
            while !stop.load(Ordering::Relaxed) {
                let result = grant_once(
                    &env,
                    &waiting,
                    &tokens[from],
                    &compartment,
                    &user_number(to),
                )
                .await;
                let measured = measuring.load(Ordering::Relaxed);
                match result {
                    Ok((a, c)) => {
                        if measured {
                            answered.saturating_record(a);
                            changed.saturating_record(c);
                        }
                        std::mem::swap(&mut from, &mut to);
                    }
                    Err(e) => {
                        if measured {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        // Ask the log who holds it now, and go on from there.
                        let holder: Option<(Option<String>,)> = sqlx::query_as(
                            "SELECT holder FROM locker_compartments WHERE compartment_id = $1",
                        )
                        .bind(&compartment)
                        .fetch_optional(&env.pool)
                        .await
                        .ok()
                        .flatten();
                        if holder.and_then(|(h,)| h).as_deref() == Some(&user_number(b)) {
                            (from, to) = (b, a);
                        } else {
                            (from, to) = (a, b);
                        }
                    }
                }
            }
            (answered, changed, errors, first_error)
        });
    }
    // One unmeasured round per pair opens connections and warms caches.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_split(&env.pid);
    let procs = env.processes();
    let (path_before, events_before) = (
        cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = cpu_share(&before, &cpu_split(&env.pid), elapsed);
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut changed) = (hist(), hist());
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = clients.join_next().await {
        let (a, c, e, f) = done?;
        answered.add(&a).map_err(|e| format!("{e:?}"))?;
        changed.add(&c).map_err(|e| format!("{e:?}"))?;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    cpu::drained(&env.pool, Duration::from_secs(60)).await;
    let path_cpu = cpu::spent(
        &path_before,
        &cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await - events_before,
        &procs,
    );
    Ok(Direct {
        answered,
        changed,
        elapsed,
        errors,
        first_error,
        cpu,
        path_cpu,
    })
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

fn report_direct(d: &Direct, base: &Baselines, args: &LockersArgs, report: &mut Report) {
    let rate = d.changed.len() as f64 / d.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "direct grants, {} holder pairs (closed loop): request -> holder changed in the read model",
            args.holders
        ),
        value: format!(
            "{rate:.0} grants/s ({}; {} grants, {} errors)",
            percentiles(&d.changed),
            d.changed.len(),
            d.errors
        ),
        baseline: format!(
            "bare axum handler, {} clients: {:.0}/s ({})",
            args.holders,
            base.bare.per_sec,
            base.bare.latency()
        ),
        ratio: format!("{:.3}x", rate / base.bare.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "same grants, against raw single-row INSERTs".into(),
        value: format!("{rate:.0} grants/s"),
        baseline: format!(
            "raw INSERT, {} clients: {:.0}/s ({})",
            args.holders,
            base.insert.per_sec,
            base.insert.latency()
        ),
        ratio: format!("{:.3}x", rate / base.insert.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which request -> 201".into(),
        value: percentiles(&d.answered),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(cpu::row(
        "direct grants (request to read model)",
        &d.path_cpu,
        &base.insert_cpu,
        "-",
    ));
    report.notes.push(format!(
        "direct grants: CPU while measured (100% = one core): {}",
        d.cpu
    ));
    if let Some(e) = &d.first_error {
        report.notes.push(format!("first direct-grant error: {e}"));
    }
}

/// The webhook phase: histograms in microseconds, counts.
struct Webhook {
    accepted: Histogram<u64>,
    changed: Histogram<u64>,
    elapsed: Duration,
    errors: usize,
    first_error: Option<String>,
    cpu: String,
    path_cpu: cpu::Spent,
}

async fn webhook_phase(
    env: &Env,
    args: &LockersArgs,
    tokens: &[String],
    waiting: &Waiting,
) -> Result<Webhook, Error> {
    let (endpoint, stop_sandbox, sandbox) = start_sandbox(&env.base).await?;
    post(
        env,
        "/lockers/authorizers",
        &env.operator,
        json!({"number": "0001", "name": "快递公司A", "endpoint": endpoint, "secret": SECRET}),
    )
    .await?;
    let held: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT compartment_id, holder FROM locker_compartments WHERE site = $1 ORDER BY number",
    )
    .bind(WEBHOOK_SITE)
    .fetch_all(&env.pool)
    .await?;
    let token_of: HashMap<String, String> = (0..args.holders)
        .map(|i| (user_number(i), tokens[i].clone()))
        .collect();
    let jobs: Arc<Vec<(String, String)>> = Arc::new(
        held.into_iter()
            .filter_map(|(id, holder)| Some((id, token_of.get(&holder?)?.clone())))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = cpu_split(&env.pid);
    let procs = env.processes();
    let (path_before, events_before) = (
        cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    let senders = (0..args.holders).map(|_| {
        let (jobs, next, waiting) = (jobs.clone(), next.clone(), waiting.clone());
        async move {
            let mut sent = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((compartment, token)) = jobs.get(n) else {
                    return sent;
                };
                let number = compartment
                    .split_once(':')
                    .map(|(_, n)| n)
                    .unwrap_or_default();
                let changed = expect(&waiting, compartment, COURIER);
                let t = Instant::now();
                let result = post(
                    env,
                    "/lockers/grants/via-authorizer",
                    token,
                    json!({"site": WEBHOOK_SITE, "compartment": number, "authorizer": "0001"}),
                )
                .await;
                sent.push((t, t.elapsed(), changed, result.err()));
            }
        }
    });
    let sent: Vec<_> = futures::future::join_all(senders)
        .await
        .into_iter()
        .flatten()
        .collect();
    let (mut accepted, mut changed) = (hist(), hist());
    let (mut errors, mut first_error) = (0, None);
    let mut last = started;
    // The answers were awaited in order, but each arrival time was stamped by the watcher.
    for (t, answered, rx, error) in sent {
        if let Some(e) = error {
            errors += 1;
            first_error.get_or_insert(e);
            continue;
        }
        accepted.saturating_record(answered.as_micros() as u64);
        match tokio::time::timeout_at((started + WEBHOOK_TIMEOUT).into(), rx).await {
            Ok(Ok(at)) => {
                changed.saturating_record(at.duration_since(t).as_micros() as u64);
                last = last.max(at);
            }
            _ => {
                errors += 1;
                first_error.get_or_insert_with(|| "holder not changed in time".to_owned());
            }
        }
    }
    let elapsed = last.duration_since(started);
    let cpu = cpu_share(&before, &cpu_split(&env.pid), elapsed);
    cpu::drained(&env.pool, Duration::from_secs(60)).await;
    let path_cpu = cpu::spent(
        &path_before,
        &cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await - events_before,
        &procs,
    );
    stop_sandbox.cancel();
    sandbox.await.ok();
    Ok(Webhook {
        accepted,
        changed,
        elapsed,
        errors,
        first_error,
        cpu,
        path_cpu,
    })
}

fn report_webhook(w: &Webhook, base: &Baselines, args: &LockersArgs, report: &mut Report) {
    let rate = w.changed.len() as f64 / w.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "grants via the authorizer sandbox, {} requested by {} clients: request -> signed \
             webhook -> sandbox callback -> holder changed",
            args.grants, args.holders
        ),
        value: format!(
            "{rate:.0} grants/s ({}; {} delivered, {} errors)",
            percentiles(&w.changed),
            w.changed.len(),
            w.errors
        ),
        baseline: format!(
            "sandbox alone receiving signed webhooks, {} clients: {:.0}/s ({})",
            args.holders,
            base.sandbox.per_sec,
            base.sandbox.latency()
        ),
        ratio: format!("{:.3}x", rate / base.sandbox.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which request -> 202".into(),
        value: percentiles(&w.accepted),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(cpu::row(
        "grants via the authorizer (the sandbox's own CPU not counted)",
        &w.path_cpu,
        &base.insert_cpu,
        "-",
    ));
    report.notes.push(format!(
        "webhook grants: CPU from first request to last holder change (100% = one core): {}",
        w.cpu
    ));
    if let Some(e) = &w.first_error {
        report.notes.push(format!("first webhook-grant error: {e}"));
    }
}
