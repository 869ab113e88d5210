//! `latch authorizer-sandbox`: a courier company's system as a third-party authorizer, speaking
//! Latch's grant protocol over real HTTP (DESIGN.md section 7), like a payment provider's test
//! mode. It keeps a duty roster in memory and forgets it on exit.
//!
//! - `POST /grants`: Latch's grant request, a Standard Webhooks delivery signed with the
//!   authorizer's secret, body `{type: "grant.requested", data: {request_id, site, compartment,
//!   size, authorizer, requester, deadline}}`. Unsigned, forged or stale deliveries are refused
//!   (400); a repeated webhook id is acknowledged once and not acted on again. The sandbox picks
//!   the first courier on duty (never the requester) and calls back
//!   `POST {latch}/lockers/authorizers/{number}/callback` with `grant.accepted` naming the site,
//!   compartment, receiver and its own number, or `grant.declined` when nobody is on duty;
//!   signed with the same secret, retried with the same id on a doubling schedule.
//! - `GET /roster`, `POST /roster/{user_number}` `{on_duty}`: the duty roster.
//! - `GET /sandbox/requests`: every request received and what became of it.
//!
//! It signs and verifies with Latch's one Standard Webhooks implementation
//! (`latch_domain::webhooks`), whose unit test holds it to the scheme's published test vector,
//! so a mistake in the scheme cannot hide behind two copies that agree with each other. Time comes from the injected clock, so tests with a manual clock agree with
//! Latch on what "stale" means.

use crate::kazaya_sandbox::RetryPolicy;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use latch_domain::clock::{SharedClock, SystemClock};
use latch_domain::webhooks::{self, WebhookError};
use latch_workers::CancellationToken;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One courier on the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Courier {
    pub user_number: String,
    pub name: String,
    pub on_duty: bool,
}

#[derive(Debug, Clone)]
pub struct AuthorizerSandboxSettings {
    pub addr: SocketAddr,
    /// This authorizer's number at Latch, e.g. `0001`.
    pub number: String,
    /// `whsec_` + base64, shared with Latch's registration of this authorizer.
    pub secret: String,
    /// Latch's base URL, for callbacks.
    pub latch_url: String,
    pub roster: Vec<Courier>,
    pub retry: RetryPolicy,
    pub clock: SharedClock,
    /// Trust anchors beyond the webpki roots, for a Latch served over HTTPS.
    pub roots: latch_domain::outbound::TlsRoots,
}

impl AuthorizerSandboxSettings {
    pub fn new(addr: SocketAddr, number: &str, secret: &str, latch_url: &str) -> Self {
        Self {
            addr,
            number: number.to_owned(),
            secret: secret.to_owned(),
            latch_url: latch_url.trim_end_matches('/').to_owned(),
            roster: Vec::new(),
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
            roots: Default::default(),
        }
    }
}

/// What became of one grant request.
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    pub webhook_id: String,
    pub request_id: String,
    pub site: String,
    pub compartment: String,
    /// `accepted` (with the courier), `declined`, or `callback_failed`.
    pub outcome: String,
    pub courier: Option<String>,
    pub callback_status: Option<u16>,
}

struct Shared {
    key: Vec<u8>,
    settings: AuthorizerSandboxSettings,
    http: reqwest::Client,
    stop: CancellationToken,
    roster: Mutex<Vec<Courier>>,
    seen: Mutex<HashSet<String>>,
    handled: Mutex<Vec<Handled>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorizerSandboxError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid sandbox settings: {0}")]
    Settings(String),
}

/// The sandbox, bound but not yet serving.
pub struct AuthorizerSandbox {
    listener: TcpListener,
    url: String,
    shared: Arc<Shared>,
}

