//! Reads of the lockers model for the API and the lockers sweeper: compartments and who holds
//! them (now and at any past moment), their booked windows, compartments free for a window, grant requests, users,
//! authorizers and the inbox. Nothing outside this crate writes SQL against these tables.

pub use super::windows::WindowRow;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A compartment as the ownership read model holds it, with its door as the device-status
/// model last saw it (both `None` while no door is wired).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CompartmentRow {
    pub compartment_id: String,
    pub site: String,
    /// The site's name, when the site is known to the read model.
    pub site_name: Option<String>,
    pub number: String,
    pub size: String,
    pub status: String,
    pub holder: Option<String>,
    pub window_start: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub depositor: Option<String>,
    pub parcel: Option<String>,
    pub door_device: Option<Uuid>,
    /// `open`, `closed` or `unknown`.
    pub door: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Its booked windows, by start (a locker user sees only their own).
    #[sqlx(skip)]
    pub windows: Vec<WindowRow>,
}

const COMPARTMENT_ROW: &str = "SELECT c.compartment_id, c.site, s.name AS site_name, c.number, c.size,
        c.status, c.holder, c.window_start, c.expires_at, c.depositor, c.parcel, c.door_device, d.door,
        c.updated_at
   FROM locker_compartments c LEFT JOIN device_status d ON d.device_id = c.door_device
   LEFT JOIN locker_sites s ON s.site = c.site";

/// The compartments `user` holds a window of, now or later, each with `user`'s windows.
pub async fn held_by(pool: &PgPool, user: &str) -> Result<Vec<CompartmentRow>, sqlx::Error> {
    let mut rows: Vec<CompartmentRow> = sqlx::query_as(&format!(
        "{COMPARTMENT_ROW} WHERE c.holder = $1 OR EXISTS
           (SELECT 1 FROM locker_windows w WHERE w.compartment_id = c.compartment_id AND w.holder = $1)
         ORDER BY c.compartment_id"
    ))
    .bind(user)
    .fetch_all(pool)
    .await?;
    for row in &mut rows {
        row.windows = windows_of(pool, &row.compartment_id, Some(user)).await?;
    }
    Ok(rows)
}

/// One compartment, with its windows (only `user`'s, if given).
pub async fn compartment(
    pool: &PgPool,
    id: &str,
    user: Option<&str>,
) -> Result<Option<CompartmentRow>, sqlx::Error> {
    let row: Option<CompartmentRow> =
        sqlx::query_as(&format!("{COMPARTMENT_ROW} WHERE c.compartment_id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    row.windows = windows_of(pool, id, user).await?;
    Ok(Some(row))
}

/// The booked windows of `compartment` (only `user`'s, if given), by start.
pub async fn windows_of(
    pool: &PgPool,
    compartment: &str,
    user: Option<&str>,
) -> Result<Vec<WindowRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT holder, starts_at, ends_at FROM locker_windows
          WHERE compartment_id = $1 AND ($2::text IS NULL OR holder = $2) ORDER BY starts_at",
    )
    .bind(compartment)
    .bind(user)
    .fetch_all(pool)
    .await
}

/// Who held `compartment` at `at` (None: nobody).
pub async fn holder_at(
    pool: &PgPool,
    compartment: &str,
    at: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT holder FROM compartment_holders
          WHERE compartment_id = $1 AND held_from <= $2 AND (held_to IS NULL OR held_to > $2)
          ORDER BY position DESC LIMIT 1",
    )
    .bind(compartment)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(h,)| h))
}

