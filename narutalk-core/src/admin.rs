//! Administration across users, for the administrators' tool `narutalk`: every session
//! whoever owns it, the export and import of whole sessions with their messages, the
//! statistics, and the database check that adds Narutalk's own rules to SQLite's.
//!
//! An import writes nothing until the whole file is valid and checked against the
//! database; then it writes in batches of at most [`IMPORT_BATCH_ROWS`] rows, and after
//! each leaves the write lock free for as long as the batch held it (SQLite's lock is not
//! fair), so a running server waits milliseconds, never the whole import. Sessions and
//! messages keep their ids, so importing again adds nothing and completes an import that
//! stopped. An import stores messages only: it creates no AI turn.
//!
//! Nothing here is reachable through the API, which only ever shows users their own
//! sessions. The store reads and writes ([`crate::store::AdminStore`],
//! [`crate::store::Maintenance`]); this module holds the rules: what an export line is,
//! what makes an import file valid, how an import is batched, what an owner it creates is
//! called, and how the statistics are shaped.
//!
//! ```
//! use narutalk_core::Narutalk;
//! use narutalk_core::accounts::{NewUser, Role};
//! use narutalk_core::admin::{ImportFile, SessionQuery};
//! use narutalk_core::chat::Category;
//! use narutalk_core::config::Config;
//! use narutalk_core::store::OpenMode;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let config = Config::for_tests(dir.path());
//! drop(Narutalk::open(&config, OpenMode::CreateIfMissing)?); // what `narutalk migrate` does
//! let narutalk = Narutalk::open_for_administration(&config)?;
//! let kim = narutalk.accounts().create(&NewUser {
//!     email: "kim@example.com".into(), username: "kim".into(),
//!     password: "violet-harbour-42".into(), role: Role::Doctor,
//!     department: String::new(), is_verified: true,
//! })?;
//! let session = narutalk.chat().create_session(kim.id, "Headache", Category::Medical)?;
//! narutalk.send_message(kim.id, session.session.id, "What helps a migraine?")?;
//!
//! // Export every session as JSON Lines, then import the file again: nothing is doubled.
//! let mut lines = Vec::new();
//! narutalk.admin().export(&SessionQuery::default(), |_, session| {
//!     serde_json::to_writer(&mut lines, session)?;
//!     lines.push(b'\n');
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! let report = narutalk.admin().import(&ImportFile::parse(&lines)?)?;
//! assert_eq!((report.sessions_unchanged, report.messages_present), (1, 2));
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::{ControlFlow, Range};

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::accounts::{Role, USERNAME_MAX_CHARS, UserId, password, policy};
use crate::chat::{Category, ChatSession, Message, MessageId, MessageType, Sender, SessionId};
use crate::config::{AiBackend, Config, ConfigError, Secret};
use crate::error::Error;
use crate::events::{Actor, Event, EventBus, Origin};
use crate::fields::JsonObject;
use crate::store::{
    self, Audit, CounterProblem, ImportConflict, ImportOwner, ImportProblem, ImportSlice,
    IntegrityProblems, OpenMode, Store,
};
use crate::{Narutalk, StartError, time};

/// Rows (session rows and messages) an import writes per transaction: each batch holds the
/// writer for milliseconds, so the server is never locked out for long.
pub const IMPORT_BATCH_ROWS: usize = 500;

/// The longest pause between two import batches (each pause lasts as long as the batch
/// before it held the writer).
const IMPORT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Days in the statistics' messages-per-day series, today included.
pub const STATS_DAYS: u64 = 14;

impl Narutalk {
    /// Opens an existing database for administration (the CLI): like
    /// [`Narutalk::open`] with [`OpenMode::MustExist`], except that it neither reads nor
    /// creates the signing secret, which no administrative operation needs. Its token keys
    /// are random and known to nobody, so a token this handle issued would be refused
    /// everywhere else, and it never asks the AI (its responder is the template one,
    /// whatever `NARUTALK_AI_BACKEND` says; the setting is still validated).
    pub fn open_for_administration(config: &Config) -> Result<Narutalk, StartError> {
        config.validate()?;
        let store = store::open(config, OpenMode::MustExist)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| ConfigError {
            setting: "NARUTALK_SECRET_KEY".into(),
            message: format!("cannot draw random bytes for a throwaway key: {e}"),
        })?;
        let secret = Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let without_ai = Config {
            ai_backend: AiBackend::Template,
            ..config.clone()
        };
        Narutalk::new(store, &secret, &without_ai)
    }

    /// Administration across users: sessions, export, import, statistics, checks.
    pub fn admin(&self) -> Admin<'_> {
        Admin {
            store: self.store(),
            events: self.events(),
            origin: self.origin().clone(),
        }
    }
}

