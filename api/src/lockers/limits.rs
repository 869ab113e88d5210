//! What one caller may ask of the lockers, and how often: password logins (per user number,
//! per client IP or IPv6 /64, and for the whole process, since each costs an argon2 hash),
//! reservations (how long, how many held at once, how often), grant requests (per user and per
//! compartment) and pickup attempts (per caller, and globally for callers who have been wrong).
//!
//! Every limiter's table is capped ([`Limit::with_max_keys`]) and tidied on a timer, so keys
//! that come from the network (user numbers anyone can type) cannot grow memory.

use super::{me, LockerSettings};
use crate::auth::Actor;
use crate::error::ApiError;
use crate::qr::limits::Limit;
use chrono::{DateTime, Utc};
use latch_domain::clock::SharedClock;
use latch_domain::locker::{CompartmentId, UserNumber};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long a reservation made here is counted against its holder even before the read model
/// shows it (the projection lags the commit by milliseconds; this covers a slow one).
const RECENT: chrono::Duration = chrono::Duration::seconds(30);

/// One user's reservations made here lately: (compartment or pending place, when).
type Recent = Vec<(String, DateTime<Utc>)>;

pub struct LockerLimits {
    login_per_number: Limit<String>,
    login_per_ip: Limit<IpAddr>,
    login_global: Limit<()>,
    reserve_per_user: Limit<String>,
    grant_per_user: Limit<String>,
    grant_per_compartment: Limit<String>,
    pickup_per_caller: Limit<String>,
    /// Callers with a wrong pickup code recently: only they count against the global budget,
    /// so a crowd of guessers cannot lock out a recipient who types the right code.
    pickup_wrong: Limit<String>,
    pickup_global: Limit<()>,
    /// Reservations made by this process lately, per user: (compartment, when).
    recent: Mutex<HashMap<String, Recent>>,
    clock: SharedClock,
}

/// A place held by [`LockerLimits::hold_slot`]; given back when dropped unless a compartment
/// was reserved in it.
pub struct Slot<'a> {
    limits: &'a LockerLimits,
    user: String,
    pending: String,
}

impl Slot<'_> {
    /// The reservation went through: the place now names its compartment.
    pub fn reserved(self, compartment: &str) {
        let mut recent = self.limits.recent.lock().expect("recent lock");
        if let Some(entry) = recent
            .get_mut(&self.user)
            .and_then(|list| list.iter_mut().find(|(id, _)| *id == self.pending))
        {
            entry.0 = compartment.to_owned();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut recent = self.limits.recent.lock().expect("recent lock");
        if let Some(list) = recent.get_mut(&self.user) {
            list.retain(|(id, _)| *id != self.pending);
        }
    }
}

