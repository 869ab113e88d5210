//! The direct-grant phase: holder pairs handing compartments back and forth, and its rows.

use super::setup::{post, user_number};
use super::watch::{expect, Waiting};
use super::{
    cpu_share, percentiles, Baselines, Env, Error, LockersArgs, DIRECT_SITE, STEP_TIMEOUT,
};
use crate::bench::{hist, Report, Row};
use crate::bench_cpu::{self as cpu, cpu_split};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The direct-grant phase: histograms in microseconds, counts.
pub(super) struct Direct {
    answered: Histogram<u64>,
    changed: Histogram<u64>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    cpu: String,
    /// CPU of latch serve, its Postgres backends and nats-server per event, drained.
    path_cpu: cpu::Spent,
}

/// One grant from `from` to `to` of `compartment`: (to 201, to holder changed), microseconds.
async fn grant_once(
    env: &Env,
    waiting: &Waiting,
    token: &str,
    compartment: &str,
    to: &str,
) -> Result<(u64, u64), String> {
    let number = compartment
        .split_once(':')
        .map(|(_, n)| n)
        .unwrap_or_default();
    let changed = expect(waiting, compartment, to);
    let started = Instant::now();
    post(
        env,
        "/lockers/grants",
        token,
        json!({"site": DIRECT_SITE, "compartment": number, "receiver": to}),
    )
    .await?;
    let answered = started.elapsed();
    let at = tokio::time::timeout(STEP_TIMEOUT, changed)
        .await
        .map_err(|_| format!("{compartment}: holder {to} not projected in {STEP_TIMEOUT:?}"))?
        .map_err(|_| "watcher stopped".to_owned())?;
    Ok((
        answered.as_micros() as u64,
        at.duration_since(started).as_micros() as u64,
    ))
}

pub(super) async fn direct_phase(
    env: &Env,
    args: &LockersArgs,
    tokens: &[String],
    waiting: &Waiting,
) -> Result<Direct, Error> {
    let pairs: Vec<(String, usize, usize)> = {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT compartment_id, holder FROM locker_compartments WHERE site = $1",
        )
        .bind(DIRECT_SITE)
        .fetch_all(&env.pool)
        .await?;
        rows.into_iter()
            .filter_map(|(id, holder)| {
                let i = holder?.get(3..)?.parse::<usize>().ok()?.checked_sub(1)?;
                Some((id, i, i + args.holders))
            })
            .collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let env = Arc::new(Env {
        pool: env.pool.clone(),
        http: env.http.clone(),
        base: env.base.clone(),
        pid: env.pid.clone(),
        nats_pid: env.nats_pid,
        operator: env.operator.clone(),
    });
    let tokens: Arc<[String]> = tokens.into();
    let mut clients = tokio::task::JoinSet::new();
    for (compartment, a, b) in pairs {
        let (env, waiting, tokens, stop, measuring) = (
            env.clone(),
            waiting.clone(),
            tokens.clone(),
            stop.clone(),
            measuring.clone(),
        );
        clients.spawn(async move {
            let (mut answered, mut changed) = (hist(), hist());
            let (mut errors, mut first_error) = (0u64, None);
            let (mut from, mut to) = (a, b);
            while !stop.load(Ordering::Relaxed) {
                let result = grant_once(
                    &env,
                    &waiting,
                    &tokens[from],
                    &compartment,
                    &user_number(to),
                )
                .await;
                let measured = measuring.load(Ordering::Relaxed);
                match result {
                    Ok((a, c)) => {
                        if measured {
                            answered.saturating_record(a);
                            changed.saturating_record(c);
                        }
                        std::mem::swap(&mut from, &mut to);
                    }
                    Err(e) => {
                        if measured {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        // Ask the log who holds it now, and go on from there.
                        let holder: Option<(Option<String>,)> = sqlx::query_as(
                            "SELECT holder FROM locker_compartments WHERE compartment_id = $1",
                        )
                        .bind(&compartment)
                        .fetch_optional(&env.pool)
                        .await
                        .ok()
                        .flatten();
                        if holder.and_then(|(h,)| h).as_deref() == Some(&user_number(b)) {
                            (from, to) = (b, a);
                        } else {
                            (from, to) = (a, b);
                        }
                    }
                }
            }
            (answered, changed, errors, first_error)
        });
    }
    // One unmeasured round per pair opens connections and warms caches.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_split(&env.pid);
    let procs = env.processes();
    let (path_before, events_before) = (
        cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = cpu_share(&before, &cpu_split(&env.pid), elapsed);
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut changed) = (hist(), hist());
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = clients.join_next().await {
        let (a, c, e, f) = done?;
        answered.add(&a).map_err(|e| format!("{e:?}"))?;
        changed.add(&c).map_err(|e| format!("{e:?}"))?;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    cpu::drained(&env.pool, Duration::from_secs(60)).await;
    let path_cpu = cpu::spent(
        &path_before,
        &cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await - events_before,
        &procs,
    );
    Ok(Direct {
        answered,
        changed,
        elapsed,
        errors,
        first_error,
        cpu,
        path_cpu,
    })
}

pub(super) fn report_direct(d: &Direct, base: &Baselines, args: &LockersArgs, report: &mut Report) {
    let rate = d.changed.len() as f64 / d.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "direct grants, {} holder pairs (closed loop): request -> holder changed in the read model",
            args.holders
        ),
        value: format!(
            "{rate:.0} grants/s ({}; {} grants, {} errors)",
            percentiles(&d.changed),
            d.changed.len(),
            d.errors
        ),
        baseline: format!(
            "bare axum handler, {} clients: {:.0}/s ({})",
            args.holders,
            base.bare.per_sec,
            base.bare.latency()
        ),
        ratio: format!("{:.3}x", rate / base.bare.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "same grants, against raw single-row INSERTs".into(),
        value: format!("{rate:.0} grants/s"),
        baseline: format!(
            "raw INSERT, {} clients: {:.0}/s ({})",
            args.holders,
            base.insert.per_sec,
            base.insert.latency()
        ),
        ratio: format!("{:.3}x", rate / base.insert.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which request -> 201".into(),
        value: percentiles(&d.answered),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(cpu::row(
        "direct grants (request to read model)",
        &d.path_cpu,
        &base.insert_cpu,
        "-",
    ));
    report.notes.push(format!(
        "direct grants: CPU while measured (100% = one core): {}",
        d.cpu
    ));
    if let Some(e) = &d.first_error {
        report.notes.push(format!("first direct-grant error: {e}"));
    }
}
