//! `latch bench streams`: what a command costs on a device whose stream holds 0, 10k, 100k and
//! 1M events, beside the same command on a fresh device and a raw keyed SELECT in the same run.
//!
//! Each long stream is bulk-loaded in SQL (door opened / closed alternating after the
//! registration, as a busy cabinet writes them), not through commands, so it starts with no
//! snapshot: the first command folds the whole stream once and leaves a snapshot behind (that
//! first load is reported on its own). Then two commands are measured one at a time:
//! - a refused opening (the device is offline): load and decide, nothing appended (the issue's
//!   measure: 951 ms on a 100k stream before snapshots);
//! - an accepted door report: load, decide and append, so the stream grows and a new snapshot is
//!   taken every `SNAPSHOT_EVERY` events, its cost included.

use crate::bench::{hist, in_scratch_database, machine_note, mib, rss_kib, Report, Row};
use chrono::{Duration as ChronoDuration, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use latch_domain::device::{DeviceCommand, DoorState};
use latch_domain::store::{CommandContext, CommandError, Store, SNAPSHOT_EVERY};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, Args)]
pub struct StreamsArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Stream lengths to measure (events after the registration); 0 is the fresh device every
    /// other length is compared with.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,1000000")]
    pub lengths: Vec<i64>,
    /// Commands measured per stream and kind.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
}

pub async fn run(args: StreamsArgs) -> Result<Report, Box<dyn std::error::Error>> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_streams", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    Ok(report)
}

struct Measured {
    length: i64,
    first: Duration,
    refused: Histogram<u64>,
    accepted: Histogram<u64>,
}

