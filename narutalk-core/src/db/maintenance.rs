//! Maintenance of the database file for the administrators' tool: what is in it
//! ([`Database::status`]), whether SQLite finds it sound ([`Database::integrity_problems`]),
//! and consistent copies of it taken while the server writes ([`Database::backup_to`]).
//!
//! Everything here is schema-generic (it enumerates tables rather than naming them), so it
//! belongs to the module that owns the schema; rules about what the rows mean live with the
//! tables' owners (the session counters, for example, in `chat`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::{AppliedMigration, Database, applied_migrations, configure};
use crate::error::Error;
use crate::files::{sync_dir, write_private};

/// What `narutalk db status` shows: the file, its size, its migrations and its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The database file.
    pub path: PathBuf,
    /// Size of the main file in bytes.
    pub size_bytes: u64,
    /// Size of the write-ahead log (`-wal` file) in bytes; 0 when there is none.
    pub wal_bytes: u64,
    /// The SQLite library version in use.
    pub sqlite_version: String,
    /// The migrations recorded as applied, oldest first.
    pub migrations: Vec<AppliedMigration>,
    /// Every table with its row count, by name.
    pub tables: Vec<TableRows>,
}

/// One table and how many rows it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableRows {
    /// The table's name.
    pub table: String,
    /// Its rows.
    pub rows: u64,
}

/// What SQLite's own checks found wrong; both lists empty for a sound file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IntegrityProblems {
    /// The problems `PRAGMA integrity_check` reports, one a line.
    pub integrity: Vec<String>,
    /// One line per row of `PRAGMA foreign_key_check`: a row that refers to a missing row.
    pub foreign_keys: Vec<String>,
}

/// A finished backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Where the copy is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// How long the copy took, the check of the copy included.
    pub elapsed: Duration,
}

/// Why a backup was not made. No variant leaves a file at the target.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists and overwriting was not asked for.
    #[error("{0} already exists (use --force to overwrite it)")]
    TargetExists(PathBuf),
    /// The target is the database itself (or one of its companion files).
    #[error("{0} is the database itself; choose another file")]
    TargetIsDatabase(PathBuf),
    /// The file system refused (the text names the path).
    #[error("{0}")]
    Io(String),
    /// The copy was made but SQLite does not find it sound; it was removed.
    #[error("the copy failed its check and was removed: {0}")]
    CopyDamaged(String),
    /// SQLite failed while copying.
    #[error(transparent)]
    Database(#[from] Error),
}

/// A new file written under a temporary name beside its target (`.NAME.partial-PID`) and
/// moved into place only by [`PendingFile::commit`], after it was synced: a reader never
/// sees a half-written target, and a process killed midway leaves at most the hidden
/// temporary file. The file is readable by its owner only (mode 0600 on Unix): backups
/// and exports hold every conversation. Dropped without a commit, it removes the
/// temporary file.
#[derive(Debug)]
pub struct PendingFile {
    target: PathBuf,
    temp: PathBuf,
    overwrite: bool,
    committed: bool,
}

impl PendingFile {
    /// Prepares to write `target`. Without `overwrite`, a target that exists already is
    /// refused now ([`io::ErrorKind::AlreadyExists`]) and again, race-free, at commit. A
    /// target that is a folder is always refused.
    pub fn new(target: &Path, overwrite: bool) -> io::Result<PendingFile> {
        match fs::metadata(target) {
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a folder", target.display()),
                ));
            }
            Ok(_) if !overwrite => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", target.display()),
                ));
            }
            _ => {}
        }
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the folder {} does not exist", dir.display()),
            ));
        }
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file name", target.display()),
            )
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".partial-{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        // A leftover of a killed run with the same process id is ours to replace.
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Created empty and private now, so the data written into it never is readable by
        // others, even for a moment (SQLite's VACUUM INTO accepts an empty file).
        write_private(&temp, &[])?;
        Ok(PendingFile {
            target: target.to_owned(),
            temp,
            overwrite,
            committed: false,
        })
    }

    /// The temporary file to write.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The file this becomes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Syncs the temporary file and moves it to the target: with `overwrite` by an atomic
    /// rename, otherwise by a hard link that fails if the target appeared meanwhile.
    pub fn commit(mut self) -> io::Result<()> {
        fs::File::open(&self.temp)?.sync_all()?;
        if self.overwrite {
            fs::rename(&self.temp, &self.target)?;
        } else {
            fs::hard_link(&self.temp, &self.target).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} already exists", self.target.display()),
                    )
                } else {
                    e
                }
            })?;
            fs::remove_file(&self.temp)?;
        }
        self.committed = true;
        sync_dir(self.target.parent().unwrap_or(Path::new("")));
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: there may be nothing to remove.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Database {
    /// The file, its size, its applied migrations and the row count of every table, read
    /// in one snapshot.
    pub fn status(&self) -> Result<Status, Error> {
        let size_bytes = file_size(&self.path)?;
        let wal_bytes = file_size(&companion(&self.path, "-wal"))?;
        let (migrations, tables) = self.read(|conn| {
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
            path: self.path.clone(),
            size_bytes,
            wal_bytes,
            sqlite_version: rusqlite::version().to_owned(),
            migrations,
            tables,
        })
    }

    /// SQLite's full `integrity_check` and its `foreign_key_check`, in one snapshot. Reads
    /// every page, so it takes time on a large file; writers are never blocked (WAL).
    pub fn integrity_problems(&self) -> Result<IntegrityProblems, Error> {
        self.read(|conn| {
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
    pub fn backup_to(&self, target: &Path, overwrite: bool) -> Result<Backup, BackupError> {
        let started = Instant::now();
        if self.is_own_file(target) {
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
        let conn = self.maintenance_connection()?;
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

    /// True when `path` names this database's file or one of its companions (`-wal`,
    /// `-shm`, `-journal`), also through another spelling of the same path: a file no
    /// tool may write over.
    pub fn is_own_file(&self, path: &Path) -> bool {
        let own = [
            self.path.clone(),
            companion(&self.path, "-wal"),
            companion(&self.path, "-shm"),
            companion(&self.path, "-journal"),
        ];
        let target = comparable(path);
        own.iter().any(|file| comparable(file) == target)
    }

    /// A connection outside the pools, with the usual settings. Not `query_only`, which
    /// SQLite applies to `VACUUM INTO` too, although that only reads the database.
    fn maintenance_connection(&self) -> Result<Connection, Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, self.synchronous)?;
        Ok(conn)
    }
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
fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = statement.query_map([], |row| row.get(0))?;
    names.collect()
}

/// `"name"` with inner quotes doubled: a table name as an SQL identifier.
fn quote_identifier(name: &str) -> String {
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
    use crate::db::OpenMode;

    fn open(dir: &Path) -> Database {
        Database::open(
            &dir.join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap()
    }

    fn add_user(db: &Database, n: usize) {
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
        assert_eq!(status.migrations.len(), 3);
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
                ("refinery_schema_history", 3),
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
        let copy = Database::open(&target, Synchronous::Full, OpenMode::MustExist).unwrap();
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

    #[test]
    fn a_pending_file_dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let pending = PendingFile::new(&target, false).unwrap();
        fs::write(pending.temp_path(), "half").unwrap();
        drop(pending);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_pending_file_refuses_a_target_that_appeared_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let pending = PendingFile::new(&target, false).unwrap();
        fs::write(pending.temp_path(), "new").unwrap();
        fs::write(&target, "theirs").unwrap();
        let error = pending.commit().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&target).unwrap(), "theirs");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
