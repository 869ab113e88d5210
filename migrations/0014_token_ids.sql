-- Every token gets an id that names it in the log (TokenIssued, TokenRevoked,
-- LockerLoginSucceeded, QrLoginRedeemed.session_id): events must never carry the token or its
-- hash, which is what requests authenticate with. New tokens get a UUIDv7 from the service;
-- tokens issued before this migration get a random id, so a later revocation can still name one.
ALTER TABLE api_tokens ADD COLUMN token_id uuid;
UPDATE api_tokens SET token_id = gen_random_uuid() WHERE token_id IS NULL;
ALTER TABLE api_tokens ALTER COLUMN token_id SET NOT NULL;
CREATE UNIQUE INDEX api_tokens_token_id ON api_tokens (token_id);