impl AuthorizerSandbox {
    pub async fn build(
        settings: AuthorizerSandboxSettings,
    ) -> Result<Self, AuthorizerSandboxError> {
        let key = latch_domain::webhooks::secret_key(&settings.secret).ok_or_else(|| {
            AuthorizerSandboxError::Settings("secret must be `whsec_` + base64".into())
        })?;
        let listener = TcpListener::bind(settings.addr).await.map_err(|source| {
            AuthorizerSandboxError::Bind {
                addr: settings.addr,
                source,
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| AuthorizerSandboxError::Bind {
                addr: settings.addr,
                source,
            })?;
        let url = if local.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", local.port())
        } else {
            format!("http://{local}")
        };
        let http = latch_domain::outbound::client_builder(&settings.roots)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AuthorizerSandboxError::Settings(format!("http client: {e}")))?;
        Ok(Self {
            listener,
            url,
            shared: Arc::new(Shared {
                key,
                http,
                stop: CancellationToken::new(),
                roster: Mutex::new(settings.roster.clone()),
                seen: Mutex::default(),
                handled: Mutex::default(),
                settings,
            }),
        })
    }

    /// Where grant requests go: register this as the authorizer's endpoint at Latch.
    pub fn endpoint(&self) -> String {
        format!("{}/grants", self.url)
    }

    pub fn base_url(&self) -> &str {
        &self.url
    }

    /// Serves until `shutdown` resolves; callbacks waiting for a retry are dropped then.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.shared.stop.clone();
        tracing::info!(url = %self.url, number = %self.shared.settings.number, "authorizer sandbox is running");
        let app = Router::new()
            .route("/grants", post(receive))
            .route("/roster", get(roster))
            .route("/roster/{user_number}", post(set_duty))
            .route("/sandbox/requests", get(requests))
            .with_state(self.shared.clone());
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stop.cancel();
            })
            .await;
        self.shared.stop.cancel();
        result
    }
}

fn fail(status: StatusCode, code: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
}

/// The Standard Webhooks check (Latch's one implementation): headers present, fresh, one `v1,`
/// signature matching; the webhook id.
fn verify(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<String, WebhookError> {
    let now = shared.settings.clock.now();
    latch_api::webhooks::verify(&shared.settings.secret, headers, body, now).map(|s| s.id)
}

#[derive(Debug, Deserialize)]
struct Request {
    data: RequestData,
}

#[derive(Debug, Deserialize)]
struct RequestData {
    request_id: String,
    site: String,
    compartment: String,
    requester: String,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let webhook_id = match verify(&shared, &headers, &body) {
        Ok(id) => id,
        Err(why) => return fail(StatusCode::BAD_REQUEST, "webhook_invalid", &why.to_string()),
    };
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "body_invalid",
                "not a grant request",
            )
        }
    };
    if !shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(webhook_id.clone())
    {
        return (StatusCode::OK, Json(json!({ "duplicate": true })));
    }
    let courier = shared
        .roster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.on_duty && c.user_number != request.data.requester)
        .cloned();
    let number = shared.settings.number.clone();
    let data = &request.data;
    let answer = match &courier {
        Some(c) => json!({
            "type": "grant.accepted",
            "data": {
                "request_id": data.request_id, "site": data.site, "compartment": data.compartment,
                "receiver": c.user_number, "authorizer": number,
            }
        }),
        None => json!({
            "type": "grant.declined",
            "data": {
                "request_id": data.request_id, "site": data.site, "compartment": data.compartment,
                "authorizer": number, "reason": "无人值班",
            }
        }),
    };
    tracing::info!(request_id = %data.request_id, courier = ?courier.as_ref().map(|c| &c.user_number), "grant request received");
    let handled = Handled {
        webhook_id: webhook_id.clone(),
        request_id: data.request_id.clone(),
        site: data.site.clone(),
        compartment: data.compartment.clone(),
        outcome: if courier.is_some() {
            "accepted"
        } else {
            "declined"
        }
        .into(),
        courier: courier.map(|c| c.user_number),
        callback_status: None,
    };
    tokio::spawn(call_back(
        shared.clone(),
        format!("cb_{webhook_id}"),
        answer.to_string(),
        handled,
    ));
    (StatusCode::ACCEPTED, Json(json!({ "received": true })))
}

