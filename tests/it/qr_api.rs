//! QR-code login over real HTTP: the seed's answers, the browser-secret rule, bad input that
//! changes nothing, expiry by the sweeper, the push channel, and rate limits.

use crate::common::{count, eventually, spawn_app, spawn_app_with, TestApp};
use chrono::Duration as Span;
use futures::StreamExt;
use latch_api::auth::{issue_token, Role};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// A browser as far as the server can tell: its cookie jar (just the QR secret and session).
#[derive(Default, Clone)]
struct Browser {
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn take_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let raw = value.to_str().unwrap();
            let pair = raw.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    async fn get(&mut self, app: &TestApp, path: &str) -> reqwest::Response {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut request = client.get(format!("{}{path}", app.address));
        if !self.cookies.is_empty() {
            request = request.header(COOKIE, self.header());
        }
        let response = request.send().await.unwrap();
        self.take_cookies(&response);
        response
    }

    /// Mints a code and returns its content.
    async fn mint(&mut self, app: &TestApp) -> String {
        let response = self.get(app, "/qr/code").await;
        assert_eq!(response.status(), StatusCode::OK);
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["ttlSeconds"], 120);
        body["code"].as_str().unwrap().to_owned()
    }

    async fn poll(&mut self, app: &TestApp) -> (StatusCode, Value) {
        let response = self.get(app, "/qr/login").await;
        (response.status(), response.json().await.unwrap())
    }
}

/// An app whose pages may poll as fast as they like, so waiting for a state never has to move
/// the clock (which would expire the code).
async fn qr_app() -> TestApp {
    spawn_app_with(|s| s.qr.poll_interval = Span::zero()).await
}

async fn app_post(app: &TestApp, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let response = app.post(path, token, Some(body)).await;
    (response.status(), response.json().await.unwrap())
}

async fn qr_events(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'qr_login' ORDER BY recorded_at, sequence",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn poll_until(app: &TestApp, browser: &mut Browser, statusflag: i64) -> Value {
    eventually(
        WAIT,
        &format!("poll answers statusflag {statusflag}"),
        || {
            let mut browser = browser.clone();
            async move {
                let (status, body) = browser.poll(app).await;
                (status == StatusCode::OK && body["statusflag"] == statusflag).then_some(body)
            }
        },
    )
    .await
}

