//! NATS identities (issue 13): each registered device and authorizer gets its own NATS user.
//!
//! The user is an nkey (ed25519, NATS's own scheme): the seed (`SU...`) is returned once in the
//! registration answer and never kept; `nats_identities` holds only the public key (`U...`),
//! which is no secret, and the rendered authorization file carries only that. At connect the
//! server sends a nonce and checks the client's signature of it, which is cheap: no bcrypt per
//! registration nor per device connect. Identities issued before nkeys keep their bcrypt
//! password hash (rendered as user/password) until rotated. After an issue the file is
//! rendered again (when `LATCH_NATS_AUTH_FILE` is set) and the server told to reload it
//! (SIGHUP to the pid in `LATCH_NATS_PID_FILE`): NATS's own mechanism, no gateway.
//!
//! A render reads every identity, so one render per registration would be O(identities) each
//! and O(n²) for a fleet. The process's one [`NatsAuthRenderer`] coalesces them instead: a
//! caller waits for a render that starts after its write, at most one render runs at a time,
//! and one render serves every caller waiting when it starts.

use crate::error::ApiError;
use latch_nats::auth::{identities_config, IssuedIdentity, Login, Principal};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// bcrypt cost of the service user's password as written into the file (and of the device
/// passwords issued before nkeys): bcrypt's minimum. The passwords are random, so no work
/// factor adds anything against guessing; the hash is there only so the authorization file
/// holds no usable secret, and nats-server checks it with no extra option.
pub const BCRYPT_COST: u32 = 4;

/// Where the authorization file goes and how the server learns of it.
#[derive(Debug, Clone, Default)]
pub struct NatsAuthConfig {
    /// `LATCH_NATS_AUTH_FILE`: when unset, identities are issued but nothing is rendered.
    pub auth_file: Option<PathBuf>,
    /// `LATCH_NATS_PID_FILE`: nats-server's pid file; it is sent SIGHUP (reload) after a render.
    pub pid_file: Option<PathBuf>,
    /// The user Latch's own processes connect as (anything allowed).
    pub service_user: String,
    /// Its password, as written into the file.
    pub service_password: String,
}

/// NATS credentials, handed out once: connect with the seed as an nkey user (e.g.
/// `async_nats::ConnectOptions::with_nkey(seed)`, `nats --nkey <file>`).
#[derive(Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NatsCredentials {
    /// The identity's stable name, `device-<id>` or `authorizer-<number>`: what operators
    /// rotate and revoke it by (`/nats-identities/{nats_user}`). Not sent when connecting: the
    /// server knows an nkey user by its public key.
    pub user: String,
    /// The nkey seed (`SU...`, 58 characters) the client signs the server's nonce with. Shown
    /// only in this answer; Latch keeps only its public key.
    pub nkey_seed: String,
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("NatsCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The NATS user, kind and principal id of `principal`.
fn names(principal: &Principal) -> (&'static str, &str, String) {
    match principal {
        Principal::Device(id) => ("device", id.as_str(), latch_nats::auth::device_user(id)),
        Principal::Authorizer(n) => (
            "authorizer",
            n.as_str(),
            latch_nats::auth::authorizer_user(n),
        ),
    }
}

/// A new nkey user: its seed (handed out) and public key (kept). Microseconds of CPU: no need to
/// leave the async threads.
fn new_nkey() -> Result<(String, String), ApiError> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| ApiError::Internal(format!("nkey seed: {e}")))?;
    Ok((seed, pair.public_key()))
}

/// A password's bcrypt hash as nats-server reads it (`$2a$`), computed off the async threads.
pub async fn bcrypt_hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        bcrypt::hash_with_result(password, BCRYPT_COST)
            .map(|h| h.format_for_version(bcrypt::Version::TwoA))
    })
    .await
    .map_err(|e| format!("bcrypt task: {e}"))?
    .map_err(|e| format!("bcrypt: {e}"))
}

