//! `latch bench audit`: the rebuild rate over a large log beside a raw ordered read of the same
//! log measured in the same run, and the time and memory of `latch audit verify` on it.
//!
//! It makes its own database on the configured Postgres server. Seeding (not measured as part
//! of anything) is a bulk load, not the relay: one `INSERT ... SELECT FROM generate_series` writes
//! the events (device events for `--devices` devices, payloads built in SQL, with
//! `session_replication_role = replica` so the per-row stamping trigger is skipped and the
//! database-owned columns are given explicitly), then the hash chain is computed in Rust over
//! the rows read back in `id` order (the same `LogRow::chain_bytes` the relay hashes) and the log
//! rows go in with `COPY event_log FROM STDIN`. The resulting log passes `audit verify`.

use crate::bench::{in_scratch_database, machine_note, mib, rss_kib, Report, Row};
use clap::Args;
use futures::TryStreamExt;
use latch_projections::log::{chain_hash, LogRow, GENESIS};
use sqlx::{PgPool, Row as _};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Postgres server to create the bench database on (any database name; it is replaced).
    #[arg(long, env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Devices the events belong to.
    #[arg(long, default_value_t = 10_000)]
    pub devices: i64,
}

pub async fn run(args: AuditArgs) -> Result<Report, Box<dyn std::error::Error>> {
    let mut report = Report::default();
    let (a, r) = (&args, &mut report);
    in_scratch_database(&args.database_url, "latch_bench_audit", |db| async move {
        phases(a, &db, r).await
    })
    .await?;
    Ok(report)
}

