-- The sandbox SMS gateway's record (issue 12): one row per message id. The lockers notifier sends
-- at least once, keyed by the event that caused the message; the sandbox keeps each id once, as a
-- real gateway with idempotency keys would deliver it once, and the record outlives restarts.
CREATE TABLE sandbox_sms (
    message_id text PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,
    phone text NOT NULL,
    body text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);
