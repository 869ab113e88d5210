//! `GET /ops/live`: the console's push channel, a WebSocket fed from the log.
//!
//! It says which screens' data changed, not the data: `{"changed": ["fleet", "orders"]}`; the
//! page re-reads those screens from the JSON endpoints, so there is one way to read anything.
//! Every (re)connect begins with every screen, so a page that was away misses nothing. Then it
//! listens to the events the relay publishes (`latch.events.>`) and to dead letters as they are
//! kept (`latch.dlq.>`), gathers what arrives within [`GATHER`], and tells the page once the
//! read model behind each screen has taken the events in (so a re-read never shows a state
//! older than the event that woke it). Core NATS drops what arrives while it reconnects; the
//! page polls now and then as well, and reconnects.

use super::OpsCaller;
use crate::auth::Role;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use futures::StreamExt;
use latch_nats::subjects::{DEADLETTER_ALL, EVENTS_ALL};
use latch_projections::{device_status, lockers, orders, projector, LoggedEvent};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long changes are gathered into one message: a burst of events is one re-read.
const GATHER: Duration = Duration::from_millis(150);
/// How long a change waits for its read model before it is told anyway.
const PROJECTION_WAIT: Duration = Duration::from_secs(10);
/// A quiet channel is pinged this often, so a dead connection is noticed and closed.
const PING: Duration = Duration::from_secs(25);

/// A screen of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Screen {
    Fleet,
    Orders,
    Lockers,
    DeadLetters,
}

impl Screen {
    pub const ALL: [Screen; 4] = [
        Screen::Fleet,
        Screen::Orders,
        Screen::Lockers,
        Screen::DeadLetters,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fleet => "fleet",
            Self::Orders => "orders",
            Self::Lockers => "lockers",
            Self::DeadLetters => "dead_letters",
        }
    }

    /// The screen an event of `aggregate_type` changes, if any.
    pub fn of_aggregate(aggregate_type: &str) -> Option<Self> {
        match aggregate_type {
            "device" => Some(Self::Fleet),
            "shopping_session" => Some(Self::Orders),
            t if t.starts_with("locker_") && t != "locker_login" => Some(Self::Lockers),
            _ => None,
        }
    }

    /// The read model the screen is read from (none: dead letters are read from their stream).
    fn model(&self) -> Option<&'static str> {
        match self {
            Self::Fleet => Some(device_status::NAME),
            Self::Orders => Some(orders::NAME),
            Self::Lockers => Some(lockers::NAME),
            Self::DeadLetters => None,
        }
    }
}

/// The message telling the page which screens to re-read.
fn changed_message(screens: &[Screen]) -> String {
    let names: Vec<&str> = screens.iter().map(Screen::as_str).collect();
    serde_json::json!({ "changed": names }).to_string()
}

/// Follows what changes on the console's screens (operators).
#[utoipa::path(get, path = "/ops/live", tag = "ops",
    responses((status = 101, description = "WebSocket: `{\"changed\": [screen, ...]}` with screens among fleet, orders, lockers, dead_letters; every screen first on each connect, then as the log moves"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn live(
    State(state): State<AppState>,
    OpsCaller(actor): OpsCaller,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::edge::ConnectionSlot>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    actor.require(Role::Operator)?;
    // Browsers send cookies on cross-site WebSocket handshakes; only our own page may listen.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if origin.split("://").nth(1).unwrap_or("") != host {
            return Err(ApiError::Forbidden(
                "cross-origin push channel refused".into(),
            ));
        }
    }
    // Listen first, then tell the page to read: a change between the two is not lost.
    let unavailable =
        |e: async_nats::SubscribeError| ApiError::Unavailable(format!("push channel: {e}"));
    let events = state
        .nats
        .subscribe(EVENTS_ALL)
        .await
        .map_err(unavailable)?;
    let dead = state
        .nats
        .subscribe(DEADLETTER_ALL)
        .await
        .map_err(unavailable)?;
    // The page sends nothing but closes and pongs.
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| async move {
            let _held = slot;
            follow(socket, state, events, dead).await
        }))
}

async fn follow(
    mut socket: WebSocket,
    state: AppState,
    mut events: async_nats::Subscriber,
    mut dead: async_nats::Subscriber,
) {
    if socket
        .send(Message::Text(changed_message(&Screen::ALL).into()))
        .await
        .is_err()
    {
        return;
    }
    // Screen -> the highest log position that changed it (0 for dead letters).
    let mut pending: BTreeMap<Screen, i64> = BTreeMap::new();
    loop {
        let gather = if pending.is_empty() { PING } else { GATHER };
        tokio::select! {
            message = events.next() => match message {
                Some(m) => {
                    if let Ok(event) = serde_json::from_slice::<LoggedEvent>(&m.payload) {
                        if let Some(screen) = Screen::of_aggregate(&event.aggregate_type) {
                            let at = pending.entry(screen).or_insert(0);
                            *at = (*at).max(event.position);
                        }
                    }
                }
                None => break,
            },
            message = dead.next() => match message {
                Some(_) => { pending.entry(Screen::DeadLetters).or_insert(0); }
                None => break,
            },
            _ = tokio::time::sleep(gather) => {
                let message = if pending.is_empty() {
                    Message::Ping(Vec::new().into())
                } else {
                    let screens = settled(&state, std::mem::take(&mut pending)).await;
                    Message::Text(changed_message(&screens).into())
                };
                if socket.send(message).await.is_err() {
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = state.shutdown.cancelled() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// The screens, once each one's read model holds the log up to its position (or after
/// [`PROJECTION_WAIT`], as it stands).
async fn settled(state: &AppState, pending: BTreeMap<Screen, i64>) -> Vec<Screen> {
    let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
    for (screen, position) in &pending {
        let Some(model) = screen.model() else {
            continue;
        };
        let mut pause = Duration::from_millis(20);
        loop {
            match projector::checkpoint(&state.pool, model).await {
                Ok(at) if at >= *position => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, model, "read model checkpoint not readable");
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(model, position, "read model behind; screen told anyway");
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
    pending.into_keys().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_change_the_screens_they_are_read_on() {
        assert_eq!(Screen::of_aggregate("device"), Some(Screen::Fleet));
        assert_eq!(
            Screen::of_aggregate("shopping_session"),
            Some(Screen::Orders)
        );
        assert_eq!(
            Screen::of_aggregate("locker_compartment"),
            Some(Screen::Lockers)
        );
        assert_eq!(Screen::of_aggregate("locker_grant"), Some(Screen::Lockers));
        assert_eq!(Screen::of_aggregate("locker_login"), None);
        assert_eq!(Screen::of_aggregate("api_token"), None);
        assert_eq!(
            changed_message(&[Screen::Fleet, Screen::DeadLetters]),
            r#"{"changed":["fleet","dead_letters"]}"#
        );
    }
}
