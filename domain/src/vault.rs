//! Secrets kept out of the log: authorizers' webhook signing secrets and locker users' password
//! hashes (migration 0030).
//!
//! The event log is read by auditors, carried on the `EVENTS` stream and kept forever, so an
//! event names a secret only by an id: an authorizer's signing secret by a fingerprint
//! ([`authorizer_secret_id`]), a user's password hash by a random credential id. The secrets
//! themselves live here:
//!
//! - `secrets`: signing secrets, encrypted (XChaCha20-Poly1305) under a key from configuration
//!   (`LATCH_SECRETS_KEY`); the row's id is bound into the ciphertext as associated data, so a
//!   row copied under another id does not decrypt.
//! - `credentials`: argon2id PHC strings. A slow, salted hash is made to be stored as it is; it
//!   is kept apart from the log so that auditors and stream readers never get it to attack.
//!
//! Events written before this (version 1 of `AuthorizerRegistered`, `AuthorizerReconfigured`,
//! `LockerUserRegistered`, `LockerUserPasswordChanged`) carried the value itself. Their
//! upcasters (`crate::upcast`) replace it with a legacy reference naming the stored row
//! (`legacy:{sequence}:{aggregate id}`); the first use of such a reference (or
//! [`Vault::import_legacy`] at start) reads the value once from that raw row and keeps it here.
//! The rows themselves are never rewritten: the hash chain covers them as stored.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Aggregate types whose old events carried secrets (the store's names, not imported to keep
/// this module free of the aggregates).
const AUTHORIZER_TYPE: &str = "locker_authorizer";
const USER_TYPE: &str = "locker_user";

/// How an upcast old event names the value it used to carry.
pub const LEGACY_PREFIX: &str = "legacy:";

/// The development key (32 bytes, hex): used when `LATCH_SECRETS_KEY` is not set, with a
/// warning. Anyone with the source can decrypt what it protects.
pub const DEVELOPMENT_KEY_HEX: &str =
    "6c617463682d6465762d736563726574732d6b65792d6368616e67652d6d6521";

/// The key the `secrets` table is encrypted under.
#[derive(Clone)]
pub struct VaultKey {
    key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKey").field("id", &self.id).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secrets key must be 32 bytes: 64 hex characters or base64")]
pub struct VaultKeyError;

impl VaultKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        // A short public name for the key, so a row encrypted under another key is reported as
        // such rather than as corrupt.
        let id =
            hex::encode(&Sha256::digest([b"latch-vault-key\0".as_slice(), &key].concat())[..8]);
        Self { key, id }
    }

    /// 64 hex characters, or standard / URL-safe base64 of 32 bytes.
    pub fn parse(raw: &str) -> Result<Self, VaultKeyError> {
        let raw = raw.trim();
        let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(raw).map_err(|_| VaultKeyError)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(raw))
                .map_err(|_| VaultKeyError)?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| VaultKeyError)?;
        Ok(Self::from_bytes(key))
    }

    /// The development key ([`DEVELOPMENT_KEY_HEX`]).
    pub fn development() -> Self {
        Self::parse(DEVELOPMENT_KEY_HEX).expect("the development key parses")
    }

    pub fn is_development(&self) -> bool {
        self.id == Self::development().id
    }

    /// The key's public name, stored beside each row it encrypts.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(
        "secret {id} was encrypted under key {stored}, but the configured key is {configured}"
    )]
    WrongKey {
        id: String,
        stored: String,
        configured: String,
    },
    #[error("secret {0} does not decrypt")]
    Corrupt(String),
}

/// The id an authorizer's signing secret goes by in events: a fingerprint of the authorizer and
/// the secret (`fp_` + 32 hex). Deterministic, so re-registering the same secret is recognised as
/// no change; not reversible, since registration refuses secrets of fewer than 32 random bytes.
pub fn authorizer_secret_id(number: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"latch-authorizer-secret\0");
    h.update(number.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    format!("fp_{}", hex::encode(&h.finalize()[..16]))
}

/// The reference an upcast old event carries instead of its value.
pub fn legacy_reference(aggregate_id: &str, sequence: usize) -> String {
    format!("{LEGACY_PREFIX}{sequence}:{aggregate_id}")
}

fn parse_legacy(reference: &str) -> Option<(i64, &str)> {
    let (sequence, aggregate_id) = reference.strip_prefix(LEGACY_PREFIX)?.split_once(':')?;
    Some((sequence.parse().ok()?, aggregate_id))
}

/// Secrets and credentials over one pool.
pub struct Vault {
    pool: PgPool,
    key: VaultKey,
}

impl Vault {
    pub fn new(pool: PgPool, key: VaultKey) -> Self {
        Self { pool, key }
    }

