//! Bearer-token sessions. Every endpoint names the role it needs; nobody acts on what is not
//! theirs.
//!
//! Tokens are 256 random bits shown once at issue; only their SHA-256 is stored. Every request
//! looks its token up in Postgres (one primary-key read), never in a per-process cache: a
//! revocation from any process (a logout, `latch token revoke`, a disabled locker user) takes
//! effect on the very next request everywhere. A revoked or expired token is refused with its
//! own code (`token_revoked`, `token_expired`), an unknown one with `unauthorized`.

use crate::error::ApiError;
use crate::qr::limits::Limit;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Method};
use chrono::{DateTime, Utc};
use latch_domain::clock::SharedClock;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    User,
    Auditor,
    Device,
    /// A locker's own screen (`latch token --role kiosk --subject kiosk:<site>`): collects
    /// parcels by pickup code at that one site, nothing else.
    Kiosk,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::User => "user",
            Self::Auditor => "auditor",
            Self::Device => "device",
            Self::Kiosk => "kiosk",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "operator" => Some(Self::Operator),
            "user" => Some(Self::User),
            "auditor" => Some(Self::Auditor),
            "device" => Some(Self::Device),
            "kiosk" => Some(Self::Kiosk),
            _ => None,
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    pub subject: String,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.subject)
    }
}

impl Actor {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role",
                role.as_str()
            )))
        }
    }
}

/// The cookie a redeemed QR login leaves in the browser: a token like any other, which ends.
pub const SESSION_COOKIE: &str = "latch_session";

pub struct Auth {
    pool: PgPool,
    clock: SharedClock,
    /// How many refusals of logins for numbers nobody holds are recorded per client IP: anyone
    /// can try any number, and each recorded attempt is an event kept forever.
    anonymous_refusals: Limit<IpAddr>,
    refusals_seen: AtomicU64,
}

/// Login refusals for unknown user numbers recorded per client IP per minute; more are
/// answered the same but only logged.
pub const ANONYMOUS_REFUSALS_PER_MINUTE_PER_IP: u32 = 30;

impl Auth {
    pub fn new(pool: PgPool, clock: SharedClock) -> Self {
        Self {
            pool,
            anonymous_refusals: Limit::per_minute(
                ANONYMOUS_REFUSALS_PER_MINUTE_PER_IP,
                clock.clone(),
            ),
            refusals_seen: AtomicU64::new(0),
            clock,
        }
    }

    /// Whether a refusal no account can be held to (an unknown user number) may be recorded for
    /// this client now.
    pub fn admit_anonymous_refusal(&self, ip: IpAddr) -> bool {
        // The limiter keeps a key per client; forget those back at full allowance now and then.
        if self.refusals_seen.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.anonymous_refusals.tidy();
        }
        self.anonymous_refusals
            .check(&crate::edge::limit_key(ip))
            .is_ok()
    }

    pub async fn authenticate(&self, token: &str) -> Result<Actor, ApiError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        type Row = (String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT role, subject, expires_at, revoked_at FROM api_tokens WHERE token_hash = $1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let (role, subject, expires, revoked) = row.ok_or(ApiError::Unauthorized)?;
        if revoked.is_some() {
            return Err(ApiError::TokenRefused {
                code: "token_revoked",
                message: "this token has been revoked; log in again".into(),
            });
        }
        if expires.is_some_and(|e| self.clock.now() >= e) {
            return Err(ApiError::TokenRefused {
                code: "token_expired",
                message: "this token has expired; log in again".into(),
            });
        }
        Ok(Actor {
            role: Role::parse(&role).ok_or(ApiError::Unauthorized)?,
            subject,
        })
    }

    /// Revokes a token (a logout). Every process refuses it from the next request on.
    pub async fn revoke(&self, token: &str) -> Result<(), sqlx::Error> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Revokes every live token of `role` held by `subject` (a disabled locker user's sessions);
/// answers how many. Takes effect on the next request in every process.
pub async fn revoke_all_of(pool: &PgPool, role: Role, subject: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() \
         WHERE subject = $1 AND role = $2 AND revoked_at IS NULL",
    )
    .bind(subject)
    .bind(role.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Revokes the credential named `token_id` (`latch token revoke`); answers whether a live one
/// was found.
pub async fn revoke_by_id(pool: &PgPool, token_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// A token just minted: the secret shown once to its holder, the hash it is stored under, and
/// the id that names it in the log (never the token or its hash, which could log someone in).
pub struct NewToken {
    pub token: String,
    pub token_id: Uuid,
    hash: [u8; 32],
}

impl NewToken {
    /// 256 random bits under a fresh UUIDv7 id.
    pub fn generate() -> Self {
        Self::with_id(Uuid::now_v7())
    }

    /// A new secret for an id already chosen (and recorded by the command that issues it).
    pub fn with_id(token_id: Uuid) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("lt_{}", hex::encode(secret));
        let hash = Sha256::digest(token.as_bytes()).into();
        Self {
            token,
            token_id,
            hash,
        }
    }

    /// Stores the credential, after the event that records its issue: a crash in between
    /// leaves a recorded token nobody holds, never a working token the log does not know.
    pub async fn store(
        &self,
        pool: &PgPool,
        role: Role,
        subject: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, token_id, role, subject, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&self.hash[..])
        .bind(self.token_id)
        .bind(role.as_str())
        .bind(subject)
        .bind(expires_at)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// The live credential a token stands for, named by its id (for a revocation's event).
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub token_id: Uuid,
    pub actor: Actor,
}

impl Auth {
    /// The unrevoked credential behind `token`, if any (expired ones too: a logout after expiry
    /// still revokes).
    pub async fn lookup(&self, token: &str) -> Result<Option<LiveToken>, sqlx::Error> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT token_id, role, subject FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(token_id, role, subject)| {
            Some(LiveToken {
                token_id,
                actor: Actor {
                    role: Role::parse(&role)?,
                    subject,
                },
            })
        }))
    }
}

