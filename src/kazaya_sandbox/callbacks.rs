//! Signed callbacks (Standard Webhooks) with retries, and the sandbox-only list of attempts.
//!
//! Each event gets one `webhook-id` and one body; every attempt is signed afresh with its own
//! `webhook-timestamp`. An attempt succeeds on a 2xx; anything else (an error status, a refused
//! connection, a timeout) is tried again after [`super::RetryPolicy::delay_after`], until
//! `max_attempts`.

use super::{new_id, Shared};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use latch_domain::webhooks::sign;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// One delivery attempt, as `GET /sandbox/callbacks` lists it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Attempt {
    webhook_id: String,
    #[serde(rename = "type")]
    kind: String,
    url: String,
    attempt: u32,
    at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    status: Option<u16>,
    error: Option<String>,
    /// Whether this was the last attempt (delivered, or given up).
    last: bool,
}

/// Queues an event for `url`; delivery runs in the background.
pub(super) fn send(shared: &Arc<Shared>, url: String, kind: &str, data: Value) {
    let id = new_id("msg");
    let body = json!({ "type": kind, "timestamp": Utc::now(), "data": data }).to_string();
    tokio::spawn(deliver(
        shared.clone(),
        id,
        kind.to_owned(),
        url,
        body.into_bytes(),
    ));
}

async fn deliver(shared: Arc<Shared>, id: String, kind: String, url: String, body: Vec<u8>) {
    let retry = shared.settings.retry.clone();
    let max = retry.max_attempts.max(1);
    for attempt in 1..=max {
        let timestamp = Utc::now().timestamp();
        let signature = sign(&shared.key, &id, timestamp, &body);
        let sent = shared
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send();
        let result = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = sent => r,
        };
        let (status, error) = match &result {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let delivered = result.map(|r| r.status().is_success()).unwrap_or(false);
        let last = delivered || attempt == max;
        shared.db().attempts.push(Attempt {
            webhook_id: id.clone(),
            kind: kind.clone(),
            url: url.clone(),
            attempt,
            at: Utc::now(),
            status,
            error: error.clone(),
            last,
        });
        if delivered {
            tracing::info!(webhook_id = %id, %kind, attempt, "kazaya sandbox: callback delivered");
            return;
        }
        if last {
            tracing::warn!(webhook_id = %id, %kind, attempt, "kazaya sandbox: callback given up");
            return;
        }
        let wait = retry.delay_after(attempt);
        tracing::info!(webhook_id = %id, ?status, ?error, ?wait, "kazaya sandbox: callback failed; retrying");
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `GET /sandbox/callbacks`: every delivery attempt so far, oldest first. Sandbox only.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let attempts = shared.db().attempts.clone();
    Json(json!({ "attempts": attempts }))
}
