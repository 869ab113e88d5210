//! Limits (issue 13): each test performs the abuse and shows it is refused or absorbed, with
//! nothing written. Held-open half requests, oversized bodies, too many push channels per QR
//! login, floods of made-up user numbers, spoofed X-Forwarded-For, a user holding a whole site,
//! and a stranger guessing pickup codes.

use crate::common::*;
use crate::lockers::{created, token, world, SITE};
use latch::Application;
use latch_api::auth::{issue_token, Role};
use latch_domain::clock::ManualClock;
use latch_domain::Clock;
use latch_nats::server::NatsServer;
use latch_workers::CancellationToken;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn half_sent_requests_held_open_do_not_stop_a_normal_request_and_are_closed() {
    let header_timeout = Duration::from_millis(1500);
    let app = spawn_app_with(|s| s.http.header_read_timeout = header_timeout).await;
    let addr = host_port(&app);
    // 500 clients each send part of a request head, then hold.
    let mut held = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: latch\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    let opened = Instant::now();
    // A normal request is still answered, promptly.
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        app.http.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("a normal request is answered within 10 s")
    .unwrap();
    assert_eq!(res.status(), 200);
    // Every held connection is closed by the server once the header timeout passes.
    let closed = futures::future::join_all(held.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 or similar before the close is fine
                }
            }
        })
        .await
        .is_ok()
    }))
    .await;
    let still_open = closed.iter().filter(|c| !**c).count();
    assert_eq!(still_open, 0, "connections the server left open");
    let took = opened.elapsed();
    assert!(
        took >= header_timeout.saturating_sub(Duration::from_millis(500)),
        "closed after {took:?}, before the header timeout"
    );
    // And the server still serves afterwards (on a new connection: the idle keep-alive one
    // from above was closed by the same timeout, which is also the keep-alive timeout).
    let res = reqwest::Client::new()
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413_and_nothing_written() {
    let app = spawn_app_with(|s| s.edge.body_limit = 16 * 1024).await;
    let before = app.event_count().await;
    let big = "x".repeat(100 * 1024);
    // A JSON command.
    let res = app
        .post(
            "/lockers/sites",
            &app.operator,
            Some(json!({"site": "610091A01", "name": big})),
        )
        .await;
    assert_eq!(error_code(res).await, (413, "body_too_large".into()));
    // Webhooks: refused before any signature is checked, so before the body is read.
    for path in ["/lockers/authorizers/0001/callback", "/kazaya/webhooks"] {
        let res = app
            .http
            .post(format!("{}{path}", app.address))
            .header("content-type", "application/json")
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", "1")
            .header("webhook-signature", "v1,AAAA")
            .body(vec![b'{'; 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(res).await,
            (413, "body_too_large".into()),
            "{path}"
        );
    }
    // A chunked body has no length to check: it is cut off at the limit while being read.
    let mut s = TcpStream::connect(host_port(&app)).await.unwrap();
    let mut request = b"POST /lockers/authorizers/0001/callback HTTP/1.1\r\nHost: latch\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         webhook-id: msg_2\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AAAA\r\n\r\n"
        .to_vec();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        request.extend_from_slice(&[b' '; 4096]);
        request.extend_from_slice(b"\r\n");
    }
    s.write_all(&request).await.unwrap();
    // Then it keeps sending: the answer must come before the body ends.
    let chunk = [b' '; 4096];
    let mut head = Vec::new();
    let (mut rd, mut wr) = s.split();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        head.extend_from_slice(&buf[..n]);
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            return;
                        }
                    }
                },
                w = async {
                    wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                    wr.write_all(&chunk).await?;
                    wr.write_all(b"\r\n").await
                } => if w.is_err() { tokio::time::sleep(Duration::from_millis(10)).await },
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer to an endless chunked body");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(app.event_count().await, before, "nothing written");
}

