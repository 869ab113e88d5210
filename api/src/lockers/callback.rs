//! An authorizer's signed answer to a grant request: `grant.accepted` (naming the receiver) or
//! `grant.declined`. One answer, one command on the grant: `AcceptGrant` or `DeclineGrant`.
//!
//! Accepting does not move the holder here. The grant process (`latch_workers::grant_process`)
//! reads `GrantAccepted` from the log and hands the compartment over, then completes the grant
//! (or fails it if the compartment refuses); a crash between the steps is repaired by
//! redelivery. So the answer is `accepted`, and `GET /lockers/grants/{id}` follows the grant to
//! `completed`. What can be checked before the command is checked: the signature, the
//! authorizer, the grant and its compartment, the receiver, and whether the requester still
//! holds the compartment (409 `compartment_changed_hands`), so a bad answer changes nothing.
//!
//! [`handle_answer`] is the whole check-and-command, for the HTTP callback here and for answers
//! that arrive over NATS (`latch_workers::authorizer_answers`).

use super::grants::active_receiver;
use super::unprocessable;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use latch_domain::clock::SharedClock;
use latch_domain::device::SiteCode;
use latch_domain::locker::compartment::Status;
use latch_domain::locker::grant::GrantStatus;
use latch_domain::locker::{
    AuthorizerNumber, CompartmentId, CompartmentNumber, GrantCommand, UserNumber,
};
use latch_domain::store::{CommandContext, IdempotencyKey, Store};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// An authorizer's answer: `type` is `grant.accepted` or `grant.declined`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CallbackBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: CallbackData,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CallbackData {
    pub request_id: Uuid,
    pub site: String,
    pub compartment: String,
    /// The receiver's user number (accepted only).
    pub receiver: Option<String>,
    /// The authorizer's own number.
    pub authorizer: String,
    pub reason: Option<String>,
}

/// Answers `{grant_id, status: "accepted", compartment_id, receiver}` or `{grant_id, status:
/// "declined", compartment_id, reason}`; the grant is completed by the grant process after.
#[utoipa::path(post, path = "/lockers/authorizers/{number}/callback", tag = "lockers", request_body = CallbackBody,
    params(("number" = String, Path), ("webhook-id" = String, Header), ("webhook-timestamp" = String, Header), ("webhook-signature" = String, Header)),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn authorizer_callback(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    handle_answer(&state.store, &state.clock, &number, &headers, &body)
        .await
        .map(Json)
}

