//! Audit over HTTP (auditor role only; anyone else gets 403 `forbidden`).
//!
//! - `GET /audit/events?from=&aggregate_type=&aggregate_id=&event_type=&since=&until=&follow=`:
//!   the log in log order after position `from`, NDJSON, one event a line with its metadata,
//!   position and chain hash; `follow=true` goes on with new events as they are logged.
//! - `GET /audit/aggregates/{type}/{id}`: one aggregate's whole history, NDJSON.
//! - `GET /audit/as-of?at=&device_id=`: device and QR-login status as they stood at `at`.
//! - `GET /audit/verify`: the hash-chain walk (first bad position, or intact with head hash).
//! - `GET /audit/checkpoints`: every signed checkpoint, for export.
//! - `POST /audit/checkpoints/check`: an old checkpoint against today's log.

use crate::auth::{Actor, Role};
use crate::error::ApiError;
use crate::extract::Query;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latch_projections::audit::history::{self, Filter, Follow};
use latch_projections::audit::signing::{self, CheckpointError, SignedCheckpoint};
use latch_projections::audit::{as_of, verify};
use serde::Deserialize;
use std::time::Duration;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit/events", get(events))
        .route(
            "/audit/aggregates/{aggregate_type}/{aggregate_id}",
            get(aggregate),
        )
        .route("/audit/as-of", get(as_of_handler))
        .route("/audit/verify", get(verify_handler))
        .route("/audit/checkpoints", get(checkpoints))
        .route("/audit/checkpoints/check", post(check_checkpoint))
}

const NDJSON: &str = "application/x-ndjson";

fn auditor(actor: &Actor) -> Result<(), ApiError> {
    actor.require(Role::Auditor)
}

fn time(field: &'static str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|r| {
        DateTime::parse_from_rfc3339(r)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_field",
                    field,
                    "must be an RFC 3339 time, e.g. 2026-11-21T08:00:00Z",
                )
            })
    })
    .transpose()
}

fn text(field: &'static str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(v) if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                "invalid_field",
                field,
                "must be 1 to 200 printable characters",
            ))
        }
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    pub from: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub follow: Option<String>,
}

fn ndjson(rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, sqlx::Error>>) -> Response {
    let body = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Ok(bytes)) => Some((Ok::<_, std::io::Error>(bytes), rx)),
            Some(Err(e)) => {
                // The status line has gone out: end the body early; the reader sees it cut.
                tracing::warn!(error = %e, "audit stream failed");
                Some((Err(std::io::Error::other(e.to_string())), rx))
            }
            None => None,
        }
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(body)).into_response()
}

