//! Maintenance of the database file for the administrators' tool ([`Maintenance`]): what
//! is in it ([`status`]), whether SQLite finds it sound ([`integrity_problems`]), and
//! consistent copies of it taken while the server writes ([`backup_to`]).
//!
//! Everything here is schema-generic (it enumerates tables rather than naming them); rules
//! about what the rows mean live with the rules that own them (the session counters, for
//! example, are checked by `admin`).
//!
//! [`Maintenance`]: crate::store::Maintenance

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

use super::{SqliteStore, applied_migrations, configure};
use crate::error::Error;
use crate::files::PendingFile;
use crate::store::{Backup, BackupError, IntegrityProblems, Status, TableRows};

/// The file, its size, its applied migrations and the row count of every table, read
/// in one snapshot.
pub(super) fn status(store: &SqliteStore) -> Result<Status, Error> {
    let size_bytes = file_size(&store.path)?;
    let wal_bytes = file_size(&companion(&store.path, "-wal"))?;
    let (migrations, tables) = store.read(|conn| {
        let migrations = applied_migrations(conn)?;
        let mut tables = Vec::new();
        for table in table_names(conn)? {
            let rows: i64 = conn.query_row(
                &format!("SELECT count(*) FROM {}", quote_identifier(&table)),
                [],
                |row| row.get(0),
            )?;
            tables.push(TableRows {
                table,
                rows: u64::try_from(rows).unwrap_or_default(),
            });
        }
        Ok((migrations, tables))
    })?;
    Ok(Status {
        path: store.path.clone(),
        size_bytes,
        wal_bytes,
        engine: "sqlite",
        engine_version: rusqlite::version().to_owned(),
        migrations,
        tables,
    })
}

/// SQLite's full `integrity_check` and its `foreign_key_check`, in one snapshot. Reads
/// every page, so it takes time on a large file; writers are never blocked (WAL).
pub(super) fn integrity_problems(store: &SqliteStore) -> Result<IntegrityProblems, Error> {
    store.read(|conn| {
        let mut integrity = Vec::new();
        let mut statement = conn.prepare("PRAGMA integrity_check")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let text: String = row.get(0)?;
            // One row may hold several problems, one a line, under a header naming
            // the schema ("*** in database main ***"): keep the problems.
            integrity.extend(
                text.lines()
                    .filter(|line| *line != "ok" && !line.starts_with("*** in database "))
                    .map(str::to_owned),
            );
        }
        let mut foreign_keys = Vec::new();
        let mut statement = conn.prepare("PRAGMA foreign_key_check")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let table: String = row.get(0)?;
            let rowid: Option<i64> = row.get(1)?;
            let parent: String = row.get(2)?;
            let rowid = rowid.map_or_else(|| "a row".to_owned(), |id| format!("row {id}"));
            foreign_keys.push(format!(
                "{table} {rowid} refers to a missing row of {parent}"
            ));
        }
        Ok(IntegrityProblems {
            integrity,
            foreign_keys,
        })
    })
}

/// Writes a consistent copy of the database to `target` while other connections and
/// processes keep writing: SQLite's `VACUUM INTO` copies one read snapshot in a single
/// pass (a page-by-page online backup restarts whenever another connection writes, and
/// may never finish against a busy server), without blocking writers under WAL. The
/// copy is written to a temporary file beside the target, checked with
/// `PRAGMA quick_check`, synced, and only then moved to `target`, so a failed or killed
/// backup never leaves a half file there. Without `overwrite` an existing target is
/// refused; the database itself never is a valid target. Missing folders on the way to
/// `target` are created readable by their owner only (mode 0700): a backup holds every
/// conversation and password hash. Folders that exist keep their mode.
pub(super) fn backup_to(
    store: &SqliteStore,
    target: &Path,
    overwrite: bool,
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    if is_own_file(&store.path, target) {
        return Err(BackupError::TargetIsDatabase(target.to_owned()));
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_folders(dir).map_err(|e| {
            BackupError::Io(format!("cannot create the folder {}: {e}", dir.display()))
        })?;
    }
    let pending = PendingFile::new(target, overwrite).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => BackupError::TargetExists(target.to_owned()),
        _ => BackupError::Io(format!("cannot write {}: {e}", target.display())),
    })?;
    let temp_text = pending
        .temp_path()
        .to_str()
        .ok_or_else(|| BackupError::Io(format!("{} is not a UTF-8 path", target.display())))?;
    // A connection of its own: VACUUM cannot run inside the reader pool's transactions.
    let conn = maintenance_connection(store)?;
    conn.execute("VACUUM INTO ?1", [temp_text])
        .map_err(|e| copy_failure(e, &pending))?;
    drop(conn);
    check_copy(pending.temp_path())?;
    let size_bytes = file_size(pending.temp_path())?;
    pending.commit().map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => BackupError::TargetExists(target.to_owned()),
        _ => BackupError::Io(format!("cannot write {}: {e}", target.display())),
    })?;
    Ok(Backup {
        path: target.to_owned(),
        size_bytes,
        elapsed: started.elapsed(),
    })
}

/// True when `path` names the database file `database` or one of its companions (`-wal`,
/// `-shm`, `-journal`), also through another spelling of the same path.
pub(super) fn is_own_file(database: &Path, path: &Path) -> bool {
    let own = [
        database.to_owned(),
        companion(database, "-wal"),
        companion(database, "-shm"),
        companion(database, "-journal"),
    ];
    let target = comparable(path);
    own.iter().any(|file| comparable(file) == target)
}

