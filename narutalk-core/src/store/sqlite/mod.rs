//! The SQLite backend of the storage port: every SQL statement and every `rusqlite` name
//! of the core lives under this module.
//!
//! One dedicated writer connection serializes every write (SQLite allows one writer at a
//! time anyway; several pooled writers only turn contention into multi-second busy-waits),
//! and a small pool of reader connections (`query_only`) serves reads in parallel under
//! WAL, each read in one read transaction so that a count and its page agree. Every write
//! transaction starts with `BEGIN IMMEDIATE`, so it takes the write lock before it reads and
//! can never fail half-way with "database is locked" because another process (the CLI)
//! wrote in between. Writes that queue behind each other share one commit (group commit,
//! in the private `writer` module); each returns only once its commit is durable.
//!
//! Every write is bounded in time: [`WRITE_DEADLINE`] after it asks for the database
//! (the wait behind other writes included) it has committed, or it answers
//! [`Error::Unavailable`] and is not applied. The store remembers when writes fail for a
//! database cause ([`Maintenance::writes_failing`]) and offers the small write that checks
//! whether they work again ([`Maintenance::probe_writes`]).
//!
//! The schema is the refinery migrations in `migrations/`, embedded in the binary; their
//! file names and contents never change once released (a database records each one's
//! checksum, and refuses to open with a build whose history differs).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::{AppliedMigration, Maintenance, OpenError, OpenMode, WRITE_DEADLINE};
use crate::config::Synchronous;
use crate::error::{Error, InternalError};

mod accounts;
mod admin;
mod chat;
mod copy;
mod maintenance;
mod outbox;
mod tokens;
mod writer;

use writer::WriteTx;
use writer::Writer;

mod embedded {
    refinery::embed_migrations!("src/store/sqlite/migrations");
}

/// How long a reader connection waits for another process's lock, or for a free reader,
/// before giving up with [`Error::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The bytes of zeros the write probe inserts (and deletes again): more than a page, so
/// that it needs room for new pages as the writes it stands for do.
const PROBE_BYTES: i64 = 8_000;

/// WAL pages after which a commit checkpoints (SQLite's default is 1,000). The commit that
/// checkpoints copies the WAL into the database file and waits for its fsync, the only
/// slow commit there is; at 2,000 pages (8 MiB of WAL with 4 KiB pages) half as many
/// commits pay it. Measured with the load harness: the p99 of a socket round trip fell
/// from 2.1-3.1 ms to 0.9-1.0 ms, and post-message's p99 stayed under 17 ms. (Checkpoints
/// on a thread of their own were tried and were worse: their fsync of the database file
/// delays the commits' fsync of the WAL on the same disk.)
pub const WAL_CHECKPOINT_PAGES: u32 = 2_000;

/// Prepared statements each connection keeps: more than the store has (its
/// `prepare_cached` calls), so that none is ever parsed twice on one connection. At
/// rusqlite's default of 16, a post and its reply (with their pending turn, outbox rows
/// and token checks) went through more statements than that, and SQLite parsed some of
/// them again on every call.
const STATEMENT_CACHE: usize = 128;

/// The Narutalk database in one SQLite file: one writer connection and a pool of readers.
pub struct SqliteStore {
    path: PathBuf,
    synchronous: Synchronous,
    writer: Writer,
    readers: ReaderPool,
    migrated_at_open: usize,
    /// How long outbox rows are kept.
    outbox_retention: chrono::Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .finish_non_exhaustive()
    }
}

impl From<rusqlite::Error> for Error {
    /// Busy, locked, full and I/O failures are worth retrying; everything else is a bug.
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match error.sqlite_error_code() {
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory,
            ) => Error::Unavailable(error.to_string()),
            _ => Error::Internal(InternalError::from_error(error)),
        }
    }
}