/// Administration across users on a store (returned by [`Narutalk::admin`]).
#[derive(Debug)]
pub struct Admin<'a> {
    store: &'a dyn Store,
    events: &'a EventBus,
    origin: Origin,
}

/// Which sessions a listing or an export covers; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only this user's sessions.
    pub owner: Option<UserId>,
    /// Only this category.
    pub category: Option<Category>,
    /// Only active (`true`) or inactive (`false`) sessions.
    pub is_active: Option<bool>,
    /// Only sessions updated at or after this time: created, or given a message, or
    /// changed since then.
    pub updated_since: Option<DateTime<Utc>>,
}

/// A session with its owner, as an administrator lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSession {
    /// The session.
    pub session: ChatSession,
    /// Its owner's id.
    pub owner_id: UserId,
    /// Its owner's email.
    pub owner_email: String,
}

/// One line of an export (JSON Lines) or one item of its JSON array: a whole session with
/// its owner's email and every message, oldest first. Importing it recreates the session
/// with the same ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportedSession {
    /// The session's id.
    pub id: SessionId,
    /// Its owner's email: how an import finds the owner in another database.
    pub owner_email: String,
    /// Its title.
    pub title: String,
    /// Its category.
    pub category: Category,
    /// Whether it is active.
    pub is_active: bool,
    /// When it was made.
    #[serde(serialize_with = "time::serialize")]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(serialize_with = "time::serialize")]
    pub updated_at: DateTime<Utc>,
    /// How many messages follow (an import checks it against them).
    pub message_count: u64,
    /// Every message, in storage order.
    pub messages: Vec<ExportedMessage>,
}

/// A message in an export: every stored field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportedMessage {
    /// Its id.
    pub id: MessageId,
    /// Its place in the session's storage order (increasing; an import appends in this
    /// order and numbers anew after the messages a session already has).
    pub seq: i64,
    /// Who wrote it.
    pub sender: Sender,
    /// What it holds.
    pub message_type: MessageType,
    /// Its content, exactly as stored.
    pub content: String,
    /// Its metadata object.
    pub metadata: JsonObject,
    /// When it was stored.
    #[serde(serialize_with = "time::serialize")]
    pub timestamp: DateTime<Utc>,
    /// For a reply: the earlier message of the same session it answers.
    pub reply_to: Option<MessageId>,
}

impl From<Message> for ExportedMessage {
    fn from(message: Message) -> Self {
        ExportedMessage {
            id: message.id,
            seq: message.seq,
            sender: message.sender,
            message_type: message.message_type,
            content: message.content,
            metadata: message.metadata,
            timestamp: message.timestamp,
            reply_to: message.reply_to,
        }
    }
}

/// Where an export is: the session just handed over is number `done` of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportProgress {
    /// Sessions handed over so far, this one included.
    pub done: u64,
    /// Sessions in the export.
    pub total: u64,
}

/// What an export covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Sessions exported.
    pub sessions: u64,
    /// Messages exported.
    pub messages: u64,
}

/// A user's sessions and the messages in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserActivity {
    /// Sessions the user owns.
    pub sessions: u64,
    /// Messages in those sessions, of every sender.
    pub messages: u64,
}

/// A place in an import file, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// A line of the file, from 1.
    Line(u64),
    /// An item of a JSON array file, from 1 (once the file has parsed, lines are unknown).
    Item(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Item(n) => write!(f, "array item {n}"),
        }
    }
}

/// An export file read and checked whole: every session valid, no id used twice. Build it
/// with [`ImportFile::parse`] and hand it to [`Admin::import`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportFile {
    sessions: Vec<(Location, ExportedSession)>,
}

/// Why an import did not happen, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is malformed, truncated or inconsistent, or it conflicts with the database
    /// (an unknown owner, a session of another user, a message id of another session).
    /// Nothing was written.
    #[error("{at}: {message}")]
    Invalid {
        /// Where in the file.
        at: Location,
        /// What is wrong, in one line.
        message: String,
    },
    /// A batch failed after earlier batches were committed (the database changed during
    /// the import, or refused a write). What came before `at` is imported; importing the
    /// same file again skips it and goes on.
    #[error(
        "{at}: {message} (the import stopped there: {} message(s) in {} session(s) before it are imported; importing the file again completes it)",
        report.messages_added,
        report.sessions_created + report.sessions_extended
    )]
    Stopped {
        /// The session whose batch failed.
        at: Location,
        /// Why.
        message: String,
        /// What was imported before.
        report: ImportReport,
    },
    /// Sessions of the file belong to emails that are no user of the database, and the
    /// import was not asked to create them ([`ImportOptions::create_owners`]). Nothing was
    /// written.
    #[error("{}", missing_owners_text(.emails))]
    MissingOwners {
        /// The emails, each once, in the file's order.
        emails: Vec<String>,
    },
    /// The database could not be read before anything was written.
    #[error(transparent)]
    Storage(#[from] Error),
}

