//! `narutalk migrate` and `narutalk db status|check|backup|copy`: the database itself.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use narutalk_core::config::Config;
use narutalk_core::store::{self, Maintenance, OpenMode};
use serde_json::json;

use crate::output::{grouped, print_fields, print_json, print_lines, print_table, table};
use crate::{core_error, open};

/// `narutalk db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Shows the database file, its size, its applied migrations and every table's rows.
    #[command(after_help = "Examples:\n  narutalk db status\n  narutalk db status --json")]
    Status(JsonFlag),
    /// Runs SQLite's integrity and foreign-key checks and Narutalk's own (session
    /// counters); exits 1 when anything is damaged.
    ///
    /// Reads every page: on a large database it takes a while, without blocking the server.
    #[command(after_help = "Examples:\n  narutalk db check\n  narutalk db check --json")]
    Check(JsonFlag),
    /// Writes a consistent copy of the live database to FILE, checked before it is moved
    /// into place; the server may keep writing meanwhile.
    ///
    /// The copy is one snapshot (SQLite's VACUUM INTO), written beside FILE under a hidden
    /// temporary name and renamed when complete, so an interrupted backup leaves no half
    /// file. An existing FILE is refused unless --force is given.
    #[command(
        after_help = "Examples:\n  narutalk db backup backups/narutalk-2026-11-26.sqlite3\n  narutalk db backup /mnt/backup/narutalk.sqlite3 --force"
    )]
    Backup {
        /// Where to write the copy.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Copies the whole database into an empty TARGET: a SQLite file (created when
    /// missing) or a PostgreSQL URL (the database must exist; its schema is created).
    ///
    /// Every user (password hashes, revocations, revoked token families, device tokens),
    /// session, message, idempotency key, pending turn and outbox row is copied from one
    /// snapshot of the configured database, keeping every id, and the target's id counters
    /// are moved past the source's, so that no id is ever given out again. A TARGET where
    /// any Narutalk table holds a row is refused, and so is a row PostgreSQL cannot store
    /// (a NUL character in the text of an old SQLite database), before anything is
    /// written. The counts are checked before the copy commits, and printed. Stop the
    /// servers first: what they write during the copy is not in it.
    #[command(
        after_help = "Examples:\n  narutalk db copy --to postgres://narutalk@db.example/narutalk\n  narutalk --database postgres://narutalk@db.example/narutalk db copy --to narutalk.sqlite3 --json"
    )]
    Copy {
        /// The database to copy into: a SQLite file or a postgres:// URL.
        #[arg(long, value_name = "TARGET")]
        to: PathBuf,
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// `--json` of a read command.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `narutalk migrate`: creates the database when missing and applies pending migrations,
/// and says which of the three happened (created, migrated, or already current).
pub fn migrate(config: &Config) -> anyhow::Result<()> {
    let existed = !config.is_postgres() && config.database.is_file();
    let db = store::open(config, OpenMode::CreateIfMissing)?;
    let applied = db
        .applied_migrations()
        .map_err(core_error)
        .context("Cannot read the applied migrations")?;
    let latest = applied.last().map_or_else(
        || "none".to_owned(),
        |m| format!("V{} {}", m.version, m.name),
    );
    let path = config.database_shown();
    let total = applied.len();
    let now = db.migrated_at_open();
    // A PostgreSQL database exists before Narutalk runs: "created" is its schema.
    let created = if config.is_postgres() {
        now > 0 && now == total
    } else {
        !existed
    };
    print_lines(&if created {
        format!("Created {path} with {total} migration(s), the latest {latest}.")
    } else if now == 0 {
        format!(
            "The schema of {path} is current ({total} migration(s) applied, the latest {latest})."
        )
    } else {
        format!(
            "Migrated {path}: {now} migration(s) applied now, {total} in all, the latest {latest}."
        )
    })
}

/// Runs a `db` subcommand.
pub fn run(config: &Config, command: DbCommand) -> anyhow::Result<()> {
    let narutalk = open(config)?;
    let db = narutalk.store();
    match command {
        DbCommand::Status(flag) => status(db, flag.json),
        DbCommand::Check(flag) => check(config, &narutalk, flag.json),
        DbCommand::Backup { file, force } => {
            let backup = db.backup_to(&file, force)?;
            print_lines(&format!(
                "Backed up {} to {} ({} bytes in {:.2} s).",
                config.database_shown(),
                backup.path.display(),
                grouped(backup.size_bytes),
                backup.elapsed.as_secs_f64()
            ))
        }
        DbCommand::Copy { to, json } => copy(config, db, to, json),
    }
}

/// `narutalk db copy --to TARGET`: opens TARGET (created when missing), copies, prints
/// the rows copied per table. Passwords of URLs are never shown.
fn copy(config: &Config, source: &dyn store::Store, to: PathBuf, json: bool) -> anyhow::Result<()> {
    let target_config = Config {
        database: to,
        ..config.clone()
    };
    let from = config.database_shown();
    let shown = target_config.database_shown();
    let same = if target_config.is_postgres() {
        config.is_postgres() && from == shown
    } else {
        source.is_own_file(&target_config.database)
    };
    if same {
        bail!("Cannot copy {from} to {shown}: it is the database itself; choose another");
    }
    let target = store::open(&target_config, OpenMode::CreateIfMissing)?;
    let counts = store::copy::copy(source, &*target).map_err(|error| {
        let error = match error {
            store::CopyError::Database(error) => core_error(error),
            other => anyhow::anyhow!(other),
        };
        error.context(format!("Cannot copy {from} to {shown}"))
    })?;
    if json {
        let rows: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|t| (t.table.clone(), t.rows.into()))
            .collect();
        return print_json(&json!({"source": from, "target": shown, "rows": rows}));
    }
    print_lines(&format!("Copied {from} to {shown}."))?;
    print_lines("")?;
    let mut rows = table(["TABLE", "ROWS"]);
    for t in &counts {
        rows.add_row(vec![t.table.clone(), grouped(t.rows)]);
    }
    print_table(&mut rows, &[])
}