impl SqliteStore {
    /// Opens (and with [`OpenMode::CreateIfMissing`] creates) the database at `path`, sets
    /// WAL, foreign keys, the busy timeout and `synchronous`, and applies every pending
    /// migration. Opening an up-to-date database writes nothing.
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        mode: OpenMode,
    ) -> Result<SqliteStore, OpenError> {
        let open_error = |message: String| OpenError::Open {
            path: path.to_owned(),
            message,
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match mode {
            OpenMode::CreateIfMissing => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
                }
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            OpenMode::MustExist => {
                if !path.is_file() {
                    return Err(OpenError::Missing(path.to_owned()));
                }
            }
        }
        let mut writer =
            Connection::open_with_flags(path, flags).map_err(|e| open_error(e.to_string()))?;
        // The busy timeout first, so that a lock another process holds at start is waited
        // for. WAL is a property of the file: set once here, it holds for every connection.
        configure(&writer, synchronous).map_err(|e| open_error(e.to_string()))?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_error(e.to_string()))?;
        let migrated_at_open = migrate(&mut writer).map_err(|message| OpenError::Migration {
            path: path.to_owned(),
            message,
        })?;
        let max_readers = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(2, 16);
        Ok(SqliteStore {
            path: path.to_owned(),
            synchronous,
            writer: Writer::new(writer),
            readers: ReaderPool::new(path.to_owned(), synchronous, max_readers),
            migrated_at_open,
            outbox_retention: chrono::Duration::days(i64::from(
                crate::config::DEFAULT_OUTBOX_RETENTION_DAYS,
            )),
        })
    }

    /// Keeps outbox rows `days` days (`outbox_retention_days`; the default is
    /// [`crate::config::DEFAULT_OUTBOX_RETENTION_DAYS`]): the writes that add rows forget a
    /// few older ones.
    pub fn with_outbox_retention(mut self, days: u32) -> SqliteStore {
        self.outbox_retention = chrono::Duration::days(i64::from(days));
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For tests and tools: caps the database file at `pages` pages for this store's
    /// writer connection (SQLite's `max_page_count`), so that writes needing more room
    /// fail as on a full disk (`SQLITE_FULL`). The cap is per connection: readers, other
    /// handles and other processes are not limited. SQLite never sets it below the file's
    /// current size, nor above its own maximum, so `u32::MAX` lifts it. Answers the cap in
    /// effect. It changes no data, and does not count as a write that succeeded for
    /// [`Maintenance::writes_failing`].
    pub fn limit_writer_pages(&self, pages: u32) -> Result<u64, Error> {
        self.write(|tx| {
            let cap: i64 =
                tx.pragma_update_and_check(None, "max_page_count", pages, |row| row.get(0))?;
            Ok(u64::try_from(cap).unwrap_or_default())
        })
    }

    /// Writes an outbox row in the write transaction `tx`, forgetting a few rows past the
    /// retention.
    fn record(&self, tx: &WriteTx<'_>, row: &outbox::Row<'_>) -> Result<(), Error> {
        outbox::record(tx, row, &(row.audit.at - self.outbox_retention))
    }

    /// Runs `f` on a reader connection (`query_only`: it cannot write).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.readers.get()?;
        // One read transaction, so that every statement of `f` sees the same snapshot (a
        // count and the page it counts cannot disagree).
        let snapshot = conn.unchecked_transaction()?;
        let value = f(&snapshot)?;
        snapshot.finish()?;
        Ok(value)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer connection; its changes
    /// are committed when it returns `Ok`, rolled back when it returns `Err`. It returns
    /// once they are durable: writes that arrive together share one commit. Bounded by
    /// [`WRITE_DEADLINE`] from now.
    fn write<T>(&self, f: impl FnOnce(&WriteTx<'_>) -> Result<T, Error>) -> Result<T, Error> {
        self.write_asked_at(Instant::now(), f)
    }

    /// [`SqliteStore::write`] for a caller that asked for the database at `asked_at` and
    /// waited in a queue of its own since (a server's per-session order): the bound runs
    /// from then.
    fn write_asked_at<T>(
        &self,
        asked_at: Instant,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.writer.write(deadline(asked_at), |tx| f(tx).map(Ok))
    }
}

impl Maintenance for SqliteStore {
    fn ping(&self) -> Result<(), Error> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn writes_failing(&self) -> bool {
        self.writer.failing()
    }

    /// One transaction that inserts a row of 8,000 zero bytes into the `write_probe` table
    /// and deletes it again.
    fn probe_writes(&self) -> Result<(), Error> {
        self.write(|tx| {
            tx.prepare_cached("INSERT INTO write_probe (padding) VALUES (zeroblob(?1))")?
                .execute([PROBE_BYTES])?;
            tx.prepare_cached("DELETE FROM write_probe")?.execute([])?;
            Ok(())
        })
    }

    fn migrated_at_open(&self) -> usize {
        self.migrated_at_open
    }

    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, Error> {
        self.read(|conn| Ok(applied_migrations(conn)?))
    }

    fn status(&self) -> Result<super::Status, Error> {
        maintenance::status(self)
    }

    fn integrity_problems(&self) -> Result<super::IntegrityProblems, Error> {
        maintenance::integrity_problems(self)
    }

    fn backup_to(
        &self,
        target: &Path,
        overwrite: bool,
    ) -> Result<super::Backup, super::BackupError> {
        maintenance::backup_to(self, target, overwrite)
    }

    fn is_own_file(&self, path: &Path) -> bool {
        maintenance::is_own_file(&self.path, path)
    }

    fn export_all(&self) -> Result<super::Dump, Error> {
        copy::export_all(self)
    }

    fn import_all(&self, dump: &super::Dump) -> Result<Vec<super::TableRows>, super::CopyError> {
        copy::import_all(self, dump)
    }
}

/// One process owns a SQLite file (the command-line tool in another process writes rarely,
/// and the server's revocation watch and gap fills read what it changed).
impl super::Feed for SqliteStore {
    fn shared(&self) -> bool {
        false
    }

    fn follow(&self, _sink: Box<dyn Fn(super::Notice) + Send + Sync>) -> Option<super::FeedGuard> {
        None
    }
}

/// The one server that owns the file counts its throttles in its own memory: no bucket is
/// kept here.
impl super::Throttle for SqliteStore {
    fn take_token(
        &self,
        _bucket: &str,
        _key: &str,
        _rule: super::BucketRule,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Duration>, Error> {
        Err(not_shared())
    }

    fn give_token_back(
        &self,
        _bucket: &str,
        _key: &str,
        _rule: super::BucketRule,
    ) -> Result<(), Error> {
        Err(not_shared())
    }
}

/// The answer of [`super::Throttle`] on a storage one process owns.
fn not_shared() -> Error {
    Error::internal("a SQLite store keeps no shared throttles (its server counts them itself)")
}

/// The deadline of a write that asked for the database at `asked_at`.
fn deadline(asked_at: Instant) -> Instant {
    asked_at.checked_add(WRITE_DEADLINE).unwrap_or(asked_at)
}

/// Per-connection settings (WAL is per file and set once in [`SqliteStore::open`]).
fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", synchronous.as_pragma())?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    Ok(())
}

/// Applies pending migrations and says how many it applied. When every embedded migration
/// is already recorded the runner is not started at all, so an up-to-date database sees no
/// write.
fn migrate(conn: &mut Connection) -> Result<usize, String> {
    let runner = embedded::migrations::runner();
    let embedded = runner.get_migrations();
    let applied = applied_migrations(conn).map_err(|e| e.to_string())?;
    // Refuse a database that a newer build migrated, or whose history differs from this
    // build's migrations, before anything touches it.
    super::check_history(&applied, embedded)?;
    if applied.len() == embedded.len() {
        return Ok(0);
    }
    runner
        .run(conn)
        .map(|report| report.applied_migrations().len())
        .map_err(|e| e.to_string())
}

fn applied_migrations(conn: &Connection) -> rusqlite::Result<Vec<AppliedMigration>> {
    let history_exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refinery_schema_history')",
        [],
        |row| row.get(0),
    )?;
    if !history_exists {
        return Ok(Vec::new());
    }
    let mut statement = conn
        .prepare("SELECT version, name, checksum FROM refinery_schema_history ORDER BY version")?;
    let rows = statement.query_map([], |row| {
        Ok(AppliedMigration {
            version: row.get(0)?,
            name: row.get(1)?,
            checksum: row.get(2)?,
        })
    })?;
    rows.collect()
}

