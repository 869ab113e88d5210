//! Shared parcel lockers end to end (issue 5): the two worked examples with their names and
//! numbers, login, reservations and expiry, and every bad input answered with a clear error that
//! changes nothing.

use crate::common::*;
use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine;
use futures::StreamExt;
use latch_domain::Clock;
use latch_workers::CancellationToken;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const SITE: &str = "610091A01";
pub(crate) const PASSWORD: &str = "secret-pass-1";
pub(crate) const SECRET_A: &str = "whsec_a3VhaWRpLWEtc2lnbmluZy1zZWNyZXQtZm9yLWxhdGNoLXRlc3Rz";
const SECRET_B: &str = "whsec_a3VhaWRpLWItc2lnbmluZy1zZWNyZXQtZm9yLWxhdGNoLXRlc3Rz";

pub(crate) type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// Company A's service endpoint as seen from Latch: records each delivery.
pub(crate) async fn endpoint() -> (String, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/grants",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}/grants"), received)
}

pub(crate) async fn created(res: reqwest::Response, what: &str) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{what}: {status} {body}");
    body
}

pub(crate) async fn user(app: &TestApp, number: &str, name: &str) {
    let res = app
        .post(
            "/lockers/users",
            &app.operator,
            Some(json!({"user_number": number, "name": name, "password": PASSWORD})),
        )
        .await;
    created(res, "register user").await;
}

pub(crate) async fn authorizer(
    app: &TestApp,
    number: &str,
    name: &str,
    endpoint: &str,
    secret: &str,
) {
    let res = app
        .post(
            "/lockers/authorizers",
            &app.operator,
            Some(json!({"number": number, "name": name, "endpoint": endpoint, "secret": secret})),
        )
        .await;
    created(res, "register authorizer").await;
}

/// Site 610091A01 with large compartments 01 and 02, and the people of both examples.
pub(crate) async fn world(app: &TestApp, endpoint_a: &str) {
    let res = app
        .post(
            "/lockers/sites",
            &app.operator,
            Some(json!({"site": SITE, "name": "西湖驿站"})),
        )
        .await;
    created(res, "site").await;
    for number in ["01", "02"] {
        let res = app
            .post(
                "/lockers/compartments",
                &app.operator,
                Some(json!({"site": SITE, "number": number, "size": "large"})),
            )
            .await;
        created(res, "compartment").await;
    }
    user(app, "13455555555", "李").await;
    user(app, "13499996666", "张").await;
    user(app, "13488888888", "郑").await;
    user(app, "13466666666", "王").await;
    authorizer(app, "0001", "快递公司A", endpoint_a, SECRET_A).await;
    authorizer(
        app,
        "0002",
        "快递公司B",
        "http://127.0.0.1:9/grants",
        SECRET_B,
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "compartments projected",
        || async {
            let n = count(
                &app.pool,
                "SELECT count(*) FROM locker_compartments WHERE status = 'free'",
            )
            .await;
            (n == 2).then_some(())
        },
    )
    .await;
}

pub(crate) async fn login(app: &TestApp, number: &str, password: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/lockers/login", app.address))
        .json(&json!({"user_number": number, "password": password}))
        .send()
        .await
        .unwrap()
}

pub(crate) async fn token(app: &TestApp, number: &str) -> String {
    let body = created(login(app, number, PASSWORD).await, "login").await;
    body["token"].as_str().unwrap().to_owned()
}

/// Reserves a large compartment at the site and waits for it to show as held.
pub(crate) async fn reserve(app: &TestApp, token: &str) -> String {
    let body = created(
        app.post(
            "/lockers/reservations",
            token,
            Some(json!({"site": SITE, "size": "large"})),
        )
        .await,
        "reserve",
    )
    .await;
    let id = body["compartment_id"].as_str().unwrap().to_owned();
    let held = id.clone();
    eventually(Duration::from_secs(10), "reservation projected", || async {
        let mine: Value = app
            .get("/lockers/me/compartments", token)
            .await
            .json()
            .await
            .ok()?;
        mine.as_array()?
            .iter()
            .any(|c| c["compartment_id"] == held.as_str())
            .then_some(())
    })
    .await;
    id
}

pub(crate) async fn holder_of(app: &TestApp, id: &str) -> Option<String> {
    let (holder,): (Option<String>,) =
        sqlx::query_as("SELECT holder FROM locker_compartments WHERE compartment_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    holder
}

pub(crate) async fn error_of(res: reqwest::Response) -> (u16, String, Option<String>) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["field"].as_str().map(str::to_owned),
    )
}

/// An authorizer's signed acceptance (receiver 王 13466666666) as it answers over NATS.
pub(crate) fn signed_nats_answer(
    grant_id: &str,
    compartment: &str,
    webhook_id: &str,
    now: i64,
) -> (async_nats::HeaderMap, String) {
    let body = json!({
        "type": "grant.accepted",
        "data": {"request_id": grant_id, "site": SITE, "compartment": compartment,
                 "receiver": "13466666666", "authorizer": "0001"}
    })
    .to_string();
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET_A.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("webhook-id", webhook_id);
    h.insert("webhook-timestamp", now.to_string().as_str());
    h.insert(
        "webhook-signature",
        latch_domain::webhooks::sign(&key, webhook_id, now, body.as_bytes()).as_str(),
    );
    (h, body)
}

pub(crate) fn signed(secret: &str, id: &str, timestamp: i64, body: &str) -> HeaderMap {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("webhook-id", id.parse().unwrap());
    h.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
    h.insert(
        "webhook-signature",
        latch_domain::webhooks::sign(&key, id, timestamp, body.as_bytes())
            .parse()
            .unwrap(),
    );
    h
}

