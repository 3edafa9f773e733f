//! `narutalk`: the administrators' command line, on the same core and settings as the
//! server and safe to run while it runs. This file owns the command tree, the settings, and
//! how an outcome becomes an exit code: 0 success, 1 failure, 2 usage (a command line that
//! cannot work as given, clap's errors included), with every error as one line on stderr.
//! Each command group has its module; `output` formats, `prompt` asks.
//!
//! Every message is a sentence: it starts with a capital (unless its first word is a file
//! name or an email, which keep their spelling) and ends with a period. Errors are written
//! without the period, since context may follow; [`sentence`] finishes them, clap's too.

mod db;
mod output;
mod prompt;
mod sessions;
mod stats;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use narutalk_core::Narutalk;
use narutalk_core::config::{Config, Overrides};
use narutalk_core::error::Error;

/// Narutalk's administrators' tool: users, sessions, statistics and the database, while
/// the server runs. Settings: defaults < TOML file < NARUTALK_* variables < flags.
#[derive(Debug, Parser)]
#[command(
    name = "narutalk",
    version,
    about,
    after_help = "Examples:\n  narutalk migrate\n  narutalk user create --email root@example.com --username root --role admin\n  narutalk --database /srv/narutalk/db.sqlite3 stats"
)]
struct Cli {
    /// TOML settings file (NARUTALK_CONFIG); without either, /etc/narutalk/narutalk.toml
    /// when it exists (an empty NARUTALK_CONFIG: no file).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// SQLite database file (NARUTALK_DATABASE).
    #[arg(long, global = true, value_name = "FILE")]
    database: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the database if it does not exist and applies every pending migration.
    ///
    /// The only command that creates a database (but for `db copy`'s target).
    #[command(after_help = "Example:\n  narutalk migrate --database data/databases/db.sqlite3")]
    Migrate,
    /// The database: status, checks, backups, copies to another database.
    #[command(
        subcommand,
        after_help = "Examples:\n  narutalk db status\n  narutalk db check\n  narutalk db backup backups/narutalk.sqlite3"
    )]
    Db(db::DbCommand),
    /// Accounts: create, list, show, roles, verification, activation, passwords.
    #[command(
        subcommand,
        after_help = "Examples:\n  narutalk user list --role doctor --verified false\n  narutalk user verify kim@example.com"
    )]
    User(users::UserCommand),
    /// Chat sessions of every user: list, show, delete, export, import.
    #[command(
        subcommand,
        after_help = "Examples:\n  narutalk session list --user kim@example.com\n  narutalk session export --output sessions.jsonl"
    )]
    Session(sessions::SessionCommand),
    /// Users by role and verification, sessions by category, messages per day (14 days).
    #[command(after_help = "Examples:\n  narutalk stats\n  narutalk stats --json")]
    Stats(stats::StatsArgs),
}

/// A command line that cannot work as given, although clap accepted it (for example a
/// deletion without `--yes` and without a terminal to ask on): exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_failure(&error),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk: {}", sentence(&one_line(&format!("{error:#}"))));
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        database: cli.database,
        config: cli.config,
    };
    let config = Config::load(&overrides)?;
    match cli.command {
        Command::Migrate => db::migrate(&config),
        Command::Db(command) => db::run(&config, command),
        Command::User(command) => users::run(&open(&config)?, command),
        Command::Session(command) => sessions::run(&open(&config)?, command),
        Command::Stats(args) => stats::run(&open(&config)?, &args),
    }
}

/// The core on an existing database, for administration: no signing secret needed.
fn open(config: &Config) -> anyhow::Result<Narutalk> {
    Ok(Narutalk::open_for_administration(config)?.acting_as(narutalk_core::events::Actor::Cli))
}

/// A core error as one line, for callers that say what failed before it. Field errors read
/// `email: user with this email already exists. username: A user with that username
/// already exists.`: each field's messages as the API words them, which end with periods.
fn core_error(error: Error) -> anyhow::Error {
    match error {
        Error::Invalid(fields) => {
            let text: Vec<String> = fields
                .iter()
                .map(|(field, messages)| format!("{field}: {}", messages.join(" ")))
                .collect();
            anyhow::anyhow!(text.join(" "))
        }
        Error::Unavailable(cause) => {
            anyhow::anyhow!("The database is busy or unavailable; try again ({cause})")
        }
        other => anyhow::anyhow!(other),
    }
}

/// Help and version go to stdout with exit 0; a missing subcommand shows the help with
/// exit 2; every other clap error becomes one line on stderr with exit 2.
fn clap_failure(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stream; the exit code still tells.
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        }
        _ => {
            let rendered = error.render().to_string();
            let mut line = String::new();
            for part in rendered
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .filter(|l| !l.starts_with("For more information"))
            {
                let part = part.strip_prefix("error: ").unwrap_or(part);
                if !line.is_empty() {
                    let joined = line.ends_with(':') || part.starts_with('[');
                    line.push_str(if joined { " " } else { "; " });
                }
                line.push_str(part);
            }
            eprintln!("narutalk: {}", sentence(&format!("{line} (see --help)")));
            ExitCode::from(2)
        }
    }
}

/// Error texts from the file system or SQLite may hold line breaks; the contract is one
/// line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `text` as a sentence: its first letter a capital, unless its first word is a path, a
/// file name or an email (which keep their spelling), and a final period unless it ends
/// with one (or with `?` or `!`).
fn sentence(text: &str) -> String {
    let text = text.trim();
    let first_word = text.split(' ').next().unwrap_or_default();
    let spelled = first_word.contains(['/', '.', '@', '\\', '`', '\'', '"']);
    let mut out = String::with_capacity(text.len() + 1);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if !spelled => out.extend(first.to_uppercase()),
        Some(first) => out.push(first),
        None => {}
    }
    out.push_str(chars.as_str());
    if !out.ends_with(['.', '?', '!']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sentence;

    #[test]
    fn a_message_becomes_one_sentence_and_names_keep_their_spelling() {
        assert_eq!(sentence("no user kim"), "No user kim.");
        assert_eq!(
            sentence("Cancelled; did not delete."),
            "Cancelled; did not delete."
        );
        assert_eq!(
            sentence("backups/x.sqlite3 already exists (use --force to overwrite it)"),
            "backups/x.sqlite3 already exists (use --force to overwrite it)."
        );
        assert_eq!(
            sentence("kim.jsonl is the database itself"),
            "kim.jsonl is the database itself."
        );
        assert_eq!(sentence("what now?"), "What now?");
    }
}
