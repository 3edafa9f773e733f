//! The database the parts' servers run on, and the checks of what it stores.
//!
//! SQLite by default: each part's server opens `db.sqlite3` in the part's folder. With
//! `NARUTALK_TEST_BACKEND=postgres` (what the API and browser suites also follow), the
//! suite starts one throwaway PostgreSQL cluster (`tests/support/postgres.rs`) and each
//! part's server gets a fresh database of it, with the signing secret a PostgreSQL URL
//! requires.
//!
//! The checks read the stored rows through the backend in use, the SQLite file on a
//! read-only connection or the PostgreSQL database with `psql`, with the same queries:
//! every session's messages are numbered 1..n without a gap, every reply links an
//! earlier user message of its own session, and no message is answered twice. On SQLite,
//! `PRAGMA integrity_check` and `PRAGMA foreign_key_check` say the file is sound too; on
//! PostgreSQL the server keeps its own pages and foreign keys, and a killed client
//! cannot break them, so there is no such check of the file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::postgres::{Cluster, Durability};
use crate::sqlite;

/// The sessions whose messages are not numbered 1..n: session, count, first, last.
const SEQ_GAPS: &str = "SELECT session_id, COUNT(*), MIN(seq), MAX(seq) FROM chat_messages \
     GROUP BY session_id HAVING MIN(seq) <> 1 OR MAX(seq) <> COUNT(*)";

/// The replies that do not link an earlier user message of their session: reply, link.
const LOOSE_REPLIES: &str = "SELECT r.id, r.reply_to FROM chat_messages r \
     WHERE r.reply_to IS NOT NULL AND NOT EXISTS (SELECT 1 FROM chat_messages m \
     WHERE m.id = r.reply_to AND m.session_id = r.session_id AND m.sender = 'user' \
     AND m.seq < r.seq)";

/// The messages answered more than once: message, replies.
const ANSWERED_TWICE: &str = "SELECT reply_to, COUNT(*) FROM chat_messages \
     WHERE reply_to IS NOT NULL GROUP BY reply_to HAVING COUNT(*) > 1";

/// How many user messages no reply links.
const UNANSWERED: &str = "SELECT COUNT(*) FROM chat_messages m WHERE m.sender = 'user' \
     AND NOT EXISTS (SELECT 1 FROM chat_messages r WHERE r.reply_to = m.id)";

/// The backend of a run.
#[derive(Clone)]
pub enum Backend {
    /// A SQLite file in each part's folder.
    Sqlite,
    /// A database of this throwaway cluster for each part.
    Postgres(Arc<Cluster>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the run's backend is, or why it has none.
pub enum Chosen {
    /// The backend to run on.
    Ready(Backend),
    /// PostgreSQL was asked for and is not installed: every part skips, for this reason.
    Missing(String),
}

impl Backend {
    /// SQLite, or PostgreSQL with its cluster started when `NARUTALK_TEST_BACKEND=postgres`
    /// (blocking: `initdb` and `pg_ctl`). A missing PostgreSQL is a skip, or a panic
    /// under `NARUTALK_REQUIRE_ALL=1` ([`Cluster::start`]).
    pub fn from_env() -> Chosen {
        if !std::env::var("NARUTALK_TEST_BACKEND").is_ok_and(|backend| backend == "postgres") {
            return Chosen::Ready(Backend::Sqlite);
        }
        match Cluster::start("the reliability suite on PostgreSQL", Durability::Fast) {
            Some(cluster) => Chosen::Ready(Backend::Postgres(Arc::new(cluster))),
            None => {
                Chosen::Missing("PostgreSQL is missing (Debian package `postgresql`)".to_owned())
            }
        }
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// Whether this is the PostgreSQL run.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// A fresh database for a part whose folder is `dir` (on PostgreSQL, blocking for the
    /// `CREATE DATABASE`).
    pub fn database(&self, dir: &Path) -> anyhow::Result<Database> {
        match self {
            Backend::Sqlite => Ok(Database::Sqlite(dir.join("db.sqlite3"))),
            Backend::Postgres(cluster) => {
                let url = cluster.create_database();
                let name = url
                    .rsplit('/')
                    .next()
                    .context("a database URL without a name")?
                    .to_owned();
                Ok(Database::Postgres {
                    cluster: cluster.clone(),
                    url,
                    name,
                })
            }
        }
    }
}

/// A part's database.
#[derive(Clone)]
pub enum Database {
    /// This SQLite file.
    Sqlite(PathBuf),
    /// The database `name` (at `url`) of `cluster`.
    Postgres {
        cluster: Arc<Cluster>,
        url: String,
        name: String,
    },
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.setting())
    }
}

impl Database {
    /// `NARUTALK_DATABASE` for it: the file's path or the URL.
    pub fn setting(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres { url, .. } => url.clone(),
        }
    }

