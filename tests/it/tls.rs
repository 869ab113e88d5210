//! Outbound TLS, production mode and what Latch believes from third parties (issue 13):
//!
//! - Kazaya and authorizers' endpoints over HTTPS, signed by a test CA (rcgen): without the CA
//!   in `LATCH_EXTRA_CA_FILE` nothing is sent and the failure names the certificate; with it
//!   the call goes through.
//! - Grant delivery does not follow redirects: a 302 to another server sends that server nothing.
//! - `sync` refuses a payment status Kazaya reports for another order, amount or currency.
//! - `LATCH_ENV=production` refuses to start on development defaults, naming each problem, and
//!   starts on good settings.
//! - Postgres over TLS with `sslmode=require`.

use crate::common::*;
use crate::lockers::{reserve, token, world, SITE};
use crate::vending::{member_token, World};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use latch_api::kazaya::{HttpKazaya, Kazaya, KazayaConfig, KazayaError};
use latch_domain::outbound::TlsRoots;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// A test CA and HTTPS servers signed by it

struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Latch test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// The CA certificate as a PEM file (with an unrelated CA first: a bundle of several).
    fn pem_file(&self) -> tempfile::NamedTempFile {
        let other = TestCa::new();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            format!("{}{}", other.cert.pem(), self.cert.pem()),
        )
        .unwrap();
        file
    }

    /// A TLS acceptor for 127.0.0.1 and localhost, its certificate signed by this CA.
    fn acceptor(&self) -> TlsAcceptor {
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// TCP accepted, TLS handshake done; connections whose handshake fails are dropped (counted).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    refused: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over HTTPS on a free port: `https://127.0.0.1:PORT` and the count of refused
/// handshakes.
async fn https(ca: &TestCa, app: axum::Router) -> (String, Arc<AtomicUsize>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", tcp.local_addr().unwrap());
    let refused = Arc::new(AtomicUsize::new(0));
    let listener = TlsListener {
        tcp,
        acceptor: ca.acceptor(),
        refused: refused.clone(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, refused)
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A route that records every request and answers `status`.
fn recording(path: &str, status: StatusCode) -> (axum::Router, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::any(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push((headers, body));
                status
            }
        }),
    );
    (app, received)
}