/// How many missing owners [`ImportError::MissingOwners`] names before it counts the rest.
const MISSING_OWNERS_NAMED: usize = 10;

fn missing_owners_text(emails: &[String]) -> String {
    let named: Vec<&str> = emails
        .iter()
        .take(MISSING_OWNERS_NAMED)
        .map(String::as_str)
        .collect();
    let rest = emails.len().saturating_sub(named.len());
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    format!(
        "{} owner(s) of the file's sessions are not users of this database: {}{more}",
        emails.len(),
        named.join(", ")
    )
}

/// How an import treats owners the database lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Create every owner the database lacks instead of refusing the file: role `user`,
    /// not verified, a username from the email's local part (made unique), and a password
    /// hash of random bytes that were thrown away, so that nobody can log in as them until
    /// an administrator resets their password.
    pub create_owners: bool,
}

/// Where an import is, reported after each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportProgress {
    /// Messages of the file handled so far (added or found present).
    pub messages_done: u64,
    /// Messages in the file.
    pub messages_total: u64,
}

/// An owner an import created ([`ImportOptions::create_owners`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedOwner {
    /// The new user's id.
    pub id: UserId,
    /// The username chosen for them.
    pub username: String,
    /// Their email, from the file.
    pub email: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Owners the import created, in the file's order (only with
    /// [`ImportOptions::create_owners`]).
    pub owners_created: Vec<CreatedOwner>,
    /// Sessions that did not exist and were created.
    pub sessions_created: u64,
    /// Sessions that existed and received messages they lacked.
    pub sessions_extended: u64,
    /// Sessions that existed with every message of the file already.
    pub sessions_unchanged: u64,
    /// Messages inserted.
    pub messages_added: u64,
    /// Messages skipped because they were there already (same id).
    pub messages_present: u64,
}

/// The statistics of `narutalk stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Users by role, verification and activity.
    pub users: UserStats,
    /// Sessions by category.
    pub sessions: SessionStats,
    /// Messages, with the last [`STATS_DAYS`] days one by one.
    pub messages: MessageStats,
}

/// Users counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStats {
    /// Every user.
    pub total: u64,
    /// One row per role, in the API's order, zeros included.
    pub by_role: Vec<RoleCount>,
}

/// The users of one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleCount {
    /// The role.
    pub role: Role,
    /// Users with it.
    pub total: u64,
    /// Of those, verified.
    pub verified: u64,
    /// Of those, not verified.
    pub unverified: u64,
    /// Of those, active.
    pub active: u64,
    /// Of those, deactivated.
    pub inactive: u64,
}

/// Sessions counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStats {
    /// Every session.
    pub total: u64,
    /// One row per category, in the API's order, zeros included.
    pub by_category: Vec<CategoryCount>,
}

/// The sessions of one category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryCount {
    /// The category.
    pub category: Category,
    /// Sessions in it.
    pub sessions: u64,
    /// Messages in those sessions.
    pub messages: u64,
}

/// Messages counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageStats {
    /// Every message.
    pub total: u64,
    /// Messages stored on each of the last [`STATS_DAYS`] UTC days, oldest first, today
    /// last, zeros included.
    pub per_day: Vec<DayCount>,
}

/// The messages of one UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayCount {
    /// The day (`2026-11-26`).
    pub date: NaiveDate,
    /// Messages stored that day (by their timestamps).
    pub messages: u64,
}

/// What `narutalk db check` found; every list empty for a sound database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// SQLite's integrity and foreign-key checks.
    pub sqlite: IntegrityProblems,
    /// Sessions whose `message_count` or `last_seq` disagrees with their messages.
    pub counters: Vec<String>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_sound(&self) -> bool {
        self.problem_count() == 0
    }

    /// How many problems were found.
    pub fn problem_count(&self) -> usize {
        self.sqlite.integrity.len() + self.sqlite.foreign_keys.len() + self.counters.len()
    }
}

