//! The PostgreSQL backend of the storage port, for several servers on one database: every
//! SQL statement and every `postgres` name of this backend lives under this module.
//!
//! **Connections.** A pool of synchronous `postgres` clients (r2d2, at most
//! `database_pool`, opened on demand). Each connection keeps its prepared statements, so a
//! statement is parsed once per connection. The synchronous client drives a small runtime
//! of its own: it must never be called, nor a connection dropped, on a tokio worker (the
//! server calls the store from `spawn_blocking`, and [`PostgresStore`]'s drop closes the
//! pool on a thread of its own).
//!
//! **Transactions.** A read runs in one `REPEATABLE READ READ ONLY` transaction, so that a
//! count and its page agree. A write runs in a `READ COMMITTED` transaction and orders
//! itself with row locks where SQLite relied on its single writer: a session's row for its
//! sequence numbers and turns, a user's row for the checks of a login or a token rotation.
//! A write that PostgreSQL aborts for a serialization failure or a deadlock is run again,
//! whole (a method's inputs are fixed before it runs); every write is bounded by
//! [`WRITE_DEADLINE`] from when it asked, the pool's checkout and PostgreSQL's
//! `lock_timeout` and `statement_timeout` included, after which it answers
//! [`Error::Unavailable`] and is rolled back.
//!
//! **Schema.** The refinery migrations in `migrations/`, embedded in the binary, applied
//! under an advisory lock: servers starting together on an empty database migrate it once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::{AppliedMigration, OpenError, OpenMode, WRITE_DEADLINE};
use crate::error::{Error, InternalError};

mod accounts;
mod admin;
mod chat;
mod copy;
mod listener;
mod maintenance;
mod outbox;
mod throttle;
mod tokens;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// The pool size when `database_pool` is not set.
pub const DEFAULT_POOL: u32 = 16;

/// How long a call waits for a pooled connection (or for a new one to connect) before it
/// answers [`Error::Unavailable`]; a write waits no longer than its deadline allows.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(4);

/// The advisory lock key under which migrations run (any fixed number: "narutalk" in
/// ASCII, truncated to 63 bits).
const MIGRATION_LOCK: i64 = 0x6e61_7275_7461_6c6b;

/// Prepared statements one connection keeps before it forgets them all and starts again
/// (more than the store has; only the administrators' filters build statements at run time).
const STATEMENT_CACHE: usize = 256;

/// The prefix of the [`Error::Unavailable`] text of a transaction PostgreSQL aborted for a
/// serialization failure or a deadlock: a write that ends with it is run again.
const CONFLICT: &str = "transaction conflict: ";

/// Whether `database` names a PostgreSQL database (`postgres://` or `postgresql://`)
/// rather than a SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The URL as it may be shown: scheme, user, host, port and database name, without the
/// password (and without any query string, where a password may also be given).
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

impl From<postgres::Error> for Error {
    /// Lost connections, refused or overloaded servers, lock and statement timeouts and a
    /// read-only database are worth retrying later; everything else is a bug.
    fn from(error: postgres::Error) -> Self {
        match classify(&error) {
            Class::Conflict => Error::Unavailable(format!("{CONFLICT}{error}")),
            Class::Unavailable => Error::Unavailable(describe(&error)),
            Class::Bug => Error::Internal(InternalError::from_error(error)),
        }
    }
}

enum Class {
    Conflict,
    Unavailable,
    Bug,
}

fn classify(error: &postgres::Error) -> Class {
    match error.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE => Class::Conflict,
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED => Class::Conflict,
        Some(code) => {
            let class = &code.code()[..2];
            if matches!(class, "08" | "53" | "57" | "40")
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::LOCK_NOT_AVAILABLE
            {
                Class::Unavailable
            } else {
                Class::Bug
            }
        }
        // No SQLSTATE: the connection is closed or its socket failed.
        None if error.is_closed() || std::error::Error::source(error).is_some() => {
            Class::Unavailable
        }
        None => Class::Bug,
    }
}

/// The error's text with its database message (the crate's own text of a database error
/// is only "db error").
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// Whether `error` is the [`Error::Unavailable`] of an aborted, retryable transaction.
fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Unavailable(text) if text.starts_with(CONFLICT))
}

