//! `narutalk db copy`: a whole database moved to another one, of either backend.
//!
//! The source answers a [`Dump`] ([`Maintenance::export_all`]): every row of every
//! Narutalk table, from one snapshot, in backend-neutral form, with its id counters. The
//! target writes it ([`Maintenance::import_all`]) in one transaction that first refuses a
//! target holding any row, keeps every id, sequence number, timestamp and hash, moves its
//! own id counters past the source's (a deleted user's id is never given out again, on
//! either side of the copy), and checks the counts before it commits: a copy is whole or
//! not made at all.
//!
//! Not copied: the leases of pending turns (the turns themselves are: the target's servers
//! claim them afresh), the write probe's table (never holds a row), and PostgreSQL's shared
//! throttle windows (short-lived counts; SQLite keeps its throttles in memory).
//!
//! The dump is held in memory: a copy needs about as much memory as the database's rows.
//!
//! [`Maintenance::export_all`]: super::Maintenance::export_all
//! [`Maintenance::import_all`]: super::Maintenance::import_all

use super::{Store, TableRows};
use crate::error::Error;

/// The tables a copy writes, in the order it writes them (parents before children).
pub const COPIED_TABLES: [&str; 7] = [
    "users",
    "refresh_tokens",
    "device_tokens",
    "chat_sessions",
    "chat_messages",
    "idempotency_keys",
    "outbox",
];

/// The table of the migration runner: the only one a copy's target may hold rows in.
pub(crate) const MIGRATION_TABLE: &str = "refinery_schema_history";

/// Copies every row of `source` into `target`, which must hold none: the source is read
/// in one snapshot, a non-empty target is refused before the source is read (and again,
/// authoritatively, in the target's write transaction), and the copy is checked before it
/// commits. Answers the rows copied, per table ([`COPIED_TABLES`]' order).
pub fn copy(source: &dyn Store, target: &dyn Store) -> Result<Vec<TableRows>, CopyError> {
    if let Some(occupied) = first_occupied(&target.status()?.tables) {
        return Err(occupied);
    }
    let dump = source.export_all()?;
    target.import_all(&dump)
}

/// The first table of `tables` (a target's) holding a row, as the refusal to copy into it.
pub(crate) fn first_occupied(tables: &[TableRows]) -> Option<CopyError> {
    tables
        .iter()
        .find(|t| t.rows > 0 && t.table != MIGRATION_TABLE)
        .map(|t| CopyError::TargetNotEmpty {
            table: t.table.clone(),
            rows: t.rows,
        })
}

/// Why a copy was not made. No variant leaves a row in the target.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds rows: a copy only goes into an empty database.
    #[error("the target is not empty ({table} holds {rows} row(s)); copy into an empty database")]
    TargetNotEmpty {
        /// The first table holding rows, by name.
        table: String,
        /// Its rows.
        rows: u64,
    },
    /// A row of the source that the target cannot store, named (a NUL character in the
    /// text of a SQLite database, stored before the rules refused them, bound for
    /// PostgreSQL).
    #[error("{0}; nothing was copied")]
    Unstorable(String),
    /// The target's counts after writing differ from the source's (the write was rolled
    /// back).
    #[error(
        "the copy of {table} holds {found} row(s) where the source has {expected}; nothing was copied"
    )]
    CountsDiffer {
        /// The table.
        table: String,
        /// The source's rows.
        expected: u64,
        /// The rows the target held after writing.
        found: u64,
    },
    /// Reading the source or writing the target failed.
    #[error(transparent)]
    Database(#[from] Error),
}

/// Every row of every Narutalk table, read in one snapshot, and the id counters: what a
/// backend's [`super::Maintenance::export_all`] answers and another's
/// [`super::Maintenance::import_all`] writes. Timestamps are as stored (microseconds, or
/// seconds for the token columns), on both backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub(crate) users: Vec<UserRow>,
    pub(crate) refresh_tokens: Vec<RefreshTokenRow>,
    pub(crate) device_tokens: Vec<DeviceTokenRow>,
    pub(crate) sessions: Vec<SessionRow>,
    pub(crate) messages: Vec<MessageRow>,
    pub(crate) idempotency_keys: Vec<IdempotencyKeyRow>,
    pub(crate) outbox: Vec<OutboxRow>,
    pub(crate) counters: Counters,
}

