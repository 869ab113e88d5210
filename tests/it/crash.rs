//! DESIGN.md section 3: kill the relay and the projector at random instants, many times, while
//! commands stream in; the read model still equals a fresh fold of the log and JetStream holds
//! exactly one message per event.

use crate::common::*;
use latch_domain::device::{
    DeviceCommand, DeviceId, DeviceKind, DoorState, FaultCode, Label, SiteCode,
};
use latch_domain::store::{CommandContext, Store};
use latch_nats::server::NatsServer;
use latch_nats::subjects::EVENTS_STREAM;
use latch_projections::{device_status, LoggedEvent};
use rand::Rng;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `latch serve` child process running only the given roles. Set CRASH_LOG_DIR to keep
/// their logs (one file per role, appended across restarts).
struct Worker {
    roles: &'static str,
    db: String,
    nats: String,
    child: Option<Child>,
}

impl Worker {
    fn new(roles: &'static str, db: &TestDb, nats: &NatsServer) -> Self {
        let mut w = Self {
            roles,
            db: db.url.clone(),
            nats: nats.url(),
            child: None,
        };
        w.start();
        w
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_latch"))
            .args(["serve", "--roles", self.roles, "--http-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", &self.db)
            .env("NATS_URL", &self.nats)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match std::env::var("CRASH_LOG_DIR") {
                Ok(dir) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(format!("{dir}/{}.log", self.roles))
                        .unwrap(),
                ),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .expect("latch binary runs");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cycle(step: usize, at: chrono::DateTime<chrono::Utc>) -> DeviceCommand {
    match step % 6 {
        0 => DeviceCommand::ReportOnline { at },
        1 => DeviceCommand::ReportDoor {
            state: DoorState::Open,
            request_id: None,
            at,
        },
        2 => DeviceCommand::ReportDoor {
            state: DoorState::Closed,
            request_id: None,
            at,
        },
        3 => DeviceCommand::RaiseFault {
            code: FaultCode::parse("code", "jam").unwrap(),
            message: Label::parse("message", "door jammed", 200).unwrap(),
            at,
        },
        4 => DeviceCommand::ClearFault { at },
        _ => DeviceCommand::ReportOffline { last_seen: at, at },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_relay_and_projector_20_times_loses_and_doubles_nothing() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.unwrap();
    let client = latch_nats::connect(&nats.url(), "test").await.unwrap();
    let js = latch_nats::jetstream(client);
    latch_nats::streams::ensure_streams(&js).await.unwrap();
    let pool = db.pool().await;
    let store = Arc::new(Store::new(pool.clone()));

    // Two relays (one leads, one waits) and one projector, all as real processes.
    let mut workers = [
        Worker::new("relay", &db, &nats),
        Worker::new("relay", &db, &nats),
        Worker::new("projector", &db, &nats),
    ];

    const DEVICES: usize = 50;
    const PER_DEVICE: usize = 99; // + 1 registration each = 5,000 commands
    let writers = tokio::spawn({
        let store = store.clone();
        async move {
            let mut lanes = Vec::new();
            for d in 0..DEVICES {
                let store = store.clone();
                lanes.push(tokio::spawn(async move {
                    let id = DeviceId::generate();
                    let key = id.to_string();
                    let at = start_time();
                    let register = DeviceCommand::Register {
                        device_id: id,
                        kind: DeviceKind::Vending,
                        site: SiteCode::parse("site", "CRASH").unwrap(),
                        label: Label::parse("label", &format!("cabinet {d}"), 80).unwrap(),
                        at,
                    };
                    let ctx = CommandContext::new("test:crash");
                    store
                        .devices
                        .execute(&key, "Register", register, &ctx)
                        .await
                        .unwrap();
                    for step in 0..PER_DEVICE {
                        let ctx = CommandContext::new("test:crash");
                        let at = at + chrono::Duration::seconds(step as i64 + 1);
                        store
                            .devices
                            .execute(&key, "Cycle", cycle(step, at), &ctx)
                            .await
                            .unwrap();
                    }
                }));
            }
            for lane in lanes {
                lane.await.unwrap();
            }
        }
    });

    let mut rng = rand::rng();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        let victim = rng.random_range(0..workers.len());
        workers[victim].kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        workers[victim].start();
    }
    tokio::time::timeout(Duration::from_secs(120), writers)
        .await
        .expect("commands finish")
        .unwrap();

    let events = count(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(
        events,
        (DEVICES * (PER_DEVICE + 1)) as i64,
        "every command appended its event"
    );
    // On failure, say where each part stopped.
    let state = std::sync::Mutex::new(String::new());
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let head = latch_projections::log::head(&pool).await.unwrap();
            let checkpoint = latch_projections::projector::checkpoint(&pool, device_status::NAME)
                .await
                .unwrap();
            let last = match js.get_stream(EVENTS_STREAM).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map_or(-1, |i| i.state.last_sequence as i64),
                Err(_) => -1,
            };
            *state.lock().unwrap() =
                format!("log head {head}, checkpoint {checkpoint}, stream {last}, events {events}");
            if head == events && checkpoint == events && last == events {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "did not catch up in 60 s: {}",
        state.lock().unwrap()
    );

    let table = device_status::load_all(&pool).await.unwrap();
    let fold = device_status::fold_log(&pool).await.unwrap();
    assert_eq!(table.len(), DEVICES);
    assert_eq!(
        table, fold,
        "the read model equals a fresh fold of the whole log"
    );

    let messages = stream_messages(&js, EVENTS_STREAM).await;
    assert_eq!(
        messages.len() as i64,
        events,
        "exactly one message per event"
    );
    let mut seen = HashSet::new();
    for m in &messages {
        let e: LoggedEvent = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(m.sequence as i64, e.position);
        assert!(
            seen.insert(e.event_id),
            "event {} published twice",
            e.event_id
        );
    }
    let positions = count(&pool, "SELECT count(DISTINCT position) FROM event_log").await;
    let max = count(&pool, "SELECT max(position) FROM event_log").await;
    assert_eq!(
        (positions, max),
        (events, events),
        "positions are dense and gapless"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_serve_cleanly() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(child.try_wait().unwrap().is_none(), "serve keeps running");
    let status = sigterm_and_wait(child, Duration::from_secs(20))
        .await
        .expect("serve exits within 20 s of SIGTERM");
    assert!(status.success(), "clean exit, got {status:?}");
}
