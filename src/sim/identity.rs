//! Simulated cabinets as their own NATS users (issue 13).
//!
//! With authorization on, each cabinet connects with its own device identity, an nkey user
//! (it signs the server's nonce with its seed): one connection per cabinet, confined by the server to publishing under `latch.dev.<id>.>` and hearing its
//! own `latch.cmd.<id>.>` and `_INBOX.<id>.>` (so its client uses that inbox prefix; the
//! JetStream acks of its reports come back there). The control subjects `latch.sim.<id>.*` are
//! the simulator's own test harness, not the device protocol, so they stay on the shared
//! (service) connection.
//!
//! A seed is shown only once, so whoever runs the simulator with identities (`latch dev`,
//! or `latch sim` with `LATCH_NATS_AUTH_FILE`) rotates the cabinets' nkeys at start,
//! renders the authorization file and has the server reload it ([`issue_logins`]).

use super::*;
use latch_api::nats_identities::{self, NatsAuthRenderer, NatsCredentials};
use latch_nats::auth::Principal;
use sqlx::PgPool;

/// How long a cabinet keeps trying to log in (the server reloads its file asynchronously).
const LOGIN_PATIENCE: Duration = Duration::from_secs(15);

/// Where cabinets connect and as whom.
#[derive(Clone)]
pub struct DeviceLogins {
    /// The server's URL (without credentials).
    pub url: String,
    pub by_device: BTreeMap<Uuid, NatsCredentials>,
}

impl fmt::Debug for DeviceLogins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the seeds.
        f.debug_struct("DeviceLogins")
            .field("url", &self.url)
            .field("devices", &self.by_device.len())
            .finish()
    }
}

/// Gives each of `devices` a fresh nkey, renders the authorization file and reloads the
/// server; returns the logins for [`SimConfig::logins`].
pub async fn issue_logins(
    pool: &PgPool,
    auth: &NatsAuthRenderer,
    url: &str,
    devices: &[Uuid],
) -> Result<DeviceLogins, String> {
    let mut by_device = BTreeMap::new();
    for id in devices {
        let creds = nats_identities::rotate(pool, &Principal::Device(id.to_string()))
            .await
            .map_err(|e| format!("identity of {id}: {e}"))?;
        by_device.insert(*id, creds);
    }
    auth.render(pool).await?;
    Ok(DeviceLogins {
        url: latch_nats::url_without_credentials(url),
        by_device,
    })
}

/// The JetStream context a cabinet publishes through: its own connection when logins are
/// configured, else the shared one. `None`: it has no login or could not log in (logged).
pub(super) async fn device_jetstream(
    config: &SimConfig,
    id: Uuid,
    shared: &Context,
    shutdown: &CancellationToken,
) -> Option<Context> {
    let Some(logins) = &config.logins else {
        return Some(shared.clone());
    };
    let Some(creds) = logins.by_device.get(&id) else {
        tracing::error!("no NATS identity for this cabinet; not simulated");
        return None;
    };
    tokio::select! {
        client = connect(&logins.url, &id, creds) => match client {
            Ok(client) => Some(latch_nats::jetstream(client)),
            Err(e) => {
                tracing::error!(error = %e, user = %creds.user, "cabinet cannot log in to NATS; not simulated");
                None
            }
        },
        _ = shutdown.cancelled() => None,
    }
}

/// Connects as the cabinet (its nkey seed signs the server's nonce), retrying while the server
/// has not yet reloaded its file.
pub async fn connect(
    url: &str,
    id: &Uuid,
    creds: &NatsCredentials,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let deadline = tokio::time::Instant::now() + LOGIN_PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        let attempt = async_nats::ConnectOptions::with_nkey(creds.nkey_seed.clone())
            .name(format!("sim-{id}"))
            .custom_inbox_prefix(subjects::device_inbox_prefix(&id.to_string()))
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(url)
            .await;
        match attempt {
            Ok(client) => {
                tracing::info!(user = %creds.user, "cabinet logged in to NATS");
                return Ok(client);
            }
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!(error = %e, "cabinet login refused; the server may not have reloaded yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
