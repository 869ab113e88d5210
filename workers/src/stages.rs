//! Per-stage timings of the path from command to read model (issue 16), as metrics.
//!
//! The HTTP layer and the command bus time themselves (`latch_http_request_duration_seconds`,
//! `latch_command_duration_seconds`). After the append, an event passes three more stages:
//! the relay sequences it (dense position, hash chain), publishes it to `EVENTS`, and each
//! projector applies it. For each stage two figures tell where time goes:
//! - `latch_stage_delay_seconds{stage, projector}`: the age of the last event of a batch (now
//!   minus its commit time) when the stage finished with it, so consecutive stages' delays show
//!   how much each one adds;
//! - `latch_stage_batch_seconds{stage, projector}`: how long one batch of the stage took (the
//!   work itself, without the waiting), with `latch_stage_events_total` counting its events.
//!
//! The age is measured against the database's commit-time stamp and this process's clock; on
//! one machine they agree, across machines it is as good as their clock sync.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// One batch of `stage` finished: it took `took` for `events` events, the last of which was
/// committed at `last_recorded_at`.
pub fn finished(
    stage: &'static str,
    projector: &str,
    took: Duration,
    events: usize,
    last_recorded_at: Option<DateTime<Utc>>,
) {
    let labels = [
        ("stage", stage.to_owned()),
        ("projector", projector.to_owned()),
    ];
    metrics::histogram!("latch_stage_batch_seconds", &labels).record(took.as_secs_f64());
    metrics::counter!("latch_stage_events_total", &labels).increment(events as u64);
    if let Some(at) = last_recorded_at {
        let age = (Utc::now() - at).to_std().unwrap_or_default();
        metrics::histogram!("latch_stage_delay_seconds", &labels).record(age.as_secs_f64());
    }
}
