//! Shared parcel lockers over HTTP.
//!
//! - Operators manage sites, compartments, locker users and third-party authorizers.
//! - Locker users log in with their user number and password (argon2; failures rate limited per
//!   user number) and get a bearer token for `locker:{number}` with the user role (the phone
//!   pages get the same token in an HttpOnly cookie, see [`crate::locker_pages`]); they reserve
//!   a compartment by size, list what they hold, grant it directly to another user or through an
//!   authorizer, and read their inbox.
//! - Authorizers receive each grant request as a signed webhook (Standard Webhooks, their own
//!   secret) at their service endpoint, retried on a backoff schedule, and also on NATS subject
//!   `latch.authorizers.{number}.grants`; the grant-delivery worker
//!   (`latch_workers::grant_delivery`) does both from the `GrantRequested` event, so a restart
//!   loses nothing. They answer on a signed callback, deduplicated by webhook id.
//!
//! Every check that could refuse a grant (receiver exists and is active, authorizer active, the
//! compartment held by the requester) runs before anything is written, so bad input changes
//! nothing; the compartment aggregate itself refuses anyone but the current holder, which
//! settles two racing grants.

use crate::auth::{Actor, Role};
use crate::error::{from_command_error, ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::kazaya::verify_signature;
use crate::locker_pages::LockerCaller;
use crate::login_events::{self, LoginToken};
use crate::qr::limits::Limit;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latch_domain::access::LoginRefusal;
use latch_domain::clock::SharedClock;
use latch_domain::device::{Label, SiteCode};
use latch_domain::locker::compartment::Status;
use latch_domain::locker::grant::GrantStatus;
use latch_domain::locker::signing::secret_key;
/// Re-exported for authorizers' test doubles: what Latch signs with.
pub use latch_domain::locker::signing::sign;
use latch_domain::locker::{
    Authorizer, AuthorizerCommand, AuthorizerError, AuthorizerNumber, Compartment,
    CompartmentCommand, CompartmentError, CompartmentId, CompartmentNumber, Endpoint, Grant,
    GrantCommand, GrantError, GrantTarget, LockerUser, SiteCommand, SiteError, Size, UserCommand,
    UserError, UserNumber,
};
use latch_domain::store::{CommandContext, CommandError, IdempotencyKey, Store};
use latch_projections::lockers::{self as model, CompartmentRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How a locker user's bearer subject starts.
pub const SUBJECT_PREFIX: &str = "locker:";

/// Tunables of the lockers API.
#[derive(Debug, Clone)]
pub struct LockerSettings {
    /// Login attempts per user number per minute (successes count too).
    pub login_attempts_per_minute: u32,
    /// How long a login token lasts.
    pub session: chrono::Duration,
    /// How long an authorizer has to answer a grant request.
    pub grant_timeout: chrono::Duration,
    /// A reservation's default length when the request names no end.
    pub reservation: chrono::Duration,
    /// Pauses between grant-request webhook attempts (the grant-delivery role): one attempt,
    /// then one more after each pause, then the request is dead-lettered.
    pub webhook_backoff: Vec<Duration>,
}

impl Default for LockerSettings {
    fn default() -> Self {
        Self {
            login_attempts_per_minute: 5,
            session: chrono::Duration::hours(12),
            grant_timeout: chrono::Duration::minutes(5),
            reservation: chrono::Duration::hours(2),
            webhook_backoff: latch_domain::locker::signing::DEFAULT_WEBHOOK_BACKOFF_SECS
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

/// Sends a text message to a phone. The real SMS gateway is a third party behind this trait.
#[async_trait::async_trait]
pub trait SmsSender: Send + Sync {
    async fn send(&self, phone: &str, text: &str) -> Result<(), String>;
}

/// The sandbox SMS gateway: keeps what it was asked to send (operators can list it) and logs
/// it; nothing leaves the process.
#[derive(Debug, Default)]
pub struct SandboxSms {
    sent: std::sync::Mutex<Vec<(String, String)>>,
}

impl SandboxSms {
    /// Every message so far, as (phone, text).
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl SmsSender for SandboxSms {
    async fn send(&self, phone: &str, text: &str) -> Result<(), String> {
        tracing::info!(%phone, %text, "sandbox SMS");
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() >= 10_000 {
            sent.remove(0);
        }
        sent.push((phone.to_owned(), text.to_owned()));
        Ok(())
    }
}

/// Per-process state of the lockers API.
pub struct Lockers {
    pub settings: LockerSettings,
    login_limit: Limit<String>,
    sms: Arc<dyn SmsSender>,
    /// Set when `sms` is the sandbox, so operators can read what it "sent".
    sandbox_sms: Option<Arc<SandboxSms>>,
    /// Argon2 takes ~19 MiB and a core's worth of time per hash. On tokio's blocking threads a
    /// burst of logins ran one hash per thread, and the allocator kept an arena of that size per
    /// thread afterwards (2 GiB after 129 registrations; still 770 MiB with the hashes merely
    /// limited to one per core, as the pool kept moving them to fresh threads). So they run on a
    /// few threads of their own, one per core, whose memory is reused from hash to hash; the
    /// rest queue.
    password_work: tokio::sync::mpsc::Sender<PasswordJob>,
}

type PasswordJob = Box<dyn FnOnce() + Send>;

/// One thread per core for password hashing; they end when the sender is dropped.
fn password_threads() -> tokio::sync::mpsc::Sender<PasswordJob> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PasswordJob>(1024);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("latch-passwords-{i}"))
            .spawn(move || loop {
                // One thread waits on the queue at a time; the others wait for the lock.
                let job = match rx.lock() {
                    Ok(mut rx) => rx.blocking_recv(),
                    Err(_) => return,
                };
                match job {
                    Some(job) => job(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "password thread not started");
        }
    }
    tx
}

impl Lockers {
    /// With the sandbox SMS gateway.
    pub fn new(settings: LockerSettings, clock: SharedClock) -> Self {
        let sandbox = Arc::new(SandboxSms::default());
        let mut lockers = Self::with_sms(settings, clock, sandbox.clone());
        lockers.sandbox_sms = Some(sandbox);
        lockers
    }

    pub fn with_sms(settings: LockerSettings, clock: SharedClock, sms: Arc<dyn SmsSender>) -> Self {
        Self {
            login_limit: Limit::per_minute(settings.login_attempts_per_minute, clock),
            settings,
            sms,
            sandbox_sms: None,
            password_work: password_threads(),
        }
    }

    /// Runs password hashing or verification on the password threads, off the async ones.
    pub async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: PasswordJob = Box::new(move || {
            let _ = done.send(work());
        });
        self.password_work
            .send(job)
            .await
            .map_err(|_| ApiError::Internal("password threads stopped".into()))?;
        result
            .await
            .map_err(|_| ApiError::Internal("password job dropped".into()))
    }
}

/// What the sandbox SMS gateway was asked to send (operators; 404 with a real gateway).
async fn sandbox_sms(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let sms = state
        .lockers
        .sandbox_sms
        .as_ref()
        .ok_or_else(|| ApiError::NotFound {
            code: "no_sandbox_sms",
            message: "a real SMS gateway is configured".into(),
        })?;
    let sent: Vec<_> = sms
        .sent()
        .into_iter()
        .map(|(phone, text)| json!({ "phone": phone, "text": text }))
        .collect();
    Ok(Json(json!(sent)))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lockers/sites", post(register_site))
        .route("/lockers/compartments", post(install_compartment))
        .route("/lockers/users", post(register_user))
        .route("/lockers/users/{number}/disable", post(disable_user))
        .route("/lockers/users/{number}/enable", post(enable_user))
        .route(
            "/lockers/authorizers",
            post(register_authorizer).get(list_authorizers),
        )
        .route(
            "/lockers/authorizers/{number}/deactivate",
            post(deactivate_authorizer),
        )
        .route(
            "/lockers/authorizers/{number}/activate",
            post(activate_authorizer),
        )
        .route(
            "/lockers/authorizers/{number}/callback",
            post(authorizer_callback),
        )
        .route("/lockers/login", post(login))
        .route("/lockers/reservations", post(reserve))
        .route("/lockers/me/compartments", get(my_compartments))
        .route("/lockers/me/inbox", get(my_inbox))
        .route("/lockers/grants", post(grant_direct))
        .route("/lockers/grants/via-authorizer", post(grant_via_authorizer))
        .route("/lockers/grants/{grant_id}", get(show_grant))
        .route("/lockers/compartments/{id}/holder", get(holder_at))
        .route("/lockers/compartments/{id}/deposit", post(deposit))
        .route("/lockers/compartments/{id}", get(show_compartment))
        .route("/lockers/compartments/{id}/door", post(wire_door))
        .route("/lockers/sandbox/sms", get(sandbox_sms))
        .route("/lockers/compartments/{id}/collect", post(collect))
}

// ---------------------------------------------------------------------------------------------
// Errors

fn rejected(code: &'static str, not_found: bool, message: String) -> ApiError {
    if not_found {
        ApiError::NotFound { code, message }
    } else {
        ApiError::Conflict { code, message }
    }
}

macro_rules! command_error {
    ($t:ty) => {
        impl From<CommandError<$t>> for ApiError {
            fn from(e: CommandError<$t>) -> Self {
                match e {
                    CommandError::Rejected(d) => {
                        rejected(d.code(), d.is_not_found(), d.to_string())
                    }
                    other => from_command_error(other),
                }
            }
        }
    };
}
command_error!(SiteError);
command_error!(CompartmentError);
command_error!(UserError);
command_error!(AuthorizerError);
command_error!(GrantError);

fn unprocessable(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code,
        message: message.into(),
        field: Some(field.to_owned()),
    }
}

/// The locker user behind a user token.
fn me(actor: &Actor) -> Result<UserNumber, ApiError> {
    actor.require(Role::User)?;
    actor
        .subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|n| UserNumber::parse("subject", n).ok())
        .ok_or_else(|| ApiError::Forbidden("this needs a locker user's token".into()))
}

fn parse_time(field: &str, raw: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::bad_request("invalid_field", field, "must be RFC 3339"))
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// Operators

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSite {
    pub site: String,
    pub name: String,
}

#[utoipa::path(post, path = "/lockers/sites", tag = "lockers", request_body = RegisterSite, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_site(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterSite>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let name = Label::parse("name", &body.value.name, 80)?;
    let command = SiteCommand::Register {
        site: site.clone(),
        name: name.clone(),
        at: state.clock.now(),
    };
    state
        .store
        .locker_sites
        .execute(
            site.as_str(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "site": site.as_str(), "name": name.as_str() })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallCompartment {
    pub site: String,
    pub number: String,
    /// small, medium or large.
    pub size: String,
    /// The registered device (kind `locker`, same site) that opens this compartment's door.
    pub door_device: Option<String>,
}

/// `raw` names a registered locker device at `site`: a door for one of its compartments.
async fn locker_door(
    state: &AppState,
    site: &SiteCode,
    raw: &str,
) -> Result<latch_domain::device::DeviceId, ApiError> {
    use latch_domain::device::{DeviceId, DeviceKind};
    let id = DeviceId::parse("door_device", raw)?;
    let device = state.store.devices.load(&id.to_string()).await?;
    match device {
        Some(d) if d.registered => {
            if d.kind != Some(DeviceKind::Locker) {
                return Err(unprocessable(
                    "door_not_a_locker",
                    "door_device",
                    "a compartment door must be a device of kind locker",
                ));
            }
            if d.site.as_ref() != Some(site) {
                return Err(unprocessable(
                    "door_at_another_site",
                    "door_device",
                    format!("device {id} is not at site {}", site.as_str()),
                ));
            }
            Ok(id)
        }
        _ => Err(ApiError::NotFound {
            code: "device_not_found",
            message: format!("no device {id}"),
        }),
    }
}

#[utoipa::path(post, path = "/lockers/compartments", tag = "lockers", request_body = InstallCompartment, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn install_compartment(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<InstallCompartment>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let number = CompartmentNumber::parse("number", &body.value.number)?;
    let size = Size::parse("size", &body.value.size)?;
    if !state.store.exists("locker_site", site.as_str()).await? {
        return Err(ApiError::NotFound {
            code: "site_not_found",
            message: format!("no site {}", site.as_str()),
        });
    }
    let door = match &body.value.door_device {
        Some(raw) => Some(locker_door(&state, &site, raw).await?),
        None => None,
    };
    let id = CompartmentId::new(site, number);
    let command = CompartmentCommand::Install {
        id: id.clone(),
        size,
        door,
        at: state.clock.now(),
    };
    state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "compartment_id": id.to_string(),
            "size": size.as_str(),
            "status": "free",
            "door_device": door.map(|d| d.to_string()),
        })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WireDoor {
    /// The registered device (kind `locker`, same site) that opens this compartment's door.
    pub door_device: String,
}

