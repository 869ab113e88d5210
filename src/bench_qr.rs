//! `latch bench qr`: what QR login pages cost the API, each figure beside a baseline measured
//! in the same run on the same machine.
//!
//! Like `latch bench pipeline` it makes its own database on the configured Postgres server and
//! starts its own nats-server, so it never touches real data. Phases:
//! 1. an in-process API (role `api`) mints one login per page session (`GET /qr/code`);
//! 2. `GET /qr/login` from N closed-loop page sessions (client i polls with session i's cookie),
//!    beside a bare axum GET handler returning a small JSON body at the same concurrency;
//! 3. a `latch serve --roles api` child process: its RSS idle, after minting M logins, and while
//!    M push channels (`GET /qr/ws`) are held open, each having received its first state.

use crate::bench::{
    closed_loop, hist, in_scratch_database, machine_note, mib, rss_kib, start_app, Rate, Report,
    Row,
};
use crate::bench_cpu::cpu_secs;
use crate::config::{Role, Settings};
use clap::Args;
use futures::{FutureExt, SinkExt, StreamExt};
use latch_api::qr::QrConfig;
use latch_nats::server::NatsServer;
use reqwest::header::{COOKIE, SET_COOKIE};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error>;
type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Mints in flight at once.
const MINT_PARALLEL: usize = 64;
/// Read buffer of each client push channel (frames here are ~100 bytes).
const CLIENT_READ_BUFFER: usize = 4096;
/// File descriptors a process needs besides the push connections (Postgres, NATS, listeners).
const FD_SPARE: u64 = 200;

#[derive(Debug, Clone, Args)]
pub struct QrArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Concurrent page sessions polling `/qr/login` (and clients of the bare handler).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Seconds each poll-throughput phase runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Seconds of the paced phase (each session polling at the pages' interval).
    #[arg(long, default_value_t = 10)]
    pub paced_seconds: u64,
    /// Push channels (`/qr/ws`) held open at once against a `latch serve` child.
    #[arg(long, default_value_t = 10_000)]
    pub push_connections: usize,
    /// Seconds the push channels are held open before the child's memory is read.
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u64,
    /// WebSocket handshakes in flight at once while opening the push channels.
    #[arg(long, default_value_t = 200)]
    pub connect_parallel: usize,
}

pub async fn run(args: QrArgs) -> Result<Report, Error> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_qr", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    report.notes.push(format!(
        "peak RSS of the bench process (clients + in-process server): {}",
        mib(rss_kib("self", "VmHWM:"))
    ));
    report.notes.push(machine_note());
    Ok(report)
}

