//! The table `latch bench failover` prints: failover times beside the baseline, the load's
//! figures, the checks as pass or fail, and the instances' memory.

use super::checks::Check;
use super::load::{Beats, Tally};
use super::{FailoverArgs, POLL, RESUME_LIMIT};
use crate::bench::{Report, Row};
use hdrhistogram::Histogram;
use std::time::Duration;

/// Everything measured, for the report.
pub(super) struct Figures {
    pub(super) baseline: Histogram<u64>,
    pub(super) relay_times: Vec<Option<Duration>>,
    pub(super) leader_times: Vec<Option<Duration>>,
    /// From the kill until a surviving node named another EVENTS leader.
    pub(super) elections: Vec<Option<Duration>>,
    pub(super) catch_up: Vec<Option<Duration>>,
    pub(super) commands: Tally,
    pub(super) beats: Beats,
    pub(super) checks: Vec<Check>,
    /// Each surviving instance's memory, as text.
    pub(super) rss: Vec<String>,
    /// `latch serve` instances started in all.
    pub(super) instances: usize,
}

pub(super) fn fill(report: &mut Report, args: &FailoverArgs, f: Figures) {
    let base_p50 = ms(&f.baseline, 0.5);
    let baseline_text = format!(
        "commit -> on EVENTS, no kill: p50 {:.1} ms, p99 {:.1} ms ({} events)",
        base_p50,
        ms(&f.baseline, 0.99),
        f.baseline.len()
    );
    report.rows.push(Row {
        what: format!(
            "relay failover: kill -9 of the relay lock's holder -> EVENTS moves again ({} rounds)",
            args.rounds
        ),
        value: spread(&f.relay_times, true),
        baseline: baseline_text.clone(),
        ratio: ratio(&f.relay_times, base_p50),
        target: "< 5 s".into(),
    });
    report.rows.push(Row {
        what: format!(
            "EVENTS leader failover: kill -9 of the node leading EVENTS -> EVENTS moves again ({} rounds)",
            args.leader_rounds
        ),
        value: spread(&f.leader_times, false),
        baseline: baseline_text,
        ratio: ratio(&f.leader_times, base_p50),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: until a surviving node names a new EVENTS leader (raft election)".into(),
        value: spread(&f.elections, false),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "restarted node's EVENTS replica current again".into(),
        value: spread(&f.catch_up, false),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    let run_secs = f.commands.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "HTTP registrations during the whole run ({}/s offered by {} clients, {:.0} s)",
            args.rate, args.clients, run_secs
        ),
        value: format!(
            "{} answered ({:.0}/s; p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms); {} answered after a \
             failed attempt (retried with the same Idempotency-Key); {} unanswered; {} refused; \
             {} sends held back by {} unanswered per client",
            f.commands.answered,
            f.commands.answered as f64 / run_secs,
            ms(&f.commands.latency, 0.5),
            ms(&f.commands.latency, 0.99),
            f.commands.latency.max() as f64 / 1000.0,
            f.commands.retried,
            f.commands.unanswered,
            f.commands.refused,
            f.commands.held_back,
            super::load::MAX_IN_FLIGHT
        ),
        baseline: format!(
            "baseline window: p50 {:.1} ms, p99 {:.1} ms",
            ms(&f.commands.quiet, 0.5),
            ms(&f.commands.quiet, 0.99)
        ),
        ratio: format!(
            "p99 {:.1}x",
            ms(&f.commands.latency, 0.99) / ms(&f.commands.quiet, 0.99).max(0.001)
        ),
        target: "0 unanswered".into(),
    });
    report.rows.push(Row {
        what: format!(
            "heartbeats over JetStream ({} cabinets, every {} ms)",
            args.cabinets, args.heartbeat_ms
        ),
        value: format!("{} acknowledged, {} failed", f.beats.sent, f.beats.failed),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    for check in f.checks {
        report.rows.push(Row {
            what: format!("check: {}", check.what),
            value: if check.pass {
                format!("pass ({})", check.detail)
            } else {
                format!("FAIL ({})", check.detail)
            },
            baseline: "-".into(),
            ratio: "-".into(),
            target: "pass".into(),
        });
    }
    report.rows.push(Row {
        what: "`latch serve` RSS at the end (all roles)".into(),
        value: f.rss.join("; "),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "< 100 MB".into(),
    });
    report.notes.push(format!(
        "Failover times run from the kill -9 to the first read of the EVENTS stream (through a \
         surviving node, every {} ms) showing a last sequence past where it stood; a relay \
         holder's stream position is read after it was reaped, a leader's just before the kill. \
         The baseline is each event's recorded_at (set in its transaction) to its arrival on a \
         core subscription to latch.events.>, over {} s of the same load before any kill. {} \
         `latch serve` instances were started in all; each was started as the standby of the one \
         holding the relay lock. The relay's standby tries the lock every 500 ms.",
        POLL.as_millis(),
        args.seconds,
        f.instances
    ));
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// p50 (p90) and max of the rounds that resumed, and how many did not.
fn spread(times: &[Option<Duration>], p90: bool) -> String {
    let mut ok: Vec<f64> = times
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    if ok.is_empty() {
        return format!("none of {} rounds resumed", times.len());
    }
    ok.sort_by(f64::total_cmp);
    let at = |q: f64| ok[((ok.len() as f64 * q).ceil() as usize).clamp(1, ok.len()) - 1];
    let mut text = format!("p50 {:.0} ms", at(0.5));
    if p90 {
        text.push_str(&format!(", p90 {:.0} ms", at(0.9)));
    }
    text.push_str(&format!(", max {:.0} ms", ok[ok.len() - 1]));
    let failed = times.len() - ok.len();
    if failed > 0 {
        text.push_str(&format!(
            "; FAIL: {failed} did not resume in {} s",
            RESUME_LIMIT.as_secs()
        ));
    }
    text
}

fn ratio(times: &[Option<Duration>], base_p50_ms: f64) -> String {
    let mut ok: Vec<f64> = times
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    if ok.is_empty() {
        return "-".into();
    }
    ok.sort_by(f64::total_cmp);
    let p50 = ok[(ok.len().div_ceil(2)).max(1) - 1];
    format!("p50 {:.0}x the baseline p50", p50 / base_p50_ms.max(0.001))
}
