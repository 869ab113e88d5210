//! Orders: one row per shopping session, for the shopper's phone (per user), the cabinet's
//! history (per device) and operators (reviews to resolve), with status and totals in minor
//! units.
//!
//! As with device status, [`evolve`] is the whole projection as a pure function of the
//! previous row and one event.

use crate::log::LoggedEvent;
use crate::projector::{apply_model, Model, Projection, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::vending::{ShoppingEvent, ShoppingSession};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

pub mod queries;

pub const NAME: &str = "orders";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderRow {
    pub session_id: Uuid,
    pub user_id: String,
    pub device_id: Uuid,
    pub site: String,
    /// open, placed, needs_review, no_charge, abandoned, payment_pending, paid, refunded.
    pub status: String,
    /// Each line: shelf, sku, name, quantity, unit_price, line_total (money as
    /// `{minor, currency}`).
    #[schema(value_type = Vec<Object>)]
    pub lines: Json<serde_json::Value>,
    pub total_minor: Option<i64>,
    pub currency: String,
    #[schema(value_type = Option<Vec<Object>>)]
    pub review_reasons: Option<Json<serde_json::Value>>,
    /// The latest payment attempt.
    pub payment_id: Option<Uuid>,
    /// Every payment attempt, oldest first, so a callback for any of them finds its order.
    /// Internal: not part of the order as the API shows it.
    #[serde(skip)]
    #[schema(ignore)]
    pub payment_ids: Vec<Uuid>,
    pub provider_ref: Option<String>,
    pub payment_error: Option<String>,
    pub paid_minor: Option<i64>,
    pub refunded_minor: i64,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
}

fn parse(event: &LoggedEvent) -> Result<ShoppingEvent, ProjectionError> {
    serde_json::from_value::<ShoppingEvent>(event.payload.clone()).map_err(|e| {
        if ShoppingEvent::TYPES.contains(&event.event_type.as_str()) && event.event_version == "1" {
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

fn json<T: Serialize>(value: &T) -> Json<serde_json::Value> {
    Json(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
}

/// The next state of one session's row after `event`.
pub fn evolve(
    current: Option<OrderRow>,
    event: &LoggedEvent,
) -> Result<Option<OrderRow>, ProjectionError> {
    use ShoppingEvent as E;
    let parsed = parse(event)?;
    let mut row = match (current, parsed) {
        (
            None,
            E::SessionStarted {
                session_id,
                device_id,
                site,
                user,
                planogram,
                at,
                ..
            },
        ) => OrderRow {
            session_id: session_id.as_uuid(),
            user_id: user.as_str().to_owned(),
            device_id: device_id.as_uuid(),
            site: site.as_str().to_owned(),
            status: "open".into(),
            lines: Json(serde_json::json!([])),
            total_minor: None,
            currency: planogram.currency().as_str().to_owned(),
            review_reasons: None,
            payment_id: None,
            payment_ids: Vec::new(),
            provider_ref: None,
            payment_error: None,
            paid_minor: None,
            refunded_minor: 0,
            opened_at: at,
            closed_at: None,
            paid_at: None,
            updated_at: at,
            last_position: event.position,
        },
        (None, _) => return Ok(None),
        (Some(mut row), parsed) => {
            match &parsed {
                E::SessionStarted { .. } | E::WeighingRecorded { .. } => {}
                E::OrderPlaced { lines, total, at } => {
                    row.status = "placed".into();
                    row.lines = json(lines);
                    row.total_minor = Some(total.minor());
                    row.closed_at = Some(*at);
                }
                E::OrderNeedsReview {
                    reasons,
                    provisional,
                    at,
                } => {
                    row.status = "needs_review".into();
                    row.lines = json(provisional);
                    row.review_reasons = Some(json(reasons));
                    row.closed_at = Some(*at);
                }
                E::SessionClosedEmpty { at } => {
                    row.status = "no_charge".into();
                    row.total_minor = Some(0);
                    row.closed_at = Some(*at);
                }
                E::SessionAbandoned { at, .. } => {
                    row.status = "abandoned".into();
                    row.total_minor = Some(0);
                    row.closed_at = Some(*at);
                }
                E::ReviewResolved { lines, total, .. } => {
                    row.status = if total.is_zero() {
                        "no_charge"
                    } else {
                        "placed"
                    }
                    .into();
                    row.lines = json(lines);
                    row.total_minor = Some(total.minor());
                }
                E::PaymentRequested { payment_id, .. } => {
                    row.status = "payment_pending".into();
                    row.payment_id = Some(*payment_id);
                    // Already there when migration 0021 filled the column from the log ahead
                    // of this projector's checkpoint.
                    if !row.payment_ids.contains(payment_id) {
                        row.payment_ids.push(*payment_id);
                    }
                    row.payment_error = None;
                }
                E::PaymentSucceeded {
                    amount,
                    provider_ref,
                    at,
                    ..
                } => {
                    row.status = "paid".into();
                    row.provider_ref = Some(provider_ref.as_str().to_owned());
                    row.paid_minor = Some(amount.minor());
                    row.paid_at = Some(*at);
                }
                E::PaymentFailed { reason, .. } => {
                    row.status = "placed".into();
                    row.payment_error = Some(reason.as_str().to_owned());
                }
                // A reservation: the order's figures change when the refund is done.
                E::RefundRequested { .. } | E::RefundFailed { .. } => {}
                E::Refunded { amount, .. } => {
                    row.refunded_minor += amount.minor();
                    if Some(row.refunded_minor) >= row.paid_minor {
                        row.status = "refunded".into();
                    }
                }
            }
            row.updated_at = parsed.at();
            row
        }
    };
    row.last_position = event.position;
    Ok(Some(row))
}

pub fn session_uuid(event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&event.aggregate_id).map_err(|e| ProjectionError::BadPayload {
        position: event.position,
        detail: format!("session aggregate id: {e}"),
    })
}

#[derive(Debug, Clone, Default)]
pub struct OrdersProjection;

impl Projection for OrdersProjection {
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

impl Model for OrdersProjection {
    type Row = OrderRow;
    fn name(&self) -> &'static str {
        NAME
    }
    fn aggregate_type(&self) -> &'static str {
        ShoppingSession::TYPE
    }
    fn key(&self, event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
        session_uuid(event)
    }
    fn evolve(
        &self,
        current: Option<OrderRow>,
        event: &LoggedEvent,
    ) -> Result<Option<OrderRow>, ProjectionError> {
        evolve(current, event)
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        table: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, OrderRow)>, sqlx::Error> {
        let rows = load_rows(conn, table, ids).await?;
        Ok(rows.into_iter().map(|r| (r.session_id, r)).collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        table: &str,
        rows: &[&OrderRow],
    ) -> Result<(), sqlx::Error> {
        upsert_into(conn, table, rows).await
    }
}

/// The rows of `ids` in `table` (the live `orders` or a rebuild's shadow copy).
pub async fn load_rows(
    conn: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as::<_, OrderRow>(&format!("SELECT * FROM {table} WHERE session_id = ANY($1)"))
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Inserts or replaces `rows` in `table`.
pub async fn upsert_into(
    conn: &mut PgConnection,
    table: &str,
    rows: &[&OrderRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(500) {
        upsert(conn, table, chunk).await?;
    }
    Ok(())
}

async fn upsert(
    conn: &mut PgConnection,
    table: &str,
    rows: &[&OrderRow],
) -> Result<(), sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO {table} (session_id, user_id, device_id, site, status, lines, total_minor,
             currency, review_reasons, payment_id, payment_ids, provider_ref, payment_error, paid_minor,
             refunded_minor, opened_at, closed_at, paid_at, updated_at, last_position) "
    ));
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.session_id)
            .push_bind(&r.user_id)
            .push_bind(r.device_id)
            .push_bind(&r.site)
            .push_bind(&r.status)
            .push_bind(&r.lines)
            .push_bind(r.total_minor)
            .push_bind(&r.currency)
            .push_bind(&r.review_reasons)
            .push_bind(r.payment_id)
            .push_bind(&r.payment_ids)
            .push_bind(&r.provider_ref)
            .push_bind(&r.payment_error)
            .push_bind(r.paid_minor)
            .push_bind(r.refunded_minor)
            .push_bind(r.opened_at)
            .push_bind(r.closed_at)
            .push_bind(r.paid_at)
            .push_bind(r.updated_at)
            .push_bind(r.last_position);
    });
    q.push(
        " ON CONFLICT (session_id) DO UPDATE SET
             status = EXCLUDED.status, lines = EXCLUDED.lines,
             total_minor = EXCLUDED.total_minor, review_reasons = EXCLUDED.review_reasons,
             payment_id = EXCLUDED.payment_id, payment_ids = EXCLUDED.payment_ids,
             provider_ref = EXCLUDED.provider_ref,
             payment_error = EXCLUDED.payment_error, paid_minor = EXCLUDED.paid_minor,
             refunded_minor = EXCLUDED.refunded_minor, closed_at = EXCLUDED.closed_at,
             paid_at = EXCLUDED.paid_at, updated_at = EXCLUDED.updated_at,
             last_position = EXCLUDED.last_position",
    );
    // One statement text per row count: not kept as a prepared statement, or every batch size
    // seen would stay in each connection's statement cache (sqlx keeps 100 per connection, a
    // 1,000-row upsert's description is tens of KiB) and in each Postgres backend. That cache
    // was what grew `latch serve` by ~470 bytes per command in the soak bench.
    q.build().persistent(false).execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use latch_domain::device::Label;
    use latch_domain::vending::values::Money;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn logged(position: i64, e: ShoppingEvent) -> LoggedEvent {
        use cqrs_es::DomainEvent;
        LoggedEvent {
            position,
            event_id: Uuid::from_u128(position as u128),
            aggregate_type: ShoppingSession::TYPE.into(),
            aggregate_id: Uuid::from_u128(1).to_string(),
            sequence: position,
            event_type: e.event_type(),
            event_version: e.event_version(),
            payload: serde_json::to_value(&e).unwrap(),
            metadata: serde_json::json!({}),
            recorded_at: t(position),
            hash: String::new(),
        }
    }

    fn placed() -> OrderRow {
        OrderRow {
            session_id: Uuid::from_u128(1),
            user_id: "kazaya:1".into(),
            device_id: Uuid::from_u128(2),
            site: "S1".into(),
            status: "placed".into(),
            lines: Json(serde_json::json!([])),
            total_minor: Some(350),
            currency: "CNY".into(),
            review_reasons: None,
            payment_id: None,
            payment_ids: Vec::new(),
            provider_ref: None,
            payment_error: None,
            paid_minor: None,
            refunded_minor: 0,
            opened_at: t(0),
            closed_at: Some(t(1)),
            paid_at: None,
            updated_at: t(1),
            last_position: 1,
        }
    }

    #[test]
    fn every_payment_attempt_stays_findable_once_each() {
        let amount = Money::parse("amount", 350, "CNY").unwrap();
        let (first, second) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let requested = |payment_id| ShoppingEvent::PaymentRequested {
            payment_id,
            amount,
            at: t(2),
        };
        let failed = ShoppingEvent::PaymentFailed {
            payment_id: first,
            reason: Label::parse("reason", "declined", 200).unwrap(),
            at: t(3),
        };
        let mut row = Some(placed());
        for (position, e) in [
            requested(first),
            failed,
            requested(second),
            // Already present (migration 0021 filled it ahead of the checkpoint): not twice.
            requested(second),
        ]
        .into_iter()
        .enumerate()
        {
            row = evolve(row, &logged(position as i64 + 2, e)).unwrap();
        }
        let row = row.unwrap();
        assert_eq!(row.payment_id, Some(second));
        assert_eq!(row.payment_ids, vec![first, second]);
        // Internal: the order as the API shows it is unchanged.
        assert!(serde_json::to_value(&row)
            .unwrap()
            .get("payment_ids")
            .is_none());
    }
}