pub(crate) async fn callback(
    app: &TestApp,
    number: &str,
    headers: HeaderMap,
    body: &str,
) -> reqwest::Response {
    app.http
        .post(format!(
            "{}/lockers/authorizers/{number}/callback",
            app.address
        ))
        .headers(headers)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

pub(crate) fn accepted(request_id: &str, receiver: &str, number: &str) -> String {
    json!({
        "type": "grant.accepted",
        "data": {
            "request_id": request_id,
            "site": SITE,
            "compartment": "01",
            "receiver": receiver,
            "authorizer": number,
        }
    })
    .to_string()
}

pub(crate) async fn inbox(app: &TestApp, token: &str) -> Vec<Value> {
    app.get("/lockers/me/inbox", token)
        .await
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

#[tokio::test]
async fn worked_example_1_li_grants_large_compartment_01_directly_to_13499996666() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let receiver = token(&app, "13499996666").await;
    let id = reserve(&app, &li).await;
    assert_eq!(id, "610091A01:01");
    app.clock.advance(chrono::Duration::minutes(1));
    let mut notes = app
        .nats
        .subscribe("latch.lockers.notifications.13499996666")
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
    let body = created(res, "direct grant").await;
    assert_eq!(body["holder"], "13499996666");
    assert_eq!(body["status"], "completed");
    let grant_id = body["grant_id"].as_str().unwrap().to_owned();

    let note = tokio::time::timeout(Duration::from_secs(5), notes.next())
        .await
        .unwrap()
        .unwrap();
    let note: Value = serde_json::from_slice(&note.payload).unwrap();
    assert_eq!(note["kind"], "come_use");
    assert!(note["message"].as_str().unwrap().contains("请前往投递"));

    eventually(Duration::from_secs(10), "receiver holds 01", || async {
        let mine: Value = app
            .get("/lockers/me/compartments", &receiver)
            .await
            .json()
            .await
            .ok()?;
        (mine[0]["compartment_id"] == "610091A01:01" && mine[0]["size"] == "large").then_some(())
    })
    .await;
    assert_eq!(holder_of(&app, &id).await.as_deref(), Some("13499996666"));
    let mine: Value = app
        .get("/lockers/me/compartments", &li)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine, json!([]));
    let items = inbox(&app, &receiver).await;
    assert_eq!(items[0]["kind"], "come_use");
    let sms: Value = app
        .get("/lockers/sandbox/sms", &app.operator)
        .await
        .json()
        .await
        .unwrap();
    // Li's reservation had its own SMS; the grant's goes to the receiver.
    let to_receiver: Vec<&Value> = sms
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["phone"] == "13499996666")
        .collect();
    assert_eq!(to_receiver.len(), 1, "{sms}");
    assert!(to_receiver[0]["text"]
        .as_str()
        .unwrap()
        .contains("610091A01:01"));
    let items = inbox(&app, &li).await;
    assert_eq!(items[0]["kind"], "grant_confirmed");
    // The grant's row comes from the same HolderChanged event as the holder above.
    let grant = eventually(Duration::from_secs(10), "grant projected", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{grant_id}"), &li)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "completed").then_some(g)
    })
    .await;
    assert_eq!(grant["kind"], "direct");

    // The holder history answers "who held it then".
    let (li_from, li_to): (
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT held_from, held_to FROM compartment_holders
              WHERE compartment_id = $1 AND holder = '13455555555'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(li_to.is_some());
    assert_eq!(
        latch_projections::lockers::queries::holder_at(&app.pool, &id, li_from)
            .await
            .unwrap()
            .as_deref(),
        Some("13455555555")
    );
    assert_eq!(
        latch_projections::lockers::queries::holder_at(&app.pool, &id, app.clock.now())
            .await
            .unwrap()
            .as_deref(),
        Some("13499996666")
    );
    // The receiver uses it: deposits once, the recipient collects with the code, it is free.
    let res = app
        .post(
            "/lockers/compartments/610091A01:01/deposit",
            &li,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await;
    assert_eq!(error_of(res).await.1, "not_the_holder");
    let body = created(
        app.post(
            "/lockers/compartments/610091A01:01/deposit",
            &receiver,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await,
        "deposit",
    )
    .await;
    let code = body["pickup_code"].as_str().unwrap().to_owned();
    let res = app
        .post(
            "/lockers/compartments/610091A01:01/collect",
            &li,
            Some(json!({"pickup_code": "00000000x"})),
        )
        .await;
    assert_eq!(error_of(res).await.1, "wrong_pickup_code");
    let res = app
        .post(
            "/lockers/compartments/610091A01:01/collect",
            &li,
            Some(json!({"pickup_code": code})),
        )
        .await;
    assert_eq!(res.status(), 200);
    eventually(
        Duration::from_secs(10),
        "compartment free again",
        || async {
            let (status,): (String,) = sqlx::query_as(
                "SELECT status FROM locker_compartments WHERE compartment_id = '610091A01:01'",
            )
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (status == "free").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn worked_example_2_zheng_hands_compartment_01_to_company_a_which_picks_wang() {
    let app = spawn_app().await;
    let (endpoint_a, received) = endpoint().await;
    world(&app, &endpoint_a).await;
    let zheng = token(&app, "13488888888").await;
    let wang = token(&app, "13466666666").await;
    let id = reserve(&app, &zheng).await;
    assert_eq!(id, "610091A01:01");

    // Both authorizers are listed, with their Chinese names.
    let listed: Value = app
        .get("/lockers/authorizers", &zheng)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["快递公司A", "快递公司B"]);

    let mut requests = app
        .nats
        .subscribe("latch.authorizers.0001.grants")
        .await
        .unwrap();
    let mut confirmations = app
        .nats
        .subscribe("latch.authorizers.0001.confirmations")
        .await
        .unwrap();
    app.nats.flush().await.unwrap();
    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "authorizer": "0001"})),
        )
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let grant_id = body["grant_id"].as_str().unwrap().to_owned();

    // Company A gets the request on its subject and as a signed webhook at its endpoint.
    let msg = tokio::time::timeout(Duration::from_secs(5), requests.next())
        .await
        .unwrap()
        .unwrap();
    let msg: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(msg["data"]["request_id"], grant_id.as_str());
    assert_eq!(msg["data"]["size"], "large");
    let (headers, webhook) = eventually(Duration::from_secs(10), "webhook delivered", || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    latch_api::webhooks::verify(SECRET_A, &headers, &webhook, app.clock.now())
        .expect("signed with company A's secret");
    let webhook: Value = serde_json::from_slice(&webhook).unwrap();
    assert_eq!(webhook["data"]["site"], SITE);
    assert_eq!(webhook["data"]["compartment"], "01");

    // Its system picks the courier on duty, Wang, and calls back.
    let body = accepted(&grant_id, "13466666666", "0001");
    let now = app.clock.now().timestamp();
    let res = callback(&app, "0001", signed(SECRET_A, "msg_a_1", now, &body), &body).await;
    // One answer, one command: the grant is accepted; the grant process hands the compartment
    // over and completes the grant from the log.
    let answer = created(res, "callback").await;
    assert_eq!(answer["receiver"], "13466666666");
    assert_eq!(answer["status"], "accepted");

    let confirmation = tokio::time::timeout(Duration::from_secs(5), confirmations.next())
        .await
        .unwrap()
        .unwrap();
    let confirmation: Value = serde_json::from_slice(&confirmation.payload).unwrap();
    assert_eq!(confirmation["receiver"], "13466666666");

    eventually(Duration::from_secs(10), "Wang holds 01", || async {
        let mine: Value = app
            .get("/lockers/me/compartments", &wang)
            .await
            .json()
            .await
            .ok()?;
        (mine[0]["compartment_id"] == "610091A01:01").then_some(())
    })
    .await;
    let items = inbox(&app, &zheng).await;
    assert!(items.iter().any(|i| i["kind"] == "grant_confirmed"));
    let items = inbox(&app, &wang).await;
    assert!(items.iter().any(|i| i["kind"] == "come_use"));
    let company_a = count(
        &app.pool,
        "SELECT count(*) FROM locker_inbox WHERE recipient = 'authorizer:0001' AND kind = 'grant_confirmed'",
    )
    .await;
    assert_eq!(company_a, 1);
    let grant = eventually(Duration::from_secs(10), "grant completed", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{grant_id}"), &zheng)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "completed").then_some(g)
    })
    .await;
    assert_eq!(grant["authorizer"], "0001");
    assert_eq!(grant["receiver"], "13466666666");

    // The same callback again changes nothing and answers the same.
    let events = app.event_count().await;
    let res = callback(&app, "0001", signed(SECRET_A, "msg_a_1", now, &body), &body).await;
    let again = created(res, "replayed callback").await;
    assert_eq!(again, answer);
    assert_eq!(app.event_count().await, events);
}