/// Checks one signed answer of authorizer `number` and executes its one command; the outcome
/// as JSON. A replayed answer (same webhook id, same body) answers as the first did and
/// appends nothing.
pub async fn handle_answer(
    store: &Store,
    clock: &SharedClock,
    number: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let number = AuthorizerNumber::parse("number", number)?;
    let authorizer = store
        .authorizers
        .load(number.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "authorizer_not_found",
            message: format!("no authorizer {number}"),
        })?;
    let secret = store
        .vault
        .secret(&authorizer.secret_id)
        .await?
        .ok_or_else(|| {
            tracing::error!(authorizer = %number, "the authorizer's signing secret is missing from the vault");
            ApiError::Internal("the authorizer's signing secret is unavailable".into())
        })?;
    let signed = crate::webhooks::verify(&secret, headers, body, clock.now())?;
    let callback: CallbackBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
            code: "webhook_body_invalid",
            message: e.to_string(),
            field: Some("body".into()),
        })?;
    let data = &callback.data;
    if AuthorizerNumber::parse("data.authorizer", &data.authorizer)? != number {
        return Err(ApiError::Forbidden(
            "the callback names another authorizer".into(),
        ));
    }
    if !authorizer.is_active() {
        return Err(unprocessable(
            "authorizer_inactive",
            "data.authorizer",
            format!("authorizer {number} is not active"),
        ));
    }
    let id = CompartmentId::new(
        SiteCode::parse("data.site", &data.site)?,
        CompartmentNumber::parse("data.compartment", &data.compartment)?,
    );
    let outcome = |status: &str| match status {
        "accepted" => json!({
            "grant_id": data.request_id, "status": status, "compartment_id": id.to_string(),
            "receiver": data.receiver,
        }),
        _ => json!({
            "grant_id": data.request_id, "status": status, "compartment_id": id.to_string(),
            "reason": data.reason.clone().unwrap_or_default(),
        }),
    };
    let grant_key = data.request_id.to_string();
    let grant = store
        .grants
        .load(&grant_key)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "grant_not_found",
            message: format!("no grant request {}", data.request_id),
        })?;
    if grant.compartment.as_ref() != Some(&id) {
        return Err(unprocessable(
            "compartment_mismatch",
            "data.compartment",
            "the callback names another compartment than the request",
        ));
    }
    let ctx = CommandContext::new(format!("authorizer:{number}")).with_idempotency(
        IdempotencyKey::new(&format!("authorizer:{number}"), &signed.id, body),
    );
    let span =
        tracing::info_span!("authorizer_callback", authorizer = %number, webhook_id = %signed.id);
    let _guard = span.enter();
    let now = clock.now();
    let command = match callback.kind.as_str() {
        "grant.declined" => GrantCommand::Decline {
            authorizer: number.clone(),
            reason: data.reason.clone().unwrap_or_default(),
            at: now,
        },
        "grant.accepted" => {
            let raw = data.receiver.as_deref().ok_or_else(|| {
                ApiError::bad_request("invalid_field", "data.receiver", "is required")
            })?;
            let receiver = UserNumber::parse("data.receiver", raw)?;
            // A replayed answer meets a grant that has moved on; it answers as the first did.
            if replayed(store, &ctx).await? {
                return Ok(outcome("accepted"));
            }
            let requester = grant
                .requester
                .clone()
                .ok_or_else(|| ApiError::Internal("grant without requester".into()))?;
            if grant.status != GrantStatus::Requested {
                return Err(ApiError::Conflict {
                    code: "grant_not_open",
                    message: format!("this grant request is {}", grant.status.as_str()),
                });
            }
            if receiver == requester {
                return Err(unprocessable(
                    "grant_to_self",
                    "data.receiver",
                    "a compartment cannot be granted to its own holder",
                ));
            }
            active_receiver(store, &receiver, "data.receiver").await?;
            let compartment = store
                .compartments
                .load(&id.to_string())
                .await?
                .unwrap_or_default();
            if !compartment.held_by(&requester, now) || compartment.status != Status::Reserved {
                return Err(ApiError::Conflict {
                    code: "compartment_changed_hands",
                    message: format!("{requester} no longer holds compartment {id}"),
                });
            }
            GrantCommand::Accept {
                authorizer: number.clone(),
                receiver,
                at: now,
            }
        }
        other => {
            return Err(ApiError::bad_request(
                "webhook_type_unknown",
                "type",
                format!("unknown callback type {other:?}"),
            ))
        }
    };
    let status = match command {
        GrantCommand::Accept { .. } => "accepted",
        _ => "declined",
    };
    store
        .grants
        .execute(&grant_key, command.name(), command, &ctx)
        .await?;
    Ok(outcome(status))
}

/// Whether this answer's webhook id was already handled with this very body; a different body
/// under the same id is refused.
async fn replayed(store: &Store, ctx: &CommandContext) -> Result<bool, ApiError> {
    let Some(key) = &ctx.idempotency else {
        return Ok(false);
    };
    let seen = store.idempotency_claim(&key.key).await?;
    match seen.map(|claim| claim.fingerprint) {
        None => Ok(false),
        Some(fingerprint) if fingerprint.as_deref() == Some(key.fingerprint.as_str()) => Ok(true),
        Some(_) => Err(ApiError::Unprocessable {
            code: "webhook_id_reused",
            message: "this webhook id was already used for a different callback".into(),
            field: Some("webhook-id".into()),
        }),
    }
}
