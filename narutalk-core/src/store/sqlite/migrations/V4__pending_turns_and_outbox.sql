-- The turn engine's pending turns, kept on the session row that every post and every
-- reply rewrites anyway (so a turn costs no row, index or page of its own):
-- - `turns_pending`: user messages posted whose reply is not stored yet;
-- - `answered_seq`: they are the session's user messages after this sequence number (a
--   post that finds none pending moves it to just before itself; a reply moves it to the
--   message it answers);
-- - `turn_holder`, `turn_expires`: the lease of the process answering the session's
--   oldest pending turn, both NULL when free.
-- Migrations and imports create no pending turn: only a posted message asks for a reply.
ALTER TABLE chat_sessions ADD COLUMN turns_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ADD COLUMN answered_seq  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ADD COLUMN turn_holder   TEXT;
ALTER TABLE chat_sessions ADD COLUMN turn_expires  INTEGER;

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