/// A pooled connection: the client and its prepared statements.
pub(super) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Opens the pool's connections.
struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// The pool, closed on a thread of its own when dropped: dropping a synchronous client
/// on a tokio worker would panic (it blocks to shut its own runtime down).
struct OwnedPool(Option<r2d2::Pool<Manager>>);

impl Drop for OwnedPool {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let closing = std::thread::Builder::new()
                .name("narutalk-pg-close".into())
                .spawn(move || drop(pool));
            if let Ok(closing) = closing {
                // Joined, so that the connections are closed when the store is gone. A
                // spawn failure has already dropped the pool on its own thread.
                let _ = closing.join();
            }
        }
    }
}

/// A transaction of this backend: reads see one snapshot; a write's changes commit
/// together when its closure returns `Ok`.
pub(super) struct Tx<'c> {
    conn: &'c mut Conn,
}

impl Tx<'_> {
    /// The statement for `sql`, prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.conn.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.conn.client.prepare(sql)?;
        if self.conn.statements.len() >= STATEMENT_CACHE {
            self.conn.statements.clear();
        }
        self.conn
            .statements
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Every row `sql` answers.
    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let statement = self.statement(sql)?;
        Ok(self.conn.client.query(&statement, params)?)
    }

    /// The row `sql` answers, if any (more than one is a bug).
    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let statement = self.statement(sql)?;
        Ok(self.conn.client.query_opt(&statement, params)?)
    }

    /// The one row `sql` answers (none, or more than one, is a bug).
    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let statement = self.statement(sql)?;
        Ok(self.conn.client.query_one(&statement, params)?)
    }

    /// Runs `sql` and answers the rows it changed.
    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let statement = self.statement(sql)?;
        Ok(self.conn.client.execute(&statement, params)?)
    }

    /// Runs `sql` and answers the rows it changed, keeping PostgreSQL's own error for the
    /// caller to look at (a constraint a method turns into an answer of its own). After
    /// such an error the transaction is aborted: only [`Tx::savepoint`] lets it go on.
    pub(super) fn execute_raw(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Result<u64, postgres::Error>, Error> {
        let statement = self.statement(sql)?;
        Ok(self.conn.client.execute(&statement, params))
    }

    /// Runs `f` inside a savepoint: when it fails, only its own changes are undone and the
    /// transaction goes on.
    pub(super) fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.conn.client.batch_execute("SAVEPOINT narutalk")?;
        match f(self) {
            Ok(value) => {
                self.conn
                    .client
                    .batch_execute("RELEASE SAVEPOINT narutalk")?;
                Ok(value)
            }
            Err(error) => {
                self.conn
                    .client
                    .batch_execute("ROLLBACK TO SAVEPOINT narutalk")?;
                Err(error)
            }
        }
    }
}