fn too_many(code: &'static str, message: &str, wait: Duration) -> ApiError {
    ApiError::TooManyRequests {
        code,
        message: message.into(),
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

impl LockerLimits {
    pub fn new(s: &LockerSettings, clock: SharedClock) -> Self {
        let limit = |n: u32| Limit::per_minute(n, clock.clone()).with_max_keys(s.limiter_max_keys);
        Self {
            login_per_number: limit(s.login_attempts_per_minute),
            login_per_ip: Limit::per_minute(s.login_attempts_per_minute_per_ip, clock.clone())
                .with_max_keys(s.limiter_max_keys),
            login_global: Limit::per_minute(s.login_attempts_per_minute_global, clock.clone()),
            reserve_per_user: limit(s.reservations_per_minute_per_user),
            grant_per_user: limit(s.grants_per_minute_per_user),
            grant_per_compartment: limit(s.grants_per_minute_per_compartment),
            pickup_per_caller: limit(s.pickup_attempts_per_minute_per_user),
            pickup_wrong: limit(s.pickup_attempts_per_minute_per_user),
            pickup_global: Limit::per_minute(s.pickup_attempts_per_minute_global, clock.clone()),
            recent: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// A login attempt: per client (IP, or IPv6 /64), then for the process, then per number.
    /// The per-number table is reached only by attempts the first two let through, so made-up
    /// numbers add keys no faster than the global rate.
    pub fn login(&self, ip: IpAddr, number: &UserNumber) -> Result<(), ApiError> {
        self.login_per_ip
            .check(&crate::edge::limit_key(ip))
            .map_err(|w| {
                too_many(
                    "too_many_login_attempts",
                    "too many login attempts from this address; wait and try again",
                    w,
                )
            })?;
        self.login_global.check(&()).map_err(|w| {
            too_many(
                "login_busy",
                "too many login attempts right now; wait and try again",
                w,
            )
        })?;
        self.login_per_number
            .check(&number.to_string())
            .map_err(|w| {
                too_many(
                    "too_many_login_attempts",
                    "too many login attempts for this user number; wait and try again",
                    w,
                )
            })
    }

    /// A reservation request by `user`.
    pub fn reserve(&self, user: &UserNumber) -> Result<(), ApiError> {
        self.reserve_per_user.check(&user.to_string()).map_err(|w| {
            too_many(
                "too_many_reservation_requests",
                "too many reservation requests; wait and try again",
                w,
            )
        })
    }

    /// A place for one more compartment held by `user`, who holds `projected` per the read
    /// model, unless that makes more than `cap`. The place counts at once (so concurrent
    /// requests of one user cannot all pass the check), and, once [`Slot::reserved`] names the
    /// compartment, for a while after, until the read model surely shows it.
    pub fn hold_slot(
        &self,
        user: &UserNumber,
        projected: &[String],
        cap: usize,
    ) -> Option<Slot<'_>> {
        let now = self.clock.now();
        let mut recent = self.recent.lock().expect("recent lock");
        let list = recent.entry(user.to_string()).or_default();
        list.retain(|(_, at)| now - *at < RECENT);
        let mut all: Vec<&str> = projected.iter().map(String::as_str).collect();
        all.extend(list.iter().map(|(id, _)| id.as_str()));
        all.sort_unstable();
        all.dedup();
        if all.len() >= cap {
            return None;
        }
        let pending = format!("pending:{:032x}", rand::random::<u128>());
        list.push((pending.clone(), now));
        Some(Slot {
            limits: self,
            user: user.to_string(),
            pending,
        })
    }

    /// A grant request (direct or through an authorizer) by `user` for `compartment`.
    pub fn grant(&self, user: &UserNumber, compartment: &CompartmentId) -> Result<(), ApiError> {
        self.grant_per_user.check(&user.to_string()).map_err(|w| {
            too_many(
                "too_many_grant_requests",
                "too many grant requests from this user; wait and try again",
                w,
            )
        })?;
        self.grant_per_compartment
            .check(&compartment.to_string())
            .map_err(|w| {
                too_many(
                    "too_many_grant_requests",
                    "too many grant requests for this compartment; wait and try again",
                    w,
                )
            })
    }

    /// A pickup attempt by `actor`. Counted per caller; callers who were wrong lately also
    /// draw on one budget for the process. Nothing is counted per compartment: that would let
    /// any stranger's wrong guesses lock the recipient out.
    pub fn pickup(&self, actor: &Actor) -> Result<(), ApiError> {
        let caller = match me(actor) {
            Ok(user) => user.to_string(),
            Err(_) => actor.subject.clone(),
        };
        self.pickup_per_caller.check(&caller).map_err(|w| {
            too_many(
                "too_many_pickup_attempts",
                "too many pickup attempts; wait and try again",
                w,
            )
        })?;
        if self.pickup_wrong.is_counting(&caller) {
            self.pickup_global.check(&()).map_err(|w| {
                too_many(
                    "pickup_attempts_busy",
                    "too many wrong pickup codes are being tried right now; wait and try again",
                    w,
                )
            })?;
        }
        Ok(())
    }

    /// A wrong pickup code from `actor`: from now on their attempts count globally too.
    pub fn pickup_was_wrong(&self, actor: &Actor) {
        let caller = match me(actor) {
            Ok(user) => user.to_string(),
            Err(_) => actor.subject.clone(),
        };
        let _ = self.pickup_wrong.check(&caller);
    }

    /// Drops state nobody needs any more (called on a timer).
    pub fn tidy(&self) {
        for limit in [
            &self.login_per_number,
            &self.reserve_per_user,
            &self.grant_per_user,
            &self.grant_per_compartment,
            &self.pickup_per_caller,
            &self.pickup_wrong,
        ] {
            limit.tidy();
        }
        self.login_per_ip.tidy();
        self.login_global.tidy();
        self.pickup_global.tidy();
        let now = self.clock.now();
        self.recent.lock().expect("recent lock").retain(|_, list| {
            list.retain(|(_, at)| now - *at < RECENT);
            !list.is_empty()
        });
    }

    /// Keys held by each limiter table, by name (for tests and diagnostics).
    pub fn sizes(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("login_per_number", self.login_per_number.len()),
            ("login_per_ip", self.login_per_ip.len()),
            ("login_global", self.login_global.len()),
            ("reserve_per_user", self.reserve_per_user.len()),
            ("grant_per_user", self.grant_per_user.len()),
            ("grant_per_compartment", self.grant_per_compartment.len()),
            ("pickup_per_caller", self.pickup_per_caller.len()),
            ("pickup_wrong", self.pickup_wrong.len()),
            (
                "recent_reservations",
                self.recent.lock().expect("recent lock").len(),
            ),
        ]
    }
}
