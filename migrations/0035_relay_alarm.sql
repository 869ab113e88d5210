-- The relay's alarm, where every process can see it: present while the EVENTS stream holds
-- what the log does not (a message published from outside, a stream ahead of the log) and the
-- relay refuses to publish. Cleared by `latch relay reconcile`, or by the relay itself once it
-- finds the stream sound again. `/readyz` reports it (issue 14, DESIGN.md section 2).
CREATE TABLE relay_alarm
(
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    raised_at timestamptz NOT NULL DEFAULT now(),
    detail    text        NOT NULL
);
