//! Signed checkpoints of the chain head (Ed25519), their export, and the consistency check of an
//! old checkpoint against the current log.
//!
//! A checkpoint says "log position P has chain hash H", signed over
//! `latch-audit-checkpoint-v1\n{P}\n{hex H}\n{signed_at, Unix microseconds}`. An auditor who kept
//! one can later run [`check`]: the signature must verify (a forged checkpoint is refused), and
//! the chain recomputed from the stored events up to P must end in H; if it does not, history up
//! to P was rewritten, even when the rewriter recomputed every stored hash after the change.

use crate::audit::verify::{self, Problem};
use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use ed25519_dalek::{SigningKey as Key, VerifyingKey as PublicKey};

pub const ALGORITHM: &str = "ed25519";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("malformed checkpoint: {field}: {message}")]
    Malformed {
        field: &'static str,
        message: String,
    },
    #[error("the checkpoint's signature does not verify: it was not signed by its key")]
    BadSignature,
    #[error("the checkpoint was signed by {found}, not by the trusted key {trusted}")]
    UntrustedKey { found: String, trusted: String },
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key: expected a 32-byte seed as 64 hex characters or base64")]
    Format,
    #[error("signing key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A 32-byte Ed25519 seed given as 64 hex characters or as base64 (standard or URL-safe).
pub fn parse_key(raw: &str) -> Result<SigningKey, KeyError> {
    let raw = raw.trim();
    let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(raw).map_err(|_| KeyError::Format)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
            .map_err(|_| KeyError::Format)?
    };
    let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Format)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A fresh random key.
pub fn generate_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

/// Reads the hex seed in `path`, or (for development) generates one and writes it there with
/// owner-only permissions.
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_private(path, &format!("{}\n", hex::encode(key.to_bytes()))).map_err(io)?;
            tracing::warn!(path = %path.display(), public_key = %hex::encode(key.verifying_key().as_bytes()),
                "generated a new audit signing key (development only; set LATCH_AUDIT_SIGNING_KEY in production)");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// A checkpoint as exported and as handed back for a check. Hex throughout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub algorithm: String,
    pub position: i64,
    pub head_hash: String,
    pub signed_at: DateTime<Utc>,
    pub public_key: String,
    pub signature: String,
}

fn message(position: i64, head_hash: &[u8; 32], signed_at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "latch-audit-checkpoint-v1\n{position}\n{}\n{}",
        hex::encode(head_hash),
        signed_at.timestamp_micros()
    )
    .into_bytes()
}

/// Signs "position has head_hash" now.
pub fn sign(key: &SigningKey, position: i64, head_hash: &[u8; 32]) -> SignedCheckpoint {
    // Postgres keeps microseconds; sign what will be stored.
    let signed_at = Utc::now().trunc_subsecs(6);
    let signature = key.sign(&message(position, head_hash, signed_at));
    SignedCheckpoint {
        algorithm: ALGORITHM.into(),
        position,
        head_hash: hex::encode(head_hash),
        signed_at,
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

fn hex32(field: &'static str, raw: &str) -> Result<[u8; 32], CheckpointError> {
    hex::decode(raw)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CheckpointError::Malformed {
            field,
            message: "expected 64 hex characters".into(),
        })
}

/// Checks the signature against the checkpoint's own key (and, when given, that this key is the
/// trusted one). Returns the position and head hash it vouches for.
pub fn verify_signature(
    cp: &SignedCheckpoint,
    trusted: Option<&VerifyingKey>,
) -> Result<(i64, [u8; 32]), CheckpointError> {
    if cp.algorithm != ALGORITHM {
        return Err(CheckpointError::Malformed {
            field: "algorithm",
            message: format!("only {ALGORITHM} is known"),
        });
    }
    if cp.position < 1 {
        return Err(CheckpointError::Malformed {
            field: "position",
            message: "must be 1 or more".into(),
        });
    }
    let head = hex32("head_hash", &cp.head_hash)?;
    let key_bytes = hex32("public_key", &cp.public_key)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| CheckpointError::Malformed {
        field: "public_key",
        message: "not an Ed25519 public key".into(),
    })?;
    let sig_bytes: [u8; 64] = hex::decode(&cp.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CheckpointError::Malformed {
            field: "signature",
            message: "expected 128 hex characters".into(),
        })?;
    if let Some(trusted) = trusted {
        if trusted != &key {
            return Err(CheckpointError::UntrustedKey {
                found: cp.public_key.clone(),
                trusted: hex::encode(trusted.as_bytes()),
            });
        }
    }
    key.verify_strict(
        &message(cp.position, &head, cp.signed_at),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| CheckpointError::BadSignature)?;
    Ok((cp.position, head))
}