async fn qr_cookie(app: &TestApp) -> String {
    let res = app
        .http
        .get(format!("{}/qr/code", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let set = res
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn more_push_channels_than_allowed_for_one_qr_login_are_refused() {
    let app = spawn_app_with(|s| s.qr.sockets_per_login = 2).await;
    let cookie = qr_cookie(&app).await;
    let connect = || {
        let mut request = format!("{}/qr/ws", app.address.replace("http", "ws"))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let (mut first, _) = connect().await.unwrap();
    let (mut second, _) = connect().await.unwrap();
    match connect().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
        }
        other => panic!("a third channel was not refused: {:?}", other.map(|_| ())),
    }
    // Closing one frees its place.
    first.close(None).await.unwrap();
    drop(first);
    eventually(Duration::from_secs(10), "a place freed", || async {
        connect().await.ok().map(|_| ())
    })
    .await;
    // A message over the limit ends the channel.
    use futures::{SinkExt, StreamExt};
    let big = tokio_tungstenite::tungstenite::Message::text("x".repeat(64 * 1024));
    let _ = second.send(big).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match second.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {} // the state pushed on connect
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "an oversized message did not end the channel"
    );
}

/// Like `spawn_app_with`, keeping the lockers' state to read its rate-limit tables.
async fn spawn_with_lockers(
    adjust: impl FnOnce(&mut latch::Settings),
) -> (TestApp, Arc<latch_api::lockers::Lockers>) {
    let db = TestDb::new().await;
    let nats_server = NatsServer::start().await.expect("nats-server on PATH");
    let clock = ManualClock::new(start_time());
    let mut settings = test_settings(&db, &nats_server, &clock);
    adjust(&mut settings);
    let nats = latch_nats::connect(&nats_server.url(), "test")
        .await
        .unwrap();
    let js = latch_nats::jetstream(nats.clone());
    latch_nats::streams::ensure_streams(&js).await.unwrap();
    let app = Application::build(settings).await.expect("app builds");
    let lockers = app.lockers();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let app_task = tokio::spawn(async move {
        app.run_until_stopped(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    let pool = db.pool().await;
    let operator = issue_token(&pool, Role::Operator, "test-operator")
        .await
        .unwrap();
    let user = issue_token(&pool, Role::User, "test-user").await.unwrap();
    let app = TestApp {
        address,
        pool,
        clock,
        http: reqwest::Client::new(),
        operator,
        user,
        nats,
        js,
        shutdown,
        app_task: Some(app_task),
        nats_server,
        db,
    };
    (app, lockers)
}

/// A process's resident set size in KiB, from /proc/<pid>/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `n` login attempts to `base` with random unknown user numbers, each from its own
/// address (the test's address is a trusted proxy), 16 at a time; returns the statuses seen.
async fn flood(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> std::collections::HashMap<u16, usize> {
    use futures::StreamExt;
    let url = format!("{base}/lockers/login");
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let number = format!("139{:08}", rand::random::<u32>() % 100_000_000);
                let ip = std::net::Ipv4Addr::from(rand::random::<u32>() | 0x0100_0000);
                http.post(url)
                    .header("x-forwarded-for", ip.to_string())
                    .json(&json!({"user_number": number, "password": "wrong-password"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut by = std::collections::HashMap::new();
    for s in statuses {
        *by.entry(s).or_default() += 1;
    }
    by
}

/// Memory is measured on a `latch serve` child process of its own (the API role with its
/// default table sizes): in this test binary other tests run alongside and would be counted.
#[tokio::test]
async fn fifty_thousand_made_up_user_numbers_raise_memory_by_under_20_mib() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.expect("nats-server on PATH");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["serve", "--roles", "api"])
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("LATCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LATCH_TRUSTED_PROXIES", "127.0.0.1")
        // Each attempt let through costs an argon2 hash (a dummy one for unknown numbers).
        .env("LATCH_LOGIN_ATTEMPTS_PER_MINUTE_GLOBAL", "50")
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("latch binary runs");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "latch serve answers", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // Warm up: connections, allocator arenas, the tables' first growth.
    flood(&http, &base, 2_000).await;
    let before = rss_kib(pid);
    let seen = flood(&http, &base, 50_000).await;
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!("latch serve RSS {before} KiB -> {after} KiB (+{grown_mib:.1} MiB); {seen:?}");
    assert!(grown_mib < 20.0, "RSS grew by {grown_mib:.1} MiB");
    assert_eq!(seen.get(&0), None, "every attempt was answered");
    assert!(seen.get(&429).copied().unwrap_or(0) > 49_000, "{seen:?}");
}

#[tokio::test]
async fn made_up_user_numbers_leave_the_limit_tables_bounded() {
    let (app, lockers) = spawn_with_lockers(|s| {
        s.edge.trusted_proxies =
            latch_api::edge::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
        s.lockers.login_attempts_per_minute_global = 30;
        s.lockers.limiter_max_keys = 5_000;
    })
    .await;
    let seen = flood(&app.http, &app.address, 20_000).await;
    assert!(seen.get(&429).copied().unwrap_or(0) >= 19_970, "{seen:?}");
    let sizes: std::collections::HashMap<_, _> = lockers.limits.sizes().into_iter().collect();
    for (table, keys) in &sizes {
        assert!(*keys <= 5_000, "{table} holds {keys} keys");
    }
    assert_eq!(
        sizes["login_per_ip"], 5_000,
        "full, and refusing new addresses"
    );
    assert!(
        sizes["login_per_number"] <= 30,
        "only attempts the global limit let through reach the per-number table: {sizes:?}"
    );
    // Once their allowance is back the keys carry nothing, and the timer's tidy drops them.
    app.clock.advance(chrono::Duration::minutes(2));
    lockers.limits.tidy();
    let left: usize = lockers.limits.sizes().iter().map(|(_, n)| n).sum();
    assert_eq!(left, 0, "{:?}", lockers.limits.sizes());
}

async fn mint_from(app: &TestApp, xff: &str) -> u16 {
    app.http
        .get(format!("{}/qr/code", app.address))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // Behind a trusted proxy: each forwarded client has its own allowance, and is recorded.
    let app = spawn_app_with(|s| {
        s.edge.trusted_proxies =
            latch_api::edge::TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]);
        s.qr.mint_per_minute_per_ip = 2;
    })
    .await;
    assert_eq!(mint_from(&app, "203.0.113.5").await, 200);
    assert_eq!(mint_from(&app, "198.51.100.1, 203.0.113.5").await, 200);
    assert_eq!(
        mint_from(&app, "203.0.113.5").await,
        429,
        "the client's own limit"
    );
    assert_eq!(
        mint_from(&app, "203.0.113.6").await,
        200,
        "another client's"
    );
    // IPv6 clients are counted per /64.
    assert_eq!(mint_from(&app, "2001:db8:1:2::1").await, 200);
    assert_eq!(mint_from(&app, "2001:db8:1:2::ffff").await, 200);
    assert_eq!(mint_from(&app, "2001:db8:1:2:abcd::9").await, 429);
    assert_eq!(mint_from(&app, "2001:db8:1:3::1").await, 200);
    let (origin,): (String,) = sqlx::query_as(
        "SELECT payload->'QrCodeMinted'->'origin'->>'ip' FROM events
          WHERE event_type = 'QrCodeMinted' ORDER BY recorded_at LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(origin, "203.0.113.5");

    // From an untrusted peer the header is the client's own say-so: ignored.
    let app = spawn_app_with(|s| s.qr.mint_per_minute_per_ip = 2).await;
    assert_eq!(mint_from(&app, "203.0.113.1").await, 200);
    assert_eq!(mint_from(&app, "203.0.113.2").await, 200);
    let before = app.event_count().await;
    assert_eq!(
        mint_from(&app, "203.0.113.3").await,
        429,
        "spoofed XFF ignored"
    );
    assert_eq!(app.event_count().await, before, "nothing written");
}

#[tokio::test]
async fn minting_has_a_global_cap_whatever_the_addresses() {
    let app = spawn_app_with(|s| {
        s.edge.trusted_proxies =
            latch_api::edge::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
        s.qr.mint_per_minute_global = 3;
    })
    .await;
    for i in 1..=3 {
        assert_eq!(mint_from(&app, &format!("203.0.113.{i}")).await, 200);
    }
    let before = app.event_count().await;
    assert_eq!(mint_from(&app, "203.0.113.99").await, 429);
    assert_eq!(app.event_count().await, before, "nothing written");
    app.clock.advance(chrono::Duration::seconds(20));
    assert_eq!(mint_from(&app, "203.0.113.99").await, 200);
}

/// Events of compartments (workers write device and notice events of their own meanwhile).
async fn compartment_events(app: &TestApp) -> i64 {
    count(
        &app.pool,
        "SELECT count(*) FROM events WHERE aggregate_type = 'locker_compartment'",
    )
    .await
}

async fn install(app: &TestApp, number: &str) {
    let res = app
        .post(
            "/lockers/compartments",
            &app.operator,
            Some(json!({"site": SITE, "number": number, "size": "large"})),
        )
        .await;
    created(res, "compartment").await;
}

#[tokio::test]
async fn one_user_cannot_hold_a_whole_site() {
    let app = spawn_app_with(|s| {
        s.lockers.reservations_per_user = 2;
        s.lockers.reservation_max = chrono::Duration::hours(24);
        s.lockers.grants_per_minute_per_user = 3;
    })
    .await;
    world(&app, "http://127.0.0.1:9/grants").await;
    install(&app, "03").await;
    install(&app, "04").await;
    eventually(Duration::from_secs(10), "4 free compartments", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM locker_compartments WHERE status = 'free'",
        )
        .await;
        (n == 4).then_some(())
    })
    .await;
    let greedy = token(&app, "13455555555").await;
    let other = token(&app, "13499996666").await;
    let before = compartment_events(&app).await;

    // A reservation for longer than the maximum is refused outright.
    let far = (app.clock.now() + chrono::Duration::days(30)).to_rfc3339();
    let res = app
        .post(
            "/lockers/reservations",
            &greedy,
            Some(json!({"site": SITE, "size": "large", "expires_at": far})),
        )
        .await;
    assert_eq!(error_code(res).await, (422, "reservation_too_long".into()));
    assert_eq!(compartment_events(&app).await, before, "nothing written");

    // Two, quickly (before the read model shows the first), then the cap.
    for _ in 0..2 {
        let res = app
            .post(
                "/lockers/reservations",
                &greedy,
                Some(json!({"site": SITE, "size": "large"})),
            )
            .await;
        created(res, "reserve").await;
    }
    let written = compartment_events(&app).await;
    for _ in 0..3 {
        let res = app
            .post(
                "/lockers/reservations",
                &greedy,
                Some(json!({"site": SITE, "size": "large"})),
            )
            .await;
        assert_eq!(error_code(res).await, (409, "too_many_reservations".into()));
    }
    assert_eq!(compartment_events(&app).await, written, "nothing written");
    // The rest of the site is there for someone else.
    for _ in 0..2 {
        let res = app
            .post(
                "/lockers/reservations",
                &other,
                Some(json!({"site": SITE, "size": "large"})),
            )
            .await;
        created(res, "another user's reservation").await;
    }

    // Grant requests are limited per user (and per compartment).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = app
            .post(
                "/lockers/grants",
                &greedy,
                Some(json!({"site": SITE, "compartment": "09", "receiver": "13455555555"})),
            )
            .await;
        statuses.push(error_code(res).await);
    }
    assert_eq!(
        statuses[3],
        (429, "too_many_grant_requests".into()),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_strangers_wrong_pickup_codes_do_not_lock_the_recipient_out() {
    let app = spawn_app_with(|s| {
        s.lockers.pickup_attempts_per_minute_per_user = 5;
        s.lockers.pickup_attempts_per_minute_global = 5;
    })
    .await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let holder = token(&app, "13455555555").await;
    let stranger = token(&app, "13488888888").await;
    let recipient = token(&app, "13499996666").await;
    let id = crate::lockers::reserve(&app, &holder).await;
    let body = created(
        app.post(
            &format!("/lockers/compartments/{id}/deposit"),
            &holder,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await,
        "deposit",
    )
    .await;
    let code = body["pickup_code"].as_str().unwrap().to_owned();
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    let before = compartment_events(&app).await;
    // Five wrong tries, then the stranger is stopped.
    for _ in 0..5 {
        let res = app
            .post(
                &format!("/lockers/compartments/{id}/collect"),
                &stranger,
                Some(json!({"pickup_code": wrong})),
            )
            .await;
        assert_eq!(error_code(res).await, (422, "wrong_pickup_code".into()));
    }
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &stranger,
            Some(json!({"pickup_code": wrong})),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (429, "too_many_pickup_attempts".into())
    );
    assert_eq!(
        compartment_events(&app).await,
        before,
        "wrong tries write nothing"
    );
    // The recipient, signed in, still collects.
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &recipient,
            Some(json!({"pickup_code": code})),
        )
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}