#[tokio::test]
async fn login_refuses_wrong_passwords_retryably_disabled_users_and_rate_limits() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let (status, code, _) = error_of(login(&app, "13455555555", "wrong-password").await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_credentials"));
    assert_eq!(login(&app, "13455555555", PASSWORD).await.status(), 200);
    let (status, code, field) = error_of(login(&app, "1345", PASSWORD).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_field"));
    assert_eq!(field.as_deref(), Some("user_number"));
    let (_, code, _) = error_of(login(&app, "13400000000", PASSWORD).await).await;
    assert_eq!(code, "invalid_credentials");

    let res = app
        .post("/lockers/users/13466666666/disable", &app.operator, None)
        .await;
    assert_eq!(res.status(), 200);
    let (status, code, _) = error_of(login(&app, "13466666666", PASSWORD).await).await;
    assert_eq!((status, code.as_str()), (422, "user_disabled"));

    // Five attempts a minute per user number, then 429 until the clock moves on.
    for _ in 0..3 {
        login(&app, "13488888888", "nope-nope").await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = login(&app, "13488888888", "nope-nope")
            .await
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    app.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(login(&app, "13488888888", PASSWORD).await.status(), 200);

    // Every checked attempt is one event of its own short stream, with the reason the caller
    // is not told (an unknown number); the malformed number and the rate-limited attempt are
    // refused before any check and record nothing.
    let attempts: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT event_type, coalesce(payload->'LockerLoginRefused'->>'reason', ''), aggregate_id
           FROM events WHERE aggregate_type = 'locker_login' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, r, id): (String, String, String)| (t, (!r.is_empty()).then_some(r), id))
    .collect();
    let outcomes: Vec<(&str, Option<&str>)> = attempts
        .iter()
        .map(|(t, r, _)| (t.as_str(), r.as_deref()))
        .collect();
    let refused = |r| ("LockerLoginRefused", Some(r));
    let mut expected = vec![
        refused("invalid_credentials"),
        ("LockerLoginSucceeded", None),
        refused("unknown_user"),
        refused("user_disabled"),
    ];
    expected.extend([refused("invalid_credentials"); 5]);
    expected.push(("LockerLoginSucceeded", None));
    assert_eq!(outcomes, expected);
    let streams: std::collections::HashSet<&str> =
        attempts.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(streams.len(), attempts.len(), "one stream per attempt");
    // A good login's stream id is the id of the credential it issued.
    let issued = count(
        &app.pool,
        "SELECT count(*) FROM events e JOIN api_tokens t ON t.token_id::text = e.aggregate_id
          WHERE e.event_type = 'LockerLoginSucceeded'
            AND e.payload->'LockerLoginSucceeded'->>'token_id' = e.aggregate_id
            AND t.subject = e.payload->'LockerLoginSucceeded'->>'subject'",
    )
    .await;
    assert_eq!(issued, 2);
    let leaked = count(
        &app.pool,
        &format!(
            "SELECT count(*) FROM events WHERE aggregate_type = 'locker_login'
              AND (payload::text LIKE '%{PASSWORD}%' OR payload::text LIKE '%nope-nope%'
                   OR payload::text LIKE '%argon2%' OR payload::text LIKE '%lt\\_%')"
        ),
    )
    .await;
    assert_eq!(leaked, 0);
}

