-- Device tokens (OWASP "device cookies"): a successful login answers one, and a later login
-- that presents it is counted against the device's own failure budget instead of the
-- account's. Only the SHA-256 of a token is stored; the token itself never is.
-- Times are whole microseconds since the Unix epoch, like every timestamp but the JWT
-- columns. A token is valid for 90 days from its last use; an account keeps its 20 most
-- recently used ones. Password changes and resets, deactivation and "log out everywhere"
-- delete an account's rows.
CREATE TABLE device_tokens (
    token_hash   BLOB    PRIMARY KEY,                -- SHA-256 of the token's text
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL
);
-- An account's tokens, newest use first (the bound of 20 per account).
CREATE INDEX device_tokens_by_user ON device_tokens (user_id, last_used_at);
-- The purge of tokens unused for 90 days.
CREATE INDEX device_tokens_by_last_use ON device_tokens (last_used_at);
