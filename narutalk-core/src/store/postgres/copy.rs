//! [`Maintenance::export_all`] and [`Maintenance::import_all`] on PostgreSQL: the rows of
//! a whole database, read in one `REPEATABLE READ` snapshot, and written in one
//! transaction, a thousand rows a statement (`UNNEST` of one array per column), with the
//! creation orders (`insert_order`) and the identities moved past the source's counters.
//!
//! [`Maintenance::export_all`]: crate::store::Maintenance::export_all
//! [`Maintenance::import_all`]: crate::store::Maintenance::import_all

use super::maintenance::{quote_identifier, table_names};
use super::{CHECKOUT_TIMEOUT, PostgresStore, Tx};
use crate::error::Error;
use crate::store::TableRows;
use crate::store::copy::{
    CopyError, Counters, DeviceTokenRow, Dump, IdempotencyKeyRow, MIGRATION_TABLE, MessageRow,
    OutboxRow, RefreshTokenRow, SessionRow, UserRow, first_occupied,
};

/// Rows per `INSERT` statement.
const BATCH: usize = 1_000;

/// The identities a copy carries: (table, column, the dump's counter of it).
fn identities(counters: &Counters) -> [(&'static str, &'static str, i64); 4] {
    [
        ("users", "id", counters.users),
        ("outbox", "id", counters.outbox),
        ("chat_sessions", "insert_order", counters.sessions),
        ("device_tokens", "insert_order", counters.device_tokens),
    ]
}

/// Every Narutalk row, in one `REPEATABLE READ` snapshot.
pub(super) fn export_all(store: &PostgresStore) -> Result<Dump, Error> {
    store.read(|tx| {
        let users = tx
            .query(
                "SELECT id, username, email, password_hash, role, department, is_verified, \
                 is_active, tokens_revoked_at, date_joined, last_login FROM users ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| UserRow {
                id: r.get(0),
                username: r.get(1),
                email: r.get(2),
                password_hash: r.get(3),
                role: r.get(4),
                department: r.get(5),
                is_verified: r.get(6),
                is_active: r.get(7),
                tokens_revoked_at: r.get(8),
                date_joined: r.get(9),
                last_login: r.get(10),
            })
            .collect();
        let refresh_tokens = tx
            .query(
                "SELECT jti, user_id, family, issued_at, expires_at, used_at, revoked_at \
                 FROM refresh_tokens ORDER BY jti COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| RefreshTokenRow {
                jti: r.get(0),
                user_id: r.get(1),
                family: r.get(2),
                issued_at: r.get(3),
                expires_at: r.get(4),
                used_at: r.get(5),
                revoked_at: r.get(6),
            })
            .collect();
        let device_tokens = tx
            .query(
                "SELECT token_hash, user_id, created_at, last_used_at, insert_order \
                 FROM device_tokens ORDER BY insert_order",
                &[],
            )?
            .iter()
            .map(|r| DeviceTokenRow {
                token_hash: r.get(0),
                user_id: r.get(1),
                created_at: r.get(2),
                last_used_at: r.get(3),
                order: r.get(4),
            })
            .collect();
        let sessions = tx
            .query(
                "SELECT id, user_id, title, category, is_active, created_at, updated_at, \
                 message_count, last_seq, turns_pending, answered_seq, insert_order \
                 FROM chat_sessions ORDER BY insert_order",
                &[],
            )?
            .iter()
            .map(|r| SessionRow {
                id: r.get(0),
                user_id: r.get(1),
                title: r.get(2),
                category: r.get(3),
                is_active: r.get(4),
                created_at: r.get(5),
                updated_at: r.get(6),
                message_count: r.get(7),
                last_seq: r.get(8),
                turns_pending: r.get(9),
                answered_seq: r.get(10),
                order: r.get(11),
            })
            .collect();
        let messages = tx
            .query(
                "SELECT id, session_id, seq, sender, message_type, content, metadata, \
                 created_at, reply_to FROM chat_messages ORDER BY session_id COLLATE \"C\", seq",
                &[],
            )?
            .iter()
            .map(|r| MessageRow {
                id: r.get(0),
                session_id: r.get(1),
                seq: r.get(2),
                sender: r.get(3),
                message_type: r.get(4),
                content: r.get(5),
                metadata: r.get(6),
                created_at: r.get(7),
                reply_to: r.get(8),
            })
            .collect();
        let idempotency_keys = tx
            .query(
                "SELECT session_id, user_id, key, message_id, created_at FROM idempotency_keys \
                 ORDER BY session_id COLLATE \"C\", user_id, key COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| IdempotencyKeyRow {
                session_id: r.get(0),
                user_id: r.get(1),
                key: r.get(2),
                message_id: r.get(3),
                created_at: r.get(4),
            })
            .collect();
        let outbox = tx
            .query(
                "SELECT id, kind, session_id, seq, user_id, actor, created_at, request_id, \
                 payload FROM outbox ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                kind: r.get(1),
                session_id: r.get(2),
                seq: r.get(3),
                user_id: r.get(4),
                actor: r.get(5),
                created_at: r.get(6),
                request_id: r.get(7),
                payload: r.get(8),
            })
            .collect();
        let mut counters = Counters::default();
        let mut read = |table: &str, column: &str| -> Result<i64, Error> {
            // The identity's last value (NULL before its first use): sequences are not
            // transactional, so it may be past the snapshot's rows, never before them.
            Ok(tx
                .query_one(
                    &format!(
                        "SELECT coalesce(pg_sequence_last_value(\
                         pg_get_serial_sequence('{table}', '{column}')::regclass), 0)"
                    ),
                    &[],
                )?
                .get(0))
        };
        counters.users = read("users", "id")?;
        counters.outbox = read("outbox", "id")?;
        counters.sessions = read("chat_sessions", "insert_order")?;
        counters.device_tokens = read("device_tokens", "insert_order")?;
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

