//! The event log: events in the order the relay gave them positions, with the hash chain.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
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

pub const GENESIS: [u8; 32] = [0; 32];

impl LoggedEvent {
    /// The bytes the hash chain covers for this event: every stored field except the hash itself,
    /// length-prefixed so that no two different events give the same byte string, JSON in
    /// canonical form (object keys sorted) so the hash does not depend on how a reader ordered
    /// keys.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
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
        field(canonical_json(&self.payload).as_bytes());
        field(canonical_json(&self.metadata).as_bytes());
        field(&self.recorded_at.timestamp_micros().to_be_bytes());
        out
    }
}

pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

const SELECT_LOGGED: &str = "
SELECT l.position, e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.event_version, e.payload, e.metadata, e.recorded_at, l.hash
  FROM event_log l JOIN events e ON e.event_id = l.event_id";

fn from_row(row: &sqlx::postgres::PgRow) -> Result<LoggedEvent, sqlx::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "快"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"快","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn the_chain_depends_on_every_link() {
        let e = |position: i64, payload: Value| {
            LoggedEvent {
                position,
                event_id: Uuid::from_u128(1),
                aggregate_type: "device".into(),
                aggregate_id: "d1".into(),
                sequence: 1,
                event_type: "DoorOpened".into(),
                event_version: "1".into(),
                payload,
                metadata: json!({}),
                recorded_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                hash: String::new(),
            }
            .canonical_bytes()
        };
        let h1 = chain_hash(&GENESIS, &e(1, json!({"a": 1})));
        let h1b = chain_hash(&GENESIS, &e(1, json!({"a": 2})));
        assert_ne!(h1, h1b);
        assert_ne!(
            chain_hash(&h1, &e(2, json!({}))),
            chain_hash(&h1b, &e(2, json!({})))
        );
    }
}