/// The Narutalk database on a PostgreSQL server, shared by any number of processes.
pub struct PostgresStore {
    shown: String,
    /// The connection settings, for the listening connection (outside the pool).
    config: postgres::Config,
    /// This store's random id in its notifications, so that it drops its own.
    origin: Arc<str>,
    pool: OwnedPool,
    migrated_at_open: usize,
    /// How long outbox rows are kept.
    outbox_retention: chrono::Duration,
    /// Set by a write that failed for a database cause, cleared by one that committed.
    failing: AtomicBool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shown)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database `url` with a pool of [`DEFAULT_POOL`] connections and
    /// applies every pending migration (see [`PostgresStore::open_with`]).
    pub fn open(url: &str, mode: OpenMode) -> Result<PostgresStore, OpenError> {
        PostgresStore::open_with(url, DEFAULT_POOL, mode)
    }

    /// Connects to the database `url` (which must exist: PostgreSQL databases are created
    /// by their administrator) with at most `pool` pooled connections, and applies every
    /// pending migration under an advisory lock. With [`OpenMode::MustExist`] a database
    /// that has no Narutalk schema yet is refused ([`OpenError::Missing`]) and left as it
    /// is. Opening an up-to-date database writes nothing.
    pub fn open_with(url: &str, pool: u32, mode: OpenMode) -> Result<PostgresStore, OpenError> {
        let shown = redacted(url);
        let open_error = |message: String| OpenError::Open {
            path: PathBuf::from(&shown),
            message,
        };
        let mut config = postgres::Config::from_str(url).map_err(|e| open_error(e.to_string()))?;
        if config.get_application_name().is_none() {
            config.application_name("narutalk");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CHECKOUT_TIMEOUT);
        }
        config.keepalives(true);
        let mut client = config
            .connect(NoTls)
            .map_err(|e| open_error(describe(&e)))?;
        let migrated_at_open = migrate(&mut client, mode).map_err(|failure| match failure {
            MigrateFailure::NoSchema => OpenError::Missing(PathBuf::from(&shown)),
            MigrateFailure::Failed(message) => OpenError::Migration {
                path: PathBuf::from(&shown),
                message,
            },
        })?;
        // The client ran on this (non-tokio) thread; close it here too.
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(pool.max(1))
            .min_idle(Some(0))
            .connection_timeout(CHECKOUT_TIMEOUT)
            .test_on_check_out(false)
            .build_unchecked(Manager {
                config: config.clone(),
            });
        Ok(PostgresStore {
            shown,
            config,
            origin: crate::turns::random_holder().into(),
            pool: OwnedPool(Some(pool)),
            migrated_at_open,
            outbox_retention: chrono::Duration::days(i64::from(
                crate::config::DEFAULT_OUTBOX_RETENTION_DAYS,
            )),
            failing: AtomicBool::new(false),
        })
    }

    /// Keeps outbox rows `days` days (`outbox_retention_days`).
    pub fn with_outbox_retention(mut self, days: u32) -> PostgresStore {
        self.outbox_retention = chrono::Duration::days(i64::from(days));
        self
    }

    /// The database's URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pooled connection, waited for at most `wait`.
    fn checkout(&self, wait: Duration) -> Result<r2d2::PooledConnection<Manager>, Error> {
        let pool = self
            .pool
            .0
            .as_ref()
            .ok_or_else(|| Error::internal("the pool is closed"))?;
        pool.get_timeout(wait.min(CHECKOUT_TIMEOUT))
            .map_err(|e| Error::Unavailable(format!("no database connection: {e}")))
    }

    /// A pooled connection on which `begin` has run: a connection the server closed while
    /// it sat in the pool (a restart of PostgreSQL) is dropped and another taken, so that
    /// only the first statement of a call ever meets it. Nothing ran on it yet, so nothing
    /// is repeated.
    /// `begin` makes the statements when the connection is in hand (a write's timeouts
    /// are what is left of its deadline then).
    fn begin(
        &self,
        wait: Duration,
        begin: impl Fn() -> String,
    ) -> Result<r2d2::PooledConnection<Manager>, Error> {
        let mut conn = self.checkout(wait)?;
        match conn.client.batch_execute(&begin()) {
            Ok(()) => Ok(conn),
            Err(error) if conn.client.is_closed() || error.is_closed() => {
                drop(conn);
                let mut conn = self.checkout(wait)?;
                conn.client.batch_execute(&begin())?;
                Ok(conn)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Runs `f` in one `REPEATABLE READ READ ONLY` transaction.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self.begin(CHECKOUT_TIMEOUT, || {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned()
        })?;
        let result = f(&mut Tx { conn: &mut conn });
        let end = conn.client.batch_execute(match result {
            Ok(_) => "COMMIT",
            Err(_) => "ROLLBACK",
        });
        let value = result?;
        end?;
        Ok(value)
    }

    /// Runs `f` in one `READ COMMITTED` transaction, committed when it returns `Ok`, rolled
    /// back when it returns `Err`; run again when PostgreSQL aborts it for a serialization
    /// failure or a deadlock. Bounded by [`WRITE_DEADLINE`] from `asked_at`.
    pub(super) fn write<T>(
        &self,
        asked_at: Instant,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = asked_at.checked_add(WRITE_DEADLINE).unwrap_or(asked_at);
        loop {
            let result = self.write_once(deadline, &mut f);
            match &result {
                Err(error) if is_conflict(error) && Instant::now() < deadline => continue,
                Err(Error::Unavailable(_)) => self.failing.store(true, Ordering::Relaxed),
                Err(_) => {}
                Ok(_) => self.failing.store(false, Ordering::Relaxed),
            }
            return result;
        }
    }

    fn write_once<T>(
        &self,
        deadline: Instant,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Unavailable(
                "the write waited for the database past its deadline".into(),
            ));
        }
        // What is left of the deadline once a connection is in hand bounds every lock
        // wait and statement.
        let mut conn = self.begin(remaining, || {
            let millis = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; \
                 SET LOCAL lock_timeout = {millis}; SET LOCAL statement_timeout = {millis}"
            )
        })?;
        let result = f(&mut Tx { conn: &mut conn });
        match result {
            Ok(value) => {
                conn.client.batch_execute("COMMIT")?;
                Ok(value)
            }
            Err(error) => {
                // A lost connection cannot roll back, and needs not: PostgreSQL does.
                let _ = conn.client.batch_execute("ROLLBACK");
                Err(error)
            }
        }
    }

    /// The retention cut of outbox rows written at `at`.
    pub(super) fn outbox_keep_since(
        &self,
        at: &chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        *at - self.outbox_retention
    }

    /// Whether the last write failed for a database cause.
    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// The migrations this database records as applied.
    pub(super) fn recorded_migrations(&self) -> Result<Vec<AppliedMigration>, Error> {
        let mut conn = self.checkout(CHECKOUT_TIMEOUT)?;
        Ok(applied_migrations(&mut conn.client)?)
    }

    /// For other modules of the backend: the path shown for this database.
    pub(super) fn shown_path(&self) -> &Path {
        Path::new(&self.shown)
    }
}

