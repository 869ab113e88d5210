//! Latch on a three-node NATS cluster (nats-server 2.9 clustering with JetStream, all on
//! loopback): streams kept on three servers (`LATCH_STREAM_REPLICAS=3`), the client given every
//! node. Under a steady stream of commands the node leading `EVENTS` is killed with -9: the
//! survivors elect a new leader, the relay goes on publishing, and afterwards nothing is lost or
//! doubled (log dense, `EVENTS` sequence == log position, every acknowledged command in the
//! read model).

use crate::common::*;
use latch_nats::cluster::Cluster;
use latch_nats::server::NatsServer;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Three nodes named n1..n3, each routing to the others, formed and holding the R3 streams;
/// with the URL listing all three and a JetStream context on it.
async fn cluster() -> (Vec<NatsServer>, String, async_nats::jetstream::Context) {
    let cluster = Cluster::start(3).await.expect("nats-server on PATH");
    let urls = cluster.urls();
    // The cluster needs a moment to form and elect its meta leader before streams can be made.
    let probe = latch_nats::connect(&urls, "probe").await.unwrap();
    let js = latch_nats::jetstream(probe);
    latch_nats::cluster::form(&js, 3, Duration::from_secs(60))
        .await
        .expect("the cluster formed and took the R3 streams");
    (cluster.into_nodes(), urls, js)
}

/// The server name of the `EVENTS` stream's leader, once there is one.
async fn events_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    latch_nats::cluster::stream_leader(js, "EVENTS").await
}

