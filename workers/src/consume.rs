//! Taking messages off a JetStream pull consumer in batches without adding latency: wait for
//! one, then take whatever else is already buffered, up to a limit.

use futures::{FutureExt, Stream, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub enum Next<M, E> {
    Batch(Vec<M>),
    Failed(E),
    /// Nothing arrived within the idle period.
    Idle,
    /// Shutdown was requested or the stream ended.
    Stop,
}

pub async fn next_batch<S, M, E>(
    messages: &mut S,
    max: usize,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Next<M, E>
where
    S: Stream<Item = Result<M, E>> + Unpin,
{
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Next::Stop,
        _ = tokio::time::sleep(idle) => return Next::Idle,
        item = messages.next() => item,
    };
    let first = match first {
        None => return Next::Stop,
        Some(Err(e)) => return Next::Failed(e),
        Some(Ok(m)) => m,
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match messages.next().now_or_never() {
            Some(Some(Ok(m))) => batch.push(m),
            _ => break,
        }
    }
    Next::Batch(batch)
}

/// Like [`next_batch`], but after the first message keeps taking messages as they arrive for up
/// to `linger`, so a steady trickle becomes one batch instead of many one-message batches. For
/// consumers whose cost is per batch (a transaction each) rather than per message.
pub async fn next_batch_lingering<S, M, E>(
    messages: &mut S,
    max: usize,
    idle: Duration,
    linger: Duration,
    shutdown: &CancellationToken,
) -> Next<M, E>
where
    S: Stream<Item = Result<M, E>> + Unpin,
{
    let mut batch = match next_batch(messages, max, idle, shutdown).await {
        Next::Batch(batch) => batch,
        other => return other,
    };
    let until = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(until, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push(m),
            // An error ends the batch early (the batch in hand is good); a lasting failure shows
            // again on the next call.
            _ => break,
        }
    }
    Next::Batch(batch)
}

pub async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
