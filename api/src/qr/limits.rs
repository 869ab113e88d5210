//! Rate limits with bounded state: minting per client IP, app actions per user, login and pickup
//! attempts (see `crate::lockers`), and global caps (a [`Limit`] keyed by `()`).
//!
//! Each key is a GCRA cell: one "theoretical arrival time" (TAT, nanoseconds on the injected
//! clock, so tests move time instead of sleeping). A key whose TAT has passed is back to full
//! allowance and carries no information, so it can be dropped at any time: [`Limit::tidy`] runs
//! on a timer, and a full map tidies itself before taking a new key.
//!
//! The map never holds more than `max_keys` keys. The keys come from the network (user numbers
//! anyone can type, IPv6 prefixes anyone with a /48 can vary), so without a cap 50,000 made-up
//! numbers meant 50,000 entries. When the map is full of keys that are all still counting, a new
//! key is refused (fail closed): the alternative, forgetting a counting key, would hand an
//! attacker a fresh allowance for every key they can make us forget.
//!
//! Limits are per process: behind several API instances each allows its own share, which is the
//! usual trade for keeping the hot paths free of shared state.

use latch_domain::clock::SharedClock;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Keys one limiter keeps at most unless told otherwise (~100 bytes each).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// A keyed limit of `per_minute` actions per key, bursting up to the same number.
pub struct Limit<K: Hash + Eq + Clone> {
    /// Nanoseconds one action costs (a minute divided by the quota).
    interval: u64,
    /// How far ahead of now a key's TAT may run and still be allowed: the burst.
    tolerance: u64,
    max_keys: usize,
    clock: SharedClock,
    cells: Mutex<HashMap<K, u64>>,
    /// Whether "table full" was logged since the last tidy (a flood would log it per request).
    full_logged: AtomicBool,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    pub fn per_minute(per_minute: u32, clock: SharedClock) -> Self {
        let n = u64::from(per_minute.max(1));
        let interval = 60_000_000_000 / n;
        Self {
            interval,
            tolerance: interval * (n - 1),
            max_keys: DEFAULT_MAX_KEYS,
            clock,
            cells: Mutex::new(HashMap::new()),
            full_logged: AtomicBool::new(false),
        }
    }

    /// Caps how many keys are kept at once.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    fn now(&self) -> u64 {
        self.clock
            .now()
            .timestamp_nanos_opt()
            .map_or(0, |n| n.max(0) as u64)
    }

    /// Counts one action for `key`; `Err(wait)` when it is over its limit (nothing counted):
    /// how long until it may try again.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = self.now();
        let mut cells = self.cells.lock().expect("limit lock");
        let tat = match cells.get(key) {
            Some(tat) => (*tat).max(now),
            None => {
                if cells.len() >= self.max_keys {
                    cells.retain(|_, tat| *tat > now);
                }
                if cells.len() >= self.max_keys {
                    if !self.full_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            keys = cells.len(),
                            "rate-limit table full; refusing new keys"
                        );
                    }
                    return Err(Duration::from_nanos(self.interval));
                }
                now
            }
        };
        if tat > now + self.tolerance {
            return Err(Duration::from_nanos(tat - now - self.tolerance));
        }
        cells.insert(key.clone(), tat + self.interval);
        Ok(())
    }

    /// Whether `key` has used any of its allowance recently (its state is still counting).
    pub fn is_counting(&self, key: &K) -> bool {
        let now = self.now();
        self.cells
            .lock()
            .expect("limit lock")
            .get(key)
            .is_some_and(|tat| *tat > now)
    }

    /// Drops the state of keys that are back to full allowance.
    pub fn tidy(&self) {
        let now = self.now();
        let mut cells = self.cells.lock().expect("limit lock");
        cells.retain(|_, tat| *tat > now);
        self.full_logged.store(false, Ordering::Relaxed);
        if cells.capacity() > 4 * cells.len().max(1024) {
            cells.shrink_to_fit();
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.cells.lock().expect("limit lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use latch_domain::clock::ManualClock;
    use std::sync::Arc;

    fn clock() -> ManualClock {
        ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
    }

    #[test]
    fn bursts_to_the_quota_then_refills_one_interval_at_a_time() {
        let c = clock();
        let limit = Limit::per_minute(5, Arc::new(c.clone()));
        for _ in 0..5 {
            assert!(limit.check(&"a").is_ok());
        }
        let wait = limit.check(&"a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(12));
        assert!(limit.check(&"b").is_ok(), "keys are independent");
        c.advance(chrono::Duration::seconds(12));
        assert!(limit.check(&"a").is_ok());
        assert!(limit.check(&"a").is_err());
    }

    #[test]
    fn state_stays_bounded_whatever_the_keys() {
        let c = clock();
        let limit = Limit::per_minute(5, Arc::new(c.clone())).with_max_keys(1000);
        let mut refused = 0;
        for i in 0..50_000u32 {
            if limit.check(&i).is_err() {
                refused += 1;
            }
        }
        assert_eq!(limit.len(), 1000);
        assert_eq!(refused, 49_000, "a full table refuses new keys");
        // Once their allowance is back, the keys go and new ones are taken.
        c.advance(chrono::Duration::seconds(13));
        assert!(limit.check(&60_000).is_ok());
        assert_eq!(limit.len(), 1);
        limit.tidy();
        assert!(limit.len() <= 1);
    }
}
