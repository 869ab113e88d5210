//! The shopper's order, pushed (seed 000's "推送订单"): `GET /m/api/orders/{id}/events`, a
//! server-sent event stream. The current order goes first on every (re)connect, then each time
//! the log moves it: the handler listens to the session's events as the relay publishes them,
//! and sends the order once the read model has taken the event in (so the page never shows a
//! state older than the event that woke it). Polling `/m/api/orders/{id}` is only the page's
//! fallback.

use super::parse_session;
use super::shop::Shopper;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use cqrs_es::Aggregate;
use futures::{Stream, StreamExt};
use latch_domain::vending::ShoppingSession;
use latch_projections::audit::history;
use latch_projections::orders::{self, OrderRow};
use latch_projections::LoggedEvent;
use sqlx::PgPool;
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

/// How long an event may wait for the read model to take it in before the order is sent as
/// it stands. Generous: under load the projector may be seconds behind, and an event given up
/// on early would leave the page one state short until the next event.
const PROJECTION_WAIT: Duration = Duration::from_secs(30);

/// How long a quiet channel waits before it reads the order again anyway.
const IDLE_LOOK: Duration = Duration::from_secs(5);

struct Follow {
    pool: PgPool,
    user: String,
    sid: Uuid,
    events: async_nats::Subscriber,
    /// Position of the last order sent (0: none yet).
    sent: i64,
    first: bool,
}

impl Follow {
    /// The order, if it is this shopper's.
    async fn order(&self) -> Option<OrderRow> {
        match orders::queries::get(&self.pool, self.sid).await {
            Ok(Some(row)) if row.user_id == self.user => Some(row),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "order not readable for its push channel");
                None
            }
        }
    }

    /// The order once the read model holds the log up to `position`; as it stands after
    /// [`PROJECTION_WAIT`].
    async fn order_at(&self, position: i64) -> Option<OrderRow> {
        let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
        let mut row = self.order().await;
        let mut pause = Duration::from_millis(20);
        while row.as_ref().is_none_or(|r| r.last_position < position)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            row = self.order().await;
        }
        row
    }

    /// The order if it moved past what was sent.
    fn fresh(&mut self, row: Option<OrderRow>) -> Option<OrderRow> {
        match row {
            Some(row) if row.last_position > self.sent => {
                self.sent = row.last_position;
                Some(row)
            }
            _ => None,
        }
    }

    /// The next order to send: now on the first call, then after each event of the session.
    async fn next(&mut self) -> Option<OrderRow> {
        if self.first {
            // An event published before the subscription began is not heard, so the first
            // answer waits for the read model to hold everything this session has logged.
            let head =
                history::aggregate_head(&self.pool, ShoppingSession::TYPE, &self.sid.to_string())
                    .await
                    .unwrap_or(0);
            let row = self.order_at(head).await;
            self.first = false;
            if let Some(row) = row {
                self.sent = row.last_position;
                return Some(row);
            }
        }
        loop {
            // A quiet channel looks again now and then: core NATS drops what arrives while
            // it reconnects, and the page must not stay a state short for that.
            let position = match tokio::time::timeout(IDLE_LOOK, self.events.next()).await {
                Ok(Some(message)) => serde_json::from_slice::<LoggedEvent>(&message.payload)
                    .map(|e| e.position)
                    .unwrap_or(0),
                Ok(None) => return None,
                Err(_) => 0,
            };
            let row = self.order_at(position).await;
            if let Some(row) = self.fresh(row) {
                return Some(row);
            }
        }
    }
}

/// Follows one of the shopper's orders.
#[utoipa::path(get, path = "/m/api/orders/{session_id}/events", tag = "vending",
    params(("session_id" = Uuid, Path)),
    responses((status = 200, content_type = "text/event-stream",
               description = "`order` events, each the whole order (as `GET /m/api/orders/{id}`): the current one first, then on every change"),
              (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn order_events(
    State(state): State<AppState>,
    shopper: Shopper,
    Path(session_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let sid = parse_session(&session_id)?;
    // Listen first, then read: a change between the two is not lost.
    let subject = latch_nats::subjects::events_of_one(ShoppingSession::TYPE, &sid.to_string());
    let events = state
        .nats
        .subscribe(subject)
        .await
        .map_err(|e| ApiError::Unavailable(format!("push channel: {e}")))?;
    let user = shopper.user.as_str().to_owned();
    // Someone else's order is not found, as for GET; one not placed yet may still become theirs.
    if let Some(row) = orders::queries::get(&state.pool, sid).await? {
        if row.user_id != user {
            return Err(ApiError::NotFound {
                code: "order_not_found",
                message: format!("no order {sid} of yours"),
            });
        }
    }
    let follow = Follow {
        pool: state.pool.clone(),
        user,
        sid,
        events,
        sent: 0,
        first: true,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let row = f.next().await?;
        let event = Event::default()
            .event("order")
            .json_data(&row)
            .unwrap_or_else(|_| Event::default().event("order"));
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
