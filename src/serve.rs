//! The HTTP server's accept loop: hyper's HTTP/1 connection with a header-read timeout, under a
//! cap on open connections, with graceful shutdown.
//!
//! `axum::serve` has neither a header-read timeout nor a connection cap: a client that opens
//! a connection and sends half a request head holds a socket and a task for as long as it
//! likes, and thousands of them exhaust file descriptors. Here each connection holds a permit
//! of a semaphore of `max_connections`; at the cap the loop stops accepting and new connections
//! wait in the kernel's listen queue until one closes. A connection that has not sent a whole
//! request head within `header_read_timeout` is closed by hyper (idle keep-alive connections
//! too, as they wait for the next head). A WebSocket keeps its connection's permit for its own
//! life ([`latch_api::edge::ConnectionSlot`]).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use latch_api::edge::ConnectionSlot;
use latch_workers::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Transport limits (`LATCH_HTTP_*`).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once (WebSockets included); more wait in the listen queue.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_read_timeout: Duration,
    /// Largest request head (and read buffer) per connection.
    pub max_header_bytes: usize,
    /// How long shutdown waits for open connections to finish.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open requests finish
/// (up to `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut full_logged = false;
    loop {
        if permits.available_permits() == 0 && !full_logged {
            tracing::warn!(max, "connection cap reached; new connections wait");
            full_logged = true;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        full_logged = false;
        let _ = stream.set_nodelay(true);
        let slot = ConnectionSlot(Arc::new(permit));
        let service =
            app.clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(slot.clone());
                    req
                });
        let service = TowerToHyperService::new(service);
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Header timeouts, resets, malformed requests: the client's business.
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    // Every open connection holds a permit: all back means all done.
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        let _all = permits.acquire_many(max as u32).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = max - permits.available_permits(),
            "connections still open after the drain timeout"
        );
    }
}
