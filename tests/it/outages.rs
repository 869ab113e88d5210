//! NATS or Postgres going away: commands keep their promises, nothing is lost or doubled.

use crate::common::*;
use latch_nats::subjects::EVENTS_STREAM;
use latch_projections::LoggedEvent;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_commands_succeed_and_the_relay_catches_up() {
    let mut app = spawn_app().await;
    for i in 0..5 {
        app.register_device("vending", "S1", &format!("before {i}"))
            .await;
    }
    eventually(Duration::from_secs(10), "first five published", || async {
        let mut s = app.js.get_stream(EVENTS_STREAM).await.ok()?;
        (s.info().await.ok()?.state.last_sequence == 5).then_some(())
    })
    .await;

    app.nats_server.stop();
    for i in 0..20 {
        app.register_device("vending", "S1", &format!("during {i}"))
            .await;
    }
    assert_eq!(app.event_count().await, 25);
    // Postgres stays the truth: the log keeps growing while NATS is away.
    eventually(
        Duration::from_secs(10),
        "log sequenced without NATS",
        || async { (latch_projections::log::head(&app.pool).await.unwrap() == 25).then_some(()) },
    )
    .await;

    app.nats_server.restart().await.unwrap();
    let messages = eventually(
        Duration::from_secs(45),
        "relay caught up after restart",
        || async {
            let m = stream_messages(&app.js, EVENTS_STREAM).await;
            (m.len() == 25).then_some(m)
        },
    )
    .await;
    let mut ids = HashSet::new();
    for m in &messages {
        let e: LoggedEvent = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(m.sequence as i64, e.position);
        assert!(ids.insert(e.event_id), "no duplicate after the outage");
    }
    eventually(Duration::from_secs(20), "all devices projected", || async {
        let n = count(&app.pool, "SELECT count(*) FROM device_status").await;
        (n == 25).then_some(())
    })
    .await;
    app.stop().await;
}

/// A TCP forwarder in front of Postgres that can be cut and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let up = up.clone();
            let links = links.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    // Checked under the lock `cut` takes, so no link starts after a cut.
                    let mut links = links.lock().unwrap();
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    links.push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            }
        });
        Self {
            port,
            up,
            links,
            accept,
        }
    }

    /// Cuts every link and returns once they are closed: an aborted task stops only at its next
    /// poll, and until then a query already on its way could still reach Postgres.
    async fn cut(&self) {
        for link in self.cut_now() {
            let _ = tokio::time::timeout(Duration::from_secs(5), link).await;
        }
    }

    /// Refuses new links and aborts the open ones, without waiting for them to end.
    fn cut_now(&self) -> Vec<JoinHandle<()>> {
        let mut links = self.links.lock().unwrap();
        self.up.store(false, Ordering::SeqCst);
        let open: Vec<_> = links.drain(..).collect();
        for link in &open {
            link.abort();
        }
        open
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_commands_answer_503_and_write_nothing() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database_url = s
            .database_url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
        s.db_acquire_timeout = Duration::from_millis(800);
    })
    .await;
    let device = app.register_device("vending", "S1", "before").await;
    let before = app.event_count().await;

    proxy.cut().await;
    let res = app
        .post(
            "/devices",
            &app.operator,
            Some(json!({"kind": "vending", "site": "S1", "label": "during"})),
        )
        .await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was written"));
    let res = app
        .post(&format!("/devices/{device}/open"), &app.operator, None)
        .await;
    assert_eq!(res.status(), 503);
    // The QR API answers a system fault in the seed's shape, and sets no secret for a code
    // that was never minted.
    let res = app.get("/qr/code", &app.user).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("set-cookie").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errorCode"], -1, "{body}");
    assert_eq!(body["statusflag"], -1, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let res = app.get("/healthz", &app.user).await;
    assert_eq!(res.status(), 200, "the process itself is alive");
    let res = app.get("/readyz", &app.user).await;
    assert_eq!(res.status(), 503);
    let ready: Value = res.json().await.unwrap();
    assert_eq!(ready["postgres"], "unreachable");

    proxy.restore();
    eventually(Duration::from_secs(20), "commands work again", || async {
        let res = app
            .post(
                "/devices",
                &app.operator,
                Some(json!({"kind": "vending", "site": "S1", "label": "after"})),
            )
            .await;
        (res.status() == 201).then_some(())
    })
    .await;
    // Counted on a direct connection: the failed commands left nothing behind.
    assert_eq!(app.event_count().await, before + 1);
    let (labels,): (Vec<String>,) = sqlx::query_as(
        "SELECT array_agg(payload -> 'DeviceRegistered' ->> 'label' ORDER BY id) FROM events",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(labels, vec!["before".to_owned(), "after".to_owned()]);
}
