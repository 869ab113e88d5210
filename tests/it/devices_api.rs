//! The device slice end to end: register, heartbeat, open over NATS, confirm, time out, go
//! offline; and every client mistake answered with a clear error.

use crate::common::*;
use futures::StreamExt;
use latch::sim::SimDevice;
use latch_domain::telemetry::OpenCommand;
use latch_nats::subjects;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

async fn online_device(app: &TestApp, label: &str) -> (Uuid, SimDevice) {
    let id = app.register_device("vending", "S1", label).await;
    let sim = SimDevice::new(id, app.js.clone());
    sim.door(false, None).await.unwrap();
    sim.heartbeat(1).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "device online and closed",
        || async {
            let d = app.device(id).await?;
            (d["online"] == true && d["door"] == "closed").then_some(())
        },
    )
    .await;
    (id, sim)
}

async fn open(app: &TestApp, id: Uuid) -> reqwest::Response {
    app.post(&format!("/devices/{id}/open"), &app.operator, None)
        .await
}

/// Asks the device to open and returns the request id.
async fn request_open(app: &TestApp, id: Uuid) -> Uuid {
    let res = open(app, id).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    Uuid::parse_str(body["request_id"].as_str().unwrap()).unwrap()
}

async fn assert_open_refused(app: &TestApp, id: Uuid, code: &str) {
    let res = open(app, id).await;
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_command_reaches_the_device_and_its_door_event_confirms_it() {
    let app = spawn_app().await;
    let (id, sim) = online_device(&app, "一号柜").await;
    let mut commands = app
        .nats
        .subscribe(subjects::device_commands_all(&id.to_string()))
        .await
        .unwrap();
    app.nats.flush().await.unwrap();

    let request_id = request_open(&app, id).await;
    let pending = eventually(
        Duration::from_secs(10),
        "pending open projected",
        || async {
            let d = app.device(id).await?;
            d["pending_open_request"].is_string().then_some(d)
        },
    )
    .await;
    assert_eq!(pending["pending_open_request"], request_id.to_string());

    let msg = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("open command sent")
        .unwrap();
    assert_eq!(msg.subject.as_str(), format!("latch.cmd.{id}.open"));
    let command: OpenCommand = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(command.request_id, request_id);

    // A second open while one is pending is refused.
    assert_open_refused(&app, id, "open_already_pending").await;

    sim.door(true, Some(request_id)).await.unwrap();
    eventually(Duration::from_secs(10), "opening confirmed", || async {
        let d = app.device(id).await?;
        (d["door"] == "open"
            && d["last_open_outcome"] == "confirmed"
            && d["pending_open_request"].is_null())
        .then_some(())
    })
    .await;
    // The door is open: another open is refused with its own code.
    assert_open_refused(&app, id, "door_already_open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_before_the_deadline_records_a_failure_and_silence_means_offline() {
    let app = spawn_app().await;
    let (id, _sim) = online_device(&app, "quiet").await;
    request_open(&app, id).await;
    eventually(Duration::from_secs(10), "pending", || async {
        app.device(id).await?["pending_open_request"]
            .is_string()
            .then_some(())
    })
    .await;
    // Before the deadline nothing happens...
    app.clock.advance(chrono::Duration::seconds(9));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.device(id).await.unwrap()["pending_open_request"].is_string());
    // ...after it, the opening has failed.
    app.clock.advance(chrono::Duration::seconds(2));
    eventually(Duration::from_secs(10), "open timed out", || async {
        let d = app.device(id).await?;
        (d["last_open_outcome"] == "timeout").then_some(())
    })
    .await;
    // 30 s without heartbeats: offline, and it can no longer be opened.
    app.clock.advance(chrono::Duration::seconds(25));
    eventually(Duration::from_secs(10), "offline", || async {
        (app.device(id).await?["online"] == false).then_some(())
    })
    .await;
    assert_open_refused(&app, id, "device_offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_device_refuses_and_the_refusal_is_recorded() {
    let app = spawn_app().await;
    let (id, sim) = online_device(&app, "faulty").await;
    let request_id = request_open(&app, id).await;
    sim.refuse(request_id, "motor stalled").await.unwrap();
    eventually(Duration::from_secs(10), "refusal recorded", || async {
        let d = app.device(id).await?;
        (d["last_open_outcome"] == "refused: motor stalled").then_some(())
    })
    .await;
    sim.fault(true, "motor").await.unwrap();
    eventually(Duration::from_secs(10), "fault shown", || async {
        (app.device(id).await?["fault_code"] == "motor").then_some(())
    })
    .await;
    assert_open_refused(&app, id, "device_faulted").await;
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_clear_errors_and_write_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/devices", app.address);
    // (body, who sends it, status, code, field)
    type Case<'a> = (Option<&'a str>, &'a str, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            Some(r#"{"kind":"fridge","site":"S1","label":"x"}"#),
            "operator",
            400,
            "invalid_field",
            Some("kind"),
        ),
        (
            Some(r#"{"kind":"vending","site":"bad site","label":"x"}"#),
            "operator",
            400,
            "invalid_field",
            Some("site"),
        ),
        (
            Some(r#"{"kind":"vending","site":"S1","label":""}"#),
            "operator",
            400,
            "invalid_field",
            Some("label"),
        ),
        (
            Some(r#"{"kind":"vending","site":"S1"}"#),
            "operator",
            400,
            "invalid_field",
            Some("label"),
        ),
        (
            Some(r#"{"kind":"vending","site":"S1","label":"x","extra":1}"#),
            "operator",
            400,
            "invalid_field",
            Some("extra"),
        ),
        (
            Some(r#"{"kind":5,"site":"S1","label":"x"}"#),
            "operator",
            400,
            "invalid_field",
            Some("kind"),
        ),
        (
            Some(r#"{"kind":"vending","#),
            "operator",
            400,
            "malformed_json",
            None,
        ),
        (
            Some(r#"{"kind":"vending","site":"S1","label":"x"}"#),
            "user",
            403,
            "forbidden",
            None,
        ),
        (
            Some(r#"{"kind":"vending","site":"S1","label":"x"}"#),
            "nobody",
            401,
            "unauthorized",
            None,
        ),
    ];
    for (body, who, status, code, field) in cases {
        let mut req = app
            .http
            .post(&url)
            .header("content-type", "application/json");
        req = match who {
            "operator" => req.bearer_auth(&app.operator),
            "user" => req.bearer_auth(&app.user),
            _ => req.bearer_auth("lt_not_a_real_token"),
        };
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let (got, err) = error_of(req.send().await.unwrap()).await;
        assert_eq!(got, status, "{body:?} as {who}: {err}");
        assert_eq!(err["code"], code, "{body:?}");
        assert_eq!(err["field"].as_str(), field, "{body:?}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    let (s, err) = error_of(
        app.post("/devices/not-a-uuid/open", &app.operator, None)
            .await,
    )
    .await;
    assert_eq!((s, err["field"].as_str()), (400, Some("device_id")));
    let unknown = Uuid::now_v7();
    let (s, err) = error_of(
        app.post(&format!("/devices/{unknown}/open"), &app.operator, None)
            .await,
    )
    .await;
    assert_eq!(
        (s, err["code"].as_str()),
        (404, Some("device_not_registered"))
    );
    let (s, err) = error_of(app.get(&format!("/devices/{unknown}"), &app.user).await).await;
    assert_eq!((s, err["code"].as_str()), (404, Some("device_not_found")));
    let (s, err) = error_of(app.get("/devices?limit=0", &app.user).await).await;
    assert_eq!((s, err["field"].as_str()), (400, Some("limit")));
    let (s, err) = error_of(
        app.http
            .post(format!("{}/devices", app.address))
            .bearer_auth(&app.operator)
            .header("Idempotency-Key", "x".repeat(200))
            .json(&json!({"kind": "vending", "site": "S1", "label": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, err["field"].as_str()), (400, Some("Idempotency-Key")));
    let (s, err) = error_of(app.get("/nowhere", &app.user).await).await;
    assert_eq!((s, err["code"].as_str()), (404, Some("no_such_route")));
    assert_eq!(app.event_count().await, 0, "no mistake wrote anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_openapi_and_listing() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ready: Value = res.json().await.unwrap();
    assert_eq!(ready["nats"], "ok");
    // How far behind each read model is: every one named, and device status catches up.
    let names: Vec<&str> = ready["read_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["device_status", "qr_login_status", "orders", "lockers"]
    );
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/devices",
        "/devices/{device_id}",
        "/devices/{device_id}/open",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} described");
    }
    let a = app.register_device("locker", "610091A01", "甲").await;
    app.register_device("vending", "S2", "乙").await;
    let rows: Vec<Value> = eventually(Duration::from_secs(10), "both listed", || async {
        let rows: Vec<Value> = app.get("/devices", &app.user).await.json().await.ok()?;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert!(rows.iter().any(|r| r["label"] == "甲"));
    let rows: Vec<Value> = app
        .get("/devices?site=610091A01", &app.user)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["device_id"], a.to_string());
    assert_eq!(rows[0]["online"], false);
    assert_eq!(rows[0]["door"], "unknown");
    eventually(
        Duration::from_secs(10),
        "device status caught up",
        || async {
            let ready: Value = app
                .http
                .get(format!("{}/readyz", app.address))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let device_status = &ready["read_models"][0];
            (device_status["behind"] == 0 && device_status["position"].as_i64()? > 0).then_some(())
        },
    )
    .await;
}
