//! `GET /dead-letters`: what the workers gave up on, with their reasons, for operators.
//!
//! Dead letters are not events and have no read model: the DEADLETTER JetStream stream is where
//! they are kept (`latch.dlq.<consumer>`, with `Latch-Reason`, `Latch-Detail` and the original
//! subject in headers; see `latch_workers`' ingest, event consumers and grant delivery). This
//! reads the newest of them straight from the stream, by sequence.

use crate::auth::Role;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::ops_pages::OpsCaller;
use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latch_nats::subjects::DEADLETTER_STREAM;
use serde::{Deserialize, Serialize};

/// At most this much of a kept payload is shown (as text, lossy).
const PAYLOAD_SHOWN: usize = 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/dead-letters", get(list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeadLetterQuery {
    /// 1 to 500, default 100.
    pub limit: Option<String>,
}

/// One dead letter as kept.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its sequence in the DEADLETTER stream.
    pub sequence: u64,
    /// Who gave up on it: the `<consumer>` of `latch.dlq.<consumer>`.
    pub consumer: String,
    /// `Latch-Reason`, e.g. `malformed_json`, `gave_up`, `webhook_undelivered`.
    pub reason: String,
    /// `Latch-Detail`: what went wrong, in words.
    pub detail: Option<String>,
    /// Where the message came from (`Latch-Subject`).
    pub subject: Option<String>,
    pub kept_at: DateTime<Utc>,
    /// The kept payload as text (lossy UTF-8, at most 1 KiB).
    pub payload: String,
}

/// The newest dead letters, newest first (operators).
#[utoipa::path(get, path = "/dead-letters", tag = "ops", params(DeadLetterQuery),
    responses((status = 200, body = [DeadLetter]), (status = 400, body = ErrorBody),
               (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
               (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    OpsCaller(actor): OpsCaller,
    query: Result<Query<DeadLetterQuery>, ApiError>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    actor.require(Role::Operator)?;
    let Query(q) = query?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_field", "limit", "limit: 1 to 500"))?,
    };
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("DEADLETTER: {e}"));
    let js = latch_nats::jetstream(state.nats.clone());
    let mut stream = js
        .get_stream(DEADLETTER_STREAM)
        .await
        .map_err(|e| unavailable(&e))?;
    let info = stream.info().await.map_err(|e| unavailable(&e))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(Json(out));
    }
    let mut seq = last;
    while seq >= first && (out.len() as u64) < limit {
        // A gap (a message removed by the stream's limits) is skipped.
        if let Ok(m) = stream.get_raw_message(seq).await {
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
            let keep = m.payload.len().min(PAYLOAD_SHOWN);
            out.push(DeadLetter {
                sequence: m.sequence,
                consumer: m
                    .subject
                    .as_str()
                    .strip_prefix("latch.dlq.")
                    .unwrap_or(m.subject.as_str())
                    .to_owned(),
                reason: header("Latch-Reason").unwrap_or_else(|| "unknown".into()),
                detail: header("Latch-Detail"),
                subject: header("Latch-Subject"),
                kept_at: DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
                    .unwrap_or_default(),
                payload: String::from_utf8_lossy(&m.payload[..keep]).into_owned(),
            });
        }
        if seq == 0 {
            break;
        }
        seq -= 1;
    }
    Ok(Json(out))
}