/// Fits (or replaces) the device that opens a compartment's door.
#[utoipa::path(post, path = "/lockers/compartments/{id}/door", tag = "lockers", request_body = WireDoor,
    params(("id" = String, Path, description = "\"{site}:{number}\"")),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn wire_door(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<WireDoor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let id = CompartmentId::parse("id", &id)?;
    let door = locker_door(&state, &id.site, &body.value.door_device).await?;
    let command = CompartmentCommand::WireDoor {
        door,
        at: state.clock.now(),
    };
    state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok(Json(
        json!({ "compartment_id": id.to_string(), "door_device": door.to_string() }),
    ))
}

/// A compartment, with its door: for operators, its holder and its depositor.
#[utoipa::path(get, path = "/lockers/compartments/{id}", tag = "lockers",
    params(("id" = String, Path, description = "\"{site}:{number}\"")),
    responses((status = 200, body = CompartmentRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_compartment(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    Path(id): Path<String>,
) -> Result<Json<CompartmentRow>, ApiError> {
    let id = CompartmentId::parse("id", &id)?.to_string();
    let not_found = || ApiError::NotFound {
        code: "compartment_not_found",
        message: format!("no compartment {id}"),
    };
    let row = model::compartment_row(&state.store.pool, &id)
        .await?
        .ok_or_else(not_found)?;
    if actor.role != Role::Operator {
        let user = me(&actor)?;
        // Someone else's compartment is answered as absent, so ids cannot be probed.
        if row.holder.as_deref() != Some(user.as_str())
            && row.depositor.as_deref() != Some(user.as_str())
        {
            return Err(not_found());
        }
    }
    Ok(Json(row))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    /// The user's phone number.
    pub user_number: String,
    pub name: String,
    pub password: String,
}

/// An argon2id PHC string for `password`, with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[utoipa::path(post, path = "/lockers/users", tag = "lockers", request_body = RegisterUser, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let number = UserNumber::parse("user_number", &body.value.user_number)?;
    let name = Label::parse("name", &body.value.name, 80)?;
    let password = body.value.password.clone();
    if !(8..=128).contains(&password.chars().count()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "password",
            "must be 8-128 characters",
        ));
    }
    let ctx = meta.context(&actor, &body.raw);
    // A retry with the same key answers from the first request without hashing again.
    let password_hash = state
        .lockers
        .password_work(move || hash_password(&password))
        .await??;
    let command = UserCommand::Register {
        number: number.clone(),
        name: name.clone(),
        password_hash,
        at: state.clock.now(),
    };
    state
        .store
        .locker_users
        .execute(number.as_str(), command.name(), command, &ctx)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_number": number.as_str(), "name": name.as_str(), "status": "active" })),
    ))
}

