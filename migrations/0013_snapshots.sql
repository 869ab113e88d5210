-- Snapshots of long-lived aggregates (issue 12): the state after `last_sequence`, so a command
-- loads the snapshot and only the events after it instead of folding the whole stream.
--
-- A cache, never the truth. Nothing reads it but the command store (domain/src/store/); the
-- relay, projections, rebuilds, point-in-time answers and audit verify fold the events. Rows are
-- overwritten in place and may be deleted, or the table truncated, at any time: the next load
-- folds the stream and writes a new one.
CREATE TABLE snapshots
(
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    -- The sequence of the last event folded into `state`.
    last_sequence  bigint      NOT NULL CHECK (last_sequence > 0),
    -- The code's state shape (`StateShape`): a snapshot of another shape is ignored, never read.
    shape          text        NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
