//! NATS identities issued at registration (issue 13): the nkey seed in the HTTP answer connects
//! to a nats-server running the authorization file Latch renders (public keys only) and reloads,
//! and the server confines each identity to its own subjects. Identities from before nkeys keep
//! their password until rotated.

use crate::common::spawn_app_with;
use futures::StreamExt;
use latch_nats::auth::{authorizer_inbox_prefix, identities_config, Login as Rendered};
use latch_nats::server::NatsServer;
use latch_nats::subjects;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

const SVC_PW: &str = "svc-secret-for-tests";

struct Connected {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

/// How a test client logs in.
#[derive(Clone, Copy)]
enum Login<'a> {
    /// An nkey user: the seed signs the server's nonce.
    Seed(&'a str),
    /// User and password: the service user, and identities from before nkeys.
    Password(&'a str, &'a str),
}

impl Login<'_> {
    /// Who, for messages (never the seed or password).
    fn who(self) -> String {
        match self {
            Login::Seed(seed) => public_key(seed),
            Login::Password(user, _) => user.to_owned(),
        }
    }

    fn options(self) -> async_nats::ConnectOptions {
        match self {
            Login::Seed(seed) => async_nats::ConnectOptions::with_nkey(seed.into()),
            Login::Password(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            }
        }
    }
}

/// The public key (`U...`) of a seed.
fn public_key(seed: &str) -> String {
    nkeys::KeyPair::from_seed(seed).unwrap().public_key()
}

/// A seed the server does not know.
fn stranger_seed() -> String {
    nkeys::KeyPair::new_user().seed().unwrap()
}

/// Connects, retrying for a while: the server reloads its file asynchronously after SIGHUP.
async fn connect(url: &str, login: Login<'_>, inbox: String) -> Connected {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, errors) = mpsc::unbounded_channel();
        let result = login
            .options()
            .custom_inbox_prefix(inbox.clone())
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(url)
            .await;
        match result {
            Ok(client) => return Connected { client, errors },
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{} cannot connect: {e}", login.who()),
        }
    }
}

/// A nats-server that starts with only the service user and includes the file Latch renders,
/// and an app that renders it and reloads the server.
struct Secured {
    app: crate::common::TestApp,
    url: String,
    auth_file: std::path::PathBuf,
    // Dropped after the app.
    _server: NatsServer,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth_file = dir.path().join("auth.conf");
        let pid_file = dir.path().join("nats.pid");
        std::fs::write(&auth_file, identities_config("latch", SVC_PW, &[])).unwrap();
        let server = NatsServer::start_in(dir.path(), Some("include \"auth.conf\"\n"))
            .await
            .unwrap();
        std::fs::write(&pid_file, server.pid().unwrap().to_string()).unwrap();
        let (af, pf) = (auth_file.clone(), pid_file);
        let app = spawn_app_with(move |s| {
            s.nats_auth.auth_file = Some(af);
            s.nats_auth.pid_file = Some(pf);
            s.nats_auth.service_user = "latch".into();
            s.nats_auth.service_password = SVC_PW.into();
        })
        .await;
        Self {
            app,
            url: server.url(),
            auth_file,
            _server: server,
            _dir: dir,
        }
    }
}

