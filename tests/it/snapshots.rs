//! DESIGN.md section 4 (issue 12): loading an aggregate costs the same whatever its history.
//! Long streams load from a snapshot plus the events after it; the snapshot equals the fold of
//! every event; one of an older shape, or one that does not read, is ignored and replaced; and
//! every path that loads a device reads stored events through the upcasters.

use crate::common::*;
use chrono::Duration as ChronoDuration;
use latch_domain::device::{
    Device, DeviceCommand, DeviceId, DeviceKind, DoorState, Label, SiteCode,
};
use latch_domain::store::{CommandContext, Store, SNAPSHOT_EVERY};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

async fn register(store: &Store, id: &str) {
    let command = DeviceCommand::Register {
        device_id: DeviceId::parse("id", id).unwrap(),
        kind: DeviceKind::Vending,
        site: SiteCode::parse("site", "S1").unwrap(),
        label: Label::parse("label", "Fridge", 100).unwrap(),
        at: start_time(),
    };
    store
        .devices
        .create(
            id,
            command.name(),
            command,
            &CommandContext::new("operator:test"),
        )
        .await
        .unwrap();
}

/// `n` door transitions, each its own command and event.
async fn swing_door(store: &Store, id: &str, n: usize) {
    let ctx = CommandContext::new("device:test");
    for i in 0..n {
        let door = store.devices.load(id).await.unwrap().unwrap().door;
        let command = DeviceCommand::ReportDoor {
            state: if door == DoorState::Open {
                DoorState::Closed
            } else {
                DoorState::Open
            },
            request_id: None,
            at: start_time() + ChronoDuration::seconds(i as i64 + 1),
        };
        store
            .devices
            .execute(id, command.name(), command, &ctx)
            .await
            .unwrap();
    }
}

