//! Every promised fact is an event (issue 12, item 4): sticker scans, locker logins, tokens
//! issued and revoked reach auditors through `/audit/events`, and nothing that could log
//! someone in (password, token, token hash) is in what they read.

use crate::common::*;
use crate::lockers::{login, user, PASSWORD};
use latch_api::auth::{issue_token, Role};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sees_scans_logins_and_revocations_and_no_secret() {
    tokio::time::timeout(LIMIT, async {
        let app = spawn_app().await;
        let auditor = issue_token(&app.pool, Role::Auditor, "test-auditor")
            .await
            .unwrap();
        user(&app, "13455555555", "李").await;

        // A forged sticker.
        let cabinet = uuid::Uuid::now_v7();
        let res = app
            .http
            .get(format!(
                "{}/m/c/{cabinet}?k=AAAAAAAAAAAAAAAAAAAAAA",
                app.address
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);

        // A refused login and a good one (API), then a page login and its logout.
        let res = login(&app, "13455555555", "wrong-password").await;
        assert_eq!(res.status(), 422);
        let res = login(&app, "13455555555", PASSWORD).await;
        assert_eq!(res.status(), 200);
        let bearer = res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = app
            .http
            .post(format!("{}/lockers/page/login", app.address))
            .header("x-latch-client", "test")
            .json(&json!({"user_number": "13455555555", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let cookie = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("latch_locker="))
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned();
        let logout = || async {
            app.http
                .post(format!("{}/lockers/page/logout", app.address))
                .header("x-latch-client", "test")
                .header("cookie", format!("latch_locker={cookie}"))
                .send()
                .await
                .unwrap()
                .status()
        };
        assert_eq!(logout().await, 204);
        // A second logout with the same cookie records nothing more.
        assert_eq!(logout().await, 204);
        let res = app
            .http
            .get(format!("{}/lockers/me", app.address))
            .header("cookie", format!("latch_locker={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "the revoked session no longer works");

        // Everything committed reaches the log.
        eventually(LIMIT, "every event logged", || async {
            let events = app.event_count().await;
            let head = latch_projections::log::head(&app.pool).await.unwrap();
            (head == events).then_some(())
        })
        .await;
        let res = app.get("/audit/events", &auditor).await;
        assert_eq!(res.status(), 200);
        let body = res.text().await.unwrap();
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let of =
            |ty: &str| -> Vec<&Value> { lines.iter().filter(|l| l["event_type"] == ty).collect() };
        let forged = of("ForgedStickerScanned");
        assert_eq!(forged.len(), 1, "{body}");
        assert_eq!(forged[0]["aggregate_type"], "sticker_scan");
        assert_eq!(
            forged[0]["payload"]["ForgedStickerScanned"]["cabinet"],
            cabinet.to_string()
        );
        let refused = of("LockerLoginRefused");
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0]["payload"]["LockerLoginRefused"]["reason"],
            "invalid_credentials"
        );
        let succeeded = of("LockerLoginSucceeded");
        assert_eq!(succeeded.len(), 2);
        for s in &succeeded {
            let body = &s["payload"]["LockerLoginSucceeded"];
            assert_eq!(body["role"], "user");
            assert_eq!(body["subject"], "locker:13455555555");
            assert!(body["expires_at"].is_string());
            assert_eq!(body["token_id"], s["aggregate_id"]);
        }
        // The page session's revocation names the token its login issued.
        let revoked = of("TokenRevoked");
        assert_eq!(revoked.len(), 1, "a repeated logout records nothing");
        assert_eq!(revoked[0]["aggregate_type"], "api_token");
        let revoked_id = &revoked[0]["payload"]["TokenRevoked"]["token_id"];
        assert_eq!(revoked_id, &revoked[0]["aggregate_id"]);
        assert_eq!(revoked[0]["payload"]["TokenRevoked"]["reason"], "logout");
        assert!(succeeded.iter().any(|s| &s["aggregate_id"] == revoked_id));

        // No secret anywhere in what auditors read: not the password, not a token, not a token's
        // hash (the credential row's key), in any encoding the store uses.
        let mut secrets = vec![
            PASSWORD.to_owned(),
            "wrong-password".to_owned(),
            bearer.clone(),
            cookie.clone(),
            auditor.clone(),
        ];
        for token in [&bearer, &cookie, &auditor, &app.operator, &app.user] {
            let hash = Sha256::digest(token.as_bytes());
            secrets.push(hex::encode(hash));
            secrets.push(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                hash,
            ));
        }
        for secret in &secrets {
            assert!(!body.contains(secret.as_str()), "a secret in the audit log");
        }
        let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT token_hash FROM api_tokens")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        for (hash,) in stored {
            assert!(!body.contains(&hex::encode(&hash)));
        }
        // The user's argon2 hash (kept in `credentials`, see tests/it/secrets.rs for the whole
        // log) is in none of the new facts.
        let (argon,): (String,) = sqlx::query_as("SELECT password_hash FROM credentials")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        for line in body.lines().filter(|l| {
            ["sticker_scan", "locker_login", "api_token"]
                .iter()
                .any(|t| l.contains(&format!("\"aggregate_type\":\"{t}\"")))
        }) {
            assert!(!line.contains(&argon) && !line.contains("argon2"), "{line}");
        }

        // The folds over the whole log take the new aggregate types in their stride.
        let report = latch_projections::audit::verify::walk(&app.pool, None, &|_| {})
            .await
            .unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.count, lines.len() as i64);
        for name in ["device_status", "qr_login_status", "orders", "lockers"] {
            latch_projections::audit::rebuild::rebuild_named(&app.pool, name, &|_| {})
                .await
                .unwrap_or_else(|e| panic!("rebuild {name}: {e}"));
        }
        let res = app
            .http
            .get(format!("{}/audit/as-of", app.address))
            .query(&[("at", chrono::Utc::now().to_rfc3339())])
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    })
    .await
    .expect("the audit facts test finished in time");
}

/// Anyone can try any user number: refusals of numbers nobody holds are recorded within a
/// per-client budget, and answered the same beyond it.
#[tokio::test]
async fn an_unknown_number_spray_is_recorded_within_a_per_ip_budget() {
    tokio::time::timeout(LIMIT, async {
        let app = spawn_app().await;
        for i in 0..40 {
            let res = login(&app, &format!("1390000{i:04}"), "guess").await;
            assert_eq!(res.status(), 422);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_credentials");
        }
        let recorded = count(
            &app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'LockerLoginRefused'
              AND payload->'LockerLoginRefused'->>'reason' = 'unknown_user'",
        )
        .await;
        assert_eq!(
            recorded,
            i64::from(latch_api::auth::ANONYMOUS_REFUSALS_PER_MINUTE_PER_IP)
        );
    })
    .await
    .expect("finished in time");
}
