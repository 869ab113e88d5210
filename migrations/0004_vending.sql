-- Scan-to-open vending: the orders read model, the shopping session on device status, and the
-- index that maps a payment attempt back to its session.

-- The shopping session currently holding a vending cabinet (from the shopper's open request
-- until the session is settled or its opening failed), and the open request that began it.
ALTER TABLE device_status
    ADD COLUMN current_session         uuid,
    ADD COLUMN current_session_request uuid;

-- Orders, one row per shopping session, built only by the orders projector from the log.
-- Amounts are integer minor units of `currency`. `lines` is the order as charged (or, while in
-- review, the provisional lines); `review_reasons` says why a review is needed.
CREATE TABLE orders
(
    session_id     uuid PRIMARY KEY,
    user_id        text        NOT NULL,
    device_id      uuid        NOT NULL,
    site           text        NOT NULL,
    status         text        NOT NULL CHECK (status IN
        ('open', 'placed', 'needs_review', 'no_charge', 'abandoned', 'payment_pending', 'paid',
         'refunded')),
    lines          jsonb       NOT NULL DEFAULT '[]',
    total_minor    bigint,
    currency       text        NOT NULL,
    review_reasons jsonb,
    payment_id     uuid,
    provider_ref   text,
    payment_error  text,
    paid_minor     bigint,
    refunded_minor bigint      NOT NULL DEFAULT 0,
    opened_at      timestamptz NOT NULL,
    closed_at      timestamptz,
    paid_at        timestamptz,
    updated_at     timestamptz NOT NULL,
    last_position  bigint      NOT NULL
);

CREATE INDEX orders_by_user ON orders (user_id, opened_at DESC);
CREATE INDEX orders_by_device ON orders (device_id, opened_at DESC);
-- "Does this shopper owe anything?" is asked before every opening.
CREATE INDEX orders_unpaid ON orders (user_id)
    WHERE status IN ('placed', 'needs_review', 'payment_pending');

-- A Kazaya callback names our payment attempt (sent as its order id); the session is found
-- from the committed PaymentRequested event itself, so the lookup never waits on a projection.
CREATE INDEX events_payment_requested ON events ((payload #>> '{PaymentRequested,payment_id}'))
    WHERE aggregate_type = 'shopping_session' AND event_type = 'PaymentRequested';
