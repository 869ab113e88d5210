//! Issue 12 for the lockers: one request, one command, and what follows runs from the log.
//!
//! - A grant's notices leave from the log: `latch serve` killed (-9) after the grant's commit
//!   and before anyone notified the receiver still notifies them, exactly once, after restart.
//! - A redelivered holder change sends again with the same event id, and the receivers (the SMS
//!   sandbox, a subscriber deduplicating by `Latch-Event-Id`) see it once.
//! - The grant process: an accepted grant whose compartment changed hands meanwhile fails with
//!   the compartment's reason, the holder stays, and a redelivery does nothing twice.

use crate::common::*;
use crate::lockers::{created, holder_of, reserve, token, world, SITE};
use async_nats::HeaderMap as NatsHeaders;
use futures::StreamExt;
use latch_api::auth::{issue_token, Role};
use latch_domain::Clock;
use latch_nats::server::NatsServer;
use latch_workers::event_consumer::{EventHandler, Outcome};
use latch_workers::locker_notifier::{LockerNotifier, SandboxSms, EVENT_ID_HEADER};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `latch serve` child process with the given roles on `port`.
fn serve(db: &TestDb, nats: &NatsServer, roles: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["serve", "--roles", roles, "--http-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("latch binary runs")
}

/// SIGKILL: no chance to finish anything.
fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let res = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    created(res, &url).await
}

/// Every message on `sub` that arrives within `quiet` of the last one.
async fn drain(sub: &mut async_nats::Subscriber, quiet: Duration) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(m);
    }
    out
}

fn event_ids(messages: &[async_nats::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let header = m
                .headers
                .as_ref()
                .and_then(|h| h.get(EVENT_ID_HEADER))
                .map(|v| v.as_str().to_owned())
                .expect("every notice names its event");
            let body: Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(body["event_id"], header.as_str(), "body and header agree");
            header
        })
        .collect()
}

async fn sms_rows(pool: &sqlx::PgPool, phone: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT message_id, body FROM sandbox_sms WHERE phone = $1 ORDER BY seq")
        .bind(phone)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_serve_was_killed_before_notifying_notifies_once_after_restart() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.unwrap();
    let pool = db.pool().await;
    let client = latch_nats::connect(&nats.url(), "test").await.unwrap();
    latch_nats::streams::ensure_streams(&latch_nats::jetstream(client.clone()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let operator = issue_token(&pool, Role::Operator, "test-operator")
        .await
        .unwrap();

    // The API, relay and projector only: the grant commits and is relayed, nobody notifies.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let api = serve(&db, &nats, "api,relay,projector", port);
    eventually(Duration::from_secs(20), "serve answers", || async {
        let res = http.get(format!("{base}/healthz")).send().await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    post(
        &http,
        format!("{base}/lockers/sites"),
        &operator,
        json!({"site": SITE, "name": "西湖驿站"}),
    )
    .await;
    post(
        &http,
        format!("{base}/lockers/compartments"),
        &operator,
        json!({"site": SITE, "number": "01", "size": "large"}),
    )
    .await;
    for (number, name) in [("13455555555", "李"), ("13499996666", "张")] {
        post(
            &http,
            format!("{base}/lockers/users"),
            &operator,
            json!({"user_number": number, "name": name, "password": crate::lockers::PASSWORD}),
        )
        .await;
    }
    let li = http
        .post(format!("{base}/lockers/login"))
        .json(&json!({"user_number": "13455555555", "password": crate::lockers::PASSWORD}))
        .send()
        .await
        .unwrap();
    let li = created(li, "login").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(10), "compartment projected", || async {
        let n = count(&pool, "SELECT count(*) FROM locker_compartments").await;
        (n == 1).then_some(())
    })
    .await;
    post(
        &http,
        format!("{base}/lockers/reservations"),
        &li,
        json!({"site": SITE, "size": "large"}),
    )
    .await;
    eventually(Duration::from_secs(10), "reservation projected", || async {
        (holder_of_pool(&pool).await.as_deref() == Some("13455555555")).then_some(())
    })
    .await;

    let mut receiver_notes = client
        .subscribe("latch.lockers.notifications.13499996666")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let grant = post(
        &http,
        format!("{base}/lockers/grants"),
        &li,
        json!({"site": SITE, "compartment": "01", "receiver": "13499996666"}),
    )
    .await;
    assert_eq!(grant["status"], "completed");
    // Committed, relayed and projected; then the process dies before any notifier saw it.
    eventually(Duration::from_secs(10), "grant projected", || async {
        (holder_of_pool(&pool).await.as_deref() == Some("13499996666")).then_some(())
    })
    .await;
    kill(api);
    assert!(sms_rows(&pool, "13499996666").await.is_empty());
    assert!(drain(&mut receiver_notes, Duration::from_millis(300))
        .await
        .is_empty());
    let (holder_changed,): (uuid::Uuid,) =
        sqlx::query_as("SELECT event_id FROM events WHERE event_type = 'HolderChanged'")
            .fetch_one(&pool)
            .await
            .unwrap();

    // Every role again: the notifier finds the holder change in the log.
    let restarted = serve(&db, &nats, &all_roles(), free_port());
    let first = tokio::time::timeout(Duration::from_secs(20), receiver_notes.next())
        .await
        .expect("the receiver is notified after the restart")
        .unwrap();
    let mut notes = vec![first];
    notes.extend(drain(&mut receiver_notes, Duration::from_millis(500)).await);
    let sms = eventually(Duration::from_secs(10), "SMS sent", || async {
        let rows = sms_rows(&pool, "13499996666").await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    kill(restarted);

    let ids = event_ids(&notes);
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 1, "one notice once deduplicated: {ids:?}");
    assert_eq!(ids[0], holder_changed.to_string());
    let note: Value = serde_json::from_slice(&notes[0].payload).unwrap();
    assert_eq!(note["kind"], "come_use");
    assert_eq!(sms.len(), 1, "one SMS: {sms:?}");
    assert_eq!(sms[0].0, holder_changed.to_string());
    assert!(sms[0].1.contains("610091A01:01"));
}

async fn holder_of_pool(pool: &sqlx::PgPool) -> Option<String> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT holder FROM locker_compartments WHERE compartment_id = '610091A01:01'",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    row.and_then(|(h,)| h)
}

fn all_roles() -> String {
    latch::config::Role::ALL
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn a_redelivered_holder_change_reaches_each_receiver_once_by_event_id() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    reserve(&app, &li).await;
    let mut notes = app
        .nats
        .subscribe("latch.lockers.notifications.*")
        .await
        .unwrap();
    app.nats.flush().await.unwrap();
    let res = app
        .post(
            "/lockers/grants",
            &li,
            Some(json!({"site": SITE, "compartment": "01", "receiver": "13499996666"})),
        )
        .await;
    created(res, "direct grant").await;
    // One append for the whole direct grant.
    let appended = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type IN ('HolderChanged', 'GrantRequested', 'GrantCompleted')",
    )
    .await;
    assert_eq!(appended, 1);
    eventually(Duration::from_secs(10), "SMS sent", || async {
        (!sms_rows(&app.pool, "13499996666").await.is_empty()).then_some(())
    })
    .await;

    // The same event handled twice more, as after a crash between sending and the ack.
    let event = latch_projections::log::read_range(&app.pool, 0, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == "HolderChanged")
        .unwrap();
    let notifier = LockerNotifier {
        nats: app.nats.clone(),
        js: app.js.clone(),
        sms: std::sync::Arc::new(SandboxSms::new(app.pool.clone())),
    };
    for _ in 0..2 {
        assert_eq!(notifier.handle(&event).await.unwrap(), Outcome::Done);
    }
    // Only this event's notices count: Li's reservation has its own.
    let seen: Vec<_> = drain(&mut notes, Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Latch-Event-Id"))
                .map(|v| v.to_string())
                == Some(event.event_id.to_string())
        })
        .collect();
    let ids = event_ids(&seen);
    assert_eq!(seen.len(), 6, "two notices, three times: at least once");
    let per_subject: HashSet<_> = seen
        .iter()
        .zip(&ids)
        .map(|(m, id)| (m.subject.to_string(), id.clone()))
        .collect();
    assert_eq!(per_subject.len(), 2, "once per receiver by event id");
    assert!(ids.iter().all(|id| *id == event.event_id.to_string()));
    assert_eq!(sms_rows(&app.pool, "13499996666").await.len(), 1);
    let listed: Value = app
        .get("/lockers/sandbox/sms", &app.operator)
        .await
        .json()
        .await
        .unwrap();
    let of_this: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == event.event_id.to_string())
        .collect();
    assert_eq!(of_this.len(), 1, "{listed}");
}

