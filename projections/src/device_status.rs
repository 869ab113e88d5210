//! Device status: online, door, fault, pending remote opening, last event position.
//!
//! [`evolve`] is the whole projection as a pure function; the SQL projector and an in-memory
//! fold of the log (used to check the table) both call it, so they cannot disagree.

use crate::log::LoggedEvent;
use crate::projector::{apply_model, Model, Projection, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::device::{Device, DeviceEvent, OpenFailure};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

pub mod queries;

pub const NAME: &str = "device_status";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeviceStatus {
    pub device_id: Uuid,
    pub kind: String,
    pub site: String,
    pub label: String,
    pub registered_at: DateTime<Utc>,
    pub online: bool,
    pub door: String,
    /// When the door last opened or closed.
    pub door_changed_at: Option<DateTime<Utc>>,
    pub fault_code: Option<String>,
    pub fault_message: Option<String>,
    pub pending_open_request: Option<Uuid>,
    pub pending_open_deadline: Option<DateTime<Utc>>,
    pub last_open_request: Option<Uuid>,
    pub last_open_outcome: Option<String>,
    pub last_event_at: DateTime<Utc>,
    pub last_position: i64,
    /// The shopping session holding a vending cabinet, if any.
    pub current_session: Option<Uuid>,
    pub current_session_request: Option<Uuid>,
}

/// Parses a stored device event, telling an unknown type apart from a broken payload.
pub fn parse_device_event(event: &LoggedEvent) -> Result<DeviceEvent, ProjectionError> {
    let event = event.upcast();
    serde_json::from_value::<DeviceEvent>(event.payload.clone()).map_err(|e| {
        let known = event.event_version == DeviceEvent::VERSION
            && serde_json::from_value::<serde_json::Value>(event.payload.clone())
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
                .is_some_and(|k| k == event.event_type && KNOWN_TYPES.contains(&k.as_str()));
        if known {
            ProjectionError::BadPayload {
                position: event.position,
                detail: e.to_string(),
            }
        } else {
            ProjectionError::UnknownEvent {
                position: event.position,
                aggregate_type: event.aggregate_type.clone(),
                event_type: event.event_type.clone(),
                version: event.event_version.clone(),
            }
        }
    })
}

const KNOWN_TYPES: &[&str] = &[
    "DeviceRegistered",
    "DeviceCameOnline",
    "DeviceWentOffline",
    "DoorOpened",
    "DoorClosed",
    "FaultRaised",
    "FaultCleared",
    "DoorOpenRequested",
    "DoorOpenConfirmed",
    "DoorOpenFailed",
    "ShoppingSessionEnded",
];

/// The next state of one device's row after `event`. Events of other aggregates never reach
/// this function.
pub fn evolve(
    current: Option<DeviceStatus>,
    event: &LoggedEvent,
) -> Result<Option<DeviceStatus>, ProjectionError> {
    use DeviceEvent as E;
    let parsed = parse_device_event(event)?;
    let mut row = match (current, parsed) {
        (
            None,
            E::DeviceRegistered {
                device_id,
                kind,
                site,
                label,
                at,
            },
        ) => {
            return Ok(Some(DeviceStatus {
                device_id: device_id.as_uuid(),
                kind: kind.as_str().to_owned(),
                site: site.as_str().to_owned(),
                label: label.as_str().to_owned(),
                registered_at: at,
                online: false,
                door: "unknown".to_owned(),
                door_changed_at: None,
                fault_code: None,
                fault_message: None,
                pending_open_request: None,
                pending_open_deadline: None,
                last_open_request: None,
                last_open_outcome: None,
                last_event_at: at,
                last_position: event.position,
                current_session: None,
                current_session_request: None,
            }))
        }
        // The aggregate refuses everything before registration, so this is unreachable for a
        // healthy log; keep the model unchanged rather than invent a device.
        (None, _) => return Ok(None),
        (Some(row), parsed) => {
            let mut row = row;
            match &parsed {
                E::DeviceRegistered { .. } => {}
                E::DeviceCameOnline { .. } => row.online = true,
                E::DeviceWentOffline { .. } => row.online = false,
                E::DoorOpened { at, .. } => {
                    row.door = "open".to_owned();
                    row.door_changed_at = Some(*at);
                }
                E::DoorClosed { at, .. } => {
                    row.door = "closed".to_owned();
                    row.door_changed_at = Some(*at);
                }
                E::FaultRaised { code, message, .. } => {
                    row.fault_code = Some(code.as_str().to_owned());
                    row.fault_message = Some(message.as_str().to_owned());
                }
                E::FaultCleared { .. } => {
                    row.fault_code = None;
                    row.fault_message = None;
                }
                E::DoorOpenRequested {
                    request_id,
                    deadline,
                    shopper,
                    ..
                } => {
                    if let Some(shopper) = shopper {
                        row.current_session = Some(shopper.session_id);
                        row.current_session_request = Some(*request_id);
                    }
                    row.pending_open_request = Some(*request_id);
                    row.pending_open_deadline = Some(*deadline);
                }
                E::DoorOpenConfirmed { request_id, .. } => {
                    row.pending_open_request = None;
                    row.pending_open_deadline = None;
                    row.last_open_request = Some(*request_id);
                    row.last_open_outcome = Some("confirmed".to_owned());
                }
                E::DoorOpenFailed {
                    request_id,
                    failure,
                    ..
                } => {
                    if row.current_session_request == Some(*request_id) {
                        row.current_session = None;
                        row.current_session_request = None;
                    }
                    row.pending_open_request = None;
                    row.pending_open_deadline = None;
                    row.last_open_request = Some(*request_id);
                    row.last_open_outcome = Some(match failure {
                        OpenFailure::Timeout => "timeout".to_owned(),
                        OpenFailure::Refused { reason } => format!("refused: {reason}"),
                    });
                }
                E::ShoppingSessionEnded { session_id, .. } => {
                    if row.current_session == Some(*session_id) {
                        row.current_session = None;
                        row.current_session_request = None;
                    }
                }
            }
            row.last_event_at = parsed.at();
            row
        }
    };
    row.last_position = event.position;
    Ok(Some(row))
}

pub fn device_uuid(event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&event.aggregate_id).map_err(|e| ProjectionError::BadPayload {
        position: event.position,
        detail: format!("device aggregate id: {e}"),
    })
}

