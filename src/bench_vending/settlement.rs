//! The settlement phase: every cabinet's `after` report at once, timed to its order row, and
//! its rows.

use super::cabinet::{open_and_close, press_open, wait_ended, Cabinet, Opened};
use super::{percentiles, wait_count, Baselines, Env, Error, VendingArgs, ORDERS_POLL, WAIT_LIMIT};
use crate::bench::{hist, Report, Row};
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The settlement phase's figures.
pub(super) struct Settlement {
    /// Report published -> row visible, microseconds.
    latency: Histogram<u64>,
    settled: usize,
    /// Sum over rounds of first publish -> last row visible.
    window: Duration,
    /// Sum over rounds of first publish -> last publish acked.
    publishing: Duration,
    open_failures: usize,
    first_error: Option<String>,
}

pub(super) async fn settlement_phase(
    env: &Env,
    cabinets: &mut [Cabinet],
    args: &VendingArgs,
) -> Result<Settlement, Error> {
    let mut out = Settlement {
        latency: hist(),
        settled: 0,
        window: Duration::ZERO,
        publishing: Duration::ZERO,
        open_failures: 0,
        first_error: None,
    };
    for round in 0..args.settle_rounds {
        // A new member per session: each leaves an unpaid order behind.
        let mut tokens = Vec::with_capacity(cabinets.len());
        for i in 0..cabinets.len() {
            let subject = format!("kazaya:bench-r{round}-{i:04}");
            tokens.push(issue_token(&env.pool, TokenRole::User, &subject).await?);
        }
        let opened: Vec<Result<Opened, String>> =
            futures::future::join_all(cabinets.iter_mut().zip(&tokens).map(
                |(cab, token)| async move {
                    let opened = press_open(env, token, cab).await?;
                    open_and_close(cab, &opened).await?;
                    Ok(opened)
                },
            ))
            .await;
        let mut open: Vec<(usize, Uuid)> = Vec::new();
        for (i, o) in opened.into_iter().enumerate() {
            match o {
                Ok(o) => open.push((i, o.session_id)),
                Err(e) => {
                    out.open_failures += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
        let sessions: Vec<Uuid> = open.iter().map(|(_, s)| *s).collect();
        let devices: Vec<Uuid> = open.iter().map(|(i, _)| cabinets[*i].id).collect();
        // Quiet first: every session open in the read model, every door event applied.
        wait_count(
            &env.pool,
            "SELECT count(*) FROM orders WHERE session_id = ANY($1) AND status = 'open'",
            &sessions,
            sessions.len() as i64,
        )
        .await?;
        wait_count(
            &env.pool,
            "SELECT count(*) FROM device_status WHERE device_id = ANY($1) AND door = 'closed'
                AND pending_open_request IS NULL AND current_session IS NOT NULL",
            &devices,
            devices.len() as i64,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;

        // All the `after` reports at once, one unit taken from shelf 1.
        let started = Instant::now();
        let published: Vec<(Uuid, Instant, Result<(), String>)> =
            futures::future::join_all(open.iter().map(|&(i, sid)| {
                let cab = &cabinets[i];
                async move {
                    let t = Instant::now();
                    (sid, t, cab.weigh(sid, "after", 1).await)
                }
            }))
            .await;
        out.publishing += started.elapsed();
        let mut sent_at = std::collections::HashMap::new();
        for (sid, t, r) in published {
            match r {
                Ok(()) => {
                    sent_at.insert(sid, t);
                }
                Err(e) => {
                    out.first_error.get_or_insert(e);
                }
            }
        }
        let pending: Vec<Uuid> = sent_at.keys().copied().collect();
        let mut seen = std::collections::HashSet::new();
        let mut last = started;
        while seen.len() < pending.len() {
            let rows: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT session_id FROM orders WHERE session_id = ANY($1) AND status <> 'open'",
            )
            .bind(&pending)
            .fetch_all(&env.pool)
            .await?;
            let now = Instant::now();
            for (sid,) in rows {
                if seen.insert(sid) {
                    last = now;
                    let t = sent_at[&sid];
                    out.latency
                        .saturating_record(now.saturating_duration_since(t).as_micros() as u64);
                }
            }
            if started.elapsed() > WAIT_LIMIT {
                return Err(format!(
                    "round {round}: only {} of {} orders settled in {WAIT_LIMIT:?}",
                    seen.len(),
                    pending.len()
                )
                .into());
            }
            tokio::time::sleep(ORDERS_POLL).await;
        }
        out.settled += seen.len();
        out.window += last.saturating_duration_since(started);
        tracing::info!(
            round,
            settled = seen.len(),
            secs = last.saturating_duration_since(started).as_secs_f64(),
            "settlement round"
        );
        // Every cabinet free again before the next round.
        for (i, sid) in &open {
            wait_ended(&mut cabinets[*i], *sid).await?;
        }
    }
    Ok(out)
}

pub(super) fn report_settlement(
    s: &Settlement,
    base: &Baselines,
    args: &VendingArgs,
    report: &mut Report,
) {
    let rate = s.settled as f64 / s.window.as_secs_f64().max(1e-9);
    let n = args.cabinets;
    report.rows.push(Row {
        what: format!(
            "settlement: `after` weights report -> order row placed, {} rounds of {n} \
             reports published at once",
            args.settle_rounds
        ),
        value: format!("{rate:.0} orders/s ({} orders)", s.settled),
        baseline: format!(
            "raw JetStream publish, acked, {n} publishers: {:.0}/s; raw INSERT {:.0}/s",
            base.publish_acked.per_sec, base.insert.per_sec
        ),
        ratio: format!(
            "{:.3}x publish; {:.2}x INSERT",
            rate / base.publish_acked.per_sec,
            rate / base.insert.per_sec
        ),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "settlement latency: report publish -> order row visible".into(),
        value: percentiles(&s.latency),
        baseline: format!(
            "raw acked publish: {}",
            percentiles(&base.publish_acked.hist)
        ),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.notes.push(format!(
        "settlement phase: before each round every cabinet got an open session (a new member \
         each, as each leaves an unpaid order) and the bench waited until every session was \
         open in the orders table and every door event applied; then the {n} `after` reports \
         (one Cola taken) went out at once ({:.0} ms on average to have all acked) and the \
         orders table was polled every {} ms until each row left `open` (so latencies carry up \
         to that much polling error); throughput = orders / (first publish -> last row \
         visible), summed over rounds. Openings that failed while setting up rounds: {}{}. \
         Raw pipelined JetStream publish (windows of 1000, as the relay): {:.0}/s",
        s.publishing.as_secs_f64() * 1000.0 / args.settle_rounds.max(1) as f64,
        ORDERS_POLL.as_millis(),
        s.open_failures,
        s.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first error: {e})")),
        base.publish_pipelined
    ));
}
