//! `latch dev`: one command from a fresh machine to a running Latch with demo data.
//!
//! Uses the configured (or default-port) Postgres and NATS when they answer; otherwise starts
//! private ones from the binaries on the machine under the data folder, and says so. Then it
//! migrates, seeds devices and tokens, serves every role and runs the cabinet simulator.

use crate::app::{shutdown_signal, Application};
use crate::config::{Settings, DEFAULT_NATS_URL};
use crate::sim::{self, SimConfig};
use latch_api::auth::{issue_token, Role as TokenRole};
use latch_domain::device::{DeviceCommand, DeviceId, DeviceKind, Label, SiteCode};
use latch_domain::store::{self, CommandContext, Store};
use latch_nats::server::NatsServer;
use latch_workers::CancellationToken;
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

pub struct DevOptions {
    pub database_url: Option<String>,
    pub nats_url: Option<String>,
    pub http_addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub devices: usize,
}

const DEMO: &[(&str, &str, &str)] = &[
    ("vending", "SH-XH-001", "徐汇一号售货柜"),
    ("locker", "610091A01", "610091A01 快递柜"),
    ("vending", "SH-XH-001", "徐汇二号售货柜"),
    ("locker", "610091A02", "610091A02 快递柜"),
];

/// `on_ready` receives the banner (URLs, tokens, what to try) once everything is up.
pub async fn run(
    opts: DevOptions,
    on_ready: impl FnOnce(String),
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&opts.data_dir)?;
    let mut private_pg = None;
    let database_url = match opts.database_url {
        Some(url) => url,
        None => {
            let url = "postgres://postgres@127.0.0.1:5432/latch_dev".to_owned();
            if ensure_database(&url).await.is_ok() {
                tracing::info!("using the Postgres on 127.0.0.1:5432 (database latch_dev)");
                url
            } else {
                let pg = PrivatePostgres::start(&opts.data_dir.join("postgres"))?;
                let url = format!("postgres://postgres@127.0.0.1:{}/latch_dev", pg.port);
                ensure_database(&url).await?;
                tracing::info!(
                    port = pg.port,
                    "nothing answered on 5432: started a private Postgres under the data folder"
                );
                private_pg = Some(pg);
                url
            }
        }
    };
    let mut private_nats = None;
    let nats_url = match opts.nats_url {
        Some(url) => url,
        None if tokio::net::TcpStream::connect("127.0.0.1:4222")
            .await
            .is_ok() =>
        {
            tracing::info!("using the NATS server on 127.0.0.1:4222");
            DEFAULT_NATS_URL.to_owned()
        }
        None => {
            let server = NatsServer::start_in(&opts.data_dir.join("nats"), None).await?;
            let url = server.url();
            tracing::info!(%url, "nothing answered on 4222: started a private nats-server under the data folder");
            private_nats = Some(server);
            url
        }
    };

    let mut settings = Settings::new(database_url.clone(), nats_url.clone());
    settings.http_addr = opts.http_addr;
    settings.migrate = true;
    // Signed audit checkpoints with a development key kept beside the private servers.
    settings.audit.audit_signing_key_file = Some(opts.data_dir.join("audit-signing.key"));
    settings.audit.audit_checkpoint_secs = 60;
    let app = Application::build(settings).await?;
    let store = app.store();
    let devices = seed(&store, opts.devices).await?;
    let operator = issue_token(&store.pool, TokenRole::Operator, "dev-operator").await?;
    let user = issue_token(&store.pool, TokenRole::User, "dev-user").await?;
    let port = app.port();

    let shutdown = CancellationToken::new();
    let client = latch_nats::connect(&nats_url, "latch-sim").await?;
    let js = latch_nats::jetstream(client.clone());
    reset_foreign_events_stream(&js, &store).await?;
    // The cabinets' first messages need the TELEMETRY stream to exist.
    latch_nats::streams::ensure_streams(&js)
        .await
        .map_err(|e| e.to_string())?;
    let sim = tokio::spawn(sim::run(
        client,
        SimConfig {
            devices: devices.clone(),
            heartbeat: Duration::from_secs(5),
            hold_open: Duration::from_secs(3),
            faulty: vec![],
        },
        shutdown.clone(),
    ));

    let base = format!("http://127.0.0.1:{port}");
    let first = devices.first().map(Uuid::to_string).unwrap_or_default();
    on_ready(format!(
        "\nLatch dev is running.\n\
         \n  API           {base}\
         \n  health        {base}/healthz   readiness {base}/readyz\
         \n  API described {base}/openapi.json\
         \n  Postgres      {database_url}\
         \n  NATS          {nats_url}\
         \n\n  operator token  {operator}\
         \n  user token      {user}\
         \n\n  try:\
         \n    curl -H 'Authorization: Bearer {user}' {base}/devices\
         \n    curl -X POST -H 'Authorization: Bearer {operator}' {base}/devices/{first}/open\
         \n\n  QR login:\
         \n    on a PC          {base}/login\
         \n    the phone's side {base}/app/qr#code=<the QR content>  (asks once for the user token)\
         \n\n  {n} simulated cabinets are heartbeating; publish on/off to latch.sim.<id>.fault to break one.\
         \n  Ctrl-C stops everything.\n",
        n = devices.len()
    ));

    let stop = shutdown.clone();
    app.run_until_stopped(async move {
        shutdown_signal().await;
        stop.cancel();
    })
    .await?;
    shutdown.cancel();
    let _ = sim.await;
    drop(private_nats);
    drop(private_pg);
    Ok(())
}

