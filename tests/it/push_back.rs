//! Commands are pushed back while the read models are too far behind the log, and every
//! response says how far behind they are (`Latch-Read-Model-Lag`).

use crate::common::*;
use latch::app::Application;
use latch::config::Role;
use latch_workers::CancellationToken;
use serde_json::json;
use std::time::Duration;

const LAG: &str = "latch-read-model-lag";

fn lag_of(res: &reqwest::Response) -> i64 {
    res.headers()[LAG].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_while_the_read_models_are_too_far_behind() {
    // Every role but the projector: the log grows, the read models stay where they are.
    let app = spawn_app_with(|s| {
        s.roles.retain(|r| *r != Role::Projector);
        s.edge.max_read_model_lag = 3;
    })
    .await;
    let register = |label: &'static str| {
        app.post(
            "/devices",
            &app.operator,
            Some(json!({"kind": "vending", "site": "S1", "label": label})),
        )
    };

    // Under the limit, commands go through and say how far behind the models are.
    let first = register("A").await;
    assert_eq!(first.status(), 201);
    assert!(lag_of(&first) <= 3, "a fresh log is within the limit");
    for label in ["B", "C", "D", "E"] {
        assert_eq!(register(label).await.status(), 201);
    }

    // Once the watcher has read the checkpoints, a command is refused and writes nothing.
    let refused = eventually(
        Duration::from_secs(10),
        "commands refused while the read models lag",
        || async {
            let res = register("F").await;
            (res.status() == 503).then_some(res)
        },
    )
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(lag_of(&refused) > 3, "the header gives the lag");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "read_models_behind");
    let events = app.event_count().await;
    assert_eq!(register("F").await.status(), 503);
    assert_eq!(
        app.event_count().await,
        events,
        "a refused command appends nothing"
    );

    // Reads still answer, with the lag.
    let read = app.get("/devices", &app.operator).await;
    assert_eq!(read.status(), 200);
    assert!(lag_of(&read) > 3);

    // A projector comes (another process's worth of roles): the models catch up, and the
    // same command goes through.
    let mut settings = test_settings(&app.db, &app.nats_server, &app.clock);
    settings.roles = vec![Role::Projector];
    let projector = Application::build(settings).await.unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        projector
            .run_until_stopped(async move { stopped.cancelled().await })
            .await
    });
    let accepted = eventually(
        Duration::from_secs(15),
        "the command accepted once the read models caught up",
        || async {
            let res = register("F").await;
            (res.status() == 201).then_some(res)
        },
    )
    .await;
    assert!(lag_of(&accepted) <= 3);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
}
