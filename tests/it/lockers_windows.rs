//! Time-windowed reservations (issue 14) over HTTP on the test's manual clock: two users book
//! adjacent future windows of one compartment, an overlap is refused with `window_taken`, the
//! compartment is used (deposit, grant) only inside the holder's window, a grant hands on part
//! of a window, and a window's end frees the way for the next window's holder.

use crate::common::*;
use crate::lockers::{created, error_of, holder_of, inbox, token, world, SITE};
use chrono::{DateTime, Duration as Span, Utc};
use serde_json::{json, Value};
use std::time::Duration;

const LI: &str = "13455555555";
const ZHANG: &str = "13499996666";
const ZHENG: &str = "13488888888";
const WANG: &str = "13466666666";

fn at(minutes: i64) -> DateTime<Utc> {
    start_time() + Span::minutes(minutes)
}

fn rfc(minutes: i64) -> String {
    at(minutes).to_rfc3339()
}

/// Moves the manual clock to `minutes` after the test's start.
fn clock_to(app: &TestApp, minutes: i64) {
    let by = at(minutes) - latch_domain::Clock::now(&app.clock);
    assert!(by >= Span::zero(), "the clock only moves forward");
    app.clock.advance(by);
}

async fn reserve_medium(app: &TestApp, token: &str, from: i64, to: i64) -> reqwest::Response {
    app.post(
        "/lockers/reservations",
        token,
        Some(json!({"site": SITE, "size": "medium",
                    "window_start": rfc(from), "expires_at": rfc(to)})),
    )
    .await
}

async fn deposit(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.post(
        &format!("/lockers/compartments/{id}/deposit"),
        token,
        Some(json!({"parcel": "SF1234567890"})),
    )
    .await
}