/// The live projector's [`Projection`] over the `device_status` table.
#[derive(Debug, Clone, Default)]
pub struct DeviceStatusProjection;

impl Projection for DeviceStatusProjection {
    fn name(&self) -> &str {
        NAME
    }

    fn wants(&self, aggregate_type: &str) -> bool {
        aggregate_type == Model::aggregate_type(self)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> Result<(), ProjectionError> {
        apply_model(self, conn, events).await
    }
}

impl Model for DeviceStatusProjection {
    type Row = DeviceStatus;
    fn name(&self) -> &'static str {
        NAME
    }
    fn aggregate_type(&self) -> &'static str {
        Device::TYPE
    }
    fn key(&self, event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
        device_uuid(event)
    }
    fn evolve(
        &self,
        current: Option<DeviceStatus>,
        event: &LoggedEvent,
    ) -> Result<Option<DeviceStatus>, ProjectionError> {
        evolve(current, event)
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        table: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, DeviceStatus)>, sqlx::Error> {
        let rows = load_rows(conn, table, ids).await?;
        Ok(rows.into_iter().map(|r| (r.device_id, r)).collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        table: &str,
        rows: &[&DeviceStatus],
    ) -> Result<(), sqlx::Error> {
        upsert_into(conn, table, rows).await
    }
}

