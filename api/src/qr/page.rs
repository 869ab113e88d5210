//! The minting page's side: where its login stands, by poll (`GET /qr/login`) or pushed over a
//! WebSocket (`GET /qr/ws`), both read from the hub and checked against the browser's secret.

use super::fail::{refusal, QrFail};
use super::hub::Snapshot;
use super::secret::browser_secret;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use latch_domain::qr_login::{BrowserSecret, Ext, PageStatus, QrLogin, QrLoginError};
use serde_json::{json, Value};
use std::time::Duration;

/// Largest message (and frame) a page may send on the push channel.
pub const WS_MAX_MESSAGE: usize = 4096;

/// The page's view of a login, checked against the browser's secret.
async fn page_login(
    state: &AppState,
    secret: &BrowserSecret,
) -> Result<tokio::sync::watch::Receiver<Snapshot>, QrFail> {
    let rx = state
        .qr
        .hub
        .watch(secret.login_id())
        .await?
        .ok_or(ApiError::NotFound {
            code: "unknown_code",
            message: "no such QR login".into(),
        })?;
    if rx.borrow().login.secret_hash != secret.hash() {
        return Err(refusal(QrLoginError::WrongBrowser).into());
    }
    Ok(rx)
}

/// The poll / push body: the seed's fields plus the state that tells -2 answers apart.
fn status_body(login: &QrLogin, secret: &BrowserSecret, now: DateTime<Utc>) -> Value {
    let status = login.page_status(now);
    let mut body = json!({
        "statusflag": status.statusflag(),
        "state": status.as_str(),
        "expiresAt": login.expires_at,
    });
    if status == PageStatus::Confirmed {
        body["url"] = json!(format!("/qr/redeem?loginCode={}", secret.login_code()));
        body["ext"] = json!(login.ext().map(Ext::as_str));
    }
    body
}

/// `GET /qr/login`: where this browser's login stands.
#[utoipa::path(get, path = "/qr/login", tag = "qr login",
    responses((status = 200, description = "{statusflag: 0 waiting | 1 scanned | 2 confirmed (with url, ext) | -2 expired/cancelled/redeemed, state, expiresAt}", body = Object),
              (status = 400, description = "malformed latch_qr cookie", body = crate::error::ErrorBody), (status = 403, description = "wrong_browser", body = crate::error::ErrorBody),
              (status = 404, description = "unknown_code", body = crate::error::ErrorBody), (status = 422, description = "no_browser_secret", body = crate::error::ErrorBody),
              (status = 429, description = "poll_too_fast, with intervalSeconds", body = crate::error::ErrorBody)))]
pub async fn poll(State(state): State<AppState>, jar: CookieJar) -> Result<Response, QrFail> {
    let secret = browser_secret(&jar)?;
    let now = state.clock.now();
    let interval = state.qr.config.poll_interval;
    let rx = page_login(&state, &secret).await?;
    if state.qr.hub.poll_too_soon(secret.login_id(), now, interval) {
        let secs = interval.num_milliseconds() as f64 / 1000.0;
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "error": {
                    "code": "poll_too_fast",
                    "message": format!("poll at most once every {secs} s, or use the push channel /qr/ws"),
                },
                "intervalSeconds": secs,
            })),
        )
            .into_response();
        let retry = (interval.num_milliseconds().max(1000) / 1000).to_string();
        if let Ok(v) = HeaderValue::from_str(&retry) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(response);
    }
    let body = status_body(&rx.borrow().login, &secret, now);
    Ok(Json(body).into_response())
}

/// `GET /qr/ws`: the same answers as the poll, pushed: the current state first (on every
/// connect, so a reconnecting page misses nothing), then each change, until the login is over.
#[utoipa::path(get, path = "/qr/ws", tag = "qr login",
    responses((status = 101, description = "WebSocket: the poll body now and at every change, until the login is over"),
              (status = 403, description = "cross-origin or wrong_browser", body = crate::error::ErrorBody), (status = 422, description = "no_browser_secret", body = crate::error::ErrorBody)))]
pub async fn push(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::edge::ConnectionSlot>>,
    ws: WebSocketUpgrade,
) -> Result<Response, QrFail> {
    // Browsers send cookies on cross-site WebSocket handshakes; only our own pages may listen.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split("://").nth(1).unwrap_or("");
        if origin_host != host {
            return Err(ApiError::Forbidden("cross-origin push channel refused".into()).into());
        }
    }
    let secret = browser_secret(&jar)?;
    let rx = page_login(&state, &secret).await?;
    // One login, a bounded number of channels: the cookie is all it takes to open one, and each
    // holds a socket and a task for up to the login's lifetime.
    let claim = state
        .qr
        .hub
        .claim_socket(secret.login_id(), state.qr.config.sockets_per_login)
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "too_many_sockets",
            message: format!(
                "this login already has {} push channels open; close one first",
                state.qr.config.sockets_per_login
            ),
            retry_after_secs: 1,
        })?;
    // Frames are ~100 bytes each way; the default 128 KiB read buffer per channel would cost
    // over a gigabyte for 10,000 open pages (measured by `latch bench qr`). The page sends
    // nothing but closes and pings, so messages and frames are capped small.
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Both held until the channel ends: its place under the connection cap and its
            // place among the login's channels.
            let _held = (slot, claim);
            follow(socket, state, secret, rx).await
        }))
}

async fn follow(
    mut socket: WebSocket,
    state: AppState,
    secret: BrowserSecret,
    mut rx: tokio::sync::watch::Receiver<Snapshot>,
) {
    let mut last_sent: Option<Value> = None;
    loop {
        let now = state.clock.now();
        let (body, deadline) = {
            let snapshot = rx.borrow_and_update();
            (
                status_body(&snapshot.login, &secret, now),
                snapshot.login.deadline(),
            )
        };
        if last_sent.as_ref() != Some(&body) {
            if socket
                .send(Message::Text(body.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            let done = body["statusflag"] == json!(-2) || body["statusflag"] == json!(-1);
            last_sent = Some(body);
            if done {
                break;
            }
        }
        // Expiry is a deadline, not only an event: wake at it so the page flips to "expired" on
        // time even if the sweeper's event is late (and otherwise sleep, so idle channels cost
        // nothing).
        let until = deadline
            .and_then(|d| (d - now).to_std().ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60))
            + Duration::from_millis(10);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(until) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = state.shutdown.cancelled() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
