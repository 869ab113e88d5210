//! The webhook phase: grants to authorizer 0001 (the sandbox), delivered, called back; and its
//! rows.

use super::setup::{post, user_number};
use super::watch::{expect, Waiting};
use super::{
    cpu_share, percentiles, Baselines, Env, Error, LockersArgs, COURIER, SECRET, WEBHOOK_SITE,
    WEBHOOK_TIMEOUT,
};
use crate::authorizer_sandbox::{AuthorizerSandbox, AuthorizerSandboxSettings, Courier};
use crate::bench::{hist, Report, Row};
use crate::bench_cpu::{self as cpu, cpu_split};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An authorizer sandbox for number 0001 with one courier on duty; its endpoint, a stop token
/// and its task.
pub(super) async fn start_sandbox(
    latch_url: &str,
) -> Result<
    (
        String,
        latch_workers::CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    Error,
> {
    let mut settings =
        AuthorizerSandboxSettings::new("127.0.0.1:0".parse()?, "0001", SECRET, latch_url);
    settings.roster = vec![Courier {
        user_number: COURIER.into(),
        name: "王".into(),
        on_duty: true,
    }];
    let sandbox = AuthorizerSandbox::build(settings).await?;
    let endpoint = sandbox.endpoint();
    let stop = latch_workers::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(sandbox.run_until_stopped(async move { s.cancelled().await }));
    Ok((endpoint, stop, task))
}

/// The webhook phase: histograms in microseconds, counts.
pub(super) struct Webhook {
    accepted: Histogram<u64>,
    changed: Histogram<u64>,
    elapsed: Duration,
    errors: usize,
    first_error: Option<String>,
    cpu: String,
    path_cpu: cpu::Spent,
}

pub(super) async fn webhook_phase(
    env: &Env,
    args: &LockersArgs,
    tokens: &[String],
    waiting: &Waiting,
) -> Result<Webhook, Error> {
    let (endpoint, stop_sandbox, sandbox) = start_sandbox(&env.base).await?;
    post(
        env,
        "/lockers/authorizers",
        &env.operator,
        json!({"number": "0001", "name": "快递公司A", "endpoint": endpoint, "secret": SECRET}),
    )
    .await?;
    let held: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT compartment_id, holder FROM locker_compartments WHERE site = $1 ORDER BY number",
    )
    .bind(WEBHOOK_SITE)
    .fetch_all(&env.pool)
    .await?;
    let token_of: HashMap<String, String> = (0..args.holders)
        .map(|i| (user_number(i), tokens[i].clone()))
        .collect();
    let jobs: Arc<Vec<(String, String)>> = Arc::new(
        held.into_iter()
            .filter_map(|(id, holder)| Some((id, token_of.get(&holder?)?.clone())))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = cpu_split(&env.pid);
    let procs = env.processes();
    let (path_before, events_before) = (
        cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await,
    );
    let started = Instant::now();
    let senders = (0..args.holders).map(|_| {
        let (jobs, next, waiting) = (jobs.clone(), next.clone(), waiting.clone());
        async move {
            let mut sent = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((compartment, token)) = jobs.get(n) else {
                    return sent;
                };
                let number = compartment
                    .split_once(':')
                    .map(|(_, n)| n)
                    .unwrap_or_default();
                let changed = expect(&waiting, compartment, COURIER);
                let t = Instant::now();
                let result = post(
                    env,
                    "/lockers/grants/via-authorizer",
                    token,
                    json!({"site": WEBHOOK_SITE, "compartment": number, "authorizer": "0001"}),
                )
                .await;
                sent.push((t, t.elapsed(), changed, result.err()));
            }
        }
    });
    let sent: Vec<_> = futures::future::join_all(senders)
        .await
        .into_iter()
        .flatten()
        .collect();
    let (mut accepted, mut changed) = (hist(), hist());
    let (mut errors, mut first_error) = (0, None);
    let mut last = started;
    // The answers were awaited in order, but each arrival time was stamped by the watcher.
    for (t, answered, rx, error) in sent {
        if let Some(e) = error {
            errors += 1;
            first_error.get_or_insert(e);
            continue;
        }
        accepted.saturating_record(answered.as_micros() as u64);
        match tokio::time::timeout_at((started + WEBHOOK_TIMEOUT).into(), rx).await {
            Ok(Ok(at)) => {
                changed.saturating_record(at.duration_since(t).as_micros() as u64);
                last = last.max(at);
            }
            _ => {
                errors += 1;
                first_error.get_or_insert_with(|| "holder not changed in time".to_owned());
            }
        }
    }
    let elapsed = last.duration_since(started);
    let cpu = cpu_share(&before, &cpu_split(&env.pid), elapsed);
    cpu::drained(&env.pool, Duration::from_secs(60)).await;
    let path_cpu = cpu::spent(
        &path_before,
        &cpu::sample(&env.pool, &procs).await,
        cpu::events(&env.pool).await - events_before,
        &procs,
    );
    stop_sandbox.cancel();
    sandbox.await.ok();
    Ok(Webhook {
        accepted,
        changed,
        elapsed,
        errors,
        first_error,
        cpu,
        path_cpu,
    })
}

pub(super) fn report_webhook(
    w: &Webhook,
    base: &Baselines,
    args: &LockersArgs,
    report: &mut Report,
) {
    let rate = w.changed.len() as f64 / w.elapsed.as_secs_f64();
    report.rows.push(Row {
        what: format!(
            "grants via the authorizer sandbox, {} requested by {} clients: request -> signed \
             webhook -> sandbox callback -> holder changed",
            args.grants, args.holders
        ),
        value: format!(
            "{rate:.0} grants/s ({}; {} delivered, {} errors)",
            percentiles(&w.changed),
            w.changed.len(),
            w.errors
        ),
        baseline: format!(
            "sandbox alone receiving signed webhooks, {} clients: {:.0}/s ({})",
            args.holders,
            base.sandbox.per_sec,
            base.sandbox.latency()
        ),
        ratio: format!("{:.3}x", rate / base.sandbox.per_sec),
        target: "-".into(),
    });
    report.rows.push(Row {
        what: "of which request -> 202".into(),
        value: percentiles(&w.accepted),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    report.rows.push(cpu::row(
        "grants via the authorizer (the sandbox's own CPU not counted)",
        &w.path_cpu,
        &base.insert_cpu,
        "-",
    ));
    report.notes.push(format!(
        "webhook grants: CPU from first request to last holder change (100% = one core): {}",
        w.cpu
    ));
    if let Some(e) = &w.first_error {
        report.notes.push(format!("first webhook-grant error: {e}"));
    }
}