#[tokio::test]
async fn scan_confirm_redeem_and_me() {
    let app = qr_app().await;
    let mut pc = Browser::default();
    let code = pc.mint(&app).await;
    assert!(code.starts_with("lq1_") && code.len() == 47, "{code}");
    let (status, body) = pc.poll(&app).await;
    assert_eq!(
        (status, body["statusflag"].clone(), body["state"].clone()),
        (StatusCode::OK, json!(0), json!("waiting"))
    );

    let (status, locked) = app_post(
        &app,
        "/qr/lock",
        &app.user,
        json!({"code": code, "ext": "shop=7"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{locked}");
    assert_eq!(locked["statusflag"], 0);
    assert_eq!(locked["type"], "login");
    assert_eq!(locked["origin"]["ip"], "127.0.0.1");
    assert!(locked["origin"]["mintedAt"].is_string());
    poll_until(&app, &mut pc, 1).await;

    let (status, body) = app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"statusflag": 0})));
    let done = poll_until(&app, &mut pc, 2).await;
    assert_eq!(done["ext"], "shop=7");
    let url = done["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/qr/redeem?loginCode="), "{url}");

    // No session yet.
    let mut anonymous = Browser::default();
    assert_eq!(
        anonymous.get(&app, "/me").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let response = pc.get(&app, &url).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/console");
    let me: Value = pc.get(&app, "/me").await.json().await.unwrap();
    assert_eq!(me["userId"], "test-user");

    assert_eq!(
        qr_events(&app).await,
        [
            "QrCodeMinted",
            "QrCodeLocked",
            "QrLoginConfirmed",
            "QrLoginRedeemed"
        ]
    );
    eventually(
        WAIT,
        "the status projection shows the redeemed login",
        || async {
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM qr_login_status")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
            (state.as_deref() == Some("redeemed")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn redeeming_twice_fails_and_only_the_minting_browser_can() {
    let app = qr_app().await;
    let mut pc = Browser::default();
    let code = pc.mint(&app).await;
    let keep = pc.clone(); // the secret cookie, kept as a replaying attacker would
    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    let url = poll_until(&app, &mut pc, 2).await["url"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another browser with the URL (it travels in a Location, it may leak) gets nothing.
    let mut other = Browser::default();
    other.mint(&app).await;
    let response = other.get(&app, &url).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(SET_COOKIE).is_none());

    assert_eq!(pc.get(&app, &url).await.status(), StatusCode::SEE_OTHER);
    let mut replay = keep.clone();
    let response = replay.get(&app, &url).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "login_code_used");
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM api_tokens WHERE expires_at IS NOT NULL"
        )
        .await,
        1
    );
    // The redemption is the session token's issue: it names the token by the id its credential
    // row carries, with the same expiry, and one command did both.
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM events e JOIN api_tokens t
                ON t.token_id::text = e.payload->'QrLoginRedeemed'->>'session_id'
             WHERE e.event_type = 'QrLoginRedeemed'
               AND (e.payload->'QrLoginRedeemed'->>'session_expires_at')::timestamptz = t.expires_at"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_screenshot_in_another_browser_polls_to_nothing() {
    let app = qr_app().await;
    let mut victim = Browser::default();
    let code = victim.mint(&app).await;

    // The attacker's browser has no secret for the victim's code.
    let mut attacker = Browser::default();
    let response = attacker.get(&app, "/qr/login").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["statusflag"], -1);
    assert_eq!(body["error"]["code"], "no_browser_secret");
    assert_eq!(body["error"]["field"], "latch_qr");

    // Guessing a secret for the victim's login id is refused.
    let login_id = victim.cookies[0].1.split('.').next().unwrap().to_owned();
    attacker.cookies = vec![("latch_qr".into(), format!("{login_id}.{}", "A".repeat(43)))];
    let (status, body) = attacker.poll(&app).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "wrong_browser");

    // The victim's phone confirms; the attacker's own code shows nothing of it.
    attacker.cookies.clear();
    attacker.mint(&app).await;
    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    poll_until(&app, &mut victim, 2).await;
    let (_, body) = attacker.poll(&app).await;
    assert_eq!(body["statusflag"], 0);
    assert!(body.get("url").is_none());

    // A malformed cookie is a clear 400.
    attacker.cookies = vec![("latch_qr".into(), "garbage".into())];
    let (status, body) = attacker.poll(&app).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "latch_qr");
}

