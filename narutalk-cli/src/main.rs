//! `narutalk`: the administrators' command line, on the same core and settings as the
//! server. For now it has `narutalk migrate`, the one command that creates a database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use narutalk_core::config::{Config, Overrides};
use narutalk_core::db::{Database, OpenMode};

/// Narutalk's administrators' tool. Settings: defaults < TOML file < NARUTALK_* variables < flags.
#[derive(Debug, Parser)]
#[command(name = "narutalk", version, about)]
struct Cli {
    /// TOML settings file (NARUTALK_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// SQLite database file (NARUTALK_DATABASE).
    #[arg(long, global = true)]
    database: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the database if it does not exist and applies every pending migration.
    ///
    /// Example: narutalk migrate --database data/databases/db.sqlite3
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        bind: None,
        database: cli.database,
        config: cli.config,
    };
    let config = Config::load(&overrides)?;
    match cli.command {
        Command::Migrate => migrate(&config),
    }
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let existed = config.database.is_file();
    let db = Database::open(
        &config.database,
        config.sqlite_synchronous,
        OpenMode::CreateIfMissing,
    )?;
    let applied = db
        .applied_migrations()
        .context("reading the applied migrations")?;
    let latest = applied.last().map_or_else(
        || "none".to_owned(),
        |m| format!("V{} {}", m.version, m.name),
    );
    let verb = if existed { "migrated" } else { "created" };
    println!(
        "{verb} {}: {} migration(s) applied, latest {latest}",
        config.database.display(),
        applied.len()
    );
    Ok(())
}
