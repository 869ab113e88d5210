//! Rate limits on QR login: minting per client IP, locking/confirming/cancelling per app user.
//!
//! governor's GCRA does the counting; it runs on the application's injected clock so tests move
//! time instead of sleeping. Limits are per process: behind several API instances each allows
//! its own share, which is the usual trade for keeping a poll path free of shared state.

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};
use latch_domain::clock::SharedClock;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::ops::Add;
use std::time::Duration;

/// Nanoseconds since the Unix epoch on the injected clock.
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct At(u64);

impl Add<Nanos> for At {
    type Output = Self;
    fn add(self, other: Nanos) -> Self {
        Self(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for At {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_sub(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.saturating_sub(duration.as_u64()))
    }
}

#[derive(Clone)]
pub struct InjectedClock(pub SharedClock);

impl Clock for InjectedClock {
    type Instant = At;
    fn now(&self) -> At {
        At(self
            .0
            .now()
            .timestamp_nanos_opt()
            .map_or(0, |n| n.max(0) as u64))
    }
}

type Keyed<K> = RateLimiter<
    K,
    governor::state::keyed::HashMapStateStore<K>,
    InjectedClock,
    governor::middleware::NoOpMiddleware<At>,
>;

/// A keyed limit of `per_minute` actions per key, bursting up to the same number.
pub struct Limit<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    clock: InjectedClock,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    pub fn per_minute(per_minute: u32, clock: SharedClock) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).expect("at least one");
        let clock = InjectedClock(clock);
        Self {
            limiter: RateLimiter::hashmap_with_clock(Quota::per_minute(n), clock.clone()),
            clock,
        }
    }

    /// `Err(wait)` when `key` is over its limit: how long until it may try again.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the state of keys that are back to full allowance.
    pub fn tidy(&self) {
        self.limiter.retain_recent();
    }
}
