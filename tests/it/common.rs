//! Test harness: a fresh database and a private nats-server per test, the real application on a
//! random port, and bounded waits.

use chrono::{TimeZone, Utc};
use latch::config::Settings;
use latch::Application;
use latch_api::auth::{issue_token, Role};
use latch_domain::clock::ManualClock;
use latch_nats::server::NatsServer;
use latch_workers::CancellationToken;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;
use uuid::Uuid;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            latch::telemetry::init();
        }
    });
}

/// A database of its own, migrated, dropped when the guard goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        init_logging();
        let name = format!("latch_t_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(ADMIN_URL)
            .await
            .expect("Postgres on 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = PgPool::connect(&url).await.expect("connect");
        latch_domain::store::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        pool.close().await;
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&self.url)
            .await
            .expect("connect test pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    pub operator: String,
    pub user: String,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub shutdown: CancellationToken,
    pub app_task: Option<tokio::task::JoinHandle<()>>,
    // Dropped last: the app must stop before its servers go away.
    pub nats_server: NatsServer,
    #[allow(dead_code)] // held for its Drop: the database lives as long as the app
    pub db: TestDb,
}

pub fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 8, 0, 0).unwrap()
}

/// Settings for a test: random port, manual clock, fast sweeps.
pub fn test_settings(db: &TestDb, nats: &NatsServer, clock: &ManualClock) -> Settings {
    let mut s = Settings::new(db.url.clone(), nats.url());
    s.http_addr = "127.0.0.1:0".parse().unwrap();
    s.clock = Arc::new(clock.clone());
    s.sweep_interval = Duration::from_millis(50);
    s.heartbeat_timeout = Duration::from_secs(30);
    s.open_timeout = Duration::from_secs(10);
    s.db_max_connections = 10;
    s.db_acquire_timeout = Duration::from_millis(1500);
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let nats_server = NatsServer::start().await.expect("nats-server on PATH");
    spawn_app_on(nats_server, adjust).await
}

/// As [`spawn_app_with`], on a given nats-server (`adjust` may point `nats_url` at several).
pub async fn spawn_app_on(nats_server: NatsServer, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new().await;
    let clock = ManualClock::new(start_time());
    let mut settings = test_settings(&db, &nats_server, &clock);
    adjust(&mut settings);
    let nats = latch_nats::connect(&settings.nats_url, "test")
        .await
        .unwrap();
    let js = latch_nats::jetstream(nats.clone());
    latch_nats::streams::ensure_streams_replicated(
        &js,
        settings.telemetry_limits,
        settings.deadletter_limits,
        settings.stream_replicas,
    )
    .await
    .unwrap();
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let app_task = tokio::spawn(async move {
        app.run_until_stopped(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    let pool = db.pool().await;
    let operator = issue_token(&pool, Role::Operator, "test-operator")
        .await
        .unwrap();
    let user = issue_token(&pool, Role::User, "test-user").await.unwrap();
    TestApp {
        address,
        pool,
        clock,
        http: reqwest::Client::new(),
        operator,
        user,
        nats,
        js,
        shutdown,
        app_task: Some(app_task),
        nats_server,
        db,
    }
}

impl TestApp {
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.app_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.address))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn register_device(&self, kind: &str, site: &str, label: &str) -> Uuid {
        let res = self
            .post(
                "/devices",
                &self.operator,
                Some(serde_json::json!({"kind": kind, "site": site, "label": label})),
            )
            .await;
        assert_eq!(res.status(), 201, "register: {:?}", res.text().await);
        let body: Value = res.json().await.unwrap();
        Uuid::parse_str(body["device_id"].as_str().unwrap()).unwrap()
    }

    pub async fn device(&self, id: Uuid) -> Option<Value> {
        let res = self.get(&format!("/devices/{id}"), &self.user).await;
        if res.status() == 404 {
            return None;
        }
        assert_eq!(res.status(), 200);
        Some(res.json().await.unwrap())
    }

    pub async fn event_count(&self) -> i64 {
        count(&self.pool, "SELECT count(*) FROM events").await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A port free now (the OS picks it; the listener closes at once).
/// A loopback port that was free a moment ago, for a server whose address must be known before
/// it binds (its public URL goes into its settings). Taken below the kernel's ephemeral range
/// (32768 and up): a port asked of the kernel there could be handed out again at once to another
/// test's port-0 bind or outgoing connection before the server binds it. Each call in this
/// process takes the next port, so two tests never pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

/// Polls `check` until it yields `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = tokio::time::timeout(limit, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match result {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Every message on a stream, in order, read directly by sequence.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// Sends SIGTERM and waits up to `limit` for the process to exit; kills it and returns None if
/// it does not.
pub async fn sigterm_and_wait(
    mut child: std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}
