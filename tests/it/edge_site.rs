//! An edge site: cabinets connect to a NATS leaf node at the site, which keeps their telemetry in
//! its own JetStream domain (`SITE_TELEMETRY`); the centre's TELEMETRY sources it
//! (`LATCH_EDGE_DOMAINS`). The leaf's uplink runs through a TCP relay the test can cut: while
//! it is down the cabinets keep reporting, nothing reaches Latch, and once it is back every
//! report arrives once and in each device's order.

use crate::common::*;
use latch::sim::SimDevice;
use latch_nats::server::NatsServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// A TCP relay standing in for the site's uplink.
struct Uplink {
    port: u16,
    down: Arc<AtomicBool>,
    flows: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Uplink {
    async fn to(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let flows: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (down, flows) = (down.clone(), flows.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // refused: dropped at once
                    }
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    flows.lock().unwrap().push(tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }));
                }
            })
        };
        Self {
            port,
            down,
            flows,
            accept,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for flow in self.flows.lock().unwrap().drain(..) {
            flow.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Door events of `device` in log order: "DoorOpened" / "DoorClosed".
async fn doors(app: &TestApp, device: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT e.event_type FROM events e JOIN event_log l ON l.event_id = e.event_id
          WHERE e.aggregate_type = 'device' AND e.aggregate_id = $1
            AND e.event_type IN ('DoorOpened', 'DoorClosed')
          ORDER BY e.sequence",
    )
    .bind(device.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Each device's door alternates open, closed, open... from `from` (a report of the state the
/// door is already in records nothing, so a reordered or doubled report shows as a wrong count).
async fn report_doors(sims: &[SimDevice], from: usize, to: usize) {
    for i in from..to {
        for sim in sims {
            sim.door(i % 2 == 0, None).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_reports_wait_out_a_cut_uplink_and_arrive_once_in_order() {
    let hub_leafnodes = free_port();
    let uplink = Uplink::to(hub_leafnodes).await;
    // The hub tells a leaf where to reconnect; 2.9 names its own listener even with
    // `no_advertise` (nats-server #8367), so it advertises the uplink instead.
    let hub = NatsServer::start_with_config(Some(&format!(
        "server_name: hub\njetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{hub_leafnodes}\", advertise: \"127.0.0.1:{}\" }}\n",
        uplink.port
    )))
    .await
    .expect("nats-server on PATH");
    let leaf = NatsServer::start_with_config(Some(&format!(
        "server_name: site1\njetstream {{ domain: site1 }}\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\", deny_exports: [\"latch.dev.>\"] }} ] }}\n",
        uplink.port
    )))
    .await
    .expect("nats-server on PATH");
    let site = latch_nats::connect(&leaf.url(), "site").await.unwrap();
    let site_js = latch_nats::jetstream(site);
    latch_nats::streams::ensure_site_stream(&site_js, latch_nats::streams::TELEMETRY_LIMITS)
        .await
        .unwrap();

    let app = spawn_app_on(hub, |s| s.edge_domains = vec!["site1".into()]).await;
    let mut sims = Vec::new();
    for label in ["A", "B", "C"] {
        let id = app.register_device("vending", "SITE1", label).await;
        let sim = SimDevice::new(id, site_js.clone());
        sim.heartbeat(1).await.unwrap();
        sims.push(sim);
    }

    // Link up: reports flow from the site to Latch.
    report_doors(&sims, 0, 4).await;
    for sim in &sims {
        eventually(
            Duration::from_secs(60),
            "the first reports through the site",
            || async { (doors(&app, sim.id).await.len() == 4).then_some(()) },
        )
        .await;
    }

    // Link down: the cabinets keep reporting to their leaf, which keeps every report.
    uplink.cut();
    report_doors(&sims, 4, 14).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sim in &sims {
        assert_eq!(
            doors(&app, sim.id).await.len(),
            4,
            "nothing crosses a cut uplink"
        );
    }
    let mut held = site_js
        .get_stream(latch_nats::streams::SITE_TELEMETRY_STREAM)
        .await
        .unwrap();
    assert!(held.info().await.unwrap().state.messages >= 3 * 14);

    // Link back: everything arrives, once, in each device's order.
    uplink.restore();
    for sim in &sims {
        let seen = eventually(
            Duration::from_secs(60),
            "the buffered reports after the uplink returned",
            || async {
                let d = doors(&app, sim.id).await;
                (d.len() >= 14).then_some(d)
            },
        )
        .await;
        let expected: Vec<&str> = (0..14)
            .map(|i| {
                if i % 2 == 0 {
                    "DoorOpened"
                } else {
                    "DoorClosed"
                }
            })
            .collect();
        assert_eq!(seen, expected, "each report once, in the device's order");
    }
    // And nothing more comes later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for sim in &sims {
        assert_eq!(doors(&app, sim.id).await.len(), 14);
    }
    drop(leaf);
}
