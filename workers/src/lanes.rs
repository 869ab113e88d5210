//! Handling messages concurrently across keys and in order within one key, without batches.
//!
//! The ingest worker used to take a batch of messages, split it by device and wait for every
//! device's part before taking the next batch, so one slow device (or one with four reports in
//! the batch) held up every message behind it. Here each key has a lane, a task handling its
//! messages one after another, and the consumer keeps feeding lanes as messages arrive. A
//! semaphore bounds the messages in hand (taken but not yet handled), so a burst is not pulled
//! off the stream faster than Postgres takes it and nothing waits in a lane until its ack
//! deadline passes.
//!
//! A lane lives while it has work: the caller forgets idle lanes, and a lane's task ends when
//! its last sender is gone and its queue is empty. A key never has two lanes with work, because
//! a lane is forgotten only when it has none, so the order within a key holds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

type Job<M> = (M, OwnedSemaphorePermit);

struct Lane<M> {
    queue: mpsc::UnboundedSender<Job<M>>,
    pending: Arc<AtomicUsize>,
}

/// The lanes of one consumer. `handle` is called for each message, in order within its key.
pub struct Lanes<M, H> {
    lanes: HashMap<String, Lane<M>>,
    permits: Arc<Semaphore>,
    in_hand: u32,
    handle: H,
}

/// Idle lanes kept before they are swept (a fleet's worth of devices costs little memory).
const KEEP_IDLE: usize = 4096;

impl<M, H, F> Lanes<M, H>
where
    M: Send + 'static,
    H: Fn(M) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    /// At most `in_hand` messages are taken and not yet handled at once.
    pub fn new(in_hand: usize, handle: H) -> Self {
        Self {
            lanes: HashMap::new(),
            permits: Arc::new(Semaphore::new(in_hand)),
            in_hand: in_hand as u32,
            handle,
        }
    }

    /// Waits until another message may be taken. Take the message only after this returns,
    /// so nothing is pulled off the stream while the lanes are full.
    pub async fn ready(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Queues `message` on `key`'s lane, starting the lane if it has none.
    pub fn push(&mut self, key: String, message: M, permit: OwnedSemaphorePermit) {
        if self.lanes.len() >= KEEP_IDLE {
            self.forget_idle();
        }
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| {
            let (queue, mut jobs) = mpsc::unbounded_channel::<Job<M>>();
            let pending = Arc::new(AtomicUsize::new(0));
            let (done, handle) = (pending.clone(), self.handle.clone());
            tokio::spawn(async move {
                while let Some((message, permit)) = jobs.recv().await {
                    handle(message).await;
                    done.fetch_sub(1, Ordering::AcqRel);
                    drop(permit);
                }
            });
            Lane { queue, pending }
        });
        lane.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError((message, permit))) = lane.queue.send((message, permit)) {
            // Its task ended while it had a sender: the handler panicked. The message is
            // still here; a fresh lane takes it.
            tracing::error!(%key, "a lane's task died; starting it again");
            self.lanes.remove(&key);
            self.push(key, message, permit);
        }
    }

    /// Drops the lanes with nothing queued or running; their tasks end.
    pub fn forget_idle(&mut self) {
        self.lanes
            .retain(|_, lane| lane.pending.load(Ordering::Acquire) > 0);
    }

    /// Waits for every message in hand to be handled, then forgets every lane. Called before
    /// the consumer is given up, so a new consumer never runs a key beside an old lane.
    pub async fn drain(&mut self) {
        let all = self
            .permits
            .acquire_many(self.in_hand)
            .await
            .expect("the semaphore is never closed");
        drop(all);
        self.lanes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn keys_run_side_by_side_and_each_key_in_order() {
        let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
        let log = seen.clone();
        let mut lanes = Lanes::new(8, move |(key, n, slow): (String, u32, bool)| {
            let log = log.clone();
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                log.lock().unwrap().push((key, n));
            }
        });
        for (key, n, slow) in [
            ("a", 1, true),
            ("b", 1, false),
            ("a", 2, false),
            ("b", 2, false),
        ] {
            let permit = lanes.ready().await;
            lanes.push(key.into(), (key.to_owned(), n, slow), permit);
        }
        tokio::time::timeout(Duration::from_secs(5), lanes.drain())
            .await
            .expect("drained");
        let seen = seen.lock().unwrap().clone();
        // b's messages did not wait for a's slow first one; a's second waited for its first.
        assert_eq!(
            seen,
            vec![
                ("b".into(), 1),
                ("b".into(), 2),
                ("a".into(), 1),
                ("a".into(), 2)
            ]
        );
    }

    #[tokio::test]
    async fn no_more_than_the_limit_is_in_hand() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let mut lanes = Lanes::new(3, move |_: u32| {
            let (r, m) = (r.clone(), m.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        });
        for n in 0..12u32 {
            let permit = lanes.ready().await;
            lanes.push(format!("k{n}"), n, permit);
        }
        tokio::time::timeout(Duration::from_secs(5), lanes.drain())
            .await
            .expect("drained");
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert!(lanes.lanes.is_empty());
    }
}