/// Up to `limit` compartments of `size` at `site` free for [start, end) as of `now` (no parcel
/// in, no window still running that overlaps), in compartment-number order: the candidates a
/// reservation tries in turn.
pub async fn free_compartments(
    pool: &PgPool,
    site: &str,
    size: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.compartment_id FROM locker_compartments c
          WHERE c.site = $1 AND c.size = $2 AND c.status <> 'occupied'
            AND NOT EXISTS (SELECT 1 FROM locker_windows w
                             WHERE w.compartment_id = c.compartment_id AND w.ends_at > $5
                               AND w.starts_at < $4 AND $3 < w.ends_at)
          ORDER BY c.number LIMIT $6",
    )
    .bind(site)
    .bind(size)
    .bind(window.0)
    .bind(window.1)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many compartments of `size` at `site` have no parcel in (so a reservation that found
/// none free for its window was refused for the window, not for the size).
pub async fn bookable_compartments(
    pool: &PgPool,
    site: &str,
    size: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM locker_compartments
          WHERE site = $1 AND size = $2 AND status <> 'occupied'",
    )
    .bind(site)
    .bind(size)
    .fetch_one(pool)
    .await
}

/// Compartments with a booked window that ended by `now` (at most `limit`).
pub async fn expired_reservations(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT compartment_id FROM locker_windows WHERE ends_at <= $1 LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Grant requests still unanswered at their deadline, by `now` (at most `limit`).
pub async fn overdue_grants(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT grant_id FROM grant_requests WHERE status = 'requested' AND deadline <= $1 LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One entry of a user's notification inbox.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InboxItem {
    pub kind: String,
    pub grant_id: Option<Uuid>,
    pub compartment_id: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// The newest 100 inbox entries of `recipient` (e.g. `user:13800000000`), newest first.
pub async fn inbox(pool: &PgPool, recipient: &str) -> Result<Vec<InboxItem>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, grant_id, compartment_id, message, created_at FROM locker_inbox
          WHERE recipient = $1 ORDER BY position DESC, kind LIMIT 100",
    )
    .bind(recipient)
    .fetch_all(pool)
    .await
}

/// An active authorizer as users may see it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuthorizerRow {
    pub number: String,
    pub name: String,
    pub status: String,
}

/// The active authorizers, by number.
pub async fn active_authorizers(pool: &PgPool) -> Result<Vec<AuthorizerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT number, name, status FROM locker_authorizers WHERE status = 'active' ORDER BY number",
    )
    .fetch_all(pool)
    .await
}

/// A locker user's display name (`None`: the model does not know the user).
pub async fn user_name(pool: &PgPool, user_number: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM locker_users WHERE user_number = $1")
        .bind(user_number)
        .fetch_optional(pool)
        .await
}

/// A grant request as its requester (or an operator) sees it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GrantRow {
    pub grant_id: Uuid,
    pub compartment_id: String,
    pub size: String,
    pub requester: String,
    pub kind: String,
    pub authorizer: Option<String>,
    pub receiver: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub deadline: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One grant request.
pub async fn grant(pool: &PgPool, grant_id: Uuid) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT grant_id, compartment_id, size, requester, kind, authorizer, receiver, status, reason,
                deadline, requested_at, updated_at
           FROM grant_requests WHERE grant_id = $1",
    )
    .bind(grant_id)
    .fetch_optional(pool)
    .await
}

/// A site as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SiteRow {
    pub site: String,
    pub name: String,
    pub registered_at: DateTime<Utc>,
}

/// Up to `limit` sites, by site code.
pub async fn sites(pool: &PgPool, limit: i64) -> Result<Vec<SiteRow>, sqlx::Error> {
    sqlx::query_as("SELECT site, name, registered_at FROM locker_sites ORDER BY site LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The compartments at `sites` (with their holders and doors), by site and number.
pub async fn compartments_at(
    pool: &PgPool,
    sites: &[String],
) -> Result<Vec<CompartmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{COMPARTMENT_ROW} WHERE c.site = ANY($1) ORDER BY c.site, c.number"
    ))
    .bind(sites)
    .fetch_all(pool)
    .await
}

/// Grant requests not settled yet (`requested` or `accepted`), oldest first, at most `limit`.
pub async fn open_grants(pool: &PgPool, limit: i64) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT grant_id, compartment_id, size, requester, kind, authorizer, receiver, status, reason,
                deadline, requested_at, updated_at
           FROM grant_requests WHERE status IN ('requested', 'accepted')
          ORDER BY requested_at, grant_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
