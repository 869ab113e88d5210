//! Latch on a three-node NATS cluster (nats-server 2.9 clustering with JetStream, all on
//! loopback): streams kept on three servers (`LATCH_STREAM_REPLICAS=3`), the client given every
//! node. Under a steady stream of commands the node leading `EVENTS` is killed with -9: the
//! survivors elect a new leader, the relay goes on publishing, and afterwards nothing is lost or
//! doubled (log dense, `EVENTS` sequence == log position, every acknowledged command in the
//! read model).

use crate::common::*;
use latch_nats::server::NatsServer;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Three nodes named n1..n3, each routing to the others.
async fn cluster() -> Vec<NatsServer> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let all = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for (i, port) in routes.iter().enumerate() {
        let config = format!(
            "server_name: n{}\ncluster {{\n  name: latch\n  listen: 127.0.0.1:{port}\n  routes: [ {all} ]\n}}\n",
            i + 1
        );
        nodes.push(
            NatsServer::start_with_config(Some(&config))
                .await
                .expect("nats-server on PATH"),
        );
    }
    nodes
}

/// The server name of the `EVENTS` stream's leader, once there is one.
async fn events_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream("EVENTS").await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.clone()?.leader
}

async fn stream_last(js: &async_nats::jetstream::Context) -> Option<u64> {
    let mut stream = js.get_stream("EVENTS").await.ok()?;
    Some(stream.info().await.ok()?.state.last_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_events_leader_loses_and_doubles_nothing() {
    let mut nodes = cluster().await;
    let urls = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    // The cluster needs a moment to form and elect its meta leader before streams can be made.
    let probe = latch_nats::connect(&urls, "probe").await.unwrap();
    let probe_js = latch_nats::jetstream(probe);
    tokio::time::timeout(Duration::from_secs(60), async {
        while latch_nats::streams::ensure_streams_replicated(
            &probe_js,
            latch_nats::streams::TELEMETRY_LIMITS,
            latch_nats::streams::DEADLETTER_LIMITS,
            3,
        )
        .await
        .is_err()
        {}
    })
    .await
    .expect("the cluster formed and took the R3 streams");

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