/// Signs the log's current head and stores it, unless that position is already signed.
/// Returns the stored checkpoint (None for an empty log).
pub async fn sign_head(
    pool: &PgPool,
    key: &SigningKey,
) -> Result<Option<SignedCheckpoint>, sqlx::Error> {
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, hash FROM event_log ORDER BY position DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    let Some((position, hash)) = head else {
        return Ok(None);
    };
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| sqlx::Error::Decode("event_log.hash is not 32 bytes".into()))?;
    let cp = sign(key, position, &hash);
    sqlx::query(
        "INSERT INTO audit_checkpoints (position, head_hash, signed_at, public_key, signature)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (position) DO NOTHING",
    )
    .bind(position)
    .bind(&hash[..])
    .bind(cp.signed_at)
    .bind(key.verifying_key().as_bytes().as_slice())
    .bind(hex::decode(&cp.signature).unwrap_or_default())
    .execute(pool)
    .await?;
    Ok(list(pool, Some(position)).await?.pop())
}

/// position, head_hash, signed_at, public_key, signature
type StoredRow = (i64, Vec<u8>, DateTime<Utc>, Vec<u8>, Vec<u8>);

/// Stored checkpoints, oldest first (only the one at `position` when given).
pub async fn list(
    pool: &PgPool,
    position: Option<i64>,
) -> Result<Vec<SignedCheckpoint>, sqlx::Error> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT position, head_hash, signed_at, public_key, signature FROM audit_checkpoints
          WHERE $1::bigint IS NULL OR position = $1 ORDER BY position",
    )
    .bind(position)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(position, head, signed_at, key, sig)| SignedCheckpoint {
            algorithm: ALGORITHM.into(),
            position,
            head_hash: hex::encode(head),
            signed_at,
            public_key: hex::encode(key),
            signature: hex::encode(sig),
        })
        .collect())
}

/// The verdict on an old checkpoint against the current log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consistency {
    pub position: i64,
    /// True when the stored events up to `position` still hash to the checkpoint's head.
    pub consistent: bool,
    pub checkpoint_hash: String,
    /// The chain recomputed from the stored events up to `position` (as far as it got).
    pub recomputed_hash: String,
    /// Where the walk up to `position` found the stored chain itself broken, if it did.
    pub problem: Option<Problem>,
    pub detail: String,
}

/// The consistency check: a forged or untrusted checkpoint is refused with an error; a genuine
/// one is compared with the chain recomputed from today's stored events.
pub async fn check(
    pool: &PgPool,
    cp: &SignedCheckpoint,
    trusted: Option<&VerifyingKey>,
) -> Result<Consistency, CheckpointError> {
    let (position, head) = verify_signature(cp, trusted)?;
    let report = verify::walk(pool, Some(position), &|_| {}).await?;
    let recomputed = report.head_hash.clone();
    let (consistent, detail) = if report.head_position < position && report.problem.is_none() {
        (
            false,
            format!(
                "the log ends at position {} but the checkpoint vouches for {position}: history was cut",
                report.head_position
            ),
        )
    } else if report.problem.is_some() {
        (
            false,
            format!("the stored chain is broken before position {position}; see problem",),
        )
    } else if recomputed == hex::encode(head) {
        (
            true,
            format!("history up to position {position} is the history that was signed"),
        )
    } else {
        (
            false,
            format!(
                "history up to position {position} was rewritten: the stored events hash to {recomputed}, \
                 the signed checkpoint says {}",
                cp.head_hash
            ),
        )
    };
    Ok(Consistency {
        position,
        consistent,
        checkpoint_hash: cp.head_hash.clone(),
        recomputed_hash: recomputed,
        problem: report.problem,
        detail,
    })
}

/// Signs the head every `interval` when it has moved. Runs until `stop`.
pub async fn run_signer(
    pool: PgPool,
    key: SigningKey,
    interval: Duration,
    stop: CancellationToken,
) {
    tracing::info!(public_key = %hex::encode(key.verifying_key().as_bytes()), ?interval, "audit checkpoint signer running");
    loop {
        match sign_head(&pool, &key).await {
            Ok(Some(cp)) => tracing::debug!(position = cp.position, "chain head signed"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sign the chain head now"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