#[tokio::test]
async fn bad_grants_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let other = token(&app, "13499996666").await;
    reserve(&app, &li).await;
    let res = app
        .post("/lockers/users/13466666666/disable", &app.operator, None)
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .post("/lockers/authorizers/0002/deactivate", &app.operator, None)
        .await;
    assert_eq!(res.status(), 200);
    let events = app.event_count().await;

    let direct = |receiver: &str| json!({"site": SITE, "compartment": "01", "receiver": receiver});
    let cases = [
        (&li, direct("13455555555"), 422, "grant_to_self"),
        (&li, direct("13400000000"), 422, "receiver_not_found"),
        (&li, direct("13466666666"), 422, "receiver_disabled"),
        (&other, direct("13488888888"), 409, "not_the_holder"),
        (&li, direct("12"), 400, "invalid_field"),
    ];
    for (who, body, status, code) in cases {
        let (s, c, _) = error_of(app.post("/lockers/grants", who, Some(body.clone())).await).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}");
    }
    let via = |a: &str| json!({"site": SITE, "compartment": "01", "authorizer": a});
    let (s, c, f) = error_of(
        app.post("/lockers/grants/via-authorizer", &li, Some(via("0002")))
            .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str(), f.as_deref()),
        (422, "authorizer_inactive", Some("authorizer"))
    );
    let (s, c, _) = error_of(
        app.post("/lockers/grants/via-authorizer", &li, Some(via("0009")))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (404, "authorizer_not_found"));
    let (s, c, _) = error_of(
        app.post("/lockers/grants/via-authorizer", &other, Some(via("0001")))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (409, "not_the_holder"));
    // An operator's token is not a locker user's.
    let (s, _, _) = error_of(
        app.post(
            "/lockers/grants",
            &app.operator,
            Some(direct("13499996666")),
        )
        .await,
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(app.event_count().await, events);
    assert_eq!(
        holder_of(&app, "610091A01:01").await.as_deref(),
        Some("13455555555")
    );
}

#[tokio::test]
async fn two_grants_of_one_compartment_racing_only_one_wins() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    reserve(&app, &li).await;
    let a = app.post(
        "/lockers/grants",
        &li,
        Some(json!({"site": SITE, "compartment": "01", "receiver": "13499996666"})),
    );
    let b = app.post(
        "/lockers/grants",
        &li,
        Some(json!({"site": SITE, "compartment": "01", "receiver": "13466666666"})),
    );
    let (a, b) = tokio::join!(a, b);
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    let changes = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'HolderChanged'",
    )
    .await;
    assert_eq!(changes, 1);
}

#[tokio::test]
async fn unsigned_forged_stale_mismatched_and_late_callbacks_change_nothing() {
    let app = spawn_app().await;
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
    assert_eq!(res.status(), 202);
    let grant_id = res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = accepted(&grant_id, "13466666666", "0001");
    let now = app.clock.now().timestamp();
    let events = app.event_count().await;

    let mut unsigned = HeaderMap::new();
    unsigned.insert("content-type", "application/json".parse().unwrap());
    let (s, c, _) = error_of(callback(&app, "0001", unsigned, &body).await).await;
    assert_eq!((s, c.as_str()), (400, "webhook_header_missing"));
    let (s, c, _) =
        error_of(callback(&app, "0001", signed(SECRET_B, "msg_x", now, &body), &body).await).await;
    assert_eq!((s, c.as_str()), (400, "webhook_signature_invalid"));
    let (s, c, _) = error_of(
        callback(
            &app,
            "0001",
            signed(SECRET_A, "msg_x", now - 600, &body),
            &body,
        )
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (400, "webhook_too_old"));
    // Signed by B but naming A's number: B's callback URL, A's request.
    let (s, _, _) =
        error_of(callback(&app, "0002", signed(SECRET_B, "msg_x", now, &body), &body).await).await;
    assert_eq!(s, 403);
    let unknown = accepted(&grant_id, "13400000000", "0001");
    let (s, c, _) = error_of(
        callback(
            &app,
            "0001",
            signed(SECRET_A, "msg_y", now, &unknown),
            &unknown,
        )
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (422, "receiver_not_found"));
    assert_eq!(app.event_count().await, events);

    // The compartment changed hands meanwhile: Zheng granted it directly to 13499996666.
    let res = app
        .post(
            "/lockers/grants",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "receiver": "13499996666"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    eventually(
        Duration::from_secs(10),
        "direct grant projected",
        || async {
            (holder_of(&app, "610091A01:01").await.as_deref() == Some("13499996666")).then_some(())
        },
    )
    .await;
    let events = app.event_count().await;
    let (s, c, _) =
        error_of(callback(&app, "0001", signed(SECRET_A, "msg_z", now, &body), &body).await).await;
    assert_eq!((s, c.as_str()), (409, "compartment_changed_hands"));
    assert_eq!(app.event_count().await, events);
    assert_eq!(
        holder_of(&app, "610091A01:01").await.as_deref(),
        Some("13499996666")
    );

    // No answer before the deadline: the request expires and the holder stays.
    app.clock.advance(chrono::Duration::minutes(6));
    let id = grant_id.clone();
    eventually(Duration::from_secs(10), "grant expired", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{id}"), &zheng)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "expired").then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unused_reservation_expires_and_frees_the_compartment() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    app.clock.advance(chrono::Duration::hours(3));
    eventually(Duration::from_secs(10), "reservation expired", || async {
        (holder_of(&app, &id).await.is_none()).then_some(())
    })
    .await;
    let items = inbox(&app, &li).await;
    assert_eq!(items[0]["kind"], "reservation_expired");
}

#[tokio::test]
async fn worked_example_2_through_the_authorizer_sandbox_company_a_picks_on_duty_wang() {
    use latch::authorizer_sandbox::{parse_couriers, AuthorizerSandbox, AuthorizerSandboxSettings};
    let app = spawn_app().await;
    let mut settings = AuthorizerSandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        "0001",
        SECRET_A,
        &app.address,
    );
    // 13477777777 is on the roster but off duty; Wang is the courier on duty.
    settings.roster = parse_couriers(&["13477777777=赵".into(), "13466666666=王".into()]).unwrap();
    settings.roster[0].on_duty = false;
    settings.clock = std::sync::Arc::new(app.clock.clone());
    let sandbox = AuthorizerSandbox::build(settings).await.unwrap();
    let endpoint = sandbox.endpoint();
    let base = sandbox.base_url().to_owned();
    let stop = app.shutdown.clone();
    tokio::spawn(sandbox.run_until_stopped(async move { stop.cancelled().await }));
    world(&app, &endpoint).await;
    let zheng = token(&app, "13488888888").await;
    let wang = token(&app, "13466666666").await;
    reserve(&app, &zheng).await;

    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "authorizer": "0001"})),
        )
        .await;
    assert_eq!(res.status(), 202);
    let grant_id = res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(15), "Wang holds 01", || async {
        let mine: Value = app
            .get("/lockers/me/compartments", &wang)
            .await
            .json()
            .await
            .ok()?;
        (mine[0]["compartment_id"] == "610091A01:01").then_some(())
    })
    .await;
    let id = grant_id.clone();
    eventually(Duration::from_secs(10), "grant completed", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{id}"), &zheng)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "completed" && g["receiver"] == "13466666666").then_some(())
    })
    .await;
    // The sandbox's own record: one request, accepted for Wang, callback answered 2xx.
    let handled: Value = eventually(Duration::from_secs(10), "sandbox recorded", || async {
        let v: Value = app
            .http
            .get(format!("{base}/sandbox/requests"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!v.as_array()?.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(handled[0]["request_id"], grant_id.as_str());
    assert_eq!(handled[0]["outcome"], "accepted");
    assert_eq!(handled[0]["courier"], "13466666666");
    assert_eq!(handled[0]["callback_status"], 200);
    let items = inbox(&app, &zheng).await;
    assert!(items.iter().any(|i| i["kind"] == "grant_confirmed"));
}

#[tokio::test]
async fn a_retried_reservation_names_the_same_compartment_and_reserves_nothing_more() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let send = || {
        app.http
            .post(format!("{}/lockers/reservations", app.address))
            .bearer_auth(&li)
            .header("idempotency-key", "reserve-1")
            .json(&json!({"site": SITE, "size": "large"}))
            .send()
    };
    let first = created(send().await.unwrap(), "reserve").await;
    eventually(Duration::from_secs(10), "reservation projected", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM locker_compartments WHERE status = 'reserved'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    let again = created(send().await.unwrap(), "retried reserve").await;
    assert_eq!(first["compartment_id"], again["compartment_id"]);
    let reserved = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'CompartmentReserved'",
    )
    .await;
    assert_eq!(reserved, 1);
}

#[tokio::test]
async fn with_nobody_on_duty_the_authorizer_declines_and_the_holder_stays() {
    use latch::authorizer_sandbox::{AuthorizerSandbox, AuthorizerSandboxSettings};
    let app = spawn_app().await;
    let mut settings = AuthorizerSandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        "0001",
        SECRET_A,
        &app.address,
    );
    settings.clock = std::sync::Arc::new(app.clock.clone());
    let sandbox = AuthorizerSandbox::build(settings).await.unwrap();
    let endpoint = sandbox.endpoint();
    let stop = app.shutdown.clone();
    tokio::spawn(sandbox.run_until_stopped(async move { stop.cancelled().await }));
    world(&app, &endpoint).await;
    let zheng = token(&app, "13488888888").await;
    reserve(&app, &zheng).await;
    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "authorizer": "0001"})),
        )
        .await;
    assert_eq!(res.status(), 202);
    let grant_id = res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = grant_id.clone();
    let grant = eventually(Duration::from_secs(15), "grant declined", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{id}"), &zheng)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "declined").then_some(g)
    })
    .await;
    assert_eq!(grant["reason"], "无人值班");
    assert_eq!(
        holder_of(&app, "610091A01:01").await.as_deref(),
        Some("13488888888")
    );
}

