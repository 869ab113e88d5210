//! Who held a compartment at a past moment: `GET /lockers/compartments/{id}/holder?at=` (from
//! the holdings history) and `/audit/as-of` (the log folded up to a moment) agree with what
//! happened, and at the present the fold equals the live read model.

use crate::common::*;
use crate::lockers::{created, reserve, token, world, SITE};
use latch_domain::clock::Clock;
use serde_json::{json, Value};
use std::time::Duration;

async fn holder_at(app: &TestApp, id: &str, at: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/lockers/compartments/{id}/holder", app.address))
        .query(&[("at", at)])
        .bearer_auth(&app.operator)
        .send()
        .await
        .unwrap()
}

async fn holder_then(app: &TestApp, id: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    let res = holder_at(app, id, &at.to_rfc3339()).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["holder"].clone()
}

async fn as_of(app: &TestApp, at: chrono::DateTime<chrono::Utc>) -> Value {
    let auditor =
        latch_api::auth::issue_token(&app.pool, latch_api::auth::Role::Auditor, "locker-history")
            .await
            .unwrap();
    let res = app
        .http
        .get(format!("{}/audit/as-of", app.address))
        .query(&[("at", at.to_rfc3339())])
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn compartment<'a>(as_of: &'a Value, id: &str) -> &'a Value {
    as_of["compartments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["compartment_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {as_of}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_at_a_past_moment_is_who_held_it_then() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    // Events carry the app's (manual) clock; the log's recording time is the database's.
    let installed = app.clock.now();
    let recorded_installed = chrono::Utc::now();
    app.clock.advance(chrono::Duration::minutes(1));
    let id = reserve(&app, &li).await;
    let reserved = app.clock.now();
    app.clock.advance(chrono::Duration::minutes(1));
    let recorded_reserved = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    created(
        app.post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "01", "receiver": "13499996666"})),
        )
        .await,
        "grant",
    )
    .await;
    let granted = app.clock.now();
    eventually(Duration::from_secs(10), "the grant projected", || async {
        let h = holder_then(&app, &id, granted).await;
        (h == "13499996666").then_some(())
    })
    .await;

    assert_eq!(holder_then(&app, &id, installed).await, Value::Null);
    assert_eq!(holder_then(&app, &id, reserved).await, "13455555555");
    assert_eq!(
        holder_then(&app, &id, reserved + chrono::Duration::seconds(30)).await,
        "13455555555"
    );
    assert_eq!(holder_then(&app, &id, granted).await, "13499996666");
    // No `at`: now.
    let res = app
        .get(&format!("/lockers/compartments/{id}/holder"), &app.operator)
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["holder"], "13499996666");
    // A moment that is not one, and a compartment id that is not one: clear 400s.
    let res = holder_at(&app, &id, "yesterday").await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "at", "{body}");
    let res = holder_at(&app, "no-such-thing", &granted.to_rfc3339()).await;
    assert_eq!(res.status(), 400);
    // A holder may not ask; only operators and auditors read history.
    let res = app
        .get(&format!("/lockers/compartments/{id}/holder"), &li)
        .await;
    assert_eq!(res.status(), 403);

    // The log folded up to a moment: free, then Li's, then the receiver's.
    let then = as_of(&app, recorded_installed).await;
    assert_eq!(compartment(&then, &id)["status"], "free", "{then}");
    let then = as_of(&app, recorded_reserved).await;
    assert_eq!(compartment(&then, &id)["holder"], "13455555555");
    assert_eq!(compartment(&then, &id)["status"], "reserved");
    let now = as_of(&app, chrono::Utc::now()).await;
    // At the present the fold is the live read model, compartment by compartment.
    let live: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT compartment_id, status, holder FROM locker_compartments ORDER BY compartment_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let folded: Vec<(String, String, Option<String>)> = now["compartments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["compartment_id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["holder"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(folded, live);
}