async fn snapshot_row(pool: &PgPool, id: &str) -> Option<(i64, String)> {
    sqlx::query_as(
        "SELECT last_sequence, shape FROM snapshots WHERE aggregate_type = 'device' AND aggregate_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The device folded from every one of its events, with no snapshot involved.
async fn full_fold(pool: &PgPool, id: &str) -> Value {
    let rows: Vec<(Value,)> = sqlx::query_as(
        "SELECT payload FROM events WHERE aggregate_type = 'device' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut device = Device::default();
    for (payload,) in rows {
        cqrs_es::Aggregate::apply(&mut device, serde_json::from_value(payload).unwrap());
    }
    serde_json::to_value(device).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_loads_from_its_snapshot_and_equals_the_full_fold() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let store = Store::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    register(&store, &id).await;
    swing_door(&store, &id, SNAPSHOT_EVERY - 2).await;
    assert_eq!(snapshot_row(&pool, &id).await, None, "too short for one");

    swing_door(&store, &id, 1).await;
    let (at, shape) = snapshot_row(&pool, &id).await.expect("a snapshot");
    assert_eq!(at, SNAPSHOT_EVERY as i64);

    swing_door(&store, &id, 2 * SNAPSHOT_EVERY + 7).await;
    let (at, again) = snapshot_row(&pool, &id).await.unwrap();
    assert_eq!(
        at,
        3 * SNAPSHOT_EVERY as i64,
        "one every {SNAPSHOT_EVERY} events"
    );
    assert_eq!(again, shape);

    let loaded = store.devices.load_with_position(&id).await.unwrap();
    assert_eq!(loaded.sequence, 3 * SNAPSHOT_EVERY + 7);
    assert_eq!(loaded.snapshot_sequence, 3 * SNAPSHOT_EVERY);
    assert_eq!(
        serde_json::to_value(&loaded.aggregate).unwrap(),
        full_fold(&pool, &id).await
    );
    // The events stay the truth: nothing about them changed.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events").await,
        3 * SNAPSHOT_EVERY as i64 + 7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_older_shape_is_ignored_and_replaced() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let store = Store::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    register(&store, &id).await;
    swing_door(&store, &id, SNAPSHOT_EVERY + 3).await;
    let (_, current) = snapshot_row(&pool, &id).await.unwrap();

    // What older code would have left: another shape, a state that would read as a device (the
    // door open, no registration) but is not this one.
    sqlx::query(
        "UPDATE snapshots SET shape = '0-older', last_sequence = 4,
                state = jsonb_set(state, '{registered}', 'false')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let loaded = store.devices.load_with_position(&id).await.unwrap();
    assert_eq!(loaded.sequence, SNAPSHOT_EVERY + 4);
    assert!(loaded.aggregate.registered, "the old snapshot was not read");
    assert_eq!(
        serde_json::to_value(&loaded.aggregate).unwrap(),
        full_fold(&pool, &id).await
    );
    // The fold was long enough for a snapshot of its own, which replaced the old one.
    assert_eq!(
        snapshot_row(&pool, &id).await,
        Some((SNAPSHOT_EVERY as i64 + 4, current))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_read_is_ignored() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let store = Store::new(pool.clone());
    let id = Uuid::now_v7().to_string();
    register(&store, &id).await;
    swing_door(&store, &id, SNAPSHOT_EVERY).await;
    sqlx::query("UPDATE snapshots SET state = '[\"not\", \"a device\"]'")
        .execute(&pool)
        .await
        .unwrap();
    // A command still runs on the true state, and its load leaves a good snapshot behind.
    swing_door(&store, &id, 1).await;
    assert_eq!(
        snapshot_row(&pool, &id).await.map(|(at, _)| at),
        Some(SNAPSHOT_EVERY as i64 + 1)
    );
    let loaded = store.devices.load(&id).await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        full_fold(&pool, &id).await
    );
}

/// A device registered by the prototype cabinets (DeviceRegistered version 0: `name`, no
/// `kind`) reads as a vending cabinet through every path that loads devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_device_reads_through_the_upcasters_everywhere() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('device', $1, 1, 'DeviceRegistered', '0', $2, $3)",
    )
    .bind(id.to_string())
    .bind(json!({"DeviceRegistered": {"device_id": id, "site": "610091A01", "name": "Prototype", "at": start_time()}}))
    .bind(json!({"actor": "operator:prototype", "correlation_id": id, "causation_id": id, "request_id": id}))
    .execute(&app.pool)
    .await
    .unwrap();

    // The store's own read.
    let store = Store::new(app.pool.clone());
    let device = store.devices.load(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(device.kind, Some(DeviceKind::Vending));
    assert_eq!(device.site.as_ref().map(|s| s.as_str()), Some("610091A01"));

    // The vending API's read: a vending cabinet takes a planogram.
    let res = app
        .http
        .put(format!("{}/devices/{id}/planogram", app.address))
        .bearer_auth(&app.operator)
        .json(
            &json!({"slots": [{"shelf": 1, "sku": "COLA", "name": "Cola", "unit_weight": 330,
                                  "tolerance": 10, "unit_price": 300, "currency": "CNY"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    // The lockers API's read: the prototype is not a locker door (a clear 422, not a 500).
    app.post(
        "/lockers/sites",
        &app.operator,
        Some(json!({"site": "610091A01", "name": "Test site"})),
    )
    .await;
    let res = app
        .post(
            "/lockers/compartments",
            &app.operator,
            Some(json!({"site": "610091A01", "number": "01", "size": "small", "door_device": id})),
        )
        .await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "door_not_a_locker");

    // The command path: the device decides on its upcast registration (offline, so refused).
    let res = app
        .post(&format!("/devices/{id}/open"), &app.operator, None)
        .await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "device_offline");
}

/// A count of its own events, so that an event applied twice shows in the state.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    count: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Counted;

impl cqrs_es::DomainEvent for Counted {
    fn event_type(&self) -> String {
        "Counted".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a tally never refuses")]
struct Never;

impl cqrs_es::Aggregate for Tally {
    const TYPE: &'static str = "tally";
    /// How many events to count.
    type Command = u64;
    type Event = Counted;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        n: u64,
        _services: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        for _ in 0..n {
            sink.write(Counted, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, _event: Counted) {
        self.count += 1;
    }
}

impl latch_domain::store::StateShape for Tally {}

async fn tally_snapshot(pool: &PgPool, id: &str) -> Option<(i64, Value)> {
    sqlx::query_as(
        "SELECT last_sequence, state FROM snapshots WHERE aggregate_type = 'tally' AND aggregate_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_as_a_command_commits_holds_each_of_its_events_once() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let tallies = latch_domain::store::AggregateStore::<Tally>::new(pool.clone(), 3);
    let ctx = CommandContext::new("operator:test");
    let id = Uuid::now_v7().to_string();
    tallies
        .execute(&id, "count", SNAPSHOT_EVERY as u64 - 1, &ctx)
        .await
        .unwrap();
    assert_eq!(tally_snapshot(&pool, &id).await, None, "not due yet");

    // This command's append crosses the threshold, so its commit writes the snapshot.
    tallies.execute(&id, "count", 3, &ctx).await.unwrap();
    let total = SNAPSHOT_EVERY as u64 + 2;
    let (at, state) = tally_snapshot(&pool, &id).await.expect("a snapshot");
    assert_eq!(at, total as i64);
    assert_eq!(state, json!({ "count": total }), "each event counted once");

    let loaded = tallies.load_with_position(&id).await.unwrap();
    assert_eq!(loaded.snapshot_sequence, total as usize);
    assert_eq!(loaded.aggregate.count, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_a_state_read_earlier_appends_after_what_others_wrote_since() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let tallies = latch_domain::store::AggregateStore::<Tally>::new(pool.clone(), 3);
    let ctx = CommandContext::new("operator:test");
    let id = Uuid::now_v7().to_string();
    tallies.execute(&id, "count", 2, &ctx).await.unwrap();

    let read = tallies.load_with_position(&id).await.unwrap();
    assert_eq!(read.sequence, 2);
    // Someone else moves the stream on after that read...
    tallies.execute(&id, "count", 1, &ctx).await.unwrap();
    // ...so deciding on the read state conflicts, and the retry reads for real.
    let done = tallies
        .execute_on(read, &id, "count", 2, &CommandContext::new("operator:test"))
        .await
        .unwrap();
    assert_eq!(done.events.len(), 2);
    let now = tallies.load_with_position(&id).await.unwrap();
    assert_eq!(now.sequence, 5);
    assert_eq!(now.aggregate.count, 5);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'tally'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 5, "nothing lost, nothing written twice");
}
