//! `latch dev`: one command from a fresh machine to a running Latch with demo data.
//!
//! Uses the configured (or default-port) Postgres and NATS when they answer; otherwise starts
//! private ones from the binaries on the machine under the data folder, and says so. Then it
//! migrates, seeds devices, planograms and tokens, starts the Kazaya sandbox and the courier
//! company's authorizer sandbox, seeds the parcel-locker demo (site, compartments, users,
//! authorizers), serves every role and runs the cabinet simulator.
//!
//! Every seed step looks before it writes, so `latch dev` restarted on the same data folder
//! (and database) appends nothing it appended before; only the authorizer sandbox's address,
//! which is new on every start, is re-registered when it moved.

use crate::app::{shutdown_signal, Application};
use crate::authorizer_sandbox::{parse_couriers, AuthorizerSandbox, AuthorizerSandboxSettings};
use crate::config::Settings;
use crate::kazaya_sandbox::{ClientRegistration, KazayaSandbox, SandboxSettings};
use crate::sim::{self, SimConfig};
use latch_api::auth::Role as TokenRole;
use latch_api::kazaya::KazayaConfig;
use latch_api::tokens::provision;
use latch_api::vending::{sticker, VendingConfig};
use latch_domain::device::{DeviceCommand, DeviceId, DeviceKind, Label, SiteCode};
use latch_domain::store::{self, CommandContext, Store};
use latch_domain::vending::{OperatorId, Planogram, PlanogramCommand, RawSlot};
use latch_workers::CancellationToken;
use sqlx::{Connection, PgConnection, PgPool};
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
    // NATS with authorization on: dev's own server unless the configured one already has it.
    let nats = crate::dev_nats::prepare(opts.nats_url, &opts.data_dir).await?;
    let nats_url = nats.service_url.clone();

    // Kazaya, as its sandbox: shoppers log in / register and pay there.
    let public_url = format!("http://{}", opts.http_addr);
    let redirect = format!("{public_url}/m/auth/callback");
    let mut kazaya_settings = SandboxSettings::new("127.0.0.1:0".parse().expect("an address"));
    kazaya_settings.clients = vec![ClientRegistration {
        client_id: DEV_KAZAYA_CLIENT.into(),
        client_secret: DEV_KAZAYA_SECRET.into(),
        name: "Latch (dev)".into(),
        redirect_uris: vec![redirect.clone()],
    }];
    let sandbox = KazayaSandbox::build(kazaya_settings).await?;
    let kazaya_url = sandbox.base_url().to_owned();

    let mut settings = Settings::new(database_url.clone(), nats_url.clone());
    settings.http_addr = opts.http_addr;
    settings.migrate = true;
    if let Some(auth) = &nats.auth {
        settings.nats_auth = auth.clone();
    }
    // Signed audit checkpoints with a development key kept beside the private servers.
    settings.audit.audit_signing_key_file = Some(opts.data_dir.join("audit-signing.key"));
    settings.audit.audit_checkpoint_secs = 60;
    settings.vending.public_url = public_url.clone();
    settings.kazaya = Some(KazayaConfig::new(
        kazaya_url.clone(),
        DEV_KAZAYA_CLIENT,
        DEV_KAZAYA_SECRET,
        redirect,
        sandbox.webhook_secret(),
    ));
    let vending = settings.vending.clone();
    let app = Application::build(settings).await?;
    if nats.auth.is_some() {
        // The identities already in the database, now that it is migrated: through the app's
        // renderer (configured with `nats.auth` above), never overlapping the API's renders.
        app.nats_auth().render(app.pool()).await?;
    }
    // Courier company A (authorizer 0001), as its sandbox: Wang is on duty. It calls back the
    // port Latch actually bound.
    let mut courier_settings = AuthorizerSandboxSettings::new(
        "127.0.0.1:0".parse().expect("an address"),
        "0001",
        DEV_AUTHORIZER_SECRET,
        &format!("http://127.0.0.1:{}", app.port()),
    );
    courier_settings.roster = parse_couriers(&["13466666666=王".into()])?;
    let courier = AuthorizerSandbox::build(courier_settings).await?;
    let courier_endpoint = courier.endpoint();
    let courier_url = courier.base_url().to_owned();
    let store = app.store();
    let devices = seed(&store, app.pool(), opts.devices).await?;
    let stickers = seed_planograms(&store, &devices, &vending).await?;
    let door = locker_door(&store, &devices).await?;
    seed_lockers(&store, &courier_endpoint, door).await?;
    let courier_stop = CancellationToken::new();
    let courier_until = courier_stop.clone();
    let courier_task = tokio::spawn(async move {
        if let Err(e) = courier
            .run_until_stopped(async move { courier_until.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "authorizer sandbox stopped");
        }
    });
    let kazaya_stop = CancellationToken::new();
    let kazaya_until = kazaya_stop.clone();
    let kazaya_task = tokio::spawn(async move {
        if let Err(e) = sandbox
            .run_until_stopped(async move { kazaya_until.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "kazaya sandbox stopped");
        }
    });
    let operator = provision(
        app.pool(),
        TokenRole::Operator,
        "dev-operator",
        "system:dev",
        Some(Duration::from_secs(
            latch_api::tokens::DEFAULT_TOKEN_TTL_SECS,
        )),
        chrono::Utc::now(),
    )
    .await?
    .token;
    let user = provision(
        app.pool(),
        TokenRole::User,
        "dev-user",
        "system:dev",
        Some(Duration::from_secs(
            latch_api::tokens::DEFAULT_TOKEN_TTL_SECS,
        )),
        chrono::Utc::now(),
    )
    .await?
    .token;
    let port = app.port();

    let shutdown = CancellationToken::new();
    // Each simulated cabinet logs in as itself (a new nkey every start: a seed is shown only once).
    let logins = match &nats.auth {
        Some(_) => {
            Some(sim::issue_logins(app.pool(), &app.nats_auth(), &nats.url, &devices).await?)
        }
        None => {
            tracing::warn!("dev does not run this NATS server, so it cannot render identities: the simulated cabinets share the service connection");
            None
        }
    };
    let client = latch_nats::connect(&nats_url, "latch-sim").await?;
    let js = latch_nats::jetstream(client.clone());
    reset_foreign_events_stream(&js, app.pool()).await?;
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
            store: Some(store.clone()),
            logins,
            // The demo locker keeps who holds its compartments across restarts of dev.
            state_dir: Some(opts.data_dir.join("sim")),
            ..SimConfig::default()
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
         \n  NATS          {nats_shown}  ({auth_note})\
         \n\n  operator token  {operator}\
         \n  user token      {user}\
         \n\n  try:\
         \n    curl -H 'Authorization: Bearer {user}' {base}/devices\
         \n    curl -X POST -H 'Authorization: Bearer {operator}' {base}/devices/{first}/open\
         \n\n  QR login:\
         \n    on a PC          {base}/login\
         \n    the phone's side {base}/app/qr#code=<the QR content>  (asks once for the user token)\
         \n\n  Scan-to-open vending (open on a phone, or a browser in phone view):\
         \n{stickers}         \n    Kazaya sandbox {kazaya_url}  (register any phone number; pay or decline on its page)\
         \n\n  Parcel lockers (phone pages):\
         \n    locker page   {base}/lockers/app\
         \n    demo logins   13455555555 (李), 13488888888 (郑), 13466666666 (王), 13499996666 (张)\
         \n    password      {DEV_LOCKER_PASSWORD}\
         \n    site {DEV_LOCKER_SITE} (compartments 01-02 large, 03-04 medium, 05-06 small): reserve one, then grant it\
         \n    to 13499996666, or via 0001 快递公司A (its sandbox at {courier_url}, 王 on duty) or 0002 快递公司B\
         \n\n  {n} simulated cabinets are heartbeating; publish on/off to latch.sim.<id>.fault to break one,\
         \n  a script like {{\"take\":[{{\"shelf\":1,\"count\":2}}]}} to latch.sim.<id>.shopper for the next shopper,\
         \n  anything to latch.sim.<id>.restock to refill.\
         \n  Ctrl-C stops everything.\n",
        n = devices.len(),
        nats_shown = nats.url,
        auth_note = if nats.auth.is_some() {
            "authorization on: Latch as its service user, each cabinet as itself"
        } else if nats.authorization {
            "authorization on, as configured"
        } else {
            "no authorization"
        },
        stickers = stickers
            .iter()
            .map(|(label, url)| format!("    {label}: {url}\n"))
            .collect::<String>(),
    ));

    let stop = shutdown.clone();
    app.run_until_stopped(async move {
        shutdown_signal().await;
        stop.cancel();
    })
    .await?;
    shutdown.cancel();
    kazaya_stop.cancel();
    courier_stop.cancel();
    let _ = sim.await;
    let _ = kazaya_task.await;
    let _ = courier_task.await;
    drop(nats);
    drop(private_pg);
    Ok(())
}

