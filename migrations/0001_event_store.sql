-- The event store: postgres-es's `events` table, widened with what the relay and auditors need.
--
-- postgres-es only ever inserts the first seven columns and selects them back by aggregate; every
-- other column is filled by the database itself, so no client (ours or a careless one) can choose
-- its own transaction id, event id or timestamp.

-- UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version and variant bits, the rest random.
-- PostgreSQL 15 has no built-in generator; this one is the widely used pure-SQL form.
CREATE FUNCTION latch_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1),
            53, 1),
        'hex')::uuid;
$$;

CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        jsonb                        NOT NULL,
    -- correlation_id, causation_id, actor, request_id are required on every event; device and
    -- idempotency_key when the command had them.
    metadata       jsonb                        NOT NULL
        CHECK (metadata ?& ARRAY ['correlation_id', 'causation_id', 'actor', 'request_id']),
    -- Insertion order inside one transaction; only meaningful together with tx_id (and indexed
    -- that way, below). Unique by construction, so it carries no index of its own.
    id             bigserial                    NOT NULL,
    event_id       uuid                         NOT NULL UNIQUE DEFAULT latch_uuid_v7(),
    -- The writing transaction. The relay reads only below the oldest running transaction, so an
    -- event that commits late is still picked up before anything that committed after it.
    tx_id          xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_commit_order ON events (tx_id, id);

-- Whatever a client sent for the database-owned columns is overwritten.
CREATE FUNCTION latch_events_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.tx_id := pg_current_xact_id();
    NEW.event_id := latch_uuid_v7();
    NEW.recorded_at := clock_timestamp();
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_stamp
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION latch_events_stamp();

-- History is append-only. (A superuser can still disable triggers; the hash chain in event_log
-- is what makes such tampering visible.)
CREATE FUNCTION latch_reject_rewrite() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION latch_reject_rewrite();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION latch_reject_rewrite();

-- Idempotency keys are claimed in the same transaction that appends the command's events, so a
-- retry after any crash either finds the key (and the events) or finds nothing at all.
CREATE TABLE command_keys
(
    idempotency_key text        PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    tx_id           xid8        NOT NULL,
    fingerprint     text,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION latch_claim_command_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key   text := NEW.metadata ->> 'idempotency_key';
    owner xid8;
BEGIN
    IF key IS NULL THEN
        RETURN NEW;
    END IF;
    INSERT INTO command_keys (idempotency_key, aggregate_type, aggregate_id, tx_id, fingerprint)
    VALUES (key, NEW.aggregate_type, NEW.aggregate_id, NEW.tx_id, NEW.metadata ->> 'fingerprint')
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        -- Several events of one command share the key; another transaction may not.
        SELECT tx_id INTO owner FROM command_keys WHERE idempotency_key = key;
        IF owner IS DISTINCT FROM NEW.tx_id THEN
            RAISE EXCEPTION 'idempotency key % already used', key USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_claim_command_key
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.metadata ? 'idempotency_key')
    EXECUTE FUNCTION latch_claim_command_key();

-- The log: written only by the one active relay. position is dense and gapless (1, 2, 3, ...)
-- and equals the JetStream sequence of the event's message on the EVENTS stream.
CREATE TABLE event_log
(
    position     bigint PRIMARY KEY CHECK (position > 0),
    -- No foreign key: the relay copies ids it has just read from events, and a per-row key check
    -- was a third of the cost of sequencing a batch.
    event_id     uuid   NOT NULL UNIQUE,
    -- The relay's cursor into events: (tx_id, id) of the last event given a position.
    tx_id        xid8   NOT NULL,
    event_row_id bigint NOT NULL,
    -- hash = sha256(prev_hash || canonical bytes of the event); prev_hash of position 1 is 32 zero
    -- bytes. The canonical bytes are latch_projections::log::LogRow::chain_bytes (payload and
    -- metadata in their jsonb text form).
    prev_hash    bytea  NOT NULL CHECK (length(prev_hash) = 32),
    hash         bytea  NOT NULL CHECK (length(hash) = 32)
);

CREATE TRIGGER event_log_append_only
    BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION latch_reject_rewrite();

CREATE TRIGGER event_log_no_truncate
    BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION latch_reject_rewrite();

-- One row per projection: the last log position whose effect is in its read model. Advanced in
-- the same transaction as the read-model change, which is what makes projections exactly-once.
CREATE TABLE projection_checkpoints
(
    name       text PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
