//! DESIGN.md section 2: every committed event, once, in order, never skipped.

use crate::common::*;
use latch_domain::device::{DeviceEvent, DeviceId, DeviceKind, Label, SiteCode};
use latch_nats::subjects::EVENTS_STREAM;
use latch_projections::LoggedEvent;
use std::collections::HashSet;
use std::time::Duration;

async fn log_head(app: &TestApp) -> i64 {
    latch_projections::log::head(&app.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_published_once_and_before_everything_after_it() {
    let app = spawn_app().await;
    app.register_device("vending", "S1", "warm-up").await;
    eventually(Duration::from_secs(10), "warm-up event logged", || async {
        (log_head(&app).await == 1).then_some(())
    })
    .await;

    // A writer that appends and then dawdles before committing.
    let late_device = DeviceId::generate();
    let payload = serde_json::to_value(DeviceEvent::DeviceRegistered {
        device_id: late_device,
        kind: DeviceKind::Locker,
        site: SiteCode::parse("site", "S1").unwrap(),
        label: Label::parse("label", "late", 80).unwrap(),
        at: start_time(),
    })
    .unwrap();
    let mut late = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('device', $1, 1, 'DeviceRegistered', '1', $2,
                 '{\"correlation_id\":\"c\",\"causation_id\":\"c\",\"actor\":\"test\",\"request_id\":\"r\"}')",
    )
    .bind(late_device.to_string())
    .bind(&payload)
    .execute(&mut *late)
    .await
    .unwrap();

    // 100 others commit while it is open.
    let mut handles = Vec::new();
    for chunk in 0..10 {
        let http = app.http.clone();
        let address = app.address.clone();
        let token = app.operator.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..10 {
                let res = http
                    .post(format!("{address}/devices"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"kind": "vending", "site": "S1", "label": format!("d{chunk}-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        app.event_count().await,
        101,
        "100 committed, the late one not yet visible"
    );
    // Give the relay ample chances to (wrongly) run ahead of the open transaction.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_head(&app).await,
        1,
        "nothing may get a position past an open writer"
    );

    late.commit().await.unwrap();
    eventually(Duration::from_secs(10), "all 102 events logged", || async {
        (log_head(&app).await == 102).then_some(())
    })
    .await;
    let (late_position,): (i64,) = sqlx::query_as(
        "SELECT l.position FROM event_log l JOIN events e USING (event_id) WHERE e.aggregate_id = $1",
    )
    .bind(late_device.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        late_position, 2,
        "the late commit comes before everything that committed after it"
    );

    // JetStream: one message per event, sequence == log position, Msg-Id == event id.
    let messages = eventually(Duration::from_secs(10), "all published", || async {
        let m = stream_messages(&app.js, EVENTS_STREAM).await;
        (m.len() == 102).then_some(m)
    })
    .await;
    let mut ids = HashSet::new();
    for m in &messages {
        let event: LoggedEvent = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(m.sequence as i64, event.position);
        let msg_id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned();
        assert_eq!(msg_id, event.event_id.to_string());
        assert!(ids.insert(msg_id), "no event published twice");
    }
    let (db_ids,): (Vec<uuid::Uuid>,) = sqlx::query_as("SELECT array_agg(event_id) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let db_ids: HashSet<String> = db_ids.iter().map(|u| u.to_string()).collect();
    assert_eq!(ids, db_ids, "exactly the stored events were published");
    // The projection saw the late device too.
    eventually(Duration::from_secs(10), "late device projected", || async {
        app.device(late_device.as_uuid()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_chain_links_every_position() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.register_device("locker", "610091A01", &format!("格口柜 {i}"))
            .await;
    }
    eventually(Duration::from_secs(10), "5 logged", || async {
        (log_head(&app).await == 5).then_some(())
    })
    .await;
    let rows = latch_projections::log::read_rows(&app.pool, 0, None, 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    let mut prev = latch_projections::log::GENESIS.to_vec();
    for r in &rows {
        let (stored_prev,): (Vec<u8>,) =
            sqlx::query_as("SELECT prev_hash FROM event_log WHERE position = $1")
                .bind(r.position)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(stored_prev, prev);
        let expect = latch_projections::log::chain_hash(&prev, &r.chain_bytes());
        assert_eq!(r.hash, expect);
        prev = expect.to_vec();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_leader_goes() {
    use latch::config::Role;
    // The app itself runs no relay; two relay-only instances compete for the lead.
    let app = spawn_app_with(|s| s.roles.retain(|r| *r != Role::Relay)).await;
    let (stop_a, task_a) = relay_instance(&app).await;
    let (stop_b, task_b) = relay_instance(&app).await;
    let leaders = || async {
        count(
            &app.pool,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND ((classid::bigint << 32) | objid::bigint) = {}",
                latch_workers::relay::LEADER_LOCK
            ),
        )
        .await
    };
    for i in 0..3 {
        app.register_device("vending", "S1", &format!("first {i}"))
            .await;
    }
    eventually(
        Duration::from_secs(10),
        "published by the leader",
        || async {
            let mut s = app.js.get_stream(EVENTS_STREAM).await.ok()?;
            (s.info().await.ok()?.state.last_sequence == 3).then_some(())
        },
    )
    .await;
    assert_eq!(leaders().await, 1, "exactly one relay leads");

    // Whichever leads, stop both in turn: the other must carry on alone.
    stop_a.cancel();
    task_a.await.unwrap();
    for i in 0..3 {
        app.register_device("vending", "S1", &format!("second {i}"))
            .await;
    }
    eventually(
        Duration::from_secs(15),
        "published after the first relay left",
        || async {
            let mut s = app.js.get_stream(EVENTS_STREAM).await.ok()?;
            (s.info().await.ok()?.state.last_sequence == 6).then_some(())
        },
    )
    .await;
    assert_eq!(leaders().await, 1);
    stop_b.cancel();
    task_b.await.unwrap();
    eventually(Duration::from_secs(5), "lock released", || async {
        (leaders().await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_order_is_numeric_transaction_order_not_text_order() {
    use sqlx::Connection;
    // Transaction ids 9 and 10 sort the other way round as text; the relay must order by the
    // xid8 value. (Regression: an alias once made it sort by the text form.)
    let db = TestDb::new().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_stamp")
        .execute(&mut conn)
        .await
        .unwrap();
    for (aggregate, tx) in [("ten", "10"), ("nine", "9"), ("hundred", "100")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, tx_id)
             VALUES ('probe', $1, 1, 'Probed', '1', '{}',
                     '{\"correlation_id\":\"c\",\"causation_id\":\"c\",\"actor\":\"t\",\"request_id\":\"r\"}',
                     $2::text::xid8)",
        )
        .bind(aggregate)
        .bind(tx)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let first = latch_workers::relay::sequence_batch(&mut conn, 2)
        .await
        .unwrap();
    let rest = latch_workers::relay::sequence_batch(&mut conn, 10)
        .await
        .unwrap();
    let order: Vec<&str> = first
        .iter()
        .chain(rest.iter())
        .map(|r| r.aggregate_id.as_str())
        .collect();
    assert_eq!(order, ["nine", "ten", "hundred"]);
    assert_eq!(
        latch_workers::relay::sequence_batch(&mut conn, 10)
            .await
            .unwrap()
            .len(),
        0,
        "nothing is sequenced twice"
    );
}

/// The stream is the log's mirror: message `n` carries the event id of log position `n`, for
/// every position, and nothing more.
async fn assert_stream_mirrors_log(app: &TestApp) {
    let head = log_head(app).await;
    let rows = latch_projections::log::read_rows(&app.pool, 0, None, i64::MAX)
        .await
        .unwrap();
    let messages = stream_messages(&app.js, EVENTS_STREAM).await;
    assert_eq!(messages.len() as i64, head, "one message per log position");
    for (row, message) in rows.iter().zip(&messages) {
        assert_eq!(message.sequence, row.position as u64);
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(|v| v.to_string()),
            Some(row.event_id.to_string()),
            "sequence {}",
            message.sequence
        );
    }
}

async fn stream_last(app: &TestApp) -> Option<u64> {
    let mut s = app.js.get_stream(EVENTS_STREAM).await.ok()?;
    Some(s.info().await.ok()?.state.last_sequence)
}

/// A relay-only instance of Latch on the app's database and NATS, stopped by the token.
async fn relay_instance(
    app: &TestApp,
) -> (
    latch_workers::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let mut s = test_settings(&app.db, &app.nats_server, &app.clock);
    s.roles = vec![latch::config::Role::Relay];
    let instance = latch::Application::build(s).await.expect("a relay");
    let stop = latch_workers::CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        instance
            .run_until_stopped(async move { token.cancelled().await })
            .await
            .unwrap()
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_to_events_from_outside_stops_the_relay_until_reconciled() {
    use latch::config::Role;
    let app = spawn_app_with(|s| s.roles.retain(|r| *r != Role::Relay)).await;
    let (stop, task) = relay_instance(&app).await;
    for i in 0..3 {
        app.register_device("vending", "S1", &format!("before {i}"))
            .await;
    }
    let before = app.event_count().await as u64;
    eventually(Duration::from_secs(15), "published", || async {
        (stream_last(&app).await? == before).then_some(())
    })
    .await;

    // Someone with the right to publish on latch.events.> slips a message in.
    app.js
        .publish("latch.events.device.DeviceRegistered.forged", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let id = app.register_device("vending", "S1", "after").await;
    // The relay sees the stranger at the sequence its next event should have, and stops
    // instead of publishing that event one place late (or skipping it).
    let alarm = eventually(Duration::from_secs(15), "the alarm", || async {
        latch_projections::log::relay_alarm(&app.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(alarm.contains("diverged"), "{alarm}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stream_last(&app).await,
        Some(before + 1),
        "nothing published past the stranger"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["events_stream"], "diverged", "{body}");

    // With the relay still leading, the repair refuses (it would race the relay).
    assert!(latch_workers::reconcile::reconcile(&app.pool, &app.js)
        .await
        .is_err());
    stop.cancel();
    task.await.unwrap();
    let done = latch_workers::reconcile::reconcile(&app.pool, &app.js)
        .await
        .expect("reconcile");
    assert_eq!(done.stream_last, before + 1);
    assert_eq!(done.agreed_through, before);
    assert_eq!(done.log_head, log_head(&app).await);
    assert_stream_mirrors_log(&app).await;
    assert_eq!(
        latch_projections::log::relay_alarm(&app.pool)
            .await
            .unwrap(),
        None
    );
    assert!(
        done.consumers.iter().all(|(_, start)| *start <= before + 1),
        "no consumer starts past the point of agreement: {:?}",
        done.consumers
    );

    // A relay started again carries on at the right sequences, and the read models saw the
    // event published late.
    let (stop, task) = relay_instance(&app).await;
    let later = app.register_device("vending", "S1", "later").await;
    eventually(Duration::from_secs(15), "published again", || async {
        (stream_last(&app).await? == app.event_count().await as u64).then_some(())
    })
    .await;
    assert_stream_mirrors_log(&app).await;
    for device in [id, later] {
        eventually(Duration::from_secs(15), "projected", || async {
            app.device(device).await
        })
        .await;
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_under_the_relay_is_refilled_from_the_log_in_order() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.register_device("vending", "S1", &format!("before {i}"))
            .await;
    }
    let before = app.event_count().await as u64;
    eventually(Duration::from_secs(15), "published", || async {
        (stream_last(&app).await? == before).then_some(())
    })
    .await;
    app.js.delete_stream(EVENTS_STREAM).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(
            app.register_device("vending", "S1", &format!("after {i}"))
                .await,
        );
    }
    eventually(Duration::from_secs(20), "the stream refilled", || async {
        (stream_last(&app).await? == app.event_count().await as u64).then_some(())
    })
    .await;
    assert_stream_mirrors_log(&app).await;
    for id in ids {
        eventually(Duration::from_secs(15), "projected", || async {
            app.device(id).await
        })
        .await;
    }
}