impl<'a> Admin<'a> {
    /// Administration on an open store (for embedders that hold only a store), publishing
    /// its changes on `events`.
    pub fn new(store: &'a dyn Store, events: &'a EventBus) -> Self {
        Admin {
            store,
            events,
            origin: Origin::default(),
        }
    }

    /// The sessions matching `query`, whoever owns them, most recently updated first (ties:
    /// newest creation first), read in one snapshot.
    pub fn sessions(&self, query: &SessionQuery) -> Result<Vec<OwnedSession>, Error> {
        self.store.owned_sessions(query)
    }

    /// One session, whoever owns it, in its export form (owner's email, every message).
    pub fn session(&self, id: SessionId) -> Result<ExportedSession, Error> {
        self.store.exported_session(id)
    }

    /// Deletes a session, whoever owns it, with its messages (and its pending turns).
    pub fn delete_session(&self, id: SessionId) -> Result<(), Error> {
        let owner = self
            .store
            .delete_any_session(id, &Audit::now(&self.origin, Actor::Administrator))?;
        self.events
            .publish(&Event::SessionDeleted { session: id, owner });
        Ok(())
    }

    /// Records `request_id` with the changes these calls make (the outbox's request id).
    pub fn with_request(mut self, request_id: &str) -> Self {
        self.origin.request_id = Some(request_id.into());
        self
    }

    /// How many sessions and messages a user has.
    pub fn user_activity(&self, id: UserId) -> Result<UserActivity, Error> {
        self.store.user_activity(id)
    }

    /// Hands every session matching `query` to `each`, oldest first, as
    /// [`ExportedSession`]s, all from one read snapshot (the server keeps writing; the
    /// export is as of its start). Stops at the first error of `each` and returns it.
    pub fn export<E: From<Error>>(
        &self,
        query: &SessionQuery,
        mut each: impl FnMut(ExportProgress, &ExportedSession) -> Result<(), E>,
    ) -> Result<ExportSummary, E> {
        let mut failure = None;
        let mut summary = ExportSummary::default();
        let result = self.store.export_sessions(query, &mut |total, record| {
            summary.sessions += 1;
            summary.messages += record.message_count;
            let progress = ExportProgress {
                done: summary.sessions,
                total,
            };
            match each(progress, &record) {
                Ok(()) => ControlFlow::Continue(()),
                Err(error) => {
                    failure = Some(error);
                    ControlFlow::Break(())
                }
            }
        });
        match failure {
            Some(error) => Err(error),
            None => result.map(|()| summary).map_err(E::from),
        }
    }

    /// Imports a checked export file. First, in one read, every owner is found by email
    /// and every id checked against the database, so that an unknown owner or a conflict
    /// writes nothing. Then the sessions are written in transactions of at most
    /// [`IMPORT_BATCH_ROWS`] rows: a session that does not exist is created with its
    /// messages; one that exists (same owner) receives only the messages it lacks (by id),
    /// appended in the file's order. Importing the same file twice adds nothing the second
    /// time. An owner the database lacks is an error ([`ImportError::MissingOwners`], naming
    /// every one); [`Admin::import_with`] can create them instead.
    pub fn import(&self, file: &ImportFile) -> Result<ImportReport, ImportError> {
        self.import_with(file, ImportOptions::default(), |_| {})
    }

