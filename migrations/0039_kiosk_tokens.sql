-- Kiosk tokens: a locker's own screen (`/lockers/kiosk/{site}`) holds a token with the role
-- `kiosk` and the subject `kiosk:<site>`, issued by `latch token --role kiosk`. With it the
-- screen may collect parcels by pickup code at that one site, and nothing else.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('operator', 'user', 'auditor', 'device', 'kiosk'));
