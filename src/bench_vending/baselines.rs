//! The baselines, measured before `latch serve` starts, on the same machine: a bare handler,
//! raw INSERTs, raw JetStream publishes.

use super::{Error, VendingArgs};
use crate::bench::{closed_loop, Rate};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// An axum handler that answers the open request's shape and does nothing else.
pub(super) async fn bare_open_phase(
    http: &reqwest::Client,
    args: &VendingArgs,
) -> Result<Rate, Error> {
    let app = axum::Router::new().route(
        "/m/api/cabinets/{device_id}/open",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "session_id": Uuid::now_v7(),
                    "request_id": Uuid::now_v7(),
                    "deadline": chrono::Utc::now() + chrono::Duration::seconds(15),
                })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let cabinets: Arc<[Uuid]> = (0..args.cabinets).map(|_| Uuid::now_v7()).collect();
    let (http, n) = (http.clone(), args.cabinets);
    let op = move |i: usize| {
        let url = format!(
            "{base}/m/api/cabinets/{}/open",
            cabinets[(i / 1_000_000) % n]
        );
        let http = http.clone();
        async move {
            match http.post(&url).bearer_auth("bare").send().await {
                Ok(r) => r.status() == 202 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    // The first second opens the keep-alive connections, unmeasured.
    let _ = closed_loop(args.cabinets, 1, op.clone()).await;
    let rate = closed_loop(args.cabinets, args.baseline_seconds, op).await;
    server.abort();
    Ok(rate)
}

/// Single-row INSERTs from as many clients as shoppers, over the pool `latch serve` has.
pub(super) async fn raw_insert_phase(pool: &PgPool, args: &VendingArgs) -> Result<Rate, Error> {
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(pool)
        .await?;
    let pool = pool.clone();
    Ok(closed_loop(args.cabinets, args.baseline_seconds, move |i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                .bind(serde_json::json!({"kind": "weights", "phase": "after", "n": i}))
                .execute(&pool)
                .await
                .is_ok()
        }
    })
    .await)
}

/// JetStream publishes of a weights-sized message: acked one at a time from as many publishers
/// as cabinets (what a cabinet's report costs), then pipelined in windows of 1000 (as the relay).
pub(super) async fn raw_publish_phase(
    js: &async_nats::jetstream::Context,
    args: &VendingArgs,
) -> Result<(Rate, f64), Error> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let body = vec![b'x'; 400];
    let acked = {
        let (js, body) = (js.clone(), body.clone());
        closed_loop(args.cabinets, args.baseline_seconds, move |i| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                let subject = format!("bench.dev.{}.weights", i / 1_000_000);
                match js.publish(subject, body.into()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    };
    let started = Instant::now();
    for window in 0..args.events.div_ceil(1000) {
        let mut acks = Vec::with_capacity(1000);
        for i in 0..1000.min(args.events - window * 1000) {
            let n = window * 1000 + i;
            acks.push(
                js.publish(format!("bench.raw.{n}"), body.clone().into())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    let pipelined = args.events as f64 / started.elapsed().as_secs_f64();
    Ok((acked, pipelined))
}
