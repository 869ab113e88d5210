//! `Application`: everything `latch serve` runs, in one value.
//!
//! [`Application::build`] connects and binds (port 0 picks a free port, see [`Application::port`])
//! without serving yet; [`Application::run_until_stopped`] runs the chosen roles until the given
//! shutdown future resolves, then stops taking work, lets in-flight messages finish and returns.

use crate::config::{LatchEnv, Role, Settings};
use latch_api::auth::Auth;
use latch_api::nats_identities::NatsAuthRenderer;
use latch_api::qr::hub::Hub;
use latch_api::qr::QrService;
use latch_api::AppState;
use latch_domain::outbound::TlsRoots;
use latch_domain::store::{self, Store};
use latch_workers::relay::RelayConfig;
use latch_workers::sweeper::SweeperConfig;
use latch_workers::CancellationToken;
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("nats: {0}")]
    Nats(String),
    #[error("audit: {0}")]
    AuditKey(#[from] latch_projections::audit::signing::KeyError),
    #[error("LATCH_SECRETS_KEY: {0}")]
    SecretsKey(#[from] latch_domain::vault::VaultKeyError),
    #[error("{0}")]
    Tls(#[from] latch_domain::outbound::TlsRootsError),
    #[error("{0}")]
    Production(#[from] crate::production::Refused),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    settings: Settings,
    pool: PgPool,
    store: Arc<Store>,
    nats: async_nats::Client,
    listener: Option<TcpListener>,
    port: u16,
    audit_key: Option<latch_projections::audit::signing::Key>,
    /// Extra CA roots for every outbound client (`LATCH_EXTRA_CA_FILE`).
    roots: TlsRoots,
    lockers: Arc<latch_api::lockers::Lockers>,
    /// The process's one renderer of the NATS authorization file (the API's and `latch dev`'s).
    nats_auth: Arc<NatsAuthRenderer>,
}

impl Application {
    pub async fn build(mut settings: Settings) -> Result<Self, StartError> {
        // Read once, here: a broken file stops the start with its name.
        let roots = match &settings.extra_ca_file {
            Some(path) => {
                let roots = TlsRoots::from_pem_file(path)?;
                tracing::info!(file = %path.display(), certificates = roots.len(), "extra CA roots trusted for outbound TLS");
                if let Some(k) = settings.kazaya.take() {
                    settings.kazaya = Some(k.with_roots(roots.clone()));
                }
                roots
            }
            None => TlsRoots::none(),
        };
        // Lazy: a process that starts while Postgres is down still serves /healthz and answers
        // commands with 503 until the database is back.
        let pool = store::connect_lazy(
            &settings.database_url,
            settings.db_max_connections,
            settings.db_acquire_timeout,
        )?;
        check_environment(&settings, &pool).await?;
        if settings.migrate {
            store::MIGRATOR.run(&pool).await?;
        }
        let nats = latch_nats::connect(&settings.nats_url, "latch")
            .await
            .map_err(|e| StartError::Nats(e.to_string()))?;
        let (listener, port) = if settings.runs(Role::Api) {
            let listener = bind(settings.http_addr).map_err(|source| StartError::Bind {
                addr: settings.http_addr,
                source,
            })?;
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            (Some(listener), port)
        } else {
            (None, 0)
        };
        let audit_key = settings.audit.key()?;
        let secrets_key = match &settings.secrets_key {
            Some(raw) => latch_domain::vault::VaultKey::parse(raw)?,
            None => latch_domain::vault::VaultKey::development(),
        };
        if secrets_key.is_development() {
            tracing::warn!("LATCH_SECRETS_KEY is not set: stored signing secrets are encrypted under the development key");
        }
        if settings.lockers.pickup_pepper.is_development() {
            tracing::warn!("LATCH_PICKUP_PEPPER is not set: pickup codes are keyed with the development pepper");
        } else if settings.lockers.pickup_pepper.len() < 32 {
            tracing::warn!("LATCH_PICKUP_PEPPER is shorter than 32 bytes");
        }
        Ok(Self {
            nats_auth: Arc::new(NatsAuthRenderer::new(settings.nats_auth.clone())),
            lockers: Arc::new(latch_api::lockers::Lockers::new(
                settings.lockers.clone(),
                settings.clock.clone(),
            )),
            audit_key,
            store: Arc::new(Store::with_vault_key(pool.clone(), secrets_key)),
            roots,
            pool,
            nats,
            listener,
            port,
            settings,
        })
    }

    /// The HTTP port actually bound (0 when this process does not run the API).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The renderer of the NATS authorization file the API uses: render through it, not
    /// `render_and_reload`, so that no two renders of this process overlap.
    pub fn nats_auth(&self) -> Arc<NatsAuthRenderer> {
        self.nats_auth.clone()
    }

    /// The lockers API's state (its rate-limit tables, for diagnostics and tests).
    pub fn lockers(&self) -> Arc<latch_api::lockers::Lockers> {
        self.lockers.clone()
    }

    /// What the workers of every role are given.
    fn worker_deps(&self, js: async_nats::jetstream::Context) -> latch_workers::roles::Deps {
        let s = &self.settings;
        let chrono = |d: Duration, default: i64| {
            chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(default))
        };
        latch_workers::roles::Deps {
            pool: self.pool.clone(),
            store: self.store.clone(),
            nats: self.nats.clone(),
            js,
            clock: s.clock.clone(),
            relay: RelayConfig {
                poll: s.relay_poll,
                ..RelayConfig::default()
            },
            sweeper: SweeperConfig {
                heartbeat_timeout: chrono(s.heartbeat_timeout, 30),
                interval: s.sweep_interval,
                weights_after_timeout: chrono(s.weights_after_timeout, 120),
            },
            open_timeout: chrono(s.open_timeout, 15),
            delivery: latch_workers::grant_delivery::DeliveryConfig {
                backoff: s.lockers.webhook_backoff.clone(),
                roots: self.roots.clone(),
                require_https: s.env == LatchEnv::Production,
                ..Default::default()
            },
            audit_key: self.audit_key.clone(),
            audit_checkpoint_every: Duration::from_secs(s.audit.audit_checkpoint_secs.max(1)),
            sms: Arc::new(latch_workers::locker_notifier::SandboxSms::new(
                self.pool.clone(),
            )),
            answers: Arc::new(CallbackAnswers {
                store: self.store.clone(),
                clock: s.clock.clone(),
            }),
            holder: s.holder.clone(),
        }
    }

    pub async fn run_until_stopped(
        self,
        shutdown_signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let shutdown = CancellationToken::new();
        let js = latch_nats::jetstream(self.nats.clone());
        let s = &self.settings;
        let mut tasks = JoinSet::new();

        // Streams first, so workers find them; if NATS is away, keep trying in the background
        // while everything that needs only Postgres carries on.
        let plan = latch_nats::streams::StreamPlan {
            telemetry: s.telemetry_limits,
            deadletter: s.deadletter_limits,
            replicas: s.stream_replicas,
            edge_domains: s.edge_domains.clone(),
        };
        if let Err(e) = latch_nats::streams::ensure_streams_for(&js, &plan).await {
            tracing::warn!(error = %e, "cannot declare streams yet; retrying in the background");
            let js = js.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                while !shutdown.is_cancelled() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if latch_nats::streams::ensure_streams_for(&js, &plan)
                        .await
                        .is_ok()
                    {
                        tracing::info!("streams declared");
                        return;
                    }
                }
            });
        }
        // Secrets and password hashes that only old events still hold move into the vault once
        // (each is also moved on first use, so a failure here only costs that first use).
        let store = self.store.clone();
        tasks.spawn(async move {
            match store.vault.import_legacy().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(moved = n, "secrets of old events moved into the vault"),
                Err(e) => tracing::warn!(error = %e, "secrets of old events not moved yet"),
            }
        });
        let deps = self.worker_deps(js.clone());
        for role in &s.roles {
            for task in latch_workers::roles::tasks(*role, &deps, &shutdown) {
                tasks.spawn(task);
            }
        }
        if let Some(listener) = self.listener {
            let hub = Arc::new(Hub::new(self.pool.clone(), s.clock.clone()));
            tasks.spawn(hub.clone().run(self.nats.clone(), shutdown.clone()));
            let qr = Arc::new(QrService::new(hub, s.qr.clone(), s.clock.clone()));
            let tidy = qr.clone();
            let lockers = self.lockers.clone();
            tasks.spawn(latch_workers::roles::every(
                Duration::from_secs(60),
                shutdown.clone(),
                move || {
                    tidy.tidy();
                    lockers.limits.tidy();
                },
            ));
            let kazaya: Option<Arc<dyn latch_api::kazaya::Kazaya>> = match &s.kazaya {
                Some(config) => match latch_api::kazaya::HttpKazaya::new(config.clone()) {
                    Ok(k) => Some(Arc::new(k)),
                    Err(e) => {
                        tracing::error!(error = %e, "Kazaya configuration unusable; shopper login disabled");
                        None
                    }
                },
                None => None,
            };
            let state = AppState {
                vending: Arc::new(latch_api::vending::Vending::new(
                    s.vending.clone(),
                    kazaya,
                    s.clock.clone(),
                )),
                lockers: self.lockers.clone(),
                edge: Arc::new(s.edge.clone()),
                nats_auth: self.nats_auth.clone(),
                qr,
                shutdown: shutdown.clone(),
                store: self.store.clone(),
                pool: self.pool.clone(),
                auth: Arc::new(Auth::new(self.pool.clone(), s.clock.clone())),
                nats: self.nats.clone(),
                clock: s.clock.clone(),
                open_timeout: chrono::Duration::from_std(s.open_timeout)
                    .unwrap_or(chrono::Duration::seconds(15)),
            };
            let app = latch_api::router(state);
            tasks.spawn(crate::serve::serve(
                listener,
                app,
                s.http.clone(),
                shutdown.clone(),
            ));
        }
        tracing::info!(roles = ?s.roles, port = self.port, "latch is running");

        shutdown_signal.await;
        tracing::info!("shutting down: finishing in-flight work");
        shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some tasks did not finish in 15 s; stopping them");
            tasks.abort_all();
        }
        self.nats.flush().await.ok();
        self.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Production refuses to start on what [`crate::production`] finds, naming all of it at once;