    pub fn key(&self) -> &VaultKey {
        &self.key
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.key.key))
    }

    fn aad(id: &str) -> Vec<u8> {
        [b"latch-vault\0".as_slice(), id.as_bytes()].concat()
    }

    /// Keeps `secret` under `id` (encrypted). A second put of the same id keeps the first: ids
    /// are fingerprints of their secret, so it is the same secret.
    pub async fn put_secret(&self, id: &str, owner: &str, secret: &str) -> Result<(), VaultError> {
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &Self::aad(id),
                },
            )
            .map_err(|_| VaultError::Corrupt(id.to_owned()))?;
        sqlx::query(
            "INSERT INTO secrets (id, owner, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(owner)
        .bind(self.key.id())
        .bind(&nonce[..])
        .bind(ciphertext)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The secret kept under `id`; a legacy reference is resolved from its old event once.
    pub async fn secret(&self, id: &str) -> Result<Option<String>, VaultError> {
        if let Some(found) = self.stored_secret(id).await? {
            return Ok(Some(found));
        }
        let Some((sequence, authorizer)) = parse_legacy(id) else {
            return Ok(None);
        };
        let Some(secret) = self
            .legacy_value(AUTHORIZER_TYPE, authorizer, sequence, "secret")
            .await?
        else {
            return Ok(None);
        };
        self.put_secret(id, &format!("{AUTHORIZER_TYPE}/{authorizer}"), &secret)
            .await?;
        Ok(Some(secret))
    }

    async fn stored_secret(&self, id: &str) -> Result<Option<String>, VaultError> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, nonce, ciphertext FROM secrets WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((key_id, nonce, ciphertext)) = row else {
            return Ok(None);
        };
        if key_id != self.key.id() {
            return Err(VaultError::WrongKey {
                id: id.to_owned(),
                stored: key_id,
                configured: self.key.id().to_owned(),
            });
        }
        if nonce.len() != 24 {
            return Err(VaultError::Corrupt(id.to_owned()));
        }
        let plain = self
            .cipher()
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &Self::aad(id),
                },
            )
            .map_err(|_| VaultError::Corrupt(id.to_owned()))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| VaultError::Corrupt(id.to_owned()))
    }

    /// Keeps a user's password hash; returns the new credential's id for the event.
    pub async fn put_password_hash(
        &self,
        user_number: &str,
        password_hash: &str,
    ) -> Result<String, VaultError> {
        let id = format!("cred_{}", Uuid::now_v7().simple());
        self.put_credential(&id, user_number, password_hash).await?;
        Ok(id)
    }

    async fn put_credential(
        &self,
        id: &str,
        user_number: &str,
        password_hash: &str,
    ) -> Result<(), VaultError> {
        sqlx::query(
            "INSERT INTO credentials (credential_id, user_number, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(id)
        .bind(user_number)
        .bind(password_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The password hash of credential `id`; a legacy reference is resolved from its old event
    /// once.
    pub async fn password_hash(&self, id: &str) -> Result<Option<String>, VaultError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT password_hash FROM credentials WHERE credential_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        if let Some((hash,)) = row {
            return Ok(Some(hash));
        }
        let Some((sequence, user)) = parse_legacy(id) else {
            return Ok(None);
        };
        let Some(hash) = self
            .legacy_value(USER_TYPE, user, sequence, "password_hash")
            .await?
        else {
            return Ok(None);
        };
        self.put_credential(id, user, &hash).await?;
        Ok(Some(hash))
    }

    /// `field` of the version-1 event at (`aggregate_type`, `aggregate_id`, `sequence`), read
    /// from the stored row (the one place that still holds it).
    async fn legacy_value(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        field: &str,
    ) -> Result<Option<String>, VaultError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT (SELECT v ->> $4 FROM jsonb_each(payload) AS p(k, v) LIMIT 1)
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3
                AND event_version = '1'",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(field)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(v,)| v))
    }

    /// Moves every value still held only by a version-1 event into its table (idempotent); the
    /// number of values moved. Run at start so that legacy values are read from the log once.
    pub async fn import_legacy(&self) -> Result<usize, VaultError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence FROM events
              WHERE event_version = '1'
                AND ((aggregate_type = $1
                      AND event_type IN ('AuthorizerRegistered', 'AuthorizerReconfigured'))
                  OR (aggregate_type = $2
                      AND event_type IN ('LockerUserRegistered', 'LockerUserPasswordChanged')))",
        )
        .bind(AUTHORIZER_TYPE)
        .bind(USER_TYPE)
        .fetch_all(&self.pool)
        .await?;
        let mut moved = 0;
        for (aggregate_type, aggregate_id, sequence) in rows {
            let reference = legacy_reference(&aggregate_id, sequence.max(0) as usize);
            let found = if aggregate_type == AUTHORIZER_TYPE {
                self.secret(&reference).await?.is_some()
            } else {
                self.password_hash(&reference).await?.is_some()
            };
            moved += usize::from(found);
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let hex_key = VaultKey::parse(&"ab".repeat(32)).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xab; 32]);
        assert_eq!(VaultKey::parse(&b64).unwrap().id(), hex_key.id());
        assert!(VaultKey::parse("short").is_err());
        assert!(VaultKey::parse(&"ab".repeat(31)).is_err());
        assert!(VaultKey::development().is_development());
        assert!(!hex_key.is_development());
        assert!(!format!("{hex_key:?}").contains("abab"));
    }

    #[test]
    fn legacy_references_round_trip() {
        let r = legacy_reference("0001", 3);
        assert_eq!(r, "legacy:3:0001");
        assert_eq!(parse_legacy(&r), Some((3, "0001")));
        assert_eq!(parse_legacy("fp_00"), None);
    }

    #[test]
    fn secret_ids_name_the_authorizer_and_hide_the_secret() {
        let a = authorizer_secret_id("0001", "whsec_abc");
        assert_ne!(a, authorizer_secret_id("0002", "whsec_abc"));
        assert_eq!(a, authorizer_secret_id("0001", "whsec_abc"));
        assert!(a.starts_with("fp_") && !a.contains("abc"));
    }
}
