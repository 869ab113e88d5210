-- Audit (issue 6): signed checkpoints of the hash chain's head.
--
-- Every so often the relay role signs (Ed25519) the log's head: "position P has chain hash H".
-- Auditors export these and keep them; later `latch audit checkpoint check` recomputes the chain
-- from the stored events up to P and proves history up to there was not rewritten. The table is
-- append-only like the log itself (a superuser can still rewrite it, but cannot forge a signature
-- an auditor already holds).
CREATE TABLE audit_checkpoints
(
    position   bigint PRIMARY KEY CHECK (position > 0),
    head_hash  bytea       NOT NULL CHECK (length(head_hash) = 32),
    signed_at  timestamptz NOT NULL,
    public_key bytea       NOT NULL CHECK (length(public_key) = 32),
    signature  bytea       NOT NULL CHECK (length(signature) = 64)
);

CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION latch_reject_rewrite();

CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION latch_reject_rewrite();