async fn phases(
    args: &AuditArgs,
    db_url: &str,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = latch_domain::store::connect(db_url, 6, Duration::from_secs(30)).await?;
    latch_domain::store::MIGRATOR.run(&pool).await?;

    let t = Instant::now();
    seed(&pool, args.events, args.devices).await?;
    let seeded = t.elapsed();
    tracing::info!(events = args.events, secs = seeded.as_secs_f64(), "seeded");

    // Baseline: every log row with its event, in log order, as the rebuild reads them, with
    // nothing done to them (payload left as text).
    let t = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query(
        "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence,
                e.event_type, e.event_version, e.payload::text AS payload, e.recorded_at
           FROM event_log l JOIN events e ON e.event_id = l.event_id
          ORDER BY l.position",
    )
    .fetch(&mut *conn);
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.try_next().await? {
        let payload: &str = row.try_get("payload")?;
        let _: i64 = row.try_get("position")?;
        bytes += payload.len();
        n += 1;
    }
    drop(rows);
    drop(conn);
    let raw_secs = t.elapsed().as_secs_f64();
    let raw_rate = n as f64 / raw_secs;
    tracing::info!(rows = n, bytes, raw_rate, "raw ordered read measured");

    let t = Instant::now();
    let done =
        latch_projections::audit::rebuild::rebuild_named(&pool, "device_status", &|_| {}).await?;
    let rebuild_secs = t.elapsed().as_secs_f64();
    let rebuild_rate = done.events as f64 / rebuild_secs;
    report.rows.push(Row {
        what: format!(
            "`latch projections rebuild device_status`, {} events, {} devices",
            args.events, args.devices
        ),
        value: format!(
            "{:.0} events/s ({:.2} s; {} rows; projector held off {} ms)",
            rebuild_rate,
            rebuild_secs,
            done.rows,
            done.swap.as_millis()
        ),
        baseline: format!(
            "raw ordered read of the same log: {:.0} rows/s ({:.2} s)",
            raw_rate, raw_secs
        ),
        ratio: format!("{:.2}x", rebuild_rate / raw_rate),
        target: ">= 100k events/s and >= 0.25x".into(),
    });

    // Verify: the peak RSS is reset first (Linux clear_refs 5), so it is verify's own peak.
    let before = rss_kib("self", "VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let verdict = latch_projections::audit::verify::walk(&pool, None, &|_| {}).await?;
    let verify_secs = t.elapsed().as_secs_f64();
    let peak = rss_kib("self", "VmHWM:");
    if !verdict.intact() {
        return Err(format!("seeded log does not verify: {verdict}").into());
    }
    report.rows.push(Row {
        what: format!("`latch audit verify`, {} events", verdict.count),
        value: format!(
            "{:.2} s ({:.0} events/s), peak RSS {} (before: {})",
            verify_secs,
            verdict.count as f64 / verify_secs,
            mib(peak),
            mib(before)
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    });
    let mut note = String::new();
    let _ = write!(
        note,
        "seeding {} events (bulk INSERT + chain in Rust + COPY): {:.1} s; verify: {verdict}",
        args.events,
        seeded.as_secs_f64()
    );
    report.notes.push(note);
    report.notes.push(machine_note());
    pool.close().await;
    Ok(())
}

/// Bulk-loads `events` device events and a valid hash-chained log over them.
pub async fn seed(
    pool: &PgPool,
    events: i64,
    devices: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, id, event_id, tx_id, recorded_at)
         SELECT 'device', dev::text, seq,
                CASE WHEN seq = 1 THEN 'DeviceRegistered'
                     WHEN seq % 4 = 2 THEN 'DeviceCameOnline'
                     WHEN seq % 4 = 3 THEN 'DoorOpened'
                     WHEN seq % 4 = 0 THEN 'DoorClosed'
                     ELSE 'DeviceWentOffline' END,
                '1',
                CASE WHEN seq = 1 THEN jsonb_build_object('DeviceRegistered', jsonb_build_object(
                         'device_id', dev, 'kind', 'vending', 'site', 'BENCH',
                         'label', 'bench ' || d, 'at', at))
                     WHEN seq % 4 = 2 THEN jsonb_build_object('DeviceCameOnline', jsonb_build_object('at', at))
                     WHEN seq % 4 = 3 THEN jsonb_build_object('DoorOpened', jsonb_build_object('request_id', NULL, 'at', at))
                     WHEN seq % 4 = 0 THEN jsonb_build_object('DoorClosed', jsonb_build_object('at', at))
                     ELSE jsonb_build_object('DeviceWentOffline', jsonb_build_object('last_seen', at, 'at', at)) END,
                jsonb_build_object('actor', 'operator:bench', 'correlation_id', dev, 'causation_id', dev,
                                   'request_id', dev, 'command', 'Bench', 'device', dev),
                g + 1, gen_random_uuid(), pg_current_xact_id(), ts
           FROM (SELECT g, g % $2 AS d, g / $2 + 1 AS seq,
                        md5('bench-device-' || (g % $2))::uuid AS dev,
                        timestamptz '2026-01-01 00:00:00+00' + g * interval '1 millisecond' AS ts
                   FROM generate_series(0, $1 - 1) AS g) s,
                LATERAL (SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at) a",
    )
    .bind(events)
    .bind(devices)
    .execute(&mut *conn)
    .await?;
    drop(conn);

    // The chain, in the order the relay would have sequenced them.
    let mut reader = pool.acquire().await?;
    let mut writer = pool.acquire().await?;
    let mut copy = writer
        .copy_in_raw(
            "COPY event_log (position, event_id, tx_id, event_row_id, prev_hash, hash) FROM STDIN",
        )
        .await?;
    let mut rows = sqlx::query(
        "SELECT id, event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload_json, metadata::text AS metadata_json, recorded_at,
                tx_id::text AS tx_text
           FROM events ORDER BY tx_id, id",
    )
    .fetch(&mut *reader);
    let mut prev = GENESIS;
    let mut position = 0i64;
    let mut buf = String::with_capacity(1 << 20);
    while let Some(row) = rows.try_next().await? {
        position += 1;
        let event = LogRow::from_event_row(&row, position)?;
        let hash = chain_hash(&prev, &event.chain_bytes());
        let id: i64 = row.try_get("id")?;
        let tx: String = row.try_get("tx_text")?;
        let _ = writeln!(
            buf,
            "{position}\t{}\t{tx}\t{id}\t\\\\x{}\t\\\\x{}",
            event.event_id,
            hex::encode(prev),
            hex::encode(hash)
        );
        prev = hash;
        if buf.len() > (1 << 20) - 512 {
            copy.send(buf.as_bytes()).await?;
            buf.clear();
        }
    }
    drop(rows);
    if !buf.is_empty() {
        copy.send(buf.as_bytes()).await?;
    }
    copy.finish().await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    sqlx::query("ANALYZE event_log").execute(pool).await?;
    Ok(())
}
