//! The locker records its holder (issue 14): each compartment's door device, played by the
//! real simulator, keeps who holds the compartment, and agrees with the read model after
//! holders change through HTTP, after the simulator was away (it catches up from redelivery,
//! its table kept in its state directory) and after `latch serve` restarts (even with every
//! holder update offered again from the start of the log).

use crate::common::*;
use crate::lockers::{created, reserve, token, world, SITE};
use latch::sim::{self, SimConfig};
use latch_nats::subjects;
use latch_workers::CancellationToken;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Quick redelivery, so the test does not sit through production pauses.
fn quick_holder_retries(s: &mut latch::config::Settings) {
    s.holder.reply_timeout = Duration::from_secs(1);
    s.holder.retry_max = Duration::from_millis(500);
}

/// The simulator playing `doors`, keeping its tables in `state_dir`.
struct Sim {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    async fn start(app: &TestApp, doors: &[Uuid], state_dir: &Path) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(sim::run(
            app.nats.clone(),
            SimConfig {
                devices: doors.to_vec(),
                heartbeat: Duration::from_secs(1),
                hold_open: Duration::from_millis(100),
                state_dir: Some(state_dir.to_path_buf()),
                ..SimConfig::default()
            },
            stop.clone(),
        ));
        Sim { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the simulator stops")
            .unwrap();
    }
}

/// The simulated locker's holder table, by compartment (`None`: it does not answer).
async fn sim_table(app: &TestApp, door: Uuid) -> Option<serde_json::Map<String, Value>> {
    let reply = app
        .nats
        .request(subjects::sim_holders(&door.to_string()), "".into())
        .await
        .ok()?;
    let body: Value = serde_json::from_slice(&reply.payload).ok()?;
    (body["ok"] == true).then(|| body["holders"].as_object().cloned())?
}

/// Per wired compartment: the holder and log position the read model shows, when the door's
/// own table says the same; `None` while any of them disagrees.
async fn agreement(app: &TestApp, wiring: &[(String, Uuid)]) -> Option<Vec<(String, Value, i64)>> {
    let mut agreed = Vec::new();
    for (compartment, door) in wiring {
        let shown: Value = app
            .get(
                &format!("/lockers/compartments/{compartment}"),
                &app.operator,
            )
            .await
            .json()
            .await
            .ok()?;
        let (position,): (i64,) = sqlx::query_as(
            "SELECT last_position FROM locker_compartments WHERE compartment_id = $1",
        )
        .bind(compartment)
        .fetch_one(&app.pool)
        .await
        .ok()?;
        let table = sim_table(app, *door).await?;
        let kept = table.get(compartment)?;
        if kept["holder"] != shown["holder"] || kept["position"] != position {
            return None;
        }
        agreed.push((compartment.clone(), shown["holder"].clone(), position));
    }
    Some(agreed)
}

async fn agree(app: &TestApp, wiring: &[(String, Uuid)], what: &str) -> Vec<(String, Value, i64)> {
    eventually(WAIT, what, || agreement(app, wiring)).await
}

/// The read model's holder of `compartment`, once it shows `expected`.
async fn shown_holder(app: &TestApp, compartment: &str, expected: Value) {
    eventually(
        WAIT,
        &format!("{compartment} held by {expected}"),
        || async {
            let shown: Value = app
                .get(
                    &format!("/lockers/compartments/{compartment}"),
                    &app.operator,
                )
                .await
                .json()
                .await
                .ok()?;
            (shown["holder"] == expected).then_some(())
        },
    )
    .await
}

async fn grant(app: &TestApp, from: &str, compartment: &str, to: &str) {
    let number = compartment.rsplit(':').next().unwrap();
    let body = created(
        app.post(
            "/lockers/grants",
            from,
            Some(json!({"site": SITE, "compartment": number, "receiver": to})),
        )
        .await,
        "direct grant",
    )
    .await;
    assert_eq!(body["status"], "completed", "{body}");
}

