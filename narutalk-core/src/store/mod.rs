//! The storage port: what the rules ask of storage, and the one backend that answers
//! today ([`sqlite`]).
//!
//! The rules (`accounts`, `tokens`, `chat`, `admin`) hold no SQL and name no database
//! type: they call the traits of this module, one per area ([`Maintenance`] for the
//! storage itself). A backend is one type that implements them all, which makes it a
//! [`Store`]; the [`crate::Narutalk`] handle owns one as an `Arc<dyn Store>`.
//!
//! Every method is one business operation, not one table: it runs as one transaction of
//! the backend (a write that must check something, such as who owns a session, checks it
//! inside that transaction), so that a backend on a database server can run each call as
//! one transaction and retry it whole on a serialization failure. The methods are
//! synchronous and may block; every write is bounded by [`WRITE_DEADLINE`].
//!
//! What every backend answers alike:
//!
//! - [`Error::Unavailable`] when the storage is busy, locked, full or unreachable, or a
//!   write could not commit within [`WRITE_DEADLINE`] of when it was asked for; such a
//!   write was not applied and never will be.
//! - [`Error::Internal`] (with its cause) for anything else that fails.

pub mod sqlite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::error::Error;
use sqlite::SqliteStore;

/// The bound on a write (`docs/API.md`, Limits and throttling): a write that has not
/// committed this long after it asked for storage answers [`Error::Unavailable`], and is
/// then not applied and never will be. It covers the wait behind the other writes of this
/// process and the wait for another process's lock; it starts after any password hashing
/// (done before the write asks) and never includes an AI call (no write is open while the
/// responder works).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Opens the store the settings name (`database`, `sqlite_synchronous`), created only with
/// [`OpenMode::CreateIfMissing`], and applies pending migrations.
pub fn open(config: &Config, mode: OpenMode) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(&config.database, config.sqlite_synchronous, mode)
}

/// Whether opening may create a database that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database (and its folder) when missing: the server and `narutalk migrate`.
    CreateIfMissing,
    /// Fail with [`OpenError::Missing`] when the database does not exist: every other tool,
    /// so that a mistyped path never silently yields an empty database.
    MustExist,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database does not exist and the mode forbids creating it.
    #[error("database {0} does not exist (run `narutalk migrate` to create it)")]
    Missing(PathBuf),
    /// The database (or its folder) could not be created or opened.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// The database.
        path: PathBuf,
        /// What the database or the file system said.
        message: String,
    },
    /// A migration failed or the database's history diverges from this build's migrations.
    #[error("cannot migrate database {path}: {message}")]
    Migration {
        /// The database.
        path: PathBuf,
        /// What the migration runner said.
        message: String,
    },
}

/// A migration recorded as applied in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The `V<version>` number.
    pub version: i64,
    /// The name after `__` in the file name.
    pub name: String,
    /// The migration runner's checksum of the migration's name, version and SQL, as
    /// recorded.
    pub checksum: String,
}

/// What the server's health and the administrators' tool ask about the storage itself,
/// rather than about its rows.
pub trait Maintenance {
    /// A trivial read: `Ok` when the storage answers.
    fn ping(&self) -> Result<(), Error>;

    /// Whether writes are failing for a storage cause: true from a write that failed
    /// because the storage was locked or busy past [`WRITE_DEADLINE`], full, failing with
    /// an I/O error or read-only, until a later write that changed something commits. A
    /// write that only waited too long behind this handle's other writes does not count.
    /// Another handle (the CLI in another process) keeps its own.
    fn writes_failing(&self) -> bool;

    /// The small write that checks whether writes work again (the server's health runs it
    /// while [`Maintenance::writes_failing`]): it takes the write lock and needs room for
    /// new pages as a stored message does, is committed and synced like any write, and
    /// leaves nothing behind that anyone reads. Its success ends
    /// [`Maintenance::writes_failing`]; its failure is the same [`Error::Unavailable`] as
    /// any write's.
    fn probe_writes(&self) -> Result<(), Error>;

    /// How many migrations opening this handle applied: 0 when the schema was already
    /// current.
    fn migrated_at_open(&self) -> usize;

    /// The migrations recorded as applied, oldest first.
    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, Error>;

    /// Where the database is, its size, its applied migrations and the rows of every
    /// table, read in one snapshot.
    fn status(&self) -> Result<Status, Error>;

    /// The database engine's own checks of its files and of the references between rows,
    /// in one snapshot. Reads everything, so it takes time on a large database; writers
    /// are never blocked.
    fn integrity_problems(&self) -> Result<IntegrityProblems, Error>;

    /// Writes a consistent copy of the database to `target` while others keep writing,
    /// checked before it is moved into place, so that a failed or killed backup never
    /// leaves a half file there. Without `overwrite` an existing target is refused; the
    /// database itself never is a valid target ([`Maintenance::is_own_file`]). Missing
    /// folders on the way to `target` are created readable by their owner only.
    fn backup_to(&self, target: &Path, overwrite: bool) -> Result<Backup, BackupError>;

    /// True when `path` names one of the database's own files, also through another
    /// spelling of the same path: a file no tool may write over.
    fn is_own_file(&self, path: &Path) -> bool;
}

/// What `narutalk db status` shows: the database, its size, its migrations and its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The database file.
    pub path: PathBuf,
    /// Size of the main file in bytes.
    pub size_bytes: u64,
    /// Size of the write-ahead log in bytes; 0 when there is none.
    pub wal_bytes: u64,
    /// The version of the SQLite library in use.
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

/// What the database engine's own checks found wrong; both lists empty for a sound
/// database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IntegrityProblems {
    /// The problems the integrity check reports, one a line.
    pub integrity: Vec<String>,
    /// One line per row that refers to a missing row.
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
    /// The copy was made but does not pass its check; it was removed.
    #[error("the copy failed its check and was removed: {0}")]
    CopyDamaged(String),
    /// The database failed while copying.
    #[error(transparent)]
    Database(#[from] Error),
}