async fn phases(args: &QrArgs, db_url: &str, report: &mut Report) -> Result<(), Error> {
    let nats = NatsServer::start().await?;
    tracing::info!(db = %db_url, nats = %nats.url(), "bench environment ready");

    // 1. An in-process API with the page's politeness limits lifted.
    let mut settings = Settings::new(db_url, nats.url());
    settings.http_addr = "127.0.0.1:0".parse()?;
    settings.roles = vec![Role::Api];
    settings.migrate = true;
    settings.qr.poll_interval = chrono::Duration::zero();
    settings.qr.mint_per_minute_per_ip = 1_000_000;
    settings.qr.code_ttl = chrono::Duration::minutes(10);
    let (port, stop_app, app_task) = start_app(settings).await?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let (sessions, took) = mint_many(&http, &base, args.concurrency).await?;
    report.notes.push(format!(
        "minting the {} page sessions of the poll phase (GET /qr/code, {MINT_PARALLEL} at a time, \
         one Postgres event each) took {:.2} s ({:.0}/s)",
        sessions.len(),
        took.as_secs_f64(),
        sessions.len() as f64 / took.as_secs_f64()
    ));

    // 2. Polls, beside a bare handler. Each phase first runs 1 s unmeasured, so both measure
    // requests on open keep-alive connections rather than 1,000 TCP connects.
    let (bare, bare_paced) = bare_get_phase(&http, &sessions, args).await?;
    let url = format!("{base}/qr/login");
    let (polls, paced) = poll_phases(&http, &url, &sessions, args).await;
    tracing::info!(
        bare = bare.per_sec,
        polls = polls.per_sec,
        "poll throughput measured"
    );
    stop_app.cancel();
    app_task.await??;
    drop(http);
    report.rows.push(Row {
        what: format!(
            "poll GET /qr/login, {} page sessions (closed loop)",
            args.concurrency
        ),
        value: format!(
            "{:.0}/s ({}; {} errors)",
            polls.per_sec,
            polls.latency(),
            polls.errors
        ),
        baseline: format!(
            "bare axum GET handler (small JSON): {:.0}/s ({}; {} errors)",
            bare.per_sec,
            bare.latency(),
            bare.errors
        ),
        ratio: format!("{:.2}x", polls.per_sec / bare.per_sec),
        target: ">= 0.5x and p99 < 5 ms".into(),
    });
    let interval = page_interval();
    report.rows.push(Row {
        what: format!(
            "poll GET /qr/login, {} page sessions each polling every {} s ({:.0}/s offered)",
            args.concurrency,
            interval.as_secs_f64(),
            args.concurrency as f64 / interval.as_secs_f64()
        ),
        value: format!(
            "{:.0}/s ({}; {} errors)",
            paced.per_sec,
            paced.latency(),
            paced.errors
        ),
        baseline: format!(
            "bare axum GET handler, same pace: {:.0}/s ({}; {} errors)",
            bare_paced.per_sec,
            bare_paced.latency(),
            bare_paced.errors
        ),
        ratio: "-".into(),
        target: "p99 < 5 ms".into(),
    });
    report.notes.push(format!(
        "poll phase: the API ran in this process with role api only, the page poll interval \
         (settings.qr.poll_interval, 2 s by default, answered 429 if a page polls faster) set to \
         zero and the per-IP mint limit raised to 1,000,000/min: the interval is a politeness \
         limit per page, not a capacity limit, and the closed loop polls each session back to \
         back. {} clients, each on its own keep-alive connection, each with its own session \
         cookie; each closed-loop phase {} s after a 1 s unmeasured warm-up; clients and server \
         share the machine's cores. A non-200 answer counts as an error. In a closed loop the \
         mean latency is clients / throughput (Little's law), so at {} clients it measures \
         capacity, not the latency a page sees; the paced row ({} s, open loop: each session \
         sends on its schedule whatever the answers' speed) is the latency at the load {} \
         real pages offer.",
        args.concurrency, args.seconds, args.concurrency, args.paced_seconds, args.concurrency
    ));

    // 3. Push channels against a real `latch serve` process.
    push_phase(args, db_url, &nats.url(), report).await?;
    Ok(())
}