/// A credential for test and bench fixtures only: stored WITHOUT an event, so set-ups do not
/// shift the log positions the tests and benches assert on. Everything that serves a person
/// (`latch token`, `latch dev`, logins, QR sessions) records its token: see
/// [`crate::tokens::provision`] and [`crate::tokens`].
pub async fn issue_token(pool: &PgPool, role: Role, subject: &str) -> Result<String, sqlx::Error> {
    let new = NewToken::generate();
    new.store(pool, role, subject, None).await?;
    Ok(new.token)
}

impl<S> FromRequestParts<S> for Actor
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 200)
            .ok_or(ApiError::Unauthorized)?;
        Arc::<Auth>::from_ref(state).authenticate(token).await
    }
}

/// A cookie-authenticated write (anything but GET and HEAD) must carry this header (any value).
/// A cross-site form cannot send it, so a browser's cookie cannot be ridden into a change.
pub const CLIENT_HEADER: &str = "x-latch-client";

/// A caller who may authenticate by Bearer header or by one browser cookie: which cookie, and
/// what the authenticated token must be to count as this caller.
///
/// The rules every such caller shares live in [`bearer_or_cookie`]; an implementation only
/// names its cookie and checks the actor, and its `FromRequestParts` is one line.
pub trait CookieCaller: Sized {
    /// The one cookie accepted for this caller; other cookies on the request are ignored, so a
    /// shopper's session on the same phone is never taken for a locker user's.
    const COOKIE: &'static str;

    /// The caller an authenticated token stands for, or why it does not. `by_cookie` says which
    /// door it came in by: some callers take any Bearer token (the handler checks the role) but
    /// only their own kind of session in their cookie.
    fn admit(actor: Actor, by_cookie: bool) -> Result<Self, ApiError>;
}

/// Authenticates a [`CookieCaller`]: the Bearer header first (a request that has one is never
/// judged by its cookies); otherwise the caller's cookie, where a write also needs
/// [`CLIENT_HEADER`] (checked before the token, so a forged cross-site write learns nothing).
pub async fn bearer_or_cookie<C, S>(parts: &mut Parts, state: &S) -> Result<C, ApiError>
where
    C: CookieCaller,
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    if parts.headers.contains_key(header::AUTHORIZATION) {
        let actor = Actor::from_request_parts(parts, state).await?;
        return C::admit(actor, false);
    }
    let writes = !matches!(parts.method, Method::GET | Method::HEAD);
    if writes && !parts.headers.contains_key(CLIENT_HEADER) {
        return Err(ApiError::Forbidden(format!(
            "a cookie-authenticated change needs the {CLIENT_HEADER} header"
        )));
    }
    let token = axum_extra::extract::CookieJar::from_headers(&parts.headers)
        .get(C::COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .ok_or(ApiError::Unauthorized)?;
    let actor = Arc::<Auth>::from_ref(state).authenticate(&token).await?;
    C::admit(actor, true)
}

/// The caller of a read-only page endpoint: a Bearer token, or the browser's session cookie.
///
/// Commands take [`Actor`] (Bearer only), so a cookie can never be ridden cross-site into a
/// state change.
pub struct SessionActor(pub Actor);

impl CookieCaller for SessionActor {
    const COOKIE: &'static str = SESSION_COOKIE;

    fn admit(actor: Actor, _by_cookie: bool) -> Result<Self, ApiError> {
        Ok(Self(actor))
    }
}

impl<S> FromRequestParts<S> for SessionActor
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        bearer_or_cookie(parts, state).await
    }
}
