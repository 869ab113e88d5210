//! Audit (issue 6): reading history, point-in-time answers, verifiable history, safe rebuilds.

use crate::common::*;
use latch_api::auth::{issue_token, Role};
use latch_projections::audit::{rebuild, signing, verify};
use latch_projections::device_status;
use latch_projections::log::{chain_hash, LogRow, GENESIS};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

async fn head(pool: &PgPool) -> i64 {
    latch_projections::log::head(pool).await.unwrap()
}

/// Waits until every event is logged and the device-status projector has applied them.
async fn settled(app: &TestApp) {
    eventually(LIMIT, "log and projection caught up", || async {
        let events = app.event_count().await;
        let h = head(&app.pool).await;
        let cp = latch_projections::projector::checkpoint(&app.pool, device_status::NAME)
            .await
            .unwrap();
        (h == events && cp == h).then_some(())
    })
    .await;
}

async fn auditor(app: &TestApp) -> String {
    issue_token(&app.pool, Role::Auditor, "test-auditor")
        .await
        .unwrap()
}

// ---------------------------------------------------------------- history over HTTP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_auditors_read_history_and_bad_input_is_a_4xx() {
    bounded("auth and input", async {
        let app = spawn_app().await;
        let auditor = auditor(&app).await;
        for path in [
            "/audit/events",
            "/audit/as-of?at=2026-01-01T00:00:00Z",
            "/audit/verify",
            "/audit/checkpoints",
            "/audit/aggregates/device/x",
        ] {
            for token in [&app.user, &app.operator] {
                let res = app.get(path, token).await;
                assert_eq!(res.status(), 403, "{path}");
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"]["code"], "forbidden", "{path}");
            }
            let res = app
                .http
                .get(format!("{}{path}", app.address))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "{path}");
        }
        for (path, field) in [
            ("/audit/events?from=-1", "from"),
            ("/audit/events?from=abc", "from"),
            ("/audit/events?since=yesterday", "since"),
            (
                "/audit/events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
                "until",
            ),
            ("/audit/events?follow=maybe", "follow"),
            ("/audit/as-of", "at"),
            ("/audit/as-of?at=noon", "at"),
            (
                "/audit/as-of?at=2026-01-01T00:00:00Z&device_id=nope",
                "device_id",
            ),
        ] {
            let res = app.get(path, &auditor).await;
            assert_eq!(res.status(), 400, "{path}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["field"], field, "{path}: {body}");
        }
        let res = app.get("/audit/aggregates/device/nothing", &auditor).await;
        assert_eq!(res.status(), 404);

        // Checkpoints over HTTP: exported, checked, and a forged one refused.
        app.register_device("vending", "S1", "one").await;
        settled(&app).await;
        let key = signing::generate_key();
        signing::sign_head(&app.pool, &key).await.unwrap().unwrap();
        let res = app.get("/audit/checkpoints", &auditor).await;
        assert_eq!(res.status(), 200);
        let list: Vec<Value> = res.json().await.unwrap();
        assert_eq!(list.len(), 1);
        let res = app
            .post("/audit/checkpoints/check", &auditor, Some(list[0].clone()))
            .await;
        assert_eq!(res.status(), 200);
        let verdict: Value = res.json().await.unwrap();
        assert_eq!(verdict["consistent"], true, "{verdict}");
        let mut forged = list[0].clone();
        forged["head_hash"] = json!("11".repeat(32));
        let res = app
            .post("/audit/checkpoints/check", &auditor, Some(forged))
            .await;
        assert_eq!(res.status(), 422);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_signature");
        let mut malformed = list[0].clone();
        malformed["public_key"] = json!("zz");
        let res = app
            .post("/audit/checkpoints/check", &auditor, Some(malformed))
            .await;
        assert_eq!(res.status(), 400);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], "public_key");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_streams_in_log_order_with_metadata_and_filters() {
    bounded("history", async {
        let app = spawn_app().await;
        let auditor = auditor(&app).await;
        let a = app.register_device("vending", "S1", "a").await;
        let b = app.register_device("locker", "S1", "b").await;
        let res = app
            .post(&format!("/devices/{a}/open"), &app.operator, None)
            .await;
        assert_eq!(res.status(), 409, "offline: refused, nothing appended");
        app.register_device("vending", "S2", "c").await;
        settled(&app).await;
        let total = head(&app.pool).await;
        assert_eq!(total, 3);

        let res = app.get("/audit/events", &auditor).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        let all = lines(&res.text().await.unwrap());
        assert_eq!(all.len() as i64, total);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e["position"], json!(i as i64 + 1));
            assert_eq!(e["metadata"]["actor"], "operator:test-operator");
            assert!(e["metadata"]["request_id"].is_string());
            assert_eq!(e["hash"].as_str().unwrap().len(), 64);
            assert_eq!(e["event_type"], "DeviceRegistered");
        }
        // The hash on the wire is the chain's.
        let stored: Vec<u8> = sqlx::query_scalar("SELECT hash FROM event_log WHERE position = 2")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(all[1]["hash"], hex::encode(stored));

        let from = lines(
            &app.get("/audit/events?from=1", &auditor)
                .await
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(from.first().unwrap()["position"], 2);
        let only_b = lines(
            &app.get(&format!("/audit/events?aggregate_id={b}"), &auditor)
                .await
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0]["aggregate_id"], b.to_string());
        let none = app
            .get("/audit/events?event_type=DoorOpened", &auditor)
            .await
            .text()
            .await
            .unwrap();
        assert!(none.is_empty());
        let since = all[1]["recorded_at"].as_str().unwrap();
        let until = all[2]["recorded_at"].as_str().unwrap();
        let window = lines(
            &app.http
                .get(format!("{}/audit/events", app.address))
                .query(&[("since", since), ("until", until)])
                .bearer_auth(&auditor)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(window.len(), 1);
        assert_eq!(window[0]["position"], 2);

        let history = lines(
            &app.get(&format!("/audit/aggregates/device/{a}"), &auditor)
                .await
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["sequence"], 1);
        assert_eq!(history[0]["payload"]["DeviceRegistered"]["label"], "a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_hands_over_from_history_to_live_without_gap_or_duplicate() {
    bounded("follow", async {
        let app = spawn_app().await;
        let auditor = auditor(&app).await;
        for i in 0..5 {
            app.register_device("vending", "S1", &format!("before {i}")).await;
        }
        settled(&app).await;
        // Appends start together with the reader, so some land while it reads history, some
        // during the hand-over and some after it.
        let writer = {
            let (http, address, token) =
                (app.http.clone(), app.address.clone(), app.operator.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let res = http
                        .post(format!("{address}/devices"))
                        .bearer_auth(&token)
                        .json(&json!({"kind": "vending", "site": "S1", "label": format!("during {i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 201);
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                }
            })
        };
        let res = app
            .get("/audit/events?from=2&follow=true", &auditor)
            .await;
        assert_eq!(res.status(), 200);
        let mut res = res;
        let mut buf = Vec::new();
        let mut positions = Vec::new();
        while positions.len() < 43 {
            let chunk = res.chunk().await.unwrap().expect("stream open");
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let e: Value = serde_json::from_slice(&line).unwrap();
                positions.push(e["position"].as_i64().unwrap());
            }
        }
        writer.await.unwrap();
        assert_eq!(positions, (3..=45).collect::<Vec<i64>>());
        // And nothing after: no duplicate arrives late.
        let more = tokio::time::timeout(Duration::from_millis(700), res.chunk()).await;
        assert!(more.is_err(), "nothing more to read: {more:?}");
    })
    .await;
}

// ---------------------------------------------------------------- point in time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_agrees_with_the_live_model_now_and_differs_in_the_past() {
    bounded("as-of", async {
        let app = spawn_app().await;
        let auditor = auditor(&app).await;
        let before_all = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = app.register_device("vending", "S1", "a").await;
        settled(&app).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t1 = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A comes online (through the ingest worker) and B is registered after t1.
        app.nats
            .publish(
                latch_nats::subjects::telemetry(&a.to_string(), "heartbeat"),
                serde_json::to_vec(&json!({
                    "v": 1, "msg_id": "m1", "device_id": a, "sent_at": "2026-11-21T08:00:00Z",
                    "type": "heartbeat", "uptime_s": 5
                }))
                .unwrap()
                .into(),
            )
            .await
            .unwrap();
        let b = app.register_device("locker", "S2", "b").await;
        eventually(LIMIT, "a online", || async {
            app.device(a).await.filter(|d| d["online"] == true)
        })
        .await;
        settled(&app).await;

        let at = |t: chrono::DateTime<chrono::Utc>| {
            let app = &app;
            let auditor = auditor.clone();
            async move {
                let res = app
                    .http
                    .get(format!("{}/audit/as-of", app.address))
                    .query(&[("at", t.to_rfc3339())])
                    .bearer_auth(&auditor)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Value>().await.unwrap()
            }
        };
        let now = at(chrono::Utc::now()).await;
        let live: Vec<Value> = device_status::load_all(&app.pool)
            .await
            .unwrap()
            .into_values()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(
            now["devices"],
            json!(live),
            "as of now == the live read model"
        );
        assert_eq!(now["position"], json!(head(&app.pool).await));

        let past = at(t1).await;
        let devices = past["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{past}");
        assert_eq!(devices[0]["device_id"], a.to_string());
        assert_eq!(devices[0]["online"], false, "A was not online yet at t1");
        assert!(now["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == b.to_string()));

        let nothing = at(before_all).await;
        assert_eq!(nothing["devices"], json!([]));
        assert_eq!(nothing["position"], 0);
    })
    .await;
}

// ---------------------------------------------------------------- verifiable history

const META: &str = r#"{"correlation_id":"c","causation_id":"c","actor":"test","request_id":"r"}"#;

async fn insert_event(
    pool: &PgPool,
    id: &str,
    seq: i64,
    event_type: &str,
    version: &str,
    payload: Value,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('device', $1, $2, $3, $4, $5, $6::jsonb)",
    )
    .bind(id)
    .bind(seq)
    .bind(event_type)
    .bind(version)
    .bind(payload)
    .bind(META)
    .execute(pool)
    .await
    .unwrap();
}

fn registered(id: Uuid, label: &str) -> Value {
    json!({"DeviceRegistered": {"device_id": id, "kind": "vending", "site": "S1", "label": label, "at": "2026-11-21T08:00:00Z"}})
}

/// Sequences every event, as the relay would (the transaction horizon is cluster-wide, so other
/// tests' open transactions can hold it back for a moment).
async fn sequence_all(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    loop {
        latch_workers::relay::sequence_batch(&mut conn, 1000)
            .await
            .unwrap();
        let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await
            .unwrap();
        if head(pool).await >= events {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A database with `n` logged device events (two devices, door opening and closing).
async fn logged_db(n: i64) -> (TestDb, PgPool) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (d1, d2) = (Uuid::now_v7(), Uuid::now_v7());
    insert_event(
        &pool,
        &d1.to_string(),
        1,
        "DeviceRegistered",
        "1",
        registered(d1, "one"),
    )
    .await;
    insert_event(
        &pool,
        &d2.to_string(),
        1,
        "DeviceRegistered",
        "1",
        registered(d2, "two"),
    )
    .await;
    for i in 2..n {
        let (id, seq) = if i % 2 == 0 {
            (d1, i / 2 + 1)
        } else {
            (d2, i / 2 + 1)
        };
        let (t, p) = if seq % 2 == 0 {
            (
                "DoorOpened",
                json!({"DoorOpened": {"request_id": null, "at": "2026-11-21T08:00:01Z"}}),
            )
        } else {
            (
                "DoorClosed",
                json!({"DoorClosed": {"at": "2026-11-21T08:00:02Z"}}),
            )
        };
        insert_event(&pool, &id.to_string(), seq, t, "1", p).await;
    }
    sequence_all(&pool).await;
    assert_eq!(head(&pool).await, n);
    (db, pool)
}

/// Runs `sql` as a superuser would, with the append-only triggers out of the way.
async fn tamper(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn walk(pool: &PgPool) -> verify::Report {
    verify::walk(pool, None, &|_| {}).await.unwrap()
}

async fn stored_row(pool: &PgPool, position: i64) -> LogRow {
    latch_projections::log::read_rows(pool, position - 1, Some(position), 1)
        .await
        .unwrap()
        .pop()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_the_untouched_log_and_names_the_first_bad_position_of_each_tampering() {
    bounded("tampering", async {
        // Untouched.
        let (_db, pool) = logged_db(10).await;
        let report = walk(&pool).await;
        assert!(report.intact(), "{report}");
        assert_eq!(report.count, 10);
        assert_eq!(report.head_position, 10);
        assert_eq!(report.head_hash, hex::encode(stored_row(&pool, 10).await.hash));
        assert!(report.to_string().starts_with("intact: 10 events"));

        // A changed payload.
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "UPDATE events SET payload = jsonb_set(payload, '{DoorOpened,at}', '\"2020-01-01T00:00:00Z\"')
                        WHERE event_id = (SELECT event_id FROM event_log WHERE position = 4)").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (4, "hash_mismatch"), "{p:?}");

        // Changed metadata (who did it).
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "UPDATE events SET metadata = metadata || '{\"actor\": \"someone else\"}'
                        WHERE event_id = (SELECT event_id FROM event_log WHERE position = 7)").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (7, "hash_mismatch"), "{p:?}");

        // A deleted event, and a deleted log row.
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "DELETE FROM events WHERE event_id = (SELECT event_id FROM event_log WHERE position = 6)").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (6, "event_missing"), "{p:?}");
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "DELETE FROM events WHERE event_id = (SELECT event_id FROM event_log WHERE position = 6);
                       DELETE FROM event_log WHERE position = 6").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (6, "position_missing"), "{p:?}");

        // Two rows reordered (their events swap positions; the stored hashes stay).
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "UPDATE event_log SET position = 1000003 WHERE position = 3;
                       UPDATE event_log SET position = 3 WHERE position = 8;
                       UPDATE event_log SET position = 8 WHERE position = 1000003").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (3, "link_broken"), "{p:?}");
        // The same with the hashes left in place (only the events moved).
        let (_db, pool) = logged_db(10).await;
        tamper(&pool, "UPDATE event_log SET event_id = gen_random_uuid() WHERE position = 3;
                       UPDATE event_log l SET event_id = e.event_id FROM event_log x JOIN events e ON e.id = x.event_row_id
                        WHERE l.position = 8 AND x.position = 3;
                       UPDATE event_log l SET event_id = e.event_id FROM events e
                        WHERE l.position = 3 AND e.id = (SELECT event_row_id FROM event_log WHERE position = 8)").await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (3, "hash_mismatch"), "{p:?}");

        // A forged event spliced in at 5, carelessly (its hash made up) ...
        let (_db, pool) = logged_db(10).await;
        splice_forged(&pool, 5, false).await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (5, "hash_mismatch"), "{p:?}");
        // ... and carefully (its own link correct): the next position no longer links.
        let (_db, pool) = logged_db(10).await;
        splice_forged(&pool, 5, true).await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (6, "link_broken"), "{p:?}");

        // A forged event slipped into events behind the relay's cursor, with no log row.
        let (_db, pool) = logged_db(10).await;
        let ghost = Uuid::now_v7();
        tamper(&pool, &format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, id, event_id, tx_id, recorded_at)
             VALUES ('device', '{ghost}', 1, 'DeviceRegistered', '1', '{}', '{META}', 0, gen_random_uuid(), '3'::xid8, now())",
            registered(ghost, "ghost"))).await;
        let p = walk(&pool).await.problem.expect("caught");
        assert_eq!((p.position, p.kind), (1, "unlogged_event"), "{p:?}");
        assert!(p.detail.contains(&ghost.to_string()));
    })
    .await;
}

/// Moves positions >= `at` one up and puts a forged event at `at`.
async fn splice_forged(pool: &PgPool, at: i64, careful: bool) {
    let forged_device = Uuid::now_v7();
    tamper(pool, &format!(
        "UPDATE event_log SET position = position + 1000000 WHERE position >= {at};
         UPDATE event_log SET position = position - 999999 WHERE position > 1000000;
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, id, event_id, tx_id, recorded_at)
         VALUES ('device', '{forged_device}', 1, 'DeviceRegistered', '1', '{}', '{META}', 100000, gen_random_uuid(), '3'::xid8, now())",
        registered(forged_device, "forged"))).await;
    let prev = stored_row(pool, at - 1).await.hash;
    let row = sqlx::query(
        "SELECT event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload_json, metadata::text AS metadata_json, recorded_at
           FROM events WHERE aggregate_id = $1",
    )
    .bind(forged_device.to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    let forged = LogRow::from_event_row(&row, at).unwrap();
    let hash = if careful {
        chain_hash(&prev, &forged.chain_bytes())
    } else {
        [9; 32]
    };
    let id: Uuid = row.try_get("event_id").unwrap();
    tamper(
        pool,
        &format!(
            "INSERT INTO event_log (position, event_id, tx_id, event_row_id, prev_hash, hash)
         VALUES ({at}, '{id}', '3'::xid8, 100000, '\\x{}', '\\x{}')",
            hex::encode(prev),
            hex::encode(hash)
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_catch_a_rewrite_the_chain_alone_cannot_and_refuse_forgeries() {
    bounded("checkpoints", async {
        let (_db, pool) = logged_db(10).await;
        let key = signing::generate_key();
        let cp = signing::sign_head(&pool, &key).await.unwrap().unwrap();
        assert_eq!(cp.position, 10);
        let exported = signing::list(&pool, None).await.unwrap();
        assert_eq!(exported, vec![cp.clone()]);
        // Kept by an auditor as JSON, read back later.
        let kept: signing::SignedCheckpoint =
            serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();

        // History grows: the old checkpoint still holds.
        let d = Uuid::now_v7();
        insert_event(&pool, &d.to_string(), 1, "DeviceRegistered", "1", registered(d, "later")).await;
        sequence_all(&pool).await;
        let verdict = signing::check(&pool, &kept, Some(&key.verifying_key())).await.unwrap();
        assert!(verdict.consistent, "{verdict:?}");

        // Forgeries: a changed field, a signature by another key presented as trusted.
        let mut forged = kept.clone();
        forged.position = 9;
        assert!(matches!(
            signing::check(&pool, &forged, None).await,
            Err(signing::CheckpointError::BadSignature)
        ));
        let other = signing::generate_key();
        let head10 = stored_row(&pool, 10).await.hash;
        let impostor = signing::sign(&other, 10, &head10);
        assert!(matches!(
            signing::check(&pool, &impostor, Some(&key.verifying_key())).await,
            Err(signing::CheckpointError::UntrustedKey { .. })
        ));

        // A careful rewrite: a payload changed at 4 and every later link recomputed. The chain
        // alone now looks intact; the signed checkpoint does not.
        tamper(&pool, "UPDATE events SET payload = jsonb_set(payload, '{DoorOpened,at}', '\"2020-01-01T00:00:00Z\"')
                        WHERE event_id = (SELECT event_id FROM event_log WHERE position = 4)").await;
        let rows = latch_projections::log::read_rows(&pool, 0, None, 100).await.unwrap();
        let mut prev = GENESIS;
        for row in rows {
            let hash = chain_hash(&prev, &row.chain_bytes());
            tamper(&pool, &format!(
                "UPDATE event_log SET prev_hash = '\\x{}', hash = '\\x{}' WHERE position = {}",
                hex::encode(prev), hex::encode(hash), row.position)).await;
            prev = hash;
        }
        assert!(walk(&pool).await.intact(), "the rewriter recomputed the chain");
        let verdict = signing::check(&pool, &kept, Some(&key.verifying_key())).await.unwrap();
        assert!(!verdict.consistent, "{verdict:?}");
        assert!(verdict.detail.contains("rewritten"), "{verdict:?}");
    })
    .await;
}

// ---------------------------------------------------------------- rebuilds and upcasting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_equals_the_live_model_while_readers_keep_being_served() {
    bounded("rebuild", async {
        let app = spawn_app().await;
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(
                app.register_device(
                    if i % 2 == 0 { "vending" } else { "locker" },
                    "S1",
                    &format!("d{i}"),
                )
                .await,
            );
        }
        settled(&app).await;
        let before = device_status::load_all(&app.pool).await.unwrap();
        assert_eq!(before.len(), 30);

        let stop = latch_workers::CancellationToken::new();
        let reader = {
            let (http, address, token, stop) = (
                app.http.clone(),
                app.address.clone(),
                app.user.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.is_cancelled() {
                    let res = http
                        .get(format!("{address}/devices?limit=1000"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    if res.status() == 200 && res.json::<Vec<Value>>().await.unwrap().len() >= 30 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (ok, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let done = rebuild::rebuild_named(&app.pool, "device_status", &|_| {})
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let (ok, failed) = reader.await.unwrap();
        assert!(ok > 5, "reads kept answering during the rebuild ({ok})");
        assert_eq!(failed, 0);
        assert_eq!(done.rows, 30);
        assert_eq!(done.position, head(&app.pool).await);

        let after = device_status::load_all(&app.pool).await.unwrap();
        assert_eq!(after, before, "the rebuilt table is the live model");
        assert_eq!(after, device_status::fold_log(&app.pool).await.unwrap());
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'device_status' ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            indexes,
            vec!["device_status_pending_open", "device_status_pkey"]
        );
        let shadow: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('device_status__rebuild')::text")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(shadow, None);

        // The live projector goes on from the swapped-in checkpoint, into the new table.
        let late = app.register_device("vending", "S9", "after the swap").await;
        eventually(LIMIT, "live projector after the swap", || async {
            app.device(late).await
        })
        .await;
        settled(&app).await;
        assert_eq!(
            device_status::load_all(&app.pool).await.unwrap(),
            device_status::fold_log(&app.pool).await.unwrap()
        );
        // A second rebuild over the first one's table works too (index names came back).
        rebuild::rebuild_named(&app.pool, "device_status", &|_| {})
            .await
            .unwrap();
        assert_eq!(device_status::load_all(&app.pool).await.unwrap().len(), 31);
        rebuild::rebuild_named(&app.pool, "qr_login_status", &|_| {})
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_event_version_is_read_through_the_upcaster_beside_the_new_one() {
    bounded("upcaster", async {
        let app = spawn_app().await;
        let auditor = auditor(&app).await;
        // A prototype cabinet's registration, stored as version 0 (label called `name`, no kind).
        let old = Uuid::now_v7();
        insert_event(&app.pool, &old.to_string(), 1, "DeviceRegistered", "0",
            json!({"DeviceRegistered": {"device_id": old, "site": "S1", "name": "prototype", "at": "2026-11-21T08:00:00Z"}})).await;
        let new = app.register_device("locker", "S1", "current").await;
        settled(&app).await;

        let old_view = app.device(old).await.expect("v0 device projected");
        assert_eq!(old_view["label"], "prototype");
        assert_eq!(old_view["kind"], "vending");
        assert_eq!(app.device(new).await.unwrap()["label"], "current");
        // The aggregate loads through the same upcaster: a command on the old device is decided
        // (refused because it is offline), not an internal error.
        let res = app.post(&format!("/devices/{old}/open"), &app.operator, None).await;
        assert_eq!(res.status(), 409);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "device_offline");

        // The stored row is untouched, and so is the chain.
        let (version, payload): (String, Value) = sqlx::query_as(
            "SELECT event_version, payload FROM events WHERE aggregate_id = $1",
        )
        .bind(old.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(version, "0");
        assert_eq!(payload["DeviceRegistered"]["name"], "prototype");
        assert!(payload["DeviceRegistered"].get("label").is_none());
        assert!(walk(&app.pool).await.intact());
        let history = lines(&app.get(&format!("/audit/aggregates/device/{old}"), &auditor).await.text().await.unwrap());
        assert_eq!(history[0]["event_version"], "0", "auditors see what was stored");

        // Rebuild and as-of read both versions the same way as the live projector.
        let live = device_status::load_all(&app.pool).await.unwrap();
        rebuild::rebuild_named(&app.pool, "device_status", &|_| {}).await.unwrap();
        assert_eq!(device_status::load_all(&app.pool).await.unwrap(), live);
        let now = latch_projections::audit::as_of::as_of(&app.pool, chrono::Utc::now(), None).await.unwrap();
        assert_eq!(now.devices, live.into_values().collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_stops_a_rebuild_and_names_it() {
    bounded("unknown event", async {
        let (_db, pool) = logged_db(4).await;
        let (before,): (i64,) = sqlx::query_as("SELECT count(*) FROM device_status")
            .fetch_one(&pool)
            .await
            .unwrap();
        let id: String = sqlx::query_scalar("SELECT aggregate_id FROM events ORDER BY id LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        insert_event(
            &pool,
            &id,
            10,
            "DeviceTeleported",
            "1",
            json!({"DeviceTeleported": {"to": "Mars"}}),
        )
        .await;
        sequence_all(&pool).await;
        let err = rebuild::rebuild_named(&pool, "device_status", &|_| {})
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("DeviceTeleported"), "{message}");
        assert!(message.contains("position 5"), "{message}");
        // The live table is as it was, and no shadow is left behind.
        let (after,): (i64,) = sqlx::query_as("SELECT count(*) FROM device_status")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(after, before);
        let shadow: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('device_status__rebuild')::text")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(shadow, None);
        assert!(matches!(
            rebuild::rebuild_named(&pool, "nope", &|_| {}).await,
            Err(rebuild::RebuildError::UnknownProjection(_))
        ));
    })
    .await;
}
