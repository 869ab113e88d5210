//! Shared parcel lockers over HTTP. Each module holds one room of the house:
//!
//! - [`sites`]: operators install sites, compartments and their doors; who held one when.
//! - [`users`]: operators register, disable and enable locker users; users log in with their user
//!   number and password (argon2 on [`passwords`]' threads; failures rate limited per user
//!   number) and get a bearer token for `locker:{number}` with the user role (the phone pages get
//!   the same token in an HttpOnly cookie, see [`crate::locker_pages`]).
//! - [`authorizers`]: third-party authorizers (courier companies).
//! - [`reservations`]: a user reserves a compartment by size, lists what they hold, reads their
//!   inbox.
//! - [`parcels`]: the holder's deposit, the recipient's collection.
//! - [`grants`]: handing a compartment on, directly or through an authorizer, and each grant's
//!   state.
//! - [`callback`]: an authorizer's signed answer (over HTTP here, over NATS through
//!   `latch_workers::authorizer_answers`).
//! - [`sms`]: what the sandbox SMS gateway was asked to send.
//!
//! One request, one command: every handler validates what it can see (receiver exists and is
//! active, authorizer active, the compartment held by the requester) and then executes exactly
//! one command. What follows from its event runs in `latch-workers` from the log: the grant
//! process (accepted grant -> holder change -> completion, or failure), the lockers notifier
//! (SMS and NATS notices), grant-request delivery to authorizers, the sweeper (expiries). The
//! compartment aggregate refuses anyone but the current holder, which settles racing grants.

pub mod authorizers;
pub mod callback;
pub mod grants;
pub mod limits;
pub mod parcels;
pub mod passwords;
pub mod reservations;
pub mod sites;
pub mod sms;
pub mod users;

use crate::auth::{Actor, Role};
use crate::error::{from_command_error, ApiError};
use crate::AppState;
use authorizers::*;
use axum::routing::{get, post};
use axum::Router;
use callback::*;
use chrono::{DateTime, Utc};
use grants::*;
use latch_domain::clock::SharedClock;
use latch_domain::locker::{
    AuthorizerError, CompartmentError, GrantError, SiteError, UserError, UserNumber,
};
use latch_domain::store::CommandError;
use parcels::*;
pub use parcels::{PickupPepper, DEVELOPMENT_PICKUP_PEPPER};
pub use passwords::hash_password;
use passwords::PasswordJob;
use reservations::*;
use sites::*;
use sms::*;
use std::time::Duration;
use users::*;

/// How a locker user's bearer subject starts.
pub const SUBJECT_PREFIX: &str = "locker:";

/// How a kiosk token's subject starts: `kiosk:<site>` (see [`crate::kiosk_pages`]).
pub const KIOSK_PREFIX: &str = "kiosk:";

/// The site a kiosk token is for (`None` for any other caller).
pub fn kiosk_site(actor: &Actor) -> Option<&str> {
    if actor.role != Role::Kiosk {
        return None;
    }
    actor.subject.strip_prefix(KIOSK_PREFIX)
}