async fn call_back(shared: Arc<Shared>, id: String, body: String, mut handled: Handled) {
    let url = format!(
        "{}/lockers/authorizers/{}/callback",
        shared.settings.latch_url, shared.settings.number
    );
    let retry = shared.settings.retry.clone();
    for attempt in 1..=retry.max_attempts.max(1) {
        let ts = shared.settings.clock.now().timestamp();
        let sig = webhooks::sign(&shared.key, &id, ts, body.as_bytes());
        let result = shared
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.clone())
            .send()
            .await;
        let status = result.as_ref().ok().map(|r| r.status());
        handled.callback_status = status.map(|s| s.as_u16());
        // 2xx: done; 4xx: Latch refused the answer itself, retrying will not change that.
        if status.is_some_and(|s| s.is_success() || s.is_client_error()) {
            if !status.is_some_and(|s| s.is_success()) {
                handled.outcome = "callback_refused".into();
            }
            break;
        }
        tracing::warn!(%id, attempt, ?status, "callback failed; will retry");
        if attempt == retry.max_attempts.max(1) {
            handled.outcome = "callback_failed".into();
            break;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(retry.delay_after(attempt)) => {}
        }
    }
    shared
        .handled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(handled);
}

async fn roster(State(shared): State<Arc<Shared>>) -> Json<Vec<Courier>> {
    Json(
        shared
            .roster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

#[derive(Debug, Deserialize)]
struct Duty {
    on_duty: bool,
    name: Option<String>,
}

async fn set_duty(
    State(shared): State<Arc<Shared>>,
    Path(user_number): Path<String>,
    Json(duty): Json<Duty>,
) -> Json<Vec<Courier>> {
    let mut roster = shared.roster.lock().unwrap_or_else(|e| e.into_inner());
    match roster.iter_mut().find(|c| c.user_number == user_number) {
        Some(c) => c.on_duty = duty.on_duty,
        None => roster.push(Courier {
            user_number,
            name: duty.name.unwrap_or_default(),
            on_duty: duty.on_duty,
        }),
    }
    Json(roster.clone())
}

async fn requests(State(shared): State<Arc<Shared>>) -> Json<Vec<Handled>> {
    Json(
        shared
            .handled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

#[derive(Debug, clap::Args)]
pub struct AuthorizerSandboxArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(
        long,
        env = "AUTHORIZER_SANDBOX_ADDR",
        default_value = "127.0.0.1:8091"
    )]
    pub addr: SocketAddr,
    /// This authorizer's number at Latch.
    #[arg(long, default_value = "0001")]
    pub number: String,
    /// Signing secret shared with Latch (`whsec_` + base64).
    #[arg(long, env = "AUTHORIZER_SANDBOX_SECRET")]
    pub secret: String,
    /// Latch's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub latch_url: String,
    /// A courier on duty: USER_NUMBER=NAME (repeatable).
    #[arg(long = "courier", value_name = "USER_NUMBER=NAME")]
    pub couriers: Vec<String>,
    /// PEM file of CA certificates trusted beyond the webpki roots (a Latch over HTTPS).
    #[arg(long, env = "LATCH_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<std::path::PathBuf>,
}

/// Turns `USER_NUMBER=NAME` flags into an on-duty roster.
pub fn parse_couriers(flags: &[String]) -> Result<Vec<Courier>, String> {
    flags
        .iter()
        .map(|f| match f.split_once('=') {
            Some((n, name)) if !n.is_empty() => Ok(Courier {
                user_number: n.to_owned(),
                name: name.to_owned(),
                on_duty: true,
            }),
            _ => Err(format!("--courier {f:?}: expected USER_NUMBER=NAME")),
        })
        .collect()
}

pub async fn serve(
    args: AuthorizerSandboxArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut settings =
        AuthorizerSandboxSettings::new(args.addr, &args.number, &args.secret, &args.latch_url);
    settings.roster = parse_couriers(&args.couriers)?;
    if let Some(path) = &args.extra_ca_file {
        settings.roots = latch_domain::outbound::TlsRoots::from_pem_file(path)?;
    }
    let sandbox = AuthorizerSandbox::build(settings).await?;
    tracing::info!(endpoint = %sandbox.endpoint(), "authorizer sandbox (test mode) is serving");
    sandbox.run_until_stopped(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn couriers_parse_from_flags() {
        let roster = parse_couriers(&["13466666666=王".into()]).unwrap();
        assert_eq!(roster[0].name, "王");
        assert!(roster[0].on_duty);
        assert!(parse_couriers(&["nope".into()]).is_err());
    }
}