/// A dev NATS server outlives dev databases: if its EVENTS stream is ahead of this database's
/// log, it holds another database's history and the relay would rightly refuse to publish.
/// In dev (only) that history is disposable, so the stream is recreated.
async fn reset_foreign_events_stream(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
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
    let head = latch_projections::log::head(pool).await?;
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

/// The demo locker users' password (printed in the banner).
pub const DEV_LOCKER_PASSWORD: &str = "latch-dev-1";
/// The demo locker site.
pub const DEV_LOCKER_SITE: &str = "610091A01";
/// Signs grant requests and callbacks between Latch and the demo courier companies. Fixed, so a
/// restart keeps agreeing with what the database already holds; it guards nothing real.
pub const DEV_AUTHORIZER_SECRET: &str = "whsec_bGF0Y2gtZGV2LWNvdXJpZXItc2lnbmluZy1zZWNyZXQ=";
/// Company B has no sandbox in the demo: its requests go nowhere and expire.
const DEV_COMPANY_B_ENDPOINT: &str = "http://127.0.0.1:9/grants";

/// The demo locker device at the demo site, whose door the demo compartments share.
async fn locker_door(
    store: &Store,
    devices: &[Uuid],
) -> Result<Option<DeviceId>, Box<dyn std::error::Error>> {
    for id in devices {
        let Some(device) = store.devices.load(&id.to_string()).await? else {
            continue;
        };
        if device.kind == Some(DeviceKind::Locker)
            && device.site.as_ref().map(SiteCode::as_str) == Some(DEV_LOCKER_SITE)
        {
            return Ok(Some(DeviceId::from(*id)));
        }
    }
    Ok(None)
}

/// What [`seed_lockers`] appended (all zero on a restart).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LockerSeed {
    pub sites: usize,
    pub compartments: usize,
    /// Compartments given the demo door after they were installed.
    pub doors: usize,
    pub users: usize,
    pub authorizers: usize,
    /// Authorizers whose endpoint moved (the sandbox listens on a new port each start).
    pub reconfigured: usize,
}

