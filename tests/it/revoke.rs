//! Issue 13, "Limits, timeouts and revocation": revocation (a disabled user's tokens, expiring
//! operator and auditor tokens, `latch token revoke`, web logout), refunds reserved before
//! Kazaya is called, and shopper opens (sticker signature, one session per member, a rate
//! limit). Each test performs the attack and shows it fail with nothing written.

use super::common::{count, eventually, spawn_app, TestApp};
use super::vending::{location, member_token, sticker_sig, World, CLIENT_ID, CLIENT_SECRET};
use latch_api::auth::{issue_token, Role};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

async fn code_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn events(app: &TestApp, event_type: &str) -> Vec<Value> {
    let rows: Vec<(Value,)> =
        sqlx::query_as("SELECT payload FROM events WHERE event_type = $1 ORDER BY sequence")
            .bind(event_type)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(p,)| p).collect()
}

// ---------------------------------------------------------------------------------------------
// Revocation

async fn locker_login(app: &TestApp, number: &str, password: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/lockers/login", app.address))
        .json(&json!({"user_number": number, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn disabling_a_locker_user_revokes_their_tokens_at_once() {
    let app = spawn_app().await;
    let number = "13800000001";
    let res = app
        .post(
            "/lockers/users",
            &app.operator,
            Some(json!({"user_number": number, "name": "阿明", "password": "correct horse"})),
        )
        .await;
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let res = locker_login(&app, number, "correct horse").await;
        assert_eq!(res.status(), 200);
        tokens.push(
            res.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for t in &tokens {
        assert_eq!(app.get("/lockers/me/compartments", t).await.status(), 200);
    }

    let res = app
        .post(
            &format!("/lockers/users/{number}/disable"),
            &app.operator,
            None,
        )
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    // The very next request with either session is refused, with a stable code.
    for t in &tokens {
        let (status, code) = code_of(app.get("/lockers/me/compartments", t).await).await;
        assert_eq!((status, code.as_str()), (401, "token_revoked"));
    }
    let (status, code) = code_of(locker_login(&app, number, "correct horse").await).await;
    assert_eq!((status, code.as_str()), (422, "user_disabled"));

    // Enabling them again lets them log in anew; the revoked sessions stay revoked.
    let res = app
        .post(
            &format!("/lockers/users/{number}/enable"),
            &app.operator,
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = locker_login(&app, number, "correct horse").await;
    assert_eq!(res.status(), 200);
    let fresh = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.get("/lockers/me/compartments", &fresh).await.status(),
        200
    );
    for t in &tokens {
        assert_eq!(app.get("/lockers/me/compartments", t).await.status(), 401);
    }
}

#[tokio::test]
async fn operator_and_auditor_tokens_expire() {
    let app = spawn_app().await;
    let mut issued = Vec::new();
    for (role, subject) in [(Role::Operator, "ops-anna"), (Role::Auditor, "audit-bo")] {
        let t = latch_api::tokens::provision(
            &app.pool,
            role,
            subject,
            "operator:test",
            Some(Duration::from_secs(600)),
            latch_domain::clock::Clock::now(&app.clock),
        )
        .await
        .unwrap();
        assert!(t.expires_at.is_some());
        issued.push(t);
    }
    // The expiry is a fact too.
    let recorded = events(&app, "TokenIssued").await;
    assert_eq!(recorded.len(), 2);
    assert!(recorded
        .iter()
        .all(|p| !p["TokenIssued"]["expires_at"].is_null()));
    for t in &issued {
        assert_eq!(app.get("/devices", &t.token).await.status(), 200);
    }
    app.clock.advance(chrono::Duration::seconds(599));
    for t in &issued {
        assert_eq!(app.get("/devices", &t.token).await.status(), 200);
    }
    app.clock.advance(chrono::Duration::seconds(1));
    for t in &issued {
        let (status, code) = code_of(app.get("/devices", &t.token).await).await;
        assert_eq!((status, code.as_str()), (401, "token_expired"));
        // An expired operator cannot act either, and nothing is written.
        let before = app.event_count().await;
        let res = app
            .post(
                "/devices",
                &t.token,
                Some(json!({"kind": "vending", "site": "S1", "label": "x"})),
            )
            .await;
        assert_eq!(res.status(), 401);
        assert_eq!(app.event_count().await, before);
    }
}

fn latch(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(args)
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "warn")
        .env_remove("LATCH_TOKEN_TTL_SECS")
        .output()
        .expect("latch runs")
}

#[tokio::test]
async fn latch_token_issues_with_a_ttl_and_latch_token_revoke_takes_effect_at_once() {
    let app = spawn_app().await;
    let out = latch(
        &app,
        &[
            "token",
            "--role",
            "auditor",
            "--subject",
            "audit-cli",
            "--ttl",
            "3600",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout
        .lines()
        .find(|l| l.starts_with("lt_"))
        .expect("the token on stdout")
        .to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = stderr
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .and_then(|w| Uuid::parse_str(w).ok())
        .unwrap_or_else(|| panic!("the token id on stderr: {stderr}"));
    let (expires,): (Option<chrono::DateTime<chrono::Utc>>,) =
        sqlx::query_as("SELECT expires_at FROM api_tokens WHERE token_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let left = expires.expect("an expiry") - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(3500) && left <= chrono::Duration::seconds(3600));
    assert_eq!(app.get("/devices", &token).await.status(), 200);

    // A token id nobody holds: an error, nothing written.
    let before = app.event_count().await;
    let unknown = Uuid::now_v7().to_string();
    assert!(!latch(&app, &["token", "revoke", &unknown]).status.success());
    assert_eq!(app.event_count().await, before);

    let out = latch(&app, &["token", "revoke", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    // Revoked in another process; this API refuses it on the very next request.
    let (status, code) = code_of(app.get("/devices", &token).await).await;
    assert_eq!((status, code.as_str()), (401, "token_revoked"));
    let revoked = events(&app, "TokenRevoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["TokenRevoked"]["reason"], "revoked");
    assert_eq!(revoked[0]["TokenRevoked"]["token_id"], id.to_string());
    // Again: nothing more is recorded.
    assert!(latch(&app, &["token", "revoke", &id.to_string()])
        .status
        .success());
    assert_eq!(events(&app, "TokenRevoked").await.len(), 1);
}

#[tokio::test]
async fn logging_out_revokes_the_web_session_and_an_old_cookie_is_refused() {
    let app = spawn_app().await;
    let token = issue_token(&app.pool, Role::User, "qr-user-7")
        .await
        .unwrap();
    let cookie = format!("latch_session={token}");
    let me = || {
        app.http
            .get(format!("{}/me", app.address))
            .header("cookie", &cookie)
            .send()
    };
    let logout = |client_header: bool| {
        let mut req = app
            .http
            .post(format!("{}/logout", app.address))
            .header("cookie", &cookie);
        if client_header {
            req = req.header("x-latch-client", "web");
        }
        req.send()
    };
    assert_eq!(me().await.unwrap().status(), 200);

    // A cross-site form cannot log the browser out (nor learn anything): no header, no change.
    assert_eq!(logout(false).await.unwrap().status(), 403);
    assert_eq!(me().await.unwrap().status(), 200);
    assert_eq!(events(&app, "TokenRevoked").await.len(), 0);

    let res = logout(true).await.unwrap();
    assert_eq!(res.status(), 204);
    let cleared = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("latch_session="))
        .expect("the cookie is cleared")
        .to_owned();
    assert!(cleared.starts_with("latch_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie, replayed, is refused server-side.
    let (status, code) = code_of(me().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "token_revoked"));
    let revoked = events(&app, "TokenRevoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["TokenRevoked"]["reason"], "logout");
    // Logging out again changes nothing.
    assert_eq!(logout(true).await.unwrap().status(), 204);
    assert_eq!(events(&app, "TokenRevoked").await.len(), 1);

    // A Bearer client logs its own token out the same way.
    let bearer = issue_token(&app.pool, Role::Operator, "ops-cli")
        .await
        .unwrap();
    let res = app.post("/logout", &bearer, None).await;
    assert_eq!(res.status(), 204);
    let (status, code) = code_of(app.get("/devices", &bearer).await).await;
    assert_eq!((status, code.as_str()), (401, "token_revoked"));
}

// ---------------------------------------------------------------------------------------------
// Refunds

/// A paid order of ¥9.00 (2 colas, 1 water): its session id and Kazaya's payment id.
pub(crate) async fn paid_order(world: &World, phone: &str) -> (Uuid, String) {
    let cabinet = world.cabinet().await;
    let token = member_token(world, cabinet.id, phone).await;
    let serve = cabinet
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1000), (2, 1550)],
        )
        .await;
    let opened = world.open(cabinet.id, &token).await;
    assert_eq!(opened.status(), 202, "{:?}", opened.text().await);
    let session = tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    world.order_status(session, &token, "placed").await;
    let pay = world
        .app
        .post(&format!("/m/api/orders/{session}/pay"), &token, None)
        .await;
    assert_eq!(pay.status(), 200, "{:?}", pay.text().await);
    let pay_url = pay.json::<Value>().await.unwrap()["pay_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = world
        .browser
        .post(&pay_url)
        .form(&[("decision", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert!(location(&done).contains(&format!("/m/orders/{session}")));
    let paid = world.order_status(session, &token, "paid").await;
    assert_eq!(paid["paid_minor"], 900);
    let payment = paid["provider_ref"].as_str().unwrap().to_owned();
    (session, payment)
}

/// The payment as the Kazaya sandbox has it (its own merchant API).
async fn at_kazaya(world: &World, payment: &str) -> Value {
    world
        .browser
        .get(format!("{}/v1/payments/{payment}", world.kazaya_url))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The order once the read model shows `minor` refunded.
async fn refunded_order(world: &World, session: Uuid, minor: i64) -> Value {
    eventually(WAIT, "the order shows the refunds", || async {
        let order: Value = world
            .app
            .get(&format!("/orders/{session}"), &world.app.operator)
            .await
            .json()
            .await
            .ok()?;
        (order["refunded_minor"] == minor).then_some(order)
    })
    .await
}

async fn refund(world: &World, session: Uuid, amount: i64) -> reqwest::Response {
    world
        .app
        .post(
            &format!("/orders/{session}/refunds"),
            &world.app.operator,
            Some(json!({"amount_minor": amount})),
        )
        .await
}

#[tokio::test]
async fn ten_concurrent_full_refunds_refund_once() {
    let world = World::start().await;
    let (session, payment) = paid_order(&world, "13477777777").await;
    let answers = futures::future::join_all(
        (0..10).map(|_| async { code_of(refund(&world, session, 900).await).await }),
    )
    .await;
    let won: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    for (status, code) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!((*status, code.as_str()), (409, "refund_exceeds_payment"));
    }
    // One reservation, one refund, at Latch and at Kazaya.
    assert_eq!(world.events_of_type("RefundRequested").await, 1);
    assert_eq!(world.events_of_type("Refunded").await, 1);
    let kazaya = at_kazaya(&world, &payment).await;
    assert_eq!(kazaya["refunded_amount"], 900, "{kazaya}");
    assert_eq!(kazaya["refunds"].as_array().unwrap().len(), 1, "{kazaya}");
    let order = refunded_order(&world, session, 900).await;
    assert_eq!(order["status"], "refunded", "{order}");
}

#[tokio::test]
async fn partial_refunds_add_up_and_more_than_is_left_is_refused() {
    let world = World::start().await;
    let (session, payment) = paid_order(&world, "13488888888").await;
    assert_eq!(refund(&world, session, 300).await.status(), 201);

    // More than is left (600), and more than was ever paid: refused, nothing written, nothing
    // asked of Kazaya.
    let before = world.app.event_count().await;
    let (status, code) = code_of(refund(&world, session, 700).await).await;
    assert_eq!((status, code.as_str()), (409, "refund_exceeds_payment"));
    let (status, code) = code_of(refund(&world, session, 901).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_field"));
    let (status, _) = code_of(refund(&world, session, 0).await).await;
    assert_eq!(status, 400);
    assert_eq!(world.app.event_count().await, before);
    assert_eq!(at_kazaya(&world, &payment).await["refunded_amount"], 300);

    assert_eq!(refund(&world, session, 600).await.status(), 201);
    let (status, code) = code_of(refund(&world, session, 1).await).await;
    assert_eq!((status, code.as_str()), (409, "refund_exceeds_payment"));
    assert_eq!(world.events_of_type("RefundRequested").await, 2);
    assert_eq!(world.events_of_type("Refunded").await, 2);
    let kazaya = at_kazaya(&world, &payment).await;
    assert_eq!(kazaya["refunded_amount"], 900);
    assert_eq!(kazaya["refunds"].as_array().unwrap().len(), 2);
    let order = refunded_order(&world, session, 900).await;
    assert_eq!(order["status"], "refunded", "{order}");
}

// ---------------------------------------------------------------------------------------------
// Shopper opens

async fn open_with(world: &World, cabinet: Uuid, token: &str, k: Option<&str>) -> (u16, String) {
    let path = match k {
        Some(k) => format!("/m/api/cabinets/{cabinet}/open?k={k}"),
        None => format!("/m/api/cabinets/{cabinet}/open"),
    };
    code_of(world.app.post(&path, token, None).await).await
}

async fn shopper_rows(world: &World) -> i64 {
    count(&world.app.pool, "SELECT count(*) FROM shopper_opens").await
}

#[tokio::test]
async fn knowing_a_cabinet_id_is_not_enough_to_open_it() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let token = world.shopper("remote-1").await;
    let before = world.app.event_count().await;

    let (status, code) = open_with(&world, cabinet.id, &token, None).await;
    assert_eq!((status, code.as_str()), (403, "sticker_required"));
    // Another cabinet's signature, a made-up one, one of the wrong length.
    let other = sticker_sig(Uuid::now_v7());
    for k in [other.as_str(), "AAAAAAAAAAAAAAAAAAAAAA", "x", "%00"] {
        let (status, code) = open_with(&world, cabinet.id, &token, Some(k)).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "forged_cabinet_link"),
            "k={k}"
        );
    }
    assert_eq!(world.app.event_count().await, before, "nothing written");
    assert_eq!(shopper_rows(&world).await, 0);
    let device = world.app.device(cabinet.id).await.unwrap();
    assert!(device["pending_open_request"].is_null(), "{device}");

    // The real sticker's signature opens it.
    let (status, _) = open_with(&world, cabinet.id, &token, Some(&sticker_sig(cabinet.id))).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_member_cannot_hold_two_cabinets_at_once() {
    let world = World::start().await;
    let (a, b) = (world.cabinet().await, world.cabinet().await);
    let token = world.shopper("twice-1").await;
    let (ka, kb) = (sticker_sig(a.id), sticker_sig(b.id));
    // Pressed at once at two cabinets: one opening, one refusal.
    let (ra, rb) = tokio::join!(
        open_with(&world, a.id, &token, Some(&ka)),
        open_with(&world, b.id, &token, Some(&kb)),
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{ra:?} {rb:?}");
    let refused = if ra.0 == 409 { &ra } else { &rb };
    assert_eq!(refused.1, "shopper_session_active");
    assert_eq!(world.events_of_type("DoorOpenRequested").await, 1);

    // While that opening holds its cabinet, neither cabinet opens for them again.
    let before = world.app.event_count().await;
    for (id, k) in [(a.id, &ka), (b.id, &kb)] {
        let (status, code) = open_with(&world, id, &token, Some(k)).await;
        assert_eq!(status, 409);
        assert!(
            code == "shopper_session_active" || code == "cabinet_busy",
            "{code}"
        );
    }
    assert_eq!(world.app.event_count().await, before);

    // Someone else may use the free cabinet.
    let free = if ra.0 == 202 {
        (b.id, &kb)
    } else {
        (a.id, &ka)
    };
    let other = world.shopper("twice-2").await;
    assert_eq!(open_with(&world, free.0, &other, Some(free.1)).await.0, 202);
}

#[tokio::test]
async fn opens_are_rate_limited_per_member() {
    let world = World::start_with(|s| s.vending.opens_per_minute = 3).await;
    let (a, b) = (world.cabinet().await, world.cabinet().await);
    let token = world.shopper("eager-1").await;
    let k = sticker_sig(a.id);
    assert_eq!(open_with(&world, a.id, &token, Some(&k)).await.0, 202);
    for _ in 0..2 {
        assert_eq!(open_with(&world, a.id, &token, Some(&k)).await.0, 409);
    }
    let before = world.app.event_count().await;
    let res = world
        .app
        .post(
            &format!("/m/api/cabinets/{}/open?k={k}", a.id),
            &token,
            None,
        )
        .await;
    assert!(res.headers().contains_key("retry-after"));
    let (status, code) = code_of(res).await;
    assert_eq!((status, code.as_str()), (429, "too_many_opens"));
    assert_eq!(world.app.event_count().await, before);
    // The limit is the member's: another shopper opens the other cabinet.
    let other = world.shopper("eager-2").await;
    assert_eq!(
        open_with(&world, b.id, &other, Some(&sticker_sig(b.id)))
            .await
            .0,
        202
    );
}