async fn violation(c: &mut Connected) {
    c.client.flush().await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), c.errors.recv())
        .await
        .expect("the server reports a permission violation")
        .unwrap();
    assert!(v.to_lowercase().contains("permission"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_identities_connect_and_are_confined_after_a_reload() {
    // The server starts with only the service user; identities arrive by reload.
    let secured = Secured::start().await;
    let (app, url, auth_file) = (&secured.app, secured.url.clone(), secured.auth_file.clone());

    let register = |label: &'static str| {
        let app = &app;
        async move {
            let res = app
                .post(
                    "/devices",
                    &app.operator,
                    Some(json!({"kind": "vending", "site": "610091A01", "label": label})),
                )
                .await;
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()
        }
    };
    let a = register("A").await;
    let b = register("B").await;
    let (a_id, b_id) = (
        a["device_id"].as_str().unwrap(),
        b["device_id"].as_str().unwrap(),
    );
    let a_user = a["nats"]["user"].as_str().unwrap();
    let a_seed = a["nats"]["nkey_seed"].as_str().unwrap();
    assert_eq!(a_user, format!("device-{a_id}"));
    assert!(a["nats"].get("password").is_none(), "{a}");
    assert!(
        a_seed.starts_with("SU") && a_seed.len() == 58,
        "a user seed"
    );
    let a_key = public_key(a_seed);

    // Only the public key is kept, and the file carries only public keys and the service hash.
    let (stored, hash): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT nkey, password_hash FROM nats_identities WHERE nats_user = $1")
            .bind(a_user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(a_key.as_str()));
    assert_eq!(hash, None);
    let table: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(n)::text FROM nats_identities n")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(table.len() == 2 && table.iter().all(|row| !row.contains(a_seed)));
    let rendered = std::fs::read_to_string(&auth_file).unwrap();
    assert!(!rendered.contains(a_seed) && !rendered.contains(SVC_PW));
    assert!(
        rendered.contains(&format!("nkey: \"{a_key}\"")),
        "{rendered}"
    );
    // The event log holds neither the seed nor even the public key: identities live in the table.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(events.len() >= 2);
    assert!(events
        .iter()
        .all(|e| !e.contains(a_seed) && !e.contains(&a_key)));

    // The same server, never restarted, now knows A (and refuses a seed it does not know).
    let service = async_nats::ConnectOptions::with_user_and_password("latch".into(), SVC_PW.into())
        .connect(&url)
        .await
        .unwrap();
    let mut seen = service.subscribe("latch.>").await.unwrap();
    service.flush().await.unwrap();
    let mut dev = connect(
        &url,
        Login::Seed(a_seed),
        subjects::device_inbox_prefix(a_id),
    )
    .await;
    let stranger = async_nats::ConnectOptions::with_nkey(stranger_seed())
        .connect(&url)
        .await
        .expect_err("an unknown nkey is refused");
    assert_eq!(
        stranger.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{stranger}"
    );

    dev.client
        .publish(subjects::telemetry(a_id, "heartbeat"), "mine".into())
        .await
        .unwrap();
    dev.client.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), seen.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.subject.as_str(),
        subjects::telemetry(a_id, "heartbeat")
    );

    // As another device, on commands, on events: each refused by the server.
    for forged in [
        subjects::telemetry(b_id, "heartbeat"),
        "latch.cmd.x".to_owned(),
        "latch.events.device.DeviceRegistered.x".to_owned(),
    ] {
        dev.client.publish(forged, "forged".into()).await.unwrap();
        violation(&mut dev).await;
    }
    let _s = dev
        .client
        .subscribe(subjects::device_commands_all(b_id))
        .await
        .unwrap();
    violation(&mut dev).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), seen.next())
            .await
            .is_err(),
        "nothing forged got through"
    );

    // It may answer a request on its own command subject (a holder update to a locker).
    let mut holder = dev
        .client
        .subscribe(subjects::device_holder(a_id))
        .await
        .unwrap();
    dev.client.flush().await.unwrap();
    let answering = dev.client.clone();
    let answer = tokio::spawn(async move {
        let msg = holder.next().await.unwrap();
        let reply = msg.reply.expect("a request has a reply subject");
        answering
            .publish(reply, "{\"ok\":true}".into())
            .await
            .unwrap();
        answering.flush().await.unwrap();
    });
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        // The device's subscription reaches the server a moment after its flush: retry
        // while nobody listens yet.
        async {
            loop {
                match service
                    .request(subjects::device_holder(a_id), "{}".into())
                    .await
                {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        },
    )
    .await
    .expect("answered in time")
    .expect("the device may answer");
    assert_eq!(&reply.payload[..], b"{\"ok\":true}");
    answer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_cannot_read_or_answer_for_another() {
    let secured = Secured::start().await;
    let (app, url) = (&secured.app, secured.url.clone());
    let secret = format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
    );
    let mut answers = Vec::new();
    for number in ["AUTH1", "AUTH2"] {
        let res = app
            .post(
                "/lockers/authorizers",
                &app.operator,
                Some(json!({"number": number, "name": number, "endpoint": "http://127.0.0.1:9/x", "secret": secret})),
            )
            .await;
        assert_eq!(res.status(), 201);
        answers.push(res.json::<Value>().await.unwrap());
    }
    let one = &answers[0]["nats"];
    assert_eq!(one["user"], "authorizer-AUTH1");
    let mut a1 = connect(
        &url,
        Login::Seed(one["nkey_seed"].as_str().unwrap()),
        authorizer_inbox_prefix("AUTH1"),
    )
    .await;
    // Its own requests: allowed (no violation follows).
    let _own = a1
        .client
        .subscribe(subjects::authorizer_grants("AUTH1"))
        .await
        .unwrap();
    a1.client.flush().await.unwrap();
    // Another's requests: refused.
    let _other = a1
        .client
        .subscribe(subjects::authorizer_grants("AUTH2"))
        .await
        .unwrap();
    violation(&mut a1).await;
    // Answering for another: refused.
    a1.client
        .publish(subjects::authorizer_answers("AUTH2"), "{}".into())
        .await
        .unwrap();
    violation(&mut a1).await;
}

