//! `latch dev` with NATS authorization on (issue 13): given a nats-server that lets anyone in,
//! dev runs its own that does not, the simulated cabinets log in as themselves (nkeys), a device's
//! credentials cannot speak for another device, and the demo still works end to end.

use crate::common::*;
use crate::dev::{field, start_dev};
use latch_nats::server::NatsServer;
use latch_nats::subjects;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_dev_runs_nats_with_authorization_and_cabinets_log_in_as_themselves() {
    let db = TestDb::new().await;
    // Lets anyone in: dev must not use it as it is.
    let open_nats = NatsServer::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let (child, banner, log_path) =
        start_dev(&db, &open_nats, data.path(), "latch-dev-auth.log").await;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let api = field(&banner, "API");
    let operator = field(&banner, "operator token");
    let user = field(&banner, "user token");
    let nats_url = field(&banner, "NATS");
    assert_ne!(nats_url, open_nats.url(), "dev started its own server");
    assert!(
        banner
            .iter()
            .any(|l| l.contains("NATS") && l.contains("authorization on")),
        "{banner:?}"
    );

    // An anonymous client is refused.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(&nats_url)
        .await;
    assert!(anonymous.is_err(), "anonymous connection accepted");

    // The four cabinets, each on its own login, come online.
    let http = reqwest::Client::new();
    let devices = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let rows: Vec<Value> = async {
                http.get(format!("{api}/devices"))
                    .bearer_auth(&user)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()
            }
            .await
            .unwrap_or_default();
            if rows.len() == 4
                && rows
                    .iter()
                    .all(|r| r["online"] == true && r["door"] == "closed")
            {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("cabinets not online within 90 s\nlog:\n{}", log()));
    let seeded = devices[0]["device_id"].as_str().unwrap().to_owned();
    let identities = {
        let pool = db.pool().await;
        let n = count(
            &pool,
            "SELECT count(*) FROM nats_identities WHERE kind = 'device'",
        )
        .await;
        pool.close().await;
        n
    };
    assert_eq!(identities, 4, "every seeded cabinet has an identity");

    // An operator's open reaches the cabinet over its own connection; its door report comes back.
    let res = http
        .post(format!("{api}/devices/{seeded}/open"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let opened = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d: Value = async {
                http.get(format!("{api}/devices/{seeded}"))
                    .bearer_auth(&user)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()
            }
            .await
            .unwrap_or_default();
            if d["door"] == "open" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        opened.is_ok(),
        "no door report within 30 s\nlog:\n{}",
        log()
    );

    // A cabinet registered now gets an nkey that dev's server learns by reload; its seed cannot
    // publish as a seeded cabinet.
    let registered: Value = http
        .post(format!("{api}/devices"))
        .bearer_auth(&operator)
        .json(&json!({"kind": "vending", "site": "610091A01", "label": "new"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = registered["device_id"].as_str().unwrap();
    assert_eq!(registered["nats"]["user"], format!("device-{id}"));
    let seed = registered["nats"]["nkey_seed"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (tx, mut errors) = mpsc::unbounded_channel();
    let device = loop {
        let tx = tx.clone();
        match async_nats::ConnectOptions::with_nkey(seed.clone())
            .custom_inbox_prefix(subjects::device_inbox_prefix(id))
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(&nats_url)
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "not reloaded yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("new device cannot log in: {e}"),
        }
    };
    device
        .publish(subjects::telemetry(&seeded, "heartbeat"), "forged".into())
        .await
        .unwrap();
    device.flush().await.unwrap();
    let violation = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("the server refuses publishing as another device")
        .unwrap();
    assert!(
        violation.to_lowercase().contains("permission"),
        "{violation}"
    );

    let status = sigterm_and_wait(child, Duration::from_secs(20)).await;
    assert!(status.expect("dev stops within 20 s of SIGTERM").success());
    // And dev's server went with it.
    let addr = nats_url.trim_start_matches("nats://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "dev's nats-server still listens on {addr}"
    );
}