/// A connection outside the pools, with the usual settings. Not `query_only`, which
/// SQLite applies to `VACUUM INTO` too, although that only reads the database.
fn maintenance_connection(store: &SqliteStore) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        &store.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, store.synchronous)?;
    Ok(conn)
}

/// Creates `dir` and its missing parents with mode 0700 (owner only) on Unix; folders
/// that exist already are left as they are.
fn create_private_folders(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn copy_failure(error: rusqlite::Error, pending: &PendingFile) -> BackupError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::CannotOpen) => BackupError::Io(format!(
            "cannot write {}: SQLite cannot create a file there",
            pending.target().display()
        )),
        _ => BackupError::Database(error.into()),
    }
}

/// `PRAGMA quick_check` on a finished copy, before it is moved into place.
fn check_copy(path: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| BackupError::CopyDamaged(e.to_string()))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| BackupError::CopyDamaged(e.to_string()))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(BackupError::CopyDamaged(verdict))
    }
}

/// The tables of the schema (SQLite's own excluded), by name.
pub(super) fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = statement.query_map([], |row| row.get(0))?;
    names.collect()
}

/// `"name"` with inner quotes doubled: a table name as an SQL identifier.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `db.sqlite3` + `-wal` = `db.sqlite3-wal`.
fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The size of a file, 0 when it does not exist.
fn file_size(path: &Path) -> Result<u64, Error> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::Unavailable(format!("{}: {e}", path.display()))),
    }
}

/// A path in a form two spellings of one file share: the canonical folder plus the name
/// (the file itself may not exist yet).
fn comparable(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map_or_else(|_| absolute.clone(), |dir| dir.join(name)),
        _ => absolute,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Synchronous;
    use crate::store::{Maintenance, OpenMode};

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(
            &dir.join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap()
    }

    fn add_user(db: &SqliteStore, n: usize) {
        db.write(|tx| {
            tx.execute(
                "INSERT INTO users (username, email, password_hash, date_joined) VALUES (?1, ?2, 'h', 0)",
                rusqlite::params![format!("u{n}"), format!("u{n}@example.com")],
            )?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn status_counts_the_rows_of_every_table_and_lists_the_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        add_user(&db, 1);
        add_user(&db, 2);

        let status = db.status().unwrap();

        assert_eq!(status.path, dir.path().join("db.sqlite3"));
        assert!(status.size_bytes > 0);
        assert_eq!(status.migrations.len(), 4);
        let tables: Vec<(&str, u64)> = status
            .tables
            .iter()
            .map(|t| (t.table.as_str(), t.rows))
            .collect();
        assert_eq!(
            tables,
            [
                ("chat_messages", 0),
                ("chat_sessions", 0),
                ("device_tokens", 0),
                ("idempotency_keys", 0),
                ("outbox", 0),
                ("refinery_schema_history", 4),
                ("refresh_tokens", 0),
                ("users", 2),
                ("write_probe", 0)
            ]
        );
    }

    #[test]
    fn a_sound_database_has_no_integrity_problems() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        add_user(&db, 1);
        assert_eq!(
            db.integrity_problems().unwrap(),
            IntegrityProblems::default()
        );
    }

    #[test]
    fn a_row_whose_parent_is_missing_is_a_foreign_key_problem() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let conn = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF; \
             INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at) \
             VALUES ('00000000-0000-4000-8000-000000000001', 42, 't', 0, 0);",
        )
        .unwrap();
        drop(conn);

        let problems = db.integrity_problems().unwrap();

        assert_eq!(problems.integrity, Vec::<String>::new());
        assert_eq!(
            problems.foreign_keys,
            ["chat_sessions row 1 refers to a missing row of users"]
        );
    }

    #[test]
    fn a_backup_is_a_sound_copy_and_is_not_written_over_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        add_user(&db, 1);
        let target = dir.path().join("copy.sqlite3");

        let backup = db.backup_to(&target, false).unwrap();
        add_user(&db, 2);
        let again = db.backup_to(&target, false).unwrap_err();
        let forced = db.backup_to(&target, true).unwrap();

        assert_eq!(backup.path, target);
        assert!(matches!(again, BackupError::TargetExists(p) if p == target));
        assert_eq!(forced.size_bytes, fs::metadata(&target).unwrap().len());
        let copy = SqliteStore::open(&target, Synchronous::Full, OpenMode::MustExist).unwrap();
        let users = copy.status().unwrap().tables;
        assert!(users.contains(&TableRows {
            table: "users".into(),
            rows: 2
        }));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains("partial"))
            .collect();
        assert_eq!(leftovers, Vec::<String>::new());
    }

    #[test]
    fn the_database_itself_is_never_a_backup_target() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let spelled_otherwise = dir.path().join(".").join("db.sqlite3");
        for target in [dir.path().join("db.sqlite3"), spelled_otherwise] {
            let error = db.backup_to(&target, true).unwrap_err();
            assert!(
                matches!(&error, BackupError::TargetIsDatabase(p) if *p == target),
                "{error}"
            );
        }
        let error = db
            .backup_to(&dir.path().join("db.sqlite3-wal"), true)
            .unwrap_err();
        assert!(matches!(error, BackupError::TargetIsDatabase(_)));
    }

    #[cfg(unix)]
    #[test]
    fn a_backup_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let target = dir.path().join("copy.sqlite3");
        db.backup_to(&target, false).unwrap();
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
