//! `latch audit ...` and `latch projections rebuild NAME`: the command-line side of audit.
//!
//! What these print (NDJSON, reports) goes to stdout or the named file; progress bars go to
//! stderr (hidden when it is not a terminal).

use crate::config::{AuditKeyArgs, Connections};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use latch_projections::audit::history::{self, Filter};
use latch_projections::audit::signing::{self, SignedCheckpoint};
use latch_projections::audit::{rebuild, verify};
use sqlx::PgPool;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The log as NDJSON in log order (stdout or --out), with a progress bar on stderr.
    Replay(ReplayArgs),
    /// Walk the hash chain: the first position where events and chain disagree, or "intact".
    Verify {
        #[command(flatten)]
        connections: Connections,
    },
    /// Signed checkpoints of the chain head.
    Checkpoint {
        #[command(subcommand)]
        cmd: CheckpointCmd,
    },
    /// Generate a signing key (hex seed) into a new file and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub connections: Connections,
    /// Start after this log position (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    pub from: i64,
    #[arg(long)]
    pub aggregate_type: Option<String>,
    #[arg(long)]
    pub aggregate_id: Option<String>,
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events recorded before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCmd {
    /// Sign the current chain head now and store the checkpoint.
    Sign {
        #[command(flatten)]
        connections: Connections,
        #[command(flatten)]
        key: AuditKeyArgs,
    },
    /// Every stored checkpoint as a JSON array (stdout or --out), for auditors to keep.
    Export {
        #[command(flatten)]
        connections: Connections,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check kept checkpoints (a JSON object or array, as exported) against today's log.
    Check {
        #[command(flatten)]
        connections: Connections,
        file: PathBuf,
        /// Only accept checkpoints signed by this public key (hex).
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCmd {
    /// Replay the log from position 0 into a fresh table and swap it in (device_status,
    /// qr_login_status, orders).
    Rebuild {
        #[command(flatten)]
        connections: Connections,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RelayCmd {
    /// Recreate the EVENTS stream from the log after it diverged (the relay's alarm
    /// `events_stream_diverged`, `/readyz` `events_stream: diverged`). Stop the relay role first.
    Reconcile {
        #[command(flatten)]
        connections: Connections,
    },
}

async fn connect(c: &Connections) -> Result<PgPool, Error> {
    Ok(latch_domain::store::connect(&c.database_url, 4, Duration::from_secs(10)).await?)
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

fn output(out: &Option<PathBuf>) -> Result<Box<dyn Write>, Error> {
    Ok(match out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

/// A command's result on standard output: what the operator asked for (a report, a key, a
/// checkpoint), as opposed to the progress and diagnostics that go to the log on stderr.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, $($arg)*)?;
    }};
}

pub async fn audit(cmd: AuditCmd) -> Result<(), Error> {
    match cmd {
        AuditCmd::Replay(args) => replay(args).await,
        AuditCmd::Verify { connections } => {
            let pool = connect(&connections).await?;
            let head = latch_projections::log::head(&pool).await?;
            let pb = bar(
                head as u64,
                "verify [{bar:40}] {pos}/{len} positions {per_sec} {eta}",
            );
            let started = Instant::now();
            let report = verify::walk(&pool, None, &|p| pb.set_position(p as u64)).await?;
            pb.finish_and_clear();
            say!("{report}");
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "verify done"
            );
            if report.intact() {
                Ok(())
            } else {
                Err("the log and its hash chain disagree".into())
            }
        }
        AuditCmd::Checkpoint { cmd } => checkpoint(cmd).await,
        AuditCmd::Keygen { out } => {
            if out.exists() {
                return Err(format!("{} exists; not overwriting a key", out.display()).into());
            }
            let key = signing::load_or_generate(&out)?;
            say!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(())
        }
    }
}

async fn replay(args: ReplayArgs) -> Result<(), Error> {
    let pool = connect(&args.connections).await?;
    let filter = Filter {
        aggregate_type: args.aggregate_type,
        aggregate_id: args.aggregate_id,
        event_type: args.event_type,
        since: args.since,
        until: args.until,
    };
    let head = latch_projections::log::head(&pool).await?;
    let pb = bar(
        (head - args.from).max(0) as u64,
        "replay [{bar:40}] {pos}/{len} positions {per_sec} {eta}",
    );
    let mut out = output(&args.out)?;
    let (mut after, mut lines) = (args.from, 0u64);
    loop {
        let rows = history::page(&pool, &filter, after, Some(head), 5000).await?;
        let Some(last) = rows.last() else { break };
        after = last.position;
        for row in &rows {
            out.write_all(&row.to_message())?;
            out.write_all(b"\n")?;
        }
        lines += rows.len() as u64;
        pb.set_position((after - args.from) as u64);
    }
    out.flush()?;
    pb.finish_and_clear();
    tracing::info!(lines, head, "replay written");
    Ok(())
}

async fn checkpoint(cmd: CheckpointCmd) -> Result<(), Error> {
    match cmd {
        CheckpointCmd::Sign { connections, key } => {
            let key = key
                .key()?
                .ok_or("give --audit-signing-key or --audit-signing-key-file")?;
            let pool = connect(&connections).await?;
            match signing::sign_head(&pool, &key).await? {
                Some(cp) => say!("{}", serde_json::to_string_pretty(&cp)?),
                None => say!("the log is empty; nothing to sign"),
            }
            Ok(())
        }
        CheckpointCmd::Export { connections, out } => {
            let pool = connect(&connections).await?;
            let all = signing::list(&pool, None).await?;
            let mut out = output(&out)?;
            serde_json::to_writer_pretty(&mut out, &all)?;
            out.write_all(b"\n")?;
            out.flush()?;
            Ok(())
        }
        CheckpointCmd::Check {
            connections,
            file,
            public_key,
        } => {
            let text = std::fs::read_to_string(&file)?;
            let kept: Vec<SignedCheckpoint> = match serde_json::from_str(&text) {
                Ok(list) => list,
                Err(_) => vec![serde_json::from_str(&text)?],
            };
            let trusted = public_key
                .map(|hex_key| -> Result<_, Error> {
                    let bytes: [u8; 32] = hex::decode(hex_key.trim())?
                        .try_into()
                        .map_err(|_| "--public-key: expected 64 hex characters")?;
                    Ok(signing::PublicKey::from_bytes(&bytes)?)
                })
                .transpose()?;
            let pool = connect(&connections).await?;
            let mut all_good = true;
            for cp in &kept {
                match signing::check(&pool, cp, trusted.as_ref()).await {
                    Ok(verdict) => {
                        all_good &= verdict.consistent;
                        say!(
                            "position {}: {} — {}",
                            verdict.position,
                            if verdict.consistent {
                                "consistent"
                            } else {
                                "REWRITTEN"
                            },
                            verdict.detail
                        );
                    }
                    Err(e) => {
                        all_good = false;
                        say!("position {}: REFUSED — {e}", cp.position);
                    }
                }
            }
            if all_good {
                Ok(())
            } else {
                Err("some checkpoints do not hold".into())
            }
        }
    }
}

pub async fn projections(cmd: ProjectionsCmd) -> Result<(), Error> {
    match cmd {
        ProjectionsCmd::Rebuild { connections, name } => {
            if !rebuild::NAMES.contains(&name.as_str()) {
                return Err(rebuild::RebuildError::UnknownProjection(name).into());
            }
            let pool = connect(&connections).await?;
            let head = latch_projections::log::head(&pool).await?;
            let pb = bar(
                head as u64,
                "rebuild {msg} [{bar:40}] {pos}/{len} positions {per_sec} {eta}",
            );
            let started = Instant::now();
            let done = rebuild::rebuild_named(&pool, &name, &|p| {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                pb.set_length(p.head.max(0) as u64);
                pb.set_position(p.position.max(0) as u64);
                pb.set_message(format!(
                    "{name} {}: {:.0} events/s",
                    p.phase,
                    p.events as f64 / secs
                ));
            })
            .await?;
            pb.finish_and_clear();
            say!(
                "{}: rebuilt to position {} ({} events, {} rows) in {:.2} s ({:.0} events/s); live projector held off {} ms",
                done.name,
                done.position,
                done.events,
                done.rows,
                done.elapsed.as_secs_f64(),
                done.events as f64 / done.elapsed.as_secs_f64().max(1e-6),
                done.swap.as_millis()
            );
            Ok(())
        }
    }
}

pub async fn relay(cmd: RelayCmd) -> Result<(), Error> {
    match cmd {
        RelayCmd::Reconcile { connections } => {
            let pool = connect(&connections).await?;
            let nats = latch_nats::connect(&connections.nats_url, "latch-relay-reconcile").await?;
            let js = async_nats::jetstream::new(nats);
            let done = latch_workers::reconcile::reconcile(&pool, &js).await?;
            say!(
                "EVENTS was at sequence {} and the log at position {}; they agreed through {}. \
                 Recreated the stream and republished {} events; {} consumers restart from: {}",
                done.stream_last,
                done.log_head,
                done.agreed_through,
                done.republished,
                done.consumers.len(),
                done.consumers
                    .iter()
                    .map(|(name, start)| format!("{name} at {start}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
    }
}
