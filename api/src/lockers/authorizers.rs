//! Third-party authorizers (courier companies): registration, activation, the public listing.

use crate::auth::{Actor, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use latch_domain::device::Label;
use latch_domain::locker::{AuthorizerCommand, AuthorizerNumber, Endpoint};
use latch_domain::vault::authorizer_secret_id;
use latch_domain::webhooks::secret_key;
use latch_projections::lockers::queries::{self, AuthorizerRow};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAuthorizer {
    pub number: String,
    pub name: String,
    /// Service endpoint that receives grant requests.
    pub endpoint: String,
    /// Standard Webhooks secret, `whsec_` + base64 of at least 32 random bytes.
    pub secret: String,
}

/// The fewest key bytes an authorizer's signing secret may have: anyone who guesses it can
/// forge the authorizer's answers, and its fingerprint names it in the log.
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses a secret that is not `whsec_` + base64, or that carries fewer than
/// [`MIN_SECRET_BYTES`] key bytes.
pub fn check_secret(secret: &str) -> Result<(), ApiError> {
    match secret_key(secret) {
        None => Err(ApiError::bad_request(
            "invalid_field",
            "secret",
            "must be `whsec_` + base64",
        )),
        Some(key) if key.len() < MIN_SECRET_BYTES => Err(ApiError::bad_request(
            "secret_too_short",
            "secret",
            format!(
                "must carry at least {MIN_SECRET_BYTES} random bytes (`whsec_` + base64 of them); this one has {}",
                key.len()
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Registers a third-party authorizer. The first answer carries its NATS identity,
/// `nats: {user, nkey_seed}` (see `NatsCredentials`): the seed is shown only then.
#[utoipa::path(post, path = "/lockers/authorizers", tag = "lockers", request_body = RegisterAuthorizer, params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key return the first outcome")),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn register_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    body: JsonBody<RegisterAuthorizer>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.require(Role::Operator)?;
    let req = &body.value;
    let number = AuthorizerNumber::parse("number", &req.number)?;
    let name = Label::parse("name", &req.name, 80)?;
    let endpoint = Endpoint::parse("endpoint", &req.endpoint)?;
    check_secret(&req.secret)?;
    // The secret goes to the vault, encrypted; the event names it by its fingerprint. A command
    // that is then refused leaves an unreferenced row, which nothing reads.
    let secret_id = authorizer_secret_id(number.as_str(), &req.secret);
    state
        .store
        .vault
        .put_secret(
            &secret_id,
            &format!("locker_authorizer/{number}"),
            &req.secret,
        )
        .await?;
    let command = AuthorizerCommand::Register {
        number: number.clone(),
        name: name.clone(),
        endpoint: endpoint.clone(),
        secret_id,
        at: state.clock.now(),
    };
    state
        .store
        .authorizers
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    // Its NATS identity, confined to its own grant, confirmation and answer subjects; the nkey
    // seed is in this answer only.
    let nats = crate::nats_identities::issue_and_publish(
        &state.pool,
        &state.nats_auth,
        &latch_nats::auth::Principal::Authorizer(number.as_str().to_owned()),
    )
    .await?;
    // The durable consumer of its grant feed, so nothing is missed before it first connects
    // (the grant feed makes it too, should this fail now).
    let js = async_nats::jetstream::new(state.nats.clone());
    if let Err(e) = latch_nats::streams::ensure_authorizer_feed(&js, number.as_str()).await {
        tracing::warn!(error = %e, authorizer = %number, "grant feed consumer not made yet");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "number": number.as_str(),
            "name": name.as_str(),
            "endpoint": endpoint.as_str(),
            "status": "active",
            "nats": nats,
        })),
    ))
}

async fn authorizer_status(
    state: AppState,
    actor: Actor,
    meta: RequestMeta,
    number: String,
    active: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    actor.require(Role::Operator)?;
    let number = AuthorizerNumber::parse("number", &number)?;
    let at = state.clock.now();
    let command = if active {
        AuthorizerCommand::Activate { at }
    } else {
        AuthorizerCommand::Deactivate { at }
    };
    state
        .store
        .authorizers
        .execute(
            number.as_str(),
            command.name(),
            command,
            &meta.context(&actor, b""),
        )
        .await?;
    Ok(Json(json!({
        "number": number.as_str(),
        "status": if active { "active" } else { "inactive" },
    })))
}

#[utoipa::path(post, path = "/lockers/authorizers/{number}/deactivate", tag = "lockers", params(("number" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn deactivate_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorizer_status(state, actor, meta, number, false).await
}

#[utoipa::path(post, path = "/lockers/authorizers/{number}/activate", tag = "lockers", params(("number" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn activate_authorizer(
    State(state): State<AppState>,
    actor: Actor,
    meta: RequestMeta,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorizer_status(state, actor, meta, number, true).await
}

/// The active authorizers (any signed-in user or operator).
#[utoipa::path(get, path = "/lockers/authorizers", tag = "lockers",
    responses((status = 200, body = Vec<AuthorizerRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_authorizers(
    State(state): State<AppState>,
    LockerCaller(_actor): LockerCaller,
) -> Result<Json<Vec<AuthorizerRow>>, ApiError> {
    let rows = queries::active_authorizers(&state.pool).await?;
    Ok(Json(rows))
}