#[tokio::test]
async fn bad_input_gets_its_answer_and_changes_nothing() {
    let app = spawn_app().await;
    let other_user = issue_token(&app.pool, Role::User, "other-user")
        .await
        .unwrap();
    let mut pc = Browser::default();
    let code = pc.mint(&app).await;
    let events = || async { count(&app.pool, "SELECT count(*) FROM events").await };
    let before = events().await;

    // (path, token, body, status, error code, field)
    type Case<'a> = (
        &'a str,
        &'a str,
        Value,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "/qr/lock",
            &app.user,
            json!({"code": "lq1_nope"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("code"),
        ),
        (
            "/qr/lock",
            &app.user,
            json!({"code": 7}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("code"),
        ),
        (
            "/qr/lock",
            &app.user,
            json!({}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("code"),
        ),
        (
            "/qr/lock",
            &app.user,
            json!({"code": code, "ext": "x".repeat(513)}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("ext"),
        ),
        (
            "/qr/activate",
            &app.user,
            json!({"code": code}),
            StatusCode::CONFLICT,
            "not_locked",
            None,
        ),
        (
            "/qr/cancel",
            &app.user,
            json!({"code": code}),
            StatusCode::CONFLICT,
            "not_locked",
            None,
        ),
        (
            "/qr/lock",
            &app.operator,
            json!({"code": code}),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
    ];
    for (path, token, body, status, code_name, field) in &cases {
        let (got, answer) = app_post(&app, path, token, body.clone()).await;
        assert_eq!(got, *status, "{path} {body}: {answer}");
        assert_eq!(answer["statusflag"], -1, "{answer}");
        assert_eq!(answer["error"]["code"], *code_name, "{answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], *field, "{answer}");
        }
    }
    // An unknown code of the right shape.
    let mut stranger = Browser::default();
    let unknown = stranger.mint(&app).await;
    let forged = format!(
        "{}{}",
        &unknown[..30],
        if &unknown[30..31] == "A" { "B" } else { "A" }
    ) + &unknown[31..];
    let (status, body) = app_post(&app, "/qr/lock", &app.user, json!({"code": forged})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_code")),
        "{body}"
    );
    let before = before + 1; // the stranger's own mint

    assert_eq!(events().await, before);
    let (status, _) = app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    assert_eq!(status, StatusCode::OK);
    // Locking twice by the same app changes nothing; by a second app is refused.
    let (status, again) = app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    assert_eq!(
        (status, again["statusflag"].clone()),
        (StatusCode::OK, json!(0))
    );
    let (status, body) = app_post(&app, "/qr/lock", &other_user, json!({"code": code})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("already_locked"))
    );
    let (status, body) = app_post(&app, "/qr/activate", &other_user, json!({"code": code})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("not_lock_owner"))
    );
    let (status, body) = app_post(&app, "/qr/cancel", &other_user, json!({"code": code})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("not_lock_owner"))
    );
    assert_eq!(events().await, before + 1);

    // Too-fast polling: the answer names the interval.
    app.clock.advance(Span::seconds(3));
    assert_eq!(pc.get(&app, "/qr/login").await.status(), StatusCode::OK);
    let response = pc.get(&app, "/qr/login").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "poll_too_fast");
    assert_eq!(body["intervalSeconds"], 2.0);
    assert!(body["error"]["message"].as_str().unwrap().contains("2 s"));

    // Expired: -2 for the app, and nothing is written by the refusal.
    app.clock.advance(Span::seconds(121));
    let (status, body) = app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["statusflag"].clone(), body["state"].clone()),
        (json!(-2), json!("expired"))
    );
    app.clock.advance(Span::seconds(3));
    let (_, body) = pc.poll(&app).await;
    assert_eq!(
        (body["statusflag"].clone(), body["state"].clone()),
        (json!(-2), json!("expired"))
    );
    assert!(!qr_events(&app)
        .await
        .contains(&"QrLoginConfirmed".to_owned()));
}

#[tokio::test]
async fn cancel_and_expiry_are_different_ends() {
    let app = qr_app().await;
    let mut pc = Browser::default();
    let code = pc.mint(&app).await;
    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    let (status, body) = app_post(&app, "/qr/cancel", &app.user, json!({"code": code})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"statusflag": 0})));
    let body = poll_until(&app, &mut pc, -2).await;
    assert_eq!(body["state"], "cancelled");
    let (_, body) = app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    assert_eq!(
        (body["statusflag"].clone(), body["state"].clone()),
        (json!(-2), json!("cancelled"))
    );

    let mut idle = Browser::default();
    idle.mint(&app).await;
    app.clock.advance(Span::seconds(121));
    eventually(WAIT, "the sweeper expires the idle code", || async {
        let events = qr_events(&app).await;
        events
            .contains(&"QrCodeExpired".to_owned())
            .then_some(events)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = qr_events(&app).await;
    // The cancelled code was not also expired; the idle one was, once.
    assert_eq!(
        events.iter().filter(|e| *e == "QrCodeExpired").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "QrLoginCancelled").count(),
        1,
        "{events:?}"
    );
    let (_, body) = idle.poll(&app).await;
    assert_eq!(body["state"], "expired");
}

