//! Read models as they stood at a past moment, computed from the log.
//!
//! "At T" means: every logged event recorded at or before T, folded in log order with the same
//! pure `evolve` functions the live projectors use (so at the present the answer equals the live
//! read model). Each read model is a fold per aggregate, and an aggregate's events are recorded
//! in sequence order, so cutting by recording time never splits an aggregate's history out of
//! order.

use crate::device_status::{self, DeviceStatus};
use crate::lockers::windows::{self, WindowRow};
use crate::lockers::{self, Change};
use crate::orders::{self, OrderRow};
use crate::qr_login_status::{self, QrLoginStatus};
use crate::{LoggedEvent, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::device::Device;
use latch_domain::locker::Compartment;
use latch_domain::qr_login::QrLogin;
use latch_domain::vending::ShoppingSession;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsOf {
    pub at: DateTime<Utc>,
    /// The last log position folded in (0: nothing had happened yet).
    pub position: i64,
    /// Events folded.
    pub events: u64,
    pub devices: Vec<DeviceStatus>,
    pub qr_logins: Vec<QrLoginStatus>,
    /// Orders (one per shopping session) as they stood; empty when narrowed to one device.
    pub orders: Vec<OrderRow>,
    /// Locker compartments and who held them; empty when narrowed to one device.
    pub compartments: Vec<CompartmentAsOf>,
}

/// A compartment as the lockers read model (`locker_compartments`) had it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompartmentAsOf {
    pub compartment_id: String,
    pub site: String,
    pub number: String,
    pub size: String,
    /// `free`, `reserved` or `occupied`.
    pub status: String,
    pub holder: Option<String>,
    pub window_start: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub depositor: Option<String>,
    pub parcel: Option<String>,
    pub door_device: Option<Uuid>,
    /// Its booked windows (`locker_windows`), by start.
    pub windows: Vec<WindowRow>,
}

/// The lockers projection's changes to a compartment row, in memory: the same `evolve` the
/// live projector turns into SQL.
fn fold_compartment(rows: &mut BTreeMap<String, CompartmentAsOf>, change: Change) {
    match change {
        Change::CompartmentInstalled {
            id,
            site,
            number,
            size,
            door,
            ..
        } => {
            rows.entry(id.clone()).or_insert(CompartmentAsOf {
                compartment_id: id,
                site,
                number,
                size,
                status: "free".into(),
                holder: None,
                window_start: None,
                expires_at: None,
                depositor: None,
                parcel: None,
                door_device: door,
                windows: Vec::new(),
            });
        }
        Change::DoorWired { id, door, .. } => {
            if let Some(row) = rows.get_mut(&id) {
                row.door_device = Some(door);
            }
        }
        Change::WindowBooked { ref id, .. }
        | Change::WindowHandedOn { ref id, .. }
        | Change::WindowLapsed { ref id, .. }
        | Change::WindowUsed { ref id, .. } => {
            if let Some(row) = rows.get_mut(id) {
                windows::apply(&mut row.windows, &change);
            }
        }
        // As the SQL does: the earliest window shows, unless a parcel is in.
        Change::CurrentWindow { id, .. } => {
            if let Some(row) = rows.get_mut(&id) {
                if row.status != "occupied" {
                    let first = row.windows.first().cloned();
                    row.status = if first.is_some() { "reserved" } else { "free" }.into();
                    row.holder = first.as_ref().map(|w| w.holder.clone());
                    row.window_start = first.as_ref().map(|w| w.starts_at);
                    row.expires_at = first.map(|w| w.ends_at);
                }
            }
        }
        Change::Deposited {
            id,
            depositor,
            parcel,
            ..
        } => {
            if let Some(row) = rows.get_mut(&id) {
                row.status = "occupied".into();
                row.holder = None;
                row.depositor = Some(depositor);
                row.parcel = Some(parcel);
            }
        }
        Change::Freed { id, .. } => {
            if let Some(row) = rows.get_mut(&id) {
                row.status = "free".into();
                row.holder = None;
                row.window_start = None;
                row.expires_at = None;
                row.depositor = None;
                row.parcel = None;
            }
        }
        _ => {}
    }
}

fn logged(row: &PgRow) -> Result<LoggedEvent, sqlx::Error> {
    Ok(LoggedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: serde_json::Value::Null,
        recorded_at: row.try_get("recorded_at")?,
        hash: String::new(),
    })
}

/// The device-status, QR-login-status, orders and locker-compartment models at `at`. `device` narrows the answer (and the
/// fold) to one device.
pub async fn as_of(
    pool: &PgPool,
    at: DateTime<Utc>,
    device: Option<Uuid>,
) -> Result<AsOf, ProjectionError> {
    let mut devices: BTreeMap<Uuid, DeviceStatus> = BTreeMap::new();
    let mut logins: BTreeMap<Uuid, QrLoginStatus> = BTreeMap::new();
    let mut order_rows: BTreeMap<Uuid, OrderRow> = BTreeMap::new();
    let mut compartments: BTreeMap<String, CompartmentAsOf> = BTreeMap::new();
    let types: Vec<&str> = if device.is_some() {
        vec![Device::TYPE]
    } else {
        vec![
            Device::TYPE,
            QrLogin::TYPE,
            ShoppingSession::TYPE,
            Compartment::TYPE,
        ]
    };
    let device_id = device.map(|d| d.to_string());
    let (mut after, mut position, mut events) = (0i64, 0i64, 0u64);
    loop {
        let rows = sqlx::query(
            "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
                    e.event_type, e.event_version, e.payload, e.recorded_at
               FROM event_log l JOIN events e ON e.event_id = l.event_id
              WHERE l.position > $1 AND e.recorded_at <= $2 AND e.aggregate_type = ANY($3)
                AND ($4::text IS NULL OR e.aggregate_id = $4)
              ORDER BY l.position LIMIT 5000",
        )
        .bind(after)
        .bind(at)
        .bind(&types)
        .bind(&device_id)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let event = logged(row)?;
            after = event.position;
            position = event.position;
            events += 1;
            if event.aggregate_type == Device::TYPE {
                let id = device_status::device_uuid(&event)?;
                if let Some(next) = device_status::evolve(devices.remove(&id), &event)? {
                    devices.insert(id, next);
                }
            } else if event.aggregate_type == ShoppingSession::TYPE {
                let id = orders::session_uuid(&event)?;
                if let Some(next) = orders::evolve(order_rows.remove(&id), &event)? {
                    order_rows.insert(id, next);
                }
            } else if event.aggregate_type == Compartment::TYPE {
                for change in lockers::evolve(&event.upcast())? {
                    fold_compartment(&mut compartments, change);
                }
            } else if event.aggregate_type == QrLogin::TYPE {
                let id = qr_login_status::login_uuid(&event)?;
                if let Some(next) = qr_login_status::evolve(logins.remove(&id), &event)? {
                    logins.insert(id, next);
                }
            }
        }
    }
    Ok(AsOf {
        at,
        position,
        events,
        devices: devices.into_values().collect(),
        qr_logins: logins.into_values().collect(),
        orders: order_rows.into_values().collect(),
        compartments: compartments.into_values().collect(),
    })
}
