//! DESIGN.md sections 1 and 4: the store is append-only, every event carries its metadata, and a
//! command's idempotency key makes a retry return the first outcome.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_rewrite_events() {
    let mut app = spawn_app().await;
    app.register_device("vending", "S1", "A").await;
    eventually(Duration::from_secs(10), "logged", || async {
        (count(&app.pool, "SELECT count(*) FROM event_log").await == 1).then_some(())
    })
    .await;
    // Stopped, so the table locks below meet no relay (TRUNCATE would deadlock rather than
    // reach its trigger).
    app.stop().await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE event_log SET hash = hash",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_carries_its_metadata_and_database_stamps() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(format!("{}/devices", app.address))
        .bearer_auth(&app.operator)
        .header("x-correlation-id", "0193a000-0000-7000-8000-00000000c0de")
        .json(&json!({"kind": "locker", "site": "610091A01", "label": "快递柜"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (metadata, event_id, recorded, tx): (
        Value,
        uuid::Uuid,
        chrono::DateTime<chrono::Utc>,
        String,
    ) = sqlx::query_as("SELECT metadata, event_id, recorded_at, tx_id::text FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(metadata["actor"], "operator:test-operator");
    assert_eq!(
        metadata["correlation_id"],
        "0193a000-0000-7000-8000-00000000c0de"
    );
    assert_eq!(metadata["request_id"], request_id.as_str());
    assert_eq!(metadata["causation_id"], request_id.as_str());
    assert_eq!(metadata["command"], "RegisterDevice");
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUIDv7");
    assert!((chrono::Utc::now() - recorded).num_seconds().abs() < 60);
    assert!(tx.parse::<u64>().unwrap() > 0);

    // Metadata is required: a bare insert is refused.
    let err = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('device', 'x', 1, 'DeviceRegistered', '1', '{}', '{}')",
    )
    .execute(&app.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_returns_the_first_outcome_and_appends_nothing() {
    let app = spawn_app().await;
    let send = |key: &'static str, label: &'static str| {
        let http = app.http.clone();
        let url = format!("{}/devices", app.address);
        let token = app.operator.clone();
        async move {
            let res = http
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&json!({"kind": "vending", "site": "S1", "label": label}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    // Eight concurrent copies of one request: one device.
    let copies: Vec<_> = (0..8).map(|_| tokio::spawn(send("k-1", "same"))).collect();
    let mut answers = Vec::new();
    for c in copies {
        answers.push(c.await.unwrap());
    }
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
        assert_eq!(body["device_id"], answers[0].1["device_id"]);
        assert_eq!(body["registered_at"], answers[0].1["registered_at"]);
    }
    assert_eq!(app.event_count().await, 1);

    // The same key for a different request is refused, and writes nothing.
    let (status, body) = send("k-1", "different").await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 1);

    // Keys are scoped to their sender: another operator's k-1 is a new request.
    let other = latch_api::auth::issue_token(&app.pool, latch_api::auth::Role::Operator, "other")
        .await
        .unwrap();
    let res = app
        .http
        .post(format!("{}/devices", app.address))
        .bearer_auth(other)
        .header("Idempotency-Key", "k-1")
        .json(&json!({"kind": "vending", "site": "S1", "label": "same"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_under_a_taken_id_falls_back_to_a_real_load() {
    use latch_domain::device::{DeviceCommand, DeviceError, DeviceId, DeviceKind, Label, SiteCode};
    use latch_domain::store::{CommandContext, CommandError, Store};
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let store = Store::new(pool.clone());
    let id = DeviceId::generate();
    let register = || DeviceCommand::Register {
        device_id: id,
        kind: DeviceKind::Vending,
        site: SiteCode::parse("site", "S1").unwrap(),
        label: Label::parse("label", "x", 80).unwrap(),
        at: start_time(),
    };
    let key = id.to_string();
    let ctx = CommandContext::new("test");
    let first = store
        .devices
        .create(&key, "Register", register(), &ctx)
        .await
        .unwrap();
    assert_eq!(first.events.len(), 1);
    // The same id again: the shortcut's empty stream meets the primary key, and the retry
    // reads the real stream and refuses.
    let again = store
        .devices
        .create(&key, "Register", register(), &CommandContext::new("test"))
        .await;
    assert!(
        matches!(
            again,
            Err(CommandError::Rejected(DeviceError::AlreadyRegistered))
        ),
        "{again:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 1);
}

fn row(id: &str, sequence: i64, metadata: Value) -> latch_domain::group_commit::Row {
    latch_domain::group_commit::Row {
        aggregate_type: "test".into(),
        aggregate_id: id.into(),
        sequence,
        event_type: "Tested".into(),
        event_version: "1".into(),
        payload: json!({"Tested": {}}),
        metadata,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_reports_each_row_on_its_own() {
    use latch_domain::group_commit::{Appended, GroupCommit};
    let db = TestDb::new().await;
    let pool = db.pool().await;
    latch_domain::store::MIGRATOR.run(&pool).await.unwrap();
    let group = std::sync::Arc::new(GroupCommit::new(pool.clone()));
    let meta = json!({"correlation_id": "c", "causation_id": "c", "actor": "t", "request_id": "r"});

    // Twenty writers race for one sequence number: one wins, nineteen hear of a conflict,
    // while a hundred unrelated rows and one the database refuses are appended beside them.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (group, meta) = (group.clone(), meta.clone());
        tasks.spawn(async move { ("race", i, group.append(row("same", 1, meta)).await) });
    }
    for i in 0..100 {
        let (group, meta) = (group.clone(), meta.clone());
        tasks.spawn(async move {
            (
                "own",
                i,
                group.append(row(&format!("own-{i}"), 1, meta)).await,
            )
        });
    }
    let group2 = group.clone();
    tasks.spawn(async move {
        (
            "bad",
            0,
            group2
                .append(row("bad", 1, json!({"actor": "no ids"})))
                .await,
        )
    });
    let (mut won, mut lost, mut own, mut refused) = (0, 0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            ("race", _, Ok(Appended::Inserted)) => won += 1,
            ("race", _, Ok(Appended::Conflict)) => lost += 1,
            ("own", _, Ok(Appended::Inserted)) => own += 1,
            ("bad", _, Err(_)) => refused += 1,
            other => panic!(
                "unexpected outcome {:?}",
                (other.0, other.1, other.2.map(|_| ()))
            ),
        }
    }
    assert_eq!((won, lost, own, refused), (1, 19, 100, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 101);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE aggregate_id = 'bad'"
        )
        .await,
        0
    );
}
