//! Push back on commands while the read models are too far behind the log (issue 16).
//!
//! Commands append as fast as Postgres takes them; the projectors that fold them into read
//! models may be slower under a burst. Left alone, the gap grows for as long as the burst lasts
//! and every reader sees older and older data. So each API process keeps one figure, the
//! slowest read model's distance from the log head in positions, read every
//! [`WATCH_EVERY`] from the checkpoints, and:
//! - answers every response with `Latch-Read-Model-Lag: <positions>`, so a client (or a load
//!   balancer) sees how stale a read may be;
//! - refuses commands (any method but GET, HEAD and OPTIONS) with 503 `read_models_behind` and
//!   `Retry-After: 1` while that figure is over `LATCH_MAX_READ_MODEL_LAG` (0 turns it off).
//!   Nothing is written; the client's retry (same `Idempotency-Key`) goes through once the
//!   projectors have caught up.
//!
//! A projector passes runs of other aggregates' events without writing its checkpoint, for up
//! to 1,000 positions, so a limit near that would refuse commands under any steady load; the
//! default is far above it.
//!
//! Device telemetry is not refused here (it arrives over NATS and is bounded by its stream);
//! requests to the health, readiness and metrics endpoints are reads and pass.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the figure is read (one small query over the checkpoints).
pub const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Positions behind at which commands are refused, by default.
pub const DEFAULT_MAX_LAG: i64 = 20_000;
/// The response header carrying the figure.
pub const LAG_HEADER: &str = "latch-read-model-lag";

/// The slowest read model's distance from the log head, as last read, and the limit.
#[derive(Debug)]
pub struct ReadModelLag {
    behind: AtomicI64,
    limit: i64,
}

impl ReadModelLag {
    /// Starts reading the figure every [`WATCH_EVERY`] until `shutdown`.
    pub fn watch(pool: PgPool, limit: i64, shutdown: CancellationToken) -> Arc<Self> {
        let lag = Arc::new(Self {
            behind: AtomicI64::new(0),
            limit,
        });
        let watched = lag.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let names = latch_projections::audit::rebuild::NAMES;
                match latch_projections::projector::lags(&pool, names).await {
                    Ok(lags) => {
                        let worst = lags.iter().map(|(_, _, lag)| *lag).max().unwrap_or(0);
                        watched.behind.store(worst, Ordering::Relaxed);
                    }
                    // The figure stays as it was; a store that cannot be read refuses
                    // commands by itself.
                    Err(e) => tracing::debug!(error = %e, "read-model lag not read"),
                }
            }
        });
        lag
    }

    pub fn behind(&self) -> i64 {
        self.behind.load(Ordering::Relaxed)
    }

    /// Whether a command arriving now is refused.
    fn refuses(&self) -> bool {
        self.limit > 0 && self.behind() > self.limit
    }
}

/// The middleware: the header on every response, and 503 for commands over the limit.
pub async fn push_back(State(lag): State<Arc<ReadModelLag>>, req: Request, next: Next) -> Response {
    let behind = lag.behind();
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut response = if !read && lag.refuses() {
        metrics::counter!("latch_commands_pushed_back_total").increment(1);
        ApiError::ReadModelsBehind {
            behind,
            limit: lag.limit,
        }
        .into_response()
    } else {
        next.run(req).await
    };
    response
        .headers_mut()
        .insert(LAG_HEADER, HeaderValue::from(behind));
    response
}
