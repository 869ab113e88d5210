//! CPU per 1,000 events through the whole path, for every bench (issue 16).
//!
//! Wall-clock throughput on a shared two-core machine says little about cost: a phase can be
//! fast because it had the cores to itself. CPU seconds spent by each process on the path
//! (Latch, the Postgres backends serving the bench's database, the bench's nats-server) divided
//! by the events that went through say what a deployment pays per event, and stay comparable
//! between runs. A reading is a [`Sample`] of `/proc/<pid>/stat` before and after a phase.
//!
//! Postgres backends are the ones connected to the bench's own database (so other work on the
//! server is not counted) plus the server's background processes (WAL writer, checkpointer:
//! shared, but the bench is what makes them work). A backend that exits during a phase takes
//! its CPU with it; the benches' pools keep theirs open, so that loss is small and only ever an
//! under-count.

use sqlx::PgPool;
use std::collections::HashMap;
use std::fmt;

/// CPU ticks per second, as the kernel counts them in `/proc/<pid>/stat`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of one process in ticks, or None once it is gone.
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_secs(pid: &str) -> Option<f64> {
    Some(ticks(pid)? as f64 / ticks_per_second())
}

/// CPU seconds used so far by the `latch serve` child, by every `postgres` process, by every
/// `nats-server` and by this process (which includes the bench's own NATS and HTTP clients):
/// the share of the cores each took during a phase.
pub(crate) fn cpu_split(serve: &str) -> Vec<(&'static str, f64)> {
    let by_name = |name: &str| -> f64 {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
            })
            .filter_map(|pid| cpu_secs(&pid))
            .sum()
    };
    vec![
        ("latch serve", cpu_secs(serve).unwrap_or(0.0)),
        ("postgres", by_name("postgres")),
        ("nats-server", by_name("nats-server")),
        ("bench", cpu_secs("self").unwrap_or(0.0)),
    ]
}

/// The processes a bench's CPU is read from: Latch (`"self"` when it runs in the bench's own
/// process, which then includes the bench's clients) and the nats-server.
#[derive(Debug, Clone)]
pub(crate) struct Processes {
    pub(crate) latch: String,
    pub(crate) latch_includes_clients: bool,
    pub(crate) nats: Option<u32>,
}

/// One reading of every process on the path.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    latch: u64,
    nats: u64,
    postgres: HashMap<i32, u64>,
}

/// Reads every process now.
pub(crate) async fn sample(pool: &PgPool, procs: &Processes) -> Sample {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    Sample {
        latch: ticks(&procs.latch).unwrap_or(0),
        nats: procs.nats.and_then(|p| ticks(&p.to_string())).unwrap_or(0),
        postgres: pids
            .into_iter()
            .filter_map(|p| Some((p, ticks(&p.to_string())?)))
            .collect(),
    }
}

/// CPU seconds spent between two samples, and the events that went through meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spent {
    pub(crate) latch: f64,
    pub(crate) postgres: f64,
    pub(crate) nats: f64,
    pub(crate) events: u64,
    pub(crate) latch_includes_clients: bool,
}

pub(crate) fn spent(before: &Sample, after: &Sample, events: u64, procs: &Processes) -> Spent {
    let hz = ticks_per_second();
    // A backend that started during the phase spent all its ticks in it.
    let postgres: u64 = after
        .postgres
        .iter()
        .map(|(pid, t)| t.saturating_sub(*before.postgres.get(pid).unwrap_or(&0)))
        .sum();
    Spent {
        latch: after.latch.saturating_sub(before.latch) as f64 / hz,
        postgres: postgres as f64 / hz,
        nats: after.nats.saturating_sub(before.nats) as f64 / hz,
        events,
        latch_includes_clients: procs.latch_includes_clients,
    }
}

impl Spent {
    pub(crate) fn total(&self) -> f64 {
        self.latch + self.postgres + self.nats
    }

    /// CPU seconds per 1,000 events (or rows), all processes together.
    pub(crate) fn per_thousand(&self) -> f64 {
        if self.events == 0 {
            return f64::NAN;
        }
        self.total() * 1000.0 / self.events as f64
    }
}

impl fmt::Display for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3} CPU s per 1,000 (latch{} {:.1} s + postgres {:.1} s + nats {:.1} s over {} events)",
            self.per_thousand(),
            if self.latch_includes_clients {
                " with the bench's clients"
            } else {
                ""
            },
            self.latch,
            self.postgres,
            self.nats,
            self.events
        )
    }
}

/// The report row comparing a phase's CPU per event with the raw baseline's CPU per row.
pub(crate) fn row(what: &str, phase: &Spent, baseline: &Spent, target: &str) -> crate::bench::Row {
    crate::bench::Row {
        what: format!("CPU per 1,000 events, {what}"),
        value: phase.to_string(),
        baseline: format!(
            "raw INSERT: {:.3} CPU s per 1,000 rows (bench process {:.1} s + postgres {:.1} s, {} rows)",
            baseline.per_thousand(),
            baseline.latch,
            baseline.postgres,
            baseline.events
        ),
        ratio: format!("{:.1}x", phase.per_thousand() / baseline.per_thousand()),
        target: target.into(),
    }
}

/// Events in the log so far (the whole path's unit of work).
pub(crate) async fn events(pool: &PgPool) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap_or(0) as u64
}

/// Waits (at most `limit`) until the relay has published everything appended and every read
/// model stands within a batch of the head, so a phase's CPU includes the work its events cause
/// downstream, not only their append.
pub(crate) async fn drained(pool: &PgPool, limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = i64::MAX;
    loop {
        let unpublished = latch_projections::log::relay_figures(pool)
            .await
            .map(|(_, pending)| pending)
            .unwrap_or(i64::MAX);
        let behind =
            latch_projections::projector::lags(pool, latch_projections::audit::rebuild::NAMES)
                .await
                .map(|lags| lags.iter().map(|(_, _, lag)| *lag).max().unwrap_or(0))
                .unwrap_or(i64::MAX);
        // A projector passes other aggregates' events without writing its checkpoint and jumps
        // it after at most 1,000 positions; a lag that no longer moves within that is one.
        if unpublished == 0 && (behind == 0 || (behind <= 1_000 && behind == last)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        last = behind;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