/// Issues the identity of `principal` unless it already has one (a replayed registration):
/// returns the credentials only the first time.
pub async fn issue(
    pool: &PgPool,
    principal: &Principal,
) -> Result<Option<NatsCredentials>, ApiError> {
    let (kind, id, user) = names(principal);
    let (nkey_seed, public_key) = new_nkey()?;
    let inserted = sqlx::query(
        "INSERT INTO nats_identities (nats_user, kind, principal, nkey)
         VALUES ($1, $2, $3, $4) ON CONFLICT (nats_user) DO NOTHING",
    )
    .bind(&user)
    .bind(kind)
    .bind(id)
    .bind(&public_key)
    .execute(pool)
    .await
    .map_err(|e| ApiError::Internal(format!("nats identity: {e}")))?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    tracing::info!(nats_user = %user, nkey = %public_key, "NATS identity issued");
    Ok(Some(NatsCredentials { user, nkey_seed }))
}

/// Gives `principal` a new nkey (issuing its identity if it has none) and returns its seed; the
/// old seed (or, for an identity from before nkeys, its password) stops working once the file
/// is rendered again and the server has reloaded it. `latch dev` uses this at every start for
/// the identities it plays (the simulator's cabinets), since a seed is shown only once and dev
/// keeps none on disk.
pub async fn rotate(pool: &PgPool, principal: &Principal) -> Result<NatsCredentials, ApiError> {
    let (kind, id, user) = names(principal);
    let (nkey_seed, public_key) = new_nkey()?;
    sqlx::query(
        "INSERT INTO nats_identities (nats_user, kind, principal, nkey)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (nats_user) DO UPDATE
         SET nkey = EXCLUDED.nkey, password_hash = NULL, issued_at = now()",
    )
    .bind(&user)
    .bind(kind)
    .bind(id)
    .bind(&public_key)
    .execute(pool)
    .await
    .map_err(|e| ApiError::Internal(format!("nats identity: {e}")))?;
    tracing::info!(nats_user = %user, nkey = %public_key, "NATS identity rotated");
    Ok(NatsCredentials { user, nkey_seed })
}

/// Every issued identity, in a stable order.
pub async fn load(pool: &PgPool) -> Result<Vec<IssuedIdentity>, sqlx::Error> {
    type Row = (String, String, String, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT nats_user, kind, principal, nkey, password_hash
         FROM nats_identities ORDER BY nats_user",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, kind, principal, nkey, password_hash)| {
            // The table's CHECK allows exactly one of them.
            let login = match (nkey, password_hash) {
                (Some(public), _) => Login::Nkey(public),
                (None, Some(hash)) => Login::PasswordHash(hash),
                (None, None) => {
                    tracing::error!(nats_user = %user, "NATS identity without nkey or password hash; not rendered");
                    return None;
                }
            };
            Some(IssuedIdentity {
                user,
                login,
                principal: if kind == "authorizer" {
                    Principal::Authorizer(principal)
                } else {
                    Principal::Device(principal)
                },
            })
        })
        .collect())
}

/// Renders the authorization file from the table and asks nats-server to reload it. Does
/// nothing when no file is configured.
///
/// A one-off: it hashes the service password again and does not coordinate with other
/// renders. A running API renders through its [`NatsAuthRenderer`] (the application's
/// `nats_auth()`), which does neither.
pub async fn render_and_reload(pool: &PgPool, cfg: &NatsAuthConfig) -> Result<(), String> {
    NatsAuthRenderer::new(cfg.clone()).render(pool).await
}

/// The process's renderer of the authorization file (one per process, shared by every
/// handler): coalesces the renders asked for after issues, rotations and revocations.
///
/// Generations: `started` counts the renders begun. A caller that has written a change reads
/// it (`wanted` = started + 1: the first render that begins after now, so whose read of the
/// table sees the change) and takes `finished`, the lock only one render holds at a time. If a
/// render of generation `wanted` or later has finished meanwhile, that render covered it and
/// the caller takes its outcome without rendering; otherwise it renders itself. Everyone who
/// asked while a render ran is therefore served by the single next one: a caller waits for at
/// most the render under way and one more, whatever the number of callers.
#[derive(Debug)]
pub struct NatsAuthRenderer {
    cfg: NatsAuthConfig,
    /// Renders begun. Bumped by the render holding `finished`, before it reads the table.
    started: AtomicU64,
    /// Held for the length of a render: the generation and outcome of the last one finished.
    finished: tokio::sync::Mutex<Finished>,
    /// The service password's bcrypt hash: computed at the first render, then kept (a fresh
    /// salt every render would only cost CPU; the server accepts any valid hash).
    service_hash: tokio::sync::OnceCell<String>,
}

