//! Secrets out of the log (issue 13): signing secrets, passwords, password hashes and pickup
//! codes never reach `/audit/events`, the `EVENTS` stream or the snapshots table; events written
//! before (version 1, with the secret inside) still work and are never shown with it; unknown
//! user numbers cost what known ones do; short authorizer secrets are refused.

use crate::common::*;
use crate::lockers::{
    accepted, authorizer, callback, created, endpoint, error_of, login, reserve, signed, token,
    world, PASSWORD, SECRET_A, SITE,
};
use base64::Engine;
use latch_api::auth::{issue_token, Role};
use latch_domain::clock::Clock;
use latch_domain::store::snapshot::Shape;
use latch_domain::store::Store;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// A courier company registered before the vault: its secret sits in its v1 event.
const LEGACY_SECRET: &str = "whsec_bGVnYWN5LWNvdXJpZXItc2VjcmV0LWZyb20tYmVmb3JlLXRoZS12YXVsdA==";
const LEGACY_PASSWORD: &str = "legacy-pass-1";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Everything readers of the log can get: the whole `/audit/events` output, every message of
/// the `EVENTS` stream (once the relay has published every event), and the snapshots table.
async fn everything_readers_see(app: &TestApp) -> Vec<(&'static str, String)> {
    let auditor = issue_token(&app.pool, Role::Auditor, "secrets-auditor")
        .await
        .unwrap();
    // Workers may still be appending (the grant process after an answer): wait until every
    // event committed so far is on the stream, then read the log, which has at least those.
    let events = eventually(Duration::from_secs(15), "every event published", || async {
        let events = app.event_count().await;
        let n = stream_messages(&app.js, "EVENTS").await.len() as i64;
        (n >= events).then_some(events)
    })
    .await;
    let res = app.get("/audit/events", &auditor).await;
    assert_eq!(res.status(), 200);
    let audit = res.text().await.unwrap();
    assert!(audit.lines().count() as i64 >= events, "the whole log");
    let mut seen = vec![("/audit/events", audit)];
    for m in stream_messages(&app.js, "EVENTS").await {
        seen.push(("EVENTS", String::from_utf8_lossy(&m.payload).into_owned()));
        for (name, values) in m.headers.iter() {
            for v in values {
                seen.push(("EVENTS header", format!("{name}: {v}")));
            }
        }
    }
    let snapshots: Vec<(String,)> = sqlx::query_as("SELECT state::text FROM snapshots")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    seen.extend(snapshots.into_iter().map(|(s,)| ("snapshots", s)));
    seen
}

fn assert_absent(seen: &[(&str, String)], needles: &[(&str, String)]) {
    for (what, needle) in needles {
        assert!(needle.len() >= 8, "{what} is too short to search for");
        for (place, text) in seen {
            assert!(
                !text.contains(needle.as_str()),
                "{what} found in {place}: {text}"
            );
        }
    }
}

/// Snapshots of the aggregates that hold secrets, taken now (they are otherwise written only
/// every 50 events), so the search below also covers what a snapshot would keep.
async fn snapshot_now(app: &TestApp, authorizer: &str, user: &str, compartment: &str) {
    let store = Store::new(app.pool.clone());
    let journal = latch_domain::store::journal::Journal::new(app.pool.clone());
    let seq = |t: &'static str, id: String| {
        let pool = app.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(t)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            n as usize
        }
    };
    use latch_domain::locker::{Authorizer, Compartment, LockerUser};
    let a = store.authorizers.load(authorizer).await.unwrap().unwrap();
    let n = seq("locker_authorizer", authorizer.into()).await;
    journal
        .save_snapshot(authorizer, n, &Shape::of::<Authorizer>(), &a)
        .await;
    let u = store.locker_users.load(user).await.unwrap().unwrap();
    let n = seq("locker_user", user.into()).await;
    journal
        .save_snapshot(user, n, &Shape::of::<LockerUser>(), &u)
        .await;
    let c = store.compartments.load(compartment).await.unwrap().unwrap();
    let n = seq("locker_compartment", compartment.into()).await;
    journal
        .save_snapshot(compartment, n, &Shape::of::<Compartment>(), &c)
        .await;
    assert_eq!(count(&app.pool, "SELECT count(*) FROM snapshots").await, 3);
}

