//! README's first command: `latch dev` comes up with demo data, simulated cabinets heartbeat,
//! the parcel-locker demo works through its authorizer sandbox, it stops cleanly, and a restart
//! on the same data folder seeds nothing twice.

use crate::common::*;
use latch_nats::server::NatsServer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `latch dev` on `db` / `nats` with `data` as its data folder; returns it and its banner.
pub(crate) async fn start_dev(
    db: &TestDb,
    nats: &NatsServer,
    data: &std::path::Path,
    log_name: &str,
) -> (std::process::Child, Vec<String>, std::path::PathBuf) {
    let log_path = data.join(log_name);
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["dev", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The banner names the API address and the tokens. The reader keeps draining stdout after
    // it, so the process never writes into a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.is_none() {
                continue;
            }
            let done = line.contains("Ctrl-C stops everything");
            lines.push(line);
            if done {
                let _ = tx.take().map(|tx| tx.send(std::mem::take(&mut lines)));
            }
        }
        let _ = tx.map(|tx| tx.send(lines));
    });
    let banner = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("banner within 60 s")
        .unwrap();
    assert!(
        banner.iter().any(|l| l.contains("Ctrl-C stops everything")),
        "latch dev ended before its banner: {banner:?}\nlog:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    (child, banner, log_path)
}

/// The first word after `label` on a banner line.
pub(crate) fn field(banner: &[String], label: &str) -> String {
    banner
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix(label)
                .map(|v| v.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("{label} in banner: {banner:?}"))
}