async fn stream_last(js: &async_nats::jetstream::Context) -> Option<u64> {
    latch_nats::cluster::stream_last(js, "EVENTS").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_events_leader_loses_and_doubles_nothing() {
    let (mut nodes, urls, _) = cluster().await;

    let first = nodes.remove(0);
    let app = spawn_app_on(first, |s| {
        s.nats_url = urls.clone();
        s.stream_replicas = 3;
    })
    .await;
    let mut nodes: Vec<Option<NatsServer>> = nodes.into_iter().map(Some).collect();
    let info = app
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.num_replicas, 3,
        "EVENTS is kept on three servers"
    );

    // A steady load: one registration after another, each remembered once acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0u32));
    let load = {
        let (stop, acknowledged, refused) = (stop.clone(), acknowledged.clone(), refused.clone());
        let (http, address, token) = (app.http.clone(), app.address.clone(), app.operator.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let res = http
                    .post(format!("{address}/devices"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "vending", "site": "C1", "label": format!("cab {n}")}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 201 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        let id = Uuid::parse_str(body["device_id"].as_str().unwrap()).unwrap();
                        acknowledged.lock().unwrap().push(id);
                    }
                    _ => *refused.lock().unwrap() += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Some traffic first, through the relay to the stream.
    eventually(Duration::from_secs(30), "events on the stream", || async {
        (stream_last(&app.js).await? >= 20).then_some(())
    })
    .await;
    let leader = eventually(Duration::from_secs(30), "an EVENTS leader", || {
        events_leader(&app.js)
    })
    .await;
    let before = stream_last(&app.js).await.unwrap();
    let killed_at = Instant::now();
    match leader.as_str() {
        "n1" => app_node_stop(&app),
        "n2" => drop(nodes[0].take()),
        "n3" => drop(nodes[1].take()),
        other => panic!("unknown leader {other}"),
    }
    tracing::info!(%leader, "killed the EVENTS leader with -9");

    // The relay publishes again once the survivors have a new leader.
    let resumed = eventually(
        Duration::from_secs(60),
        "the relay to publish again",
        || async { (stream_last(&app.js).await? > before).then(|| killed_at.elapsed()) },
    )
    .await;
    tracing::info!(
        resumed_ms = resumed.as_millis() as u64,
        "relay publishing again after the leader was killed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .unwrap()
        .unwrap();

    // Nothing lost, nothing doubled.
    let ids = acknowledged.lock().unwrap().clone();
    assert!(ids.len() >= 20, "the load ran ({} acknowledged)", ids.len());
    let events = count(&app.pool, "SELECT count(*) FROM events").await;
    eventually(
        Duration::from_secs(60),
        "the log to take every event",
        || async {
            let logged = count(&app.pool, "SELECT count(*) FROM event_log").await;
            (logged == events).then_some(())
        },
    )
    .await;
    let (logged, head) = (
        count(&app.pool, "SELECT count(*) FROM event_log").await,
        count(
            &app.pool,
            "SELECT COALESCE(max(position), 0) FROM event_log",
        )
        .await,
    );
    assert_eq!(logged, head, "the log is dense");
    eventually(
        Duration::from_secs(60),
        "EVENTS to mirror the log",
        || async { (stream_last(&app.js).await? == head as u64).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "every acknowledged registration in the read model",
        || async {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM device_status WHERE device_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&app.pool)
                    .await
                    .ok()?;
            (n == ids.len() as i64).then_some(())
        },
    )
    .await;
    let registered = count(
        &app.pool,
        "SELECT count(*) FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await;
    assert_eq!(
        registered,
        count(&app.pool, "SELECT count(*) FROM device_status").await,
        "each registration projected once"
    );
}

/// Kills the node the test app holds (n1).
fn app_node_stop(app: &TestApp) {
    // The app owns n1 (its `NatsServer` guard reaps it at the end).
    let pid = app.nats_server.pid().expect("n1 running");
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// A `latch serve` process with every role, on a fixed HTTP port.
struct Serve {
    port: u16,
    child: Option<std::process::Child>,
}

impl Serve {
    fn start(db: &TestDb, nats_urls: &str) -> Self {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_latch"))
            .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &db.url)
            .env("NATS_URL", nats_urls)
            .env("LATCH_STREAM_REPLICAS", "3")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("latch binary runs");
        Self {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers a cabinet on the first instance that answers, trying each in turn: a client of a
/// pair of instances behind a load balancer (or retrying by hand).
async fn register_anywhere(
    http: &reqwest::Client,
    bases: &[String],
    token: &str,
    n: u32,
) -> Option<Uuid> {
    for attempt in 0..bases.len() * 3 {
        let base = &bases[(n as usize + attempt) % bases.len()];
        let res = http
            .post(format!("{base}/devices"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("cluster-load-{n}"))
            .json(&json!({"kind": "vending", "site": "C2", "label": format!("cab {n}")}))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = res {
            if r.status() == 201 || r.status() == 200 {
                let body: serde_json::Value = r.json().await.ok()?;
                return Uuid::parse_str(body["device_id"].as_str()?).ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fail_over_when_the_relay_holder_then_the_events_leader_die() {
    let (nodes, urls, js) = cluster().await;
    let mut nodes: Vec<Option<NatsServer>> = nodes.into_iter().map(Some).collect();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let token = latch_api::auth::issue_token(&pool, latch_api::auth::Role::Operator, "ops")
        .await
        .unwrap();
    let http = reqwest::Client::new();

    // The first instance takes the relay lock; the second waits on it.
    let mut first = Serve::start(&db, &urls);
    let bases_first = [first.url()];
    eventually(
        Duration::from_secs(60),
        "the first instance relaying",
        || async {
            register_anywhere(&http, &bases_first, &token, 0).await?;
            (stream_last(&js).await? >= 1).then_some(())
        },
    )
    .await;
    let second = Serve::start(&db, &urls);
    let bases = vec![first.url(), second.url()];
    eventually(
        Duration::from_secs(60),
        "the second instance answering",
        || async {
            let r = http
                .get(format!("{}/healthz", second.url()))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;

    // Steady load across both, each request retried onto the other instance if need be.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let unanswered = Arc::new(Mutex::new(0u32));
    let load = {
        let (stop, acknowledged, unanswered) =
            (stop.clone(), acknowledged.clone(), unanswered.clone());
        let (http, bases, token) = (http.clone(), bases.clone(), token.clone());
        tokio::spawn(async move {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                match register_anywhere(&http, &bases, &token, n).await {
                    Some(id) => acknowledged.lock().unwrap().push(id),
                    None => *unanswered.lock().unwrap() += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually(Duration::from_secs(30), "load flowing", || async {
        (acknowledged.lock().unwrap().len() >= 20).then_some(())
    })
    .await;

    // 1. The relay holder dies: the standby relay takes over.
    let before = stream_last(&js).await.unwrap();
    let killed = Instant::now();
    first.kill();
    let relay_back = eventually(
        Duration::from_secs(60),
        "the standby relay publishing",
        || async { (stream_last(&js).await? > before).then(|| killed.elapsed()) },
    )
    .await;
    tracing::info!(
        ms = relay_back.as_millis() as u64,
        "standby relay publishing after the holder was killed"
    );

    // 2. The EVENTS leader dies: the survivors elect another, publishing goes on.
    let leader = eventually(Duration::from_secs(30), "an EVENTS leader", || {
        events_leader(&js)
    })
    .await;
    let index = latch_nats::cluster::node_index(&leader).unwrap();
    let before = stream_last(&js).await.unwrap_or(0);
    let killed = Instant::now();
    drop(nodes[index].take());
    let stream_back = eventually(
        Duration::from_secs(60),
        "publishing after the leader died",
        || async { (stream_last(&js).await? > before).then(|| killed.elapsed()) },
    )
    .await;
    tracing::info!(ms = stream_back.as_millis() as u64, %leader, "relay publishing after the EVENTS leader was killed");
    let served = acknowledged.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "answers after both failures",
        || async { (acknowledged.lock().unwrap().len() >= served + 10).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .unwrap()
        .unwrap();

    // Nothing lost, nothing doubled.
    let ids = acknowledged.lock().unwrap().clone();
    let events = count(&pool, "SELECT count(*) FROM events").await;
    eventually(
        Duration::from_secs(60),
        "the log to take every event",
        || async { (count(&pool, "SELECT count(*) FROM event_log").await == events).then_some(()) },
    )
    .await;
    let head = count(&pool, "SELECT COALESCE(max(position), 0) FROM event_log").await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM event_log").await,
        head,
        "the log is dense"
    );
    eventually(
        Duration::from_secs(60),
        "EVENTS to mirror the log",
        || async { (stream_last(&js).await? == head as u64).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "every acknowledged registration projected",
        || async {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM device_status WHERE device_id = ANY($1)")
                    .bind(&ids)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == ids.len() as i64).then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE event_type = 'DeviceRegistered'"
        )
        .await,
        count(&pool, "SELECT count(*) FROM device_status").await,
        "each registration recorded and projected once (retries deduplicated by their key)"
    );
    drop(second);
}

/// `latch bench failover` end to end with tiny settings: it forms its cluster, fails over the
/// relay and the EVENTS leader once each, and reports every check passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_bench_runs_end_to_end() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_latch"))
        .args([
            "bench",
            "failover",
            "--rounds",
            "1",
            "--leader-rounds",
            "1",
            "--seconds",
            "2",
            "--settle",
            "1",
            "--rate",
            "20",
            "--cabinets",
            "5",
        ])
        .env("DATABASE_URL", ADMIN_URL)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("latch binary runs");
    // Stopped with SIGTERM if it overruns, so it takes its servers and database down with it.
    let pid = run.id().expect("running") as i32;
    let overrun = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(240)).await;
        unsafe { libc::kill(pid, libc::SIGTERM) };
    });
    let out = tokio::time::timeout(Duration::from_secs(300), run.wait_with_output())
        .await
        .expect("the bench finished")
        .expect("bench output");
    overrun.abort();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |start: &str| {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in\n{report}"))
            .to_owned()
    };
    assert!(
        row("| relay failover").contains("p50 ")
            && row("| EVENTS leader failover").contains("p50 "),
        "both failovers resumed:\n{report}"
    );
    let checks: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| check:"))
        .collect();
    assert_eq!(checks.len(), 5, "five checks reported:\n{report}");
    for check in checks {
        assert!(check.contains("| pass ("), "check failed: {check}");
    }
    assert!(!report.contains("FAIL"), "nothing failed:\n{report}");
    assert!(
        row("| `latch serve` RSS").contains("MiB"),
        "memory reported:\n{report}"
    );
}
