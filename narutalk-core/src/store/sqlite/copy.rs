//! [`Maintenance::export_all`] and [`Maintenance::import_all`] on SQLite: the rows of a
//! whole database, read in one read transaction, and written in one write transaction with
//! their rowids (the creation order of sessions and device tokens) and the `users` counter
//! of `sqlite_sequence`.
//!
//! [`Maintenance::export_all`]: crate::store::Maintenance::export_all
//! [`Maintenance::import_all`]: crate::store::Maintenance::import_all

use rusqlite::{Connection, params};

use super::SqliteStore;
use super::maintenance::{quote_identifier, table_names};
use crate::error::Error;
use crate::store::TableRows;
use crate::store::copy::{
    COPIED_TABLES, CopyError, Counters, DeviceTokenRow, Dump, IdempotencyKeyRow, MIGRATION_TABLE,
    MessageRow, OutboxRow, RefreshTokenRow, SessionRow, UserRow, first_occupied,
};

/// Every Narutalk row, in one read transaction.
pub(super) fn export_all(store: &SqliteStore) -> Result<Dump, Error> {
    store.read(|conn| {
        let users = rows(
            conn,
            "SELECT id, username, email, password_hash, role, department, is_verified, \
             is_active, tokens_revoked_at, date_joined, last_login FROM users ORDER BY id",
            |r| {
                Ok(UserRow {
                    id: r.get(0)?,
                    username: r.get(1)?,
                    email: r.get(2)?,
                    password_hash: r.get(3)?,
                    role: r.get(4)?,
                    department: r.get(5)?,
                    is_verified: r.get(6)?,
                    is_active: r.get(7)?,
                    tokens_revoked_at: r.get(8)?,
                    date_joined: r.get(9)?,
                    last_login: r.get(10)?,
                })
            },
        )?;
        let refresh_tokens = rows(
            conn,
            "SELECT jti, user_id, family, issued_at, expires_at, used_at, revoked_at \
             FROM refresh_tokens ORDER BY jti",
            |r| {
                Ok(RefreshTokenRow {
                    jti: r.get(0)?,
                    user_id: r.get(1)?,
                    family: r.get(2)?,
                    issued_at: r.get(3)?,
                    expires_at: r.get(4)?,
                    used_at: r.get(5)?,
                    revoked_at: r.get(6)?,
                })
            },
        )?;
        let device_tokens = rows(
            conn,
            "SELECT token_hash, user_id, created_at, last_used_at, rowid \
             FROM device_tokens ORDER BY rowid",
            |r| {
                Ok(DeviceTokenRow {
                    token_hash: r.get(0)?,
                    user_id: r.get(1)?,
                    created_at: r.get(2)?,
                    last_used_at: r.get(3)?,
                    order: r.get(4)?,
                })
            },
        )?;
        let sessions = rows(
            conn,
            "SELECT id, user_id, title, category, is_active, created_at, updated_at, \
             message_count, last_seq, turns_pending, answered_seq, rowid \
             FROM chat_sessions ORDER BY rowid",
            |r| {
                Ok(SessionRow {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    title: r.get(2)?,
                    category: r.get(3)?,
                    is_active: r.get(4)?,
                    created_at: r.get(5)?,
                    updated_at: r.get(6)?,
                    message_count: r.get(7)?,
                    last_seq: r.get(8)?,
                    turns_pending: r.get(9)?,
                    answered_seq: r.get(10)?,
                    order: r.get(11)?,
                })
            },
        )?;
        let messages = rows(
            conn,
            "SELECT id, session_id, seq, sender, message_type, content, metadata, \
             created_at, reply_to FROM chat_messages ORDER BY session_id, seq",
            |r| {
                Ok(MessageRow {
                    id: r.get(0)?,
                    session_id: r.get(1)?,
                    seq: r.get(2)?,
                    sender: r.get(3)?,
                    message_type: r.get(4)?,
                    content: r.get(5)?,
                    metadata: r.get(6)?,
                    created_at: r.get(7)?,
                    reply_to: r.get(8)?,
                })
            },
        )?;
        let idempotency_keys = rows(
            conn,
            "SELECT session_id, user_id, key, message_id, created_at FROM idempotency_keys \
             ORDER BY session_id, user_id, key",
            |r| {
                Ok(IdempotencyKeyRow {
                    session_id: r.get(0)?,
                    user_id: r.get(1)?,
                    key: r.get(2)?,
                    message_id: r.get(3)?,
                    created_at: r.get(4)?,
                })
            },
        )?;
        let outbox = rows(
            conn,
            "SELECT id, kind, session_id, seq, user_id, actor, created_at, request_id, payload \
             FROM outbox ORDER BY id",
            |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    session_id: r.get(2)?,
                    seq: r.get(3)?,
                    user_id: r.get(4)?,
                    actor: r.get(5)?,
                    created_at: r.get(6)?,
                    request_id: r.get(7)?,
                    payload: r.get(8)?,
                })
            },
        )?;
        let counters = Counters {
            users: conn.query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'users'), 0)",
                [],
                |r| r.get(0),
            )?,
            outbox: highest(conn, "SELECT max(id) FROM outbox")?,
            sessions: highest(conn, "SELECT max(rowid) FROM chat_sessions")?,
            device_tokens: highest(conn, "SELECT max(rowid) FROM device_tokens")?,
        };
        Ok(Dump {
            users,
            refresh_tokens,
            device_tokens,
            sessions,
            messages,
            idempotency_keys,
            outbox,
            counters,
        })
    })
}