/// Seeds the parcel-locker demo: site 610091A01 with compartments of every size, the people of
/// issue 5's worked examples (password [`DEV_LOCKER_PASSWORD`]) and authorizers 0001 快递公司A
/// (at `courier_endpoint`) and 0002 快递公司B. The compartments open with `door` (a locker device
/// at the site), when there is one. What already exists is left as it is.
pub async fn seed_lockers(
    store: &Store,
    courier_endpoint: &str,
    door: Option<DeviceId>,
) -> Result<LockerSeed, Box<dyn std::error::Error>> {
    use latch_domain::locker::{
        AuthorizerCommand, AuthorizerError, AuthorizerNumber, CompartmentCommand, CompartmentError,
        CompartmentId, CompartmentNumber, Endpoint, SiteCommand, SiteError, Size, UserCommand,
        UserError, UserNumber,
    };
    use latch_domain::store::CommandError::Rejected;
    let ctx = CommandContext::new("system:dev-seed");
    let at = chrono::Utc::now();
    let mut seeded = LockerSeed::default();

    let site = SiteCode::parse("site", DEV_LOCKER_SITE)?;
    if !store.exists("locker_site", site.as_str()).await? {
        let command = SiteCommand::Register {
            site: site.clone(),
            name: Label::parse("name", "西湖驿站", 80)?,
            at,
        };
        match store
            .locker_sites
            .execute(site.as_str(), command.name(), command, &ctx)
            .await
        {
            Ok(_) => seeded.sites += 1,
            Err(Rejected(SiteError::AlreadyRegistered)) => {}
            Err(e) => return Err(e.to_string().into()),
        }
    }

    for (number, size) in [
        ("01", Size::Large),
        ("02", Size::Large),
        ("03", Size::Medium),
        ("04", Size::Medium),
        ("05", Size::Small),
        ("06", Size::Small),
    ] {
        let id = CompartmentId::new(site.clone(), CompartmentNumber::parse("number", number)?);
        if let Some(existing) = store.compartments.load(&id.to_string()).await? {
            // Installed by a run before there was a door to give it.
            if let (None, Some(door)) = (existing.door, door) {
                let command = CompartmentCommand::WireDoor { door, at };
                store
                    .compartments
                    .execute(&id.to_string(), command.name(), command, &ctx)
                    .await
                    .map_err(|e| e.to_string())?;
                seeded.doors += 1;
            }
            continue;
        }
        let command = CompartmentCommand::Install {
            id: id.clone(),
            size,
            door,
            at,
        };
        match store
            .compartments
            .execute(&id.to_string(), command.name(), command, &ctx)
            .await
        {
            Ok(_) => seeded.compartments += 1,
            Err(Rejected(CompartmentError::AlreadyInstalled)) => {}
            Err(e) => return Err(e.to_string().into()),
        }
    }

    let mut missing = Vec::new();
    for (number, name) in [
        ("13455555555", "李"),
        ("13499996666", "张"),
        ("13488888888", "郑"),
        ("13466666666", "王"),
    ] {
        if !store.exists("locker_user", number).await? {
            missing.push((UserNumber::parse("number", number)?, name));
        }
    }
    if !missing.is_empty() {
        // argon2 is deliberately slow: hash once, off the async threads, and only when needed.
        let hash =
            tokio::task::spawn_blocking(|| latch_api::lockers::hash_password(DEV_LOCKER_PASSWORD))
                .await?
                .map_err(|e| e.to_string())?;
        for (number, name) in missing {
            let credential_id = store
                .vault
                .put_password_hash(number.as_str(), &hash)
                .await
                .map_err(|e| e.to_string())?;
            let command = UserCommand::Register {
                number: number.clone(),
                name: Label::parse("name", name, 80)?,
                credential_id,
                at,
            };
            match store
                .locker_users
                .execute(number.as_str(), command.name(), command, &ctx)
                .await
            {
                Ok(_) => seeded.users += 1,
                Err(Rejected(UserError::AlreadyRegistered)) => {}
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }

    for (number, name, endpoint) in [
        ("0001", "快递公司A", courier_endpoint),
        ("0002", "快递公司B", DEV_COMPANY_B_ENDPOINT),
    ] {
        let endpoint = Endpoint::parse("endpoint", endpoint)?;
        let secret_id = latch_domain::vault::authorizer_secret_id(number, DEV_AUTHORIZER_SECRET);
        store
            .vault
            .put_secret(
                &secret_id,
                &format!("locker_authorizer/{number}"),
                DEV_AUTHORIZER_SECRET,
            )
            .await
            .map_err(|e| e.to_string())?;
        match store.authorizers.load(number).await? {
            None => {
                let command = AuthorizerCommand::Register {
                    number: AuthorizerNumber::parse("number", number)?,
                    name: Label::parse("name", name, 80)?,
                    endpoint,
                    secret_id,
                    at,
                };
                match store
                    .authorizers
                    .execute(number, command.name(), command, &ctx)
                    .await
                {
                    Ok(_) => seeded.authorizers += 1,
                    Err(Rejected(AuthorizerError::AlreadyRegistered)) => {}
                    Err(e) => return Err(e.to_string().into()),
                }
            }
            Some(existing)
                if existing.endpoint.as_ref() != Some(&endpoint)
                    || existing.secret_id != secret_id =>
            {
                let command = AuthorizerCommand::Reconfigure {
                    endpoint,
                    secret_id,
                    at,
                };
                store
                    .authorizers
                    .execute(number, command.name(), command, &ctx)
                    .await
                    .map_err(|e| e.to_string())?;
                seeded.reconfigured += 1;
            }
            Some(_) => {}
        }
    }
    tracing::info!(?seeded, "locker demo seeded");
    Ok(seeded)
}

/// Registers demo devices until there are `count`; returns all device ids.
async fn seed(
    store: &Store,
    pool: &PgPool,
    count: usize,
) -> Result<Vec<Uuid>, Box<dyn std::error::Error>> {
    let existing: Vec<(String,)> = sqlx::query_as(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'device' AND sequence = 1 ORDER BY id",
    )
    .fetch_all(pool)
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

const DEV_KAZAYA_CLIENT: &str = "latch-dev";
const DEV_KAZAYA_SECRET: &str = "latch-dev-secret";

/// Each demo vending cabinet gets a planogram (if it has none) and a sticker link.
async fn seed_planograms(
    store: &Store,
    devices: &[Uuid],
    vending: &VendingConfig,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut stickers = Vec::new();
    for id in devices {
        let did = id.to_string();
        let Some(device) = store.devices.load(&did).await? else {
            continue;
        };
        if device.kind != Some(DeviceKind::Vending) {
            continue;
        }
        let has = store
            .planograms
            .load(&did)
            .await?
            .is_some_and(|p| p.current.is_some());
        if !has {
            let slot = |shelf, sku: &str, name: &str, unit_weight, unit_price| RawSlot {
                shelf,
                sku: sku.into(),
                name: name.into(),
                unit_weight,
                tolerance: 15,
                unit_price,
                currency: "CNY".into(),
            };
            let planogram = Planogram::parse(
                "slots",
                &[
                    slot(1, "cola-330", "可口可乐 330ml", 350, 350),
                    slot(2, "water-550", "农夫山泉 550ml", 570, 200),
                    slot(3, "chips-70", "乐事薯片 70g", 85, 650),
                ],
            )?;
            let command = PlanogramCommand::Publish {
                planogram,
                operator: OperatorId::parse("operator", "dev-seed")?,
                at: chrono::Utc::now(),
            };
            store
                .planograms
                .execute(
                    &did,
                    command.name(),
                    command,
                    &CommandContext::new("system:dev-seed"),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        stickers.push((
            format!("cabinet {did}"),
            sticker::link(vending, &DeviceId::from(*id)),
        ));
    }
    Ok(stickers)
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
