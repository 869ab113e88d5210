//! Device telemetry: valid messages become commands; everything else is dead-lettered with its
//! reason, appends nothing, and the worker carries on.

use crate::common::*;
use async_nats::jetstream::message::PublishMessage;
use latch_nats::subjects::{self, DEADLETTER_STREAM};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn heartbeat(device: &str, msg_id: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut v = json!({
        "v": 1, "msg_id": msg_id, "device_id": device,
        "sent_at": "2026-11-21T08:00:00Z", "type": "heartbeat", "uptime_s": 5
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

async fn publish(app: &TestApp, subject: String, body: Vec<u8>) {
    app.js
        .send_publish(subject, PublishMessage::build().payload(body.into()))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_telemetry_is_dead_lettered_with_its_reason() {
    let app = spawn_app().await;
    let a = app.register_device("vending", "S1", "A").await.to_string();
    let b = app.register_device("vending", "S1", "B").await.to_string();
    let stranger = Uuid::now_v7().to_string();
    let before = app.event_count().await;
    let hb = |d: &str| subjects::telemetry(d, "heartbeat");

    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("malformed_json", hb(&a), b"\x00\x01garbage{{".to_vec()),
        ("not_utf8", hb(&a), vec![0xff, 0xfe, 0xfd]),
        ("schema", hb(&a), br#"{"hello":"world"}"#.to_vec()),
        (
            "unknown_device",
            hb(&stranger),
            heartbeat(&stranger, "m1", json!({})),
        ),
        ("device_mismatch", hb(&a), heartbeat(&b, "m2", json!({}))),
        (
            "out_of_range",
            hb(&a),
            heartbeat(&a, "m3", json!({"uptime_s": -4})),
        ),
        (
            "out_of_range",
            hb(&a),
            heartbeat(&a, "m4", json!({"temperature_c": 900.0})),
        ),
        (
            "malformed_json",
            hb(&a),
            String::from_utf8(heartbeat(&a, "m5", json!({})))
                .unwrap()
                .replace("\"uptime_s\":5", "\"uptime_s\":NaN")
                .into_bytes(),
        ),
        (
            "oversized",
            hb(&a),
            heartbeat(&a, "m6", json!({"pad": "x".repeat(10_000)})),
        ),
        (
            "type_mismatch",
            subjects::telemetry(&a, "door"),
            heartbeat(&a, "m7", json!({})),
        ),
    ];
    for (_, subject, body) in &cases {
        publish(&app, subject.clone(), body.clone()).await;
    }
    let dead = eventually(
        Duration::from_secs(15),
        "every bad message dead-lettered",
        || async {
            let m = stream_messages(&app.js, DEADLETTER_STREAM).await;
            (m.len() >= cases.len()).then_some(m)
        },
    )
    .await;
    assert_eq!(dead.len(), cases.len(), "nothing else was dead-lettered");
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| m.headers.get("Latch-Reason").unwrap().as_str().to_owned())
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|(r, _, _)| r.to_string()).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    for m in &dead {
        assert!(m.headers.get("Latch-Subject").is_some());
        assert!(
            m.payload.len() <= 1024,
            "refused payloads are kept only in part"
        );
    }
    assert_eq!(
        app.event_count().await,
        before,
        "no bad message became an event"
    );

    // The worker is still there: a good heartbeat brings A online.
    publish(
        &app,
        hb(&a),
        heartbeat(&a, "good-1", json!({"temperature_c": 3.5})),
    )
    .await;
    let a_id = Uuid::parse_str(&a).unwrap();
    eventually(Duration::from_secs(10), "A online", || async {
        let d = app.device(a_id).await?;
        (d["online"] == true && d["last_seen"].is_string()).then_some(())
    })
    .await;
    assert_eq!(app.event_count().await, before + 1, "one DeviceCameOnline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_id_changes_nothing() {
    let app = spawn_app().await;
    let a = app.register_device("vending", "S1", "A").await;
    let id = a.to_string();
    let door = |msg: &str, state: &str| {
        serde_json::to_vec(&json!({
            "v": 1, "msg_id": msg, "device_id": id, "sent_at": "2026-11-21T08:00:00Z",
            "type": "door", "state": state
        }))
        .unwrap()
    };
    publish(&app, subjects::telemetry(&id, "door"), door("d1", "open")).await;
    publish(&app, subjects::telemetry(&id, "door"), door("d2", "closed")).await;
    eventually(Duration::from_secs(10), "door closed", || async {
        let d = app.device(a).await?;
        (d["door"] == "closed").then_some(())
    })
    .await;
    let before = app.event_count().await;
    // The same message again, past the stream's own dedup (no Nats-Msg-Id): the command's
    // idempotency key still catches it, so the door does not "open" again.
    publish(&app, subjects::telemetry(&id, "door"), door("d1", "open")).await;
    publish(&app, subjects::telemetry(&id, "door"), door("d3", "closed")).await;
    // A marker behind them on the same device: once it shows, the two above were handled.
    let fault = serde_json::to_vec(&json!({
        "v": 1, "msg_id": "f1", "device_id": id, "sent_at": "2026-11-21T08:00:00Z",
        "type": "fault", "code": "probe", "message": "marker", "active": true
    }))
    .unwrap();
    publish(&app, subjects::telemetry(&id, "fault"), fault).await;
    eventually(Duration::from_secs(10), "marker fault", || async {
        let d = app.device(a).await?;
        (d["fault_code"] == "probe").then_some(())
    })
    .await;
    assert_eq!(
        app.event_count().await,
        before + 1,
        "only the marker appended"
    );
    assert_eq!(app.device(a).await.unwrap()["door"], "closed");
}
