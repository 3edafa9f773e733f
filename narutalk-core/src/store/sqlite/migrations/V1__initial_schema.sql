-- Narutalk's first schema. Migrations are append-only: change the schema with a new file.
-- Timestamps are whole microseconds since the Unix epoch (UTC), except the token columns,
-- which are whole seconds because JWT `iat`/`exp` are.

-- AUTOINCREMENT: a deleted user's id is never given to a new account, so a token that
-- outlived its user can never authenticate as somebody else.
CREATE TABLE users (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    username          TEXT    NOT NULL UNIQUE,
    email             TEXT    NOT NULL UNIQUE,          -- stored lower-cased
    password_hash     TEXT    NOT NULL,                 -- argon2id PHC string
    role              TEXT    NOT NULL DEFAULT 'user'
                      CHECK (role IN ('admin', 'doctor', 'nurse', 'user')),
    department        TEXT    NOT NULL DEFAULT '',
    is_verified       INTEGER NOT NULL DEFAULT 0 CHECK (is_verified IN (0, 1)),
    is_active         INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    tokens_revoked_at INTEGER NOT NULL DEFAULT 0,      -- seconds; a token with iat <= this is refused
    date_joined       INTEGER NOT NULL,
    last_login        INTEGER
);

-- One row per refresh token ever issued and not yet purged. A login starts a family;
-- every rotation adds a child to it. `used_at` marks a rotated token, `revoked_at` a
-- logged-out one or a whole family revoked after reuse.
CREATE TABLE refresh_tokens (
    jti        TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family     TEXT    NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
);
CREATE INDEX refresh_tokens_by_family  ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_user    ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_by_expiry  ON refresh_tokens (expires_at);

-- `message_count` and `last_seq` are kept in the same transaction as every message
-- insert, so a page of the session list is two queries whatever its size.
CREATE TABLE chat_sessions (
    id            TEXT    PRIMARY KEY,                 -- UUID v4, lower-case, hyphenated
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title         TEXT    NOT NULL,
    category      TEXT    NOT NULL DEFAULT 'general'
                  CHECK (category IN ('medical', 'general', 'emergency', 'consultation')),
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
-- The session list: a user's sessions, most recently updated first, ties by newest creation.
CREATE INDEX chat_sessions_by_user_updated
    ON chat_sessions (user_id, updated_at DESC, created_at DESC);

-- `seq` is the per-session storage order: "oldest first", "after", replay and broadcast follow it.
-- `reply_to` links an AI or system reply to the user message it answers.
CREATE TABLE chat_messages (
    id           TEXT    PRIMARY KEY,                  -- UUID v4
    session_id   TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    sender       TEXT    NOT NULL CHECK (sender IN ('user', 'ai', 'system')),
    message_type TEXT    NOT NULL CHECK (message_type IN ('text', 'image', 'file', 'error')),
    content      TEXT    NOT NULL,
    metadata     TEXT    NOT NULL DEFAULT '{}',        -- a compact JSON object
    created_at   INTEGER NOT NULL,
    reply_to     TEXT,
    UNIQUE (session_id, seq)
);
-- UNIQUE (session_id, seq) is also the index for a session's messages in storage order.
CREATE INDEX chat_messages_by_reply_to ON chat_messages (reply_to) WHERE reply_to IS NOT NULL;

-- Idempotency-Key header values: the same user, session and key within 24 hours answers
-- the first result again.
CREATE TABLE idempotency_keys (
    session_id TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key        TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, user_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
-- Deleting a user cascades here by user_id.
CREATE INDEX idempotency_keys_by_user ON idempotency_keys (user_id);
