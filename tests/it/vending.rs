//! Scan-to-open vending end to end over real HTTP, NATS and Postgres, with the Kazaya sandbox:
//! login and registration, opening, weighing, settlement, payment and its callbacks, and every
//! bad input the issue names (each answered clearly, each changing nothing).

use super::common::{count, eventually, free_port, spawn_app_with, stream_messages, TestApp};
use base64::Engine;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use latch::kazaya_sandbox::{ClientRegistration, KazayaSandbox, RetryPolicy, SandboxSettings};
use latch::sim::SimDevice;
use latch_api::auth::{issue_token, Role};
use latch_api::kazaya::KazayaConfig;
use latch_domain::clock::SystemClock;
use latch_domain::telemetry::{OpenCommand, WireTelemetry};
use latch_nats::subjects;
use latch_workers::CancellationToken;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);
pub const CLIENT_ID: &str = "latch-it";
pub const CLIENT_SECRET: &str = "vending-test-secret";

/// The app, wired to its own Kazaya sandbox.
pub struct World {
    pub app: TestApp,
    pub kazaya_url: String,
    pub webhook_secret: String,
    stop: CancellationToken,
    /// No redirects followed, cookies carried by hand: every hop is asserted.
    pub browser: reqwest::Client,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The signature on `cabinet`'s sticker (the tests' apps sign with the development key), which
/// an open must carry.
pub fn sticker_sig(cabinet: Uuid) -> String {
    latch_api::vending::sticker::signature(
        &latch_api::vending::VendingConfig::default().sticker_key,
        &latch_domain::device::DeviceId::from(cabinet),
    )
}