/// Zheng reserves compartment 01 and hands it to authorizer 0001; the grant id.
async fn request_via_company_a(app: &TestApp) -> String {
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
    assert_eq!(res.status(), 202, "{:?}", res.text().await);
    res.json::<Value>().await.unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The one grant-delivery dead letter: (reason, detail).
async fn dead_letter(app: &TestApp) -> (String, String) {
    let dead = eventually(WAIT, "grant request dead-lettered", || async {
        let m = stream_messages(&app.js, "DEADLETTER").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject.as_str(), "latch.dlq.grant-delivery");
    let header = |name: &str| dead[0].headers.get(name).unwrap().as_str().to_owned();
    (header("Latch-Reason"), header("Latch-Detail"))
}

fn two_quick_retries(s: &mut latch::config::Settings) {
    s.lockers.webhook_backoff = vec![Duration::from_millis(50); 2];
}

// ---------------------------------------------------------------------------------------------
// Outbound TLS

#[tokio::test]
async fn grant_requests_reach_an_https_authorizer_only_through_the_extra_ca_file() {
    let ca = TestCa::new();
    let (endpoint_app, received) = recording("/grants", StatusCode::NO_CONTENT);
    let (base, refused) = https(&ca, endpoint_app).await;
    let endpoint = format!("{base}/grants");

    // Without the CA: every attempt fails the handshake, the endpoint gets nothing, and the
    // dead letter says why.
    let untrusting = spawn_app_with(two_quick_retries).await;
    world(&untrusting, &endpoint).await;
    request_via_company_a(&untrusting).await;
    let (reason, detail) = dead_letter(&untrusting).await;
    assert_eq!(reason, "webhook_undelivered");
    assert!(
        detail.contains("certificate") || detail.contains("UnknownIssuer"),
        "the failure names the certificate: {detail}"
    );
    assert!(received.lock().unwrap().is_empty(), "nothing was delivered");
    assert!(
        refused.load(Ordering::SeqCst) >= 3,
        "a handshake per attempt"
    );

    // With LATCH_EXTRA_CA_FILE: delivered once, signed, over TLS.
    let pem = ca.pem_file();
    let path = pem.path().to_owned();
    let trusting = spawn_app_with(move |s| {
        two_quick_retries(s);
        s.extra_ca_file = Some(path);
    })
    .await;
    world(&trusting, &endpoint).await;
    let grant_id = request_via_company_a(&trusting).await;
    let (headers, body) = eventually(WAIT, "the request arrives over TLS", || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    let id = latch_workers::grant_delivery::webhook_id(Uuid::parse_str(&grant_id).unwrap());
    assert_eq!(headers["webhook-id"], id.as_str());
    assert!(headers.contains_key("webhook-signature"));
    assert!(String::from_utf8_lossy(&body).contains(&grant_id));
    assert!(stream_messages(&trusting.js, "DEADLETTER").await.is_empty());
}

#[tokio::test]
async fn the_kazaya_client_trusts_an_https_kazaya_only_through_the_extra_ca_file() {
    let ca = TestCa::new();
    // Kazaya's payments API, as far as this test needs it, over HTTPS.
    let (app, received) = recording("/v1/payments/{id}", StatusCode::NOT_FOUND);
    let (base, refused) = https(&ca, app).await;
    let config = || {
        KazayaConfig::new(
            base.clone(),
            "latch",
            "client-secret",
            "https://latch.example/m/auth/callback",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
    };

    let untrusting = HttpKazaya::new(config()).unwrap();
    match untrusting.payment_status("kzp_1").await {
        Err(KazayaError::Unavailable(why)) => assert!(
            why.contains("certificate") || why.contains("UnknownIssuer"),
            "the failure names the certificate: {why}"
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    eventually(WAIT, "the server saw the handshake refused", || async {
        (refused.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    assert!(
        received.lock().unwrap().is_empty(),
        "no request (and no client secret) was sent"
    );

    let pem = ca.pem_file();
    let roots = TlsRoots::from_pem_file(pem.path()).unwrap();
    assert_eq!(roots.len(), 2, "both certificates of the bundle");
    let trusting = HttpKazaya::new(config().with_roots(roots)).unwrap();
    match trusting.payment_status("kzp_1").await {
        Err(KazayaError::Rejected { code, .. }) => assert_eq!(code, "http_404"),
        other => panic!("expected Kazaya's own answer, got {other:?}"),
    }
    let seen = received.lock().unwrap();
    assert_eq!(seen.len(), 1, "the request went through TLS");
    assert!(seen[0].0.contains_key("authorization"));
}

#[tokio::test]
async fn postgres_connects_over_tls_with_sslmode_require() {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    use sqlx::Connection;
    use std::str::FromStr;
    let url = format!("{ADMIN_URL}?sslmode=require");
    let options = PgConnectOptions::from_str(&url).unwrap();
    assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
    let mut plain = sqlx::PgConnection::connect(&format!("{ADMIN_URL}?sslmode=disable"))
        .await
        .unwrap();
    let (ssl,): (String,) = sqlx::query_as("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    let pool = latch_domain::store::connect(&url, 1, Duration::from_secs(5)).await;
    if ssl == "on" {
        let pool = pool.expect("a TLS connection when the server offers TLS");
        let (encrypted,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(encrypted, "the connection is encrypted");
    } else {
        // Built with TLS: the refusal is the server's lack of TLS, not ours.
        let e = pool
            .expect_err("require without server TLS fails")
            .to_string();
        assert!(!e.contains("without TLS support"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redirects

#[tokio::test]
async fn grant_delivery_does_not_follow_a_redirect_to_another_server() {
    // Where the redirect points: must never see the signed request.
    let (elsewhere_app, elsewhere) = recording("/{*path}", StatusCode::NO_CONTENT);
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/grants", other.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(other, elsewhere_app).await.ok() });
    // The registered endpoint answers 302 first, then 307 (which would re-send the POST body).
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let endpoint_app = axum::Router::new().route(
        "/grants",
        axum::routing::post(move || {
            let (h, target) = (h.clone(), target.clone());
            async move {
                let status = if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::FOUND
                } else {
                    StatusCode::TEMPORARY_REDIRECT
                };
                (status, [("location", target)])
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/grants", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, endpoint_app).await.ok() });

    let app = spawn_app_with(two_quick_retries).await;
    world(&app, &endpoint).await;
    request_via_company_a(&app).await;
    let (reason, detail) = dead_letter(&app).await;
    assert_eq!(
        reason, "webhook_undelivered",
        "a redirect is a failed delivery"
    );
    assert!(
        detail.contains("307") && detail.contains("not followed"),
        "{detail}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3, "one attempt + two retries");
    assert!(
        elsewhere.lock().unwrap().is_empty(),
        "the redirect target received nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// What `sync` believes

#[tokio::test]
async fn sync_refuses_a_payment_kazaya_reports_for_another_order_amount_or_currency() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    let token = member_token(&world, cabinet.id, "13477777777").await;
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
    let pay = world
        .app
        .post(&format!("/m/api/orders/{session}/pay"), &token, None)
        .await;
    assert_eq!(pay.status(), 200, "{:?}", pay.text().await);
    world.order_status(session, &token, "payment_pending").await;

    let kazaya = reqwest::Client::new();
    let misreport = |lie: Value| {
        kazaya
            .put(format!("{}/sandbox/misreport", world.kazaya_url))
            .json(&lie)
            .send()
    };
    let sync_path = format!("/m/api/orders/{session}/sync");
    let sync = || world.app.post(&sync_path, &token, None);
    let before = world.app.event_count().await;
    // Each lie says "succeeded", about a payment that is not the one we asked for.
    for (lie, field) in [
        (json!({"status": "succeeded", "amount": 1}), "amount"),
        (
            json!({"status": "succeeded", "currency": "USD"}),
            "currency",
        ),
        (
            json!({"status": "succeeded", "order_id": Uuid::now_v7().to_string()}),
            "order_id",
        ),
    ] {
        assert_eq!(misreport(lie.clone()).await.unwrap().status(), 204);
        let res = sync().await;
        assert_eq!(res.status(), 409, "{lie}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payment_mismatch", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    assert_eq!(world.app.event_count().await, before, "nothing was written");
    assert_eq!(world.events_of_type("PaymentSucceeded").await, 0);
    let order = world.order(session, &token).await.unwrap();
    assert_eq!(order["status"], "payment_pending", "{order}");

    // The truth about this very payment is believed.
    assert_eq!(
        misreport(json!({"status": "succeeded"}))
            .await
            .unwrap()
            .status(),
        204
    );
    let res = sync().await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["changed"], true);
    world.order_status(session, &token, "paid").await;
}

// ---------------------------------------------------------------------------------------------
// Production mode

#[derive(clap::Parser)]
struct Serve {
    #[command(flatten)]
    args: latch::config::ServeArgs,
}

/// `latch serve` settings from flags, as the binary reads them.
fn serve_settings(app: &TestApp, flags: &[&str]) -> latch::Settings {
    use clap::Parser;
    let mut argv = vec![
        "latch".to_owned(),
        format!("--database-url={}", app.db.url),
        format!("--nats-url={}", app.nats_server.url()),
        "--http-addr=127.0.0.1:0".to_owned(),
    ];
    argv.extend(flags.iter().map(|f| f.to_string()));
    latch::Settings::from(Serve::try_parse_from(argv).unwrap().args)
}

#[tokio::test]
async fn production_refuses_development_defaults_naming_every_problem() {
    let app = spawn_app().await;
    // Two authorizers with plain-http endpoints, registered while in development.
    world(&app, "http://127.0.0.1:9/grants").await;
    eventually(WAIT, "authorizers projected", || async {
        (count(&app.pool, "SELECT count(*) FROM locker_authorizers").await == 2).then_some(())
    })
    .await;
    let settings = serve_settings(
        &app,
        &[
            "--env=production",
            "--kazaya-url=http://127.0.0.1:9",
            "--secure-cookies=false",
            "--audit-signing-key-file=/nonexistent/latch/audit.key",
        ],
    );
    let Err(e) = latch::Application::build(settings).await else {
        panic!("production must refuse these settings");
    };
    let message = e.to_string();
    for problem in [
        "LATCH_STICKER_KEY is the development default",
        "/nonexistent/latch/audit.key does not exist",
        "LATCH_PUBLIC_URL \"http://127.0.0.1:0\" is not https",
        "cookies are not Secure",
        "LATCH_KAZAYA_URL \"http://127.0.0.1:9\" is not https",
        "LATCH_KAZAYA_WEBHOOK_SECRET is empty",
        "LATCH_KAZAYA_CLIENT_SECRET is empty",
        "authorizer 0001's endpoint",
        "authorizer 0002's endpoint",
        "LATCH_SECRETS_KEY is not set",
        "LATCH_PICKUP_PEPPER is the development default",
    ] {
        assert!(
            message.contains(problem),
            "{problem:?} not named in: {message}"
        );
    }
    assert!(
        message.starts_with("refusing to start in production: 11 problems: 1) "),
        "{message}"
    );
    // A short key is named as short.
    let settings = serve_settings(&app, &["--env=production", "--sticker-key=too-short"]);
    let message = latch::Application::build(settings)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("LATCH_STICKER_KEY is 9 bytes; at least 32"),
        "{message}"
    );
    // Development starts on the very same defaults.
    let settings = serve_settings(&app, &["--kazaya-url=http://127.0.0.1:9"]);
    assert!(latch::Application::build(settings).await.is_ok());
}

#[tokio::test]
async fn production_starts_with_good_settings_and_marks_cookies_secure() {
    let app = spawn_app().await;
    let ca = TestCa::new();
    let pem = ca.pem_file();
    let settings = serve_settings(
        &app,
        &[
            "--env=production",
            "--public-url=https://latch.example",
            "--sticker-key=9d1c0f3e6a7b4c2d8e5f1a0b3c6d9e2f",
            "--secrets-key=3f9a0c1e5b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a",
            "--pickup-pepper=pepper-for-the-production-test-0123456789",
            "--kazaya-url=https://127.0.0.1:9/",
            "--kazaya-client-secret=client-secret",
            "--kazaya-webhook-secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &format!("--extra-ca-file={}", pem.path().display()),
        ],
    );
    assert!(settings.qr.secure_cookies && settings.vending.secure_cookies);
    let started = latch::Application::build(settings)
        .await
        .expect("good production settings start");
    let address = format!("http://127.0.0.1:{}", started.port());
    let stop = latch_workers::CancellationToken::new();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        started
            .run_until_stopped(async move { until.cancelled().await })
            .await
            .unwrap();
    });
    let health = app
        .http
        .get(format!("{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let minted = app
        .http
        .get(format!("{address}/qr/code"))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 200);
    let cookie = minted.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}
