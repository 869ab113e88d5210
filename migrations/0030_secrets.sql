-- Secrets out of the log (issue 13). Events are read by auditors, carried on the EVENTS stream
-- and kept forever, so they name secrets only by id; the secrets live here
-- (domain/src/vault.rs).

-- Authorizers' webhook signing secrets, encrypted with XChaCha20-Poly1305 under
-- LATCH_SECRETS_KEY; `id` is bound into the ciphertext as associated data. `id` is what events
-- carry: `fp_...` (a fingerprint of authorizer and secret) for new ones, `legacy:{sequence}:{id}`
-- for a secret moved here from a version-1 event.
CREATE TABLE secrets
(
    id         text PRIMARY KEY,
    -- Whose secret it is, e.g. `locker_authorizer/0001` (for operators; never used to look up).
    owner      text        NOT NULL,
    -- The public name of the key it is encrypted under (`VaultKey::id`): a row under another key
    -- is reported as such instead of as corrupt.
    key_id     text        NOT NULL,
    nonce      bytea       NOT NULL CHECK (length(nonce) = 24),
    ciphertext bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Locker users' password hashes (argon2id PHC strings: salted and slow, made to be stored as they
-- are). `credential_id` is what LockerUserRegistered / LockerUserPasswordChanged carry.
CREATE TABLE credentials
(
    credential_id text PRIMARY KEY,
    user_number   text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX credentials_user_number ON credentials (user_number);

-- Snapshots are a cache (0013). Those of authorizers and users taken before this held the secret
-- or the password hash in their state; compartments' held a pickup code's plain digest. Their
-- state shapes changed, so they would never be read again, but they must not stay on disk.
DELETE FROM snapshots
 WHERE aggregate_type IN ('locker_authorizer', 'locker_user', 'locker_compartment');
