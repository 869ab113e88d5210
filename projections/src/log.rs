//! The event log: events in the order the relay gave them positions, with the hash chain.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// One event as published on the EVENTS stream and as projections consume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    /// Hex SHA-256 chain link for this position.
    pub hash: String,
}

impl LoggedEvent {
    /// This event in its type's current shape: older versions pass through the domain's
    /// upcasters (`latch_domain::upcast`). The stored row, and so the hash, stay as they were.
    pub fn upcast(&self) -> std::borrow::Cow<'_, LoggedEvent> {
        use std::borrow::Cow;
        if !latch_domain::upcast::needs_upcast(&self.event_type, &self.event_version) {
            return Cow::Borrowed(self);
        }
        let serialized = cqrs_es::persist::SerializedEvent::new(
            self.aggregate_id.clone(),
            self.sequence.max(0) as usize,
            self.aggregate_type.clone(),
            self.event_type.clone(),
            self.event_version.clone(),
            self.payload.clone(),
            Value::Null,
        );
        let current = latch_domain::upcast::upcast(serialized);
        Cow::Owned(LoggedEvent {
            event_version: current.event_version,
            payload: current.payload,
            ..self.clone()
        })
    }
}

pub const GENESIS: [u8; 32] = [0; 32];

pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// One log entry as stored, with payload and metadata in Postgres's own `jsonb` text form.
///
/// This is what the hash chain covers and what goes on the wire: `jsonb` output is canonical
/// (keys ordered, duplicates removed, fixed spacing), so the stored value hashes the same however
/// it is read, and the relay never has to parse a payload to chain or publish it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload_json: String,
    pub metadata_json: String,
    pub recorded_at: DateTime<Utc>,
    pub hash: [u8; 32],
}

impl LogRow {
    /// From a row with the `events` columns (payload and metadata selected `::text` as
    /// `payload_json` and `metadata_json`), at `position`, hash not yet known.
    pub fn from_event_row(row: &PgRow, position: i64) -> Result<Self, sqlx::Error> {
        Ok(Self {
            position,
            event_id: row.try_get("event_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload_json: row.try_get("payload_json")?,
            metadata_json: row.try_get("metadata_json")?,
            recorded_at: row.try_get("recorded_at")?,
            hash: [0; 32],
        })
    }

    /// The bytes the hash chain covers: every stored field except the hash itself, each
    /// length-prefixed so no two different events give the same byte string.
    pub fn chain_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            160 + self.payload_json.len() + self.metadata_json.len() + self.aggregate_id.len(),
        );
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(&self.position.to_be_bytes());
        field(self.event_id.as_bytes());
        field(self.aggregate_type.as_bytes());
        field(self.aggregate_id.as_bytes());
        field(&self.sequence.to_be_bytes());
        field(self.event_type.as_bytes());
        field(self.event_version.as_bytes());
        field(self.payload_json.as_bytes());
        field(self.metadata_json.as_bytes());
        field(&self.recorded_at.timestamp_micros().to_be_bytes());
        out
    }

    /// The EVENTS message body: a [`LoggedEvent`] in JSON, payload and metadata embedded as
    /// stored. An old event whose stored form holds a secret (see
    /// `latch_domain::upcast::hides_secret`) goes out as readers may see it instead: upcast,
    /// secret dropped, marked `"redacted": true`. Its `hash` is still the stored row's, so such a
    /// line cannot be re-hashed from what it shows; `audit verify` checks it against the row.
    pub fn to_message(&self) -> Vec<u8> {
        if latch_domain::upcast::hides_secret(&self.event_type, &self.event_version) {
            return self.redacted().message(true);
        }
        self.message(false)
    }

    /// This row as readers may see it (see [`Self::to_message`]).
    fn redacted(&self) -> LogRow {
        let payload = serde_json::from_str::<Value>(&self.payload_json).unwrap_or(Value::Null);
        let shown = latch_domain::upcast::for_readers(cqrs_es::persist::SerializedEvent::new(
            self.aggregate_id.clone(),
            self.sequence.max(0) as usize,
            self.aggregate_type.clone(),
            self.event_type.clone(),
            self.event_version.clone(),
            payload,
            Value::Null,
        ));
        let payload_json = if shown.event_version == self.event_version {
            // Not understood by any upcaster: show no payload rather than the stored one.
            "null".to_owned()
        } else {
            shown.payload.to_string()
        };
        LogRow {
            event_version: shown.event_version,
            payload_json,
            ..self.clone()
        }
    }

    fn message(&self, redacted: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.payload_json.len() + self.metadata_json.len() + self.aggregate_id.len(),
        );
        let string = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
        };
        out.extend_from_slice(format!("{{\"position\":{}", self.position).as_bytes());
        string(&mut out, "event_id", &self.event_id.to_string());
        string(&mut out, "aggregate_type", &self.aggregate_type);
        string(&mut out, "aggregate_id", &self.aggregate_id);
        out.extend_from_slice(format!(",\"sequence\":{}", self.sequence).as_bytes());
        string(&mut out, "event_type", &self.event_type);
        string(&mut out, "event_version", &self.event_version);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload_json.as_bytes());
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(self.metadata_json.as_bytes());
        string(
            &mut out,
            "recorded_at",
            &self
                .recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        string(&mut out, "hash", &hex::encode(self.hash));
        if redacted {
            out.extend_from_slice(b",\"redacted\":true");
        }
        out.push(b'}');
        out
    }
}

