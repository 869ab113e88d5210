//! The page side of QR login, in memory: each login's stream folded into a [`QrLogin`] that
//! polls read and push channels watch.
//!
//! Polls come every two seconds from every open login page, and the push channel must show a
//! scan within milliseconds, so neither can wait on a Postgres read model. Instead each API
//! process keeps the logins its pages ask about, folded from the event store and kept current
//! from the EVENTS stream (core NATS subscription on `latch.events.qr_login.>`).
//!
//! No event may slip between the load and the subscription. An entry is created *before* its
//! stream is read; events arriving meanwhile wait in the entry and are applied after the load
//! by aggregate sequence, so an event committed after the read is never lost and one already
//! folded is never applied twice. A sequence gap (a message NATS dropped) reloads the stream.
//! While NATS is disconnected the live logins are re-read from Postgres every second, and once
//! more when it is back, since core subscriptions do not replay what they missed.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::clock::SharedClock;
use latch_domain::qr_login::{LoginId, QrLogin, QrLoginEvent};
use latch_projections::LoggedEvent;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A login as far as this process knows it: the fold and the last aggregate sequence in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub login: QrLogin,
    pub sequence: i64,
}

impl Snapshot {
    fn apply(&mut self, sequence: i64, event: QrLoginEvent) {
        self.login.apply(event);
        self.sequence = sequence;
    }
}

#[derive(Default)]
struct Entry {
    ready: OnceCell<watch::Sender<Snapshot>>,
    /// Events that arrived before the load finished, by aggregate sequence.
    pending: Mutex<Vec<(i64, QrLoginEvent)>>,
    /// When this login's page last polled (the seed asks pages to poll every 2-3 s at most).
    last_poll: Mutex<Option<DateTime<Utc>>>,
    /// Push channels open on this login (see [`Hub::claim_socket`]).
    sockets: AtomicUsize,
}

/// One push channel's place on its login; given back when dropped.
pub struct SocketClaim(Arc<Entry>);

impl Drop for SocketClaim {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Hub {
    pool: PgPool,
    clock: SharedClock,
    entries: Mutex<HashMap<Uuid, Arc<Entry>>>,
}

/// How long a finished or abandoned login stays in memory after its deadline.
const KEEP_AFTER_DEADLINE: chrono::Duration = chrono::Duration::minutes(5);

impl Hub {
    pub fn new(pool: PgPool, clock: SharedClock) -> Self {
        Self {
            pool,
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, id: LoginId) -> Arc<Entry> {
        self.entries
            .lock()
            .expect("hub lock")
            .entry(id.as_uuid())
            .or_default()
            .clone()
    }

    /// Records a login this process has just minted, so its page is answered without a read.
    pub fn insert_minted(&self, id: LoginId, events: Vec<QrLoginEvent>) {
        let entry = self.entry(id);
        let mut snapshot = Snapshot::default();
        for (i, e) in events.into_iter().enumerate() {
            snapshot.apply(i as i64 + 1, e);
        }
        let pending = entry.pending.lock().expect("pending lock");
        let _ = entry.ready.set(watch::Sender::new(snapshot));
        drop(pending);
        self.drain(&entry);
    }

    /// The login's channel, loading it from the event store the first time. `None` when no such
    /// login exists (nothing is kept for it, so random ids cannot fill memory).
    pub async fn watch(
        &self,
        id: LoginId,
    ) -> Result<Option<watch::Receiver<Snapshot>>, sqlx::Error> {
        let entry = self.entry(id);
        let sender = entry
            .ready
            .get_or_try_init(|| async {
                let snapshot = load(&self.pool, id).await?;
                Ok::<_, sqlx::Error>(watch::Sender::new(snapshot))
            })
            .await?;
        let rx = sender.subscribe();
        self.drain(&entry);
        if rx.borrow().sequence == 0 {
            self.entries.lock().expect("hub lock").remove(&id.as_uuid());
            return Ok(None);
        }
        Ok(Some(rx))
    }

    /// A place for one more push channel on login `id`, unless it already has `max` open.
    /// Counted apart from the watch receivers, which polls take and drop too.
    pub fn claim_socket(&self, id: LoginId, max: usize) -> Option<SocketClaim> {
        let entry = self.entry(id);
        entry
            .sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SocketClaim(entry))
    }

    /// Whether a poll for `id` at `now` comes too soon after the last one; records it if not.
    pub fn poll_too_soon(
        &self,
        id: LoginId,
        now: DateTime<Utc>,
        interval: chrono::Duration,
    ) -> bool {
        let entry = self.entry(id);
        let mut last = entry.last_poll.lock().expect("poll lock");
        if last.is_some_and(|t| now < t + interval) {
            return true;
        }
        *last = Some(now);
        false
    }

    /// Applies waiting events once the entry is loaded.
    fn drain(&self, entry: &Entry) {
        let mut pending = entry.pending.lock().expect("pending lock");
        let Some(sender) = entry.ready.get() else {
            return;
        };
        pending.sort_by_key(|(s, _)| *s);
        for (sequence, event) in pending.drain(..) {
            let _ = apply_in_order(sender, sequence, event);
        }
    }

