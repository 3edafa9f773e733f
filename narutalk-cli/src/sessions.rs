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
use indicatif::ProgressBar;
use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::admin::{
    CreatedOwner, ExportSummary, ImportError, ImportFile, ImportOptions, ImportReport,
    OwnedSession, SessionQuery,
};
use narutalk_core::chat::{Category, SessionId};
use narutalk_core::error::Error;
use narutalk_core::files::PendingFile;
use narutalk_core::time::format_rfc3339;
use serde::Serialize;

use crate::output::{
    Give, Limit, cut, limit, minute, note, note_more, print_fields, print_json, print_lines,
    print_list, print_table, progress_bar, rows_shown, table, yes_no,
};
use crate::{core_error, prompt, users};

/// `narutalk session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Lists sessions of every user, most recently updated first.
    ///
    /// On a terminal the list stops after a screenful (a last line on stderr counts the
    /// rest) and the table fits its width: ids and emails are never split, titles wrap, and
    /// the columns that do not fit are left out (--wide shows them). In a pipe or with
    /// --json every session is listed, one a line, unless --limit says otherwise.
    #[command(
        after_help = "Examples:\n  narutalk session list --user kim@example.com\n  narutalk session list --category emergency --since 2026-11-01 --json\n  narutalk session list --limit 100 --wide"
    )]
    List {
        #[command(flatten)]
        filters: SessionFilters,
        /// Show at most N sessions, or all (default: a screenful on a terminal, otherwise
        /// all).
        #[arg(long, value_name = "N|all", value_parser = limit)]
        limit: Option<Limit>,
        /// Show every column at full width, whatever the terminal's width.
        #[arg(long)]
        wide: bool,
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
    /// the error names the line. Owners are matched by email: owners the database lacks are
    /// an error that names them, unless --create-owners creates them. Sessions and messages
    /// keep their ids, so importing a file twice adds nothing the second time, and a
    /// session that exists receives only the messages it lacks. On a terminal a progress
    /// bar counts the messages.
    #[command(
        after_help = "Examples:\n  narutalk session import kim.jsonl\n  narutalk --database /srv/archive/db.sqlite3 session import kim.jsonl --create-owners"
    )]
    Import {
        /// The export file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Create the owners the database lacks: role user, not verified, the username
        /// from the email's local part (a number added when it is taken), and no password
        /// anyone knows (set one with `narutalk user reset-password`).
        #[arg(long)]
        create_owners: bool,
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
        SessionCommand::List {
            filters,
            limit,
            wide,
            json,
        } => {
            let mut sessions = narutalk
                .admin()
                .sessions(&filters.query(narutalk)?)
                .map_err(core_error)?;
            let more = cut(&mut sessions, rows_shown(limit, json));
            if json {
                let sessions: Vec<SessionJson<'_>> =
                    sessions.iter().map(SessionJson::from).collect();
                print_json(&sessions)?;
                note_more(more, "sessions");
                return Ok(());
            }
            if sessions.is_empty() {
                note("No sessions match.");
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
            // Left out first when the terminal is narrow: the flag, the category, the
            // time, then the count; titles wrap; the id and owner always stay whole.
            let gives = [
                Give::Keep,
                Give::Keep,
                Give::Wrap,
                Give::Drop(3),
                Give::Drop(4),
                Give::Drop(1),
                Give::Drop(2),
            ];
            print_list(&mut rows, &gives, wide)?;
            note_more(more, "sessions");
            Ok(())
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
            print_lines(&format!("Deleted {what}."))
        }
        SessionCommand::Export {
            output,
            format,
            filters,
        } => export(narutalk, &filters.query(narutalk)?, format, output),
        SessionCommand::Import {
            file,
            create_owners,
        } => import(narutalk, &file, create_owners),
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
    print_table(
        &mut rows,
        &[Give::Keep, Give::Keep, Give::Keep, Give::Keep, Give::Wrap],
    )
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
        Error::NotFound => anyhow::anyhow!("No session {id}"),
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
    let progress = progress_bar(show_progress, "{wide_bar} {pos}/{len} sessions, {eta} left");
    match output {
        Some(path) => {
            if narutalk.store().is_own_file(&path) {
                anyhow::bail!(
                    "{} is the database itself; choose another file",
                    path.display()
                );
            }
            let cannot_write = || format!("Cannot write {}", path.display());
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
                "Exported {} session(s) with {} message(s) to {}.",
                summary.sessions,
                summary.messages,
                path.display()
            ))
        }
        None => {
            let mut writer = BufWriter::new(std::io::stdout().lock());
            write_export(narutalk, query, format, &mut writer, &progress)
                .context("Cannot write the export to standard output")?;
            writer
                .flush()
                .context("Cannot write the export to standard output")?;
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

/// `session import`: reads and checks the whole file, then imports it with a progress bar
/// on a terminal, and prints what it did (the owners it created included).
fn import(narutalk: &Narutalk, file: &std::path::Path, create_owners: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("Cannot read {}", file.display()))?;
    let parsed = ImportFile::parse(&bytes).map_err(|error| import_failure(file, error))?;
    drop(bytes);
    let progress = progress_bar(
        std::io::stderr().is_terminal(),
        "{wide_bar} {pos}/{len} messages, {eta} left",
    );
    progress.set_length(parsed.message_count());
    let report = narutalk
        .admin()
        .import_with(&parsed, ImportOptions { create_owners }, |at| {
            progress.set_position(at.messages_done);
        })
        .map_err(|error| import_failure(file, error));
    progress.finish_and_clear();
    let report = report?;
    print_lines(&import_summary(file, &report))
}

/// `Imported kim.jsonl: ...`, with a second line naming the owners created, if any.
fn import_summary(file: &std::path::Path, report: &ImportReport) -> String {
    let mut text = format!(
        "Imported {}: {} session(s) created, {} extended, {} unchanged; {} message(s) added, {} already present.",
        file.display(),
        report.sessions_created,
        report.sessions_extended,
        report.sessions_unchanged,
        report.messages_added,
        report.messages_present
    );
    if !report.owners_created.is_empty() {
        let owners: Vec<String> = report
            .owners_created
            .iter()
            .map(
                |CreatedOwner {
                     id,
                     username,
                     email,
                 }| format!("{id} {username} ({email})"),
            )
            .collect();
        text.push_str(&format!(
            "\nCreated {} owner(s) with the role user and no usable password (set one with `narutalk user reset-password`): {}.",
            owners.len(),
            owners.join(", ")
        ));
    }
    text
}

fn import_failure(file: &std::path::Path, error: ImportError) -> anyhow::Error {
    match error {
        ImportError::Invalid { .. } => anyhow::anyhow!(
            "Cannot import {}: {error}; nothing was imported",
            file.display()
        ),
        ImportError::MissingOwners { .. } => anyhow::anyhow!(
            "Cannot import {}: {error}; nothing was imported (--create-owners creates them)",
            file.display()
        ),
        ImportError::Stopped { .. } => {
            anyhow::anyhow!("Cannot import all of {}: {error}", file.display())
        }
        ImportError::Storage(error) => core_error(error).context(format!(
            "Cannot import {}; nothing was imported",
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

/// A session as `session list --json` shows it: the session's fields, timestamps in RFC
/// 3339 with microseconds, and its owner.
#[derive(Serialize)]
struct SessionJson<'a> {
    id: SessionId,
    title: &'a str,
    category: Category,
    is_active: bool,
    created_at: String,
    updated_at: String,
    message_count: u64,
    owner_id: UserId,
    owner_email: &'a str,
}

impl<'a> From<&'a OwnedSession> for SessionJson<'a> {
    fn from(owned: &'a OwnedSession) -> Self {
        let session = &owned.session;
        SessionJson {
            id: session.id,
            title: &session.title,
            category: session.category,
            is_active: session.is_active,
            created_at: format_rfc3339(&session.created_at),
            updated_at: format_rfc3339(&session.updated_at),
            message_count: session.message_count,
            owner_id: owned.owner_id,
            owner_email: &owned.owner_email,
        }
    }
}
