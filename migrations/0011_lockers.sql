-- Shared parcel lockers (issue 5): read models built only by the lockers projector from the log.
-- Names are UTF-8 text as given (e.g. 快递公司A). Times are timestamptz.

CREATE TABLE locker_sites
(
    site          text PRIMARY KEY,
    name          text        NOT NULL,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_position bigint      NOT NULL
);

-- Compartment ownership: the current holder of the empty-use right of every compartment.
CREATE TABLE locker_compartments
(
    compartment_id text PRIMARY KEY, -- "{site}:{number}"
    site           text        NOT NULL,
    number         text        NOT NULL,
    size           text        NOT NULL CHECK (size IN ('small', 'medium', 'large')),
    status         text        NOT NULL CHECK (status IN ('free', 'reserved', 'occupied')),
    holder         text,
    window_start   timestamptz,
    expires_at     timestamptz,
    depositor      text,
    parcel         text,
    installed_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_position  bigint      NOT NULL,
    UNIQUE (site, number)
);
-- The compartments each user holds; free compartments by site and size for reservations.
CREATE INDEX locker_compartments_holder ON locker_compartments (holder) WHERE holder IS NOT NULL;
CREATE INDEX locker_compartments_free ON locker_compartments (site, size, number) WHERE status = 'free';

-- The full holder history: one row per holding, [held_from, held_to). The holder at a past
-- moment t is the row with held_from <= t AND (held_to IS NULL OR held_to > t).
CREATE TABLE compartment_holders
(
    compartment_id text        NOT NULL,
    position       bigint      NOT NULL, -- the log position that began this holding
    holder         text        NOT NULL,
    held_from      timestamptz NOT NULL,
    held_to        timestamptz,
    grant_id       uuid,                 -- the grant that began it (NULL for a reservation)
    authorizer     text,                 -- the authorizer that picked the holder, if any
    ended_by       text,                 -- granted, expired, deposited
    PRIMARY KEY (compartment_id, position)
);
CREATE INDEX compartment_holders_by_holder ON compartment_holders (holder, held_from);
CREATE UNIQUE INDEX compartment_holders_open ON compartment_holders (compartment_id) WHERE held_to IS NULL;

-- Locker users as operators and the holder's pages see them (no password hash here: login
-- folds the user's own stream).
CREATE TABLE locker_users
(
    user_number   text PRIMARY KEY,
    name          text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('active', 'disabled')),
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_position bigint      NOT NULL
);

-- Third-party authorizers (no signing secret here).
CREATE TABLE locker_authorizers
(
    number        text PRIMARY KEY,
    name          text        NOT NULL,
    endpoint      text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('active', 'inactive')),
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_position bigint      NOT NULL
);

-- Each grant request's state.
CREATE TABLE grant_requests
(
    grant_id       uuid PRIMARY KEY,
    compartment_id text        NOT NULL,
    size           text        NOT NULL,
    requester      text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('direct', 'authorizer')),
    authorizer     text,
    receiver       text,
    status         text        NOT NULL CHECK (status IN
        ('requested', 'accepted', 'completed', 'declined', 'expired', 'failed')),
    reason         text,
    deadline       timestamptz NOT NULL,
    requested_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_position  bigint      NOT NULL
);
CREATE INDEX grant_requests_requester ON grant_requests (requester, requested_at);
CREATE INDEX grant_requests_open ON grant_requests (deadline) WHERE status = 'requested';

-- Notifications, per recipient ("user:{number}" or "authorizer:{number}").
CREATE TABLE locker_inbox
(
    recipient      text        NOT NULL,
    position       bigint      NOT NULL,
    kind           text        NOT NULL, -- come_use, grant_confirmed, grant_confirmed_authorizer, ...
    grant_id       uuid,
    compartment_id text        NOT NULL,
    message        text        NOT NULL,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (recipient, position, kind)
);