/// The highest value each id counter of the source has handed out (0 for none), which may
/// be above the highest id left (the newest rows deleted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// `users.id` (SQLite's `sqlite_sequence`, PostgreSQL's identity).
    pub(crate) users: i64,
    /// `outbox.id`.
    pub(crate) outbox: i64,
    /// The creation order of sessions (SQLite's rowid, PostgreSQL's `insert_order`).
    pub(crate) sessions: i64,
    /// The creation order of device tokens.
    pub(crate) device_tokens: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRow {
    pub(crate) id: i64,
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) password_hash: String,
    pub(crate) role: String,
    pub(crate) department: String,
    pub(crate) is_verified: bool,
    pub(crate) is_active: bool,
    pub(crate) tokens_revoked_at: i64,
    pub(crate) date_joined: i64,
    pub(crate) last_login: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefreshTokenRow {
    pub(crate) jti: String,
    pub(crate) user_id: i64,
    pub(crate) family: String,
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) used_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceTokenRow {
    pub(crate) token_hash: Vec<u8>,
    pub(crate) user_id: i64,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: i64,
    /// The creation order (SQLite's rowid, PostgreSQL's `insert_order`).
    pub(crate) order: i64,
}

/// A session row; the lease of its pending turn is not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionRow {
    pub(crate) id: String,
    pub(crate) user_id: i64,
    pub(crate) title: String,
    pub(crate) category: String,
    pub(crate) is_active: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) message_count: i64,
    pub(crate) last_seq: i64,
    pub(crate) turns_pending: i64,
    pub(crate) answered_seq: i64,
    /// The creation order (SQLite's rowid, PostgreSQL's `insert_order`).
    pub(crate) order: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MessageRow {
    pub(crate) id: String,
    pub(crate) session_id: String,
    pub(crate) seq: i64,
    pub(crate) sender: String,
    pub(crate) message_type: String,
    pub(crate) content: String,
    pub(crate) metadata: String,
    pub(crate) created_at: i64,
    pub(crate) reply_to: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyKeyRow {
    pub(crate) session_id: String,
    pub(crate) user_id: i64,
    pub(crate) key: String,
    pub(crate) message_id: String,
    pub(crate) created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) session_id: Option<String>,
    pub(crate) seq: Option<i64>,
    pub(crate) user_id: Option<i64>,
    pub(crate) actor: String,
    pub(crate) created_at: i64,
    pub(crate) request_id: Option<String>,
    pub(crate) payload: String,
}

