-- NATS identities (issue 13): one NATS user per registered device and per authorizer.
-- The password is handed out once in the HTTP answer; only its bcrypt hash is kept, and it is
-- what the rendered nats-server authorization file carries (nats-server checks bcrypt itself).
-- Never written to an event: the log is read by auditors and kept forever.
CREATE TABLE nats_identities (
    -- The NATS user name: `device-<uuid>` or `authorizer-<number>`.
    nats_user     text PRIMARY KEY,
    -- `device` or `authorizer`: decides the subjects the user is confined to.
    kind          text NOT NULL CHECK (kind IN ('device', 'authorizer')),
    -- The device id or authorizer number the user speaks for.
    principal     text NOT NULL,
    password_hash text NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now()
);
