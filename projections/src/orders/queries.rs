//! Reads of the orders model: the shopper's phone, operators, and Kazaya's callbacks.

use super::OrderRow;
use sqlx::PgPool;
use uuid::Uuid;

pub async fn get(pool: &PgPool, session_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as::<_, OrderRow>("SELECT * FROM orders WHERE session_id = $1")
        .bind(session_id)
        .fetch_optional(pool)
        .await
}

/// Newest first.
pub async fn by_user(pool: &PgPool, user: &str, limit: i64) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as::<_, OrderRow>(
        "SELECT * FROM orders WHERE user_id = $1 ORDER BY opened_at DESC LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Newest first; `status` filters (e.g. `needs_review` for an operator's queue).
pub async fn list(
    pool: &PgPool,
    device: Option<Uuid>,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as::<_, OrderRow>(
        "SELECT * FROM orders
          WHERE ($1::uuid IS NULL OR device_id = $1) AND ($2::text IS NULL OR status = $2)
          ORDER BY opened_at DESC LIMIT $3",
    )
    .bind(device)
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The shopper's orders that block a new opening: charged and not paid, or in review.
pub async fn unpaid_of(pool: &PgPool, user: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT session_id FROM orders
          WHERE user_id = $1 AND status IN ('placed', 'needs_review', 'payment_pending')
          ORDER BY opened_at",
    )
    .bind(user)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The session that requested payment attempt `payment_id` (any attempt, not only the latest:
/// a late callback for an earlier attempt still finds its order).
pub async fn session_of_payment(
    pool: &PgPool,
    payment_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT session_id FROM orders WHERE payment_ids @> ARRAY[$1::uuid]")
        .bind(payment_id)
        .fetch_optional(pool)
        .await
}
