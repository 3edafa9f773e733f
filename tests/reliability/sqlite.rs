//! SQLite's own checks of a database file, from a read-only connection of the suite (safe
//! while the server runs: WAL readers do not block its writer, nor it them).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

/// What `PRAGMA integrity_check` and `PRAGMA foreign_key_check` say about `database`: an
/// empty list when the file is sound, otherwise one line per problem.
pub async fn problems(database: PathBuf) -> anyhow::Result<Vec<String>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let conn = Connection::open_with_flags(
            &database,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", database.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let integrity: Vec<String> = conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<_, _>>()
            .context("PRAGMA integrity_check")?;
        let mut problems: Vec<String> = if integrity == ["ok"] {
            Vec::new()
        } else {
            integrity
                .into_iter()
                .map(|line| format!("integrity_check: {line}"))
                .collect()
        };
        let foreign_keys: Vec<String> = conn
            .prepare("PRAGMA foreign_key_check")?
            .query_map([], |row| {
                Ok(format!(
                    "foreign_key_check: row {} of {} points to a missing row of {}",
                    row.get::<_, Option<i64>>(1)?.unwrap_or_default(),
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(2)?
                ))
            })?
            .collect::<Result<_, _>>()
            .context("PRAGMA foreign_key_check")?;
        problems.extend(foreign_keys);
        Ok(problems)
    })
    .await
    .context("the SQLite check's thread")?
}
