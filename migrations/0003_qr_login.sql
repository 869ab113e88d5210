-- QR-code login (issue 3).

-- The QR-login status read model, folded from `qr_login` events by the `qr_login_status`
-- projector. Pages are answered from an in-memory fold of each login's own stream (see
-- latch-api's qr::hub), so this table serves the sweeper (which codes are due to expire),
-- operators and point-in-time questions. It holds no secrets: only the events' hashes exist,
-- and not even those are copied here.
CREATE TABLE qr_login_status
(
    login_id      uuid PRIMARY KEY,
    -- waiting | scanned | confirmed | cancelled | expired | redeemed
    state         text        NOT NULL,
    origin_ip     text        NOT NULL,
    user_agent    text        NOT NULL,
    minted_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    -- The app user who locked (scanned) the code, once one has.
    app_user      text,
    ext           text,
    locked_at     timestamptz,
    confirmed_at  timestamptz,
    -- While confirmed: when the browser's chance to redeem the login ends.
    redeem_by     timestamptz,
    finished_at   timestamptz,
    session_id    uuid,
    last_position bigint      NOT NULL
);

-- The sweeper's question: which live logins have passed their deadline?
CREATE INDEX qr_login_status_due ON qr_login_status (coalesce(redeem_by, expires_at))
    WHERE state IN ('waiting', 'scanned', 'confirmed');

-- Web sessions are bearer tokens too (issued when a QR login is redeemed); unlike the
-- long-lived tokens an operator issues, they end.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