/// The compartment's windows as operators see them: (holder, start, end), by start.
async fn windows(app: &TestApp, id: &str) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let row: Value = app
        .get(&format!("/lockers/compartments/{id}"), &app.operator)
        .await
        .json()
        .await
        .unwrap();
    row["windows"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|w| {
            (
                w["holder"].as_str().unwrap().to_owned(),
                w["starts_at"].as_str().unwrap().parse().unwrap(),
                w["ends_at"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

async fn windows_become(app: &TestApp, id: &str, want: &[(&str, i64, i64)], what: &str) {
    let want: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = want
        .iter()
        .map(|(h, s, e)| (h.to_string(), at(*s), at(*e)))
        .collect();
    let mut last = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            last = windows(app, id).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "{what}: windows {last:?}, want {want:?}");
}

async fn holder_at(app: &TestApp, id: &str, minutes: i64) -> Value {
    let body: Value = app
        .get(
            &format!(
                "/lockers/compartments/{id}/holder?at={}",
                urlencode(&rfc(minutes))
            ),
            &app.operator,
        )
        .await
        .json()
        .await
        .unwrap();
    body["holder"].clone()
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Site 610091A01 of the lockers tests plus one medium compartment, 03: the only one of its size.
async fn one_medium_compartment(app: &TestApp) -> String {
    world(app, "http://127.0.0.1:9/grants").await;
    created(
        app.post(
            "/lockers/compartments",
            &app.operator,
            Some(json!({"site": SITE, "number": "03", "size": "medium"})),
        )
        .await,
        "compartment 03",
    )
    .await;
    let id = format!("{SITE}:03");
    eventually(
        Duration::from_secs(10),
        "compartment 03 projected",
        || async {
            (count(
                &app.pool,
                "SELECT count(*) FROM locker_compartments WHERE size = 'medium'",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_windows_are_booked_used_only_inside_handed_on_in_part_and_freed_at_their_end() {
    let app = spawn_app().await;
    let id = one_medium_compartment(&app).await;
    let li = token(&app, LI).await;
    let zhang = token(&app, ZHANG).await;
    let zheng = token(&app, ZHENG).await;
    let wang = token(&app, WANG).await;

    // Two adjacent future windows on the one medium compartment, for two users.
    let first = created(reserve_medium(&app, &li, 60, 120).await, "li's window").await;
    assert_eq!(first["compartment_id"], id.as_str());
    assert_eq!(
        first["window_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(60)
    );
    let second = created(
        reserve_medium(&app, &zhang, 120, 180).await,
        "zhang's window",
    )
    .await;
    assert_eq!(
        second["compartment_id"],
        id.as_str(),
        "adjacent: the same compartment"
    );
    windows_become(
        &app,
        &id,
        &[(LI, 60, 120), (ZHANG, 120, 180)],
        "two windows",
    )
    .await;

    // Overlapping either by a minute: 409 window_taken, naming the window's fields.
    for (from, to) in [(90, 150), (119, 121), (0, 61)] {
        let res = reserve_medium(&app, &zheng, from, to).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 409, "{from}-{to}: {body}");
        assert_eq!(body["error"]["code"], "window_taken", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("window_start") && message.contains("expires_at"),
            "{message}"
        );
    }
    // Adjacent on the other side is free.
    let third = created(reserve_medium(&app, &zheng, 0, 60).await, "zheng's window").await;
    assert_eq!(third["compartment_id"], id.as_str());

    // Each user sees their future window on their own list, and only their own windows.
    let mine: Value = app
        .get("/lockers/me/compartments", &li)
        .await
        .json()
        .await
        .unwrap();
    let row = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["compartment_id"] == id.as_str())
        .unwrap_or_else(|| panic!("li's future window listed: {mine}"));
    assert_eq!(row["windows"].as_array().unwrap().len(), 1, "{row}");
    assert_eq!(row["windows"][0]["holder"], LI);

    // Before li's window (zheng's runs now): li may not deposit or grant.
    let (status, code, _) = error_of(deposit(&app, &li, &id).await).await;
    assert_eq!((status, code.as_str()), (409, "outside_window"));
    clock_to(&app, 30);
    let (status, code, _) = error_of(
        app.post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "03", "receiver": WANG})),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "outside_window"));

    // At the start exactly (zheng's window ends then): li grants the second half to wang.
    clock_to(&app, 60);
    let (status, code, field) = error_of(
        app.post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "03", "receiver": WANG,
                        "window_start": rfc(90), "window_end": rfc(130)})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (422, "invalid_grant_window"),
        "a part beyond li's window ({field:?})"
    );
    let granted = created(
        app.post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "03", "receiver": WANG,
                        "window_start": rfc(90), "window_end": rfc(120)})),
        )
        .await,
        "grant of part",
    )
    .await;
    assert_eq!(granted["holder"], WANG);
    assert_eq!(
        granted["window_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(90)
    );
    windows_become(
        &app,
        &id,
        &[(LI, 60, 90), (WANG, 90, 120), (ZHANG, 120, 180)],
        "li keeps the first half",
    )
    .await;
    // Wang's part has not begun; zhang's neither.
    let (status, code, _) = error_of(deposit(&app, &wang, &id).await).await;
    assert_eq!((status, code.as_str()), (409, "outside_window"));
    let (status, code, _) = error_of(deposit(&app, &zhang, &id).await).await;
    assert_eq!((status, code.as_str()), (409, "outside_window"));
    assert_eq!(holder_of(&app, &id).await.as_deref(), Some(LI));

    // Li's half ends unused: the sweeper prunes it and the compartment shows wang's part next.
    clock_to(&app, 90);
    windows_become(
        &app,
        &id,
        &[(WANG, 90, 120), (ZHANG, 120, 180)],
        "li's half expired",
    )
    .await;
    eventually(Duration::from_secs(10), "wang shown as holder", || async {
        (holder_of(&app, &id).await.as_deref() == Some(WANG)).then_some(())
    })
    .await;
    assert!(
        inbox(&app, &li)
            .await
            .iter()
            .any(|i| i["kind"] == "reservation_expired"),
        "li told their window lapsed"
    );
    // Wang's part ends unused too; at its end, which is zhang's start, zhang deposits.
    clock_to(&app, 120);
    created(
        deposit(&app, &zhang, &id).await,
        "zhang deposits at the start",
    )
    .await;
    windows_become(&app, &id, &[], "wang's part expired, zhang's used").await;
    eventually(Duration::from_secs(10), "occupied", || async {
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM locker_compartments WHERE compartment_id = $1")
                .bind(&id)
                .fetch_one(&app.pool)
                .await
                .ok()?;
        (status == "occupied").then_some(())
    })
    .await;

    // Who held it when, window by window.
    assert_eq!(holder_at(&app, &id, 30).await, ZHENG);
    assert_eq!(holder_at(&app, &id, 75).await, LI);
    assert_eq!(holder_at(&app, &id, 100).await, WANG);
    assert_eq!(holder_at(&app, &id, 150).await, Value::Null, "used at 120");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_inside_the_window_and_a_whole_window_grant_keep_later_windows_booked() {
    let app = spawn_app().await;
    let id = one_medium_compartment(&app).await;
    let li = token(&app, LI).await;
    let zhang = token(&app, ZHANG).await;
    // Li's window runs from now; zhang's follows.
    created(reserve_medium(&app, &li, 0, 60).await, "li now").await;
    created(reserve_medium(&app, &zhang, 60, 120).await, "zhang later").await;
    // A grant without a part hands on li's whole window; zhang's stays his.
    let granted = created(
        app.post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "03", "receiver": WANG})),
        )
        .await,
        "grant of the whole window",
    )
    .await;
    assert_eq!(
        granted["window_end"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        at(60)
    );
    windows_become(
        &app,
        &id,
        &[(WANG, 0, 60), (ZHANG, 60, 120)],
        "whole window passed",
    )
    .await;
    let wang = token(&app, WANG).await;
    clock_to(&app, 59);
    created(deposit(&app, &wang, &id).await, "wang deposits inside").await;
    windows_become(&app, &id, &[(ZHANG, 60, 120)], "wang's window used").await;
    // No new window on top of a parcel; zhang's booked one stays.
    let res = reserve_medium(&app, &li, 200, 260).await;
    let (status, code, _) = error_of(res).await;
    assert_eq!((status, code.as_str()), (409, "no_free_compartment"));
}
