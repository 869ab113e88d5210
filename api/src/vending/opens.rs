//! What a shopper's "open" must pass before a cabinet is asked to unlock (issue 13):
//!
//! - the sticker's signature: the phone got it by scanning the cabinet, so a shopper who only
//!   knows a cabinet's id cannot open it from afar;
//! - a rate limit per member;
//! - one active session per member: a member whose last opening still holds its cabinet (or
//!   is still being recorded) cannot open another.
//!
//! The last is a claim in `shopper_opens` (migration 0032), taken by compare-and-set so two
//! concurrent opens of one member cannot both pass, and judged against the device aggregate
//! (loaded from the event store), which holds the session from the open request until it is
//! settled or the opening fails. No connection is held across the device command.

use super::{sticker, VendingConfig};
use crate::error::ApiError;
use crate::qr::limits::Limit;
use crate::AppState;
use chrono::{DateTime, Utc};
use latch_domain::clock::SharedClock;
use latch_domain::device::DeviceId;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// How long a claim whose open never finished (the process died mid-request) blocks the
/// member's next open. A live request records its outcome within its command's time.
pub const STALE_CLAIM: chrono::Duration = chrono::Duration::seconds(30);

/// The sticker's signature must come with the open: missing is 403 `sticker_required`, wrong
/// (forged, or another cabinet's) 403 `forged_cabinet_link`.
pub fn check_sticker(
    config: &VendingConfig,
    device: &DeviceId,
    k: Option<&str>,
) -> Result<(), ApiError> {
    let Some(k) = k.filter(|k| !k.is_empty()) else {
        return Err(ApiError::Denied {
            code: "sticker_required",
            message: "k: scan the cabinet's sticker to open it".into(),
        });
    };
    if k.len() > 64 || !sticker::verify(&config.sticker_key, device, k) {
        return Err(ApiError::Denied {
            code: "forged_cabinet_link",
            message: "k: this is not the signature of this cabinet's sticker".into(),
        });
    }
    Ok(())
}

/// "Open" presses per member per minute.
pub struct OpenLimit {
    limit: Limit<String>,
    seen: AtomicU64,
}

impl OpenLimit {
    pub fn new(per_minute: u32, clock: SharedClock) -> Self {
        Self {
            limit: Limit::per_minute(per_minute, clock),
            seen: AtomicU64::new(0),
        }
    }

    /// 429 `too_many_opens` when `member` pressed too often.
    pub fn check(&self, member: &str) -> Result<(), ApiError> {
        // Keys are members with a session; still, forget those back at full allowance.
        if self.seen.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limit.tidy();
        }
        self.limit
            .check(&member.to_owned())
            .map_err(|wait| ApiError::TooManyRequests {
                code: "too_many_opens",
                message: "too many openings in a short time; wait and try again".into(),
                retry_after_secs: wait.as_secs().max(1),
            })
    }
}

/// A member's claim on opening, taken before the device command and settled after it.
pub struct Claim<'a> {
    state: &'a AppState,
    member: String,
    session_id: Uuid,
}

fn busy(device: Uuid) -> ApiError {
    ApiError::Conflict {
        code: "shopper_session_active",
        message: format!(
            "you already have an opening in progress at cabinet {device}; finish it first"
        ),
    }
}

impl<'a> Claim<'a> {
    /// Claims opening `session_id` at `device` for `member`, or 409 `shopper_session_active`.
    pub async fn take(
        state: &'a AppState,
        member: &str,
        device: &DeviceId,
        session_id: Uuid,
    ) -> Result<Claim<'a>, ApiError> {
        let now = state.clock.now();
        let prev: Option<(Uuid, Uuid, DateTime<Utc>, bool)> = sqlx::query_as(
            "SELECT device_id, session_id, claimed_at, in_flight FROM shopper_opens WHERE member = $1",
        )
        .bind(member)
        .fetch_optional(&state.pool)
        .await?;
        let claimed = match prev {
            None => sqlx::query(
                "INSERT INTO shopper_opens (member, device_id, session_id, claimed_at, in_flight) \
                 VALUES ($1, $2, $3, $4, true) ON CONFLICT (member) DO NOTHING",
            )
            .bind(member)
            .bind(device.as_uuid())
            .bind(session_id)
            .bind(now)
            .execute(&state.pool)
            .await?
            .rows_affected(),
            Some((prev_device, prev_session, claimed_at, in_flight)) => {
                if in_flight && now - claimed_at < STALE_CLAIM {
                    return Err(busy(prev_device));
                }
                let holder = state.store.devices.load(&prev_device.to_string()).await?;
                if holder
                    .and_then(|d| d.session)
                    .is_some_and(|s| s.session_id == prev_session)
                {
                    return Err(busy(prev_device));
                }
                // Compare-and-set: of two opens that both saw the old claim, one replaces it.
                sqlx::query(
                    "UPDATE shopper_opens SET device_id = $2, session_id = $3, claimed_at = $4, \
                     in_flight = true WHERE member = $1 AND session_id = $5",
                )
                .bind(member)
                .bind(device.as_uuid())
                .bind(session_id)
                .bind(now)
                .bind(prev_session)
                .execute(&state.pool)
                .await?
                .rows_affected()
            }
        };
        if claimed == 0 {
            return Err(busy(device.as_uuid()));
        }
        Ok(Claim {
            state,
            member: member.to_owned(),
            session_id,
        })
    }

    /// The device command ran (recorded or refused): the claim is no longer in flight. If it
    /// was recorded, the device now holds the session and the member stays busy until it ends;
    /// if refused, the device does not, and the member may open again at once.
    pub async fn settle(self) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE shopper_opens SET in_flight = false WHERE member = $1 AND session_id = $2",
        )
        .bind(&self.member)
        .bind(self.session_id)
        .execute(&self.state.pool)
        .await?;
        Ok(())
    }
}