fn signed_answer(grant_id: &str, now: i64) -> (NatsHeaders, String) {
    crate::lockers::signed_nats_answer(grant_id, "01", "msg_p_1", now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_grant_whose_compartment_changed_hands_fails_and_the_holder_stays() {
    // No grant process yet: the acceptance is recorded and waits in the log.
    let app = spawn_app_with(|s| {
        s.roles.retain(|r| *r != latch::config::Role::GrantProcess);
    })
    .await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let zheng = token(&app, "13488888888").await;
    reserve(&app, &zheng).await;
    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "authorizer": "0001"})),
        )
        .await;
    let grant_id = created(res, "grant via authorizer").await["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (headers, body) = signed_answer(&grant_id, app.clock.now().timestamp());
    let reply = app
        .nats
        .request_with_headers("latch.authorizers.0001.answers", headers, body.into())
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["status"], "accepted", "{reply}");
    let accepted = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'GrantAccepted'",
    )
    .await;
    assert_eq!(accepted, 1, "the answer is one command");
    // Meanwhile Zheng hands it directly to 13499996666.
    let res = app
        .post(
            "/lockers/grants",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "receiver": "13499996666"})),
        )
        .await;
    created(res, "direct grant").await;

    // The grant process starts: the compartment refuses, the grant fails with its reason.
    let mut settings = test_settings(&app.db, &app.nats_server, &app.clock);
    settings.roles = vec![latch::config::Role::GrantProcess];
    let worker = latch::Application::build(settings).await.unwrap();
    let stop = latch_workers::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        worker
            .run_until_stopped(async move { s.cancelled().await })
            .await
            .unwrap();
    });
    let grant = eventually(Duration::from_secs(15), "grant failed", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{grant_id}"), &zheng)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "failed").then_some(g)
    })
    .await;
    assert_eq!(grant["reason"], "not_the_holder");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("worker stops")
        .unwrap();
    assert_eq!(
        holder_of(&app, "610091A01:01").await.as_deref(),
        Some("13499996666")
    );

    // The acceptance delivered again changes nothing.
    let events = app.event_count().await;
    let accepted = latch_projections::log::read_range(&app.pool, 0, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == "GrantAccepted")
        .unwrap();
    let process = latch_workers::grant_process::GrantProcess {
        store: std::sync::Arc::new(latch_domain::store::Store::new(app.pool.clone())),
        js: app.js.clone(),
        clock: std::sync::Arc::new(app.clock.clone()),
    };
    for _ in 0..2 {
        assert_eq!(process.handle(&accepted).await.unwrap(), Outcome::Done);
    }
    assert_eq!(app.event_count().await, events);
    let failed = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'GrantFailed'",
    )
    .await;
    assert_eq!(failed, 1);
}
