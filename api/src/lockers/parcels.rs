//! Deposit and collection: the holder's one deposit with a pickup code, the recipient's
//! collection with it.

use super::{kiosk_site, me, unprocessable};
use crate::auth::Role;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, RequestMeta};
use crate::locker_pages::LockerCaller;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use latch_domain::locker::{CompartmentCommand, CompartmentError, CompartmentId, PickupProof};
use latch_domain::store::CommandError;
use serde::Deserialize;
use serde_json::json;

/// The pickup pepper used when none is configured (development; warned about at start).
pub const DEVELOPMENT_PICKUP_PEPPER: &str = "latch-dev-pickup-pepper-change-me";

/// The server-side key of pickup codes' MAC (`LATCH_PICKUP_PEPPER`); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PickupPepper(Vec<u8>);

impl PickupPepper {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }
    pub fn development() -> Self {
        Self::new(DEVELOPMENT_PICKUP_PEPPER)
    }
    pub fn is_development(&self) -> bool {
        self.0 == DEVELOPMENT_PICKUP_PEPPER.as_bytes()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for PickupPepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PickupPepper(..)")
    }
}

/// Digits in a pickup code: 10^12 codes, so guessing one within the collection limits is
/// hopeless, and still typeable from an SMS.
pub const PICKUP_CODE_DIGITS: usize = 12;

/// A fresh pickup code, uniform over every [`PICKUP_CODE_DIGITS`]-digit string.
fn new_pickup_code() -> String {
    let code = rand::random_range(0..10u64.pow(PICKUP_CODE_DIGITS as u32));
    format!("{code:0width$}", width = PICKUP_CODE_DIGITS)
}

/// How a pickup code is kept: HMAC-SHA256 over the compartment and the code under the
/// server-side pepper, hex. Without the pepper, the log gives nothing to try codes against.
pub fn pickup_mac(pepper: &PickupPepper, id: &CompartmentId, code: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(pepper.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{id}:{code}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A collector's code in both forms a deposit may have kept: the MAC, and the plain SHA-256
/// that deposits recorded as `ParcelDeposited` version 1 kept.
fn pickup_proof(pepper: &PickupPepper, id: &CompartmentId, code: &str) -> PickupProof {
    use sha2::{Digest, Sha256};
    PickupProof {
        mac: pickup_mac(pepper, id, code),
        legacy_sha256: hex::encode(Sha256::digest(format!("{id}:{code}").as_bytes())),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub parcel: String,
}

/// The holder deposits a parcel: recorded once, with a pickup code for the recipient.
#[utoipa::path(post, path = "/lockers/compartments/{id}/deposit", tag = "lockers", request_body = Deposit, params(("id" = String, Path)),
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn deposit(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Deposit>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let user = me(&actor)?;
    let id = CompartmentId::parse("id", &id)?;
    let parcel = latch_domain::locker::ParcelNumber::parse("parcel", &body.value.parcel)?;
    let code = new_pickup_code();
    let command = CompartmentCommand::Deposit {
        user,
        parcel: parcel.clone(),
        pickup_code_mac: pickup_mac(&state.lockers.settings.pickup_pepper, &id, &code),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_twelve_digits_and_macs_need_the_pepper() {
        let code = new_pickup_code();
        assert_eq!(code.len(), PICKUP_CODE_DIGITS);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let id = CompartmentId::parse("id", "610091A01:01").unwrap();
        let one = PickupPepper::new("pepper-one");
        let a = pickup_mac(&one, &id, &code);
        assert_eq!(a, pickup_mac(&one, &id, &code));
        assert_ne!(a, pickup_mac(&PickupPepper::new("pepper-two"), &id, &code));
        assert!(!format!("{one:?}").contains("pepper-one"));
        let proof = pickup_proof(&one, &id, &code);
        assert_eq!(proof.mac, a);
        assert_ne!(proof.legacy_sha256, a);
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    pub pickup_code: String,
}

/// The recipient collects with the pickup code; the compartment becomes free. Callers: a
/// locker user, an operator, or the kiosk token of the compartment's site (`kiosk:<site>`).
#[utoipa::path(post, path = "/lockers/compartments/{id}/collect", tag = "lockers", request_body = Collect, params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 429, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
pub async fn collect(
    State(state): State<AppState>,
    LockerCaller(actor): LockerCaller,
    meta: RequestMeta,
    Path(id): Path<String>,
    body: JsonBody<Collect>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = CompartmentId::parse("id", &id)?;
    match actor.role {
        Role::Operator => {}
        // A locker's screen collects at its own site only.
        Role::Kiosk if kiosk_site(&actor) == Some(id.site.as_str()) => {}
        Role::Kiosk => {
            return Err(ApiError::Forbidden(
                "this kiosk token is for another site".into(),
            ))
        }
        _ => {
            me(&actor)?;
        }
    }
    // Per caller (and globally for callers who were wrong lately), never per compartment: a
    // stranger's guesses must not lock the recipient out.
    state.lockers.limits.pickup(&actor)?;
    let command = CompartmentCommand::Collect {
        proof: pickup_proof(
            &state.lockers.settings.pickup_pepper,
            &id,
            body.value.pickup_code.trim(),
        ),
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