    /// One event from the EVENTS stream.
    fn on_event(self: &Arc<Self>, event: &LoggedEvent) {
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            return;
        };
        let Ok(parsed) = serde_json::from_value::<QrLoginEvent>(event.payload.clone()) else {
            tracing::warn!(
                position = event.position,
                "unreadable qr_login event on EVENTS"
            );
            return;
        };
        let Some(entry) = self.entries.lock().expect("hub lock").get(&id).cloned() else {
            return; // nobody here is watching this login
        };
        let mut pending = entry.pending.lock().expect("pending lock");
        match entry.ready.get() {
            None => pending.push((event.sequence, parsed)),
            Some(sender) => {
                drop(pending);
                if !apply_in_order(sender, event.sequence, parsed) {
                    self.spawn_reload(LoginId::from(id));
                }
            }
        }
    }

    fn spawn_reload(self: &Arc<Self>, id: LoginId) {
        let hub = self.clone();
        tokio::spawn(async move {
            if let Err(e) = hub.reload(id).await {
                tracing::warn!(login = %id, error = %e, "could not reload a QR login");
            }
        });
    }

    /// Re-reads one login from the event store and publishes it if it moved on.
    async fn reload(&self, id: LoginId) -> Result<(), sqlx::Error> {
        let Some(entry) = self
            .entries
            .lock()
            .expect("hub lock")
            .get(&id.as_uuid())
            .cloned()
        else {
            return Ok(());
        };
        let fresh = load(&self.pool, id).await?;
        if let Some(sender) = entry.ready.get() {
            sender.send_if_modified(|current| {
                if fresh.sequence > current.sequence {
                    *current = fresh;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }

    /// Re-reads every login still live in memory.
    async fn reload_live(&self) {
        let now = self.clock.now();
        let live: Vec<Uuid> = self
            .entries
            .lock()
            .expect("hub lock")
            .iter()
            .filter(|(_, e)| {
                e.ready
                    .get()
                    .is_some_and(|s| !s.borrow().login.page_status(now).is_final())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in live {
            if let Err(e) = self.reload(LoginId::from(id)).await {
                tracing::debug!(error = %e, "reload failed");
                return;
            }
        }
    }

    /// Forgets logins whose deadline is long past and that no push channel watches.
    fn evict(&self) {
        let now = self.clock.now();
        self.entries
            .lock()
            .expect("hub lock")
            .retain(|_, e| match e.ready.get() {
                None => true,
                Some(s) => {
                    let snapshot = s.borrow();
                    let end = snapshot.login.deadline().or(snapshot.login.expires_at);
                    s.receiver_count() > 0 || end.is_none_or(|end| now < end + KEEP_AFTER_DEADLINE)
                }
            });
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("hub lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the EVENTS stream until shutdown; evicts and, around NATS outages, reloads.
    pub async fn run(self: Arc<Self>, nats: async_nats::Client, shutdown: CancellationToken) {
        let subject = latch_nats::subjects::events_of_aggregate(QrLogin::TYPE);
        let mut subscription = loop {
            match nats.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to QR login events yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut was_connected = true;
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                message = futures::StreamExt::next(&mut subscription) => {
                    let Some(message) = message else { break };
                    match serde_json::from_slice::<LoggedEvent>(&message.payload) {
                        Ok(event) => self.on_event(&event),
                        Err(e) => tracing::warn!(error = %e, "unreadable message on EVENTS"),
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let connected = matches!(
                        nats.connection_state(),
                        async_nats::connection::State::Connected
                    );
                    // Core subscriptions do not replay what they missed: re-read while NATS is
                    // away and once more when it is back.
                    if !connected || !was_connected {
                        self.reload_live().await;
                    }
                    was_connected = connected;
                    if ticks.is_multiple_of(30) {
                        self.evict();
                    }
                }
            }
        }
    }
}

/// Applies an event that follows the snapshot; `false` when there is a gap to fill.
fn apply_in_order(sender: &watch::Sender<Snapshot>, sequence: i64, event: QrLoginEvent) -> bool {
    let mut in_order = true;
    sender.send_if_modified(|s| {
        if sequence == s.sequence + 1 {
            s.apply(sequence, event);
            true
        } else {
            in_order = sequence <= s.sequence;
            false
        }
    });
    in_order
}

async fn load(pool: &PgPool, id: LoginId) -> Result<Snapshot, sqlx::Error> {
    let rows: Vec<(i64, String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(QrLogin::TYPE)
    .bind(id.to_string())
    .fetch_all(pool)
    .await?;
    let mut snapshot = Snapshot::default();
    for (sequence, event_type, version, payload) in rows {
        match latch_domain::upcast::read::<QrLoginEvent>(&event_type, &version, payload) {
            Ok(event) => snapshot.apply(sequence, event),
            Err(e) => {
                return Err(sqlx::Error::Decode(
                    format!("qr_login {id} event {sequence}: {e}").into(),
                ))
            }
        }
    }
    Ok(snapshot)
}