/// Log rows with position in (after, up_to], in order, as stored.
pub async fn read_rows<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    up_to: Option<i64>,
    limit: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                e.event_version, e.payload::text AS payload_json, e.metadata::text AS metadata_json,
                e.recorded_at, l.hash
           FROM event_log l JOIN events e ON e.event_id = l.event_id
          WHERE l.position > $1 AND l.position <= $2
          ORDER BY l.position LIMIT $3",
    )
    .bind(after)
    .bind(up_to.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            let mut log_row = LogRow::from_event_row(row, row.try_get("position")?)?;
            let hash: Vec<u8> = row.try_get("hash")?;
            log_row.hash = hash
                .try_into()
                .map_err(|_| sqlx::Error::Decode("event_log.hash is not 32 bytes".into()))?;
            Ok(log_row)
        })
        .collect()
}

const SELECT_LOGGED: &str = "
SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.event_version, e.payload, e.metadata, e.recorded_at, l.hash
  FROM event_log l JOIN events e ON e.event_id = l.event_id";

fn from_row(row: &PgRow) -> Result<LoggedEvent, sqlx::Error> {
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(LoggedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: hex::encode(hash),
    })
}

/// Up to `limit` logged events with position in (after, up_to], in order.
pub async fn read_range<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    up_to: Option<i64>,
    limit: i64,
) -> Result<Vec<LoggedEvent>, sqlx::Error> {
    let sql = format!(
        "{SELECT_LOGGED} WHERE l.position > $1 AND l.position <= $2 ORDER BY l.position LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after)
        .bind(up_to.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The highest position given out so far (0 for an empty log).
pub async fn head<'e>(db: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    let (head,): (Option<i64>,) = sqlx::query_as("SELECT max(position) FROM event_log")
        .fetch_one(db)
        .await?;
    Ok(head.unwrap_or(0))
}

/// The relay's figures: the log's head, and how many committed events wait for a position
/// (those after the relay's cursor; an index range on `events (tx_id, id)`, short when the
/// relay keeps up).
pub async fn relay_figures<'e>(db: impl PgExecutor<'e>) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "WITH cursor AS (SELECT position, tx_id, event_row_id FROM event_log
                          ORDER BY position DESC LIMIT 1)
         SELECT COALESCE((SELECT position FROM cursor), 0),
                (SELECT count(*) FROM events e
                  WHERE NOT EXISTS (SELECT 1 FROM cursor)
                     OR (e.tx_id, e.id) > (SELECT tx_id, event_row_id FROM cursor))",
    )
    .fetch_one(db)
    .await
}

/// Raises the relay's alarm (see migration 0035): the stream no longer mirrors the log.
pub async fn raise_relay_alarm<'e>(
    db: impl PgExecutor<'e>,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO relay_alarm (detail) VALUES ($1)
         ON CONFLICT (only_row) DO UPDATE SET detail = EXCLUDED.detail",
    )
    .bind(detail)
    .execute(db)
    .await?;
    Ok(())
}

/// Clears the relay's alarm: the stream is the log's mirror again.
pub async fn clear_relay_alarm<'e>(db: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM relay_alarm").execute(db).await?;
    Ok(())
}

/// The relay's alarm, if raised: what it found.
pub async fn relay_alarm<'e>(db: impl PgExecutor<'e>) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT detail FROM relay_alarm")
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(d,)| d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: i64, payload: &str) -> LogRow {
        LogRow {
            position,
            event_id: Uuid::from_u128(1),
            aggregate_type: "device".into(),
            aggregate_id: "d1".into(),
            sequence: 1,
            event_type: "DoorOpened".into(),
            event_version: "1".into(),
            payload_json: payload.into(),
            metadata_json: r#"{"actor": "运营"}"#.into(),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            hash: [7; 32],
        }
    }

    #[test]
    fn the_chain_depends_on_every_link() {
        let h1 = chain_hash(&GENESIS, &row(1, r#"{"a": 1}"#).chain_bytes());
        let h1b = chain_hash(&GENESIS, &row(1, r#"{"a": 2}"#).chain_bytes());
        assert_ne!(h1, h1b);
        let next = row(2, "{}").chain_bytes();
        assert_ne!(chain_hash(&h1, &next), chain_hash(&h1b, &next));
    }

    #[test]
    fn a_message_reads_back_as_the_logged_event() {
        let r = row(
            3,
            r#"{"DoorOpened": {"at": "2026-01-01T00:00:00Z", "request_id": null}}"#,
        );
        let e: LoggedEvent = serde_json::from_slice(&r.to_message()).unwrap();
        assert_eq!(e.position, 3);
        assert_eq!(e.payload["DoorOpened"]["at"], "2026-01-01T00:00:00Z");
        assert_eq!(e.metadata["actor"], "运营");
        assert_eq!(e.recorded_at, r.recorded_at);
        assert_eq!(e.hash, hex::encode([7; 32]));
    }
}
