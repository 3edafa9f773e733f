//! [`Maintenance`] on PostgreSQL: the health's probe, what `narutalk db status` and
//! `db check` show, and the refusal of `db backup` (PostgreSQL's backups are `pg_dump`'s
//! and `pg_basebackup`'s, which an administrator of the database server already runs).
//!
//! [`Maintenance`]: crate::store::Maintenance

use std::path::Path;
use std::time::Instant;

use super::{PostgresStore, Tx};
use crate::error::Error;
use crate::store::{
    AppliedMigration, Backup, BackupError, IntegrityProblems, Maintenance, Status, TableRows,
};

/// The bytes of zeros the write probe inserts (and deletes again), as on SQLite.
const PROBE_BYTES: usize = 8_000;

/// The references of the schema, checked by `db check`: (table, column, parent table,
/// parent column). PostgreSQL enforces them; the check finds rows a damaged database or a
/// disabled trigger let through.
const REFERENCES: [(&str, &str, &str, &str); 7] = [
    ("refresh_tokens", "user_id", "users", "id"),
    ("chat_sessions", "user_id", "users", "id"),
    ("chat_messages", "session_id", "chat_sessions", "id"),
    ("idempotency_keys", "session_id", "chat_sessions", "id"),
    ("idempotency_keys", "user_id", "users", "id"),
    ("device_tokens", "user_id", "users", "id"),
    ("chat_messages", "reply_to", "chat_messages", "id"),
];

impl Maintenance for PostgresStore {
    fn ping(&self) -> Result<(), Error> {
        self.read(|tx| tx.query_one("SELECT 1", &[]).map(drop))
    }

    fn writes_failing(&self) -> bool {
        self.failing()
    }

    /// One transaction that inserts a row of 8,000 zero bytes into `write_probe` and
    /// deletes it again.
    fn probe_writes(&self) -> Result<(), Error> {
        let padding = vec![0_u8; PROBE_BYTES];
        self.write(Instant::now(), |tx| {
            tx.execute("INSERT INTO write_probe (padding) VALUES ($1)", &[&padding])?;
            tx.execute("DELETE FROM write_probe", &[])?;
            Ok(())
        })
    }

    fn migrated_at_open(&self) -> usize {
        self.migrated_at_open
    }

    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, Error> {
        self.recorded_migrations()
    }

    fn status(&self) -> Result<Status, Error> {
        let migrations = self.recorded_migrations()?;
        let (size, version, tables) = self.read(|tx| {
            let row = tx.query_one(
                "SELECT pg_database_size(current_database()), current_setting('server_version')",
                &[],
            )?;
            let size: i64 = row.get(0);
            let version: String = row.get(1);
            let mut tables = Vec::new();
            for name in table_names(tx)? {
                let rows: i64 = tx
                    .query_one(
                        &format!("SELECT count(*) FROM {}", quote_identifier(&name)),
                        &[],
                    )?
                    .get(0);
                tables.push(TableRows {
                    table: name,
                    rows: u64::try_from(rows).unwrap_or_default(),
                });
            }
            Ok((size, version, tables))
        })?;
        Ok(Status {
            path: self.shown_path().to_owned(),
            size_bytes: u64::try_from(size).unwrap_or_default(),
            wal_bytes: 0,
            engine: "postgresql",
            engine_version: version,
            migrations,
            tables,
        })
    }

    /// Invalid indexes (a concurrent build that failed) and rows whose reference points
    /// at no row, in one snapshot.
    fn integrity_problems(&self) -> Result<IntegrityProblems, Error> {
        self.read(|tx| {
            let integrity = tx
                .query(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready) \
                     ORDER BY c.relname",
                    &[],
                )?
                .iter()
                .map(|row| format!("index {} is not valid", row.get::<_, String>(0)))
                .collect();
            let mut foreign_keys = Vec::new();
            for (table, column, parent, parent_column) in REFERENCES {
                let orphans = tx.query(
                    &format!(
                        "SELECT t.{column}::TEXT FROM {table} t \
                         WHERE t.{column} IS NOT NULL AND NOT EXISTS \
                         (SELECT 1 FROM {parent} p WHERE p.{parent_column} = t.{column}) \
                         ORDER BY 1 LIMIT 100"
                    ),
                    &[],
                )?;
                foreign_keys.extend(orphans.iter().map(|row| {
                    format!(
                        "{table} row with {column} {} refers to a missing row of {parent}",
                        row.get::<_, String>(0)
                    )
                }));
            }
            Ok(IntegrityProblems {
                integrity,
                foreign_keys,
            })
        })
    }

    /// Refused: a PostgreSQL database is backed up with `pg_dump` (or the server's own
    /// base backups), which copy one snapshot while servers keep writing.
    fn backup_to(&self, _target: &Path, _overwrite: bool) -> Result<Backup, BackupError> {
        Err(BackupError::NotThisBackend(format!(
            "{} is a PostgreSQL database: back it up with pg_dump \
             (pg_dump --format=custom --file=FILE '{}'), not with narutalk db backup",
            self.shown(),
            self.shown()
        )))
    }

    /// No file of the local file system is a PostgreSQL database's own.
    fn is_own_file(&self, _path: &Path) -> bool {
        false
    }

    fn export_all(&self) -> Result<crate::store::Dump, Error> {
        super::copy::export_all(self)
    }

    fn import_all(
        &self,
        dump: &crate::store::Dump,
    ) -> Result<Vec<TableRows>, crate::store::CopyError> {
        super::copy::import_all(self, dump)
    }
}