impl Dump {
    /// The rows of each copied table, in [`COPIED_TABLES`]' order.
    pub fn counts(&self) -> Vec<TableRows> {
        let rows = [
            self.users.len(),
            self.refresh_tokens.len(),
            self.device_tokens.len(),
            self.sessions.len(),
            self.messages.len(),
            self.idempotency_keys.len(),
            self.outbox.len(),
        ];
        COPIED_TABLES
            .iter()
            .zip(rows)
            .map(|(table, rows)| TableRows {
                table: (*table).to_owned(),
                rows: u64::try_from(rows).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// The first text of the dump holding a NUL character, which PostgreSQL's text cannot
    /// hold, as `chat_messages row <id>: content holds a NUL character`.
    pub fn first_nul(&self) -> Option<String> {
        let user = self.users.iter().find_map(|r| {
            nul_in(
                "users",
                &r.id.to_string(),
                &[
                    ("username", Some(&r.username)),
                    ("email", Some(&r.email)),
                    ("password_hash", Some(&r.password_hash)),
                    ("role", Some(&r.role)),
                    ("department", Some(&r.department)),
                ],
            )
        });
        let token = || {
            self.refresh_tokens.iter().find_map(|r| {
                nul_in(
                    "refresh_tokens",
                    &r.jti,
                    &[("jti", Some(&r.jti)), ("family", Some(&r.family))],
                )
            })
        };
        let session = || {
            self.sessions.iter().find_map(|r| {
                nul_in(
                    "chat_sessions",
                    &r.id,
                    &[
                        ("id", Some(&r.id)),
                        ("title", Some(&r.title)),
                        ("category", Some(&r.category)),
                    ],
                )
            })
        };
        let message = || {
            self.messages.iter().find_map(|r| {
                nul_in(
                    "chat_messages",
                    &r.id,
                    &[
                        ("id", Some(&r.id)),
                        ("session_id", Some(&r.session_id)),
                        ("sender", Some(&r.sender)),
                        ("message_type", Some(&r.message_type)),
                        ("content", Some(&r.content)),
                        ("metadata", Some(&r.metadata)),
                        ("reply_to", r.reply_to.as_ref()),
                    ],
                )
            })
        };
        let key = || {
            self.idempotency_keys.iter().find_map(|r| {
                nul_in(
                    "idempotency_keys",
                    &format!("({}, {}, {})", r.session_id, r.user_id, r.key),
                    &[
                        ("session_id", Some(&r.session_id)),
                        ("key", Some(&r.key)),
                        ("message_id", Some(&r.message_id)),
                    ],
                )
            })
        };
        let outbox = || {
            self.outbox.iter().find_map(|r| {
                nul_in(
                    "outbox",
                    &r.id.to_string(),
                    &[
                        ("kind", Some(&r.kind)),
                        ("session_id", r.session_id.as_ref()),
                        ("actor", Some(&r.actor)),
                        ("request_id", r.request_id.as_ref()),
                        ("payload", Some(&r.payload)),
                    ],
                )
            })
        };
        user.or_else(token)
            .or_else(session)
            .or_else(message)
            .or_else(key)
            .or_else(outbox)
    }
}

/// `table row <id>: <column> holds a NUL character` for the first of `columns` that
/// holds one; the id is shown with its control characters escaped.
fn nul_in(table: &str, id: &str, columns: &[(&str, Option<&String>)]) -> Option<String> {
    columns
        .iter()
        .find(|(_, text)| text.is_some_and(|t| t.contains('\0')))
        .map(|(column, _)| {
            format!(
                "{table} row {}: {column} holds a NUL character, which PostgreSQL cannot store",
                id.escape_debug()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::Narutalk;
    use crate::accounts::UserId;
    use crate::config::Config;
    use crate::store::postgres::testing;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Maintenance, OpenMode, TableRows};

    /// A Narutalk on `store`, with the test settings of `dir`.
    fn core_on(store: Arc<dyn Store>, dir: &Path) -> Narutalk {
        let config = Config::for_tests(dir);
        Narutalk::new(store, config.secret_key.as_ref().unwrap(), &config).unwrap()
    }

    fn register(core: &Narutalk, name: &str) -> UserId {
        let body = serde_json::json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "password": "violet-harbour-42",
            "password_confirm": "violet-harbour-42",
        });
        let serde_json::Value::Object(body) = body else {
            unreachable!()
        };
        core.accounts().register_fields(&body).unwrap().id
    }

    /// A SQLite database with a bit of everything: users (the highest one deleted, so
    /// that the id counter is above every id left), logins with device tokens, a rotated
    /// refresh token, a logged-out family, a deactivated user (revocation stamp), sessions
    /// with exchanges, an idempotency key, a pending turn under a lease, outbox rows.
    fn populated_sqlite(dir: &Path) -> Arc<SqliteStore> {
        let path = dir.join("source.sqlite3");
        let store = Arc::new(
            SqliteStore::open(&path, Default::default(), OpenMode::CreateIfMissing).unwrap(),
        );
        let core = core_on(store.clone(), dir);
        let alice = register(&core, "alice");
        let bob = register(&core, "bob");
        let carol = register(&core, "carol");
        let login = core
            .accounts()
            .login("alice@example.com", "violet-harbour-42")
            .unwrap();
        let rotated = core.tokens().refresh(&login.tokens.refresh).unwrap();
        core.tokens().logout(&rotated.refresh).unwrap();
        core.accounts()
            .login("alice@example.com", "violet-harbour-42")
            .unwrap();
        core.accounts()
            .login("bob@example.com", "violet-harbour-42")
            .unwrap();
        core.accounts().set_active(bob, false).unwrap();
        for title in ["first", "second"] {
            let session = core
                .chat()
                .create_session(alice, title, crate::chat::Category::General)
                .unwrap()
                .session
                .id;
            core.send_message(alice, session, "What helps?").unwrap();
            let body = serde_json::json!({"content": "And then?"});
            let serde_json::Value::Object(body) = body else {
                unreachable!()
            };
            core.send_message_fields(alice, session, &body, Some("key-1"))
                .unwrap();
        }
        core.accounts().delete(carol).unwrap();
        drop(core);
        // A pending turn under a lease, as a server that died would leave it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE chat_sessions SET turns_pending = 1, answered_seq = 2, \
             turn_holder = 'dead-server', turn_expires = 1 WHERE title = 'first'",
        )
        .unwrap();
        store
    }

    fn count(rows: &[TableRows], table: &str) -> u64 {
        rows.iter().find(|t| t.table == table).unwrap().rows
    }

    #[test]
    fn sqlite_to_postgres_to_sqlite_keeps_every_row_id_and_counter() {
        let Some((pg, url)) = testing::store("copy_round_trip") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let source = populated_sqlite(dir.path());
        let original = source.export_all().unwrap();
        assert_eq!(original.counters.users, 3);
        assert_eq!(original.users.len(), 2);
        assert!(original.users[1].tokens_revoked_at > 0);
        assert!(original.refresh_tokens.iter().any(|t| t.used_at.is_some()));
        assert!(
            original
                .refresh_tokens
                .iter()
                .any(|t| t.revoked_at.is_some())
        );
        // Alice's two logins; bob's went with his deactivation.
        assert_eq!(original.device_tokens.len(), 2);
        assert_eq!(original.idempotency_keys.len(), 2);
        assert_eq!(original.sessions[0].turns_pending, 1);
        assert!(!original.outbox.is_empty());

        let counts = copy(&*source, &pg).unwrap();
        assert_eq!(counts, original.counts());
        assert_eq!(count(&counts, "chat_messages"), 8);
        assert_eq!(pg.export_all().unwrap(), original);
        let cluster = testing::cluster("copy_round_trip").unwrap();
        let name = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(
                name,
                "SELECT turns_pending, answered_seq, turn_holder IS NULL, turn_expires IS NULL \
                 FROM chat_sessions WHERE title = 'first'"
            ),
            "1|2|t|t"
        );

        let back = SqliteStore::open(
            &dir.path().join("back.sqlite3"),
            Default::default(),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        assert_eq!(copy(&pg, &back).unwrap(), original.counts());
        assert_eq!(back.export_all().unwrap(), original);

        // The deleted user's id 3 is given to nobody, on either side.
        let pg = Arc::new(pg);
        let on_pg = core_on(pg.clone(), dir.path());
        assert_eq!(register(&on_pg, "dave"), UserId(4));
        let back = Arc::new(back);
        let on_back = core_on(back.clone(), dir.path());
        assert_eq!(register(&on_back, "dave"), UserId(4));
        // The copies are sessions the rules read as before: the pending turn included.
        let first = original.sessions[0].id.parse().unwrap();
        let detail = on_pg.chat().session(UserId(1), first).unwrap();
        assert_eq!(detail.session.message_count, 4);
    }

    #[test]
    fn postgres_to_postgres_and_sqlite_to_sqlite_keep_the_counters() {
        let Some((first, _)) = testing::store("copy_pg_pg") else {
            return;
        };
        let (second, _) = testing::store("copy_pg_pg").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = populated_sqlite(dir.path());
        copy(&*source, &first).unwrap();
        copy(&first, &second).unwrap();
        assert_eq!(second.export_all().unwrap(), source.export_all().unwrap());
        assert_eq!(
            register(&core_on(Arc::new(second), dir.path()), "erin"),
            UserId(4)
        );

        let twin = SqliteStore::open(
            &dir.path().join("twin.sqlite3"),
            Default::default(),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        copy(&*source, &twin).unwrap();
        assert_eq!(twin.export_all().unwrap(), source.export_all().unwrap());
        assert_eq!(
            register(&core_on(Arc::new(twin), dir.path()), "erin"),
            UserId(4)
        );
    }

    #[test]
    fn a_target_holding_a_row_is_refused_and_left_as_it_was() {
        let Some((pg, _)) = testing::store("copy_not_empty") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let source = populated_sqlite(dir.path());
        let pg = Arc::new(pg);
        register(&core_on(pg.clone(), dir.path()), "zed");
        let before = pg.export_all().unwrap();
        let refused = copy(&*source, &*pg).unwrap_err();
        assert!(
            matches!(&refused, CopyError::TargetNotEmpty { table, rows: 1 } if table == "users"),
            "{refused:?}"
        );
        // The write transaction's own check, without the early one.
        let refused = pg.import_all(&source.export_all().unwrap()).unwrap_err();
        assert!(
            matches!(refused, CopyError::TargetNotEmpty { .. }),
            "{refused:?}"
        );
        assert_eq!(pg.export_all().unwrap(), before);

        let target = SqliteStore::open(
            &dir.path().join("target.sqlite3"),
            Default::default(),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let target = Arc::new(target);
        register(&core_on(target.clone(), dir.path()), "zed");
        let before = target.export_all().unwrap();
        let refused = target
            .import_all(&source.export_all().unwrap())
            .unwrap_err();
        assert!(
            matches!(refused, CopyError::TargetNotEmpty { .. }),
            "{refused:?}"
        );
        assert_eq!(target.export_all().unwrap(), before);
    }

    #[test]
    fn a_nul_character_bound_for_postgres_is_named_and_nothing_is_written() {
        let Some((pg, _)) = testing::store("copy_nul") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let source = populated_sqlite(dir.path());
        let id: String = {
            let conn = rusqlite::Connection::open(source.path()).unwrap();
            conn.query_row(
                "UPDATE chat_messages SET content = 'a' || char(0) || 'b' \
                 WHERE seq = 3 AND session_id = (SELECT id FROM chat_sessions WHERE title = 'second') \
                 RETURNING id",
                [],
                |row| row.get(0),
            )
            .unwrap()
        };
        let refused = copy(&*source, &pg).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "chat_messages row {id}: content holds a NUL character, which PostgreSQL \
                 cannot store; nothing was copied"
            )
        );
        assert!(
            pg.status()
                .unwrap()
                .tables
                .iter()
                .all(|t| t.rows == 0 || t.table == MIGRATION_TABLE)
        );
        // SQLite stores it as it is.
        let twin = SqliteStore::open(
            &dir.path().join("twin.sqlite3"),
            Default::default(),
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        copy(&*source, &twin).unwrap();
        assert_eq!(twin.export_all().unwrap(), source.export_all().unwrap());
    }

    #[test]
    fn a_nul_character_is_named_with_its_table_row_and_column() {
        let mut dump = Dump::default();
        assert_eq!(dump.first_nul(), None);
        dump.messages.push(MessageRow {
            id: "m\0x".into(),
            session_id: "s".into(),
            seq: 1,
            sender: "user".into(),
            message_type: "text".into(),
            content: "a\0b".into(),
            metadata: "{}".into(),
            created_at: 0,
            reply_to: None,
        });
        assert_eq!(
            dump.first_nul().unwrap(),
            "chat_messages row m\\0x: id holds a NUL character, which PostgreSQL cannot store"
        );
        dump.messages[0].id = "m1".into();
        assert_eq!(
            dump.first_nul().unwrap(),
            "chat_messages row m1: content holds a NUL character, which PostgreSQL cannot store"
        );
    }

    #[test]
    fn a_target_with_rows_only_in_the_migration_table_is_empty() {
        let rows = |table: &str, rows| TableRows {
            table: table.into(),
            rows,
        };
        assert!(first_occupied(&[rows(MIGRATION_TABLE, 4), rows("users", 0)]).is_none());
        let refused = first_occupied(&[rows("chat_sessions", 0), rows("throttle_buckets", 2)]);
        assert_eq!(
            refused.unwrap().to_string(),
            "the target is not empty (throttle_buckets holds 2 row(s)); copy into an empty database"
        );
    }
}
