-- The turn engine's pending turns: one row per user message whose reply is not stored
-- yet, written in the transaction that stores the message and deleted in the one that
-- stores its reply. A turn is answered under a lease (holder, expiry; both NULL when
-- free). Migrations and imports create no row: only a posted message asks for a reply.
CREATE TABLE pending_turns (
    message_id    TEXT    PRIMARY KEY REFERENCES chat_messages (id) ON DELETE CASCADE,
    session_id    TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    lease_holder  TEXT,
    lease_expires INTEGER
) WITHOUT ROWID;
-- A session's pending turns in order (the oldest is the one to answer).
CREATE UNIQUE INDEX pending_turns_by_session ON pending_turns (session_id, seq);

-- The outbox: every change the outside must hear about, recorded in the transaction that
-- makes it (the in-process event bus publishes after the commit; an audit log reads it
-- later). Rows are kept `outbox_retention_days`. No foreign keys: a row outlives what it
-- is about (a deleted session, a deleted user).
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('message_stored', 'session_deleted', 'user_revoked', 'login_ended')),
    session_id TEXT,
    seq        INTEGER,
    user_id    INTEGER,
    actor      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    request_id TEXT,
    payload    TEXT    NOT NULL DEFAULT '{}'    -- a small compact JSON object
);
CREATE INDEX outbox_by_age ON outbox (created_at);