async fn user_status(
    state: AppState,
    actor: Actor,
    meta: RequestMeta,
    number: String,
    disable: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let number = UserNumber::parse("number", &number)?;
    let at = state.clock.now();
    let command = if disable {
        UserCommand::Disable { at }
    } else {
        UserCommand::Enable { at }
    };
    state
        .store
        .locker_users
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, b""),
        )
        .await?;
    Ok(Json(json!({
        "user_number": number.as_str(),
        "status": if disable { "disabled" } else { "active" },
    })))
}

async fn disable_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user_status(state, actor, meta, number, true).await
}

async fn enable_user(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user_status(state, actor, meta, number, false).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAuthorizer {
    pub number: String,
    pub name: String,
    /// Service endpoint that receives grant requests.
    pub endpoint: String,
    /// Standard Webhooks secret, `whsec_` + base64.
    pub secret: String,
}

#[utoipa::path(post, path = "/lockers/authorizers", tag = "lockers", request_body = RegisterAuthorizer, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterAuthorizer>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let req = &body.value;
    let number = AuthorizerNumber::parse("number", &req.number)?;
    let name = Label::parse("name", &req.name, 80)?;
    let endpoint = Endpoint::parse("endpoint", &req.endpoint)?;
    if secret_key(&req.secret).is_none() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "secret",
            "must be `whsec_` + base64",
        ));
    }
    let command = AuthorizerCommand::Register {
        number: number.clone(),
        name: name.clone(),
        endpoint: endpoint.clone(),
        secret: req.secret.clone(),
        at: state.clock.now(),
    };
    state
        .store
        .authorizers
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "number": number.as_str(),
            "name": name.as_str(),
            "endpoint": endpoint.as_str(),
            "status": "active",
        })),
    ))
}

async fn authorizer_status(
    state: AppState,
    actor: Actor,
    meta: RequestMeta,
    number: String,
    active: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let number = AuthorizerNumber::parse("number", &number)?;
    let at = state.clock.now();
    let command = if active {
        AuthorizerCommand::Activate { at }
    } else {
        AuthorizerCommand::Deactivate { at }
    };
    state
        .store
        .authorizers
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, b""),
        )
        .await?;
    Ok(Json(json!({
        "number": number.as_str(),
        "status": if active { "active" } else { "inactive" },
    })))
}

async fn deactivate_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorizer_status(state, actor, meta, number, false).await
}

async fn activate_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorizer_status(state, actor, meta, number, true).await
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuthorizerRow {
    pub number: String,
    pub name: String,
    pub status: String,
}