async fn locker_events(db: &TestDb) -> Vec<(String, i64)> {
    let pool = db.pool().await;
    let rows = sqlx::query_as(
        "SELECT aggregate_type, count(*) FROM events
          WHERE aggregate_type IN ('locker_site', 'locker_compartment', 'locker_user', 'locker_authorizer')
          GROUP BY aggregate_type ORDER BY aggregate_type",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_dev_serves_demo_cabinets_that_come_online() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let (child, banner, log_path) = start_dev(&db, &nats, data.path(), "latch-dev.log").await;
    let api = field(&banner, "API");
    let user = field(&banner, "user token");
    let http = reqwest::Client::new();
    let online = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let ready = async {
                let res = http
                    .get(format!("{api}/devices"))
                    .bearer_auth(&user)
                    .send()
                    .await
                    .ok()?;
                let rows: Vec<Value> = res.json().await.ok()?;
                (rows.len() == 4
                    && rows
                        .iter()
                        .all(|r| r["online"] == true && r["door"] == "closed"))
                .then_some(())
            }
            .await;
            if ready.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if online.is_err() {
        let devices = http
            .get(format!("{api}/devices"))
            .bearer_auth(&user)
            .send()
            .await
            .ok();
        let devices = match devices {
            Some(r) => r.text().await.unwrap_or_default(),
            None => "(no answer)".into(),
        };
        panic!(
            "the four demo cabinets were not online with doors closed within 90 s\ndevices: {devices}\nlatch dev's log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    // The QR login page the banner points at is served, and the user token is an app user.
    let login = field(&banner, "on a PC");
    let page = http.get(&login).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"qr\""));
    let me: Value = http
        .get(format!("{api}/me"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "user");
    // The locker page and the demo logins the banner prints.
    let lockers = field(&banner, "locker page");
    assert_eq!(lockers, format!("{api}/lockers/app"));
    let page = http.get(&lockers).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"screen-login\""));
    let password = field(&banner, "password");
    let seeded = locker_events(&db).await;

    let status = sigterm_and_wait(child, Duration::from_secs(20)).await;
    assert!(status.expect("dev stops within 20 s of SIGTERM").success());

    // Again on the same data folder and database: nothing is seeded twice, and the demo grant
    // through company A's sandbox (listening on a new port now) works end to end.
    let (child, banner, log_path) = start_dev(&db, &nats, data.path(), "latch-dev-2.log").await;
    let api = field(&banner, "API");
    // A new client: the new process may have been given the old one's port, and a pooled
    // connection to the old process would be reset.
    let http = reqwest::Client::new();
    let again = locker_events(&db).await;
    let of = |rows: &[(String, i64)], t: &str| {
        rows.iter()
            .find(|(k, _)| k == t)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    assert_eq!(of(&seeded, "locker_site"), 1, "{seeded:?}");
    assert_eq!(of(&seeded, "locker_compartment"), 6, "{seeded:?}");
    assert_eq!(of(&seeded, "locker_user"), 4, "{seeded:?}");
    assert_eq!(of(&seeded, "locker_authorizer"), 2, "{seeded:?}");
    for t in ["locker_site", "locker_compartment", "locker_user"] {
        assert_eq!(of(&again, t), of(&seeded, t), "{t} after a restart");
    }
    // At most company A's new address.
    assert!(of(&again, "locker_authorizer") <= 3, "{again:?}");
    // The demo compartments open with the demo locker's door, which the simulator plays.
    let pool = db.pool().await;
    let wired = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = count(
                &pool,
                "SELECT count(*) FROM locker_compartments WHERE door_device IS NOT NULL",
            )
            .await;
            if n == 6 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(wired.is_ok(), "the six demo compartments have a door");
    pool.close().await;

    let zheng = async {
        let res = http
            .post(format!("{api}/lockers/login"))
            .json(&json!({"user_number": "13488888888", "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "demo login");
        res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
    .await;
    let authorizers: Vec<Value> = http
        .get(format!("{api}/lockers/authorizers"))
        .bearer_auth(&zheng)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = authorizers
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["快递公司A", "快递公司B"]);
    let reserved: Value = http
        .post(format!("{api}/lockers/reservations"))
        .bearer_auth(&zheng)
        .json(&json!({"site": "610091A01", "size": "large"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let compartment = reserved["compartment_id"].as_str().unwrap().to_owned();
    let (_, number) = compartment.split_once(':').unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let res = http
                .post(format!("{api}/lockers/grants/via-authorizer"))
                .bearer_auth(&zheng)
                .json(&json!({"site": "610091A01", "compartment": number, "authorizer": "0001"}))
                .send()
                .await
                .unwrap();
            // The reservation may not be in the read model yet.
            if res.status() != 202 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let grant = res.json::<Value>().await.unwrap()["grant_id"]
                .as_str()
                .unwrap()
                .to_owned();
            loop {
                let g: Value = http
                    .get(format!("{api}/lockers/grants/{grant}"))
                    .bearer_auth(&zheng)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap_or_default();
                if g["status"] == "completed" {
                    return g;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    let grant = outcome.unwrap_or_else(|_| {
        panic!(
            "the demo grant via 0001 did not complete within 30 s\nlatch dev's log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    assert_eq!(grant["receiver"], "13466666666", "{grant}");

    let status = sigterm_and_wait(child, Duration::from_secs(20)).await;
    assert!(status.expect("dev stops within 20 s of SIGTERM").success());
}

#[tokio::test]
async fn seeding_the_locker_demo_twice_appends_nothing_the_second_time() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let store = latch_domain::store::Store::new(pool.clone());
    let first = latch::dev::seed_lockers(&store, "http://127.0.0.1:8091/grants", None)
        .await
        .unwrap();
    assert_eq!(
        (
            first.sites,
            first.compartments,
            first.users,
            first.authorizers
        ),
        (1, 6, 4, 2)
    );
    let events = count(&pool, "SELECT count(*) FROM events").await;
    let again = latch::dev::seed_lockers(&store, "http://127.0.0.1:8091/grants", None)
        .await
        .unwrap();
    assert_eq!(again, latch::dev::LockerSeed::default());
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, events);
    // The sandbox moved: company A is pointed at it, nothing else changes.
    let moved = latch::dev::seed_lockers(&store, "http://127.0.0.1:8092/grants", None)
        .await
        .unwrap();
    assert_eq!(
        moved,
        latch::dev::LockerSeed {
            reconfigured: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events").await,
        events + 1
    );
    let a = store.authorizers.load("0001").await.unwrap().unwrap();
    assert_eq!(a.endpoint.unwrap().as_str(), "http://127.0.0.1:8092/grants");
}