/// Reader connections, opened on demand up to `max` and reused.
struct ReaderPool {
    path: PathBuf,
    synchronous: Synchronous,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Connection>,
    open: usize,
}

/// A reader borrowed from the pool; goes back on drop.
struct PooledReader<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl ReaderPool {
    fn new(path: PathBuf, synchronous: Synchronous, max: usize) -> Self {
        Self {
            path,
            synchronous,
            max,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self) -> Result<PooledReader<'_>, Error> {
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(PooledReader {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(PooledReader {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(error) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(error.into())
                    }
                };
            }
            let (next, timeout) = self
                .returned
                .wait_timeout(state, BUSY_TIMEOUT)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = next;
            if timeout.timed_out() && state.idle.is_empty() {
                return Err(Error::Unavailable(
                    "no reader connection became free".into(),
                ));
            }
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, self.synchronous)?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Only `Drop` takes the connection out.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("reader used after release"))
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut state = self.pool.lock();
            if conn.is_autocommit() {
                state.idle.push(conn);
            } else {
                // A reader left inside a transaction would pin an old snapshot: drop it.
                state.open -= 1;
            }
            drop(state);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_statement_of_the_store_fits_a_connections_statement_cache() {
        let sources = [
            include_str!("accounts.rs"),
            include_str!("admin.rs"),
            include_str!("chat.rs"),
            include_str!("maintenance.rs"),
            include_str!("mod.rs"),
            include_str!("outbox.rs"),
            include_str!("tokens.rs"),
            include_str!("writer.rs"),
        ];
        let call = concat!("prepare", "_cached(");
        let statements: usize = sources
            .iter()
            .map(|source| source.matches(call).count())
            .sum();
        assert!(statements > 16, "{statements}");
        assert!(statements < STATEMENT_CACHE, "{statements}");
    }

