-- NATS identities as nkeys: a device or authorizer gets an ed25519 key pair; the seed (`SU...`)
-- is handed out once in the HTTP answer and Latch keeps only the public key (`U...`), which is no
-- secret: nats-server checks a signature of its nonce at connect. bcrypt, paid on every
-- registration and by the server on every connect, goes away for new identities.
-- Rows issued before this keep their bcrypt hash and keep working as user/password; a rotation
-- turns one into an nkey identity.
ALTER TABLE nats_identities ADD COLUMN nkey text UNIQUE
    -- A user public key: 'U' and 55 more base32 characters (prefix byte, key, CRC16).
    CHECK (nkey ~ '^U[A-Z2-7]{55}$');
ALTER TABLE nats_identities ALTER COLUMN password_hash DROP NOT NULL;
-- Exactly one way to log in.
ALTER TABLE nats_identities ADD CONSTRAINT nats_identities_one_credential
    CHECK ((nkey IS NULL) <> (password_hash IS NULL));
