//! The `latch` command. Parses arguments and hands over to the library; nothing else.

use clap::{Parser, Subcommand};
use latch::config::{Connections, ServeArgs, Settings, DEFAULT_HTTP_ADDR};
use latch::{app, bench, dev, sim, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "latch",
    version,
    about = "Event-sourced back end for self-service cabinets"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the database if needed and apply migrations.
    Migrate {
        #[command(flatten)]
        connections: Connections,
    },
    /// Run the API and workers (all roles, or those given with --roles).
    Serve(Box<ServeArgs>),
    /// Simulated cabinets over NATS: heartbeats, door events, obeying open commands.
    Sim {
        #[command(flatten)]
        connections: Connections,
        /// Device ids to simulate (comma-separated); default: every registered device.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<Uuid>,
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 5)]
        heartbeat_secs: u64,
        /// Seconds a door stays open after an open command.
        #[arg(long, default_value_t = 3)]
        hold_open_secs: u64,
        /// Devices that start with a fault (refusing to open until cleared).
        #[arg(long, value_delimiter = ',')]
        fault: Vec<Uuid>,
        /// What every shopper takes unless a script is armed on latch.sim.<id>.shopper:
        /// SHELF:COUNT[:SKU],... (default: nothing).
        #[arg(long)]
        take: Option<String>,
        /// Units of each product a cabinet holds at start and after a restock.
        #[arg(long, default_value_t = 10)]
        units: u32,
        /// Where each simulated locker keeps its holder table (<dir>/<device-id>.holders.json)
        /// across restarts; default: in memory only.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Migrate, seed demo data, serve everything and run the simulator.
    Dev {
        /// Postgres URL; default: 127.0.0.1:5432 if it answers, else a private server.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// NATS URL; default: 127.0.0.1:4222 if it answers, else a private server.
        #[arg(long, env = "NATS_URL")]
        nats_url: Option<String>,
        #[arg(long, env = "LATCH_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
        http_addr: std::net::SocketAddr,
        /// Where private servers keep their data.
        #[arg(long, env = "LATCH_DEV_DIR", default_value = ".latch-dev")]
        data_dir: PathBuf,
        /// How many demo cabinets to register and simulate.
        #[arg(long, default_value_t = 4)]
        devices: usize,
    },
    /// Issue an API bearer token (shown once, with its id and expiry), or revoke one.
    Token(latch::config::TokenArgs),
    /// Print a nats-server authorization block confining each device to its own subjects.
    NatsConfig {
        #[arg(long, env = "LATCH_NATS_SERVICE_USER", default_value = "latch")]
        service_user: String,
        #[arg(long, env = "LATCH_NATS_SERVICE_PASSWORD")]
        service_password: String,
        /// DEVICE_ID:PASSWORD pairs.
        #[arg(long, value_delimiter = ',')]
        device: Vec<String>,
    },
    /// A test-mode Kazaya (member login + payments) speaking the real protocol over HTTP.
    KazayaSandbox(latch::kazaya_sandbox::SandboxArgs),
    /// A test-mode courier company (third-party authorizer): duty roster, grant requests in,
    /// signed callbacks out.
    AuthorizerSandbox(latch::authorizer_sandbox::AuthorizerSandboxArgs),
    /// Audit: replay the log, verify its hash chain, signed checkpoints.
    Audit {
        #[command(subcommand)]
        cmd: latch::audit_cli::AuditCmd,
    },
    /// Read models: rebuild one from the log and swap it in.
    Projections {
        #[command(subcommand)]
        cmd: latch::audit_cli::ProjectionsCmd,
    },
    /// The relay: repair the EVENTS stream from the log when it has diverged.
    Relay {
        #[command(subcommand)]
        cmd: latch::audit_cli::RelayCmd,
    },
    /// Measure throughput and latency against baselines taken in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "latch failed");
            eprintln!("latch: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Cmd::Migrate { connections } => {
            dev::migrate(&connections.database_url).await?;
            tracing::info!("migrations applied");
        }
        Cmd::Serve(args) => {
            let settings = Settings::from(*args);
            let app = app::Application::build(settings).await?;
            app.run_until_stopped(app::shutdown_signal()).await?;
        }
        Cmd::Sim {
            connections,
            devices,
            heartbeat_secs,
            hold_open_secs,
            fault,
            take,
            units,
            state_dir,
        } => {
            let take = sim::parse_take(take.as_deref().unwrap_or(""))?;
            let pool =
                latch_domain::store::connect(&connections.database_url, 2, Duration::from_secs(5))
                    .await?;
            let devices = if devices.is_empty() {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT aggregate_id FROM events WHERE aggregate_type = 'device' AND sequence = 1",
                )
                .fetch_all(&pool)
                .await?;
                rows.iter()
                    .filter_map(|(id,)| Uuid::parse_str(id).ok())
                    .collect()
            } else {
                devices
            };
            let client = latch_nats::connect(&connections.nats_url, "latch-sim").await?;
            let shutdown = latch_workers::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                app::shutdown_signal().await;
                stop.cancel();
            });
            let config = sim::SimConfig {
                devices,
                heartbeat: Duration::from_secs(heartbeat_secs),
                hold_open: Duration::from_secs(hold_open_secs),
                faulty: fault,
                store: Some(std::sync::Arc::new(latch_domain::store::Store::new(pool))),
                units_per_slot: units,
                shopper: sim::ShopperScript::taking(take),
                logins: None,
                state_dir,
            };
            sim::run(client, config, shutdown).await;
        }
        Cmd::Dev {
            database_url,
            nats_url,
            http_addr,
            data_dir,
            devices,
        } => {
            let options = dev::DevOptions {
                database_url,
                nats_url,
                http_addr,
                data_dir,
                devices,
            };
            dev::run(options, |banner| print_banner(&banner)).await?;
        }
        Cmd::Token(args) => token(args).await?,
        Cmd::NatsConfig {
            service_user,
            service_password,
            device,
        } => {
            let devices = device
                .iter()
                .map(|pair| {
                    let (id, password) = pair
                        .split_once(':')
                        .ok_or_else(|| format!("--device {pair:?}: expected DEVICE_ID:PASSWORD"))?;
                    Uuid::parse_str(id).map_err(|_| format!("--device {pair:?}: not a UUID"))?;
                    Ok(latch_nats::auth::DeviceCredentials {
                        device_id: id.to_owned(),
                        password: password.to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            print!(
                "{}",
                latch_nats::auth::authorization_config(&service_user, &service_password, &devices)
            );
        }
        Cmd::KazayaSandbox(args) => {
            latch::kazaya_sandbox::serve(args, app::shutdown_signal()).await?;
        }
        Cmd::AuthorizerSandbox(args) => {
            latch::authorizer_sandbox::serve(args, app::shutdown_signal()).await?;
        }
        Cmd::Audit { cmd } => latch::audit_cli::audit(cmd).await?,
        Cmd::Projections { cmd } => latch::audit_cli::projections(cmd).await?,
        Cmd::Relay { cmd } => latch::audit_cli::relay(cmd).await?,
        Cmd::Bench { which } => {
            let report = bench::run(which).await?;
            println!("{report}");
        }
    }
    Ok(())
}

/// `latch token`: issues a token (printed on stdout, its id and expiry on stderr), or revokes
/// one by id.
async fn token(args: latch::config::TokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    use latch::config::TokenCmd;
    let connect = |url: String| async move {
        latch_domain::store::connect(&url, 2, Duration::from_secs(5)).await
    };
    if let Some(TokenCmd::Revoke { connections, id }) = args.cmd {
        let pool = connect(connections.database_url).await?;
        // `TokenRevoked` (reason revoked), then the credential: refused from the next request.
        latch_api::tokens::revoke_by_id(&pool, id, "operator:latch-token").await?;
        eprintln!("token {id} revoked");
        return Ok(());
    }
    let role = args.role.as_deref().and_then(latch_api::auth::Role::parse);
    let role = role.ok_or("--role must be operator, user, auditor, device or kiosk")?;
    let subject = args.subject.ok_or("--subject is required")?;
    if role == latch_api::auth::Role::Kiosk {
        // A kiosk serves one site: its subject names it, and collection checks it.
        let site = subject
            .strip_prefix(latch_api::lockers::KIOSK_PREFIX)
            .ok_or("a kiosk token's --subject is kiosk:<site>")?;
        latch_domain::device::SiteCode::parse("subject", site)
            .map_err(|_| "a kiosk token's --subject is kiosk:<site>, <site> a site code")?;
    }
    let pool = connect(args.connections.database_url).await?;
    // Recorded as `TokenIssued` (via provisioned); the token is shown once, here.
    let issued = latch_api::tokens::provision(
        &pool,
        role,
        &subject,
        "operator:latch-token",
        Some(Duration::from_secs(args.ttl)),
        chrono::Utc::now(),
    )
    .await?;
    let expires = issued
        .expires_at
        .map(|e| e.to_rfc3339())
        .unwrap_or_default();
    eprintln!("token id {} expires {expires}", issued.token_id);
    println!("{}", issued.token);
    Ok(())
}

/// Prints `latch dev`'s banner in one write. Whoever started it may stop reading once they have
/// it (a test does); a closed stdout must not take the running demo down, as `println!` would by
/// panicking on the broken pipe.
fn print_banner(banner: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(format!("{banner}\n").as_bytes())
        .and_then(|()| out.flush());
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not print the banner; carrying on");
    }
}