/// A dev NATS server outlives dev databases: if its EVENTS stream is ahead of this database's
/// log, it holds another database's history and the relay would rightly refuse to publish.
/// In dev (only) that history is disposable, so the stream is recreated.
async fn reset_foreign_events_stream(
    js: &async_nats::jetstream::Context,
    store: &Store,
) -> Result<(), Box<dyn std::error::Error>> {
    let Ok(mut stream) = js.get_stream(latch_nats::subjects::EVENTS_STREAM).await else {
        return Ok(());
    };
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let head = latch_projections::log::head(&store.pool).await?;
    if last as i64 > head {
        tracing::warn!(
            stream = last,
            log = head,
            "the NATS server's EVENTS stream belongs to another database; recreating it for this dev database"
        );
        js.delete_stream(latch_nats::subjects::EVENTS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Creates the database if the server answers and it is missing.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let (server, name) = url.rsplit_once('/').expect("a database URL has a path");
    let mut conn = tokio::time::timeout(
        Duration::from_secs(3),
        PgConnection::connect(&format!("{server}/postgres")),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

/// Registers demo devices until there are `count`; returns all device ids.
async fn seed(store: &Store, count: usize) -> Result<Vec<Uuid>, Box<dyn std::error::Error>> {
    let existing: Vec<(String,)> = sqlx::query_as(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'device' AND sequence = 1 ORDER BY id",
    )
    .fetch_all(&store.pool)
    .await?;
    let mut ids: Vec<Uuid> = existing
        .iter()
        .filter_map(|(id,)| Uuid::parse_str(id).ok())
        .collect();
    while ids.len() < count {
        let (kind, site, label) = DEMO[ids.len() % DEMO.len()];
        let label = if ids.len() >= DEMO.len() {
            format!("{label} #{}", ids.len() + 1)
        } else {
            label.to_owned()
        };
        let device_id = DeviceId::generate();
        let command = DeviceCommand::Register {
            device_id,
            kind: DeviceKind::parse("kind", kind)?,
            site: SiteCode::parse("site", site)?,
            label: Label::parse("label", &label, 80)?,
            at: chrono::Utc::now(),
        };
        let ctx = CommandContext::new("system:dev-seed");
        store
            .devices
            .create(&device_id.to_string(), command.name(), command, &ctx)
            .await
            .map_err(|e| e.to_string())?;
        ids.push(device_id.as_uuid());
    }
    Ok(ids)
}

/// A Postgres cluster of our own, for machines where none is running.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres_user: bool,
}

impl PrivatePostgres {
    fn start(dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let bin = find_pg_bin().ok_or(
            "no Postgres answered and no initdb/pg_ctl was found (install postgresql or set DATABASE_URL)",
        )?;
        // initdb refuses to run as root; use the postgres system user when we are root.
        let as_postgres_user = is_root();
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        if as_postgres_user {
            exec(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
            )?;
        }
        let port = free_port()?;
        let pg = Self {
            dir,
            port,
            bin,
            as_postgres_user,
        };
        let data = pg.dir.join("data");
        if !data.join("PG_VERSION").exists() {
            exec(pg.command("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]))?;
        }
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            pg.dir.display()
        );
        exec(
            pg.command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.join("postgres.log"))
                .args(["-w", "-o", &options, "start"]),
        )?;
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "stop"])
            .output();
    }
}

fn exec(cmd: &mut Command) -> Result<(), Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr)).into())
    }
}

fn find_pg_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `latch migrate`: creates the database if the server has none by that name, then applies
/// every pending migration.
pub async fn migrate(database_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    ensure_database(database_url).await?;
    let pool = store::connect(database_url, 2, Duration::from_secs(5)).await?;
    store::MIGRATOR.run(&pool).await?;
    Ok(())
}
