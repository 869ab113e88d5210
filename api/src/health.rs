//! Liveness and readiness.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub postgres: &'static str,
    pub nats: &'static str,
    /// `ok`, or `diverged` while the relay refuses to publish because the EVENTS stream holds
    /// what the log does not (repair: `latch relay reconcile`).
    pub events_stream: &'static str,
    /// Each read model's checkpoint and how many log positions it stands behind the head.
    pub read_models: Vec<ReadModelLag>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadModelLag {
    pub name: String,
    pub position: i64,
    pub behind: i64,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Postgres and NATS are both reachable.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    // One read answers both: Postgres is there, and whether the relay has raised its alarm.
    let pg = tokio::time::timeout(
        Duration::from_secs(2),
        latch_projections::log::relay_alarm(&state.pool),
    )
    .await;
    let (postgres, events_stream) = match pg {
        Ok(Ok(None)) => ("ok", "ok"),
        Ok(Ok(Some(_))) => ("ok", "diverged"),
        _ => ("unreachable", "unknown"),
    };
    let read_models = if postgres == "ok" {
        latch_projections::projector::lags(&state.pool, latch_projections::audit::rebuild::NAMES)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(name, position, behind)| ReadModelLag {
                name,
                position,
                behind,
            })
            .collect()
    } else {
        Vec::new()
    };
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => "ok",
        _ => "unreachable",
    };
    let ready = postgres == "ok" && nats == "ok" && events_stream == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            postgres,
            nats,
            events_stream,
            read_models,
        }),
    )
}