fn status(db: &dyn Maintenance, json: bool) -> anyhow::Result<()> {
    let status = db
        .status()
        .map_err(core_error)
        .context("Cannot read the database status")?;
    if json {
        let rows: serde_json::Map<String, serde_json::Value> = status
            .tables
            .iter()
            .map(|t| (t.table.clone(), t.rows.into()))
            .collect();
        let migrations: Vec<_> = status
            .migrations
            .iter()
            .map(|m| json!({"version": m.version, "name": m.name}))
            .collect();
        let mut fields = json!({
            "database": status.path,
            "engine": status.engine,
            "size_bytes": status.size_bytes,
            "wal_bytes": status.wal_bytes,
            "migrations": migrations,
            "rows": rows,
        });
        // `sqlite_version` or `postgresql_version`.
        fields[format!("{}_version", status.engine)] = status.engine_version.clone().into();
        return print_json(&fields);
    }
    let migrations: Vec<String> = status
        .migrations
        .iter()
        .map(|m| format!("V{} {}", m.version, m.name))
        .collect();
    let size = if status.engine == "sqlite" {
        format!(
            "{} bytes (+ {} bytes of write-ahead log)",
            grouped(status.size_bytes),
            grouped(status.wal_bytes)
        )
    } else {
        format!("{} bytes", grouped(status.size_bytes))
    };
    print_fields(&[
        ("database", status.path.display().to_string()),
        ("size", size),
        (status.engine, status.engine_version.clone()),
        ("migrations", migrations.join(", ")),
    ])?;
    print_lines("")?;
    let mut rows = table(["TABLE", "ROWS"]);
    for t in &status.tables {
        rows.add_row(vec![t.table.clone(), grouped(t.rows)]);
    }
    print_table(&mut rows, &[])
}

fn check(config: &Config, narutalk: &narutalk_core::Narutalk, json: bool) -> anyhow::Result<()> {
    let path = config.database_shown();
    let report = narutalk
        .admin()
        .check()
        .map_err(core_error)
        .with_context(|| format!("Cannot check {path}"))?;
    if json {
        print_json(&json!({
            "database": path,
            "sound": report.is_sound(),
            "integrity": report.sqlite.integrity,
            "foreign_keys": report.sqlite.foreign_keys,
            "counters": report.counters,
        }))?;
    } else {
        let sections = [
            ("integrity_check", &report.sqlite.integrity),
            ("foreign_key_check", &report.sqlite.foreign_keys),
            ("session counters", &report.counters),
        ];
        for (name, problems) in sections {
            if problems.is_empty() {
                print_lines(&format!("{name}: ok"))?;
            } else {
                print_lines(&format!("{name}: {} problem(s)", problems.len()))?;
                for problem in problems {
                    print_lines(&format!("  {problem}"))?;
                }
            }
        }
    }
    if !report.is_sound() {
        bail!(
            "Database {} is damaged: {} problem(s) found",
            path,
            report.problem_count()
        );
    }
    Ok(())
}