    /// What [`Database::problems`] checks, for a row's figures.
    pub fn checked(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => {
                "integrity_check, foreign_key_check, seq 1..n, replies linked, none twice"
            }
            Database::Postgres { .. } => {
                "seq 1..n a session, every reply links an earlier user message, none answered twice"
            }
        }
    }

    /// What is wrong with the stored state: an empty list when nothing is (see the
    /// module's doc for what is checked).
    pub async fn problems(&self) -> anyhow::Result<Vec<String>> {
        let mut problems = match self {
            Database::Sqlite(path) => sqlite::problems(path.clone()).await?,
            Database::Postgres { .. } => Vec::new(),
        };
        for row in self.rows(SEQ_GAPS).await? {
            problems.push(format!(
                "session {} holds {} messages numbered {}..{} (1..{} without a gap expected)",
                field(&row, 0),
                field(&row, 1),
                field(&row, 2),
                field(&row, 3),
                field(&row, 1)
            ));
        }
        for row in self.rows(LOOSE_REPLIES).await? {
            problems.push(format!(
                "reply {} links {}, which is no earlier user message of its session",
                field(&row, 0),
                field(&row, 1)
            ));
        }
        for row in self.rows(ANSWERED_TWICE).await? {
            problems.push(format!(
                "message {} has {} replies (one expected)",
                field(&row, 0),
                field(&row, 1)
            ));
        }
        Ok(problems)
    }

    /// How many user messages no reply links yet.
    pub async fn unanswered(&self) -> anyhow::Result<usize> {
        let rows = self.rows(UNANSWERED).await?;
        rows.first()
            .and_then(|row| row.first())
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("counting the unanswered messages: {rows:?}"))
    }

    /// `reply_to` of every reply of `session` (reply id -> message id): the API does not
    /// show it.
    pub async fn reply_links(&self, session: &str) -> anyhow::Result<HashMap<String, String>> {
        // Session ids are UUIDs: refuse anything else rather than quote it.
        if !session.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("unexpected session id {session:?}");
        }
        let rows = self
            .rows(&format!(
                "SELECT id, reply_to FROM chat_messages WHERE session_id = '{session}' AND reply_to IS NOT NULL"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (field(&row, 0).to_owned(), field(&row, 1).to_owned()))
            .collect())
    }

    /// The rows of `sql`, every column as text: from the SQLite file on a read-only
    /// connection, or from PostgreSQL through `psql`.
    async fn rows(&self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let sql = sql.to_owned();
        let database = self.clone();
        tokio::task::spawn_blocking(move || match database {
            Database::Sqlite(path) => sqlite_rows(&path, &sql),
            Database::Postgres { cluster, name, .. } => Ok(cluster
                .psql(&name, &sql)
                .lines()
                .filter(|line| !line.is_empty())
                .map(|line| line.split('|').map(str::to_owned).collect())
                .collect()),
        })
        .await
        .map_err(|error| anyhow::anyhow!("reading the database failed: {error}"))?
    }
}

/// Column `index` of `row`, or empty.
fn field(row: &[String], index: usize) -> &str {
    row.get(index).map_or("", String::as_str)
}

/// The rows of `sql` in the SQLite file at `path`, on a read-only connection.
fn sqlite_rows(path: &Path, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut statement = conn.prepare(sql)?;
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            (0..columns)
                .map(|index| {
                    Ok(match row.get_ref(index)? {
                        ValueRef::Null => String::new(),
                        ValueRef::Integer(number) => number.to_string(),
                        ValueRef::Real(number) => number.to_string(),
                        ValueRef::Text(text) | ValueRef::Blob(text) => {
                            String::from_utf8_lossy(text).into_owned()
                        }
                    })
                })
                .collect::<Result<Vec<String>, rusqlite::Error>>()
        })?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(rows)
}
