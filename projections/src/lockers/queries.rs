//! Reads of the lockers model for the API and the lockers sweeper: compartments and who holds
//! them (now and at any past moment), free compartments to reserve, grant requests, users,
//! authorizers and the inbox. Nothing outside this crate writes SQL against these tables.

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
}

const COMPARTMENT_ROW: &str = "SELECT c.compartment_id, c.site, s.name AS site_name, c.number, c.size,
        c.status, c.holder, c.window_start, c.expires_at, c.depositor, c.parcel, c.door_device, d.door,
        c.updated_at
   FROM locker_compartments c LEFT JOIN device_status d ON d.device_id = c.door_device
   LEFT JOIN locker_sites s ON s.site = c.site";

/// The compartments `user` holds now.
pub async fn held_by(pool: &PgPool, user: &str) -> Result<Vec<CompartmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{COMPARTMENT_ROW} WHERE c.holder = $1 ORDER BY c.compartment_id"
    ))
    .bind(user)
    .fetch_all(pool)
    .await
}

/// One compartment.
pub async fn compartment(pool: &PgPool, id: &str) -> Result<Option<CompartmentRow>, sqlx::Error> {
    sqlx::query_as(&format!("{COMPARTMENT_ROW} WHERE c.compartment_id = $1"))
        .bind(id)
        .fetch_optional(pool)
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

/// Up to `limit` free compartments of `size` at `site`, in compartment-number order: the
/// candidates a reservation tries in turn.
pub async fn free_compartments(
    pool: &PgPool,
    site: &str,
    size: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT compartment_id FROM locker_compartments
          WHERE site = $1 AND size = $2 AND status = 'free' ORDER BY number LIMIT $3",
    )
    .bind(site)
    .bind(size)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Reserved compartments whose reservation ran out by `now` (at most `limit`).
pub async fn expired_reservations(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT compartment_id FROM locker_compartments
          WHERE status = 'reserved' AND expires_at <= $1 LIMIT $2",
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
