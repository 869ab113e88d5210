//! Latch's HTTP API (axum).
//!
//! Commands come in, are parsed into domain types at the edge ([`extract`]), run through the
//! command bus, and answer from the events they appended; reads are served from projected read
//! models. Every failure has one shape ([`error::ApiError`]); every endpoint names the role it
//! needs ([`auth`]). Each module exposes a `router()`; [`router`] puts them together with
//! request ids and tracing, and [`openapi`] describes them.

pub mod audit;
pub mod auth;
pub mod backpressure;
pub mod dead_letters;
pub mod devices;
pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod kazaya;
pub mod kiosk_pages;
pub mod locker_pages;
pub mod lockers;
pub mod login_events;
pub mod metrics;
pub mod nats_identities;
pub mod openapi;
pub mod ops_pages;
pub mod pages;
pub mod qr;
pub mod tokens;
pub mod vending;
pub mod webhooks;

use axum::extract::FromRef;
use axum::http::Request;
use axum::Router;
use latch_domain::clock::SharedClock;
use latch_domain::store::Store;
use sqlx::PgPool;
use std::sync::Arc;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

#[derive(Clone)]
pub struct AppState {
    /// Commands: every write to the event store goes through here.
    pub store: Arc<Store>,
    /// Reads: the read models (through `latch_projections`' `queries` modules) and the
    /// credential tables that are not read models (tokens, idempotency keys, sandbox SMS).
    pub pool: PgPool,
    pub auth: Arc<auth::Auth>,
    pub nats: async_nats::Client,
    pub clock: SharedClock,
    /// How long a remote door opening may take before it is recorded as failed.
    pub open_timeout: chrono::Duration,
    pub qr: Arc<qr::QrService>,
    /// Cancelled when the process stops: long-lived connections (push channels) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub vending: Arc<vending::Vending>,
    /// Parcel lockers: login limits, webhook delivery, grant timeouts.
    pub lockers: Arc<lockers::Lockers>,
    /// Client IP behind proxies, body limit, request timeout.
    pub edge: Arc<edge::EdgeConfig>,
    /// Renders issued NATS identities for nats-server and has it reload them: the process's
    /// one renderer, so that concurrent issues share renders.
    pub nats_auth: Arc<nats_identities::NatsAuthRenderer>,
}

impl FromRef<AppState> for Arc<auth::Auth> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

#[derive(Clone, Default)]
struct UuidV7Ids;

impl MakeRequestId for UuidV7Ids {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

pub fn router(state: AppState) -> Router {
    metrics::install();
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
    });
    let edge = state.edge.clone();
    let lag = backpressure::ReadModelLag::watch(
        state.pool.clone(),
        edge.max_read_model_lag,
        state.shutdown.clone(),
    );
    Router::new()
        .merge(health::router())
        .merge(devices::router())
        .merge(openapi::router())
        .merge(pages::router())
        .merge(qr::router())
        .merge(audit::router())
        .merge(vending::router())
        .merge(lockers::router())
        .merge(locker_pages::router())
        .merge(kiosk_pages::router())
        .merge(ops_pages::router())
        .merge(dead_letters::router())
        .merge(tokens::router())
        .merge(metrics::router())
        .merge(nats_identities::router())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(|method: axum::http::Method| async move {
            metrics::unmatched(method.as_str());
            error::ApiError::NotFound {
                code: "no_such_route",
                message: "no such endpoint; see /openapi.json".into(),
            }
        })
        .with_state(state)
        // Extractors stop reading a body at the limit (a chunked one has no length to check).
        .layer(axum::extract::DefaultBodyLimit::max(edge.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            lag,
            backpressure::push_back,
        ))
        .layer(axum::middleware::from_fn_with_state(edge, edge::guard))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(UuidV7Ids))
}
