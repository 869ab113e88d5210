//! What the sandbox SMS gateway was asked to send. The lockers notifier
//! (`latch_workers::locker_notifier`) sends from the log, at least once; the sandbox keeps each
//! message once per id in Postgres (`sandbox_sms`), so this list survives restarts and shows
//! what a receiver would have got, duplicates removed.

use crate::auth::{Actor, Role};
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::json;

/// The most recent messages, oldest first (operators).
#[utoipa::path(get, path = "/lockers/sandbox/sms", tag = "lockers",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn sandbox_sms(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT message_id, phone, body, sent_at FROM
           (SELECT * FROM sandbox_sms ORDER BY seq DESC LIMIT 1000) recent ORDER BY seq",
    )
    .fetch_all(&state.pool)
    .await?;
    let sent: Vec<_> = rows
        .into_iter()
        .map(|(id, phone, text, at)| json!({ "id": id, "phone": phone, "text": text, "sent_at": at }))
        .collect();
    Ok(Json(json!(sent)))
}