/// The log in log order, NDJSON.
#[utoipa::path(get, path = "/audit/events", tag = "audit",
    params(("from" = Option<i64>, Query), ("aggregate_type" = Option<String>, Query),
           ("aggregate_id" = Option<String>, Query), ("event_type" = Option<String>, Query),
           ("since" = Option<String>, Query), ("until" = Option<String>, Query),
           ("follow" = Option<bool>, Query)),
    responses((status = 200, description = "NDJSON, one logged event a line", content_type = "application/x-ndjson"),
               (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    actor: Actor,
    params: Result<Query<EventsParams>, ApiError>,
) -> Result<Response, ApiError> {
    auditor(&actor)?;
    let Query(p) = params?;
    let from = match p.from.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "from",
                "must be a log position (0 or more)",
            )
        })?,
    };
    let follow = match p.follow.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "follow",
                "must be true or false",
            ))
        }
    };
    let filter = Filter {
        aggregate_type: text("aggregate_type", p.aggregate_type)?,
        aggregate_id: text("aggregate_id", p.aggregate_id)?,
        event_type: text("event_type", p.event_type)?,
        since: time("since", p.since.as_deref())?,
        until: time("until", p.until.as_deref())?,
    };
    if let (Some(s), Some(u)) = (filter.since, filter.until) {
        if u <= s {
            return Err(ApiError::bad_request(
                "invalid_field",
                "until",
                "must be after since",
            ));
        }
    }
    // Fail with 503 before the stream starts when the store is away.
    latch_projections::log::head(&state.pool).await?;
    let follow = follow.then(|| Follow {
        wake: Some(state.nats.clone()),
        poll: Duration::from_millis(250),
        stop: state.shutdown.clone(),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(history::stream(
        state.pool.clone(),
        filter,
        from,
        follow,
        tx,
    ));
    Ok(ndjson(rx))
}

/// One aggregate's whole history, NDJSON.
#[utoipa::path(get, path = "/audit/aggregates/{aggregate_type}/{aggregate_id}", tag = "audit",
    params(("aggregate_type" = String, Path), ("aggregate_id" = String, Path)),
    responses((status = 200, description = "NDJSON", content_type = "application/x-ndjson"),
               (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn aggregate(
    State(state): State<AppState>,
    actor: Actor,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auditor(&actor)?;
    let aggregate_type = text("aggregate_type", Some(aggregate_type))?.unwrap_or_default();
    let aggregate_id = text("aggregate_id", Some(aggregate_id))?.unwrap_or_default();
    let rows = history::aggregate(&state.pool, &aggregate_type, &aggregate_id).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound {
            code: "aggregate_not_found",
            message: format!("no logged events for {aggregate_type}/{aggregate_id}"),
        });
    }
    let mut body = Vec::with_capacity(rows.len() * 512);
    for row in &rows {
        body.extend_from_slice(&row.to_message());
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct AsOfParams {
    pub at: Option<String>,
    pub device_id: Option<String>,
}

/// Read models as they stood at `at`.
#[utoipa::path(get, path = "/audit/as-of", tag = "audit",
    params(("at" = String, Query, description = "RFC 3339"), ("device_id" = Option<String>, Query)),
    responses((status = 200, body = Object), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn as_of_handler(
    State(state): State<AppState>,
    actor: Actor,
    params: Result<Query<AsOfParams>, ApiError>,
) -> Result<Json<as_of::AsOf>, ApiError> {
    auditor(&actor)?;
    let Query(p) = params?;
    let at = time("at", p.at.as_deref())?
        .ok_or_else(|| ApiError::bad_request("missing_field", "at", "give the moment, RFC 3339"))?;
    let device = p
        .device_id
        .as_deref()
        .map(|raw| {
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::bad_request("invalid_field", "device_id", "must be a UUID"))
        })
        .transpose()?;
    as_of::as_of(&state.pool, at, device)
        .await
        .map(Json)
        .map_err(|e| match e {
            latch_projections::ProjectionError::Sql(e) => ApiError::from(e),
            other => ApiError::Internal(other.to_string()),
        })
}

/// Walks the whole chain.
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    responses((status = 200, body = Object), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify_handler(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<verify::Report>, ApiError> {
    auditor(&actor)?;
    Ok(Json(verify::walk(&state.pool, None, &|_| {}).await?))
}

/// Every signed checkpoint, oldest first.
#[utoipa::path(get, path = "/audit/checkpoints", tag = "audit",
    responses((status = 200, body = [Object]), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoints(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<Json<Vec<SignedCheckpoint>>, ApiError> {
    auditor(&actor)?;
    Ok(Json(signing::list(&state.pool, None).await?))
}

/// An old checkpoint against today's log: 200 with the verdict, 422 `bad_signature` for a
/// forged one.
#[utoipa::path(post, path = "/audit/checkpoints/check", tag = "audit", request_body = Object,
    responses((status = 200, body = Object), (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn check_checkpoint(
    State(state): State<AppState>,
    actor: Actor,
    body: crate::extract::JsonBody<SignedCheckpoint>,
) -> Result<Json<signing::Consistency>, ApiError> {
    auditor(&actor)?;
    signing::check(&state.pool, &body.value, None)
        .await
        .map(Json)
        .map_err(|e| match e {
            CheckpointError::Sql(e) => ApiError::from(e),
            CheckpointError::Malformed { field, message } => {
                ApiError::bad_request("invalid_field", field, message)
            }
            e @ CheckpointError::BadSignature => ApiError::Unprocessable {
                code: "bad_signature",
                message: e.to_string(),
                field: Some("signature".into()),
            },
            e @ CheckpointError::UntrustedKey { .. } => ApiError::Unprocessable {
                code: "untrusted_key",
                message: e.to_string(),
                field: Some("public_key".into()),
            },
        })
}