/// The rows of `table` (the live `device_status` or a rebuild's shadow copy) for `ids`.
pub async fn load_rows(
    conn: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<Vec<DeviceStatus>, sqlx::Error> {
    sqlx::query_as::<_, DeviceStatus>(&format!("SELECT * FROM {table} WHERE device_id = ANY($1)"))
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Inserts or replaces `rows` in `table` (the live `device_status` or a rebuild's shadow copy).
pub async fn upsert_into(
    conn: &mut PgConnection,
    table: &str,
    rows: &[&DeviceStatus],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(1000) {
        upsert(conn, table, chunk).await?;
    }
    Ok(())
}

async fn upsert(
    conn: &mut PgConnection,
    table: &str,
    rows: &[&DeviceStatus],
) -> Result<(), sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO {table} (device_id, kind, site, label, registered_at, online, door,
             door_changed_at, fault_code, fault_message, pending_open_request, pending_open_deadline,
             last_open_request, last_open_outcome, last_event_at, last_position,
             current_session, current_session_request) "
    ));
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.device_id)
            .push_bind(&r.kind)
            .push_bind(&r.site)
            .push_bind(&r.label)
            .push_bind(r.registered_at)
            .push_bind(r.online)
            .push_bind(&r.door)
            .push_bind(r.door_changed_at)
            .push_bind(&r.fault_code)
            .push_bind(&r.fault_message)
            .push_bind(r.pending_open_request)
            .push_bind(r.pending_open_deadline)
            .push_bind(r.last_open_request)
            .push_bind(&r.last_open_outcome)
            .push_bind(r.last_event_at)
            .push_bind(r.last_position)
            .push_bind(r.current_session)
            .push_bind(r.current_session_request);
    });
    q.push(
        " ON CONFLICT (device_id) DO UPDATE SET
             kind = EXCLUDED.kind, site = EXCLUDED.site, label = EXCLUDED.label,
             registered_at = EXCLUDED.registered_at, online = EXCLUDED.online,
             door = EXCLUDED.door, door_changed_at = EXCLUDED.door_changed_at,
             fault_code = EXCLUDED.fault_code,
             fault_message = EXCLUDED.fault_message,
             pending_open_request = EXCLUDED.pending_open_request,
             pending_open_deadline = EXCLUDED.pending_open_deadline,
             last_open_request = EXCLUDED.last_open_request,
             last_open_outcome = EXCLUDED.last_open_outcome,
             last_event_at = EXCLUDED.last_event_at, last_position = EXCLUDED.last_position,
             current_session = EXCLUDED.current_session,
             current_session_request = EXCLUDED.current_session_request",
    );
    // One statement text per row count: not kept as a prepared statement, or every batch size
    // seen would stay in each connection's statement cache (sqlx keeps 100 per connection, a
    // 1,000-row upsert's description is tens of KiB) and in each Postgres backend. That cache
    // was what grew `latch serve` by ~470 bytes per command in the soak bench.
    q.build().persistent(false).execute(conn).await?;
    Ok(())
}

/// Every row of the table, by device id.
pub async fn load_all(pool: &PgPool) -> Result<BTreeMap<Uuid, DeviceStatus>, sqlx::Error> {
    let rows = sqlx::query_as::<_, DeviceStatus>("SELECT * FROM device_status")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.device_id, r)).collect())
}

/// What the table must hold: a fold of the whole log in memory, from position 0.
pub async fn fold_log(pool: &PgPool) -> Result<BTreeMap<Uuid, DeviceStatus>, ProjectionError> {
    let mut model: BTreeMap<Uuid, DeviceStatus> = BTreeMap::new();
    let mut after = 0;
    loop {
        let events = crate::log::read_range(pool, after, None, 5000).await?;
        let Some(last) = events.last() else {
            return Ok(model);
        };
        after = last.position;
        for event in events.iter().filter(|e| e.aggregate_type == Device::TYPE) {
            let id = device_uuid(event)?;
            if let Some(next) = evolve(model.remove(&id), event)? {
                model.insert(id, next);
            }
        }
    }
}
