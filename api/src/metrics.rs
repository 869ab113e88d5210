//! `GET /metrics`: what the process and the system are doing, in Prometheus text format.
//!
//! Two kinds of figures. Counters and histograms of what this process did (HTTP requests by
//! route and status, commands by aggregate and outcome, webhook attempts, dead letters) are
//! recorded where they happen through the `metrics` facade into one process-wide Prometheus
//! recorder, installed on first use. Gauges of where the system stands (the relay's head and
//! published position, each read model's lag, JetStream consumers' pending counts, devices
//! online and faulted) are read from Postgres and JetStream at scrape time: they are facts of
//! the shared log, true whichever instance answers, and cost nothing between scrapes.
//!
//! The page needs an operator token: it names sites, consumers and fleet figures, which are
//! not for the internet (Prometheus sends it with `authorization: { credentials: ... }`).

use crate::auth::{Actor, Role};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Latency buckets (seconds) for every `_seconds` histogram: 1 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Finer buckets for the per-stage timings (`latch_stage_*`, see `latch_workers::stages`):
/// each stage adds milliseconds, and the benches read percentiles off these buckets.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets. The recorder keeps every
/// sample until then: `build_recorder` (unlike the exporter's own listener) starts no upkeep,
/// and only a scrape folded them, so a process nobody scraped grew by every sample it ever
/// recorded (the soak bench's `latch serve` rose ~14 MiB a minute at ~480 commands/s).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first call (later calls, and a process that already
/// has another recorder, get a handle that renders what this one holds).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Prefix("latch_stage_".into()), STAGE_BUCKETS)
            .expect("static buckets are valid")
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only gauges");
        }
        // A thread, not a task: the recorder lives as long as the process, whichever runtime
        // installed it first (tests start and drop many).
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "metrics upkeep not started; histograms grow until scraped");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "latch_http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "latch_http_request_duration_seconds",
        "HTTP request latency by route and method"
    );
    describe_histogram!(
        "latch_stage_delay_seconds",
        "Age of an event (since its commit) when a stage (sequence, publish, apply) finished it"
    );
    describe_histogram!(
        "latch_stage_batch_seconds",
        "Time one batch of a stage took, by stage and projector"
    );
    describe_counter!(
        "latch_commands_pushed_back_total",
        "Commands refused (503 read_models_behind) while the read models were too far behind"
    );
    describe_counter!(
        "latch_stage_events_total",
        "Events through each stage, by stage and projector"
    );
    describe_counter!(
        "latch_commands_total",
        "Commands by aggregate, command and outcome"
    );
    describe_histogram!(
        "latch_command_duration_seconds",
        "Command latency (load, decide, append) by aggregate and command"
    );
    describe_counter!(
        "latch_webhook_attempts_total",
        "Outbound webhook delivery attempts by outcome"
    );
    describe_counter!(
        "latch_locker_holder_updates_total",
        "Holder updates sent to locker devices, by outcome (acked, unanswered, refused, no_door)"
    );
    describe_counter!(
        "latch_dead_letters_total",
        "Messages given up on and kept in DEADLETTER, by consumer and reason"
    );
    describe_gauge!(
        "latch_relay_published_position",
        "The log's head: the last position the relay gave an event (== EVENTS sequence)"
    );
    describe_gauge!(
        "latch_relay_unpublished_events",
        "Committed events the relay has not yet given a position"
    );
    describe_gauge!(
        "latch_events_stream_last_sequence",
        "The EVENTS stream's last sequence"
    );
    describe_gauge!(
        "latch_read_model_checkpoint",
        "Each read model's checkpoint"
    );
    describe_gauge!(
        "latch_read_model_lag_positions",
        "How many log positions each read model stands behind the head"
    );
    describe_gauge!(
        "latch_consumer_pending_messages",
        "JetStream consumers' undelivered messages, by stream and consumer"
    );
    describe_gauge!(
        "latch_consumer_ack_pending_messages",
        "JetStream consumers' delivered but unacknowledged messages"
    );
    describe_gauge!(
        "latch_stream_messages",
        "Messages held by each JetStream stream (DEADLETTER: dead letters kept)"
    );
    describe_gauge!(
        "latch_devices",
        "Devices by state (online, offline, faulted)"
    );
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

/// Counts each matched request by its route template (never the raw path: ids would make a
/// series per id). Runs as a route layer, after routing, where the template is known.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("latch_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("latch_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Counts a request that matched no route (the fallback's answer).
pub fn unmatched(method: &str) {
    metrics::counter!("latch_http_requests_total", "route" => "unmatched", "method" => method.to_owned(), "status" => "404").increment(1);
}

/// The Prometheus text page.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format 0.0.4", body = String),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn scrape(State(state): State<AppState>, actor: Actor) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    let handle = install();
    // Each source is bounded: a slow Postgres or NATS leaves its gauges as they were.
    let bound = Duration::from_secs(2);
    if tokio::time::timeout(bound, log_gauges(&state))
        .await
        .is_err()
    {
        tracing::warn!("metrics: the log's figures took too long");
    }
    if tokio::time::timeout(bound, stream_gauges(&state))
        .await
        .is_err()
    {
        tracing::warn!("metrics: JetStream's figures took too long");
    }
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}

/// Relay, read models and devices, from Postgres.
async fn log_gauges(state: &AppState) {
    use latch_projections::{audit::rebuild::NAMES, projector};
    match latch_projections::log::relay_figures(&state.pool).await {
        Ok((published, unpublished)) => {
            metrics::gauge!("latch_relay_published_position").set(published as f64);
            metrics::gauge!("latch_relay_unpublished_events").set(unpublished as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: relay figures unreadable"),
    }
    match projector::lags(&state.pool, NAMES).await {
        Ok(lags) => {
            for (name, position, behind) in lags {
                metrics::gauge!("latch_read_model_checkpoint", "read_model" => name.clone())
                    .set(position as f64);
                metrics::gauge!("latch_read_model_lag_positions", "read_model" => name)
                    .set(behind as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: read-model lags unreadable"),
    }
    match latch_projections::device_status::queries::fleet(&state.pool).await {
        Ok(fleet) => {
            metrics::gauge!("latch_devices", "state" => "online").set(fleet.online as f64);
            metrics::gauge!("latch_devices", "state" => "offline").set(fleet.offline as f64);
            metrics::gauge!("latch_devices", "state" => "faulted").set(fleet.faulted as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: fleet figures unreadable"),
    }
}

/// Streams and their consumers, from JetStream.
async fn stream_gauges(state: &AppState) {
    use futures::StreamExt;
    let js = latch_nats::jetstream(state.nats.clone());
    let mut names = js.stream_names();
    while let Some(Ok(name)) = names.next().await {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        if let Ok(info) = stream.info().await {
            metrics::gauge!("latch_stream_messages", "stream" => name.clone())
                .set(info.state.messages as f64);
            if name == latch_nats::subjects::EVENTS_STREAM {
                metrics::gauge!("latch_events_stream_last_sequence")
                    .set(info.state.last_sequence as f64);
            }
        }
        let mut consumers = stream.consumers();
        while let Some(Ok(info)) = consumers.next().await {
            let labels = [("stream", name.clone()), ("consumer", info.name.clone())];
            metrics::gauge!("latch_consumer_pending_messages", &labels)
                .set(info.num_pending as f64);
            metrics::gauge!("latch_consumer_ack_pending_messages", &labels)
                .set(info.num_ack_pending as f64);
        }
    }
}
