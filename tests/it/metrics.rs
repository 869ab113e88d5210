//! `GET /metrics`: scraped under a small load, the figures move and the gauges tell the truth
//! about the log, the read models, the streams and the fleet.
//!
//! Counters are process-wide (tests run in one process), so they are checked as "moved by at
//! least"; gauges are read from this test's own database and NATS at scrape time.

use crate::common::*;
use async_nats::jetstream::message::PublishMessage;
use latch::sim::SimDevice;
use latch_nats::subjects;
use std::time::Duration;

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

async fn scrape(app: &TestApp) -> String {
    let res = app.get("/metrics", &app.operator).await;
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    res.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_under_load_and_gauges_match_the_system() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let registered = |t: &str| {
        sample(
            t,
            "latch_http_requests_total",
            &[("route", "/devices"), ("method", "POST"), ("status", "201")],
        )
        .unwrap_or(0.0)
    };
    let applied = |t: &str| {
        sample(
            t,
            "latch_commands_total",
            &[
                ("aggregate", "device"),
                ("command", "RegisterDevice"),
                ("outcome", "applied"),
            ],
        )
        .unwrap_or(0.0)
    };
    let dead = |t: &str| {
        sample(
            t,
            "latch_dead_letters_total",
            &[("consumer", "telemetry"), ("reason", "malformed_json")],
        )
        .unwrap_or(0.0)
    };

    // A small load: three registrations, one device online and one faulted, a bad report, a
    // request for a route that does not exist.
    let ids = [
        app.register_device("vending", "S1", "A").await,
        app.register_device("vending", "S1", "B").await,
        app.register_device("locker", "S2", "C").await,
    ];
    let sim = SimDevice::new(ids[0], app.js.clone());
    sim.door(false, None).await.unwrap();
    sim.heartbeat(1).await.unwrap();
    sim.fault(true, "scale_jam").await.unwrap();
    SimDevice::new(ids[1], app.js.clone())
        .heartbeat(1)
        .await
        .unwrap();
    app.js
        .send_publish(
            subjects::telemetry(&ids[2].to_string(), "heartbeat"),
            PublishMessage::build().payload(b"{{not json".to_vec().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(app.get("/no/such/route", &app.operator).await.status(), 404);

    // Once the device model has taken it all in, the scrape says so.
    let after = eventually(
        Duration::from_secs(15),
        "the read models and the dead letter to show in /metrics",
        || async {
            let text = scrape(&app).await;
            let online = sample(&text, "latch_devices", &[("state", "online")])?;
            let faulted = sample(&text, "latch_devices", &[("state", "faulted")])?;
            let lag = sample(
                &text,
                "latch_read_model_lag_positions",
                &[("read_model", "device_status")],
            )?;
            (online == 2.0 && faulted == 1.0 && lag == 0.0 && dead(&text) > dead(&before))
                .then_some(text)
        },
    )
    .await;

    assert!(
        registered(&after) - registered(&before) >= 3.0,
        "HTTP requests counted by route"
    );
    assert!(
        applied(&after) - applied(&before) >= 3.0,
        "commands counted by outcome"
    );
    assert!(
        sample(
            &after,
            "latch_http_request_duration_seconds_bucket",
            &[("route", "/devices"), ("method", "POST"), ("le", "+Inf")]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "latency is a histogram by route"
    );
    assert!(
        sample(
            &after,
            "latch_http_requests_total",
            &[("route", "unmatched")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "unknown routes are one series, not one per path"
    );
    assert!(
        !after.contains(&ids[0].to_string()),
        "no series carries a device id"
    );
    assert_eq!(
        sample(&after, "latch_devices", &[("state", "offline")]),
        Some(1.0)
    );

    // The relay's figures are the log's, and the stream agrees.
    let head = count(
        &app.pool,
        "SELECT COALESCE(max(position), 0) FROM event_log",
    )
    .await;
    assert!(head > 0);
    assert_eq!(
        sample(&after, "latch_relay_published_position", &[]),
        Some(head as f64)
    );
    assert_eq!(
        sample(&after, "latch_events_stream_last_sequence", &[]),
        Some(head as f64)
    );
    assert_eq!(
        sample(&after, "latch_relay_unpublished_events", &[]),
        Some(0.0)
    );
    // Every projector's consumer has a pending figure.
    assert!(
        sample(
            &after,
            "latch_consumer_pending_messages",
            &[("stream", "EVENTS")]
        )
        .is_some(),
        "EVENTS consumers' pending counts are shown:\n{after}"
    );
    assert!(sample(&after, "latch_stream_messages", &[("stream", "DEADLETTER")]).unwrap() >= 1.0);

    // Per-stage timings: the relay's sequencing and publishing counted the new events and
    // timed how old each batch's last event was when the stage was done with it.
    let through = |t: &str, stage: &str| {
        sample(t, "latch_stage_events_total", &[("stage", stage)]).unwrap_or(0.0)
    };
    for stage in ["sequence", "publish"] {
        assert!(
            through(&after, stage) - through(&before, stage) >= 3.0,
            "{stage}: events counted"
        );
        assert!(
            sample(
                &after,
                "latch_stage_delay_seconds_bucket",
                &[("stage", stage), ("le", "+Inf")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{stage}: delay histogram"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_for_operators_only() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app.get("/metrics", &app.user).await;
    assert_eq!(res.status(), 403);
}
