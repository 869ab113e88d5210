//! Deposit and collection: the holder's one deposit with a pickup code, the recipient's
//! collection with it.

use super::{me, unprocessable};
use crate::auth::Role;
use crate::error::ApiError;
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use latch_domain::locker::{CompartmentCommand, CompartmentError, CompartmentId};
use latch_domain::store::CommandError;
use serde::Deserialize;
use serde_json::json;

/// How a pickup code is kept: SHA-256 over the compartment and the code, hex.
fn pickup_hash(id: &CompartmentId, code: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{id}:{code}").as_bytes()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub parcel: String,
}

/// The holder deposits a parcel: recorded once, with a pickup code for the recipient.
pub(super) async fn deposit(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Deposit>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = me(&actor)?;
    let id = CompartmentId::parse("id", &id)?;
    let parcel = latch_domain::locker::ParcelNumber::parse("parcel", &body.value.parcel)?;
    let code = format!("{:08}", rand::random::<u32>() % 100_000_000);
    let command = CompartmentCommand::Deposit {
        user,
        parcel: parcel.clone(),
        pickup_code_hash: pickup_hash(&id, &code),
        at: state.clock.now(),
    };
    let done = state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await?;
    if done.replayed {
        // The code was shown once; a retry cannot show it again.
        return Err(ApiError::Conflict {
            code: "already_deposited",
            message: "this deposit was already recorded; its pickup code was given then".into(),
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "compartment_id": id.to_string(),
            "parcel": parcel.as_str(),
            "status": "occupied",
            "pickup_code": code,
        })),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    pub pickup_code: String,
}

/// The recipient collects with the pickup code; the compartment becomes free.
pub(super) async fn collect(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Collect>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if actor.role != Role::Operator {
        me(&actor)?;
    }
    let id = CompartmentId::parse("id", &id)?;
    // Per caller (and globally for callers who were wrong lately), never per compartment: a
    // stranger's guesses must not lock the recipient out.
    state.lockers.limits.pickup(&actor)?;
    let command = CompartmentCommand::Collect {
        pickup_code_hash: pickup_hash(&id, body.value.pickup_code.trim()),
        at: state.clock.now(),
    };
    match state
        .store
        .compartments
        .execute(
            &id.to_string(),
            command.name(),
            command,
            &meta.context(&actor, &body.raw),
        )
        .await
    {
        Ok(_) => Ok(Json(
            json!({ "compartment_id": id.to_string(), "status": "free" }),
        )),
        Err(CommandError::Rejected(CompartmentError::WrongPickupCode)) => {
            state.lockers.limits.pickup_was_wrong(&actor);
            Err(unprocessable(
                "wrong_pickup_code",
                "pickup_code",
                "the pickup code is wrong",
            ))
        }
        Err(e) => Err(e.into()),
    }
}