/// Tunables of the lockers API.
#[derive(Debug, Clone)]
pub struct LockerSettings {
    /// Login attempts per user number per minute (successes count too).
    pub login_attempts_per_minute: u32,
    /// Login attempts per client IP (IPv6: per /64) per minute.
    pub login_attempts_per_minute_per_ip: u32,
    /// Login attempts per minute for the whole process (each costs an argon2 hash).
    pub login_attempts_per_minute_global: u32,
    /// Longest a reservation may run from now (`expires_at` beyond it is refused).
    pub reservation_max: chrono::Duration,
    /// Compartments one user may hold at once.
    pub reservations_per_user: usize,
    /// Reservation requests per user per minute.
    pub reservations_per_minute_per_user: u32,
    /// Grant requests (direct or through an authorizer) per user per minute.
    pub grants_per_minute_per_user: u32,
    /// Grant requests per compartment per minute.
    pub grants_per_minute_per_compartment: u32,
    /// Pickup attempts per caller per minute.
    pub pickup_attempts_per_minute_per_user: u32,
    /// Pickup attempts per minute, for the whole process, by callers who were wrong lately.
    pub pickup_attempts_per_minute_global: u32,
    /// Keys each rate-limit table keeps at most.
    pub limiter_max_keys: usize,
    /// How long a login token lasts.
    pub session: chrono::Duration,
    /// How long an authorizer has to answer a grant request.
    pub grant_timeout: chrono::Duration,
    /// A reservation's default length when the request names no end.
    pub reservation: chrono::Duration,
    /// Pauses between grant-request webhook attempts (the grant-delivery role): one attempt,
    /// then one more after each pause, then the request is dead-lettered.
    pub webhook_backoff: Vec<Duration>,
    /// Server-side key of the pickup codes' MAC (`LATCH_PICKUP_PEPPER`). Changing it voids the
    /// codes of parcels not yet collected.
    pub pickup_pepper: PickupPepper,
}

impl Default for LockerSettings {
    fn default() -> Self {
        Self {
            login_attempts_per_minute: 5,
            login_attempts_per_minute_per_ip: 60,
            login_attempts_per_minute_global: 600,
            reservation_max: chrono::Duration::days(7),
            reservations_per_user: 10,
            reservations_per_minute_per_user: 20,
            grants_per_minute_per_user: 20,
            grants_per_minute_per_compartment: 10,
            pickup_attempts_per_minute_per_user: 10,
            pickup_attempts_per_minute_global: 300,
            limiter_max_keys: crate::qr::limits::DEFAULT_MAX_KEYS,
            session: chrono::Duration::hours(12),
            grant_timeout: chrono::Duration::minutes(5),
            reservation: chrono::Duration::hours(2),
            webhook_backoff: latch_domain::locker::DEFAULT_WEBHOOK_BACKOFF_SECS
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            pickup_pepper: PickupPepper::development(),
        }
    }
}

/// Per-process state of the lockers API.
pub struct Lockers {
    pub settings: LockerSettings,
    /// Rate limits and caps (see [`limits`]).
    pub limits: limits::LockerLimits,
    /// Argon2 takes ~19 MiB and a core's worth of time per hash. On tokio's blocking threads a
    /// burst of logins ran one hash per thread, and the allocator kept an arena of that size per
    /// thread afterwards (2 GiB after 129 registrations; still 770 MiB with the hashes merely
    /// limited to one per core, as the pool kept moving them to fresh threads). So they run on a
    /// few threads of their own, one per core, whose memory is reused from hash to hash; the
    /// rest queue.
    password_work: tokio::sync::mpsc::Sender<PasswordJob>,
}

impl Lockers {
    pub fn new(settings: LockerSettings, clock: SharedClock) -> Self {
        let password_work = passwords::password_threads();
        // Make the dummy hash now, so the first unknown user's login is not the one to pay.
        let _ = password_work.try_send(Box::new(|| {
            passwords::dummy_hash();
        }));
        Self {
            limits: limits::LockerLimits::new(&settings, clock),
            settings,
            password_work,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lockers/sites", post(register_site).get(list_sites))
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
        .route("/lockers/grants", post(grant_direct).get(open_grants))
        .route("/lockers/grants/via-authorizer", post(grant_via_authorizer))
        .route("/lockers/grants/{grant_id}", get(show_grant))
        .route("/lockers/compartments/{id}/holder", get(holder_at))
        .route("/lockers/compartments/{id}/deposit", post(deposit))
        .route("/lockers/compartments/{id}", get(show_compartment))
        .route("/lockers/compartments/{id}/door", post(wire_door))
        .route("/lockers/sandbox/sms", get(sandbox_sms))
        .route("/lockers/compartments/{id}/collect", post(collect))
}

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