impl World {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut latch::config::Settings)) -> Self {
        let port = free_port();
        let public = format!("http://127.0.0.1:{port}");
        let mut settings = SandboxSettings::new("127.0.0.1:0".parse().unwrap());
        settings.clients = vec![ClientRegistration {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            name: "Latch".into(),
            redirect_uris: vec![format!("{public}/m/auth/callback")],
        }];
        settings.retry = RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            max_attempts: 5,
        };
        let sandbox = KazayaSandbox::build(settings).await.expect("sandbox binds");
        let kazaya_url = sandbox.base_url().to_owned();
        let webhook_secret = sandbox.webhook_secret().to_owned();
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = sandbox
                .run_until_stopped(async move { until.cancelled().await })
                .await;
        });
        let (url, secret) = (kazaya_url.clone(), webhook_secret.clone());
        let app = spawn_app_with(move |s| {
            s.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
            // Kazaya signs callbacks with the wall clock; verify them against the same.
            s.clock = Arc::new(SystemClock);
            s.vending.public_url = public.clone();
            s.kazaya = Some(KazayaConfig::new(
                url,
                CLIENT_ID,
                CLIENT_SECRET,
                format!("{public}/m/auth/callback"),
                secret,
            ));
            adjust(s);
        })
        .await;
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WAIT)
            .build()
            .unwrap();
        Self {
            app,
            kazaya_url,
            webhook_secret,
            stop,
            browser,
        }
    }

    /// A vending cabinet with a two-shelf planogram (cola 350 g at ¥3.50, chips 80 g at ¥6.00,
    /// water 550 g at ¥2.00 on shelf 2), online with its door closed.
    pub async fn cabinet(&self) -> Cabinet {
        let id = self
            .app
            .register_device("vending", "610091A01", "一号柜")
            .await;
        let res = self
            .app
            .http
            .put(format!("{}/devices/{id}/planogram", self.app.address))
            .bearer_auth(&self.app.operator)
            .json(&json!({"slots": [
                {"shelf": 1, "sku": "cola-330", "name": "可乐 330ml", "unit_weight": 350, "tolerance": 15, "unit_price": 350, "currency": "CNY"},
                {"shelf": 2, "sku": "water-550", "name": "Water 550ml", "unit_weight": 550, "tolerance": 15, "unit_price": 200, "currency": "CNY"}
            ]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
        let cabinet = Cabinet {
            id,
            sim: SimDevice::new(id, self.app.js.clone()),
        };
        cabinet.sim.heartbeat(1).await.unwrap();
        cabinet.sim.door(false, None).await.unwrap();
        eventually(WAIT, "cabinet online with door closed", || async {
            let d = self.app.device(id).await?;
            (d["online"] == true && d["door"] == "closed").then_some(())
        })
        .await;
        cabinet
    }

    /// A shopper's bearer token (as the phone's session cookie would carry).
    pub async fn shopper(&self, member: &str) -> String {
        issue_token(&self.app.pool, Role::User, &format!("kazaya:{member}"))
            .await
            .unwrap()
    }

    pub async fn open(&self, cabinet: Uuid, token: &str) -> reqwest::Response {
        self.app
            .post(
                &format!("/m/api/cabinets/{cabinet}/open?k={}", sticker_sig(cabinet)),
                token,
                None,
            )
            .await
    }

    pub async fn order(&self, session: Uuid, token: &str) -> Option<Value> {
        let res = self
            .app
            .get(&format!("/m/api/orders/{session}"), token)
            .await;
        (res.status() == 200).then_some(res.json().await.unwrap())
    }

    pub async fn order_status(&self, session: Uuid, token: &str, want: &str) -> Value {
        eventually(WAIT, &format!("order {session} {want}"), || async {
            self.order(session, token)
                .await
                .filter(|o| o["status"] == want)
        })
        .await
    }

    pub async fn events_of_type(&self, event_type: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
        n
    }

    /// Signs a body as Kazaya would (Standard Webhooks).
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let key = base64::engine::general_purpose::STANDARD
            .decode(self.webhook_secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    pub async fn callback(&self, id: &str, timestamp: i64, signature: &str, body: &str) -> u16 {
        self.app
            .http
            .post(format!("{}/kazaya/webhooks", self.app.address))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

pub struct Cabinet {
    pub id: Uuid,
    pub sim: SimDevice,
}

fn weights(
    device: Uuid,
    session: Uuid,
    phase: &str,
    shelves: &[(i64, i64)],
    n: u32,
) -> WireTelemetry {
    serde_json::from_value(json!({
        "v": 1,
        "msg_id": format!("w-{session}-{phase}-{n}").replace('-', "_"),
        "device_id": device.to_string(),
        "sent_at": chrono::Utc::now(),
        "type": "weights",
        "session_id": session,
        "phase": phase,
        "shelves": shelves.iter().map(|(s, g)| json!({"shelf": s, "grams": g, "stable": true})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

impl Cabinet {
    /// Plays the cabinet's side of one opening: waits for the open command, reports the
    /// baseline, opens, lets the shopper take goods, closes and reports the weights after.
    pub async fn serve_one(
        &self,
        nats: &async_nats::Client,
        before: Vec<(i64, i64)>,
        after: Vec<(i64, i64)>,
    ) -> tokio::task::JoinHandle<Uuid> {
        let mut commands = nats
            .subscribe(subjects::device_commands_all(&self.id.to_string()))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        let sim = self.sim.clone();
        let id = self.id;
        tokio::spawn(async move {
            let msg = tokio::time::timeout(WAIT, commands.next())
                .await
                .expect("an open command")
                .unwrap();
            let open: OpenCommand = serde_json::from_slice(&msg.payload).unwrap();
            let session = open
                .session_id
                .expect("a shopper's opening names its session");
            sim.send(weights(id, session, "before", &before, 0))
                .await
                .unwrap();
            sim.door(true, Some(open.request_id)).await.unwrap();
            sim.door(false, None).await.unwrap();
            sim.send(weights(id, session, "after", &after, 0))
                .await
                .unwrap();
            session
        })
    }
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_owned()
}

fn set_cookies(res: &reqwest::Response) -> HashMap<String, String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("hidden field") + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

async fn sticker(world: &World, cabinet: Uuid) -> String {
    let res = world
        .app
        .get(&format!("/devices/{cabinet}/sticker"), &world.app.operator)
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["url"].as_str().unwrap().to_owned()
}

/// Scan -> Kazaya login page -> register -> consent -> back to Latch with a session cookie.
async fn register_through_kazaya(
    world: &World,
    cabinet: Uuid,
    phone: &str,
    nickname: &str,
) -> String {
    let b = &world.browser;
    let scan = b.get(sticker(world, cabinet).await).send().await.unwrap();
    assert_eq!(
        scan.status(),
        303,
        "the sticker sends a new shopper to Kazaya"
    );
    let oauth = set_cookies(&scan)["latch_oauth"].clone();
    let authorize = location(&scan);
    assert!(authorize.starts_with(&world.kazaya_url), "{authorize}");
    let page = b
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let txn = hidden(&page, "txn");
    let form = |path: &str, fields: Vec<(&str, &str)>| {
        b.post(format!("{}{path}", world.kazaya_url))
            .form(&fields)
            .send()
    };
    let page = form("/oauth/login", vec![("txn", &txn), ("phone", phone)])
        .await
        .unwrap();
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Become a Kazaya member"));
    let page = form(
        "/oauth/register",
        vec![
            ("txn", &txn),
            ("phone", phone),
            ("nickname", nickname),
            ("avatar", ""),
        ],
    )
    .await
    .unwrap();
    assert!(page.text().await.unwrap().contains("Allow access?"));
    let back = form("/oauth/consent", vec![("txn", &txn), ("decision", "allow")])
        .await
        .unwrap();
    let callback = location(&back);
    assert!(callback.contains("/m/auth/callback?"), "{callback}");
    let landed = b
        .get(&callback)
        .header("cookie", format!("latch_oauth={oauth}"))
        .send()
        .await
        .unwrap();
    assert_eq!(landed.status(), 303, "{:?}", landed.text().await);
    assert_eq!(
        location(&landed),
        format!("/m/cabinet/{cabinet}?k={}", sticker_sig(cabinet))
    );
    set_cookies(&landed)["latch_session"].clone()
}

/// A Kazaya member's bearer token, registered through the sandbox like a phone would.
pub async fn member_token(world: &World, cabinet: Uuid, phone: &str) -> String {
    let cookie = register_through_kazaya(world, cabinet, phone, "测试").await;
    let me: Value = world
        .app
        .http
        .get(format!("{}/m/api/me", world.app.address))
        .header("cookie", format!("latch_session={cookie}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    world.shopper(me["user_id"].as_str().unwrap()).await
}

#[tokio::test]
async fn a_new_member_registers_opens_takes_three_items_pays_and_gets_a_receipt() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let session_cookie = register_through_kazaya(&world, cabinet.id, "13455555555", "小李").await;
    assert_eq!(world.events_of_type("MemberRegistered").await, 1);
    assert_eq!(world.events_of_type("MemberAuthorized").await, 1);
    // The scan that started it is a fact, and the login names the session token it issued by
    // the id its credential row carries (never by the token).
    assert_eq!(world.events_of_type("StickerScanned").await, 1);
    let (named,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events e
           JOIN api_tokens t ON t.token_id::text = e.payload->'MemberAuthorized'->'session'->>'token_id'
          WHERE e.event_type = 'MemberAuthorized' AND t.subject LIKE 'kazaya:%'",
    )
    .fetch_one(&world.app.pool)
    .await
    .unwrap();
    assert_eq!(named, 1);

    let cookie_get = |path: String| {
        world
            .app
            .http
            .get(format!("{}{path}", world.app.address))
            .header("cookie", format!("latch_session={session_cookie}"))
            .send()
    };
    let me: Value = cookie_get("/m/api/me".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["nickname"], "小李");
    let home: Value = cookie_get(format!("/m/api/cabinets/{}", cabinet.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(home["can_open"], true, "{home}");
    assert_eq!(home["products"].as_array().unwrap().len(), 2);

    // A cookie alone cannot open a door: a cross-site form could send it.
    let forged = world
        .app
        .http
        .post(format!(
            "{}/m/api/cabinets/{}/open?k={}",
            world.app.address,
            cabinet.id,
            sticker_sig(cabinet.id)
        ))
        .header("cookie", format!("latch_session={session_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let serve = cabinet
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1000), (2, 1550)],
        )
        .await;
    let opened = world
        .app
        .http
        .post(format!(
            "{}/m/api/cabinets/{}/open?k={}",
            world.app.address,
            cabinet.id,
            sticker_sig(cabinet.id)
        ))
        .header("cookie", format!("latch_session={session_cookie}"))
        .header("x-latch-client", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 202, "{:?}", opened.text().await);
    let opening: Value = opened.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, serve).await.unwrap().unwrap(),
        session
    );

    let token = issue_token(
        &world.app.pool,
        Role::User,
        &format!("kazaya:{}", me["user_id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let order = world.order_status(session, &token, "placed").await;
    assert_eq!(order["total_minor"], 900, "2 x 350 + 1 x 200: {order}");
    let lines = order["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["quantity"], 2);
    assert_eq!(lines[1]["quantity"], 1);
    eventually(WAIT, "the cabinet is free again", || async {
        let d = world.app.device(cabinet.id).await?;
        d["current_session"].is_null().then_some(())
    })
    .await;

    // Unpaid: the shopper may not open again.
    let again = world.open(cabinet.id, &token).await;
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unpaid_order");

    // Pay at the sandbox's hosted page; its signed callback marks the order paid.
    let before_paying = chrono::Utc::now();
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
    assert!(paid["provider_ref"].as_str().is_some());
    assert_eq!(world.events_of_type("PaymentSucceeded").await, 1);
    // Paid: the cabinet opens for them again.
    let home: Value = world
        .app
        .get(&format!("/m/api/cabinets/{}", cabinet.id), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(home["can_open"], true, "{home}");

    // Auditors: the order as it stood before payment, and now (equal to the live model), and a
    // rebuild of the orders table from the log reproduces it.
    use latch_projections::audit::{as_of::as_of, rebuild::rebuild_named};
    use latch_projections::orders::OrderRow;
    let live: Vec<OrderRow> = sqlx::query_as("SELECT * FROM orders ORDER BY session_id")
        .fetch_all(&world.app.pool)
        .await
        .unwrap();
    let now = as_of(&world.app.pool, chrono::Utc::now(), None)
        .await
        .unwrap();
    assert_eq!(now.orders, live);
    let then = as_of(&world.app.pool, before_paying, None).await.unwrap();
    assert_eq!(then.orders.len(), 1);
    assert_eq!(then.orders[0].status, "placed");
    rebuild_named(&world.app.pool, "orders", &|_| {})
        .await
        .unwrap();
    let rebuilt: Vec<OrderRow> = sqlx::query_as("SELECT * FROM orders ORDER BY session_id")
        .fetch_all(&world.app.pool)
        .await
        .unwrap();
    assert_eq!(rebuilt, live);
}

#[tokio::test]
async fn two_phones_pressing_open_at_once_start_exactly_one_session() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let (a, b) = (world.shopper("ky_a").await, world.shopper("ky_b").await);
    let (ra, rb) = tokio::join!(world.open(cabinet.id, &a), world.open(cabinet.id, &b));
    let mut statuses = vec![ra.status().as_u16(), rb.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, vec![202, 409]);
    let loser = if ra.status() == 409 { ra } else { rb };
    let body: Value = loser.json().await.unwrap();
    assert!(
        ["cabinet_busy", "open_already_pending"].contains(&body["error"]["code"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(world.events_of_type("DoorOpenRequested").await, 1);
}

#[tokio::test]
async fn an_offline_faulty_or_busy_cabinet_refuses_to_open_and_changes_nothing() {
    let world = World::start().await;
    let token = world.shopper("ky_1").await;
    // Registered and stocked, but never heard from.
    let silent = world.app.register_device("vending", "S1", "silent").await;
    world
        .app
        .http
        .put(format!("{}/devices/{silent}/planogram", world.app.address))
        .bearer_auth(&world.app.operator)
        .json(&json!({"slots": [{"shelf": 1, "sku": "a", "name": "A", "unit_weight": 100, "tolerance": 5, "unit_price": 100, "currency": "CNY"}]}))
        .send()
        .await
        .unwrap();
    let before = world.app.event_count().await;
    let res = world.open(silent, &token).await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "device_offline"
    );
    let home: Value = eventually(WAIT, "the silent cabinet is projected", || async {
        let res = world
            .app
            .get(&format!("/m/api/cabinets/{silent}"), &token)
            .await;
        if res.status() == 200 {
            res.json().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(home["can_open"], false);
    assert!(home["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["code"] == "device_offline"));

    let cabinet = world.cabinet().await;
    cabinet.sim.fault(true, "scale_jam").await.unwrap();
    eventually(WAIT, "fault recorded", || async {
        let d = world.app.device(cabinet.id).await?;
        d["fault_code"].is_string().then_some(())
    })
    .await;
    let before_fault = world.app.event_count().await;
    let res = world.open(cabinet.id, &token).await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "device_faulted"
    );
    cabinet.sim.fault(false, "scale_jam").await.unwrap();
    eventually(WAIT, "fault cleared", || async {
        let d = world.app.device(cabinet.id).await?;
        d["fault_code"].is_null().then_some(())
    })
    .await;

    // Busy: another shopper's opening holds it.
    let other = world.shopper("ky_2").await;
    assert_eq!(world.open(cabinet.id, &other).await.status(), 202);
    let after_lock = world.app.event_count().await;
    let res = world.open(cabinet.id, &token).await;
    assert_eq!(res.status(), 409);
    let code = res.json::<Value>().await.unwrap()["error"]["code"].clone();
    assert!(
        code == "open_already_pending" || code == "cabinet_busy",
        "{code}"
    );

    // A locker is not a vending cabinet; an unknown one is not found.
    let locker = world.app.register_device("locker", "S1", "locker").await;
    let after_locker = world.app.event_count().await;
    let res = world.open(locker, &token).await;
    assert_eq!(res.status(), 409, "{:?}", res.text().await);
    let res = world.open(Uuid::now_v7(), &token).await;
    assert_eq!(res.status(), 404);
    // Operators are not shoppers.
    assert_eq!(
        world.open(cabinet.id, &world.app.operator).await.status(),
        403
    );

    assert_eq!(before, before); // the silent cabinet's refusal appended nothing:
    assert_eq!(world.events_of_type("DoorOpenRequested").await, 1);
    assert!(before_fault > before && after_lock > before_fault);
    assert_eq!(world.app.event_count().await, after_locker);
}

#[tokio::test]
async fn a_forged_or_swapped_sticker_gets_a_clear_page_and_no_login() {
    let world = World::start().await;
    let a = world.cabinet().await;
    let b = world.app.register_device("vending", "S2", "二号柜").await;
    let link_a = sticker(&world, a.id).await;
    let sig = link_a.split("k=").nth(1).unwrap();
    let swapped = format!("{}/m/c/{b}?k={sig}", world.app.address);
    let forged = format!(
        "{}/m/c/{}?k=AAAAAAAAAAAAAAAAAAAAAA",
        world.app.address, a.id
    );
    let unsigned = format!("{}/m/c/{}", world.app.address, a.id);
    let garbage = format!("{}/m/c/not-a-cabinet?k=x", world.app.address);
    let edited = format!("{}/m/c/not-a-cabinet?k={sig}", world.app.address);
    for url in [swapped, forged, unsigned, garbage, edited] {
        let res = world.browser.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 403, "{url}");
        assert!(set_cookies(&res).is_empty(), "no login is started");
        let html = res.text().await.unwrap();
        assert!(html.contains("forged_cabinet_link"), "{html}");
        assert!(html.contains("Not a valid cabinet code"), "{html}");
    }
    let res = world.browser.get(&link_a).send().await.unwrap();
    assert_eq!(res.status(), 303);

    // Each scan is one short stream: the swapped one names the cabinet its signature is for.
    let scans = || async {
        let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT event_type, aggregate_id, payload FROM events
              WHERE aggregate_type = 'sticker_scan' ORDER BY tx_id, id",
        )
        .fetch_all(&world.app.pool)
        .await
        .unwrap();
        rows
    };
    let rows = scans().await;
    let types: Vec<&str> = rows.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "SwappedStickerScanned",
            "ForgedStickerScanned",
            "ForgedStickerScanned",
            "ForgedStickerScanned",
            "ForgedStickerScanned",
            "StickerScanned"
        ]
    );
    let body = |i: usize| &rows[i].2[&rows[i].0];
    assert_eq!(body(0)["cabinet"], b.to_string());
    assert_eq!(body(0)["genuine_for"], a.id.to_string());
    assert_eq!(body(1)["cabinet"], a.id.to_string());
    assert_eq!(body(3)["cabinet"], Value::Null, "not a cabinet id at all");
    assert_eq!(
        body(4)["cabinet"],
        Value::Null,
        "a genuine signature, no cabinet"
    );
    assert_eq!(body(5)["cabinet"], a.id.to_string());
    assert_eq!(body(5)["shopper"], Value::Null);
    let ids: std::collections::HashSet<&str> = rows.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), rows.len());

    // A shopper with a session is named by the scan.
    let token = member_token(&world, a.id, "13455555555").await;
    let res = world
        .browser
        .get(&link_a)
        .header("cookie", format!("latch_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let rows = scans().await;
    let (t, _, last) = rows.last().unwrap();
    assert_eq!(t, "StickerScanned");
    assert!(last[t]["shopper"].is_string(), "{last}");

    // Anonymous traffic cannot grow the log without bound: one client has at most
    // SCANS_PER_MINUTE_PER_IP scans a minute recorded; the rest are answered the same.
    let before = rows.len();
    let forged = format!(
        "{}/m/c/{}?k=BBBBBBBBBBBBBBBBBBBBBB",
        world.app.address, a.id
    );
    for _ in 0..40 {
        let res = world.browser.get(&forged).send().await.unwrap();
        assert_eq!(res.status(), 403);
    }
    let recorded = scans().await.len() - before;
    assert!(
        recorded < 40 && recorded <= latch_api::vending::scans::SCANS_PER_MINUTE_PER_IP as usize,
        "{recorded}"
    );
}

#[tokio::test]
async fn tampered_stale_and_replayed_payment_callbacks_change_nothing() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    // Kazaya takes payments only from its members.
    let token = member_token(&world, cabinet.id, "13466666666").await;
    let serve = cabinet
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1350), (2, 2100)],
        )
        .await;
    let opening: Value = world.open(cabinet.id, &token).await.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    world.order_status(session, &token, "placed").await;
    let pay: Value = world
        .app
        .post(&format!("/m/api/orders/{session}/pay"), &token, None)
        .await
        .json()
        .await
        .unwrap();
    let payment_id = pay["payment_id"].as_str().unwrap().to_owned();
    world.order_status(session, &token, "payment_pending").await;

    let now = chrono::Utc::now().timestamp();
    let body = json!({"type": "payment.succeeded", "timestamp": chrono::Utc::now(), "data": {
        "payment_id": "pay_forged", "order_id": payment_id, "amount": 350, "currency": "CNY",
        "status": "succeeded", "refunded_amount": 0}})
    .to_string();
    let before = world.app.event_count().await;
    // Unsigned, signed with another key, tampered after signing, stale, or for an amount we
    // never asked: all refused.
    assert_eq!(world.callback("msg_1", now, "v1,AAAA", &body).await, 400);
    let sig = world.sign("msg_1", now, &body);
    let tampered = body.replace("\"amount\":350", "\"amount\":1");
    assert_eq!(world.callback("msg_1", now, &sig, &tampered).await, 400);
    let stale = now - 3600;
    assert_eq!(
        world
            .callback("msg_1", stale, &world.sign("msg_1", stale, &body), &body)
            .await,
        400
    );
    let cheap = body.replace("\"amount\":350", "\"amount\":1");
    assert_eq!(
        world
            .callback("msg_2", now, &world.sign("msg_2", now, &cheap), &cheap)
            .await,
        409
    );
    let unknown = body.replace(&payment_id, &Uuid::now_v7().to_string());
    assert_eq!(
        world
            .callback("msg_3", now, &world.sign("msg_3", now, &unknown), &unknown)
            .await,
        404
    );
    assert_eq!(
        world.app.event_count().await,
        before,
        "refused callbacks wrote nothing"
    );

    // A genuine one is recorded once; its replay (same id) and a second delivery change nothing.
    let sig = world.sign("msg_ok", now, &body);
    assert_eq!(world.callback("msg_ok", now, &sig, &body).await, 204);
    world.order_status(session, &token, "paid").await;
    let after = world.app.event_count().await;
    assert_eq!(after, before + 1);
    assert_eq!(world.callback("msg_ok", now, &sig, &body).await, 204);
    let other = world.sign("msg_again", now, &body);
    assert_eq!(world.callback("msg_again", now, &other, &body).await, 204);
    assert_eq!(
        world.app.event_count().await,
        after,
        "replays appended nothing"
    );
    assert_eq!(world.events_of_type("PaymentSucceeded").await, 1);
}

#[tokio::test]
async fn weights_for_a_missing_session_or_from_another_cabinet_are_dead_lettered() {
    let world = World::start().await;
    let a = world.cabinet().await;
    let b = world.cabinet().await;
    let token = world.shopper("ky_w").await;
    let serve = a
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1700), (2, 2100)],
        )
        .await;
    let opening: Value = world.open(a.id, &token).await.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    world.order_status(session, &token, "no_charge").await;
    let before = world.app.event_count().await;
    let dead_before = stream_messages(&world.app.js, subjects::DEADLETTER_STREAM)
        .await
        .len();

    // After-weights for a session that never existed.
    b.sim
        .send(weights(b.id, Uuid::now_v7(), "after", &[(1, 1000)], 1))
        .await
        .unwrap();
    // Cabinet B reporting on cabinet A's session.
    b.sim
        .send(weights(b.id, session, "after", &[(1, 1000)], 2))
        .await
        .unwrap();
    // A baseline for a session no opening asked for.
    b.sim
        .send(weights(b.id, Uuid::now_v7(), "before", &[(1, 1000)], 3))
        .await
        .unwrap();
    // Cabinet B publishing under A's name: the payload and the subject disagree.
    let mut spoof = weights(a.id, session, "after", &[(1, 1)], 4);
    spoof.device_id = a.id.to_string();
    let subject = subjects::telemetry(&b.id.to_string(), "weights");
    world
        .app
        .js
        .publish(subject, serde_json::to_vec(&spoof).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let dead = eventually(WAIT, "four dead letters", || async {
        let m = stream_messages(&world.app.js, subjects::DEADLETTER_STREAM).await;
        (m.len() >= dead_before + 4).then_some(m)
    })
    .await;
    let reasons: Vec<String> = dead[dead_before..]
        .iter()
        .map(|m| m.headers.get("Latch-Reason").unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "unknown_session",
            "session_of_another_cabinet",
            "unknown_session",
            "device_mismatch"
        ]
    );
    assert_eq!(
        world.app.event_count().await,
        before,
        "nothing was recorded"
    );
    let order = world.order(session, &token).await.unwrap();
    assert_eq!(order["status"], "no_charge");
}

#[tokio::test]
async fn an_ambiguous_change_waits_for_an_operator_and_is_charged_as_resolved() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let token = world.shopper("ky_r").await;
    // 170 g off shelf 1 is half a cola: no whole quantity explains it.
    let serve = cabinet
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1530), (2, 2100)],
        )
        .await;
    let opening: Value = world.open(cabinet.id, &token).await.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    let order = world.order_status(session, &token, "needs_review").await;
    assert!(
        order["review_reasons"]
            .to_string()
            .contains("out_of_tolerance"),
        "{order}"
    );
    // Nothing to pay while in review, and no new opening either.
    let pay = world
        .app
        .post(&format!("/m/api/orders/{session}/pay"), &token, None)
        .await;
    assert_eq!(pay.status(), 409);
    assert_eq!(world.open(cabinet.id, &token).await.status(), 409);
    // Operators see it in their queue and resolve it; bad lines are refused by field.
    let queue: Value = world
        .app
        .get("/orders?status=needs_review", &world.app.operator)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue.as_array().unwrap().len(), 1);
    let bad = world
        .app
        .post(
            &format!("/orders/{session}/review"),
            &world.app.operator,
            Some(json!({"lines": [{"shelf": 1, "sku": "cola-330", "quantity": -1}]})),
        )
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["field"],
        "lines[0].quantity"
    );
    let ok = world
        .app
        .post(
            &format!("/orders/{session}/review"),
            &world.app.operator,
            Some(json!({"lines": [{"shelf": 1, "sku": "cola-330", "quantity": 1}]})),
        )
        .await;
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    let placed = world.order_status(session, &token, "placed").await;
    assert_eq!(placed["total_minor"], 350);
    // A shopper cannot resolve reviews.
    let res = world
        .app
        .post(
            &format!("/orders/{session}/review"),
            &token,
            Some(json!({"lines": []})),
        )
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        count(
            &world.app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'ReviewResolved'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn an_opening_that_times_out_abandons_its_session_and_frees_the_cabinet() {
    // A clock of the test's own: the deadline passes when the test says, however busy the box.
    let clock = latch_domain::ManualClock::new(chrono::Utc::now());
    let app_clock = clock.clone();
    let world = World::start_with(move |s| s.clock = Arc::new(app_clock)).await;
    let cabinet = world.cabinet().await;
    let token = world.shopper("ky_t").await;
    // The cabinet weighs but never opens the door.
    let mut commands = world
        .app
        .nats
        .subscribe(subjects::device_commands_all(&cabinet.id.to_string()))
        .await
        .unwrap();
    world.app.nats.flush().await.unwrap();
    let res = world.open(cabinet.id, &token).await;
    assert_eq!(res.status(), 202);
    let opening: Value = res.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    let msg = tokio::time::timeout(WAIT, commands.next())
        .await
        .unwrap()
        .unwrap();
    let open: OpenCommand = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(open.session_id, Some(session));
    cabinet
        .sim
        .send(weights(
            cabinet.id,
            session,
            "before",
            &[(1, 1700), (2, 2100)],
            0,
        ))
        .await
        .unwrap();
    world.order_status(session, &token, "open").await;
    clock.advance(chrono::Duration::seconds(11));
    world.order_status(session, &token, "abandoned").await;
    eventually(WAIT, "cabinet free", || async {
        let d = world.app.device(cabinet.id).await?;
        (d["current_session"].is_null() && d["last_open_outcome"] == "timeout").then_some(())
    })
    .await;
    // And it can be opened again by the same shopper: nothing is owed.
    let again = world.open(cabinet.id, &token).await;
    assert_eq!(again.status(), 202, "{:?}", again.text().await);
}

#[tokio::test]
async fn a_cabinet_that_closes_without_weights_after_sends_the_order_to_review_and_is_freed() {
    let clock = latch_domain::ManualClock::new(chrono::Utc::now());
    let app_clock = clock.clone();
    let world = World::start_with(move |s| s.clock = Arc::new(app_clock)).await;
    let cabinet = world.cabinet().await;
    let token = world.shopper("ky_s").await;
    let mut commands = world
        .app
        .nats
        .subscribe(subjects::device_commands_all(&cabinet.id.to_string()))
        .await
        .unwrap();
    world.app.nats.flush().await.unwrap();
    let res = world.open(cabinet.id, &token).await;
    assert_eq!(res.status(), 202);
    let msg = tokio::time::timeout(WAIT, commands.next())
        .await
        .unwrap()
        .unwrap();
    let open: OpenCommand = serde_json::from_slice(&msg.payload).unwrap();
    let session = open.session_id.unwrap();
    // Baseline, door open, door closed... and the load cells never report again.
    cabinet
        .sim
        .send(weights(
            cabinet.id,
            session,
            "before",
            &[(1, 1700), (2, 2100)],
            0,
        ))
        .await
        .unwrap();
    cabinet.sim.door(true, Some(open.request_id)).await.unwrap();
    cabinet.sim.door(false, None).await.unwrap();
    eventually(WAIT, "door closed, session held", || async {
        let d = world.app.device(cabinet.id).await?;
        (d["door"] == "closed" && d["current_session"] == session.to_string()).then_some(())
    })
    .await;
    world.order_status(session, &token, "open").await;
    // The cabinet also falls silent and goes offline before the weights deadline: a later event
    // on the device must not restart the wait for the weights after.
    clock.advance(chrono::Duration::seconds(61));
    eventually(WAIT, "cabinet offline", || async {
        let d = world.app.device(cabinet.id).await?;
        (d["online"] == false).then_some(())
    })
    .await;
    world.order_status(session, &token, "open").await;
    clock.advance(chrono::Duration::seconds(60));
    let order = world.order_status(session, &token, "needs_review").await;
    assert!(
        order["review_reasons"]
            .to_string()
            .contains("missing_reading"),
        "{order}"
    );
    eventually(WAIT, "cabinet free", || async {
        let d = world.app.device(cabinet.id).await?;
        d["current_session"].is_null().then_some(())
    })
    .await;
}

#[tokio::test]
async fn planograms_are_operator_only_and_bad_slots_name_their_field() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let token = world.shopper("ky_p").await;
    let put = |who: String, body: Value| {
        world
            .app
            .http
            .put(format!(
                "{}/devices/{}/planogram",
                world.app.address, cabinet.id
            ))
            .bearer_auth(who)
            .json(&body)
            .send()
    };
    let before = world.app.event_count().await;
    let res = put(token.clone(), json!({"slots": []})).await.unwrap();
    assert_eq!(res.status(), 403);
    let res = put(
        world.app.operator.clone(),
        json!({"slots": [{"shelf": 1, "sku": "a", "name": "A", "unit_weight": 0, "tolerance": 5, "unit_price": 100, "currency": "CNY"}]}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "slots[0].unit_weight", "{body}");
    assert_eq!(world.app.event_count().await, before);
    let shown: Value = world
        .app
        .get(&format!("/devices/{}/planogram", cabinet.id), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["slots"][0]["name"], "可乐 330ml");
}