#[tokio::test]
async fn the_lockers_api_is_described() {
    let app = spawn_app().await;
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
        "/lockers/login",
        "/lockers/grants",
        "/lockers/grants/via-authorizer",
        "/lockers/authorizers/{number}/callback",
        "/lockers/me/compartments",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
}

#[tokio::test]
async fn an_authorizer_may_answer_over_nats_signed_like_the_callback() {
    let app = spawn_app().await;
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
    assert_eq!(res.status(), 202);
    let grant_id = res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = accepted(&grant_id, "13466666666", "0001");
    let now = app.clock.now().timestamp();
    let to_nats = |h: HeaderMap| {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in h.iter() {
            headers.insert(k.as_str(), v.to_str().unwrap());
        }
        headers
    };
    // Forged (B's secret): refused, nothing changes.
    let reply = app
        .nats
        .request_with_headers(
            "latch.authorizers.0001.answers",
            to_nats(signed(SECRET_B, "msg_n_0", now, &body)),
            body.clone().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["error"]["code"], "webhook_signature_invalid");
    let reply = app
        .nats
        .request_with_headers(
            "latch.authorizers.0001.answers",
            to_nats(signed(SECRET_A, "msg_n_1", now, &body)),
            body.clone().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["status"], "accepted");
    assert_eq!(reply["receiver"], "13466666666");
    eventually(Duration::from_secs(10), "Wang holds 01", || async {
        (holder_of(&app, "610091A01:01").await.as_deref() == Some("13466666666")).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Durable grant-request delivery (the grant-delivery role)

/// Every attempt an authorizer's endpoint saw: (webhook id, status answered).
type Attempts = Arc<Mutex<Vec<(String, u16)>>>;

/// An authorizer endpoint that answers 503 until `up` is set, recording every attempt.
async fn flaky_endpoint(
    listener: tokio::net::TcpListener,
    up: Arc<std::sync::atomic::AtomicBool>,
) -> Attempts {
    let attempts: Attempts = Arc::default();
    let seen = attempts.clone();
    let app = axum::Router::new().route(
        "/grants",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (seen, up) = (seen.clone(), up.clone());
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                assert!(latch_api::webhooks::verify(
                    SECRET_A,
                    &headers,
                    &body,
                    crate::common::start_time() + chrono::Duration::minutes(1),
                )
                .is_ok());
                let status = if up.load(std::sync::atomic::Ordering::SeqCst) {
                    axum::http::StatusCode::NO_CONTENT
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                seen.lock().unwrap().push((id, status.as_u16()));
                status
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    attempts
}

fn fast_retries(s: &mut latch::config::Settings) {
    s.lockers.webhook_backoff = vec![Duration::from_millis(100); 50];
}

/// The app without its grant-delivery role, as if that worker were down.
async fn app_without_delivery(backoff: Vec<Duration>) -> TestApp {
    spawn_app_with(move |s| {
        s.roles.retain(|r| *r != latch::config::Role::GrantDelivery);
        s.lockers.webhook_backoff = backoff;
    })
    .await
}

/// A process running only the grant-delivery role against the app's database and NATS.
async fn start_delivery_worker(
    app: &TestApp,
    backoff: Vec<Duration>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut settings = test_settings(&app.db, &app.nats_server, &app.clock);
    settings.roles = vec![latch::config::Role::GrantDelivery];
    settings.lockers.webhook_backoff = backoff;
    let worker = latch::Application::build(settings).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        worker
            .run_until_stopped(async move { s.cancelled().await })
            .await
            .unwrap();
    });
    (stop, task)
}

/// Zheng reserves 01 and hands it to authorizer 0001; the grant id.
pub(crate) async fn request_via_company_a(app: &TestApp) -> String {
    let zheng = token(app, "13488888888").await;
    reserve(app, &zheng).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let res = app
        .post(
            "/lockers/grants/via-authorizer",
            &zheng,
            Some(json!({"site": SITE, "compartment": "01", "authorizer": "0001"})),
        )
        .await;
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn webhook_id_of(grant_id: &str) -> String {
    latch_workers::grant_delivery::webhook_id(uuid::Uuid::parse_str(grant_id).unwrap())
}

async fn delivery_consumer(app: &TestApp) -> Option<async_nats::jetstream::consumer::Info> {
    app.js
        .get_stream("EVENTS")
        .await
        .ok()?
        .consumer_info(latch_workers::grant_delivery::CONSUMER)
        .await
        .ok()
}

/// Waits until the delivery consumer holds nothing unsettled.
async fn delivery_settled(app: &TestApp) {
    eventually(
        Duration::from_secs(15),
        "delivery consumer settled",
        || async {
            let info = delivery_consumer(app).await?;
            (info.num_ack_pending == 0
                && info.num_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_grant_request_reaches_an_endpoint_that_comes_up_later_once_with_one_webhook_id() {
    let app = spawn_app_with(fast_retries).await;
    // A port with nothing listening on it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    world(&app, &format!("http://127.0.0.1:{port}/grants")).await;
    let grant_id = request_via_company_a(&app).await;
    eventually(Duration::from_secs(15), "two attempts refused", || async {
        (delivery_consumer(&app).await?.delivered.consumer_sequence >= 2).then_some(())
    })
    .await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let attempts = flaky_endpoint(listener, Arc::new(true.into())).await;
    eventually(Duration::from_secs(15), "webhook delivered", || async {
        (!attempts.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    delivery_settled(&app).await;
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts, vec![(webhook_id_of(&grant_id), 204)]);
    let dead = stream_messages(&app.js, "DEADLETTER").await;
    assert!(dead.is_empty(), "nothing dead-lettered");
}

#[tokio::test]
async fn a_grant_request_made_while_the_delivery_worker_is_down_or_restarting_is_still_delivered() {
    let backoff = vec![Duration::from_millis(100); 50];
    let app = app_without_delivery(backoff.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/grants", listener.local_addr().unwrap());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = flaky_endpoint(listener, up.clone()).await;
    world(&app, &endpoint).await;
    let grant_id = request_via_company_a(&app).await;
    // Logged and relayed, but nobody delivers it yet.
    eventually(Duration::from_secs(10), "grant request relayed", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM event_log l JOIN events e USING (event_id)
              WHERE e.event_type = 'GrantRequested'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    assert!(attempts.lock().unwrap().is_empty());

    // The worker starts, meets an endpoint that is down, and is stopped mid-schedule.
    let (stop, task) = start_delivery_worker(&app, backoff.clone()).await;
    eventually(
        Duration::from_secs(15),
        "first attempts refused",
        || async { (attempts.lock().unwrap().len() >= 2).then_some(()) },
    )
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("worker stops")
        .unwrap();
    let refused = attempts.lock().unwrap().len();

    // Endpoint up, worker started again: delivered, once, with the same id as every attempt.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let (stop, task) = start_delivery_worker(&app, backoff).await;
    eventually(Duration::from_secs(15), "webhook delivered", || async {
        attempts
            .lock()
            .unwrap()
            .iter()
            .any(|(_, status)| *status == 204)
            .then_some(())
    })
    .await;
    delivery_settled(&app).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("worker stops")
        .unwrap();
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), refused + 1, "{attempts:?}");
    assert!(attempts
        .iter()
        .all(|(id, _)| *id == webhook_id_of(&grant_id)));
    assert_eq!(attempts.iter().filter(|(_, s)| *s == 204).count(), 1);
}

#[tokio::test]
async fn an_answered_grant_request_gets_no_further_delivery_attempts() {
    let app = spawn_app_with(fast_retries).await;
    // Company A's endpoint declines through the signed callback and only then fails the
    // delivery itself (503), so the answer is in the log before the retry is even scheduled.
    let attempts: Attempts = Arc::default();
    let seen = attempts.clone();
    let latch = app.address.clone();
    let clock = app.clock.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let (seen, latch, clock) = (seen.clone(), latch.clone(), clock.clone());
        async move {
            let id = headers["webhook-id"].to_str().unwrap().to_owned();
            let request: Value = serde_json::from_slice(&body).unwrap();
            let answer = json!({
                "type": "grant.declined",
                "data": {"request_id": request["data"]["request_id"], "site": SITE,
                         "compartment": "01", "authorizer": "0001", "reason": "无人值班"}
            })
            .to_string();
            let now = clock.now().timestamp();
            let declined = reqwest::Client::new()
                .post(format!("{latch}/lockers/authorizers/0001/callback"))
                .headers(signed(SECRET_A, &format!("cb_{id}"), now, &answer))
                .body(answer)
                .send()
                .await
                .unwrap();
            assert_eq!(declined.status(), 200);
            seen.lock().unwrap().push((id, 503));
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/grants", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/grants", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    world(&app, &endpoint).await;
    let grant_id = request_via_company_a(&app).await;

    delivery_settled(&app).await;
    assert_eq!(
        attempts.lock().unwrap().clone(),
        vec![(webhook_id_of(&grant_id), 503)]
    );
    let info = delivery_consumer(&app).await.unwrap();
    assert!(
        info.delivered.consumer_sequence >= 2,
        "the retry came, saw the answer and stopped"
    );
    assert!(stream_messages(&app.js, "DEADLETTER").await.is_empty());
    eventually(Duration::from_secs(10), "grant declined", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{grant_id}"), &app.operator)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "declined").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_grant_request_is_dead_lettered_with_a_reason_when_every_attempt_fails() {
    let app = spawn_app_with(|s| {
        s.lockers.webhook_backoff = vec![Duration::from_millis(50); 2];
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/grants", listener.local_addr().unwrap());
    let attempts = flaky_endpoint(listener, Arc::new(false.into())).await;
    world(&app, &endpoint).await;
    let grant_id = request_via_company_a(&app).await;
    let dead = eventually(Duration::from_secs(15), "dead-lettered", || async {
        let m = stream_messages(&app.js, "DEADLETTER").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject.as_str(), "latch.dlq.grant-delivery");
    let reason = dead[0].headers.get("Latch-Reason").unwrap().as_str();
    assert_eq!(reason, "webhook_undelivered");
    assert!(dead[0]
        .headers
        .get("Latch-Detail")
        .unwrap()
        .as_str()
        .contains("503"));
    delivery_settled(&app).await;
    assert_eq!(
        attempts.lock().unwrap().len(),
        3,
        "one attempt + two retries"
    );
    // The grant is left to its deadline; the holder never changed.
    eventually(Duration::from_secs(10), "grant still requested", || async {
        let g: Value = app
            .get(&format!("/lockers/grants/{grant_id}"), &app.operator)
            .await
            .json()
            .await
            .ok()?;
        (g["status"] == "requested").then_some(())
    })
    .await;
    assert_eq!(
        holder_of(&app, "610091A01:01").await.as_deref(),
        Some("13488888888")
    );
}

/// A locker device at the site, online with its door closed.
pub(crate) async fn locker_door(app: &TestApp, label: &str) -> (uuid::Uuid, latch::sim::SimDevice) {
    let id = app.register_device("locker", SITE, label).await;
    let sim = latch::sim::SimDevice::new(id, app.js.clone());
    sim.door(false, None).await.unwrap();
    sim.heartbeat(1).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "door online and closed",
        || async {
            let d = app.device(id).await?;
            (d["online"] == true && d["door"] == "closed").then_some(())
        },
    )
    .await;
    (id, sim)
}

/// The next `open` command the device hears (holder updates, its other command, pass by).
async fn next_open(commands: &mut async_nats::Subscriber) -> uuid::Uuid {
    let msg = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = commands.next().await.unwrap();
            if !msg.subject.ends_with(".holder") {
                return msg;
            }
        }
    })
    .await
    .expect("an open command within 10 s");
    assert!(msg.subject.ends_with(".open"), "{}", msg.subject);
    let command: latch_domain::telemetry::OpenCommand =
        serde_json::from_slice(&msg.payload).unwrap();
    command.request_id
}

pub(crate) async fn door_requests(app: &TestApp, door: uuid::Uuid) -> i64 {
    count(
        &app.pool,
        &format!(
            "SELECT count(*) FROM events WHERE aggregate_type = 'device'
               AND aggregate_id = '{door}' AND event_type = 'DoorOpenRequested'"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_opens_once_for_the_deposit_and_again_for_the_collection() {
    let app = spawn_app().await;
    let (endpoint_a, _) = endpoint().await;
    world(&app, &endpoint_a).await;
    let (door_1, sim_1) = locker_door(&app, "610091A01-01").await;
    let (door_2, sim_2) = locker_door(&app, "610091A01-02").await;
    let sims = [(door_1, sim_1), (door_2, sim_2)];
    for (number, door) in [("01", door_1), ("02", door_2)] {
        let res = app
            .post(
                &format!("/lockers/compartments/{SITE}:{number}/door"),
                &app.operator,
                Some(json!({"door_device": door.to_string()})),
            )
            .await;
        created(res, "wire door").await;
    }
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let (door, sim) = sims
        .iter()
        .find(|(d, _)| id.ends_with(if *d == door_1 { ":01" } else { ":02" }))
        .unwrap();
    let mut commands = app
        .nats
        .subscribe(latch_nats::subjects::device_commands_all(&door.to_string()))
        .await
        .unwrap();
    app.nats.flush().await.unwrap();

    // Li deposits: the compartment's own door is told to open, and its report confirms it.
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
    let request = next_open(&mut commands).await;
    sim.door(true, Some(request)).await.unwrap();
    let shown = eventually(Duration::from_secs(10), "door shown open", || async {
        let c: Value = app
            .get(&format!("/lockers/compartments/{id}"), &li)
            .await
            .json()
            .await
            .ok()?;
        (c["door"] == "open").then_some(c)
    })
    .await;
    assert_eq!(shown["door_device"], door.to_string());
    assert_eq!(shown["status"], "occupied");
    assert_eq!(shown["parcel"], "SF1234567890");
    sim.door(false, None).await.unwrap();

    // The deposit event handled again (a redelivery after a crash) opens nothing more.
    let deposited = latch_projections::log::read_range(&app.pool, 0, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == "ParcelDeposited")
        .unwrap();
    let doors = latch_workers::locker_doors::LockerDoors {
        store: std::sync::Arc::new(latch_domain::store::Store::new(app.pool.clone())),
        js: app.js.clone(),
        clock: std::sync::Arc::new(app.clock.clone()),
        open_timeout: chrono::Duration::seconds(10),
    };
    for _ in 0..2 {
        assert_eq!(
            doors.handle(&deposited).await.unwrap(),
            latch_workers::locker_doors::Outcome::Done
        );
    }
    assert_eq!(door_requests(&app, *door).await, 1);

    // Collection opens it again; the other compartment's door never moved.
    eventually(Duration::from_secs(10), "door shown closed", || async {
        let d = app.device(*door).await?;
        (d["door"] == "closed" && d["pending_open_request"].is_null()).then_some(())
    })
    .await;
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &app.operator,
            Some(json!({"pickup_code": code})),
        )
        .await;
    created(res, "collect").await;
    let request = next_open(&mut commands).await;
    sim.door(true, Some(request)).await.unwrap();
    assert_eq!(door_requests(&app, *door).await, 2);
    let other = if *door == door_1 { door_2 } else { door_1 };
    assert_eq!(door_requests(&app, other).await, 0);
}

#[tokio::test]
async fn wiring_a_door_refuses_what_is_not_this_sites_locker_and_changes_nothing() {
    let app = spawn_app().await;
    let (endpoint_a, _) = endpoint().await;
    world(&app, &endpoint_a).await;
    let cabinet = app.register_device("vending", SITE, "饮料柜").await;
    let elsewhere = app.register_device("locker", "610091B02", "别处").await;
    let before = app.event_count().await;
    let wire = |door: String| {
        let app = &app;
        async move {
            error_of(
                app.post(
                    &format!("/lockers/compartments/{SITE}:01/door"),
                    &app.operator,
                    Some(json!({"door_device": door})),
                )
                .await,
            )
            .await
        }
    };
    let (status, code, field) = wire(cabinet.to_string()).await;
    assert_eq!((status, code.as_str()), (422, "door_not_a_locker"));
    assert_eq!(field.as_deref(), Some("door_device"));
    let (status, code, _) = wire(elsewhere.to_string()).await;
    assert_eq!((status, code.as_str()), (422, "door_at_another_site"));
    let (status, code, _) = wire(uuid::Uuid::now_v7().to_string()).await;
    assert_eq!((status, code.as_str()), (404, "device_not_found"));
    let (status, _, field) = wire("not-a-uuid".into()).await;
    assert!(status == 400 || status == 422, "{status}");
    assert_eq!(field.as_deref(), Some("door_device"));
    // Installing with such a door is refused the same way.
    let (status, code, _) = error_of(
        app.post(
            "/lockers/compartments",
            &app.operator,
            Some(json!({"site": SITE, "number": "03", "size": "small",
                        "door_device": cabinet.to_string()})),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "door_not_a_locker"));
    // A locker user may not wire doors, nor see a compartment they neither hold nor filled.
    // (Their login is a fact of its own: `LockerLoginSucceeded`.)
    let li = token(&app, "13455555555").await;
    let before = before + 1;
    let res = app
        .post(
            &format!("/lockers/compartments/{SITE}:01/door"),
            &li,
            Some(json!({"door_device": elsewhere.to_string()})),
        )
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(app.event_count().await, before);
    let res = app
        .get(&format!("/lockers/compartments/{SITE}:01"), &li)
        .await;
    assert_eq!(res.status(), 404);
}

/// Every lockers table, each row as JSON, in a stable order.
async fn lockers_tables(app: &TestApp) -> Vec<(String, Vec<Value>)> {
    let mut all = Vec::new();
    for table in latch_projections::lockers::TABLES {
        let (rows,): (Option<Value>,) = sqlx::query_as(&format!(
            "SELECT jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text) FROM {table} t"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let rows = rows.map_or_else(Vec::new, |r| r.as_array().unwrap().clone());
        all.push((table.to_string(), rows));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockers_rebuild_equals_the_live_model_and_the_live_projector_carries_on() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let res = app
        .post(
            "/lockers/grants",
            &li,
            Some(
                json!({"site": SITE, "compartment": id.split(':').nth(1).unwrap(),
                        "receiver": "13499996666"}),
            ),
        )
        .await;
    created(res, "direct grant").await;
    // Once the grant shows as completed and notified, none of its events is still to come.
    eventually(Duration::from_secs(10), "grant projected", || async {
        let notes = count(&app.pool, "SELECT count(*) FROM locker_inbox").await;
        let done = count(
            &app.pool,
            "SELECT count(*) FROM grant_requests WHERE status = 'completed'",
        )
        .await;
        (notes >= 2 && done == 1).then_some(())
    })
    .await;
    let head = latch_projections::log::head(&app.pool).await.unwrap();
    eventually(Duration::from_secs(10), "lockers caught up", || async {
        let at = latch_projections::projector::checkpoint(&app.pool, "lockers")
            .await
            .ok()?;
        (at >= head).then_some(())
    })
    .await;
    let live = lockers_tables(&app).await;
    assert!(live.iter().all(|(_, rows)| !rows.is_empty()), "{live:?}");

    let rebuilt = latch_projections::audit::rebuild::rebuild_named(&app.pool, "lockers", &|_| {})
        .await
        .unwrap();
    assert!(rebuilt.position >= head);
    assert_eq!(rebuilt.rows, 2);
    assert_eq!(lockers_tables(&app).await, live);
    // The indexes kept their names (later migrations may name them).
    let (named,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname IN
           ('locker_compartments_free', 'compartment_holders_open', 'grant_requests_open')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(named, 3);

    // The live projector goes on from the rebuilt checkpoint: the receiver's deposit shows.
    let receiver = token(&app, "13499996666").await;
    created(
        app.post(
            &format!("/lockers/compartments/{id}/deposit"),
            &receiver,
            Some(json!({"parcel": "YT0000000001"})),
        )
        .await,
        "deposit",
    )
    .await;
    eventually(Duration::from_secs(10), "deposit projected", || async {
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM locker_compartments WHERE compartment_id = $1")
                .bind(&id)
                .fetch_one(&app.pool)
                .await
                .ok()?;
        (status == "occupied").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_successful_reservation_is_notified_like_a_grant() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let li = token(&app, "13455555555").await;
    let mut notes = app
        .nats
        .subscribe("latch.lockers.notifications.13455555555")
        .await
        .unwrap();
    app.nats.flush().await.unwrap();
    let id = reserve(&app, &li).await;
    let note = tokio::time::timeout(Duration::from_secs(10), notes.next())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    let note: Value = serde_json::from_slice(&note.payload).unwrap();
    assert_eq!(note["kind"], "reserved");
    assert_eq!(note["compartment_id"], id.as_str());
    assert!(
        note["message"].as_str().unwrap().contains("成功预约"),
        "{note}"
    );
    let reserved_event: (uuid::Uuid,) = sqlx::query_as(
        "SELECT event_id FROM events WHERE event_type = 'CompartmentReserved' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(note["event_id"], reserved_event.0.to_string());
    let sms = eventually(Duration::from_secs(10), "the SMS", || async {
        let sms: Value = app
            .get("/lockers/sandbox/sms", &app.operator)
            .await
            .json()
            .await
            .ok()?;
        sms.as_array()?
            .iter()
            .find(|m| m["phone"] == "13455555555")
            .cloned()
    })
    .await;
    assert_eq!(
        sms["id"],
        reserved_event.0.to_string(),
        "keyed by the event id"
    );
    assert!(sms["text"].as_str().unwrap().contains(&id));
    let items = eventually(Duration::from_secs(10), "the inbox row", || async {
        let items = inbox(&app, &li).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items[0]["kind"], "reserved");
}
