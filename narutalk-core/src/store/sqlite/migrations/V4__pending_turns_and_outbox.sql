-- The turn engine's pending turns: one row per user message whose reply is not stored
-- yet, written in the transaction that stores the message and deleted in the one that
-- stores its reply. A turn is answered under a lease (holder, expiry; both NULL when
-- free). Migrations and imports create no row: only a posted message asks for a reply.
-- Keyed by the session's order, so that the oldest turn of a session is the first row of
-- its prefix and a row costs one b-tree; messages are only ever deleted with their
-- session, which takes its pending turns along.
CREATE TABLE pending_turns (
    session_id    TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    message_id    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    lease_holder  TEXT,
    lease_expires INTEGER,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

-- The outbox: every change the outside must hear about, recorded in the transaction that
-- makes it (the in-process event bus publishes after the commit; an audit log reads it
-- later). Rows are kept `outbox_retention_days`; ids grow with time (the oldest rows are
-- the ones pruned, never the newest), so the pruning reads the lowest ids and needs no
-- index. No foreign keys: a row outlives what it is about (a deleted session or user).
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('message_stored', 'session_deleted', 'user_revoked', 'login_ended')),
    session_id TEXT,
    seq        INTEGER,
    user_id    INTEGER,
    actor      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    request_id TEXT,
    payload    TEXT    NOT NULL DEFAULT '{}'    -- a small compact JSON object
);