/// Writes `dump` in one write transaction (see [`crate::store::Maintenance::import_all`]).
/// SQLite stores any text, NUL characters included.
pub(super) fn import_all(store: &SqliteStore, dump: &Dump) -> Result<Vec<TableRows>, CopyError> {
    // A refusal found inside the transaction rolls it back (the closure's `Err`) and is
    // answered as itself.
    let mut refusal = None;
    let written = store.write(|tx| match import(tx, dump) {
        Ok(counts) => Ok(counts),
        Err(CopyError::Database(error)) => Err(error),
        Err(other) => {
            refusal = Some(other);
            Err(Error::internal("the copy was refused"))
        }
    });
    match (written, refusal) {
        (_, Some(refusal)) => Err(refusal),
        (Ok(counts), None) => Ok(counts),
        (Err(error), None) => Err(error.into()),
    }
}

fn import(conn: &Connection, dump: &Dump) -> Result<Vec<TableRows>, CopyError> {
    let mut tables = Vec::new();
    for table in table_names(conn).map_err(Error::from)? {
        if table == MIGRATION_TABLE {
            continue;
        }
        let rows: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_identifier(&table)),
                [],
                |r| r.get(0),
            )
            .map_err(Error::from)?;
        tables.push(TableRows {
            table,
            rows: u64::try_from(rows).unwrap_or_default(),
        });
    }
    if let Some(occupied) = first_occupied(&tables) {
        return Err(occupied);
    }
    write_rows(conn, dump).map_err(Error::from)?;
    let expected = dump.counts();
    for want in &expected {
        let found: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {}", want.table), [], |r| {
                r.get(0)
            })
            .map_err(Error::from)?;
        let found = u64::try_from(found).unwrap_or_default();
        if found != want.rows {
            return Err(CopyError::CountsDiffer {
                table: want.table.clone(),
                expected: want.rows,
                found,
            });
        }
    }
    debug_assert_eq!(expected.len(), COPIED_TABLES.len());
    Ok(expected)
}

fn write_rows(conn: &Connection, dump: &Dump) -> rusqlite::Result<()> {
    let mut insert = conn.prepare(
        "INSERT INTO users (id, username, email, password_hash, role, department, \
         is_verified, is_active, tokens_revoked_at, date_joined, last_login) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for r in &dump.users {
        insert.execute(params![
            r.id,
            r.username,
            r.email,
            r.password_hash,
            r.role,
            r.department,
            r.is_verified,
            r.is_active,
            r.tokens_revoked_at,
            r.date_joined,
            r.last_login
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO refresh_tokens (jti, user_id, family, issued_at, expires_at, used_at, \
         revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in &dump.refresh_tokens {
        insert.execute(params![
            r.jti,
            r.user_id,
            r.family,
            r.issued_at,
            r.expires_at,
            r.used_at,
            r.revoked_at
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO device_tokens (rowid, token_hash, user_id, created_at, last_used_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &dump.device_tokens {
        insert.execute(params![
            r.order,
            r.token_hash,
            r.user_id,
            r.created_at,
            r.last_used_at
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO chat_sessions (rowid, id, user_id, title, category, is_active, \
         created_at, updated_at, message_count, last_seq, turns_pending, answered_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for r in &dump.sessions {
        insert.execute(params![
            r.order,
            r.id,
            r.user_id,
            r.title,
            r.category,
            r.is_active,
            r.created_at,
            r.updated_at,
            r.message_count,
            r.last_seq,
            r.turns_pending,
            r.answered_seq
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, \
         metadata, created_at, reply_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for r in &dump.messages {
        insert.execute(params![
            r.id,
            r.session_id,
            r.seq,
            r.sender,
            r.message_type,
            r.content,
            r.metadata,
            r.created_at,
            r.reply_to
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO idempotency_keys (session_id, user_id, key, message_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &dump.idempotency_keys {
        insert.execute(params![
            r.session_id,
            r.user_id,
            r.key,
            r.message_id,
            r.created_at
        ])?;
    }
    let mut insert = conn.prepare(
        "INSERT INTO outbox (id, kind, session_id, seq, user_id, actor, created_at, \
         request_id, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for r in &dump.outbox {
        insert.execute(params![
            r.id,
            r.kind,
            r.session_id,
            r.seq,
            r.user_id,
            r.actor,
            r.created_at,
            r.request_id,
            r.payload
        ])?;
    }
    // AUTOINCREMENT's counter: at least the source's, never lowered (the target may
    // have had users, deleted since). The other ids and orders are rowids, which go on
    // from the highest row.
    let counter = dump.counters.users;
    if counter > 0
        && conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'users'",
            [counter],
        )? == 0
    {
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('users', ?1)",
            [counter],
        )?;
    }
    Ok(())
}

/// Every row `sql` answers, through `row`.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Error> {
    let mut statement = conn.prepare(sql)?;
    let rows = statement.query_map([], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The one integer `sql` answers, 0 for NULL.
fn highest(conn: &Connection, sql: &str) -> Result<i64, Error> {
    let value: Option<i64> = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(value.unwrap_or(0))
}