/// Writes `dump` in one transaction (see [`crate::store::Maintenance::import_all`]),
/// unbounded by the write deadline of the API's writes.
pub(super) fn import_all(store: &PostgresStore, dump: &Dump) -> Result<Vec<TableRows>, CopyError> {
    if let Some(problem) = dump.first_nul() {
        return Err(CopyError::Unstorable(problem));
    }
    let mut conn = store.checkout(CHECKOUT_TIMEOUT)?;
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .map_err(Error::from)?;
    let result = import(&mut Tx { conn: &mut conn }, dump);
    match result {
        Ok(counts) => {
            conn.client.batch_execute("COMMIT").map_err(Error::from)?;
            Ok(counts)
        }
        Err(error) => {
            // A lost connection cannot roll back, and needs not: PostgreSQL does.
            let _ = conn.client.batch_execute("ROLLBACK");
            Err(error)
        }
    }
}

fn import(tx: &mut Tx<'_>, dump: &Dump) -> Result<Vec<TableRows>, CopyError> {
    // Every table locked against writers (servers already on the target wait), so that
    // the emptiness seen is the one written into.
    let names: Vec<String> = table_names(tx)?
        .into_iter()
        .filter(|name| name != MIGRATION_TABLE)
        .collect();
    let quoted: Vec<String> = names.iter().map(|name| quote_identifier(name)).collect();
    tx.conn
        .client
        .batch_execute(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            quoted.join(", ")
        ))
        .map_err(Error::from)?;
    let mut tables = Vec::new();
    for (table, quoted) in names.into_iter().zip(&quoted) {
        let rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])?
            .get(0);
        tables.push(TableRows {
            table,
            rows: u64::try_from(rows).unwrap_or_default(),
        });
    }
    if let Some(occupied) = first_occupied(&tables) {
        return Err(occupied);
    }
    write_rows(tx, dump)?;
    let expected = dump.counts();
    for want in &expected {
        let found: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {}", want.table), &[])?
            .get(0);
        let found = u64::try_from(found).unwrap_or_default();
        if found != want.rows {
            return Err(CopyError::CountsDiffer {
                table: want.table.clone(),
                expected: want.rows,
                found,
            });
        }
    }
    // Each identity at least at the source's counter and past every row written, never
    // lowered: no id is handed out twice.
    for (table, column, counter) in identities(&dump.counters) {
        tx.query(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), v) FROM \
                 (SELECT greatest($1, (SELECT coalesce(max({column}), 0) FROM {table}), \
                  coalesce(pg_sequence_last_value(\
                  pg_get_serial_sequence('{table}', '{column}')::regclass), 0)) AS v) AS last \
                 WHERE v > 0"
            ),
            &[&counter],
        )?;
    }
    Ok(expected)
}

