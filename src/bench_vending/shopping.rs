//! The door-opening phase: N shoppers in a closed loop, one per cabinet, and its rows.

use super::cabinet::{open_and_close, press_open, wait_ended, Cabinet, Opened};
use super::{percentiles, Baselines, Env, Error, VendingArgs};
use crate::bench::{hist, Report, Row};
use crate::bench_cpu::cpu_split;
use hdrhistogram::Histogram;
use latch_api::auth::{issue_token, Role as TokenRole};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One whole visit's stages after the command arrived.
struct Visit {
    opened: Opened,
    /// Command -> the cabinet's four reports published and acked by the stream.
    reports: Duration,
    /// Last report acked -> `ShoppingSessionEnded` seen (ingest of the four reports, relay).
    settle: Duration,
}

/// The door-opening phase: its histograms (microseconds) and counts.
pub(super) struct Shopping {
    http: Histogram<u64>,
    command: Histogram<u64>,
    cycle: Histogram<u64>,
    reports: Histogram<u64>,
    settle: Histogram<u64>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    /// CPU used meanwhile, per process, in % of one core.
    cpu: String,
    /// CPU of latch serve, its Postgres backends and nats-server per event, drained.
    path_cpu: Option<crate::bench_cpu::Spent>,
}

pub(super) async fn shopping_phase(
    env: &Env,
    cabinets: &mut Vec<Cabinet>,
    args: &VendingArgs,
) -> Result<Shopping, Error> {
    let mut tokens = Vec::with_capacity(cabinets.len());
    for i in 0..cabinets.len() {
        let subject = format!("kazaya:bench-{i:04}");
        tokens.push(issue_token(&env.pool, TokenRole::User, &subject).await?);
    }
    let env = Arc::new(Env {
        pool: env.pool.clone(),
        client: env.client.clone(),
        js: env.js.clone(),
        http: env.http.clone(),
        base: env.base.clone(),
        pid: env.pid.clone(),
        nats_pid: env.nats_pid,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(tokio::sync::Barrier::new(cabinets.len() + 1));
    let mut tasks = Vec::with_capacity(cabinets.len());
    for (mut cab, token) in cabinets.drain(..).zip(tokens) {
        let (env, stop, start) = (env.clone(), stop.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let (mut http, mut command, mut cycle) = (hist(), hist(), hist());
            let (mut reports, mut settle) = (hist(), hist());
            let (mut errors, mut first_error) = (0u64, None);
            // One unmeasured round: connections open, caches warm.
            if let Err(e) = shop_once(&env, &token, &mut cab).await {
                tracing::warn!(error = %e, "warm-up round failed");
            }
            start.wait().await;
            while !stop.load(Ordering::Relaxed) {
                let pressed = Instant::now();
                match shop_once(&env, &token, &mut cab).await {
                    Ok(visit) => {
                        http.saturating_record(visit.opened.http.as_micros() as u64);
                        command.saturating_record(visit.opened.command.as_micros() as u64);
                        reports.saturating_record(visit.reports.as_micros() as u64);
                        settle.saturating_record(visit.settle.as_micros() as u64);
                        cycle.saturating_record(pressed.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        // Let a stuck opening run into its deadline rather than spin on 409s.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let hists = [http, command, cycle, reports, settle];
            (cab, hists, errors, first_error)
        }));
    }
    start.wait().await;
    let cpu_before = cpu_split(&env.pid);
    let procs = crate::bench_cpu::Processes {
        latch: env.pid.clone(),
        latch_includes_clients: false,
        nats: env.nats_pid,
    };
    let (path_before, events_before) = (
        crate::bench_cpu::sample(&env.pool, &procs).await,
        crate::bench_cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut shopping = Shopping {
        http: hist(),
        command: hist(),
        cycle: hist(),
        reports: hist(),
        settle: hist(),
        elapsed: Duration::ZERO,
        errors: 0,
        first_error: None,
        cpu: String::new(),
        path_cpu: None,
    };
    for task in tasks {
        let (cab, [http, command, cycle, reports, settle], errors, first_error) = task.await?;
        cabinets.push(cab);
        shopping.http.add(&http).expect("same bounds");
        shopping.command.add(&command).expect("same bounds");
        shopping.cycle.add(&cycle).expect("same bounds");
        shopping.reports.add(&reports).expect("same bounds");
        shopping.settle.add(&settle).expect("same bounds");
        shopping.errors += errors;
        if shopping.first_error.is_none() {
            shopping.first_error = first_error;
        }
    }
    shopping.elapsed = started.elapsed();
    let secs = shopping.elapsed.as_secs_f64();
    shopping.cpu = cpu_split(&env.pid)
        .iter()
        .zip(&cpu_before)
        .map(|((who, after), (_, before))| format!("{who} {:.0}%", (after - before) / secs * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    crate::bench_cpu::drained(&env.pool, Duration::from_secs(60)).await;
    shopping.path_cpu = Some(crate::bench_cpu::spent(
        &path_before,
        &crate::bench_cpu::sample(&env.pool, &procs).await,
        crate::bench_cpu::events(&env.pool).await - events_before,
        &procs,
    ));
    Ok(shopping)
}

/// One whole visit: open, the cabinet's reports with nothing taken, the cabinet free again.
async fn shop_once(env: &Env, token: &str, cab: &mut Cabinet) -> Result<Visit, String> {
    let opened = press_open(env, token, cab).await?;
    let reporting = Instant::now();
    open_and_close(cab, &opened).await?;
    cab.weigh(opened.session_id, "after", 0).await?;
    let reported = Instant::now();
    let ended = wait_ended(cab, opened.session_id).await?;
    Ok(Visit {
        opened,
        reports: reported - reporting,
        settle: ended.saturating_duration_since(reported),
    })
}

pub(super) fn report_shopping(
    s: &Shopping,
    base: &Baselines,
    args: &VendingArgs,
    report: &mut Report,
) {
    let n = args.cabinets;
    if let Some(spent) = &s.path_cpu {
        report.rows.push(crate::bench_cpu::row(
            "whole visits (open, door, weights, settlement, read models)",
            spent,
            &base.insert_cpu,
            "-",
        ));
    }
    let openings = s.cycle.len() as f64 / s.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "door-open latency: press (POST open) -> open command on the cabinet's subject, \
             {n} shoppers at {n} cabinets"
        ),
        value: format!("{} ({} openings)", percentiles(&s.command), s.command.len()),
        baseline: format!(
            "bare axum handler, same request, {n} clients: {}",
            percentiles(&base.bare.hist)
        ),
        ratio: format!(
            "p50 {:.1}x",
            s.command.value_at_quantile(0.5) as f64
                / base.bare.hist.value_at_quantile(0.5).max(1) as f64
        ),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: POST open -> 202 answer".into(),
        value: percentiles(&s.http),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: command -> the cabinet's 4 reports (before, door open, door closed, \
               after) acked by JetStream"
            .into(),
        value: percentiles(&s.reports),
        baseline: format!(
            "one raw acked publish: {}",
            percentiles(&base.publish_acked.hist)
        ),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which: `after` report acked -> cabinet free again (ShoppingSessionEnded \
               seen on the events stream)"
            .into(),
        value: percentiles(&s.settle),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: format!(
            "openings/s, {n} shoppers in a closed loop (open, command, weights before, door \
             open, door closed, weights after, cabinet free again)"
        ),
        value: format!(
            "{openings:.0}/s (whole visit {}; {} errors)",
            percentiles(&s.cycle),
            s.errors
        ),
        baseline: format!(
            "bare axum handler {:.0}/s; raw INSERT ({n} clients, {}-connection pool) {:.0}/s",
            base.bare.per_sec, base.pool_size, base.insert.per_sec
        ),
        ratio: format!(
            "{:.3}x bare; {:.2}x INSERT",
            openings / base.bare.per_sec,
            openings / base.insert.per_sec
        ),
        target: "-".into(),
    });
    report.notes.push(format!(
        "door-opening phase: {} s measured after one unmeasured visit per shopper; a shopper \
         takes nothing (weights after = before, order no_charge), so it may open again at once. \
         The command is timed when this process's subscription received it (a forwarding task \
         per cabinet timestamps each message). In a closed loop a visit's latency is \
         shoppers / throughput (Little's law). CPU meanwhile, % of one core (the machine has \
         {} cores): {}{}",
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.cpu,
        s.first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; first error: {e}"))
    ));
}
