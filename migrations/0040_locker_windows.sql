-- Time-windowed reservations (issue 14): every booked window of every compartment, maintained by
-- the lockers projector from the log. Windows are half-open [starts_at, ends_at) and never
-- overlap on one compartment (the compartment aggregate refuses an overlap), so a compartment's
-- windows are keyed by their start.
CREATE TABLE locker_windows
(
    compartment_id text        NOT NULL,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL CHECK (ends_at > starts_at),
    holder         text        NOT NULL,
    position       bigint      NOT NULL, -- the log position that booked or last cut this window
    booked_at      timestamptz NOT NULL,
    PRIMARY KEY (compartment_id, starts_at)
);
-- A user's windows (their compartments now and later); windows due for expiry.
CREATE INDEX locker_windows_holder ON locker_windows (holder, starts_at);
CREATE INDEX locker_windows_ends ON locker_windows (ends_at);

-- With windows, one compartment has a holding per booked window, several of them open at once
-- (a later window's holding begins at its start), so "one open holding per compartment" no
-- longer holds.
DROP INDEX compartment_holders_open;
CREATE INDEX compartment_holders_open ON compartment_holders (compartment_id, holder) WHERE held_to IS NULL;

-- A grant of part of a window begins two holdings at one log position (the receiver's part and
-- the rest the granter keeps after it).
ALTER TABLE compartment_holders
    DROP CONSTRAINT compartment_holders_pkey,
    ADD PRIMARY KEY (compartment_id, position, holder);
