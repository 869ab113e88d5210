//! README's first command: `latch dev` comes up with demo data, simulated cabinets heartbeat,
//! and it stops cleanly.

use crate::common::*;
use latch_nats::server::NatsServer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_dev_serves_demo_cabinets_that_come_online() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("latch-dev.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["dev", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The banner names the API address and the tokens.
    let banner = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let done = line.contains("Ctrl-C stops everything");
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        }),
    )
    .await
    .expect("banner within 60 s")
    .unwrap();
    let field = |label: &str| {
        banner
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(label)
                    .map(|v| v.split_whitespace().next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("{label} in banner: {banner:?}"))
    };
    let api = field("API");
    let user = field("user token");
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
    let login = field("on a PC");
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

    let status = sigterm_and_wait(child, Duration::from_secs(20)).await;
    assert!(status.expect("dev stops within 20 s of SIGTERM").success());
}