#[derive(Debug)]
struct Finished {
    generation: u64,
    outcome: Result<(), String>,
}

impl NatsAuthRenderer {
    pub fn new(cfg: NatsAuthConfig) -> Self {
        Self {
            cfg,
            started: AtomicU64::new(0),
            finished: tokio::sync::Mutex::new(Finished {
                generation: 0,
                outcome: Ok(()),
            }),
            service_hash: tokio::sync::OnceCell::new(),
        }
    }

    pub fn config(&self) -> &NatsAuthConfig {
        &self.cfg
    }

    /// Renders begun so far (for tests and diagnostics).
    pub fn renders(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Returns once a render that began after this call has written the file and signalled
    /// the server, with that render's outcome: a change the caller committed before calling is
    /// in the file (and the server asked to reload it) when this returns Ok. Does nothing when
    /// no file is configured.
    pub async fn render(&self, pool: &PgPool) -> Result<(), String> {
        let Some(path) = &self.cfg.auth_file else {
            return Ok(());
        };
        // Read before waiting: a render already under way may have read the table before the
        // caller's write, so only a later generation counts.
        let wanted = self.started.load(Ordering::SeqCst) + 1;
        let mut finished = self.finished.lock().await;
        if finished.generation >= wanted {
            return finished.outcome.clone();
        }
        // Bumped before the table is read: whoever reads `started` after this may not count on
        // this render (see above). If this future is dropped mid-render, `finished` keeps the
        // older generation and the next holder renders again: never a render missed.
        let generation = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = self.render_once(pool, path).await;
        *finished = Finished {
            generation,
            outcome: outcome.clone(),
        };
        outcome
    }

    async fn render_once(&self, pool: &PgPool, path: &Path) -> Result<(), String> {
        let identities = load(pool).await.map_err(|e| e.to_string())?;
        // The service password is written hashed too: the file then holds no usable secret.
        let service_hash = self
            .service_hash
            .get_or_try_init(|| bcrypt_hash(self.cfg.service_password.clone()))
            .await?;
        let text = identities_config(&self.cfg.service_user, service_hash, &identities);
        // Written beside the file and renamed, so the server never reads half a file; named
        // for this process, so another process rendering the same file cannot interleave its
        // writes into it (renders within this process never overlap).
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        tokio::fs::write(&tmp, text)
            .await
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| format!("renaming to {}: {e}", path.display()))?;
        if let Some(pid_file) = &self.cfg.pid_file {
            reload(pid_file).await?;
        }
        tracing::info!(file = %path.display(), identities = identities.len(), "NATS authorization rendered");
        Ok(())
    }
}

/// Sends SIGHUP, nats-server's reload signal, to the pid in `pid_file`.
async fn reload(pid_file: &Path) -> Result<(), String> {
    let pid = tokio::fs::read_to_string(pid_file)
        .await
        .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
    let pid = pid.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} holds no pid", pid_file.display()));
    }
    // SIGHUP is nats-server's reload signal (`nats-server --signal reload=<pid>` sends it).
    let status = tokio::process::Command::new("kill")
        .args(["-HUP", pid])
        .status()
        .await
        .map_err(|e| format!("kill -HUP {pid}: {e}"))?;
    if !status.success() {
        return Err(format!("kill -HUP {pid}: {status}"));
    }
    Ok(())
}

/// Issues the identity, then waits for a render that includes it (coalesced with the renders
/// other callers asked for); a failed render is logged, not fatal: the identity is stored and
/// the next render includes it.
pub async fn issue_and_publish(
    pool: &PgPool,
    renderer: &NatsAuthRenderer,
    principal: &Principal,
) -> Result<Option<NatsCredentials>, ApiError> {
    let creds = issue(pool, principal).await?;
    if creds.is_some() {
        if let Err(e) = renderer.render(pool).await {
            tracing::error!(error = %e, "NATS authorization not rendered");
        }
    }
    Ok(creds)
}