async fn ws_next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a push within the wait")
            .expect("the channel is open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn the_push_channel_sends_the_state_first_then_every_step() {
    let app = qr_app().await;
    let mut pc = Browser::default();
    let code = pc.mint(&app).await;
    let connect = || {
        let mut request = format!("{}/qr/ws", app.address.replace("http", "ws"))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("cookie", pc.header().parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let (mut ws, _) = connect().await.unwrap();
    assert_eq!(ws_next(&mut ws).await["state"], "waiting");
    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    assert_eq!(ws_next(&mut ws).await["statusflag"], 1);

    // A page that reconnects starts from where things stand.
    ws.close(None).await.unwrap();
    let (mut ws, _) = connect().await.unwrap();
    assert_eq!(ws_next(&mut ws).await["state"], "scanned");
    app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    let done = ws_next(&mut ws).await;
    assert_eq!(done["statusflag"], 2);
    assert!(done["url"]
        .as_str()
        .unwrap()
        .starts_with("/qr/redeem?loginCode="));

    // Without the secret there is no channel; from another site neither.
    let request = format!("{}/qr/ws", app.address.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let mut request = format!("{}/qr/ws", app.address.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", pc.header().parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
}

#[tokio::test]
async fn minting_and_app_actions_are_rate_limited() {
    let app = spawn_app_with(|s| {
        s.qr.mint_per_minute_per_ip = 3;
        s.qr.app_actions_per_minute_per_user = 2;
    })
    .await;
    let mut pc = Browser::default();
    for _ in 0..3 {
        pc.mint(&app).await;
    }
    let response = pc.get(&app, "/qr/code").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let minted = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'QrCodeMinted'",
    )
    .await;
    assert_eq!(minted, 3);
    app.clock.advance(Span::seconds(60));
    let code = pc.mint(&app).await;

    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    let (status, body) = app_post(&app, "/qr/activate", &app.user, json!({"code": code})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited"))
    );
    assert!(!qr_events(&app)
        .await
        .contains(&"QrLoginConfirmed".to_owned()));
}

#[tokio::test]
async fn loginpic_scans_back_to_a_code_that_works() {
    let app = qr_app().await;
    let mut pc = Browser::default();
    for (query, field) in [
        ("qrSize=abc", "qrSize"),
        ("qrSize=9999", "qrSize"),
        ("logoSize=0", "logoSize"),
        ("logo=99", "logo"),
    ] {
        let response = pc.get(&app, &format!("/qr/loginpic?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(response.headers().get(SET_COOKIE).is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(count(&app.pool, "SELECT count(*) FROM events").await, 0);

    let response = pc
        .get(&app, "/qr/loginpic?qrSize=256&logo=1&logoSize=64")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = response.bytes().await.unwrap();
    let image = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(image.dimensions(), (256, 256));
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, code) = grids[0].decode().unwrap();
    let (status, body) = app_post(&app, "/qr/lock", &app.user, json!({"code": code})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    poll_until(&app, &mut pc, 1).await;
}

#[tokio::test]
async fn the_seeds_trailing_slash_and_one_call_form_answer_like_the_others() {
    use base64::Engine as _;
    let app = qr_app().await;
    // Seed 002's example: `/qr/loginpic/?qrSize=...`, slash and all.
    let mut pc = Browser::default();
    let response = pc.get(&app, "/qr/loginpic/?qrSize=128&logo=1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert!(response.headers().get(SET_COOKIE).is_some());
    let response = pc.get(&app, "/qr/loginpic/?qrSize=9999").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Seed 003's one call: the token and its picture (base64) together.
    let mut pc = Browser::default();
    let before = count(&app.pool, "SELECT count(*) FROM events").await;
    let response = pc.get(&app, "/qr/token?qrSize=abc").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "qrSize", "{body}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM events").await,
        before
    );

    let response = pc.get(&app, "/qr/token?qrSize=256").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().expect("a token").to_owned();
    assert!(body["ttlSeconds"].as_i64().unwrap() > 0, "{body}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(body["image"].as_str().expect("an image"))
        .expect("base64");
    let image = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(image.dimensions(), (256, 256));
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, scanned) = grids[0].decode().unwrap();
    assert_eq!(
        scanned, token,
        "the picture is of the token given beside it"
    );
    let (status, body) = app_post(&app, "/qr/lock", &app.user, json!({"code": token})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    poll_until(&app, &mut pc, 1).await;
}
