-- Devices: the device-status read model, liveness, and API credentials.

-- Device status, built only by the device-status projector from the log (never written by
-- command handlers). Every column is a pure function of the events up to last_position, so a
-- fresh fold of the log must reproduce this table exactly.
CREATE TABLE device_status
(
    device_id             uuid PRIMARY KEY,
    kind                  text        NOT NULL CHECK (kind IN ('vending', 'locker')),
    site                  text        NOT NULL,
    label                 text        NOT NULL,
    registered_at         timestamptz NOT NULL,
    online                boolean     NOT NULL,
    door                  text        NOT NULL CHECK (door IN ('unknown', 'open', 'closed')),
    fault_code            text,
    fault_message         text,
    pending_open_request  uuid,
    pending_open_deadline timestamptz,
    last_open_request     uuid,
    last_open_outcome     text,
    last_event_at         timestamptz NOT NULL,
    last_position         bigint      NOT NULL
);

CREATE INDEX device_status_pending_open ON device_status (pending_open_deadline)
    WHERE pending_open_request IS NOT NULL;

-- Heartbeats are telemetry, not events: they only move last_seen here. The liveness sweeper
-- turns a silence longer than the configured timeout into a DeviceWentOffline event.
CREATE TABLE device_liveness
(
    device_id  uuid PRIMARY KEY,
    last_seen  timestamptz NOT NULL,
    last_msg   text        NOT NULL
);

-- Bearer tokens for the HTTP API. Only the SHA-256 of a token is stored; the token itself is
-- shown once when issued.
CREATE TABLE api_tokens
(
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    role       text        NOT NULL CHECK (role IN ('operator', 'user', 'auditor', 'device')),
    subject    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
