//! Sticker scans as facts: every scan of a cabinet link is one `sticker_scan` stream (see
//! `latch_domain::vending::sticker_scan`), classified genuine, swapped or forged.
//!
//! Anyone can open a link, so two things keep anonymous traffic from growing the log without
//! bound: each scan is its own one-event stream (nothing long-lived grows), and each client IP
//! may have at most [`SCANS_PER_MINUTE_PER_IP`] scans recorded a minute. Scans over that are
//! answered exactly as before but only logged, so a shopper never sees a difference.
//!
//! A swapped sticker is told from a forged one cheaply: the signature is looked up in an index
//! of every registered vending cabinet's signature, built from the device read model at most
//! once per [`INDEX_MAX_AGE`] and only when a link fails its check. A cabinet registered since
//! the last build is classified forged until the next one.

use super::sticker;
use crate::error::{from_command_error, ApiError};
use crate::qr::limits::Limit;
use crate::AppState;
use latch_domain::clock::SystemClock;
use latch_domain::device::DeviceId;
use latch_domain::store::CommandContext;
use latch_domain::vending::{KazayaUserId, ScanCommand, ScanVerdict};
use latch_projections::device_status;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Scans recorded per client IP per minute; more are answered but not recorded.
pub const SCANS_PER_MINUTE_PER_IP: u32 = 30;
/// How stale the swapped-sticker index may get.
pub const INDEX_MAX_AGE: Duration = Duration::from_secs(60);
/// Cabinets indexed at most (beyond that, swapped stickers read as forged).
const INDEX_MAX_CABINETS: i64 = 100_000;
/// The limiter forgets IPs back at full allowance after this many scans.
const TIDY_EVERY: u64 = 4096;

type Index = (Instant, HashMap<String, DeviceId>);

/// The per-IP recording limit and the swapped-sticker index.
pub struct Scans {
    limit: Limit<IpAddr>,
    seen: AtomicU64,
    /// Rebuilt under the lock, so a burst of forged scans costs one query, not one each.
    index: tokio::sync::Mutex<Option<Index>>,
}

impl Default for Scans {
    fn default() -> Self {
        Self {
            limit: Limit::per_minute(SCANS_PER_MINUTE_PER_IP, Arc::new(SystemClock)),
            seen: AtomicU64::new(0),
            index: tokio::sync::Mutex::new(None),
        }
    }
}

impl Scans {
    /// Whether this client's scan may be recorded now.
    fn admit(&self, ip: IpAddr) -> bool {
        if self.seen.fetch_add(1, Ordering::Relaxed) % TIDY_EVERY == TIDY_EVERY - 1 {
            self.limit.tidy();
        }
        self.limit.check(&ip).is_ok()
    }

    /// The cabinet this genuine signature was made for, if it is a registered cabinet's.
    async fn genuine_for(&self, state: &AppState, sig: &str) -> Result<Option<DeviceId>, ApiError> {
        let mut index = self.index.lock().await;
        let stale = index
            .as_ref()
            .is_none_or(|(built, _)| built.elapsed() >= INDEX_MAX_AGE);
        if stale {
            let key = &state.vending.config.sticker_key;
            let ids = device_status::queries::vending_ids(&state.pool, INDEX_MAX_CABINETS).await?;
            let map = ids
                .into_iter()
                .map(DeviceId::from)
                .map(|d| (sticker::signature(key, &d), d))
                .collect();
            *index = Some((Instant::now(), map));
        }
        Ok(index.as_ref().and_then(|(_, map)| map.get(sig).copied()))
    }
}

/// Classifies one scan of `/m/c/{raw_cabinet}?k={sig}`.
pub async fn classify(
    state: &AppState,
    cabinet: Option<&DeviceId>,
    sig: Option<&str>,
) -> Result<ScanVerdict, ApiError> {
    let key = &state.vending.config.sticker_key;
    let Some(sig) = sig else {
        return Ok(ScanVerdict::Forged);
    };
    if cabinet.is_some_and(|c| sticker::verify(key, c, sig)) {
        return Ok(ScanVerdict::Genuine);
    }
    // Only a well-formed signature on a link to a cabinet id can be a moved sticker: no query
    // for garbage.
    if cabinet.is_none() || sig.len() != sticker::SIG_CHARS {
        return Ok(ScanVerdict::Forged);
    }
    Ok(match state.vending.scans.genuine_for(state, sig).await? {
        Some(other) if Some(&other) != cabinet => ScanVerdict::Swapped { genuine_for: other },
        _ => ScanVerdict::Forged,
    })
}

/// Records one scan (one command), unless this client is over its recording limit. Returns
/// whether it was recorded.
pub async fn record(
    state: &AppState,
    ip: IpAddr,
    cabinet: Option<DeviceId>,
    verdict: ScanVerdict,
    shopper: Option<KazayaUserId>,
) -> Result<bool, ApiError> {
    if !state.vending.scans.admit(ip) {
        tracing::warn!(%ip, ?cabinet, ?verdict, "sticker scan over the per-IP limit: not recorded");
        return Ok(false);
    }
    let mut ctx = CommandContext::new(match &shopper {
        Some(s) => format!("user:kazaya:{}", s.as_str()),
        None => "anonymous:sticker".to_owned(),
    });
    if let Some(c) = &cabinet {
        ctx = ctx.with_device(c.to_string());
    }
    let command = ScanCommand::Record {
        cabinet,
        verdict,
        shopper,
        at: state.clock.now(),
    };
    state
        .store
        .sticker_scans
        .create(&Uuid::now_v7().to_string(), command.name(), command, &ctx)
        .await
        .map_err(from_command_error)?;
    Ok(true)
}