#[test]
fn telemetry_and_deadletter_streams_are_bounded() {
    use async_nats::jetstream::stream::DiscardPolicy;
    use latch_nats::streams::{deadletter_stream, telemetry_stream};
    for config in [telemetry_stream(), deadletter_stream()] {
        assert!(config.max_bytes > 0, "{} max_bytes", config.name);
        assert!(config.max_messages > 0, "{} max_messages", config.name);
        assert!(
            config.max_message_size > 0,
            "{} max_message_size",
            config.name
        );
        assert_eq!(config.discard, DiscardPolicy::Old, "{}", config.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_suppress_another_devices_message_with_its_msg_id() {
    use async_nats::jetstream::message::PublishMessage;
    let app = crate::common::spawn_app().await;
    let a = app.register_device("vending", "S1", "A").await.to_string();
    let b = app.register_device("vending", "S1", "B").await.to_string();
    let heartbeat = |device: &str| {
        serde_json::to_vec(&json!({
            "v": 1, "msg_id": "m-1", "device_id": device,
            "sent_at": "2026-11-21T08:00:00Z", "type": "heartbeat", "uptime_s": 5
        }))
        .unwrap()
    };
    // A goes first with the id B is about to use (as "<B>.<msg>", the old convention).
    let stolen = format!("{b}.m-1");
    let first = app
        .js
        .send_publish(
            subjects::telemetry(&a, "heartbeat"),
            PublishMessage::build()
                .payload(heartbeat(&a).into())
                .message_id(stolen.as_str()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    // B follows the protocol (no Nats-Msg-Id): never suppressed, even at once.
    let plain = app
        .js
        .send_publish(
            subjects::telemetry(&b, "heartbeat"),
            PublishMessage::build().payload(heartbeat(&b).into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!plain.duplicate);
    // A device that still sends the header: the stream remembers ids only for its minimum
    // window (100 ms), not the two minutes it used to.
    tokio::time::sleep(latch_nats::streams::TELEMETRY_DUPLICATE_WINDOW * 2).await;
    let second = app
        .js
        .send_publish(
            subjects::telemetry(&b, "heartbeat"),
            PublishMessage::build()
                .payload(heartbeat(&b).into())
                .message_id(stolen.as_str()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!second.duplicate, "B's message was stored, not suppressed");
    // Both devices ingested (same payload msg_id too: Latch dedupes per device).
    crate::common::eventually(Duration::from_secs(10), "both heartbeats ingested", || {
        let pool = app.pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM device_liveness WHERE last_msg = 'm-1'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (n == 2).then_some(())
        }
    })
    .await;
}

#[test]
fn telemetry_dedupe_window_is_not_a_shared_suppression_list() {
    let config = latch_nats::streams::telemetry_stream();
    assert!(config.duplicate_window <= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_registration_does_not_show_the_seed_again() {
    let app = crate::common::spawn_app().await;
    let send = || {
        app.http
            .post(format!("{}/devices", app.address))
            .bearer_auth(&app.operator)
            .header("Idempotency-Key", "reg-1")
            .json(&json!({"kind": "locker", "site": "S1", "label": "L"}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first["device_id"], again["device_id"]);
    assert!(first["nats"]["nkey_seed"].is_string());
    assert!(again.get("nats").is_none(), "{again}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM nats_identities")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_reads_its_own_grant_feed_and_not_anothers() {
    use latch_nats::auth::{authorizer_user, IssuedIdentity, Principal};
    use latch_nats::streams::{authorizer_feed_consumer, ensure_authorizer_feed, ensure_streams};
    let dir = tempfile::tempdir().unwrap();
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let identity = IssuedIdentity {
        user: authorizer_user("AUTH1"),
        login: Rendered::Nkey(public_key(&seed)),
        principal: Principal::Authorizer("AUTH1".into()),
    };
    std::fs::write(
        dir.path().join("auth.conf"),
        identities_config("latch", SVC_PW, &[identity]),
    )
    .unwrap();
    let server = NatsServer::start_in(dir.path(), Some("include \"auth.conf\"\n"))
        .await
        .unwrap();
    // Latch (the service user) has the stream, both feeds and a request in each.
    let service = connect(
        &server.url(),
        Login::Password("latch", SVC_PW),
        "_INBOX".into(),
    )
    .await;
    let js = async_nats::jetstream::new(service.client.clone());
    ensure_streams(&js).await.unwrap();
    for n in ["AUTH1", "AUTH2"] {
        ensure_authorizer_feed(&js, n).await.unwrap();
        js.publish(
            subjects::grant_feed(n, "requested"),
            json!({"type": "grant.requested", "authorizer": n})
                .to_string()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut a1 = connect(
        &server.url(),
        Login::Seed(&seed),
        authorizer_inbox_prefix("AUTH1"),
    )
    .await;
    let ajs = async_nats::jetstream::new(a1.client.clone());
    let own: async_nats::jetstream::consumer::PullConsumer = ajs
        .get_consumer_from_stream(authorizer_feed_consumer("AUTH1"), subjects::GRANTS_STREAM)
        .await
        .expect("its own feed");
    let mut batch = own
        .fetch()
        .max_messages(5)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), batch.next())
        .await
        .expect("its request")
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(body["authorizer"], "AUTH1");
    first.ack().await.unwrap();
    a1.client.flush().await.unwrap();
    assert!(
        a1.errors.try_recv().is_err(),
        "reading its own feed is allowed"
    );
    // Another's feed: the server refuses the lookup.
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        ajs.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            authorizer_feed_consumer("AUTH2"),
            subjects::GRANTS_STREAM,
        ),
    )
    .await;
    assert!(
        !matches!(other, Ok(Ok(_))),
        "another's feed must not be readable"
    );
    violation(&mut a1).await;
}

/// Waits until `login` is refused (the reload is asynchronous).
async fn refused(url: &str, login: Login<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = login.options().connect(url).await;
        match attempt {
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation,
                    "{e}"
                );
                return;
            }
            Ok(client) if tokio::time::Instant::now() < deadline => {
                drop(client);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => panic!(
                "{} still connects after a rotation or revocation",
                login.who()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_rotate_and_revoke_an_identity_and_the_server_follows() {
    let secured = Secured::start().await;
    let (app, url) = (&secured.app, secured.url.clone());
    let res = app
        .post(
            "/devices",
            &app.operator,
            Some(json!({"kind": "locker", "site": "610091A01", "label": "L"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let id = body["device_id"].as_str().unwrap().to_owned();
    let user = body["nats"]["user"].as_str().unwrap().to_owned();
    let first = body["nats"]["nkey_seed"].as_str().unwrap().to_owned();
    connect(
        &url,
        Login::Seed(&first),
        subjects::device_inbox_prefix(&id),
    )
    .await;

    // Only operators; an unknown name is a clear 404.
    let rotate = format!("/nats-identities/{user}/rotate");
    assert_eq!(app.post(&rotate, &app.user, None).await.status(), 403);
    let res = app
        .post("/nats-identities/device-nobody/rotate", &app.operator, None)
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_nats_user"
    );

    // Rotated: a new seed (and key); the old seed is refused, the new one connects.
    let res = app.post(&rotate, &app.operator, None).await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    assert_eq!(rotated["user"], user.as_str());
    let second = rotated["nkey_seed"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_ne!(public_key(&second), public_key(&first));
    refused(&url, Login::Seed(&first)).await;
    connect(
        &url,
        Login::Seed(&second),
        subjects::device_inbox_prefix(&id),
    )
    .await;

    // Revoked: nothing connects as it any more, and it is gone.
    let res = app
        .http
        .delete(format!("{}/nats-identities/{user}", app.address))
        .bearer_auth(&app.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    refused(&url, Login::Seed(&second)).await;
    let res = app
        .http
        .delete(format!("{}/nats-identities/{user}", app.address))
        .bearer_auth(&app.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// Renders are coalesced: many identities issued at once cost a couple of renders, not one each
/// (a render reads every identity, so one per registration is O(n²) for a fleet), and still
/// every caller returns only once the file holds its identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_share_renders_and_each_returns_once_rendered() {
    use latch_api::nats_identities::{issue_and_publish, NatsAuthConfig, NatsAuthRenderer};
    use latch_nats::auth::Principal;
    use std::io::Write;
    use std::sync::Arc;
    const N: usize = 40;

    let secured = Secured::start().await;
    let pool = secured.app.pool.clone();
    // The pid file starts as a FIFO: the first render blocks reading it until the gate opens,
    // which holds that render back until every identity is stored and its caller waiting.
    // Opening the gate puts a plain pid file in its place and feeds the held reader once.
    let dir = secured._dir.path();
    let (fifo, pid_file) = (dir.join("gate.fifo"), dir.join("gate.pid"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::hard_link(&fifo, &pid_file).unwrap();
    let pid = secured._server.pid().unwrap().to_string();
    let (open_gate, opened) = std::sync::mpsc::channel::<()>();
    let gate = {
        let (fifo, pid_file, pid) = (fifo.clone(), pid_file.clone(), pid.clone());
        std::thread::spawn(move || {
            opened.recv().unwrap();
            let plain = pid_file.with_extension("new");
            std::fs::write(&plain, &pid).unwrap();
            std::fs::rename(&plain, &pid_file).unwrap();
            // Blocks until the held render has the FIFO open (or the test releases it).
            let mut held = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = held.write_all(pid.as_bytes());
        })
    };
    let renderer = Arc::new(NatsAuthRenderer::new(NatsAuthConfig {
        auth_file: Some(secured.auth_file.clone()),
        pid_file: Some(pid_file.clone()),
        service_user: "latch".into(),
        service_password: SVC_PW.into(),
    }));

    let callers: Vec<_> = (0..N)
        .map(|_| {
            let (pool, renderer) = (pool.clone(), renderer.clone());
            let auth_file = secured.auth_file.clone();
            tokio::spawn(async move {
                let id = uuid::Uuid::now_v7().to_string();
                let creds = issue_and_publish(&pool, &renderer, &Principal::Device(id.clone()))
                    .await
                    .unwrap()
                    .expect("a new identity");
                // Later renders only add to the file, so reading it now still tells.
                let rendered = std::fs::read_to_string(&auth_file).unwrap();
                assert!(
                    rendered.contains(&format!("\"{}\"", public_key(&creds.nkey_seed))),
                    "{} returned before a render included it",
                    creds.user
                );
                (id, creds)
            })
        })
        .collect();
    // Every identity stored (the first render is held at the gate), then a moment for their
    // callers to ask for a render.
    crate::common::eventually(Duration::from_secs(20), "every identity stored", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM nats_identities")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n as usize == N).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(renderer.renders(), 1, "one render, held at the gate");
    open_gate.send(()).unwrap();
    let mut issued = Vec::new();
    for caller in callers {
        issued.push(caller.await.unwrap());
    }
    // The held render and one more for everyone who asked meanwhile (2; 3 if a caller was slow
    // to ask): far fewer than one each.
    let renders = renderer.renders();
    assert!(
        (2..=3).contains(&renders),
        "{renders} renders for {N} issues"
    );

    // The server reloaded the file: an identity issued in the crowd connects.
    let (id, creds) = &issued[N / 2];
    connect(
        &secured.url,
        Login::Seed(&creds.nkey_seed),
        subjects::device_inbox_prefix(id),
    )
    .await;

    // The gate's writer has fed the held render; had that render found the plain file
    // instead, readers that do not wait release the writer.
    while !gate.is_finished() {
        use std::os::unix::fs::OpenOptionsExt;
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_from_before_nkeys_keeps_its_password_until_rotated() {
    let secured = Secured::start().await;
    let (app, url) = (&secured.app, secured.url.clone());
    // A row as migration 0033 left it: a bcrypt hash, no nkey.
    let old_id = uuid::Uuid::now_v7().to_string();
    let old_user = format!("device-{old_id}");
    let old_password = "issued-before-nkeys-0123456789abcdef";
    sqlx::query(
        "INSERT INTO nats_identities (nats_user, kind, principal, password_hash)
         VALUES ($1, 'device', $2, $3)",
    )
    .bind(&old_user)
    .bind(&old_id)
    .bind(bcrypt::hash(old_password, 4).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    // Any registration renders the whole table: an nkey user and a password user side by side.
    let res = app
        .post(
            "/devices",
            &app.operator,
            Some(json!({"kind": "locker", "site": "610091A01", "label": "new"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let new: Value = res.json().await.unwrap();
    let new_id = new["device_id"].as_str().unwrap();
    let rendered = std::fs::read_to_string(&secured.auth_file).unwrap();
    assert!(
        rendered.contains(&format!("user: \"{old_user}\", password: \"$2")),
        "{rendered}"
    );
    assert!(!rendered.contains(old_password));

    // The old device still logs in with its password, still confined to its own subjects.
    let mut old = connect(
        &url,
        Login::Password(&old_user, old_password),
        subjects::device_inbox_prefix(&old_id),
    )
    .await;
    old.client
        .publish(subjects::telemetry(&old_id, "heartbeat"), "mine".into())
        .await
        .unwrap();
    old.client.flush().await.unwrap();
    assert!(
        old.errors.try_recv().is_err(),
        "its own telemetry is allowed"
    );
    old.client
        .publish(subjects::telemetry(new_id, "heartbeat"), "forged".into())
        .await
        .unwrap();
    violation(&mut old).await;
    connect(
        &url,
        Login::Seed(new["nats"]["nkey_seed"].as_str().unwrap()),
        subjects::device_inbox_prefix(new_id),
    )
    .await;

    // A rotation makes it an nkey user: the password stops working, the seed connects.
    let res = app
        .post(
            &format!("/nats-identities/{old_user}/rotate"),
            &app.operator,
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let seed = rotated["nkey_seed"].as_str().unwrap().to_owned();
    let (nkey, hash): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT nkey, password_hash FROM nats_identities WHERE nats_user = $1")
            .bind(&old_user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(nkey, Some(public_key(&seed)));
    assert_eq!(hash, None);
    refused(&url, Login::Password(&old_user, old_password)).await;
    connect(
        &url,
        Login::Seed(&seed),
        subjects::device_inbox_prefix(&old_id),
    )
    .await;
}