/// Stops `latch serve` and starts it again on the same database and NATS server.
async fn restart_serve(app: &mut TestApp) {
    app.stop().await;
    let mut settings = test_settings(&app.db, &app.nats_server, &app.clock);
    quick_holder_retries(&mut settings);
    let serve = latch::Application::build(settings)
        .await
        .expect("app builds");
    app.address = format!("http://127.0.0.1:{}", serve.port());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    app.shutdown = shutdown;
    app.app_task = Some(tokio::spawn(async move {
        serve
            .run_until_stopped(async move { stop.cancelled().await })
            .await
            .unwrap();
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locker_keeps_the_holder_and_agrees_with_the_read_model_across_restarts() {
    let mut app = spawn_app_with(quick_holder_retries).await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let state = tempfile::tempdir().unwrap();
    let mut doors = Vec::new();
    let mut wiring = Vec::new();
    for number in ["01", "02"] {
        let door = app
            .register_device("locker", SITE, &format!("{SITE}-{number}"))
            .await;
        let res = app
            .post(
                &format!("/lockers/compartments/{SITE}:{number}/door"),
                &app.operator,
                Some(json!({"door_device": door.to_string()})),
            )
            .await;
        created(res, "wire door").await;
        doors.push(door);
        wiring.push((format!("{SITE}:{number}"), door));
    }
    let sim = Sim::start(&app, &doors, state.path()).await;
    eventually(WAIT, "doors online and closed", || async {
        for door in &doors {
            let d = app.device(*door).await?;
            if d["online"] != true || d["door"] != "closed" {
                return None;
            }
        }
        Some(())
    })
    .await;
    // Wired while the simulator was not yet there: each door still learns its compartment.
    let wired = agree(&app, &wiring, "each door knows its free compartment").await;
    assert!(
        wired.iter().all(|(_, holder, _)| holder.is_null()),
        "{wired:?}"
    );

    // Li reserves and hands hers to 张; 郑 reserves the other.
    let li = token(&app, "13455555555").await;
    let zhang = token(&app, "13499996666").await;
    let zheng = token(&app, "13488888888").await;
    let first = reserve(&app, &li).await;
    grant(&app, &li, &first, "13499996666").await;
    let second = reserve(&app, &zheng).await;
    assert_ne!(first, second);
    shown_holder(&app, &first, json!("13499996666")).await;
    shown_holder(&app, &second, json!("13488888888")).await;
    let held = agree(&app, &wiring, "doors know the reservation and the grant").await;
    let holder_of = |rows: &[(String, Value, i64)], id: &str| {
        rows.iter().find(|(c, ..)| c == id).unwrap().1.clone()
    };
    assert_eq!(holder_of(&held, &first), "13499996666");
    assert_eq!(holder_of(&held, &second), "13488888888");

    // 张 deposits: nobody holds it any more, and its door knows. (The opening itself is not
    // this test's business: the simulator ignores open commands whose deadline, on the test's
    // manual clock, lies in its past.)
    let deposit = created(
        app.post(
            &format!("/lockers/compartments/{first}/deposit"),
            &zhang,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await,
        "deposit",
    )
    .await;
    let code = deposit["pickup_code"].as_str().unwrap().to_owned();
    shown_holder(&app, &first, Value::Null).await;
    let deposited = agree(&app, &wiring, "door knows the deposit freed the holder").await;
    assert!(holder_of(&deposited, &first).is_null());

    let door_of = |id: &str| wiring.iter().find(|(c, _)| c == id).unwrap().1;

    // The simulator goes away; holders change meanwhile.
    sim.stop().await;
    grant(&app, &zheng, &second, "13466666666").await;
    let res = app
        .post(
            &format!("/lockers/compartments/{first}/collect"),
            &app.operator,
            Some(json!({"pickup_code": code})),
        )
        .await;
    created(res, "collect").await;
    eventually(WAIT, "collected compartment free", || async {
        let shown: Value = app
            .get(&format!("/lockers/compartments/{first}"), &app.operator)
            .await
            .json()
            .await
            .ok()?;
        (shown["status"] == "free").then_some(())
    })
    .await;
    let again = reserve(&app, &li).await;
    assert_eq!(again, first, "the collected compartment is the free one");
    shown_holder(&app, &second, json!("13466666666")).await;
    shown_holder(&app, &first, json!("13455555555")).await;
    // What the lockers kept on disk is still the old state: they were not there to hear it.
    let on_disk = |door: Uuid| -> Value {
        let file = sim::holder::table_file(state.path(), door);
        serde_json::from_slice(&std::fs::read(file).expect("the table is on disk")).unwrap()
    };
    assert!(on_disk(door_of(&first))[&first]["holder"].is_null());
    assert_eq!(on_disk(door_of(&second))[&second]["holder"], "13488888888");

    // Back with the same state directory: redelivery brings each door up to date.
    let sim = Sim::start(&app, &doors, state.path()).await;
    let caught_up = agree(
        &app,
        &wiring,
        "doors caught up after the simulator's restart",
    )
    .await;
    assert_eq!(holder_of(&caught_up, &first), "13455555555");
    assert_eq!(holder_of(&caught_up, &second), "13466666666");
    assert_eq!(on_disk(door_of(&second))[&second]["holder"], "13466666666");

    // `latch serve` restarts, and this time every holder update is offered again from the
    // start of the log (its durable consumer gone): the doors keep what they have.
    app.stop().await;
    app.js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .delete_consumer(latch_workers::locker_holder::CONSUMER)
        .await
        .unwrap();
    let before = (
        sim_table(&app, doors[0]).await.unwrap(),
        sim_table(&app, doors[1]).await.unwrap(),
    );
    restart_serve(&mut app).await;
    eventually(
        WAIT,
        "the holder consumer replayed the whole log",
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = app
                .js
                .get_stream(subjects::EVENTS_STREAM)
                .await
                .ok()?
                .get_consumer(latch_workers::locker_holder::CONSUMER)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence > 0)
                .then_some(())
        },
    )
    .await;
    let after = (
        sim_table(&app, doors[0]).await.unwrap(),
        sim_table(&app, doors[1]).await.unwrap(),
    );
    assert_eq!(before, after, "replayed updates changed nothing");
    agree(&app, &wiring, "doors agree after serve's restart").await;

    // And the restarted service carries on: Li hands hers to 张 again.
    let li = token(&app, "13455555555").await;
    grant(&app, &li, &first, "13499996666").await;
    shown_holder(&app, &first, json!("13499996666")).await;
    let last = agree(&app, &wiring, "doors follow the restarted service").await;
    assert_eq!(holder_of(&last, &first), "13499996666");
    assert_eq!(holder_of(&last, &second), "13466666666");

    let metrics = app
        .get("/metrics", &app.operator)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("latch_locker_holder_updates_total{outcome=\"acked\"}")),
        "{metrics}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compartment_without_a_door_is_skipped_and_an_unreadable_holder_command_refused() {
    let app = spawn_app_with(quick_holder_retries).await;
    world(&app, "http://127.0.0.1:9/grants").await;
    let door = app.register_device("locker", SITE, "lone door").await;
    let state = tempfile::tempdir().unwrap();
    let sim = Sim::start(&app, &[door], state.path()).await;
    eventually(WAIT, "door online", || async {
        (app.device(door).await?["online"] == true).then_some(())
    })
    .await;

    // No compartment is wired to this door: reserving tells it nothing.
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    shown_holder(&app, &id, json!("13455555555")).await;
    let consumer_done = || async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = app
            .js
            .get_stream(subjects::EVENTS_STREAM)
            .await
            .ok()?
            .get_consumer(latch_workers::locker_holder::CONSUMER)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    };
    eventually(WAIT, "doorless updates acked", consumer_done).await;
    assert_eq!(sim_table(&app, door).await.unwrap().len(), 0);

    // The device answers a bad command with a refusal, and keeps nothing.
    let reply = app
        .nats
        .request(
            subjects::device_holder(&door.to_string()),
            "{\"position\":1}".into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("holder command"));
    // A good one is kept; an older one for the same compartment is acknowledged and ignored.
    for (holder, position) in [("13455555555", 50), ("13499996666", 40)] {
        let body = json!({"compartment_id": id, "holder": holder, "position": position,
                          "at": "2026-11-21T08:00:00Z"});
        let reply = app
            .nats
            .request(
                subjects::device_holder(&door.to_string()),
                body.to_string().into(),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.payload).unwrap()["ok"],
            true
        );
    }
    let table = sim_table(&app, door).await.unwrap();
    assert_eq!(table[&id], json!({"holder": "13455555555", "position": 50}));
    sim.stop().await;
}