#[tokio::test]
async fn no_secret_password_hash_or_pickup_code_reaches_the_log_the_stream_or_snapshots() {
    let app = spawn_app().await;
    let (endpoint_a, _) = endpoint().await;
    // Users with PASSWORD, authorizers 0001 (SECRET_A) and 0002.
    world(&app, &endpoint_a).await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let body = created(
        app.post(
            &format!("/lockers/compartments/{id}/deposit"),
            &li,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await,
        "deposit",
    )
    .await;
    let code = body["pickup_code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 12, "pickup codes are 12 digits: {code}");
    assert!(code.bytes().all(|b| b.is_ascii_digit()));

    let (argon,): (String,) =
        sqlx::query_as("SELECT password_hash FROM credentials WHERE user_number = '13455555555'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(argon.starts_with("$argon2id$"));
    let (ciphertext,): (Vec<u8>,) = sqlx::query_as("SELECT ciphertext FROM secrets LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let key_a = base64::engine::general_purpose::STANDARD
        .decode(SECRET_A.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert!(!ciphertext
        .windows(key_a.len())
        .any(|w| w == key_a.as_slice()));
    snapshot_now(&app, "0001", "13455555555", &id).await;

    let seen = everything_readers_see(&app).await;
    // The deposit is there, keyed: its MAC, not the code or anything a code is tried against.
    let audit = &seen[0].1;
    assert!(audit.contains("\"pickup_code_mac\""), "{audit}");
    assert!(audit.contains("\"secret_id\": \"fp_"), "{audit}");
    assert!(audit.contains("\"credential_id\": \"cred_"), "{audit}");
    let argon_tail = argon.rsplit('$').next().unwrap().to_owned();
    assert_absent(
        &seen,
        &[
            ("the whsec secret", SECRET_A.to_owned()),
            (
                "the secret's base64",
                SECRET_A.strip_prefix("whsec_").unwrap().to_owned(),
            ),
            ("the secret's key", String::from_utf8(key_a).unwrap()),
            ("the password", PASSWORD.to_owned()),
            ("the password hash", argon.clone()),
            ("the password hash's digest", argon_tail),
            ("argon2", "$argon2id".to_owned()),
            ("the pickup code", code.clone()),
            ("the code's SHA-256", sha256_hex(&code)),
            (
                "the code's SHA-256 with its compartment",
                sha256_hex(&format!("{id}:{code}")),
            ),
        ],
    );

    // The code still opens the compartment (the MAC is checked under the pepper).
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &app.operator,
            Some(json!({"pickup_code": code})),
        )
        .await;
    created(res, "collect").await;
}

/// Appends a stored event the way the code before the vault wrote it (metadata as required).
async fn insert_v1(
    app: &TestApp,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    payload: Value,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ($1, $2, $3, $4, '1', $5, $6)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(event_type)
    .bind(payload)
    .bind(
        json!({"correlation_id": "c", "causation_id": "c", "actor": "operator:before",
                 "request_id": "r"}),
    )
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn events_written_before_the_vault_still_verify_callbacks_log_in_and_collect_but_never_show_their_secrets(
) {
    let app = spawn_app().await;
    let (endpoint_a, _) = endpoint().await;
    world(&app, &endpoint_a).await;
    let at = app.clock.now().to_rfc3339();
    // Company C, a user and a deposit, as the code before the vault recorded them.
    insert_v1(
        &app,
        "locker_authorizer",
        "0003",
        1,
        "AuthorizerRegistered",
        json!({"AuthorizerRegistered": {"number": "0003", "name": "快递公司C",
               "endpoint": "http://127.0.0.1:9/grants", "secret": LEGACY_SECRET, "at": at}}),
    )
    .await;
    let legacy_hash = latch_api::lockers::hash_password(LEGACY_PASSWORD).unwrap();
    insert_v1(
        &app,
        "locker_user",
        "13400000001",
        1,
        "LockerUserRegistered",
        json!({"LockerUserRegistered": {"number": "13400000001", "name": "旧",
               "password_hash": legacy_hash, "at": at}}),
    )
    .await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let (seq,): (i64,) = sqlx::query_as(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'locker_compartment'
           AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let old_code = "20261121";
    let old_digest = sha256_hex(&format!("{id}:{old_code}"));
    insert_v1(
        &app,
        "locker_compartment",
        &id,
        seq + 1,
        "ParcelDeposited",
        json!({"ParcelDeposited": {"depositor": "13455555555", "parcel": "SF0000000001",
               "pickup_code_hash": old_digest, "at": at}}),
    )
    .await;

    // The old user logs in with the hash from their v1 event (moved into the vault on use).
    created(
        login(&app, "13400000001", LEGACY_PASSWORD).await,
        "legacy login",
    )
    .await;
    let (status, code, _) = error_of(login(&app, "13400000001", "wrong-password").await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_credentials"));

    // Company C's callback is verified with the secret from its v1 event.
    eventually(Duration::from_secs(10), "company C projected", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM locker_authorizers WHERE number = '0003'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    let zheng = token(&app, "13488888888").await;
    let held = reserve(&app, &zheng).await;
    let compartment = held.rsplit(':').next().unwrap().to_owned();
    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": compartment, "authorizer": "0003"})),
        )
        .await;
    assert_eq!(res.status(), 202);
    let grant_id = res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = accepted(&grant_id, "13466666666", "0003").replace(
        "\"compartment\":\"01\"",
        &format!("\"compartment\":\"{compartment}\""),
    );
    let now = app.clock.now().timestamp();
    let (s, c, _) =
        error_of(callback(&app, "0003", signed(SECRET_A, "msg_c_0", now, &body), &body).await)
            .await;
    assert_eq!((s, c.as_str()), (400, "webhook_signature_invalid"));
    let answer = created(
        callback(
            &app,
            "0003",
            signed(LEGACY_SECRET, "msg_c_1", now, &body),
            &body,
        )
        .await,
        "legacy callback",
    )
    .await;
    assert_eq!(answer["status"], "accepted");
    let moved = count(
        &app.pool,
        "SELECT count(*) FROM secrets WHERE id = 'legacy:1:0003'",
    )
    .await;
    assert_eq!(moved, 1, "the old secret now lives in the vault");

    // The old deposit is collected with its old code, compared the old way.
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &app.operator,
            Some(json!({"pickup_code": "99999999"})),
        )
        .await;
    assert_eq!(error_of(res).await.1, "wrong_pickup_code");
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &app.operator,
            Some(json!({"pickup_code": old_code})),
        )
        .await;
    created(res, "legacy collect").await;

    // None of it is shown: the old events read as version 2, redacted.
    let seen = everything_readers_see(&app).await;
    let audit = &seen[0].1;
    let legacy_line = audit
        .lines()
        .find(|l| l.contains("\"aggregate_id\":\"0003\""))
        .unwrap();
    let legacy: Value = serde_json::from_str(legacy_line).unwrap();
    assert_eq!(legacy["event_version"], "2");
    assert_eq!(legacy["redacted"], true);
    assert_eq!(
        legacy["payload"]["AuthorizerRegistered"]["secret_id"],
        "legacy:1:0003"
    );
    assert_absent(
        &seen,
        &[
            ("the old whsec secret", LEGACY_SECRET.to_owned()),
            (
                "the old secret's base64",
                LEGACY_SECRET.strip_prefix("whsec_").unwrap().to_owned(),
            ),
            ("the old password hash", legacy_hash.clone()),
            ("argon2", "$argon2id".to_owned()),
            ("the old code's digest", old_digest.clone()),
        ],
    );
    // The stored rows are untouched, and the chain over them is intact.
    let stored = count(
        &app.pool,
        &format!("SELECT count(*) FROM events WHERE payload::text LIKE '%{LEGACY_SECRET}%'"),
    )
    .await;
    assert_eq!(stored, 1);
    let report = latch_projections::audit::verify::walk(&app.pool, None, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.problem, None);
}

#[tokio::test]
async fn a_short_authorizer_secret_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let events = app.event_count().await;
    let short = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"only-24-bytes-of-secret!")
    );
    let res = app
        .post(
            "/lockers/authorizers",
            &app.operator,
            Some(
                json!({"number": "0009", "name": "短", "endpoint": "http://127.0.0.1:9/g",
                        "secret": short}),
            ),
        )
        .await;
    let (status, code, field) = error_of(res).await;
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (400, "secret_too_short", Some("secret"))
    );
    assert_eq!(app.event_count().await, events);
    assert_eq!(count(&app.pool, "SELECT count(*) FROM secrets").await, 0);
    // 32 bytes are enough.
    authorizer(&app, "0009", "长", "http://127.0.0.1:9/g", SECRET_A).await;
}

#[tokio::test]
async fn unknown_user_numbers_take_as_long_to_refuse_as_known_ones() {
    let app = spawn_app().await;
    crate::lockers::user(&app, "13455555555", "李").await;
    let timed = |known: bool, i: usize| {
        let app = &app;
        async move {
            // A different unknown number each time; the known one stays under its login limit.
            let number = if known {
                "13455555555".to_owned()
            } else {
                format!("1390000{i:04}")
            };
            let started = Instant::now();
            let res = login(app, &number, "not-the-password").await;
            let took = started.elapsed();
            let (status, code, _) = error_of(res).await;
            assert_eq!((status, code.as_str()), (422, "invalid_credentials"));
            took
        }
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..4 {
        unknown.push(timed(false, i).await);
        known.push(timed(true, i).await);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    assert!(
        u.as_secs_f64() >= 0.5 * k.as_secs_f64(),
        "unknown numbers answer in {u:?}, known ones in {k:?}"
    );
}