/// Operators rotate or revoke an identity by its NATS user (`device-<id>`,
/// `authorizer-<number>`): a leaked seed is replaced, a decommissioned cabinet is shut out.
/// Either takes effect when the server has reloaded the rendered file (at once here).
pub fn router() -> axum::Router<crate::AppState> {
    use axum::routing::{delete, post};
    axum::Router::new()
        .route("/nats-identities/{nats_user}", delete(revoke))
        .route("/nats-identities/{nats_user}/rotate", post(rotate_handler))
}

/// The issued identity named `nats_user`, or 404.
async fn issued(pool: &PgPool, nats_user: &str) -> Result<Principal, ApiError> {
    let found: Option<(String, String)> =
        sqlx::query_as("SELECT kind, principal FROM nats_identities WHERE nats_user = $1")
            .bind(nats_user)
            .fetch_optional(pool)
            .await
            .map_err(|e| ApiError::Internal(format!("nats identity: {e}")))?;
    match found {
        Some((kind, id)) if kind == "authorizer" => Ok(Principal::Authorizer(id)),
        Some((_, id)) => Ok(Principal::Device(id)),
        None => Err(ApiError::NotFound {
            code: "unknown_nats_user",
            message: format!("nats_user: no identity {nats_user:?} was issued"),
        }),
    }
}

/// Gives the identity a new nkey (the old seed, or a password from before nkeys, stops working)
/// and returns its seed, once.
#[utoipa::path(post, path = "/nats-identities/{nats_user}/rotate", tag = "devices",
    params(("nats_user" = String, Path, description = "`device-<id>` or `authorizer-<number>`")),
    responses((status = 200, body = NatsCredentials), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_handler(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    actor: crate::auth::Actor,
    axum::extract::Path(nats_user): axum::extract::Path<String>,
) -> Result<axum::Json<NatsCredentials>, ApiError> {
    actor.require(crate::auth::Role::Operator)?;
    let principal = issued(&state.pool, &nats_user).await?;
    let credentials = rotate(&state.pool, &principal).await?;
    if let Err(e) = state.nats_auth.render(&state.pool).await {
        tracing::error!(error = %e, "NATS authorization not rendered after a rotation");
    }
    Ok(axum::Json(credentials))
}

/// Removes the identity: once the server has reloaded, it can no longer connect.
#[utoipa::path(delete, path = "/nats-identities/{nats_user}", tag = "devices",
    params(("nats_user" = String, Path, description = "`device-<id>` or `authorizer-<number>`")),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    actor: crate::auth::Actor,
    axum::extract::Path(nats_user): axum::extract::Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    actor.require(crate::auth::Role::Operator)?;
    issued(&state.pool, &nats_user).await?;
    sqlx::query("DELETE FROM nats_identities WHERE nats_user = $1")
        .bind(&nats_user)
        .execute(&state.pool)
        .await
        .map_err(|e| ApiError::Internal(format!("nats identity: {e}")))?;
    tracing::info!(%nats_user, actor = %actor, "NATS identity revoked");
    if let Err(e) = state.nats_auth.render(&state.pool).await {
        tracing::error!(error = %e, "NATS authorization not rendered after a revocation");
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_nkey_is_a_user_seed_and_its_public_key() {
        let (seed, public) = new_nkey().unwrap();
        assert!(seed.starts_with("SU") && seed.len() == 58, "a user seed");
        assert!(public.starts_with('U') && public.len() == 56, "{public}");
        assert_eq!(
            nkeys::KeyPair::from_seed(&seed).unwrap().public_key(),
            public
        );
        assert_ne!(new_nkey().unwrap().0, seed);
    }

    #[test]
    fn credentials_never_show_their_seed_when_debugged() {
        let (seed, _) = new_nkey().unwrap();
        let creds = NatsCredentials {
            user: "device-x".into(),
            nkey_seed: seed.clone(),
        };
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("device-x") && !shown.contains(&seed),
            "{shown}"
        );
    }
}
