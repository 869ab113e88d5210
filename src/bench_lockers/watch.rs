//! One poller of the `locker_compartments` read model wakes whoever waits for a holder.

use super::WATCH_POLL;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Compartments whose next holder someone is waiting for: compartment id -> (holder, waker).
pub(super) type Waiting = Arc<Mutex<HashMap<String, (String, oneshot::Sender<Instant>)>>>;

/// One poller for every waiting client: reads the rows the lockers projector changed since the
/// last look, and wakes whoever waits for a compartment that now has the holder they expect.
pub(super) fn watch(
    pool: PgPool,
    waiting: Waiting,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: i64 = sqlx::query_as::<_, (Option<i64>,)>(
            "SELECT max(last_position) FROM locker_compartments",
        )
        .fetch_one(&pool)
        .await
        .map(|(p,)| p.unwrap_or(0))
        .unwrap_or(0);
        while !stop.load(Ordering::Relaxed) {
            let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
                "SELECT compartment_id, holder, last_position FROM locker_compartments
                  WHERE last_position > $1",
            )
            .bind(seen)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            let now = Instant::now();
            if !rows.is_empty() {
                let mut w = waiting.lock().expect("waiting map");
                for (id, holder, position) in rows {
                    seen = seen.max(position);
                    let arrived =
                        matches!((w.get(&id), &holder), (Some((want, _)), Some(h)) if want == h);
                    if arrived {
                        if let Some((_, tx)) = w.remove(&id) {
                            let _ = tx.send(now);
                        }
                    }
                }
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    })
}

pub(super) fn expect(
    waiting: &Waiting,
    compartment: &str,
    holder: &str,
) -> oneshot::Receiver<Instant> {
    let (tx, rx) = oneshot::channel();
    waiting
        .lock()
        .expect("waiting map")
        .insert(compartment.to_owned(), (holder.to_owned(), tx));
    rx
}