/// The active authorizers (any signed-in user or operator).
#[utoipa::path(get, path = "/lockers/authorizers", tag = "lockers",
    responses((status = 200, body = Vec<AuthorizerRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_authorizers(
    State(state): State<AppState>,
    LockerCaller(_actor): LockerCaller,
) -> Result<Json<Vec<AuthorizerRow>>, ApiError> {
    let rows = sqlx::query_as::<_, AuthorizerRow>(
        "SELECT number, name, status FROM locker_authorizers WHERE status = 'active' ORDER BY number",
    )
    .fetch_all(&state.store.pool)
    .await?;
    Ok(Json(rows))
}

// ---------------------------------------------------------------------------------------------
// Users: login, reservations, listings

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user_number: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoggedIn {
    pub token: String,
    pub user_number: String,
    pub name: String,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/lockers/login", tag = "lockers", request_body = Login,
    responses((status = 200, body = LoggedIn), (status = 429, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: crate::qr::Client,
    body: JsonBody<Login>,
) -> Result<Json<LoggedIn>, ApiError> {
    check_login(&state, &body.value, client.ip).await.map(Json)
}

/// Checks a user number and password and issues a session token: what `POST /lockers/login`
/// answers, and what the phone pages' login turns into a cookie.
pub(crate) async fn check_login(
    state: &AppState,
    login: &Login,
    ip: std::net::IpAddr,
) -> Result<LoggedIn, ApiError> {
    let number = UserNumber::parse("user_number", &login.user_number)?;
    if let Err(wait) = state.lockers.login_limit.check(&number.to_string()) {
        return Err(ApiError::TooManyRequests {
            code: "too_many_login_attempts",
            message: "too many login attempts for this user number; wait and try again".into(),
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let refused = || {
        unprocessable(
            "invalid_credentials",
            "password",
            "the user number or password is wrong",
        )
    };
    let user = state
        .store
        .locker_users
        .load(number.as_str())
        .await?
        .unwrap_or_default();
    let hash = user.password_hash.clone();
    let password = login.password.clone();
    let ok = user.number.is_some()
        && state
            .lockers
            .password_work(move || verify_password(&password, &hash))
            .await?;
    if !ok {
        let why = match user.number {
            Some(_) => LoginRefusal::InvalidCredentials,
            None => LoginRefusal::UnknownUser,
        };
        login_events::refused(state, ip, &number, why).await?;
        return Err(refused());
    }
    if !user.is_active() {
        login_events::refused(state, ip, &number, LoginRefusal::UserDisabled).await?;
        return Err(unprocessable(
            "user_disabled",
            "user_number",
            "this user is disabled",
        ));
    }
    let subject = format!("{SUBJECT_PREFIX}{number}");
    let session = state.lockers.settings.session;
    let LoginToken { token, expires_at } =
        login_events::succeeded(state, &number, &subject, session).await?;
    Ok(LoggedIn {
        token,
        user_number: number.to_string(),
        name: user.name.map(|n| n.as_str().to_owned()).unwrap_or_default(),
        expires_at,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    pub site: String,
    pub size: String,
    /// RFC 3339; default now.
    pub window_start: Option<String>,
    /// RFC 3339; default now + the configured reservation length.
    pub expires_at: Option<String>,
}

#[utoipa::path(post, path = "/lockers/reservations", tag = "lockers", request_body = Reserve, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn reserve(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<Reserve>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = me(&actor)?;
    let site = SiteCode::parse("site", &body.value.site)?;
    let size = Size::parse("size", &body.value.size)?;
    let window_start = parse_time("window_start", &body.value.window_start)?;
    let now = state.clock.now();
    let expires_at = parse_time("expires_at", &body.value.expires_at)?
        .unwrap_or_else(|| window_start.unwrap_or(now) + state.lockers.settings.reservation);
    if !state.store.exists("locker_site", site.as_str()).await? {
        return Err(ApiError::NotFound {
            code: "site_not_found",
            message: format!("no site {}", site.as_str()),
        });
    }
    let candidates: Vec<(String,)> = sqlx::query_as(
        "SELECT compartment_id FROM locker_compartments
          WHERE site = $1 AND size = $2 AND status = 'free' ORDER BY number LIMIT 20",
    )
    .bind(site.as_str())
    .bind(size.as_str())
    .fetch_all(&state.store.pool)
    .await?;
    let ctx = meta.context(&actor, &body.raw);
    // A retry of a reservation that went through names the compartment it reserved then.
    if let Some(key) = &ctx.idempotency {
        let earlier: Option<(String,)> = sqlx::query_as(
            "SELECT aggregate_id FROM command_keys
              WHERE idempotency_key = $1 AND aggregate_type = 'locker_compartment'",
        )
        .bind(&key.key)
        .fetch_optional(&state.store.pool)
        .await?;
        if let Some((id,)) = earlier {
            let command = CompartmentCommand::Reserve {
                user: user.clone(),
                window_start,
                expires_at,
                at: now,
            };
            let done = state
                .store
                .compartments
                .execute(&id, command.name(), command, &ctx)
                .await?;
            if let Some(latch_domain::locker::CompartmentEvent::CompartmentReserved {
                holder,
                expires_at,
                ..
            }) = done.events.first()
            {
                return Ok((
                    StatusCode::CREATED,
                    Json(json!({
                        "compartment_id": id,
                        "size": size.as_str(),
                        "holder": holder.as_str(),
                        "expires_at": expires_at,
                    })),
                ));
            }
        }
    }
    for (id,) in candidates {
        let command = CompartmentCommand::Reserve {
            user: user.clone(),
            window_start,
            expires_at,
            at: now,
        };
        match state
            .store
            .compartments
            .execute(&id, command.name(), command, &ctx)
            .await
        {
            Ok(_) => {
                return Ok((
                    StatusCode::CREATED,
                    Json(json!({
                        "compartment_id": id,
                        "size": size.as_str(),
                        "holder": user.as_str(),
                        "expires_at": expires_at,
                    })),
                ))
            }
            Err(CommandError::Rejected(CompartmentError::NotFree)) => continue,
            Err(CommandError::Rejected(CompartmentError::BadWindow)) => {
                return Err(unprocessable(
                    "invalid_window",
                    "expires_at",
                    "the reservation must end after it starts and after now",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict {
        code: "no_free_compartment",
        message: format!("no free {} compartment at {}", size.as_str(), site.as_str()),
    })
}

#[utoipa::path(get, path = "/lockers/me/compartments", tag = "lockers",
    responses((status = 200, body = Vec<CompartmentRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn my_compartments(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
) -> Result<Json<Vec<CompartmentRow>>, ApiError> {
    let user = me(&actor)?;
    Ok(Json(
        model::held_by(&state.store.pool, user.as_str()).await?,
    ))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InboxItem {
    pub kind: String,
    pub grant_id: Option<Uuid>,
    pub compartment_id: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/lockers/me/inbox", tag = "lockers",
    responses((status = 200, body = Vec<InboxItem>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn my_inbox(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
) -> Result<Json<Vec<InboxItem>>, ApiError> {
    let user = me(&actor)?;
    let rows = sqlx::query_as::<_, InboxItem>(
        "SELECT kind, grant_id, compartment_id, message, created_at FROM locker_inbox
          WHERE recipient = $1 ORDER BY position DESC, kind LIMIT 100",
    )
    .bind(format!("user:{user}"))
    .fetch_all(&state.store.pool)
    .await?;
    Ok(Json(rows))
}

#[derive(Debug, Deserialize)]
pub struct HolderAt {
    pub at: Option<String>,
}

/// Who held a compartment at a moment (operators and auditors).
async fn holder_at(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HolderAt>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if actor.role != Role::Auditor {
        actor.require(Role::Operator)?;
    }
    let id = CompartmentId::parse("id", &id)?;
    let at = parse_time("at", &q.at)?.unwrap_or_else(|| state.clock.now());
    let holder = model::holder_at(&state.store.pool, &id.to_string(), at).await?;
    Ok(Json(
        json!({ "compartment_id": id.to_string(), "at": at, "holder": holder }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Deposit and collection

/// How a pickup code is kept: SHA-256 over the compartment and the code, hex.
fn pickup_hash(id: &CompartmentId, code: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{id}:{code}").as_bytes()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub parcel: String,
}

/// The holder deposits a parcel: recorded once, with a pickup code for the recipient.
async fn deposit(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Deposit>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = me(&actor)?;
    let id = CompartmentId::parse("id", &id)?;
    let parcel = latch_domain::locker::ParcelNumber::parse("parcel", &body.value.parcel)?;
    let code = format!("{:08}", rand::random::<u32>() % 100_000_000);
    let command = CompartmentCommand::Deposit {
        user,
        parcel: parcel.clone(),
        pickup_code_hash: pickup_hash(&id, &code),
        at: state.clock.now(),
    };
    let done = state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    if done.replayed {
        // The code was shown once; a retry cannot show it again.
        return Err(ApiError::Conflict {
            code: "already_deposited",
            message: "this deposit was already recorded; its pickup code was given then".into(),
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "compartment_id": id.to_string(),
            "parcel": parcel.as_str(),
            "status": "occupied",
            "pickup_code": code,
        })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    pub pickup_code: String,
}

/// The recipient collects with the pickup code; the compartment becomes free.
async fn collect(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Collect>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if actor.role != Role::Operator {
        me(&actor)?;
    }
    let id = CompartmentId::parse("id", &id)?;
    if let Err(wait) = state.lockers.login_limit.check(&format!("collect:{id}")) {
        return Err(ApiError::TooManyRequests {
            code: "too_many_pickup_attempts",
            message: "too many pickup attempts for this compartment; wait and try again".into(),
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let command = CompartmentCommand::Collect {
        pickup_code_hash: pickup_hash(&id, body.value.pickup_code.trim()),
        at: state.clock.now(),
    };
    match state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await
    {
        Ok(_) => Ok(Json(
            json!({ "compartment_id": id.to_string(), "status": "free" }),
        )),
        Err(CommandError::Rejected(CompartmentError::WrongPickupCode)) => Err(unprocessable(
            "wrong_pickup_code",
            "pickup_code",
            "the pickup code is wrong",
        )),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Grants

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantDirect {
    pub site: String,
    pub compartment: String,
    /// The receiver's user number.
    pub receiver: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantOutcome {
    pub grant_id: Uuid,
    pub compartment_id: String,
    pub status: String,
    pub holder: String,
}

/// The receiver must exist and be active.
async fn active_receiver(
    store: &Store,
    receiver: &UserNumber,
    field: &str,
) -> Result<LockerUser, ApiError> {
    match store.locker_users.load(receiver.as_str()).await? {
        None => Err(unprocessable(
            "receiver_not_found",
            field,
            format!("no user {receiver}"),
        )),
        Some(u) if !u.is_active() => Err(unprocessable(
            "receiver_disabled",
            field,
            format!("user {receiver} is disabled"),
        )),
        Some(u) => Ok(u),
    }
}

/// The compartment, which `holder` must hold now.
async fn held(
    store: &Store,
    id: &CompartmentId,
    holder: &UserNumber,
) -> Result<Compartment, ApiError> {
    let compartment = store
        .compartments
        .load(&id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "compartment_not_found",
            message: format!("no compartment {id}"),
        })?;
    if !compartment.held_by(holder) {
        return Err(ApiError::Conflict {
            code: "not_the_holder",
            message: format!("{holder} does not hold compartment {id}"),
        });
    }
    Ok(compartment)
}

#[utoipa::path(post, path = "/lockers/grants", tag = "lockers", request_body = GrantDirect, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = GrantOutcome), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn grant_direct(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<GrantDirect>,
) -> Result<(StatusCode, Json<GrantOutcome>), ApiError> {
    let holder = me(&actor)?;
    let id = CompartmentId::new(
        SiteCode::parse("site", &body.value.site)?,
        CompartmentNumber::parse("compartment", &body.value.compartment)?,
    );
    let receiver = UserNumber::parse("receiver", &body.value.receiver)?;
    if receiver == holder {
        return Err(unprocessable(
            "grant_to_self",
            "receiver",
            "a compartment cannot be granted to its own holder",
        ));
    }
    active_receiver(&state.store, &receiver, "receiver").await?;
    let compartment = held(&state.store, &id, &holder).await?;
    let ctx = meta.context(&actor, &body.raw);
    let now = state.clock.now();
    let command = CompartmentCommand::Grant {
        grant_id: Uuid::now_v7(),
        from: holder.clone(),
        to: receiver.clone(),
        via: None,
        at: now,
    };
    let done = state
        .store
        .compartments
        .execute(&id.to_string(), command.name(), command, &ctx)
        .await?;
    let grant_id = done
        .events
        .iter()
        .find_map(|e| match e {
            latch_domain::locker::CompartmentEvent::HolderChanged { grant_id, .. } => {
                Some(*grant_id)
            }
            _ => None,
        })
        .ok_or_else(|| ApiError::Internal("grant produced no holder change".into()))?;
    if !done.replayed {
        // The grant's own record; the compartment's holder has already changed.
        let system = CommandContext {
            idempotency: None,
            ..ctx.clone()
        };
        let request = GrantCommand::Request {
            grant_id,
            compartment: id.clone(),
            size: compartment.size.unwrap_or(Size::Medium),
            requester: holder.clone(),
            target: GrantTarget::Direct {
                receiver: receiver.clone(),
            },
            deadline: now + state.lockers.settings.grant_timeout,
            at: now,
        };
        state
            .store
            .grants
            .create(&grant_id.to_string(), request.name(), request, &system)
            .await?;
        let complete = GrantCommand::Complete { at: now };
        state
            .store
            .grants
            .execute(&grant_id.to_string(), complete.name(), complete, &system)
            .await?;
        notify_holder_changed(&state, grant_id, &id, &holder, &receiver, None).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(GrantOutcome {
            grant_id,
            compartment_id: id.to_string(),
            status: "completed".into(),
            holder: receiver.to_string(),
        }),
    ))
}

/// Publishes the notifications of a holder change on NATS (the inbox gets them from the log).
async fn notify_holder_changed(
    state: &AppState,
    grant_id: Uuid,
    id: &CompartmentId,
    from: &UserNumber,
    to: &UserNumber,
    via: Option<&AuthorizerNumber>,
) {
    let mut messages = vec![
        (
            format!("latch.lockers.notifications.{to}"),
            json!({ "kind": "come_use", "grant_id": grant_id, "compartment_id": id.to_string(),
                    "from": from.as_str(), "message": format!("{from} 已将格口 {id} 的使用权授予您，请前往投递") }),
        ),
        (
            format!("latch.lockers.notifications.{from}"),
            json!({ "kind": "grant_confirmed", "grant_id": grant_id, "compartment_id": id.to_string(),
                    "to": to.as_str(), "message": format!("格口 {id} 已授予 {to}") }),
        ),
    ];
    if let Some(a) = via {
        messages.push((
            format!("latch.authorizers.{a}.confirmations"),
            json!({ "kind": "grant_confirmed", "grant_id": grant_id, "site": id.site.as_str(),
                    "compartment": id.number.as_str(), "receiver": to.as_str(), "authorizer": a.as_str() }),
        ));
    }
    let text = format!("【Latch】{from} 已将格口 {id} 的使用权授予您，请前往投递");
    if let Err(e) = state.lockers.sms.send(to.as_str(), &text).await {
        tracing::warn!(phone = %to, error = %e, "SMS not sent");
    }
    for (subject, body) in messages {
        if let Err(e) = state
            .nats
            .publish(subject.clone(), body.to_string().into())
            .await
        {
            tracing::warn!(%subject, error = %e, "notification not published");
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantViaAuthorizer {
    pub site: String,
    pub compartment: String,
    /// The authorizer's number, e.g. `0001`.
    pub authorizer: String,
}

#[utoipa::path(post, path = "/lockers/grants/via-authorizer", tag = "lockers", request_body = GrantViaAuthorizer, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn grant_via_authorizer(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    body: JsonBody<GrantViaAuthorizer>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let holder = me(&actor)?;
    let id = CompartmentId::new(
        SiteCode::parse("site", &body.value.site)?,
        CompartmentNumber::parse("compartment", &body.value.compartment)?,
    );
    let number = AuthorizerNumber::parse("authorizer", &body.value.authorizer)?;
    active_authorizer(&state.store, &number, "authorizer").await?;
    let compartment = held(&state.store, &id, &holder).await?;
    let now = state.clock.now();
    let grant_id = Uuid::now_v7();
    let deadline = now + state.lockers.settings.grant_timeout;
    let command = GrantCommand::Request {
        grant_id,
        compartment: id.clone(),
        size: compartment.size.unwrap_or(Size::Medium),
        requester: holder.clone(),
        target: GrantTarget::Authorizer {
            authorizer: number.clone(),
        },
        deadline,
        at: now,
    };
    let done = state
        .store
        .grants
        .create(
            &grant_id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    // The grant-delivery worker sends the request from the logged event, not from here: a
    // crash after the commit must not lose it.
    let Some(latch_domain::locker::GrantEvent::GrantRequested {
        grant_id, deadline, ..
    }) = done.events.first().cloned()
    else {
        return Err(ApiError::Internal("grant request produced no event".into()));
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "grant_id": grant_id,
            "compartment_id": id.to_string(),
            "authorizer": number.as_str(),
            "status": "requested",
            "deadline": deadline,
        })),
    ))
}

async fn active_authorizer(
    store: &Store,
    number: &AuthorizerNumber,
    field: &str,
) -> Result<Authorizer, ApiError> {
    match store.authorizers.load(number.as_str()).await? {
        None => Err(ApiError::NotFound {
            code: "authorizer_not_found",
            message: format!("no authorizer {number}"),
        }),
        Some(a) if !a.is_active() => Err(unprocessable(
            "authorizer_inactive",
            field,
            format!("authorizer {number} is not active"),
        )),
        Some(a) => Ok(a),
    }
}

/// An authorizer's answer: `type` is `grant.accepted` or `grant.declined`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CallbackBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: CallbackData,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CallbackData {
    pub request_id: Uuid,
    pub site: String,
    pub compartment: String,
    /// The receiver's user number (accepted only).
    pub receiver: Option<String>,
    /// The authorizer's own number.
    pub authorizer: String,
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/lockers/authorizers/{number}/callback", tag = "lockers", request_body = CallbackBody,
    params(("number" = String, Path), ("webhook-id" = String, Header), ("webhook-timestamp" = String, Header), ("webhook-signature" = String, Header)),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn authorizer_callback(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let number = AuthorizerNumber::parse("number", &number)?;
    let authorizer = state
        .store
        .authorizers
        .load(number.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "authorizer_not_found",
            message: format!("no authorizer {number}"),
        })?;
    let signed = verify_signature(&authorizer.secret, &headers, &body, state.clock.now())?;
    let callback: CallbackBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
            code: "webhook_body_invalid",
            message: e.to_string(),
            field: Some("body".into()),
        })?;
    let data = &callback.data;
    if AuthorizerNumber::parse("data.authorizer", &data.authorizer)? != number {
        return Err(ApiError::Forbidden(
            "the callback names another authorizer".into(),
        ));
    }
    if !authorizer.is_active() {
        return Err(unprocessable(
            "authorizer_inactive",
            "data.authorizer",
            format!("authorizer {number} is not active"),
        ));
    }
    let id = CompartmentId::new(
        SiteCode::parse("data.site", &data.site)?,
        CompartmentNumber::parse("data.compartment", &data.compartment)?,
    );
    let grant_key = data.request_id.to_string();
    let grant = state
        .store
        .grants
        .load(&grant_key)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "grant_not_found",
            message: format!("no grant request {}", data.request_id),
        })?;
    if grant.compartment.as_ref() != Some(&id) {
        return Err(unprocessable(
            "compartment_mismatch",
            "data.compartment",
            "the callback names another compartment than the request",
        ));
    }
    let mut ctx = CommandContext::new(format!("authorizer:{number}"));
    ctx.idempotency = Some(IdempotencyKey::new(
        &format!("authorizer:{number}"),
        &signed.id,
        &body,
    ));
    let now = state.clock.now();
    let span =
        tracing::info_span!("authorizer_callback", authorizer = %number, webhook_id = %signed.id);
    let _guard = span.enter();
    match callback.kind.as_str() {
        "grant.declined" => {
            let command = GrantCommand::Decline {
                authorizer: number.clone(),
                reason: data.reason.clone().unwrap_or_default(),
                at: now,
            };
            state
                .store
                .grants
                .execute(&grant_key, command.name(), command, &ctx)
                .await?;
            Ok(Json(
                json!({ "grant_id": data.request_id, "status": "declined" }),
            ))
        }
        "grant.accepted" => {
            let raw = data.receiver.as_deref().ok_or_else(|| {
                ApiError::bad_request("invalid_field", "data.receiver", "is required")
            })?;
            let receiver = UserNumber::parse("data.receiver", raw)?;
            let requester = grant
                .requester
                .clone()
                .ok_or_else(|| ApiError::Internal("grant without requester".into()))?;
            // A replayed callback answers as the first did and changes nothing.
            if let Some(done) = replayed_outcome(&state, &ctx, &grant_key, &grant).await? {
                return Ok(done);
            }
            if grant.status != GrantStatus::Requested {
                return Err(ApiError::Conflict {
                    code: "grant_not_open",
                    message: format!("this grant request is {}", grant.status.as_str()),
                });
            }
            if receiver == requester {
                return Err(unprocessable(
                    "grant_to_self",
                    "data.receiver",
                    "a compartment cannot be granted to its own holder",
                ));
            }
            active_receiver(&state.store, &receiver, "data.receiver").await?;
            let compartment = state
                .store
                .compartments
                .load(&id.to_string())
                .await?
                .unwrap_or_default();
            if !compartment.held_by(&requester) || compartment.status != Status::Reserved {
                return Err(ApiError::Conflict {
                    code: "compartment_changed_hands",
                    message: format!("{requester} no longer holds compartment {id}"),
                });
            }
            let accept = GrantCommand::Accept {
                authorizer: number.clone(),
                receiver: receiver.clone(),
                at: now,
            };
            let accepted = state
                .store
                .grants
                .execute(&grant_key, accept.name(), accept, &ctx)
                .await?;
            if accepted.replayed {
                let grant = state
                    .store
                    .grants
                    .load(&grant_key)
                    .await?
                    .unwrap_or_default();
                return Ok(Json(outcome_json(data.request_id, &grant)));
            }
            let system = CommandContext {
                idempotency: None,
                ..ctx.clone()
            };
            let change = CompartmentCommand::Grant {
                grant_id: data.request_id,
                from: requester.clone(),
                to: receiver.clone(),
                via: Some(number.clone()),
                at: now,
            };
            match state
                .store
                .compartments
                .execute(&id.to_string(), change.name(), change, &system)
                .await
            {
                Ok(_) => {}
                Err(CommandError::Rejected(e)) => {
                    let fail = GrantCommand::Fail {
                        reason: e.code().to_owned(),
                        at: now,
                    };
                    state
                        .store
                        .grants
                        .execute(&grant_key, fail.name(), fail, &system)
                        .await?;
                    return Err(ApiError::Conflict {
                        code: "compartment_changed_hands",
                        message: e.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
            let complete = GrantCommand::Complete { at: now };
            state
                .store
                .grants
                .execute(&grant_key, complete.name(), complete, &system)
                .await?;
            notify_holder_changed(
                &state,
                data.request_id,
                &id,
                &requester,
                &receiver,
                Some(&number),
            )
            .await;
            Ok(Json(json!({
                "grant_id": data.request_id,
                "status": "completed",
                "compartment_id": id.to_string(),
                "holder": receiver.as_str(),
            })))
        }
        other => Err(ApiError::bad_request(
            "webhook_type_unknown",
            "type",
            format!("unknown callback type {other:?}"),
        )),
    }
}

/// Authorizers that subscribe instead of serving an endpoint may answer over NATS too: a
/// message on `latch.authorizers.{number}.answers` with the callback's body and its Standard
/// Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) is handled exactly
/// as the signed HTTP callback, and the outcome (or the error body) is the reply.
pub async fn serve_nats_answers(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    use futures::StreamExt;
    let mut answers = match state.nats.subscribe("latch.authorizers.*.answers").await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to authorizer answers");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = answers.next() => match m { Some(m) => m, None => return },
        };
        let Some(number) = message
            .subject
            .as_str()
            .strip_prefix("latch.authorizers.")
            .and_then(|r| r.strip_suffix(".answers"))
            .map(str::to_owned)
        else {
            continue;
        };
        let mut headers = HeaderMap::new();
        if let Some(h) = &message.headers {
            for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
                if let Some(v) = h
                    .get(name)
                    .and_then(|v| axum::http::HeaderValue::from_str(v.as_str()).ok())
                {
                    headers.insert(name, v);
                }
            }
        }
        let state = state.clone();
        tokio::spawn(async move {
            let body = Bytes::from(message.payload.to_vec());
            let reply = match authorizer_callback(State(state.clone()), Path(number), headers, body)
                .await
            {
                Ok(Json(v)) => v,
                Err(e) => serde_json::to_value(e.to_body().1).unwrap_or_default(),
            };
            if let Some(to) = message.reply {
                if let Err(e) = state.nats.publish(to, reply.to_string().into()).await {
                    tracing::warn!(error = %e, "answer reply not sent");
                }
            }
        });
    }
}

fn outcome_json(grant_id: Uuid, grant: &Grant) -> serde_json::Value {
    json!({
        "grant_id": grant_id,
        "status": grant.status.as_str(),
        "compartment_id": grant.compartment.as_ref().map(|c| c.to_string()),
        "holder": grant.receiver.as_ref().map(|r| r.to_string()),
    })
}

/// When this callback's webhook id was already handled, the grant as it stands.
async fn replayed_outcome(
    state: &AppState,
    ctx: &CommandContext,
    grant_key: &str,
    grant: &Grant,
) -> Result<Option<Json<serde_json::Value>>, ApiError> {
    let Some(key) = &ctx.idempotency else {
        return Ok(None);
    };
    let seen: Option<(Option<String>,)> =
        sqlx::query_as("SELECT fingerprint FROM command_keys WHERE idempotency_key = $1")
            .bind(&key.key)
            .fetch_optional(&state.store.pool)
            .await?;
    match seen {
        None => Ok(None),
        Some((fingerprint,)) if fingerprint.as_deref() == Some(key.fingerprint.as_str()) => {
            let id = Uuid::parse_str(grant_key).unwrap_or_default();
            Ok(Some(Json(outcome_json(id, grant))))
        }
        Some(_) => Err(ApiError::Unprocessable {
            code: "webhook_id_reused",
            message: "this webhook id was already used for a different callback".into(),
            field: Some("webhook-id".into()),
        }),
    }
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GrantRow {
    pub grant_id: Uuid,
    pub compartment_id: String,
    pub size: String,
    pub requester: String,
    pub kind: String,
    pub authorizer: Option<String>,
    pub receiver: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub deadline: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A grant request's state (its requester, or an operator).
#[utoipa::path(get, path = "/lockers/grants/{grant_id}", tag = "lockers", params(("grant_id" = Uuid, Path)),
    responses((status = 200, body = GrantRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_grant(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    Path(grant_id): Path<String>,
) -> Result<Json<GrantRow>, ApiError> {
    let grant_id = Uuid::parse_str(&grant_id)
        .map_err(|_| ApiError::bad_request("invalid_field", "grant_id", "must be a UUID"))?;
    let row: Option<GrantRow> = sqlx::query_as(
        "SELECT grant_id, compartment_id, size, requester, kind, authorizer, receiver, status, reason,
                deadline, requested_at, updated_at
           FROM grant_requests WHERE grant_id = $1",
    )
    .bind(grant_id)
    .fetch_optional(&state.store.pool)
    .await?;
    let not_found = || ApiError::NotFound {
        code: "grant_not_found",
        message: format!("no grant request {grant_id}"),
    };
    let row = row.ok_or_else(not_found)?;
    if actor.role != Role::Operator && me(&actor)?.as_str() != row.requester {
        return Err(not_found());
    }
    Ok(Json(row))
}

/// Expires unused reservations and unanswered grant requests that are due at the clock's now.
pub async fn sweep_once(store: &Store, clock: &SharedClock) -> Result<usize, sqlx::Error> {
    let now = clock.now();
    let mut done = 0;
    let due: Vec<(String,)> = sqlx::query_as(
        "SELECT compartment_id FROM locker_compartments
          WHERE status = 'reserved' AND expires_at <= $1 LIMIT 500",
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    let ctx = CommandContext::new("system:lockers-sweeper");
    for (id,) in due {
        let command = CompartmentCommand::Expire { at: now };
        match store
            .compartments
            .execute(&id, command.name(), command, &ctx)
            .await
        {
            Ok(e) => done += e.events.len(),
            Err(e) => tracing::warn!(compartment = %id, error = %e, "reservation not expired"),
        }
    }
    let due: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT grant_id FROM grant_requests WHERE status = 'requested' AND deadline <= $1 LIMIT 500",
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    for (id,) in due {
        let command = GrantCommand::Expire { at: now };
        match store
            .grants
            .execute(&id.to_string(), command.name(), command, &ctx)
            .await
        {
            Ok(e) => done += e.events.len(),
            Err(e) => tracing::warn!(grant = %id, error = %e, "grant request not expired"),
        }
    }
    Ok(done)
}

/// Runs [`sweep_once`] every `interval` until `shutdown`.
pub async fn run_sweeper(
    store: Arc<Store>,
    clock: SharedClock,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = sweep_once(&store, &clock).await {
            tracing::warn!(error = %e, "lockers sweep failed");
        }
    }
}
