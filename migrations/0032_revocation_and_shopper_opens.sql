-- Revocation and shopper opens (issue 13).
--
-- Disabling a locker user revokes every token of theirs at once: one UPDATE by subject, which
-- this index keeps cheap however many tokens have ever been issued (only live ones are indexed).
CREATE INDEX api_tokens_live_subject ON api_tokens (subject) WHERE revoked_at IS NULL;

-- One active shopping session per member. Not a domain fact (the device's DoorOpenRequested
-- names the shopper and the session) but a claim that orders a member's concurrent opens
-- without holding a connection: an open claims the row by compare-and-set on session_id
-- (in_flight while its device command runs), and a later open is refused while the claim is
-- in flight or while the device named here still holds that session (the device aggregate,
-- loaded from the event store, is the truth). A claim left in flight by a crash lapses after
-- a short time (see api/src/vending/opens.rs).
CREATE TABLE shopper_opens
(
    member     text PRIMARY KEY,
    device_id  uuid        NOT NULL,
    session_id uuid        NOT NULL,
    claimed_at timestamptz NOT NULL,
    in_flight  boolean     NOT NULL
);
