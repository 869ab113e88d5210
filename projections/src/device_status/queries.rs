//! Reads of the device-status model (with heartbeat liveness beside it) for the API and the
//! sweeper. Nothing outside this crate writes SQL against `device_status`.

use super::DeviceStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A device's status as the API shows it: the projected row plus heartbeat liveness.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeviceView {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub status: DeviceStatus,
    pub last_seen: Option<DateTime<Utc>>,
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DeviceView>, sqlx::Error> {
    sqlx::query_as::<_, DeviceView>(
        "SELECT s.*, l.last_seen FROM device_status s
           LEFT JOIN device_liveness l ON l.device_id = s.device_id
          WHERE s.device_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Every registered vending cabinet's id (at most `limit`), for telling a swapped sticker from
/// a forged one.
pub async fn vending_ids(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT device_id FROM device_status WHERE kind = 'vending' ORDER BY device_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn list(
    pool: &PgPool,
    site: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceView>, sqlx::Error> {
    sqlx::query_as::<_, DeviceView>(
        "SELECT s.*, l.last_seen FROM device_status s
           LEFT JOIN device_liveness l ON l.device_id = s.device_id
          WHERE $1::text IS NULL OR s.site = $1
          ORDER BY s.site, s.label, s.device_id
          LIMIT $2",
    )
    .bind(site)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Devices by state, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Fleet {
    pub online: i64,
    pub offline: i64,
    pub faulted: i64,
}

pub async fn fleet(pool: &PgPool) -> Result<Fleet, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE online) AS online,
                count(*) FILTER (WHERE NOT online) AS offline,
                count(*) FILTER (WHERE fault_code IS NOT NULL) AS faulted
           FROM device_status",
    )
    .fetch_one(pool)
    .await
}

/// Whether the model shows `id` online (`None`: not registered as far as the model knows).
pub async fn online(pool: &PgPool, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT online FROM device_status WHERE device_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A device shown online that has not been heard from since a cutoff.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Silent {
    pub device_id: Uuid,
    /// The last heartbeat, if any arrived since liveness was first kept.
    pub last_seen: Option<DateTime<Utc>>,
    pub last_event_at: DateTime<Utc>,
}

/// Devices the model shows online whose last sign of life (heartbeat, or else their last
/// event) is older than `before`.
pub async fn silent_since(
    pool: &PgPool,
    before: DateTime<Utc>,
) -> Result<Vec<Silent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.device_id, l.last_seen, s.last_event_at FROM device_status s
           LEFT JOIN device_liveness l ON l.device_id = s.device_id
          WHERE s.online AND coalesce(l.last_seen, s.last_event_at) < $1",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// `(device, open request)` for each remote opening whose deadline passed before `now`.
pub async fn overdue_openings(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT device_id, pending_open_request FROM device_status
          WHERE pending_open_request IS NOT NULL AND pending_open_deadline < $1",
    )
    .bind(now)
    .fetch_all(pool)
    .await
}

/// `(session, device)` for shopping sessions whose cabinet closed its door and then said
/// nothing since `before` (at most `limit`). Joined with `orders` so only sessions the orders
/// model already knows are settled from here.
pub async fn quiet_after_close(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.session_id, o.device_id FROM orders o
           JOIN device_status d ON d.device_id = o.device_id
          WHERE d.current_session = o.session_id
            AND d.door = 'closed' AND d.pending_open_request IS NULL
            AND coalesce(d.door_changed_at, d.last_event_at) < $1
          LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
