//! Kazaya over real HTTP: the sandbox (`latch::kazaya_sandbox`) on a random port, driven like a
//! browser through its HTML forms, and Latch's client side (`latch_api::kazaya`) talking to it.
//! Callbacks go to a small axum receiver on a random port. No database or NATS needed.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use latch::kazaya_sandbox::{ClientRegistration, KazayaSandbox, RetryPolicy, SandboxSettings};
use latch_api::kazaya::{
    verify_webhook, HttpKazaya, Kazaya, KazayaConfig, KazayaError, Member, PaymentRequest,
    PaymentState, Pkce, WebhookError, WebhookKind,
};
use latch_workers::CancellationToken;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const CLIENT_ID: &str = "latch-test";
const CLIENT_SECRET: &str = "s3cret-for-tests";
const REDIRECT: &str = "http://127.0.0.1:1/kazaya/callback";
const WAIT: Duration = Duration::from_secs(10);

struct Sandbox {
    url: String,
    secret: String,
    kazaya: HttpKazaya,
    /// A browser that does not follow redirects, so each step can be looked at.
    browser: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    async fn start() -> Self {
        super::common::init_logging();
        let mut settings = SandboxSettings::new("127.0.0.1:0".parse().unwrap());
        settings.clients = vec![ClientRegistration {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            name: "Latch".into(),
            redirect_uris: vec![REDIRECT.into()],
        }];
        settings.retry = RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            max_attempts: 5,
        };
        let sandbox = KazayaSandbox::build(settings).await.expect("sandbox binds");
        assert_ne!(sandbox.port(), 0);
        let url = sandbox.base_url().to_owned();
        let secret = sandbox.webhook_secret().to_owned();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            sandbox
                .run_until_stopped(async move { until.cancelled().await })
                .await
                .unwrap();
        });
        let kazaya = HttpKazaya::new(KazayaConfig::new(
            &url,
            CLIENT_ID,
            CLIENT_SECRET,
            REDIRECT,
            &secret,
        ))
        .unwrap();
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WAIT)
            .build()
            .unwrap();
        Self {
            url,
            secret,
            kazaya,
            browser,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("sandbox stops")
            .unwrap();
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.browser
            .post(format!("{}{path}", self.url))
            .form(fields)
            .send()
            .await
            .unwrap()
    }

    /// Goes to the authorize URL; answers the login page's `txn`.
    async fn open_login(&self, state: &str, pkce: &Pkce) -> String {
        let url = self.kazaya.authorize_url(state, Some(&pkce.challenge));
        let page = self.browser.get(url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("Log in to Kazaya"), "{html}");
        hidden(&html, "txn")
    }

    /// A new member: login page, registration, consent; answers the code from the redirect.
    async fn register(&self, phone: &str, nickname: &str, avatar: &str, pkce: &Pkce) -> String {
        let txn = self.open_login("st-reg", pkce).await;
        let page = self
            .form("/oauth/login", &[("txn", &txn), ("phone", phone)])
            .await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page
            .text()
            .await
            .unwrap()
            .contains("Become a Kazaya member"));
        let page = self
            .form(
                "/oauth/register",
                &[
                    ("txn", &txn),
                    ("phone", phone),
                    ("nickname", nickname),
                    ("avatar", avatar),
                ],
            )
            .await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("Allow access?"));
        let back = self
            .form("/oauth/consent", &[("txn", &txn), ("decision", "allow")])
            .await;
        redirected_code(back, "st-reg")
    }

    async fn member(&self, phone: &str) -> Member {
        let pkce = Pkce::new_s256();
        let code = self
            .register(phone, "Mei", "https://img.example/mei.png", &pkce)
            .await;
        self.kazaya
            .exchange_code(&code, Some(&pkce.verifier))
            .await
            .unwrap()
    }

    async fn raw_payment(&self, key: &str, body: &Value) -> reqwest::Response {
        self.browser
            .post(format!("{}/v1/payments", self.url))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Presses a button on the hosted pay page; answers where the browser is sent.
    async fn decide(&self, pay_url: &str, decision: &str) -> String {
        let page = self.browser.get(pay_url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("value=\"pay\">Pay</button>"), "{html}");
        assert!(
            html.contains("value=\"decline\">Decline</button>"),
            "{html}"
        );
        let done = self
            .browser
            .post(pay_url)
            .form(&[("decision", decision)])
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::SEE_OTHER);
        location(&done)
    }

    async fn attempts(&self) -> Vec<Value> {
        let list: Value = self
            .browser
            .get(format!("{}/sandbox/callbacks", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["attempts"].as_array().unwrap().clone()
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("hidden field") + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// The code from a 302 back to Latch's redirect URI, checking the state came back.
fn redirected_code(response: reqwest::Response, state: &str) -> String {
    assert_eq!(response.status(), StatusCode::FOUND);
    let to = location(&response);
    assert!(to.starts_with(REDIRECT), "{to}");
    let q = query(&to);
    assert_eq!(q.get("state").map(String::as_str), Some(state));
    q.get("code").expect("a code").clone()
}

fn payment(order_id: &str, amount: i64, user_id: &str, notify_url: &str) -> PaymentRequest {
    PaymentRequest {
        order_id: order_id.into(),
        amount,
        currency: "CNY".into(),
        description: "Cabinet 7: 2 drinks".into(),
        user_id: user_id.into(),
        return_url: "http://127.0.0.1:1/orders/done".into(),
        notify_url: notify_url.into(),
    }
}

struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// Latch's side of callbacks, reduced to: record, and fail the first `fail_first` deliveries.
struct Receiver {
    url: String,
    calls: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(fail_first: u32) -> Self {
        let (tx, calls) = mpsc::unbounded_channel();
        let failures = Arc::new(AtomicU32::new(fail_first));
        let app = axum::Router::new().route(
            "/kazaya/notify",
            post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let failures = failures.clone();
                async move {
                    let _ = tx.send(Received { headers, body });
                    let fail = failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/kazaya/notify", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { url, calls }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.calls.recv())
            .await
            .expect("a callback arrives in time")
            .expect("receiver open")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_registers_authorizes_once_and_the_code_works_once() {
    let sb = Sandbox::start().await;
    let pkce = Pkce::new_s256();
    let txn = sb.open_login("st-1", &pkce).await;

    // Not a number: the login page again, with a message.
    let again = sb
        .form("/oauth/login", &[("txn", &txn), ("phone", "call me")])
        .await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(again.text().await.unwrap().contains("mobile number"));

    // Unknown number: registration, which checks what it collects.
    let page = sb
        .form(
            "/oauth/login",
            &[("txn", &txn), ("phone", "+86 138 0013 8000")],
        )
        .await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Become a Kazaya member"), "{html}");
    assert!(html.contains("value=\"+8613800138000\""), "{html}");
    let refused = sb
        .form(
            "/oauth/register",
            &[
                ("txn", &txn),
                ("phone", "+8613800138000"),
                ("nickname", ""),
                ("avatar", "javascript:alert(1)"),
            ],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = refused.text().await.unwrap();
    assert!(html.contains("id=\"nickname-error\""), "{html}");
    assert!(html.contains("id=\"avatar-error\""), "{html}");
    let consent = sb
        .form(
            "/oauth/register",
            &[
                ("txn", &txn),
                ("phone", "+8613800138000"),
                ("nickname", "Xiao <Mei>"),
                ("avatar", "https://img.example/mei.png"),
            ],
        )
        .await;
    assert_eq!(consent.status(), StatusCode::OK);
    let html = consent.text().await.unwrap();
    assert!(html.contains("Xiao &lt;Mei&gt;"), "escaped: {html}");
    assert!(html.contains("<strong>Latch</strong>"), "{html}");

    let back = sb
        .form("/oauth/consent", &[("txn", &txn), ("decision", "allow")])
        .await;
    let code = redirected_code(back, "st-1");

    let member = sb
        .kazaya
        .exchange_code(&code, Some(&pkce.verifier))
        .await
        .expect("the code is exchanged");
    assert!(member.user_id.starts_with("kzu_"), "{member:?}");
    assert_eq!(member.phone, "+8613800138000");
    assert_eq!(member.nickname, "Xiao <Mei>");
    assert_eq!(
        member.avatar.as_deref(),
        Some("https://img.example/mei.png")
    );

    // Once only.
    match sb.kazaya.exchange_code(&code, Some(&pkce.verifier)).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "invalid_grant"),
        other => panic!("a replayed code must be refused: {other:?}"),
    }
    // In RFC 6749's shape, to any client library.
    let raw = sb
        .browser
        .post(format!("{}/oauth/token", sb.url))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    // The login is used up too.
    let stale = sb
        .form("/oauth/consent", &[("txn", &txn), ("decision", "allow")])
        .await;
    assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
    assert!(stale.headers().get("location").is_none());
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_redirect_or_client_is_refused_without_redirecting() {
    let sb = Sandbox::start().await;
    let authorize = |client: &str, redirect: &str, response_type: &str| {
        let mut url = reqwest::Url::parse(&format!("{}/oauth/authorize", sb.url)).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", response_type)
            .append_pair("client_id", client)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "st-x");
        sb.browser.get(url).send()
    };

    let evil = authorize(CLIENT_ID, "http://evil.example/cb", "code")
        .await
        .unwrap();
    assert_eq!(evil.status(), StatusCode::BAD_REQUEST);
    assert!(evil.headers().get("location").is_none());
    assert!(evil.text().await.unwrap().contains("Unregistered redirect"));

    // A registered URI with something added is not the registered URI.
    let prefixed = authorize(CLIENT_ID, &format!("{REDIRECT}/../x"), "code")
        .await
        .unwrap();
    assert_eq!(prefixed.status(), StatusCode::BAD_REQUEST);
    assert!(prefixed.headers().get("location").is_none());

    let stranger = authorize("someone-else", REDIRECT, "code").await.unwrap();
    assert_eq!(stranger.status(), StatusCode::BAD_REQUEST);
    assert!(stranger.headers().get("location").is_none());
    assert!(stranger
        .text()
        .await
        .unwrap()
        .contains("Unknown application"));

    // With the client and URI known, other mistakes go back to the client (RFC 6749 4.1.2.1).
    let implicit = authorize(CLIENT_ID, REDIRECT, "token").await.unwrap();
    assert_eq!(implicit.status(), StatusCode::FOUND);
    let q = query(&location(&implicit));
    assert_eq!(q["error"], "unsupported_response_type");
    assert_eq!(q["state"], "st-x");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_member_just_logs_in_and_pkce_is_checked() {
    let sb = Sandbox::start().await;
    let first = sb.member("13900139000").await;

    let pkce = Pkce::new_s256();
    let txn = sb.open_login("st-2", &pkce).await;
    // Known number, already approved Latch: straight back with a code.
    let back = sb
        .form("/oauth/login", &[("txn", &txn), ("phone", "139-0013-9000")])
        .await;
    let code = redirected_code(back, "st-2");

    let wrong = Pkce::new_s256();
    match sb.kazaya.exchange_code(&code, Some(&wrong.verifier)).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "invalid_grant"),
        other => panic!("a wrong PKCE verifier must be refused: {other:?}"),
    }
    match sb.kazaya.exchange_code(&code, None).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "invalid_grant"),
        other => panic!("a missing PKCE verifier must be refused: {other:?}"),
    }
    let again = sb
        .kazaya
        .exchange_code(&code, Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(again, first);

    // Another client secret is not Latch.
    let impostor = HttpKazaya::new(KazayaConfig::new(
        &sb.url, CLIENT_ID, "guessed", REDIRECT, &sb.secret,
    ))
    .unwrap();
    match impostor.exchange_code("whatever", None).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "invalid_client"),
        other => panic!("{other:?}"),
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_created_once_per_key_and_its_callback_verifies() {
    let sb = Sandbox::start().await;
    let member = sb.member("13700137000").await;
    let mut receiver = Receiver::start(0).await;
    let request = payment("order-1", 1234, &member.user_id, &receiver.url);

    let created = sb.kazaya.create_payment("key-1", &request).await.unwrap();
    assert_eq!(created.status, PaymentState::Pending);
    let repeated = sb.kazaya.create_payment("key-1", &request).await.unwrap();
    assert_eq!(repeated, created, "same key, same body: the same payment");

    let other = PaymentRequest {
        amount: 9999,
        ..request.clone()
    };
    match sb.kazaya.create_payment("key-1", &other).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "idempotency_key_reused"),
        other => panic!("{other:?}"),
    }
    let raw = sb
        .raw_payment("key-1", &serde_json::to_value(&other).unwrap())
        .await;
    assert_eq!(raw.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
    let replay = sb
        .raw_payment("key-1", &serde_json::to_value(&request).unwrap())
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    match sb
        .kazaya
        .create_payment(
            "key-2",
            &payment("order-2", 100, "kzu_nobody", &receiver.url),
        )
        .await
    {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "unknown_user"),
        other => panic!("{other:?}"),
    }

    let page = sb.browser.get(&created.pay_url).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("12.34 CNY"));
    let to = sb.decide(&created.pay_url, "pay").await;
    assert!(to.starts_with("http://127.0.0.1:1/orders/done?"), "{to}");
    assert_eq!(query(&to)["status"], "succeeded");

    let call = receiver.next().await;
    let event = verify_webhook(&sb.secret, &call.headers, &call.body, Utc::now())
        .expect("the callback verifies");
    assert_eq!(event.kind, WebhookKind::PaymentSucceeded);
    assert!(event.id.starts_with("msg_"));
    assert_eq!(event.data.payment_id, created.payment_id);
    assert_eq!(event.data.order_id, "order-1");
    assert_eq!(event.data.amount, 1234);
    assert_eq!(event.data.currency, "CNY");
    assert_eq!(event.data.status, PaymentState::Succeeded);
    // The trait method checks with the configured secret.
    assert_eq!(
        sb.kazaya
            .verify_webhook(&call.headers, &call.body, Utc::now())
            .unwrap(),
        event
    );

    // Tampered, stale, early, or signed with another secret: refused.
    let tampered = String::from_utf8(call.body.to_vec())
        .unwrap()
        .replace("1234", "1");
    assert_eq!(
        verify_webhook(&sb.secret, &call.headers, tampered.as_bytes(), Utc::now()),
        Err(WebhookError::BadSignature)
    );
    let later = Utc::now() + chrono::Duration::minutes(6);
    assert!(matches!(
        verify_webhook(&sb.secret, &call.headers, &call.body, later),
        Err(WebhookError::TooOld(_))
    ));
    let earlier = Utc::now() - chrono::Duration::minutes(6);
    assert!(matches!(
        verify_webhook(&sb.secret, &call.headers, &call.body, earlier),
        Err(WebhookError::TooNew(_))
    ));
    let other_secret = latch::kazaya_sandbox::generate_webhook_secret();
    assert_eq!(
        verify_webhook(&other_secret, &call.headers, &call.body, Utc::now()),
        Err(WebhookError::BadSignature)
    );

    let status = sb.kazaya.payment_status(&created.payment_id).await.unwrap();
    assert_eq!(status.status, PaymentState::Succeeded);
    assert_eq!(status.amount, 1234);
    assert_eq!(status.user_id, member.user_id);

    // Pressing Pay again changes nothing; Decline now is refused.
    let again = sb
        .browser
        .post(&created.pay_url)
        .form(&[("decision", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let late = sb
        .browser
        .post(&created.pay_url)
        .form(&[("decision", "decline")])
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::CONFLICT);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_callback_is_retried_with_the_same_id() {
    let sb = Sandbox::start().await;
    let member = sb.member("13600136000").await;
    let mut receiver = Receiver::start(1).await;
    let created = sb
        .kazaya
        .create_payment(
            "key-r",
            &payment("order-r", 500, &member.user_id, &receiver.url),
        )
        .await
        .unwrap();
    let to = sb.decide(&created.pay_url, "decline").await;
    assert_eq!(query(&to)["status"], "failed");

    let first = receiver.next().await;
    let second = receiver.next().await;
    let a = verify_webhook(&sb.secret, &first.headers, &first.body, Utc::now()).unwrap();
    let b = verify_webhook(&sb.secret, &second.headers, &second.body, Utc::now()).unwrap();
    assert_eq!(a.id, b.id, "a retry is the same event");
    assert_eq!(b.kind, WebhookKind::PaymentFailed);
    assert_eq!(b.data.status, PaymentState::Failed);

    // The sandbox's own record: a 500, then a 2xx, and nothing more.
    let attempts = tokio::time::timeout(WAIT, async {
        loop {
            let attempts = sb.attempts().await;
            if attempts.iter().any(|a| a["last"] == true) {
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the delivery finishes");
    let ours: Vec<_> = attempts
        .iter()
        .filter(|a| a["webhook_id"] == b.id.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{attempts:?}");
    assert_eq!(ours[0]["status"], 500);
    assert_eq!(ours[1]["status"], 204);
    assert_eq!(ours[1]["attempt"], 2);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_bounded_by_what_was_paid_and_call_back() {
    let sb = Sandbox::start().await;
    let member = sb.member("13500135000").await;
    let mut receiver = Receiver::start(0).await;
    let created = sb
        .kazaya
        .create_payment(
            "key-p",
            &payment("order-p", 1234, &member.user_id, &receiver.url),
        )
        .await
        .unwrap();

    // Nothing to refund before it is paid.
    match sb.kazaya.refund("rf-0", &created.payment_id, 1).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "payment_not_refundable"),
        other => panic!("{other:?}"),
    }
    sb.decide(&created.pay_url, "pay").await;
    let paid = receiver.next().await;
    let paid = verify_webhook(&sb.secret, &paid.headers, &paid.body, Utc::now()).unwrap();
    assert_eq!(paid.kind, WebhookKind::PaymentSucceeded);

    match sb.kazaya.refund("rf-1", &created.payment_id, 1235).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "amount_exceeds_refundable"),
        other => panic!("{other:?}"),
    }
    let refund = sb
        .kazaya
        .refund("rf-2", &created.payment_id, 1000)
        .await
        .unwrap();
    assert_eq!(refund.amount, 1000);
    let same = sb
        .kazaya
        .refund("rf-2", &created.payment_id, 1000)
        .await
        .unwrap();
    assert_eq!(same, refund, "same key: the same refund, not a second one");

    let call = receiver.next().await;
    let event = verify_webhook(&sb.secret, &call.headers, &call.body, Utc::now()).unwrap();
    assert_eq!(event.kind, WebhookKind::RefundSucceeded);
    assert_ne!(event.id, paid.id);
    assert_eq!(
        event.data.refund_id.as_deref(),
        Some(refund.refund_id.as_str())
    );
    assert_eq!(event.data.amount, 1000);
    assert_eq!(event.data.refunded_amount, 1000);
    assert_eq!(event.data.status, PaymentState::Succeeded);

    // 234 left: more is refused, exactly that empties it.
    match sb.kazaya.refund("rf-3", &created.payment_id, 235).await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "amount_exceeds_refundable"),
        other => panic!("{other:?}"),
    }
    sb.kazaya
        .refund("rf-4", &created.payment_id, 234)
        .await
        .unwrap();
    let call = receiver.next().await;
    let event = verify_webhook(&sb.secret, &call.headers, &call.body, Utc::now()).unwrap();
    assert_eq!(event.data.status, PaymentState::Refunded);
    assert_eq!(event.data.refunded_amount, 1234);
    let status = sb.kazaya.payment_status(&created.payment_id).await.unwrap();
    assert_eq!(status.status, PaymentState::Refunded);
    assert_eq!(status.refunded_amount, 1234);
    sb.stop().await;
}

#[tokio::test]
async fn an_unreachable_kazaya_is_unavailable_not_a_refusal() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let kazaya = HttpKazaya::new(KazayaConfig::new(
        format!("http://127.0.0.1:{port}"),
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT,
        latch::kazaya_sandbox::generate_webhook_secret(),
    ))
    .unwrap();
    assert!(matches!(
        kazaya.payment_status("kzp_x").await,
        Err(KazayaError::Unavailable(_))
    ));
    assert!(matches!(
        kazaya.exchange_code("code", None).await,
        Err(KazayaError::Unavailable(_))
    ));
}
