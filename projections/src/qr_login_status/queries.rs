//! Reads of the QR-login status model (operators, audits and the sweeper's expiries).

use super::QrLoginStatus;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn get(pool: &PgPool, login_id: Uuid) -> Result<Option<QrLoginStatus>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM qr_login_status WHERE login_id = $1")
        .bind(login_id)
        .fetch_optional(pool)
        .await
}

/// Live logins whose deadline (the code's, or the redeem window's once confirmed) is past `now`.
pub async fn due(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT login_id FROM qr_login_status
          WHERE state IN ('waiting', 'scanned', 'confirmed') AND coalesce(redeem_by, expires_at) <= $1
          ORDER BY coalesce(redeem_by, expires_at) LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