/// The tables of the schema, by name.
pub(super) fn table_names(tx: &mut Tx<'_>) -> Result<Vec<String>, Error> {
    Ok(tx
        .query(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY tablename",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// `"name"` with inner quotes doubled: a table name as an SQL identifier.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::testing;
    use super::*;

    #[test]
    fn status_names_the_engine_and_counts_every_tables_rows() {
        let Some((store, url)) = testing::store("pg_status") else {
            return;
        };
        let status = store.status().unwrap();
        assert_eq!(status.path, Path::new(&url));
        assert_eq!(status.engine, "postgresql");
        assert!(
            status.engine_version.starts_with(char::is_numeric),
            "{status:?}"
        );
        assert!(status.size_bytes > 0);
        assert_eq!(status.migrations.len(), 2);
        let users = status.tables.iter().find(|t| t.table == "users").unwrap();
        assert_eq!(users.rows, 0);
        assert_eq!(status.tables.len(), 10);
    }

    #[test]
    fn the_write_probe_leaves_no_row_and_clears_a_failure() {
        let Some((store, url)) = testing::store("pg_probe") else {
            return;
        };
        let name = url.rsplit('/').next().unwrap().to_owned();
        let cluster = testing::cluster("pg_probe").unwrap();
        // The database refuses writes: the probe fails and says so.
        cluster.psql(
            "postgres",
            &format!("ALTER DATABASE {name} SET default_transaction_read_only = on"),
        );
        // Settings apply to new sessions: a fresh store has fresh connections.
        let refused = PostgresStore::open(&url, crate::store::OpenMode::MustExist).unwrap();
        assert!(matches!(refused.probe_writes(), Err(Error::Unavailable(_))));
        assert!(refused.writes_failing());
        refused.ping().unwrap();
        drop(refused);
        cluster.psql(
            "postgres",
            &format!("ALTER DATABASE {name} SET default_transaction_read_only = off"),
        );
        let store_again = PostgresStore::open(&url, crate::store::OpenMode::MustExist).unwrap();
        store_again.probe_writes().unwrap();
        assert!(!store_again.writes_failing());
        assert_eq!(cluster.psql(&name, "SELECT count(*) FROM write_probe"), "0");
        drop(store);
    }

    #[test]
    fn a_sound_database_has_no_problems_and_an_orphan_row_is_named() {
        let Some((store, url)) = testing::store("pg_integrity") else {
            return;
        };
        assert_eq!(
            store.integrity_problems().unwrap(),
            IntegrityProblems::default()
        );
        let name = url.rsplit('/').next().unwrap();
        let cluster = testing::cluster("pg_integrity").unwrap();
        // An orphan, let through with the reference's trigger switched off.
        cluster.psql(
            name,
            "SET session_replication_role = replica; \
             INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at) \
             VALUES ('s1', 42, 't', 0, 0)",
        );
        let problems = store.integrity_problems().unwrap();
        assert_eq!(
            problems.foreign_keys,
            ["chat_sessions row with user_id 42 refers to a missing row of users"]
        );
        assert!(problems.integrity.is_empty());
    }

    #[test]
    fn backup_is_refused_with_a_line_naming_pg_dump_and_no_file_is_its_own() {
        let Some((store, url)) = testing::store("pg_backup") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.sqlite3");
        let error = store.backup_to(&target, false).unwrap_err();
        assert!(matches!(error, BackupError::NotThisBackend(_)));
        let text = error.to_string();
        assert!(text.contains("pg_dump"), "{text}");
        assert!(text.starts_with(&url), "{text}");
        assert!(!target.exists());
        assert!(!store.is_own_file(&target));
    }
}