fn write_rows(tx: &mut Tx<'_>, dump: &Dump) -> Result<(), Error> {
    for rows in dump.users.chunks(BATCH) {
        let id: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let username: Vec<&str> = rows.iter().map(|r| r.username.as_str()).collect();
        let email: Vec<&str> = rows.iter().map(|r| r.email.as_str()).collect();
        let hash: Vec<&str> = rows.iter().map(|r| r.password_hash.as_str()).collect();
        let role: Vec<&str> = rows.iter().map(|r| r.role.as_str()).collect();
        let department: Vec<&str> = rows.iter().map(|r| r.department.as_str()).collect();
        let verified: Vec<bool> = rows.iter().map(|r| r.is_verified).collect();
        let active: Vec<bool> = rows.iter().map(|r| r.is_active).collect();
        let revoked: Vec<i64> = rows.iter().map(|r| r.tokens_revoked_at).collect();
        let joined: Vec<i64> = rows.iter().map(|r| r.date_joined).collect();
        let login: Vec<Option<i64>> = rows.iter().map(|r| r.last_login).collect();
        tx.execute(
            "INSERT INTO users (id, username, email, password_hash, role, department, \
             is_verified, is_active, tokens_revoked_at, date_joined, last_login) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::TEXT[], $7::BOOLEAN[], $8::BOOLEAN[], $9::BIGINT[], \
             $10::BIGINT[], $11::BIGINT[])",
            &[
                &id,
                &username,
                &email,
                &hash,
                &role,
                &department,
                &verified,
                &active,
                &revoked,
                &joined,
                &login,
            ],
        )?;
    }
    for rows in dump.refresh_tokens.chunks(BATCH) {
        let jti: Vec<&str> = rows.iter().map(|r| r.jti.as_str()).collect();
        let user: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        let family: Vec<&str> = rows.iter().map(|r| r.family.as_str()).collect();
        let issued: Vec<i64> = rows.iter().map(|r| r.issued_at).collect();
        let expires: Vec<i64> = rows.iter().map(|r| r.expires_at).collect();
        let used: Vec<Option<i64>> = rows.iter().map(|r| r.used_at).collect();
        let revoked: Vec<Option<i64>> = rows.iter().map(|r| r.revoked_at).collect();
        tx.execute(
            "INSERT INTO refresh_tokens (jti, user_id, family, issued_at, expires_at, \
             used_at, revoked_at) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], \
             $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[])",
            &[&jti, &user, &family, &issued, &expires, &used, &revoked],
        )?;
    }
    for rows in dump.device_tokens.chunks(BATCH) {
        let hash: Vec<&[u8]> = rows.iter().map(|r| r.token_hash.as_slice()).collect();
        let user: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let used: Vec<i64> = rows.iter().map(|r| r.last_used_at).collect();
        let order: Vec<i64> = rows.iter().map(|r| r.order).collect();
        tx.execute(
            "INSERT INTO device_tokens (token_hash, user_id, created_at, last_used_at, \
             insert_order) SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], \
             $4::BIGINT[], $5::BIGINT[])",
            &[&hash, &user, &created, &used, &order],
        )?;
    }
    for rows in dump.sessions.chunks(BATCH) {
        let id: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let user: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        let title: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
        let category: Vec<&str> = rows.iter().map(|r| r.category.as_str()).collect();
        let active: Vec<bool> = rows.iter().map(|r| r.is_active).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
        let count: Vec<i64> = rows.iter().map(|r| r.message_count).collect();
        let last: Vec<i64> = rows.iter().map(|r| r.last_seq).collect();
        let pending: Vec<i64> = rows.iter().map(|r| r.turns_pending).collect();
        let answered: Vec<i64> = rows.iter().map(|r| r.answered_seq).collect();
        let order: Vec<i64> = rows.iter().map(|r| r.order).collect();
        tx.execute(
            "INSERT INTO chat_sessions (id, user_id, title, category, is_active, created_at, \
             updated_at, message_count, last_seq, turns_pending, answered_seq, insert_order) \
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], \
             $5::BOOLEAN[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], \
             $10::BIGINT[], $11::BIGINT[], $12::BIGINT[])",
            &[
                &id, &user, &title, &category, &active, &created, &updated, &count, &last,
                &pending, &answered, &order,
            ],
        )?;
    }
    for rows in dump.messages.chunks(BATCH) {
        let id: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let session: Vec<&str> = rows.iter().map(|r| r.session_id.as_str()).collect();
        let seq: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let sender: Vec<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
        let kind: Vec<&str> = rows.iter().map(|r| r.message_type.as_str()).collect();
        let content: Vec<&str> = rows.iter().map(|r| r.content.as_str()).collect();
        let metadata: Vec<&str> = rows.iter().map(|r| r.metadata.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let reply_to: Vec<Option<&str>> = rows.iter().map(|r| r.reply_to.as_deref()).collect();
        tx.execute(
            "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, \
             metadata, created_at, reply_to) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], \
             $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], \
             $9::TEXT[])",
            &[
                &id, &session, &seq, &sender, &kind, &content, &metadata, &created, &reply_to,
            ],
        )?;
    }
    for rows in dump.idempotency_keys.chunks(BATCH) {
        let session: Vec<&str> = rows.iter().map(|r| r.session_id.as_str()).collect();
        let user: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        let key: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let message: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        tx.execute(
            "INSERT INTO idempotency_keys (session_id, user_id, key, message_id, created_at) \
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], \
             $5::BIGINT[])",
            &[&session, &user, &key, &message, &created],
        )?;
    }
    for rows in dump.outbox.chunks(BATCH) {
        let id: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let kind: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        let session: Vec<Option<&str>> = rows.iter().map(|r| r.session_id.as_deref()).collect();
        let seq: Vec<Option<i64>> = rows.iter().map(|r| r.seq).collect();
        let user: Vec<Option<i64>> = rows.iter().map(|r| r.user_id).collect();
        let actor: Vec<&str> = rows.iter().map(|r| r.actor.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let request: Vec<Option<&str>> = rows.iter().map(|r| r.request_id.as_deref()).collect();
        let payload: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
        tx.execute(
            "INSERT INTO outbox (id, kind, session_id, seq, user_id, actor, created_at, \
             request_id, payload) SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], \
             $4::BIGINT[], $5::BIGINT[], $6::TEXT[], $7::BIGINT[], $8::TEXT[], $9::TEXT[])",
            &[
                &id, &kind, &session, &seq, &user, &actor, &created, &request, &payload,
            ],
        )?;
    }
    Ok(())
}
