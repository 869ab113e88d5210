//! `latch dev`'s NATS, with authorization on (issue 13).
//!
//! If the configured server (default 127.0.0.1:4222) lets an anonymous client in, or nothing
//! answers, dev starts its own nats-server (a free port, JetStream, store under the data
//! folder) whose configuration includes the authorization file Latch renders (the service user
//! with a bcrypt-hashed password, each device and authorizer as an nkey user known only by its
//! public key), and writes its pid file so a render can reload it. Latch connects as its
//! service user with a password made for this run. If the configured server already refuses anonymous clients, it is used as it
//! is, with the credentials in its URL.

use latch_api::nats_identities::NatsAuthConfig;
use latch_nats::auth::identities_config;
use latch_nats::server::NatsServer;
use std::path::Path;
use std::time::Duration;

/// The service user dev's own server knows.
pub const DEV_SERVICE_USER: &str = "latch";

pub struct DevNats {
    /// What Latch connects with (credentials included).
    pub service_url: String,
    /// The same without credentials (banner, cabinets).
    pub url: String,
    /// Whether the server refuses anonymous clients.
    pub authorization: bool,
    /// Set when dev runs the server: where identities are rendered and how it reloads.
    pub auth: Option<NatsAuthConfig>,
    /// Dev's own server, stopped on drop.
    pub server: Option<NatsServer>,
}

/// Whether an anonymous client gets in: `Some(true)` yes, `Some(false)` refused, `None` nothing
/// answered.
async fn anonymous_allowed(url: &str) -> Option<bool> {
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(latch_nats::url_without_credentials(url)),
    )
    .await
    .ok()?;
    match attempt {
        Ok(client) => {
            drop(client);
            Some(true)
        }
        Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation => Some(false),
        Err(_) => None,
    }
}

/// Picks or starts the server as described in the module header.
pub async fn prepare(
    configured: Option<String>,
    data_dir: &Path,
) -> Result<DevNats, Box<dyn std::error::Error>> {
    let target = configured.unwrap_or_else(|| crate::config::DEFAULT_NATS_URL.to_owned());
    match anonymous_allowed(&target).await {
        Some(false) => {
            tracing::info!(url = %latch_nats::url_without_credentials(&target), "the configured NATS requires authorization: using it with the configured credentials");
            return Ok(DevNats {
                url: latch_nats::url_without_credentials(&target),
                service_url: target,
                authorization: true,
                auth: None,
                server: None,
            });
        }
        Some(true) => {
            tracing::info!(url = %target, "the configured NATS lets anyone in: starting dev's own nats-server with authorization")
        }
        None => {
            tracing::info!(url = %target, "no NATS answered: starting dev's own nats-server with authorization")
        }
    }
    let dir = data_dir.join("nats");
    std::fs::create_dir_all(&dir)?;
    let auth_file = dir.join("auth.conf");
    let pid_file = dir.join("nats.pid");
    let password = {
        use base64::Engine;
        use rand::RngCore;
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    // Only the service user until the database's identities are rendered (after migrating).
    let hash = latch_api::nats_identities::bcrypt_hash(password.clone()).await?;
    std::fs::write(&auth_file, identities_config(DEV_SERVICE_USER, &hash, &[]))?;
    // JetStream in the file, not only on the command line: a reload (after every render) takes
    // the file's JetStream settings, and without them it would shut JetStream down.
    let store = std::fs::canonicalize(&dir)?.join("store");
    let config = format!(
        "jetstream {{ store_dir: {} }}\ninclude \"auth.conf\"\n",
        serde_json::to_string(&store.display().to_string())?
    );
    let server = NatsServer::start_in(&dir, Some(&config)).await?;
    let pid = server.pid().ok_or("nats-server has no pid")?;
    std::fs::write(&pid_file, pid.to_string())?;
    let url = server.url();
    let service_url = url.replacen(
        "nats://",
        &format!("nats://{DEV_SERVICE_USER}:{password}@"),
        1,
    );
    Ok(DevNats {
        service_url,
        url,
        authorization: true,
        auth: Some(NatsAuthConfig {
            auth_file: Some(auth_file),
            pid_file: Some(pid_file),
            service_user: DEV_SERVICE_USER.into(),
            service_password: password,
        }),
        server: Some(server),
    })
}