/// development logs the same list once.
async fn check_environment(settings: &Settings, pool: &PgPool) -> Result<(), StartError> {
    let mut problems = crate::production::problems(settings);
    if settings.env == LatchEnv::Development {
        if !problems.is_empty() {
            tracing::warn!(
                problems = %problems.join("; "),
                "development mode: LATCH_ENV=production would refuse to start on these"
            );
        }
        return Ok(());
    }
    match crate::production::authorizer_problems(pool).await {
        Ok(more) => problems.extend(more),
        // Not a configuration problem; delivery refuses plain-http endpoints anyway.
        Err(e) => tracing::warn!(error = %e, "cannot check authorizers' endpoints at start"),
    }
    if problems.is_empty() {
        tracing::info!("production mode: settings checked");
        Ok(())
    } else {
        Err(crate::production::Refused(problems).into())
    }
}

/// Answers that arrive over NATS go through the API's own callback check and command.
struct CallbackAnswers {
    store: Arc<Store>,
    clock: latch_domain::clock::SharedClock,
}

#[async_trait::async_trait]
impl latch_workers::authorizer_answers::AnswerHandler for CallbackAnswers {
    async fn answer(
        &self,
        authorizer: &str,
        headers: Vec<(&'static str, String)>,
        body: bytes::Bytes,
    ) -> serde_json::Value {
        let mut map = axum::http::HeaderMap::new();
        for (name, value) in headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                map.insert(name, v);
            }
        }
        let outcome = latch_api::lockers::callback::handle_answer(
            &self.store,
            &self.clock,
            authorizer,
            &map,
            &body,
        )
        .await;
        match outcome {
            Ok(v) => v,
            Err(e) => serde_json::to_value(e.to_body().1).unwrap_or_default(),
        }
    }
}

/// Listens with a deep accept queue: after a deploy thousands of login pages reconnect their
/// push channels at once, and with the default 128 the overflow waits a full second for the
/// SYN to be resent (measured by `latch bench qr`).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