async fn phases(
    args: &StreamsArgs,
    db_url: &str,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = latch_domain::store::connect(db_url, 4, Duration::from_secs(30)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;
    let store = Store::new(pool.clone());

    let mut devices = Vec::new();
    for &length in &args.lengths {
        let id = Uuid::now_v7();
        let t = Instant::now();
        seed(&pool, id, length).await?;
        tracing::info!(length, secs = t.elapsed().as_secs_f64(), "stream seeded");
        devices.push((length, id.to_string()));
    }
    sqlx::query("ANALYZE events").execute(&pool).await?;

    // Baseline: the cheapest read Postgres can answer, through the same pool.
    let mut select = hist();
    for i in 0..args.samples {
        let t = Instant::now();
        let _: Option<(i64,)> = sqlx::query_as(
            "SELECT sequence FROM events WHERE aggregate_type = 'device' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(&devices[i % devices.len()].1)
        .fetch_optional(&pool)
        .await?;
        select.saturating_record(t.elapsed().as_micros() as u64);
    }

    let mut measured = Vec::new();
    for (length, id) in &devices {
        let t = Instant::now();
        refused_open(&store, id).await?;
        let first = t.elapsed();
        let mut refused = hist();
        for _ in 0..args.samples {
            let t = Instant::now();
            refused_open(&store, id).await?;
            refused.saturating_record(t.elapsed().as_micros() as u64);
        }
        let mut accepted = hist();
        for i in 0..args.samples {
            let t = Instant::now();
            door_report(&store, id, i).await?;
            accepted.saturating_record(t.elapsed().as_micros() as u64);
        }
        tracing::info!(length, "measured");
        measured.push(Measured {
            length: *length,
            first,
            refused,
            accepted,
        });
    }

    let fresh = measured
        .iter()
        .find(|m| m.length == 0)
        .ok_or("--lengths must include 0, the fresh device")?;
    let (fresh_refused, fresh_accepted) = (p50(&fresh.refused), p50(&fresh.accepted));
    for m in &measured {
        report.rows.push(Row {
            what: format!(
                "refused open (load + decide), stream of {} events",
                m.length + 1
            ),
            value: latency(&m.refused),
            baseline: format!("fresh device: p50 {fresh_refused:.3} ms"),
            ratio: format!("{:.2}x", p50(&m.refused) / fresh_refused),
            target: "<= 2x".into(),
        });
        report.rows.push(Row {
            what: format!(
                "door report (load + decide + append, snapshot every {SNAPSHOT_EVERY}), stream of {} events",
                m.length + 1
            ),
            value: latency(&m.accepted),
            baseline: format!("fresh device: p50 {fresh_accepted:.3} ms"),
            ratio: format!("{:.2}x", p50(&m.accepted) / fresh_accepted),
            target: "<= 2x".into(),
        });
    }
    report.rows.push(Row {
        what: "raw keyed SELECT of one event row".into(),
        value: latency(&select),
        baseline: "-".into(),
        ratio: format!(
            "refused open on a fresh device: {:.2}x the SELECT",
            fresh_refused / p50(&select)
        ),
        target: "-".into(),
    });
    let firsts: Vec<String> = measured
        .iter()
        .map(|m| {
            format!(
                "{} events: {:.1} ms",
                m.length + 1,
                m.first.as_secs_f64() * 1000.0
            )
        })
        .collect();
    report.notes.push(format!(
        "First command on each bulk-loaded stream (no snapshot yet: the whole stream is folded, \
         streamed from Postgres, and a snapshot written): {}. {} samples per row, one at a time. \
         RSS after: {}.",
        firsts.join(", "),
        args.samples,
        mib(rss_kib("self", "VmRSS:"))
    ));
    report.notes.push(machine_note());
    pool.close().await;
    Ok(())
}

fn p50(h: &Histogram<u64>) -> f64 {
    h.value_at_quantile(0.5) as f64 / 1000.0
}

fn latency(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, {:.0} commands/s",
        p50(h),
        h.value_at_quantile(0.99) as f64 / 1000.0,
        1_000_000.0 / h.mean().max(1.0)
    )
}

async fn refused_open(store: &Store, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let now = Utc::now();
    let command = DeviceCommand::RequestOpen {
        request_id: Uuid::now_v7(),
        deadline: now + ChronoDuration::seconds(15),
        shopper: None,
        at: now,
    };
    match store
        .devices
        .execute(
            id,
            command.name(),
            command,
            &CommandContext::new("operator:bench"),
        )
        .await
    {
        Err(CommandError::Rejected(_)) => Ok(()),
        other => Err(format!("expected a refusal (device offline), got {other:?}").into()),
    }
}

async fn door_report(store: &Store, id: &str, i: usize) -> Result<(), Box<dyn std::error::Error>> {
    // Bulk-loaded streams end with the door closed; the fresh device's door is unknown, which
    // opening changes as well.
    let command = DeviceCommand::ReportDoor {
        state: if i.is_multiple_of(2) {
            DoorState::Open
        } else {
            DoorState::Closed
        },
        request_id: None,
        at: Utc::now(),
    };
    let done = store
        .devices
        .execute(
            id,
            command.name(),
            command,
            &CommandContext::new("device:bench"),
        )
        .await?;
    if done.events.len() != 1 {
        return Err(format!("door report appended {} events", done.events.len()).into());
    }
    Ok(())
}

/// A registered vending cabinet followed by `length` door events (opened, closed, ...), ending
/// closed, with the database-owned columns given directly as the audit bench does.
async fn seed(pool: &PgPool, id: Uuid, length: i64) -> Result<(), Box<dyn std::error::Error>> {
    let length = length + length % 2;
    let mut conn = pool.acquire().await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, event_id, tx_id, recorded_at)
         SELECT 'device', $1::text, seq,
                CASE WHEN seq = 1 THEN 'DeviceRegistered'
                     WHEN seq % 2 = 0 THEN 'DoorOpened' ELSE 'DoorClosed' END,
                '1',
                CASE WHEN seq = 1 THEN jsonb_build_object('DeviceRegistered', jsonb_build_object(
                         'device_id', $1, 'kind', 'vending', 'site', 'BENCH', 'label', 'bench', 'at', at))
                     WHEN seq % 2 = 0 THEN jsonb_build_object('DoorOpened', jsonb_build_object('request_id', NULL, 'at', at))
                     ELSE jsonb_build_object('DoorClosed', jsonb_build_object('at', at)) END,
                jsonb_build_object('actor', 'operator:bench', 'correlation_id', $1, 'causation_id', $1,
                                   'request_id', $1, 'command', 'Bench', 'device', $1),
                gen_random_uuid(), pg_current_xact_id(), ts
           FROM (SELECT seq, timestamptz '2026-01-01 00:00:00+00' + seq * interval '1 second' AS ts
                   FROM generate_series(1, $2 + 1) AS seq) s,
                LATERAL (SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at) a",
    )
    .bind(id.to_string())
    .bind(length)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
