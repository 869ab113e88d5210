//! The baselines, measured before `latch serve` starts, on the same machine: a bare handler,
//! raw INSERTs, the authorizer sandbox alone.

use super::webhook::start_sandbox;
use super::{Error, LockersArgs, DIRECT_SITE, SECRET, WEBHOOK_SITE};
use crate::bench::{closed_loop, Rate};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// An axum handler that answers a direct grant's shape and does nothing else.
pub(super) async fn bare_grant_phase(
    http: &reqwest::Client,
    args: &LockersArgs,
) -> Result<Rate, Error> {
    let app = axum::Router::new().route(
        "/lockers/grants",
        axum::routing::post(|axum::Json(v): axum::Json<Value>| async move {
            (
                axum::http::StatusCode::CREATED,
                axum::Json(json!({
                    "grant_id": Uuid::now_v7(),
                    "compartment_id": format!("{}:{}", v["site"], v["compartment"]),
                    "status": "completed",
                    "holder": v["receiver"],
                })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/lockers/grants", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = http.clone();
    let op = move |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .bearer_auth("bare")
                .json(&json!({"site": DIRECT_SITE, "compartment": format!("{:04}", i / 1_000_000), "receiver": "13911112222"}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    };
    // The first second opens the keep-alive connections, unmeasured.
    let _ = closed_loop(args.holders, 1, op.clone()).await;
    let rate = closed_loop(args.holders, args.baseline_seconds, op).await;
    server.abort();
    Ok(rate)
}

/// Single-row INSERTs from as many clients as holders, over the pool `latch serve` has.
pub(super) async fn raw_insert_phase(pool: &PgPool, args: &LockersArgs) -> Result<Rate, Error> {
    sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(pool)
        .await?;
    let pool = pool.clone();
    Ok(closed_loop(args.holders, args.baseline_seconds, move |i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                .bind(json!({"kind": "grant", "from": "13911110000", "to": "13911112222", "n": i}))
                .execute(&pool)
                .await
                .is_ok()
        }
    })
    .await)
}

/// The authorizer sandbox alone: signed grant webhooks straight at it, each with its own id, its
/// callbacks answered 200 at once by a stub standing in for Latch.
pub(super) async fn sandbox_receive_phase(
    http: &reqwest::Client,
    args: &LockersArgs,
) -> Result<Rate, Error> {
    let stub = axum::Router::new().route(
        "/lockers/authorizers/{number}/callback",
        axum::routing::post(|| async { axum::Json(json!({"status": "accepted"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stub_url = format!("http://{}", listener.local_addr()?);
    let stub_server = tokio::spawn(async move { axum::serve(listener, stub).await });
    let (endpoint, stop, sandbox) = start_sandbox(&stub_url).await?;
    let key = latch_domain::webhooks::secret_key(SECRET).ok_or("bench secret")?;
    let http = http.clone();
    let op = move |_: usize| {
        let (http, endpoint, key) = (http.clone(), endpoint.clone(), key.clone());
        async move {
            let request_id = Uuid::now_v7();
            let body = json!({"type": "grant.requested", "data": {
                "request_id": request_id, "site": WEBHOOK_SITE, "compartment": "0001",
                "size": "large", "authorizer": "0001", "requester": "13911110000",
                "deadline": chrono::Utc::now() + chrono::Duration::minutes(5),
            }})
            .to_string();
            let id = latch_workers::grant_delivery::webhook_id(request_id);
            let ts = chrono::Utc::now().timestamp();
            let signature = latch_domain::webhooks::sign(&key, &id, ts, body.as_bytes());
            http.post(&endpoint)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let _ = closed_loop(args.holders, 1, op.clone()).await;
    let rate = closed_loop(args.holders, args.baseline_seconds, op).await;
    stop.cancel();
    sandbox.await.ok();
    stub_server.abort();
    Ok(rate)
}