    /// [`Admin::import`] with options, calling `progress` after each batch. With
    /// [`ImportOptions::create_owners`] the missing owners are created in one transaction
    /// once the whole file has been checked against the database (so a conflict creates
    /// nobody), before the first batch; the report lists them.
    pub fn import_with(
        &self,
        file: &ImportFile,
        options: ImportOptions,
        mut progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport, ImportError> {
        let (found, missing) = self.find_owners(file)?;
        let mut created = Vec::new();
        let owners: Vec<UserId> = if missing.is_empty() {
            found.into_iter().flatten().collect()
        } else if !options.create_owners {
            return Err(ImportError::MissingOwners { emails: missing });
        } else {
            let by_email = self.create_owners(&missing, &mut created)?;
            file.sessions
                .iter()
                .zip(found)
                .map(|((_, session), owner)| {
                    owner
                        .or_else(|| by_email.get(session.owner_email.as_str()).copied())
                        .ok_or_else(|| {
                            ImportError::Storage(Error::internal(format!(
                                "the owner {} was not created",
                                session.owner_email
                            )))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let mut report = self
            .import_sessions(file, &owners, &mut progress)
            .map_err(|error| match error {
                ImportError::Stopped {
                    at,
                    message,
                    mut report,
                } => {
                    report.owners_created.clone_from(&created);
                    ImportError::Stopped {
                        at,
                        message,
                        report,
                    }
                }
                other => other,
            })?;
        report.owners_created = created;
        Ok(report)
    }

    /// The owner of every session of a file, in its order (`None` for an email that is no
    /// user), and the emails that are no user, each once, in the file's order; or the
    /// first conflict with the database.
    fn find_owners(&self, file: &ImportFile) -> Result<FoundOwners, ImportError> {
        let sessions: Vec<&ExportedSession> = file.sessions().collect();
        let owners =
            self.store
                .import_owners(&sessions)?
                .map_err(|ImportConflict { index, problem }| {
                    let (at, message) = file.conflict(index, &problem);
                    ImportError::Invalid { at, message }
                })?;
        let mut missing: Vec<String> = Vec::new();
        for (session, owner) in sessions.iter().zip(&owners) {
            if owner.is_none() && !missing.contains(&session.owner_email) {
                missing.push(session.owner_email.clone());
            }
        }
        Ok((owners, missing))
    }

    /// Creates the users `emails` names in one transaction (an email that became a user
    /// meanwhile is used as it is), each with the hash of one random password that is
    /// thrown away. Returns every email's user id; `created` receives the new users.
    fn create_owners(
        &self,
        emails: &[String],
        created: &mut Vec<CreatedOwner>,
    ) -> Result<HashMap<String, UserId>, ImportError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::internal(format!("random password for new owners: {e}")))?;
        let unknown: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        // Hashed outside the write lock; one hash serves every owner of this import, since
        // nobody knows the password it hides.
        let hash = password::hash(&unknown)?;
        let owners: Vec<ImportOwner> = emails
            .iter()
            .map(|email| ImportOwner {
                email: email.clone(),
                username_base: import_username_base(email),
            })
            .collect();
        let made = self
            .store
            .create_import_owners(&owners, &hash, time::now())?;
        let mut by_email = HashMap::with_capacity(made.len());
        for owner in made {
            if let Some(user) = owner.created {
                created.push(CreatedOwner {
                    id: user.id,
                    username: user.username,
                    email: user.email,
                });
            }
            by_email.insert(owner.email, owner.id);
        }
        Ok(by_email)
    }

    /// Writes the sessions of `file` (whose owners are `owners`, in its order) in batches.
    fn import_sessions(
        &self,
        file: &ImportFile,
        owners: &[UserId],
        progress_to: &mut impl FnMut(ImportProgress),
    ) -> Result<ImportReport, ImportError> {
        let messages_total = file.message_count();
        let mut messages_done = 0;
        let mut batch_done = |batch: &[Slice]| {
            messages_done += batch
                .iter()
                .map(|slice| u64::try_from(slice.messages.len()).unwrap_or(u64::MAX))
                .sum::<u64>();
            progress_to(ImportProgress {
                messages_done,
                messages_total,
            });
        };
        let mut progress = vec![RecordProgress::default(); file.sessions.len()];
        let mut batch: Vec<Slice> = Vec::new();
        let mut rows = 0;
        for (index, (_, session)) in file.sessions.iter().enumerate() {
            let mut start = 0;
            loop {
                if rows + 1 >= IMPORT_BATCH_ROWS {
                    self.import_batch(file, owners, &batch, &mut progress)?;
                    batch_done(&batch);
                    batch.clear();
                    rows = 0;
                }
                let room = IMPORT_BATCH_ROWS - rows - 1;
                let end = (start + room).min(session.messages.len());
                batch.push(Slice {
                    index,
                    messages: start..end,
                });
                rows += 1 + end - start;
                start = end;
                if start >= session.messages.len() {
                    break;
                }
            }
        }
        if !batch.is_empty() {
            self.import_batch(file, owners, &batch, &mut progress)?;
            batch_done(&batch);
        }
        Ok(report(&progress))
    }

    /// Users by role, sessions by category, and messages on each of the [`STATS_DAYS`]
    /// UTC days ending with `today`, from one snapshot.
    pub fn stats(&self, today: NaiveDate) -> Result<Stats, Error> {
        let first = today
            .checked_sub_days(Days::new(STATS_DAYS - 1))
            .unwrap_or(NaiveDate::MIN);
        let counts = self.store.stats(first, today)?;
        let (by_role, by_category) = (counts.by_role, counts.by_category);
        Ok(Stats {
            users: UserStats {
                total: by_role.iter().map(|r| r.total).sum(),
                by_role,
            },
            messages: MessageStats {
                total: by_category.iter().map(|c| c.messages).sum(),
                per_day: counts.per_day,
            },
            sessions: SessionStats {
                total: by_category.iter().map(|c| c.sessions).sum(),
                by_category,
            },
        })
    }

    /// SQLite's integrity and foreign-key checks, then Narutalk's own: every session's
    /// `message_count` and `last_seq` agree with its messages.
    pub fn check(&self) -> Result<CheckReport, Error> {
        let sqlite = self.store.integrity_problems()?;
        let counters = self
            .store
            .counter_problems()?
            .iter()
            .map(counter_text)
            .collect();
        Ok(CheckReport { sqlite, counters })
    }

    /// Writes one batch in one transaction, after checking it against the database in
    /// that same transaction.
    fn import_batch(
        &self,
        file: &ImportFile,
        owners: &[UserId],
        batch: &[Slice],
        progress: &mut [RecordProgress],
    ) -> Result<(), ImportError> {
        let slice_of = |slice: &Slice| {
            let (at, session) = &file.sessions[slice.index];
            (*at, session, &session.messages[slice.messages.clone()])
        };
        let started = std::time::Instant::now();
        let slices: Vec<ImportSlice<'_>> = batch
            .iter()
            .map(|slice| {
                let (_, record, messages) = slice_of(slice);
                ImportSlice {
                    owner: owners[slice.index],
                    record,
                    messages,
                }
            })
            .collect();
        let written = self.store.import_batch(&slices);
        let stopped =
            |at: Location, message: String, progress: &[RecordProgress]| ImportError::Stopped {
                at,
                message,
                report: report(progress),
            };
        match written {
            Ok(Ok(outcomes)) => {
                for (slice, outcome) in batch.iter().zip(outcomes) {
                    let record = &mut progress[slice.index];
                    record.created |= outcome.created;
                    record.added += outcome.added;
                    record.present += outcome.present;
                }
                // SQLite's lock is not fair: a writer of another process waiting in its
                // busy handler retries after growing sleeps and would keep missing the
                // instant between two batches. Leaving the lock free for as long as the
                // batch held it lets the server's writes in within a batch or two.
                std::thread::sleep(started.elapsed().min(IMPORT_PAUSE_MAX));
                Ok(())
            }
            Ok(Err(ImportConflict { index, problem })) => {
                let (at, message) = file.conflict(batch[index].index, &problem);
                Err(stopped(at, message, progress))
            }
            Err(error) => {
                let at = batch
                    .first()
                    .map_or(Location::Line(0), |slice| slice_of(slice).0);
                Err(stopped(at, error.detail(), progress))
            }
        }
    }
}

impl ImportFile {
    /// Reads and checks a whole export file: JSON Lines (one session per line; blank lines
    /// are skipped) or, when it starts with `[`, one JSON array. Every session is checked
    /// (ids, choices, timestamps, `message_count` against its messages, increasing `seq`,
    /// replies to earlier messages) and no session or message id may appear twice. The
    /// first problem is reported with its line, so a malformed or truncated file is
    /// refused before anything is written.
    pub fn parse(bytes: &[u8]) -> Result<ImportFile, ImportError> {
        let mut file = Checked::default();
        let first_byte = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first_byte == Some(&b'[') {
            let raw: Vec<RawSession> =
                serde_json::from_slice(bytes).map_err(|error| ImportError::Invalid {
                    at: Location::Line(u64::try_from(error.line()).unwrap_or(u64::MAX)),
                    message: json_problem(&error),
                })?;
            for (index, session) in raw.into_iter().enumerate() {
                let item = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
                file.add(Location::Item(item), session)?;
            }
        } else {
            // Each line is checked as soon as it is parsed, so that only the checked form
            // of the file is held in memory.
            for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let at = Location::Line(u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1));
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let session =
                    serde_json::from_slice(line).map_err(|error| ImportError::Invalid {
                        at,
                        message: json_problem(&error),
                    })?;
                file.add(at, session)?;
            }
        }
        Ok(ImportFile {
            sessions: file.sessions,
        })
    }

    /// The sessions of the file, in its order.
    pub fn sessions(&self) -> impl Iterator<Item = &ExportedSession> {
        self.sessions.iter().map(|(_, session)| session)
    }

    /// How many messages the file holds.
    pub fn message_count(&self) -> u64 {
        self.sessions().map(|s| s.message_count).sum()
    }

    /// Where the session at `index` is in the file, and what its conflict with the
    /// database is, in one line.
    fn conflict(&self, index: usize, problem: &ImportProblem) -> (Location, String) {
        let (at, record) = &self.sessions[index];
        let message = match problem {
            ImportProblem::OwnerGone => format!(
                "no user {} any more (deleted during the import)",
                record.owner_email
            ),
            ImportProblem::SessionOfAnotherUser { owner } => format!(
                "session {} exists already and belongs to user {owner}, not to {}",
                record.id, record.owner_email
            ),
            ImportProblem::MessageInAnotherSession { message, session } => {
                format!("message {message} exists already in another session ({session})")
            }
            ImportProblem::TurnsPending { count } => format!(
                "session {} has {count} posted message(s) waiting for the assistant's reply: \
                 import into it once they are answered",
                record.id
            ),
        };
        (*at, message)
    }
}

/// The owner of every session of a file, in its order (`None` for an email that is no
/// user), and the emails that are no user, each once, in the file's order.
type FoundOwners = (Vec<Option<UserId>>, Vec<String>);

/// The username an owner created by an import starts from when its email's local part
/// keeps no valid character.
const FALLBACK_USERNAME: &str = "user";

/// The username an owner created by an import is given, before a numeric suffix makes it
/// unique: the email's local part with the characters a username may not hold left out
/// (`user` when none is left), cut to leave room for the suffix.
fn import_username_base(email: &str) -> String {
    let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
    let base: String = local
        .chars()
        .filter(|c| policy::is_valid_username(c.encode_utf8(&mut [0; 4])))
        .take(USERNAME_MAX_CHARS - 20)
        .collect();
    if base.is_empty() {
        FALLBACK_USERNAME.to_owned()
    } else {
        base
    }
}

/// The line `narutalk db check` shows for a session whose counters disagree with its
/// messages.
fn counter_text(problem: &CounterProblem) -> String {
    let CounterProblem {
        session,
        message_count,
        last_seq,
        counted,
        max_seq,
    } = problem;
    format!(
        "session {session}: message_count {message_count} and last_seq {last_seq}, \
         but it has {counted} message(s) and its last seq is {max_seq}"
    )
}

/// Part of one session's messages, written in one batch.
struct Slice {
    index: usize,
    messages: Range<usize>,
}

/// What the import did to one session of the file so far.
#[derive(Clone, Copy, Default)]
struct RecordProgress {
    created: bool,
    added: u64,
    present: u64,
}

fn report(progress: &[RecordProgress]) -> ImportReport {
    let mut report = ImportReport::default();
    for record in progress {
        if record.created {
            report.sessions_created += 1;
        } else if record.added > 0 {
            report.sessions_extended += 1;
        } else {
            report.sessions_unchanged += 1;
        }
        report.messages_added += record.added;
        report.messages_present += record.present;
    }
    report
}

/// A session as the file has it, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a session object")]
struct RawSession {
    id: String,
    owner_email: String,
    title: String,
    category: String,
    is_active: bool,
    created_at: String,
    updated_at: String,
    message_count: u64,
    messages: Vec<RawMessage>,
}

/// A message as the file has it, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a message object")]
struct RawMessage {
    id: String,
    seq: i64,
    sender: String,
    message_type: String,
    content: String,
    metadata: JsonObject,
    timestamp: String,
    reply_to: Option<String>,
}

impl RawSession {
    /// The checked session, or what is wrong with it (the first problem).
    fn check(self) -> Result<ExportedSession, String> {
        let id: SessionId = self.id.parse().map_err(|_| {
            format!(
                "session id {:?} is not a lower-case hyphenated UUID",
                self.id
            )
        })?;
        let owner_email = self.owner_email.to_lowercase();
        if !policy::is_valid_email(&owner_email) {
            return Err(format!(
                "owner_email {:?} is not an email address",
                self.owner_email
            ));
        }
        let title_chars = self.title.chars().count();
        if self.title.trim() != self.title
            || title_chars == 0
            || title_chars > crate::chat::TITLE_MAX_CHARS
        {
            return Err(format!(
                "title {:?} must be 1 to {} characters with no surrounding spaces",
                self.title,
                crate::chat::TITLE_MAX_CHARS
            ));
        }
        let category = choice::<Category>("category", &self.category, Category::ALL)?;
        let created_at = timestamp("created_at", &self.created_at)?;
        let updated_at = timestamp("updated_at", &self.updated_at)?;
        if created_at > updated_at {
            return Err("created_at is later than updated_at".into());
        }
        let follow = u64::try_from(self.messages.len()).unwrap_or(u64::MAX);
        if self.message_count != follow {
            return Err(format!(
                "message_count is {} but {follow} message(s) follow",
                self.message_count
            ));
        }
        let mut earlier: HashSet<MessageId> = HashSet::new();
        let mut previous_seq = 0;
        let mut messages = Vec::with_capacity(self.messages.len());
        for (index, raw) in self.messages.into_iter().enumerate() {
            let message = raw
                .check(previous_seq, &earlier)
                .map_err(|problem| format!("message {}: {problem}", index + 1))?;
            previous_seq = message.seq;
            earlier.insert(message.id);
            messages.push(message);
        }
        Ok(ExportedSession {
            id,
            owner_email,
            title: self.title,
            category,
            is_active: self.is_active,
            created_at,
            updated_at,
            message_count: self.message_count,
            messages,
        })
    }
}

impl RawMessage {
    fn check(
        self,
        previous_seq: i64,
        earlier: &HashSet<MessageId>,
    ) -> Result<ExportedMessage, String> {
        let id: MessageId = self
            .id
            .parse()
            .map_err(|_| format!("id {:?} is not a lower-case hyphenated UUID", self.id))?;
        if earlier.contains(&id) {
            return Err(format!("id {id} is used twice in this session"));
        }
        if self.seq <= previous_seq {
            return Err(format!(
                "seq {} does not come after {previous_seq} (seq must increase from 1)",
                self.seq
            ));
        }
        let sender = choice::<Sender>("sender", &self.sender, Sender::ALL)?;
        let message_type =
            choice::<MessageType>("message_type", &self.message_type, MessageType::ALL)?;
        let timestamp = timestamp("timestamp", &self.timestamp)?;
        let reply_to = match self.reply_to {
            None => None,
            Some(raw) => {
                let reply_to: MessageId = raw
                    .parse()
                    .map_err(|_| format!("reply_to {raw:?} is not a lower-case hyphenated UUID"))?;
                if !earlier.contains(&reply_to) {
                    return Err(format!(
                        "reply_to {reply_to} is not an earlier message of this session"
                    ));
                }
                Some(reply_to)
            }
        };
        Ok(ExportedMessage {
            id,
            seq: self.seq,
            sender,
            message_type,
            content: self.content,
            metadata: self.metadata,
            timestamp,
            reply_to,
        })
    }
}

/// A choice field's value, or a message naming the choices.
fn choice<T: std::str::FromStr + fmt::Display>(
    field: &str,
    value: &str,
    all: &[T],
) -> Result<T, String> {
    value.parse().map_err(|_| {
        let choices: Vec<String> = all.iter().map(ToString::to_string).collect();
        format!("{field} {value:?} is not one of {}", choices.join(", "))
    })
}

/// An RFC 3339 timestamp, kept to whole microseconds as the database stores it.
fn timestamp(field: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|at| time::from_micros(at.timestamp_micros()))
        .map_err(|_| format!("{field} {value:?} is not an RFC 3339 timestamp"))
}

/// The sessions of a file checked so far, and where each id appeared.
#[derive(Default)]
struct Checked {
    sessions: Vec<(Location, ExportedSession)>,
    session_at: HashMap<SessionId, Location>,
    message_at: HashMap<MessageId, Location>,
}

impl Checked {
    /// Checks one session of the file and that none of its ids appeared before.
    fn add(&mut self, at: Location, raw: RawSession) -> Result<(), ImportError> {
        let invalid = |message: String| ImportError::Invalid { at, message };
        let session = raw.check().map_err(invalid)?;
        if let Some(earlier) = self.session_at.insert(session.id, at) {
            return Err(invalid(format!(
                "session {} appears already on {earlier}",
                session.id
            )));
        }
        for message in &session.messages {
            if let Some(earlier) = self.message_at.insert(message.id, at) {
                return Err(invalid(format!(
                    "message {} appears already on {earlier}",
                    message.id
                )));
            }
        }
        self.sessions.push((at, session));
        Ok(())
    }
}

/// serde_json's message without its position (the caller names the line), and for a
/// syntax error the column.
fn json_problem(error: &serde_json::Error) -> String {
    use serde_json::error::Category as Problem;
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let text = text.strip_suffix(&position).unwrap_or(&text);
    match error.classify() {
        Problem::Eof => "the JSON ends early (is the file truncated?)".to_owned(),
        Problem::Syntax => format!("not valid JSON: {text} at column {}", error.column()),
        Problem::Data | Problem::Io => text.to_owned(),
    }
}