enum MigrateFailure {
    /// [`OpenMode::MustExist`] and no schema.
    NoSchema,
    Failed(String),
}

/// Applies pending migrations under the advisory lock and says how many it applied.
fn migrate(client: &mut Client, mode: OpenMode) -> Result<usize, MigrateFailure> {
    let failed = |e: postgres::Error| MigrateFailure::Failed(describe(&e));
    let runner = embedded::migrations::runner();
    let embedded = runner.get_migrations();
    let applied = applied_migrations(client).map_err(failed)?;
    if applied.is_empty() && mode == OpenMode::MustExist {
        return Err(MigrateFailure::NoSchema);
    }
    super::check_history(&applied, embedded).map_err(MigrateFailure::Failed)?;
    if applied.len() == embedded.len() {
        return Ok(0);
    }
    // Another process may be migrating: wait for it, then look again.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(failed)?;
    let outcome = (|| {
        let applied = applied_migrations(client).map_err(failed)?;
        super::check_history(&applied, embedded).map_err(MigrateFailure::Failed)?;
        if applied.len() == embedded.len() {
            return Ok(0);
        }
        runner
            .run(client)
            .map(|report| report.applied_migrations().len())
            .map_err(|e| MigrateFailure::Failed(e.to_string()))
    })();
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let applied_now = outcome?;
    unlocked.map_err(failed)?;
    Ok(applied_now)
}

fn applied_migrations(client: &mut Client) -> Result<Vec<AppliedMigration>, postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client.query(
        "SELECT version::BIGINT, name::TEXT, checksum::TEXT FROM refinery_schema_history ORDER BY version",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| AppliedMigration {
            version: row.get(0),
            name: row.get(1),
            checksum: row.get(2),
        })
        .collect())
}

#[cfg(test)]
#[path = "../../../../tests/support/postgres.rs"]
pub(crate) mod cluster;