/// One `GET /qr/code`: the `latch_qr=...` cookie pair to send back.
async fn mint_one(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match http.get(url).send().await {
            Ok(r) if r.status() == 200 => {
                let cookie = r
                    .headers()
                    .get_all(SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| v.split(';').next())
                    .find(|pair| pair.starts_with("latch_qr="))
                    .map(str::to_owned);
                let _ = r.bytes().await;
                return cookie.ok_or_else(|| "GET /qr/code set no latch_qr cookie".to_owned());
            }
            Ok(r) => last = format!("GET /qr/code answered {}", r.status()),
            Err(e) => last = format!("GET /qr/code failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Mints `n` logins, [`MINT_PARALLEL`] at a time; their cookies and how long it took.
async fn mint_many(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> Result<(Vec<String>, Duration), Error> {
    let url = format!("{base}/qr/code");
    let started = Instant::now();
    let results: Vec<Result<String, String>> = futures::stream::iter(0..n)
        .map(|_| mint_one(http, &url))
        .buffer_unordered(MINT_PARALLEL)
        .collect()
        .await;
    let took = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(format!("{failed} of {n} mints failed; first: {e}").into());
    }
    Ok((results.into_iter().flatten().collect(), took))
}

/// `clients` closed loops, client i polling `url` with session i's cookie.
async fn poll_phase(
    http: &reqwest::Client,
    url: &str,
    sessions: &[String],
    clients: usize,
    secs: u64,
) -> Rate {
    let sessions: std::sync::Arc<[String]> = sessions.into();
    let (http, url) = (http.clone(), url.to_owned());
    closed_loop(clients, secs, move |i| {
        let cookie = sessions[(i / 1_000_000) % sessions.len()].clone();
        let (http, url) = (http.clone(), url.clone());
        async move {
            match http.get(&url).header(COOKIE, cookie).send().await {
                Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// The same polls against an axum GET handler that returns a fixed, poll-sized JSON body.
async fn bare_get_phase(
    http: &reqwest::Client,
    sessions: &[String],
    args: &QrArgs,
) -> Result<(Rate, Rate), Error> {
    let app = axum::Router::new().route(
        "/qr/login",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({
                "statusflag": 0,
                "state": "waiting",
                "expiresAt": "2026-11-21T08:02:00Z",
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/qr/login", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let rates = poll_phases(http, &url, sessions, args).await;
    server.abort();
    Ok(rates)
}

/// Polls of `url`: a 1 s unmeasured warm-up (so what follows runs on open keep-alive
/// connections), the closed loop, then every session polling at the pages' pace.
async fn poll_phases(
    http: &reqwest::Client,
    url: &str,
    sessions: &[String],
    args: &QrArgs,
) -> (Rate, Rate) {
    let _ = poll_phase(http, url, sessions, args.concurrency, 1).await;
    let closed = poll_phase(http, url, sessions, args.concurrency, args.seconds).await;
    let paced = paced_phase(http, url, sessions, page_interval(), args.paced_seconds).await;
    (closed, paced)
}

/// How often a login page polls: the shortest interval the API allows by default.
fn page_interval() -> Duration {
    QrConfig::default()
        .poll_interval
        .to_std()
        .unwrap_or(Duration::from_secs(2))
}

/// Every session polls `url` once per `interval`, the sessions' turns spread evenly over the
/// interval (an open loop: a slow answer does not slow the offered load); for `secs`, the first
/// interval unmeasured.
async fn paced_phase(
    http: &reqwest::Client,
    url: &str,
    sessions: &[String],
    interval: Duration,
    secs: u64,
) -> Rate {
    let started = tokio::time::Instant::now();
    let stop_at = started + Duration::from_secs(secs);
    let n = sessions.len().max(1) as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, cookie) in sessions.iter().enumerate() {
        let (http, url, cookie) = (http.clone(), url.to_owned(), cookie.clone());
        let first = started + interval * c as u32 / n;
        tasks.spawn(async move {
            let mut h = hist();
            let mut errors = 0;
            let mut ticker = tokio::time::interval_at(first, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let tick = ticker.tick().await;
                if tick >= stop_at {
                    break;
                }
                let sent = tokio::time::Instant::now();
                let ok = match http.get(&url).header(COOKIE, &cookie).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                // The first round re-opens each session's connection; pages keep theirs open.
                if tick < started + interval {
                    continue;
                }
                if ok {
                    h.saturating_record(sent.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (h, errors)
        });
    }
    let mut total = hist();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        if let Ok((h, e)) = done {
            total.add(&h).expect("same bounds");
            errors += e;
        }
    }
    Rate {
        per_sec: total.len() as f64 / (secs as f64 - interval.as_secs_f64()).max(1.0),
        hist: total,
        errors,
    }
}

/// The soft and hard open-file limits of a process, from /proc.
fn nofile(pid: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    let parse = |w: Option<&str>| match w? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(words.next())?, parse(words.next())?))
}

/// Raises this process's soft open-file limit to the hard one (with util-linux `prlimit`, as
/// libc is no dependency of the binary); returns the soft limit in force afterwards.
fn raise_nofile() -> Option<u64> {
    let (soft, hard) = nofile("self")?;
    if soft < hard {
        let _ = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    nofile("self").map(|(soft, _)| soft)
}

/// The kernel's count of connections dropped because a listen queue was full.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Opens one push channel and reads its first frame, which must be a waiting login.
async fn connect_one(url: &str, cookie: &str) -> Result<WsStream, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let cookie = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(cookie)
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert("cookie", cookie);
    // A page-sized read buffer: tungstenite's default (128 KiB, zero-filled on the first read)
    // would make this process, not the server, the machine's memory hog.
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .map_err(|_| "no first frame in 30 s".to_owned())?;
    match first {
        Some(Ok(Message::Text(text))) => {
            let body: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("first frame: {e}"))?;
            if body["statusflag"] == 0 {
                Ok(ws)
            } else {
                Err(format!("first frame is not a waiting login: {text}"))
            }
        }
        other => Err(format!("first frame: {other:?}")),
    }
}

async fn push_phase(
    args: &QrArgs,
    db_url: &str,
    nats_url: &str,
    report: &mut Report,
) -> Result<(), Error> {
    // File descriptors: this process holds one client socket per channel, the child one server
    // socket per channel; both need the soft limit raised (the child inherits ours, and its
    // shell raises it again).
    let soft = raise_nofile().unwrap_or(1024);
    let mut count = args.push_connections;
    if (count as u64).saturating_add(FD_SPARE) > soft {
        count = soft.saturating_sub(FD_SPARE) as usize;
        report.notes.push(format!(
            "push phase: the open-file limit here is {soft}, so {count} push connections were \
             held instead of the {} asked for",
            args.push_connections
        ));
    }

    let port = crate::bench::free_port()?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
        .arg(&exe)
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("LATCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LATCH_ROLES", "api")
        .env("LATCH_QR_MINT_PER_MINUTE", "1000000")
        .env("LATCH_QR_MINT_PER_MINUTE_GLOBAL", "1000000")
        .env("LATCH_HTTP_MAX_CONNECTIONS", "1000000")
        .env("LATCH_QR_TTL_SECS", "3600")
        .env("LATCH_MIGRATE", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let result = hold_channels(&mut child, &pid, port, count, args, report).await;
    crate::bench::stop_serve(&mut child, &pid, "push phase: ", report).await?;
    result
}

async fn hold_channels(
    child: &mut tokio::process::Child,
    pid: &str,
    port: u16,
    count: usize,
    args: &QrArgs,
    report: &mut Report,
) -> Result<(), Error> {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MINT_PARALLEL)
        .build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("latch serve exited at start: {status}").into());
        }
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("latch serve did not answer /healthz in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let child_limit = nofile(pid).map(|(soft, _)| soft);
    let idle = rss_kib(pid, "VmRSS:");

    let (sessions, took) = mint_many(&http, &base, count).await?;
    drop(http);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let minted = rss_kib(pid, "VmRSS:");

    // Open them all, `connect_parallel` handshakes at a time; each waits for its first frame.
    let own_before = rss_kib("self", "VmRSS:");
    let overflows_before = listen_overflows();
    let url = format!("ws://127.0.0.1:{port}/qr/ws");
    let started = Instant::now();
    let results: Vec<(Result<WsStream, String>, Duration)> = futures::stream::iter(&sessions)
        .map(|cookie| {
            let url = &url;
            async move {
                let t = Instant::now();
                (connect_one(url, cookie).await, t.elapsed())
            }
        })
        .buffer_unordered(args.connect_parallel.max(1))
        .collect()
        .await;
    let connect_took = started.elapsed();
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(after, before)| after.saturating_sub(before));
    let mut latency = hist();
    let mut held = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for (result, took) in results {
        match result {
            Ok(ws) => {
                latency.saturating_record(took.as_micros() as u64);
                held.push(ws);
            }
            Err(e) => failures.push(e),
        }
    }
    if let Some(first) = failures.first() {
        tracing::warn!(failed = failures.len(), first = %first, "some push channels did not open");
    }

    // Hold them, then read the child's memory and what holding cost it in CPU.
    let cpu_before = cpu_secs(pid);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    let cpu_held = cpu_secs(pid)
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / hold_started.elapsed().as_secs_f64());
    let held_rss = rss_kib(pid, "VmRSS:");
    let own_held = rss_kib("self", "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    // A channel that has received anything since its first frame (a close, an error) is no
    // longer held as a waiting page.
    let still_open = held
        .iter_mut()
        .filter_map(|ws| ws.next().now_or_never().is_none().then_some(()))
        .count();

    let n = held.len();
    report.rows.push(Row {
        what: format!(
            "open {count} push channels (GET /qr/ws handshake + first frame), \
             {} at a time",
            args.connect_parallel
        ),
        value: format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms; {} failed)",
            n as f64 / connect_took.as_secs_f64(),
            latency.value_at_quantile(0.5) as f64 / 1000.0,
            latency.value_at_quantile(0.99) as f64 / 1000.0,
            failures.len()
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    let per_connection = held_rss
        .zip(minted)
        .filter(|_| n > 0)
        .map(|(h, m)| format!("{:.1} KiB", h.saturating_sub(m) as f64 / n as f64));
    report.rows.push(Row {
        what: format!("{n} open push connections: latch serve RSS"),
        value: format!(
            "{} (idle {}, after minting {} {}; {} per connection)",
            mib(held_rss),
            mib(idle),
            sessions.len(),
            mib(minted),
            per_connection.unwrap_or_else(|| "n/a".into())
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "< 500 MB".into(),
    });
    report.notes.push(format!(
        "push phase: a `latch serve` child (roles api; LATCH_QR_TTL_SECS=3600 so no code expires \
         while held; open-file limit {}) on port {port}; minting its {} logins took {:.1} s \
         ({:.0}/s, {MINT_PARALLEL} at a time); the channels were held {} s, {still_open} of {n} \
         still open at the end (each had its first frame, statusflag 0); RSS peak (VmHWM) {}; \
         per connection = (RSS held - RSS after minting) / connections; CPU of the child while \
         holding: {}",
        child_limit.map_or("n/a".into(), |l| l.to_string()),
        sessions.len(),
        took.as_secs_f64(),
        sessions.len() as f64 / took.as_secs_f64(),
        args.hold_seconds,
        mib(peak),
        cpu_held.map_or("n/a".into(), |c| format!("{:.1}% of one core", c * 100.0))
    ));
    if let Some(overflows) = overflows.filter(|o| *o > 0) {
        report.notes.push(format!(
            "while the push channels opened, the kernel counted {overflows} listen-queue \
             overflows (TcpExtListenOverflows, whole network namespace): a connection whose \
             handshake found the accept queue full waits for a SYN retransmit (1 s), which is \
             what the slow tail of the handshakes is"
        ));
    }
    if let (Some(before), Some(after), true) = (own_before, own_held, n > 0) {
        report.notes.push(format!(
            "for comparison, this process (the clients, read buffer {} KiB each) grew {:.1} KiB \
             per open channel",
            CLIENT_READ_BUFFER / 1024,
            after.saturating_sub(before) as f64 / n as f64
        ));
    }
    if let Some(first) = failures.first() {
        report.notes.push(format!(
            "push phase: {} channels failed to open; first error: {first}",
            failures.len()
        ));
    }

    // Close them all (a close frame each), then see what the child gives back.
    let closing = futures::stream::iter(held).for_each_concurrent(500, |mut ws| async move {
        let _ = ws.close(None).await;
        let _ = ws.flush().await;
    });
    if tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .is_err()
    {
        report
            .notes
            .push("push phase: closing the channels took over 30 s".into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.notes.push(format!(
        "latch serve RSS 2 s after all push channels closed: {}",
        mib(rss_kib(pid, "VmRSS:"))
    ));
    Ok(())
}
