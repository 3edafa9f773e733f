//! `narutalk session ...`: chat sessions of every user; export to JSON Lines or one JSON
//! document, and import of such a file (validated whole first, idempotent by ids, written
//! in batches by the core).

use std::fs::OpenOptions;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use narutalk_core::Narutalk;
use narutalk_core::admin::{ExportSummary, ImportError, ImportFile, SessionQuery};
use narutalk_core::chat::{Category, SessionId};
use narutalk_core::db::maintenance::PendingFile;
use narutalk_core::error::Error;

use crate::output::{minute, print_fields, print_json, print_lines, print_table, table, yes_no};
use crate::{core_error, prompt, users};

/// `narutalk session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Lists sessions of every user, most recently updated first.
    #[command(
        after_help = "Examples:\n  narutalk session list --user kim@example.com\n  narutalk session list --category emergency --since 2026-11-01 --json"
    )]
    List {
        #[command(flatten)]
        filters: SessionFilters,
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows a session with its owner and every message.
    #[command(
        after_help = "Examples:\n  narutalk session show 0b0b3c1e-6f0c-4e8e-9a36-3f1f5d1c2a10\n  narutalk session show 0b0b3c1e-6f0c-4e8e-9a36-3f1f5d1c2a10 --json"
    )]
    Show {
        /// The session's id (a lower-case hyphenated UUID).
        #[arg(value_parser = session_id)]
        id: SessionId,
        /// Print JSON (the export form) instead of tables, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Deletes a session of any user with its messages (asks first).
    #[command(
        after_help = "Example:\n  narutalk session delete 0b0b3c1e-6f0c-4e8e-9a36-3f1f5d1c2a10 --yes"
    )]
    Delete {
        /// The session's id (a lower-case hyphenated UUID).
        #[arg(value_parser = session_id)]
        id: SessionId,
        /// Do not ask; required without a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Exports sessions with their owners' emails and every message, oldest session first.
    ///
    /// JSON Lines by default (one session per line), or one JSON array with --format json.
    /// The export is one snapshot of the database, taken while the server keeps writing.
    /// With --output the file is written under a temporary name and renamed when complete
    /// (an existing FILE is replaced); without it, the export goes to standard output.
    #[command(
        after_help = "Examples:\n  narutalk session export --user kim@example.com --output kim.jsonl\n  narutalk session export --since 2026-11-01 --format json > november.json"
    )]
    Export {
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// jsonl (one session per line) or json (one array).
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        #[command(flatten)]
        filters: SessionFilters,
    },
    /// Imports an export file (JSON Lines or JSON array).
    ///
    /// The whole file is checked first: a malformed or truncated file imports nothing and
    /// the error names the line. Owners are matched by email (an unknown one is an error);
    /// sessions and messages keep their ids, so importing a file twice adds nothing the
    /// second time, and a session that exists receives only the messages it lacks.
    #[command(after_help = "Example:\n  narutalk session import kim.jsonl")]
    Import {
        /// The export file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// The filters of `session list` and `session export`.
#[derive(Debug, Args)]
pub struct SessionFilters {
    /// Only the sessions of this user (id or email).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Only this category: medical, general, emergency or consultation.
    #[arg(long, value_parser = category_parser())]
    category: Option<Category>,
    /// Only active (true) or inactive (false) sessions.
    #[arg(long, value_name = "true|false")]
    active: Option<bool>,
    /// Only sessions updated on or after this day (UTC), YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = day_start)]
    since: Option<DateTime<Utc>>,
}

/// What `session export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON Lines: one session per line.
    Jsonl,
    /// One JSON array of sessions.
    Json,
}

/// Runs a `session` subcommand.
pub fn run(narutalk: &Narutalk, command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::List { filters, json } => {
            let sessions = narutalk
                .admin()
                .sessions(&filters.query(narutalk)?)
                .map_err(core_error)?;
            if json {
                return print_json(&sessions);
            }
            if sessions.is_empty() {
                eprintln!("no sessions match");
                return Ok(());
            }
            let mut rows = table([
                "ID", "OWNER", "TITLE", "CATEGORY", "ACTIVE", "MESSAGES", "UPDATED",
            ]);
            for owned in &sessions {
                let session = &owned.session;
                rows.add_row(vec![
                    session.id.to_string(),
                    owned.owner_email.clone(),
                    session.title.clone(),
                    session.category.to_string(),
                    yes_no(session.is_active).to_owned(),
                    session.message_count.to_string(),
                    minute(&session.updated_at),
                ]);
            }
            print_table(&mut rows)
        }
        SessionCommand::Show { id, json } => show(narutalk, id, json),
        SessionCommand::Delete { id, yes } => {
            let session = find(narutalk, id)?;
            let what = format!(
                "session {id} (\"{}\" of {}, {} message(s))",
                session.title, session.owner_email, session.message_count
            );
            prompt::confirm(
                &format!("Delete {what}?"),
                yes,
                &format!("delete session {id}"),
            )?;
            narutalk
                .admin()
                .delete_session(id)
                .map_err(|error| not_found_as(error, id))?;
            print_lines(&format!("deleted {what}"))
        }
        SessionCommand::Export {
            output,
            format,
            filters,
        } => export(narutalk, &filters.query(narutalk)?, format, output),
        SessionCommand::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let parsed = ImportFile::parse(&bytes).map_err(|error| import_failure(&file, error))?;
            drop(bytes);
            let report = narutalk
                .admin()
                .import(&parsed)
                .map_err(|error| import_failure(&file, error))?;
            print_lines(&format!(
                "imported {}: {} session(s) created, {} extended, {} unchanged; {} message(s) added, {} already present",
                file.display(),
                report.sessions_created,
                report.sessions_extended,
                report.sessions_unchanged,
                report.messages_added,
                report.messages_present
            ))
        }
    }
}