/// What the backend's tests share: one throwaway cluster per test process (a fresh
/// database per test), and the SQLite twin a test compares answers with.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::OnceLock;

    use super::PostgresStore;
    use super::cluster::{Cluster, Durability};
    use crate::store::OpenMode;

    /// The process's cluster, started by the first test that asks; `None` (after one
    /// printed line) when PostgreSQL is not installed.
    pub(crate) fn cluster(test: &str) -> Option<&'static Cluster> {
        static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
        CLUSTER
            .get_or_init(|| Cluster::start(test, Durability::Fast))
            .as_ref()
    }

    /// A store on a new database of the process's cluster, and the database's URL.
    pub(crate) fn store(test: &str) -> Option<(PostgresStore, String)> {
        let url = cluster(test)?.create_database();
        let store = PostgresStore::open(&url, OpenMode::CreateIfMissing).unwrap();
        Some((store, url))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("postgres://app:s3cret@db.example:5433/narutalk?sslmode=disable&password=x"),
            "postgres://app@db.example:5433/narutalk"
        );
        assert_eq!(
            redacted("postgresql://app@10.0.0.1/db"),
            "postgresql://app@10.0.0.1/db"
        );
        assert_eq!(redacted("postgres://host/db"), "postgres://host/db");
        assert!(is_postgres_url("postgresql://h/d"));
        assert!(!is_postgres_url("data/db.sqlite3"));
    }

    #[test]
    fn opening_an_empty_database_creates_every_table_and_records_the_migrations() {
        let Some((store, url)) = testing::store("pg_open") else {
            return;
        };
        assert_eq!(store.migrated_at_open, 2);
        let versions: Vec<(i64, String)> = store
            .recorded_migrations()
            .unwrap()
            .into_iter()
            .map(|m| (m.version, m.name))
            .collect();
        assert_eq!(
            versions,
            [
                (1, "initial_schema".to_owned()),
                (2, "shared_throttles".to_owned())
            ]
        );
        let tables = testing::cluster("pg_open").unwrap().psql(
            url.rsplit('/').next().unwrap(),
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
        );
        assert_eq!(
            tables,
            "chat_messages,chat_sessions,device_tokens,idempotency_keys,outbox,\
             refinery_schema_history,refresh_tokens,throttle_buckets,users,write_probe"
        );
        // Reopening migrates nothing.
        let again = PostgresStore::open(&url, OpenMode::MustExist).unwrap();
        assert_eq!(again.migrated_at_open, 0);
    }

    #[test]
    fn must_exist_refuses_a_database_without_the_schema_and_leaves_it_empty() {
        let Some(cluster) = testing::cluster("pg_must_exist") else {
            return;
        };
        let url = cluster.create_database();
        let error = PostgresStore::open(&url, OpenMode::MustExist).unwrap_err();
        assert!(
            matches!(&error, OpenError::Missing(p) if p == Path::new(&url)),
            "{error}"
        );
        let name = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(
                name,
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ),
            "0"
        );
    }

    #[test]
    fn a_database_migrated_by_a_newer_build_is_refused() {
        let Some((store, url)) = testing::store("pg_newer") else {
            return;
        };
        drop(store);
        let name = url.rsplit('/').next().unwrap();
        testing::cluster("pg_newer").unwrap().psql(
            name,
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
        );
        let error = PostgresStore::open(&url, OpenMode::MustExist).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot migrate database {url}: it was migrated by a newer Narutalk \
                 (V99 from_the_future is unknown to this build)"
            )
        );
    }

    #[test]
    fn stores_opening_an_empty_database_together_migrate_it_once() {
        let Some(cluster) = testing::cluster("pg_concurrent_open") else {
            return;
        };
        let url = cluster.create_database();
        let migrated = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (url, migrated) = (&url, &migrated);
                scope.spawn(move || {
                    let store = PostgresStore::open(url, OpenMode::CreateIfMissing).unwrap();
                    migrated.fetch_add(store.migrated_at_open, Ordering::Relaxed);
                });
            }
        });
        // One store applied both migrations; the others none.
        assert_eq!(migrated.load(Ordering::Relaxed), 2);
        let name = url.rsplit('/').next().unwrap();
        assert_eq!(
            cluster.psql(name, "SELECT count(*) FROM refinery_schema_history"),
            "2"
        );
    }

    #[test]
    fn a_failed_write_rolls_back_and_a_read_sees_one_snapshot() {
        let Some((store, _)) = testing::store("pg_rollback") else {
            return;
        };
        let insert = "INSERT INTO users (username, email, password_hash, date_joined) \
                      VALUES ($1, $2, 'h', 0)";
        let result: Result<(), Error> = store.write(Instant::now(), |tx| {
            tx.execute(insert, &[&"a", &"a@x.io"])?;
            Err(Error::NotFound)
        });
        assert!(matches!(result, Err(Error::NotFound)));
        let count = |store: &PostgresStore| -> i64 {
            store
                .read(|tx| Ok(tx.query_one("SELECT count(*) FROM users", &[])?.get(0)))
                .unwrap()
        };
        assert_eq!(count(&store), 0);
        store
            .write(Instant::now(), |tx| tx.execute(insert, &[&"b", &"b@x.io"]))
            .unwrap();
        assert_eq!(count(&store), 1);
        assert!(!store.failing());
        // A read cannot write.
        let refused = store.read(|tx| tx.execute(insert, &[&"c", &"c@x.io"]));
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    }

    #[test]
    fn a_deadlocks_victim_is_run_again_and_both_writes_land() {
        let Some((store, _)) = testing::store("pg_deadlock") else {
            return;
        };
        store
            .write(Instant::now(), |tx| {
                tx.execute(
                    "INSERT INTO users (username, email, password_hash, date_joined) \
                     VALUES ('a', 'a@x.io', 'h', 0), ('b', 'b@x.io', 'h', 0)",
                    &[],
                )
            })
            .unwrap();
        // Two writers lock the two rows in opposite orders, each waiting for the other at
        // its second lock (the barrier): PostgreSQL aborts one, which runs again.
        let barrier = std::sync::Barrier::new(2);
        let runs = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for (first, second) in [("a", "b"), ("b", "a")] {
                let (store, barrier, runs) = (&store, &barrier, &runs);
                scope.spawn(move || {
                    let mut attempt = 0;
                    store
                        .write(Instant::now(), |tx| {
                            attempt += 1;
                            runs.fetch_add(1, Ordering::Relaxed);
                            let bump = "UPDATE users SET department = department || $2 \
                                        WHERE username = $1";
                            tx.execute(bump, &[&first, &first])?;
                            if attempt == 1 {
                                barrier.wait();
                            }
                            tx.execute(bump, &[&second, &first])?;
                            Ok(())
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(runs.load(Ordering::Relaxed), 3, "one writer ran twice");
        let departments: Vec<String> = store
            .read(|tx| {
                Ok(tx
                    .query("SELECT department FROM users ORDER BY username", &[])?
                    .iter()
                    .map(|row| row.get(0))
                    .collect())
            })
            .unwrap();
        for department in departments {
            let mut letters: Vec<char> = department.chars().collect();
            letters.sort_unstable();
            assert_eq!(letters, ['a', 'b'], "each row has both writers' marks");
        }
    }

    #[test]
    fn a_write_that_waits_for_a_lock_past_its_deadline_is_unavailable_and_not_applied() {
        let Some((store, _)) = testing::store("pg_lock_deadline") else {
            return;
        };
        store
            .write(Instant::now(), |tx| {
                tx.execute(
                    "INSERT INTO users (username, email, password_hash, date_joined) \
                     VALUES ('a', 'a@x.io', 'h', 0)",
                    &[],
                )
            })
            .unwrap();
        // A write asked for long ago has little of its deadline left; another holds the
        // row's lock meanwhile.
        let locked = std::sync::Barrier::new(2);
        let done = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                store
                    .write(Instant::now(), |tx| {
                        tx.execute("SELECT 1 FROM users WHERE username = 'a' FOR UPDATE", &[])?;
                        locked.wait();
                        done.wait();
                        Ok(())
                    })
                    .unwrap();
            });
            locked.wait();
            let asked_at = Instant::now()
                .checked_sub(WRITE_DEADLINE - Duration::from_millis(300))
                .unwrap();
            let late = store.write(asked_at, |tx| {
                tx.execute(
                    "UPDATE users SET department = 'late' WHERE username = 'a'",
                    &[],
                )
            });
            assert!(matches!(late, Err(Error::Unavailable(_))), "{late:?}");
            // Before the holder commits (which clears it).
            assert!(store.failing());
            done.wait();
        });
        let department: String = store
            .read(|tx| Ok(tx.query_one("SELECT department FROM users", &[])?.get(0)))
            .unwrap();
        assert_eq!(department, "");
    }

    #[test]
    fn a_store_dropped_on_a_tokio_worker_closes_its_pool_without_panicking() {
        let Some((store, _)) = testing::store("pg_drop_in_tokio") else {
            return;
        };
        store.read(|tx| tx.query_one("SELECT 1", &[])).unwrap();
        let runtime = tokio_runtime();
        runtime.block_on(async move {
            tokio::spawn(async move { drop(store) }).await.unwrap();
        });
    }

    fn tokio_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap()
    }
}