    #[test]
    fn opening_a_fresh_file_creates_every_table_and_records_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/db.sqlite3");
        let db = SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap();
        let migrations = db.applied_migrations().unwrap();
        let versions: Vec<(i64, &str)> = migrations
            .iter()
            .map(|m| (m.version, m.name.as_str()))
            .collect();
        assert_eq!(
            versions,
            [
                (1, "initial_schema"),
                (2, "device_tokens"),
                (3, "write_probe"),
                (4, "pending_turns_and_outbox")
            ]
        );
        let tables: Vec<String> = db
            .read(|conn| {
                let mut s = conn.prepare("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
                let names = s.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
                Ok(names)
            })
            .unwrap();
        assert_eq!(
            tables,
            [
                "chat_messages",
                "chat_sessions",
                "device_tokens",
                "idempotency_keys",
                "outbox",
                "refinery_schema_history",
                "refresh_tokens",
                "users",
                "write_probe"
            ]
        );
    }

    #[test]
    fn reopening_an_up_to_date_database_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap());
        let version_before = data_version_of(&path);
        let db = SqliteStore::open(&path, Synchronous::Full, OpenMode::MustExist).unwrap();
        assert_eq!(db.applied_migrations().unwrap().len(), 4);
        drop(db);
        assert_eq!(data_version_of(&path), version_before);
    }

    /// The file change counter in the database header (bytes 24..28), which SQLite bumps on
    /// every committed write.
    fn data_version_of(path: &Path) -> Vec<u8> {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(conn);
        std::fs::read(path).unwrap()[24..28].to_vec()
    }

    #[test]
    fn a_database_migrated_by_a_newer_build_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
            [],
        )
        .unwrap();
        drop(conn);
        let error = SqliteStore::open(&path, Synchronous::Full, OpenMode::MustExist).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot migrate database {}: it was migrated by a newer Narutalk \
                 (V99 from_the_future is unknown to this build)",
                path.display()
            )
        );
    }

    #[test]
    fn a_database_whose_migration_history_differs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE refinery_schema_history SET checksum = '42' WHERE version = 1",
            [],
        )
        .unwrap();
        drop(conn);
        let error = SqliteStore::open(&path, Synchronous::Full, OpenMode::MustExist).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("its migration V1 initial_schema differs from this build's"),
            "{error}"
        );
    }

    #[test]
    fn must_exist_refuses_a_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sqlite3");
        let error = SqliteStore::open(&path, Synchronous::Full, OpenMode::MustExist).unwrap_err();
        assert!(matches!(error, OpenError::Missing(p) if p == path));
        assert!(!path.exists());
    }

    #[test]
    fn connections_have_wal_foreign_keys_and_the_chosen_synchronous_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let db = SqliteStore::open(&path, Synchronous::Normal, OpenMode::CreateIfMissing).unwrap();
        let (journal, foreign_keys, synchronous): (String, i64, i64) = db
            .read(|conn| {
                Ok((
                    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                    conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
                    conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(foreign_keys, 1);
        assert_eq!(synchronous, 1, "NORMAL is 1");
        let (writer_synchronous, checkpoint_pages) = db
            .write(|tx| {
                Ok((
                    tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?,
                    tx.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, u32>(0))?,
                ))
            })
            .unwrap();
        assert_eq!(writer_synchronous, 1);
        assert_eq!(checkpoint_pages, WAL_CHECKPOINT_PAGES);
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(
            &dir.path().join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let result = db.read(|conn| Ok(conn.execute("DELETE FROM users", [])?));
        assert!(result.is_err());
    }

    #[test]
    fn concurrent_writers_and_readers_from_two_handles_never_see_database_is_locked() {
        // Two `SqliteStore` handles on one file stand for the server and the CLI in another
        // process: each has its own writer, so they really contend for SQLite's write lock.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let server =
            SqliteStore::open(&path, Synchronous::Normal, OpenMode::CreateIfMissing).unwrap();
        let cli = SqliteStore::open(&path, Synchronous::Normal, OpenMode::MustExist).unwrap();
        let writes_per_thread = 50;
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let db = if thread % 2 == 0 { &server } else { &cli };
                scope.spawn(move || {
                    for i in 0..writes_per_thread {
                        db.write(|tx| {
                            // Read, then write, in one transaction: the pattern that fails
                            // at once with SQLITE_BUSY under a deferred BEGIN.
                            let n: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
                            tx.execute(
                                "INSERT INTO users (username, email, password_hash, date_joined) VALUES (?1, ?2, 'h', ?3)",
                                rusqlite::params![format!("u{thread}-{i}"), format!("u{thread}-{i}@x.io"), n],
                            )?;
                            Ok(())
                        })
                        .unwrap();
                        db.read(|conn| Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))?))
                            .unwrap();
                    }
                });
            }
        });
        let count: i64 = server
            .read(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(count, 8 * writes_per_thread);
    }

    #[test]
    fn a_full_database_fails_writes_and_the_probe_until_room_comes_back() {
        // Arrange: the writer may not grow the file.
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(
            &dir.path().join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let pages = db.limit_writer_pages(1).unwrap();
        assert!(pages > 1, "never below the file's size: {pages}");
        let add_big_user = || {
            db.write(|tx| {
                tx.execute(
                    "INSERT INTO users (username, email, password_hash, department, date_joined) \
                     VALUES ('big', 'big@x.io', 'h', ?1, 0)",
                    ["x".repeat(20_000)],
                )?;
                Ok(())
            })
        };

        // Act
        let refused = add_big_user();

        // Assert: refused as unavailable, remembered, and the probe agrees.
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        assert!(db.writes_failing());
        assert!(matches!(db.probe_writes(), Err(Error::Unavailable(_))));
        assert!(db.writes_failing());
        db.ping().unwrap();
        // Room again: the hook itself proves nothing, the probe does.
        assert_eq!(db.limit_writer_pages(u32::MAX).unwrap(), 0xffff_fffe);
        assert!(db.writes_failing());
        db.probe_writes().unwrap();
        assert!(!db.writes_failing());
        add_big_user().unwrap();
        let (users, probe_rows): (i64, i64) = db
            .read(|c| {
                Ok((
                    c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?,
                    c.query_row("SELECT count(*) FROM write_probe", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((users, probe_rows), (1, 0));
    }

    #[test]
    fn a_failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(
            &dir.path().join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let result: Result<(), Error> = db.write(|tx| {
            tx.execute(
                "INSERT INTO users (username, email, password_hash, date_joined) VALUES ('a', 'a@x.io', 'h', 0)",
                [],
            )?;
            Err(Error::NotFound)
        });
        assert!(matches!(result, Err(Error::NotFound)));
        let count: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(count, 0);
    }
}