impl SessionFilters {
    fn query(&self, narutalk: &Narutalk) -> anyhow::Result<SessionQuery> {
        let owner = match &self.user {
            Some(key) => Some(users::resolve(narutalk, key)?.id),
            None => None,
        };
        Ok(SessionQuery {
            owner,
            category: self.category,
            is_active: self.active,
            updated_since: self.since,
        })
    }
}

fn show(narutalk: &Narutalk, id: SessionId, json: bool) -> anyhow::Result<()> {
    let session = find(narutalk, id)?;
    if json {
        return print_json(&session);
    }
    print_fields(&[
        ("id", session.id.to_string()),
        ("owner", session.owner_email.clone()),
        ("title", session.title.clone()),
        ("category", session.category.to_string()),
        ("active", yes_no(session.is_active).to_owned()),
        ("created", minute(&session.created_at)),
        ("updated", minute(&session.updated_at)),
        ("messages", session.message_count.to_string()),
    ])?;
    if session.messages.is_empty() {
        return Ok(());
    }
    print_lines("")?;
    let mut rows = table(["SEQ", "TIME", "SENDER", "TYPE", "CONTENT"]);
    for message in &session.messages {
        rows.add_row(vec![
            message.seq.to_string(),
            minute(&message.timestamp),
            message.sender.to_string(),
            message.message_type.to_string(),
            message.content.clone(),
        ]);
    }
    print_table(&mut rows)
}

fn find(
    narutalk: &Narutalk,
    id: SessionId,
) -> anyhow::Result<narutalk_core::admin::ExportedSession> {
    narutalk
        .admin()
        .session(id)
        .map_err(|error| not_found_as(error, id))
}

fn not_found_as(error: Error, id: SessionId) -> anyhow::Error {
    match error {
        Error::NotFound => anyhow::anyhow!("no session {id}"),
        other => core_error(other),
    }
}

/// Writes the export to `output` (through a temporary file renamed when complete) or to
/// stdout, with a progress bar on a terminal when stdout is not where the data goes.
fn export(
    narutalk: &Narutalk,
    query: &SessionQuery,
    format: ExportFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let show_progress =
        std::io::stderr().is_terminal() && (output.is_some() || !std::io::stdout().is_terminal());
    let progress = if show_progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{wide_bar} {pos}/{len} sessions, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    match output {
        Some(path) => {
            if narutalk.database().is_own_file(&path) {
                anyhow::bail!(
                    "{} is the database itself; choose another file",
                    path.display()
                );
            }
            let cannot_write = || format!("cannot write {}", path.display());
            let pending = PendingFile::new(&path, true).with_context(cannot_write)?;
            let file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(pending.temp_path())
                .with_context(cannot_write)?;
            let mut writer = BufWriter::new(file);
            let summary = write_export(narutalk, query, format, &mut writer, &progress)
                .with_context(cannot_write)?;
            writer.flush().with_context(cannot_write)?;
            drop(writer);
            pending.commit().with_context(cannot_write)?;
            progress.finish_and_clear();
            print_lines(&format!(
                "exported {} session(s) with {} message(s) to {}",
                summary.sessions,
                summary.messages,
                path.display()
            ))
        }
        None => {
            let mut writer = BufWriter::new(std::io::stdout().lock());
            write_export(narutalk, query, format, &mut writer, &progress)
                .context("writing the export to standard output")?;
            writer
                .flush()
                .context("writing the export to standard output")?;
            progress.finish_and_clear();
            Ok(())
        }
    }
}

fn write_export(
    narutalk: &Narutalk,
    query: &SessionQuery,
    format: ExportFormat,
    out: &mut impl Write,
    progress: &ProgressBar,
) -> anyhow::Result<ExportSummary> {
    if format == ExportFormat::Json {
        out.write_all(b"[")?;
    }
    let summary = narutalk
        .admin()
        .export(query, |at, session| -> anyhow::Result<()> {
            progress.set_length(at.total);
            progress.set_position(at.done);
            if format == ExportFormat::Json {
                out.write_all(if at.done > 1 { b",\n" } else { b"\n" })?;
            }
            serde_json::to_writer(&mut *out, session)?;
            if format == ExportFormat::Jsonl {
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
    if format == ExportFormat::Json {
        out.write_all(if summary.sessions > 0 {
            b"\n]\n"
        } else {
            b"]\n"
        })?;
    }
    Ok(summary)
}

fn import_failure(file: &std::path::Path, error: ImportError) -> anyhow::Error {
    match error {
        ImportError::Invalid { .. } => {
            anyhow::anyhow!("{}: {error}; nothing was imported", file.display())
        }
        ImportError::Stopped { .. } => anyhow::anyhow!("{}: {error}", file.display()),
        ImportError::Storage(error) => core_error(error).context(format!(
            "cannot import {}; nothing was imported",
            file.display()
        )),
    }
}

/// A session id as the API writes it; anything else is a usage error.
fn session_id(text: &str) -> Result<SessionId, String> {
    text.parse()
        .map_err(|_| "not a session id (a lower-case hyphenated UUID)".to_owned())
}

/// `medical`, `general`, `emergency` or `consultation`, with clap listing them.
fn category_parser() -> impl TypedValueParser<Value = Category> {
    PossibleValuesParser::new(Category::ALL.iter().map(|c| c.as_str())).try_map(|category| {
        category
            .parse::<Category>()
            .map_err(|_| format!("unknown category {category}"))
    })
}

/// `2026-11-26` as the start of that day in UTC.
fn day_start(text: &str) -> Result<DateTime<Utc>, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|day| day.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| "expected a day as YYYY-MM-DD".to_owned())
}
