//! [`AdminStore`] on PostgreSQL: sessions of every owner, whole sessions for an export, the
//! import of exported sessions (appended as the session's next messages, so `seq`,
//! `message_count` and `last_seq` move together), the owners an import creates, the
//! session counters check, and the statistics. The same answers and rows as the SQLite
//! backend (`store/sqlite/admin.rs`), with the locks that SQLite's single writer made
//! unnecessary:
//!
//! - an import batch first takes, in a fixed order, a key-share lock on each owner's row
//!   (the owner cannot be deleted under it), then per session a transaction-scoped
//!   advisory lock on the session's id (two imports of the same new session: the second
//!   waits, then finds the session the first created) and the session row's lock (a post
//!   to it waits, or the import waits for the post and sees its pending turn);
//! - the owners an import creates are inserted with `ON CONFLICT DO NOTHING`: an email
//!   or a username that another process took meanwhile is looked at again, never an error.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Row;
use uuid::Uuid;

use super::{PostgresStore, Tx};
use crate::accounts::{Role, User, UserId};
use crate::admin::{
    CategoryCount, DayCount, ExportedMessage, ExportedSession, OwnedSession, RoleCount,
    SessionQuery, UserActivity,
};
use crate::chat::{Category, ChatSession, Message, MessageId, MessageType, Sender, SessionId};
use crate::error::{Error, InternalError};
use crate::store::outbox::{self, Kind};
use crate::store::{
    AdminStore, Audit, CounterProblem, ImportConflict, ImportOwner, ImportProblem, ImportSlice,
    ImportedOwner, SliceOutcome, StatsCounts,
};
use crate::time;

/// The first key of the advisory locks an import takes per session (the second is the
/// hash of the session's id): two-key advisory locks never meet the one-key migration
/// lock. Any fixed number ("imp" in ASCII).
const IMPORT_LOCK_CLASS: i32 = 0x0069_6d70;

/// How many times creating one import owner looks again after another process took its
/// email or username between the check and the insert, before it gives up.
const OWNER_INSERT_ATTEMPTS: u32 = 100;

impl AdminStore for PostgresStore {
    fn owned_sessions(&self, query: &SessionQuery) -> Result<Vec<OwnedSession>, Error> {
        self.read(|tx| {
            let mut owners = Owners::default();
            sessions(tx, query, Order::RecentlyUpdatedFirst)?
                .into_iter()
                .map(|session| {
                    Ok(OwnedSession {
                        owner_id: session.user_id,
                        owner_email: owners.email(tx, &session)?,
                        session,
                    })
                })
                .collect()
        })
    }

    fn exported_session(&self, id: SessionId) -> Result<ExportedSession, Error> {
        self.read(|tx| {
            let session = session_by_id(tx, id)?
                .map(|stored| stored.session)
                .ok_or(Error::NotFound)?;
            exported(tx, &mut Owners::default(), session)
        })
    }

    fn export_sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(u64, ExportedSession) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        self.read(|tx| {
            let sessions = sessions(tx, query, Order::OldestFirst)?;
            let total = u64::try_from(sessions.len()).unwrap_or(u64::MAX);
            let mut owners = Owners::default();
            for session in sessions {
                let record = exported(tx, &mut owners, session)?;
                if each(total, record).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn delete_any_session(&self, id: SessionId, audit: &Audit) -> Result<UserId, Error> {
        self.write(std::time::Instant::now(), |tx| {
            // One statement: the row's lock (a post to it finishes first) and its owner.
            let owner = tx
                .query_opt(
                    "DELETE FROM chat_sessions WHERE id = $1 RETURNING user_id",
                    &[&id.to_string()],
                )?
                .map(|row| UserId(row.get(0)))
                .ok_or(Error::NotFound)?;
            self.record(
                tx,
                &outbox::Row {
                    kind: Kind::SessionDeleted,
                    session: Some(id),
                    seq: None,
                    user: Some(owner),
                    payload: serde_json::json!({}),
                    audit,
                },
            )?;
            Ok(owner)
        })
    }

    fn user_activity(&self, id: UserId) -> Result<UserActivity, Error> {
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT count(*), coalesce(sum(message_count), 0)::BIGINT FROM chat_sessions \
                 WHERE user_id = $1",
                &[&id.0],
            )?;
            let (sessions, messages): (i64, i64) = (row.get(0), row.get(1));
            Ok(UserActivity {
                sessions: u64::try_from(sessions).unwrap_or_default(),
                messages: u64::try_from(messages).unwrap_or_default(),
            })
        })
    }

    fn import_owners(
        &self,
        sessions: &[&ExportedSession],
    ) -> Result<Result<Vec<Option<UserId>>, ImportConflict>, Error> {
        // A snapshot answer only: `import_batch` checks again under its locks.
        self.read(|tx| {
            let mut by_email: HashMap<&str, Option<UserId>> = HashMap::new();
            let mut owners = Vec::with_capacity(sessions.len());
            for (index, session) in sessions.iter().enumerate() {
                let owner = match by_email.get(session.owner_email.as_str()) {
                    Some(owner) => *owner,
                    None => {
                        let owner = id_by_email(tx, &session.owner_email)?;
                        by_email.insert(&session.owner_email, owner);
                        owner
                    }
                };
                if let Some(problem) = import_problem(tx, owner, session, &session.messages)? {
                    return Ok(Err(ImportConflict { index, problem }));
                }
                owners.push(owner);
            }
            Ok(Ok(owners))
        })
    }

    fn create_import_owners(
        &self,
        owners: &[ImportOwner],
        password_hash: &str,
        joined: DateTime<Utc>,
    ) -> Result<Vec<ImportedOwner>, Error> {
        self.write(std::time::Instant::now(), |tx| {
            owners
                .iter()
                .map(|owner| import_owner(tx, owner, password_hash, &joined))
                .collect()
        })
    }

    fn import_batch(
        &self,
        slices: &[ImportSlice<'_>],
    ) -> Result<Result<Vec<SliceOutcome>, ImportConflict>, Error> {
        self.write(std::time::Instant::now(), |tx| {
            lock_for_import(tx, slices)?;
            for (index, slice) in slices.iter().enumerate() {
                if let Some(problem) =
                    import_problem(tx, Some(slice.owner), slice.record, slice.messages)?
                {
                    return Ok(Err(ImportConflict { index, problem }));
                }
            }
            let mut outcomes = Vec::with_capacity(slices.len());
            for slice in slices {
                outcomes.push(import_slice(tx, slice)?);
            }
            Ok(Ok(outcomes))
        })
    }

    fn stats(&self, first: NaiveDate, last: NaiveDate) -> Result<StatsCounts, Error> {
        self.read(|tx| {
            Ok(StatsCounts {
                by_role: role_counts(tx)?,
                by_category: category_counts(tx)?,
                per_day: messages_per_day(tx, first, last)?,
            })
        })
    }

    fn counter_problems(&self) -> Result<Vec<CounterProblem>, Error> {
        self.read(|tx| {
            // `COLLATE "C"`: byte order, as SQLite sorts text.
            let rows = tx.query(
                "SELECT s.id, s.message_count, s.last_seq, count(m.id), coalesce(max(m.seq), 0) \
                 FROM chat_sessions s LEFT JOIN chat_messages m ON m.session_id = s.id \
                 GROUP BY s.id \
                 HAVING s.message_count <> count(m.id) OR s.last_seq <> coalesce(max(m.seq), 0) \
                 ORDER BY s.id COLLATE \"C\"",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|row| CounterProblem {
                    session: row.get(0),
                    message_count: row.get(1),
                    last_seq: row.get(2),
                    counted: row.get(3),
                    max_seq: row.get(4),
                })
                .collect())
        })
    }
}

/// How a list of sessions is ordered.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// As the API lists them: most recently updated first, ties by newest creation.
    RecentlyUpdatedFirst,
    /// As an export writes them: oldest first, so that a later export only appends.
    OldestFirst,
}

/// Every session matching `query`, whoever owns it. Only the filters given are in the
/// statement (at most sixteen statements per order), so that each is planned for its
/// own filters.
fn sessions(
    tx: &mut Tx<'_>,
    query: &SessionQuery,
    order: Order,
) -> Result<Vec<ChatSession>, Error> {
    let order = match order {
        Order::RecentlyUpdatedFirst => "updated_at DESC, created_at DESC, insert_order DESC",
        Order::OldestFirst => "created_at, insert_order",
    };
    let owner = query.owner.map(|id| id.0);
    let category = query.category.map(Category::as_str);
    let since = query.updated_since.as_ref().map(time::to_micros);
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
    if let Some(owner) = &owner {
        params.push(owner);
        conditions.push(format!("user_id = ${}", params.len()));
    }
    if let Some(category) = &category {
        params.push(category);
        conditions.push(format!("category = ${}", params.len()));
    }
    if let Some(is_active) = &query.is_active {
        params.push(is_active);
        conditions.push(format!("is_active = ${}", params.len()));
    }
    if let Some(since) = &since {
        params.push(since);
        conditions.push(format!("updated_at >= ${}", params.len()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let rows = tx.query(
        &format!("SELECT {SESSION_COLUMNS} FROM chat_sessions{filter} ORDER BY {order}"),
        &params,
    )?;
    rows.iter().map(|row| session_from_row(row, 0)).collect()
}

/// Owners' emails by id, each read once.
#[derive(Default)]
struct Owners {
    emails: HashMap<UserId, String>,
}

impl Owners {
    fn email(&mut self, tx: &mut Tx<'_>, session: &ChatSession) -> Result<String, Error> {
        if let Some(email) = self.emails.get(&session.user_id) {
            return Ok(email.clone());
        }
        let email: String = tx
            .query_opt(
                "SELECT email FROM users WHERE id = $1",
                &[&session.user_id.0],
            )?
            .map(|row| row.get(0))
            .ok_or_else(|| {
                Error::internal(format!(
                    "session {} belongs to user {}, who does not exist (run `narutalk db check`)",
                    session.id, session.user_id
                ))
            })?;
        self.emails.insert(session.user_id, email.clone());
        Ok(email)
    }
}

/// A session in its export form, with its owner's email and every message.
fn exported(
    tx: &mut Tx<'_>,
    owners: &mut Owners,
    session: ChatSession,
) -> Result<ExportedSession, Error> {
    let owner_email = owners.email(tx, &session)?;
    let messages: Vec<ExportedMessage> = tx
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 ORDER BY seq"
            ),
            &[&session.id.to_string()],
        )?
        .iter()
        .map(|row| message_from_row(row).map(ExportedMessage::from))
        .collect::<Result<_, _>>()?;
    Ok(ExportedSession {
        id: session.id,
        owner_email,
        title: session.title,
        category: session.category,
        is_active: session.is_active,
        created_at: session.created_at,
        updated_at: session.updated_at,
        message_count: u64::try_from(messages.len()).unwrap_or(u64::MAX),
        messages,
    })
}

/// Takes an import batch's locks, each kind in a fixed order so that two imports never
/// deadlock: a key-share lock on each owner's row (the owner stays until the commit), then
/// per session (by id) the advisory lock on its id and its row's lock when it exists.
/// Statements after them see what the transactions they waited for committed.
fn lock_for_import(tx: &mut Tx<'_>, slices: &[ImportSlice<'_>]) -> Result<(), Error> {
    let mut owners: Vec<i64> = slices.iter().map(|slice| slice.owner.0).collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in &owners {
        tx.query("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE", &[owner])?;
    }
    let mut ids: Vec<String> = slices
        .iter()
        .map(|slice| slice.record.id.to_string())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in &ids {
        tx.query(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&IMPORT_LOCK_CLASS, id],
        )?;
        tx.query(
            "SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE",
            &[id],
        )?;
    }
    Ok(())
}

/// Why `messages` of `record` cannot be imported for `owner`, if they cannot: the owner is
/// gone, the session belongs to someone else, a message id is used in another session, or
/// messages would be added to a session whose posted messages still wait for replies.
/// `None` is an owner the import has yet to create, to whom no session belongs.
fn import_problem(
    tx: &mut Tx<'_>,
    owner: Option<UserId>,
    record: &ExportedSession,
    messages: &[ExportedMessage],
) -> Result<Option<ImportProblem>, Error> {
    if let Some(owner) = owner
        && tx
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&owner.0])?
            .is_none()
    {
        return Ok(Some(ImportProblem::OwnerGone));
    }
    let session_id = record.id.to_string();
    let existing = tx.query_opt(
        "SELECT user_id, turns_pending FROM chat_sessions WHERE id = $1",
        &[&session_id],
    )?;
    if let Some(row) = &existing {
        let existing_owner = UserId(row.get(0));
        if Some(existing_owner) != owner {
            return Ok(Some(ImportProblem::SessionOfAnotherUser {
                owner: existing_owner,
            }));
        }
    }
    // Where the messages are stored now, in one statement; judged in the record's order.
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    let stored_in: HashMap<String, String> = tx
        .query(
            "SELECT id, session_id FROM chat_messages WHERE id = ANY($1)",
            &[&ids],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut adds = false;
    for (message, id) in messages.iter().zip(&ids) {
        match stored_in.get(id) {
            Some(session) if *session != session_id => {
                return Ok(Some(ImportProblem::MessageInAnotherSession {
                    message: message.id,
                    session: session.clone(),
                }));
            }
            Some(_) => {}
            None => adds = true,
        }
    }
    // The session's pending turns are its user messages after the last one answered: a
    // message appended behind them would be taken for one.
    if adds {
        let pending: i64 = existing.map(|row| row.get(1)).unwrap_or_default();
        if pending > 0 {
            return Ok(Some(ImportProblem::TurnsPending {
                count: u64::try_from(pending).unwrap_or_default(),
            }));
        }
    }
    Ok(None)
}

/// Imports a slice of a session's messages, creating the session first when it does not
/// exist. Messages already present (by id) are skipped; the others are appended in the
/// record's order with the session's next sequence numbers. Call [`lock_for_import`] and
/// [`import_problem`] in the same transaction first.
fn import_slice(tx: &mut Tx<'_>, slice: &ImportSlice<'_>) -> Result<SliceOutcome, Error> {
    let record = slice.record;
    let session_id = record.id.to_string();
    let mut outcome = SliceOutcome::default();
    let stored = match session_by_id(tx, record.id)? {
        Some(stored) => stored,
        None => {
            tx.execute(
                "INSERT INTO chat_sessions (id, user_id, title, category, is_active, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &session_id,
                    &slice.owner.0,
                    &record.title,
                    &record.category.as_str(),
                    &record.is_active,
                    &time::to_micros(&record.created_at),
                    &time::to_micros(&record.updated_at),
                ],
            )?;
            outcome.created = true;
            session_by_id(tx, record.id)?.ok_or(Error::NotFound)?
        }
    };
    // An import keeps the session's own time rather than its messages' (SQLite moves it
    // past each message, then sets this).
    let updated_at = stored.session.updated_at.max(record.updated_at);
    let ids: Vec<String> = slice.messages.iter().map(|m| m.id.to_string()).collect();
    let mut present: HashSet<String> = tx
        .query(
            "SELECT id FROM chat_messages WHERE session_id = $1 AND id = ANY($2)",
            &[&session_id, &ids],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut last_seq = stored.last_seq;
    for (message, id) in slice.messages.iter().zip(ids) {
        if present.contains(&id) {
            outcome.present += 1;
            continue;
        }
        let metadata = serde_json::to_string(&message.metadata)
            .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
        last_seq += 1;
        tx.execute(
            "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &session_id,
                &last_seq,
                &message.sender.as_str(),
                &message.message_type.as_str(),
                &message.content,
                &metadata,
                &time::to_micros(&message.timestamp),
                &message.reply_to.map(|id| id.to_string()),
            ],
        )?;
        present.insert(id);
        outcome.added += 1;
    }
    let added = i64::try_from(outcome.added).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE chat_sessions SET last_seq = $1, message_count = message_count + $2, updated_at = $3 \
         WHERE id = $4",
        &[&last_seq, &added, &time::to_micros(&updated_at), &session_id],
    )?;
    Ok(outcome)
}

/// The owner `owner` of an import: the user with its email, or a new one (see
/// [`AdminStore::create_import_owners`]). Another process may take the email or the
/// username between the look and the insert: the insert then does nothing and the owner is
/// looked at again.
fn import_owner(
    tx: &mut Tx<'_>,
    owner: &ImportOwner,
    password_hash: &str,
    joined: &DateTime<Utc>,
) -> Result<ImportedOwner, Error> {
    let base = &owner.username_base;
    let mut username = base.clone();
    let mut suffix: u64 = 2;
    for _ in 0..OWNER_INSERT_ATTEMPTS {
        if let Some(id) = id_by_email(tx, &owner.email)? {
            return Ok(ImportedOwner {
                email: owner.email.clone(),
                id,
                created: None,
            });
        }
        while tx
            .query_opt(
                "SELECT 1 FROM users WHERE username = $1 AND id <> $2",
                &[&username, &0_i64],
            )?
            .is_some()
        {
            username = format!("{base}{suffix}");
            suffix += 1;
        }
        let inserted = tx.query_opt(
            "INSERT INTO users (username, email, password_hash, role, department, is_verified, date_joined) \
             VALUES ($1, $2, $3, $4, '', FALSE, $5) ON CONFLICT DO NOTHING RETURNING id",
            &[
                &username,
                &owner.email,
                &password_hash,
                &Role::User.as_str(),
                &time::to_micros(joined),
            ],
        )?;
        if let Some(row) = inserted {
            let id = UserId(row.get(0));
            let user = user_by_id(tx, id)?
                .ok_or_else(|| Error::internal(format!("user {id} vanished after its insert")))?;
            return Ok(ImportedOwner {
                email: owner.email.clone(),
                id,
                created: Some(user),
            });
        }
    }
    Err(Error::internal(format!(
        "the owner {} of an import could not be created: its email or username kept being taken",
        owner.email
    )))
}

/// The id of the user with this email (already lower-cased, as stored), if any.
fn id_by_email(tx: &mut Tx<'_>, email: &str) -> Result<Option<UserId>, Error> {
    Ok(tx
        .query_opt("SELECT id FROM users WHERE email = $1", &[&email])?
        .map(|row| UserId(row.get(0))))
}

/// The user with this id, if any.
fn user_by_id(tx: &mut Tx<'_>, id: UserId) -> Result<Option<User>, Error> {
    Ok(tx
        .query_opt(
            "SELECT id, username, email, role, department, is_verified, is_active, date_joined, \
             last_login, tokens_revoked_at FROM users WHERE id = $1",
            &[&id.0],
        )?
        .map(|row| {
            let role: String = row.get(3);
            User {
                id: UserId(row.get(0)),
                username: row.get(1),
                email: row.get(2),
                // The CHECK constraint keeps other values out; fall back rather than panic.
                role: role.parse().unwrap_or(Role::User),
                department: row.get(4),
                is_verified: row.get(5),
                is_active: row.get(6),
                date_joined: time::from_micros(row.get(7)),
                last_login: row.get::<_, Option<i64>>(8).map(time::from_micros),
                tokens_revoked_at: row.get(9),
            }
        }))
}

/// One row per role, in the API's order, zeros included.
fn role_counts(tx: &mut Tx<'_>) -> Result<Vec<RoleCount>, Error> {
    let mut counts: Vec<RoleCount> = Role::ALL
        .into_iter()
        .map(|role| RoleCount {
            role,
            total: 0,
            verified: 0,
            unverified: 0,
            active: 0,
            inactive: 0,
        })
        .collect();
    let rows = tx.query(
        "SELECT role, count(*), count(*) FILTER (WHERE is_verified), \
         count(*) FILTER (WHERE is_active) FROM users GROUP BY role",
        &[],
    )?;
    for row in &rows {
        let role: String = row.get(0);
        let Some(count) = counts.iter_mut().find(|c| c.role.as_str() == role) else {
            // The CHECK constraint keeps other roles out; a damaged row is not counted.
            continue;
        };
        let [total, verified, active] =
            [row.get(1), row.get(2), row.get(3)].map(|n: i64| u64::try_from(n).unwrap_or_default());
        *count = RoleCount {
            role: count.role,
            total,
            verified,
            unverified: total - verified.min(total),
            active,
            inactive: total - active.min(total),
        };
    }
    Ok(counts)
}

/// Sessions and messages per category, in the API's order, zeros included.
fn category_counts(tx: &mut Tx<'_>) -> Result<Vec<CategoryCount>, Error> {
    let mut counts: Vec<CategoryCount> = Category::ALL
        .iter()
        .map(|&category| CategoryCount {
            category,
            sessions: 0,
            messages: 0,
        })
        .collect();
    let rows = tx.query(
        "SELECT category, count(*), coalesce(sum(message_count), 0)::BIGINT FROM chat_sessions \
         GROUP BY category",
        &[],
    )?;
    for row in &rows {
        let category: String = row.get(0);
        if let Some(count) = counts.iter_mut().find(|c| c.category.as_str() == category) {
            count.sessions = u64::try_from(row.get::<_, i64>(1)).unwrap_or_default();
            count.messages = u64::try_from(row.get::<_, i64>(2)).unwrap_or_default();
        }
    }
    Ok(counts)
}

/// Messages stored on each UTC day from `first` to `last`, both included, zeros included:
/// the day of a message is its whole days of microseconds since the first day's UTC
/// midnight, as SQLite counts them. Reads every message of those days (there is no index
/// on `created_at`).
fn messages_per_day(
    tx: &mut Tx<'_>,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<DayCount>, Error> {
    const DAY_MICROS: i64 = 86_400_000_000;
    let start = |day: NaiveDate| -> i64 {
        time::to_micros(&DateTime::<Utc>::from_naive_utc_and_offset(
            day.and_time(chrono::NaiveTime::MIN),
            Utc,
        ))
    };
    let from = start(first);
    let until = start(last) + DAY_MICROS;
    let mut days: Vec<DayCount> = first
        .iter_days()
        .take_while(|day| *day <= last)
        .map(|date| DayCount { date, messages: 0 })
        .collect();
    let rows = tx.query(
        "SELECT (created_at - $1) / $3, count(*) FROM chat_messages \
         WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
        &[&from, &until, &DAY_MICROS],
    )?;
    for row in &rows {
        let index: i64 = row.get(0);
        let count: i64 = row.get(1);
        if let Some(day) = usize::try_from(index).ok().and_then(|i| days.get_mut(i)) {
            day.messages = u64::try_from(count).unwrap_or_default();
        }
    }
    Ok(days)
}

/// A session row with the bookkeeping the API does not show.
struct StoredSession {
    session: ChatSession,
    last_seq: i64,
}

const SESSION_COLUMNS: &str =
    "id, user_id, title, category, is_active, created_at, updated_at, message_count, last_seq";
const MESSAGE_COLUMNS: &str =
    "id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to";

/// The session with this id, whoever owns it.
fn session_by_id(tx: &mut Tx<'_>, id: SessionId) -> Result<Option<StoredSession>, Error> {
    tx.query_opt(
        &format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1"),
        &[&id.to_string()],
    )?
    .map(|row| {
        Ok(StoredSession {
            session: session_from_row(&row, 0)?,
            last_seq: row.get(8),
        })
    })
    .transpose()
}

fn uuid_column(row: &Row, index: usize) -> Result<Uuid, Error> {
    let text: String = row.get(index);
    Uuid::parse_str(&text)
        .map_err(|e| Error::internal(format!("stored id {text:?} is no UUID: {e}")))
}

/// A session from the columns of [`SESSION_COLUMNS`] starting at `at`.
fn session_from_row(row: &Row, at: usize) -> Result<ChatSession, Error> {
    let category: String = row.get(at + 3);
    let message_count: i64 = row.get(at + 7);
    Ok(ChatSession {
        id: SessionId(uuid_column(row, at)?),
        user_id: UserId(row.get(at + 1)),
        title: row.get(at + 2),
        category: category.parse().unwrap_or_default(),
        is_active: row.get(at + 4),
        created_at: time::from_micros(row.get(at + 5)),
        updated_at: time::from_micros(row.get(at + 6)),
        message_count: u64::try_from(message_count).unwrap_or_default(),
    })
}

/// A message from the columns of [`MESSAGE_COLUMNS`].
fn message_from_row(row: &Row) -> Result<Message, Error> {
    let sender: String = row.get(3);
    let message_type: String = row.get(4);
    let metadata: String = row.get(6);
    let reply_to: Option<String> = row.get(8);
    Ok(Message {
        id: MessageId(uuid_column(row, 0)?),
        session_id: SessionId(uuid_column(row, 1)?),
        seq: row.get(2),
        sender: sender.parse().unwrap_or(Sender::System),
        message_type: message_type.parse().unwrap_or(MessageType::Text),
        content: row.get(5),
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        timestamp: time::from_micros(row.get(7)),
        reply_to: reply_to
            .and_then(|id| Uuid::parse_str(&id).ok())
            .map(MessageId),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use chrono::NaiveDate;

    use super::super::testing;
    use super::*;
    use crate::config::Synchronous;
    use crate::events::Actor;
    use crate::store::OpenMode;
    use crate::store::sqlite::SqliteStore;

    /// 2026-03-01T00:00:00Z, and a day, in microseconds.
    const D0: i64 = 1_772_323_200_000_000;
    const DAY: i64 = 86_400_000_000;
    const HOUR: i64 = 3_600_000_000;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";
    const S3: &str = "33333333-3333-4333-8333-333333333333";
    const S4: &str = "44444444-4444-4444-8444-444444444444";
    const S5: &str = "05555555-5555-4555-8555-555555555555";
    const S6: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";

    fn message_id(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012}")
    }

    fn sid(text: &str) -> SessionId {
        SessionId(Uuid::parse_str(text).unwrap())
    }

    /// Literal SQL, valid on both backends: users 1 to 4, six sessions (ties of
    /// `updated_at` and `created_at`, two with wrong counters, one with a pending turn),
    /// messages on both sides of UTC midnights and one before the statistics' range.
    fn fixture() -> Vec<String> {
        let mut sql = vec![
            "INSERT INTO users (username, email, password_hash, role, department, is_verified, is_active, date_joined) VALUES \
             ('alice', 'alice@x.io', 'h', 'admin', 'ward', TRUE, TRUE, 1000), \
             ('bob', 'bob@x.io', 'h', 'user', '', FALSE, TRUE, 2000), \
             ('carol', 'carol@x.io', 'h', 'doctor', '', TRUE, FALSE, 3000), \
             ('dave', 'dave@x.io', 'h', 'user', '', FALSE, TRUE, 4000)"
                .to_owned(),
        ];
        let sessions = [
            (
                S1,
                1,
                "medical",
                true,
                D0 + HOUR,
                D0 + 2 * DAY + 5 * HOUR,
                3,
                3,
                0,
            ),
            (
                S2,
                2,
                "general",
                true,
                D0 + 2 * HOUR,
                D0 + 2 * DAY + 5 * HOUR,
                3,
                3,
                1,
            ),
            (S3, 2, "emergency", false, D0 + 2 * HOUR, D0 + DAY, 1, 1, 0),
            (
                S4,
                3,
                "consultation",
                false,
                D0 + 2 * HOUR,
                D0 + DAY,
                5,
                2,
                0,
            ),
            (S5, 1, "general", true, D0 + 3 * DAY, D0 + 3 * DAY, 0, 9, 0),
            (S6, 1, "general", true, D0 + 3 * DAY, D0 + 3 * DAY, 1, 0, 0),
        ];
        for (id, owner, category, active, created, updated, count, last, pending) in sessions {
            sql.push(format!(
                "INSERT INTO chat_sessions (id, user_id, title, category, is_active, created_at, updated_at, \
                 message_count, last_seq, turns_pending, answered_seq) VALUES \
                 ('{id}', {owner}, 'title {id}', '{category}', {active}, {created}, {updated}, {count}, {last}, {pending}, {})",
                last - pending
            ));
        }
        let messages = [
            (1, S1, 1, "user", "text", "{}", D0 + HOUR, None),
            (
                2,
                S1,
                2,
                "ai",
                "text",
                "{\"model\":\"m\"}",
                D0 + DAY - 1,
                Some(1),
            ),
            (3, S1, 3, "user", "text", "{}", D0 + DAY, None),
            (4, S2, 1, "user", "text", "{}", D0 + DAY + 3 * HOUR, None),
            (5, S2, 2, "ai", "text", "{}", D0 + DAY + 4 * HOUR, Some(4)),
            (
                6,
                S2,
                3,
                "user",
                "image",
                "{}",
                D0 + 2 * DAY + 5 * HOUR,
                None,
            ),
            (7, S4, 1, "user", "text", "{}", D0 + DAY, None),
            (8, S4, 2, "system", "error", "{}", D0 + DAY, Some(7)),
            (9, S3, 1, "user", "text", "{}", D0 - 1, None),
        ];
        for (n, session, seq, sender, kind, metadata, at, reply) in messages {
            let reply = reply.map_or("NULL".to_owned(), |r| format!("'{}'", message_id(r)));
            sql.push(format!(
                "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to) \
                 VALUES ('{}', '{session}', {seq}, '{sender}', '{kind}', ' content {n} ', '{metadata}', {at}, {reply})",
                message_id(n)
            ));
        }
        sql
    }

    /// The same store on SQLite (with a connection of its own to its file) and PostgreSQL,
    /// both holding the fixture.
    struct Twins {
        _dir: tempfile::TempDir,
        sqlite: SqliteStore,
        raw: rusqlite::Connection,
        postgres: PostgresStore,
    }

    fn twins(test: &str) -> Option<Twins> {
        let (postgres, _) = testing::store(test)?;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let sqlite =
            SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap();
        let raw = rusqlite::Connection::open(&path).unwrap();
        for sql in fixture() {
            raw.execute_batch(&sql).unwrap();
            postgres
                .write(Instant::now(), |tx| tx.execute(&sql, &[]))
                .unwrap();
        }
        Some(Twins {
            _dir: dir,
            sqlite,
            raw,
            postgres,
        })
    }

    fn audit() -> Audit {
        Audit {
            actor: Actor::Cli,
            at: time::from_micros(D0 + 5 * DAY),
            request_id: Some("req-1".into()),
        }
    }

    fn message(n: u32, sender: Sender, at: i64, reply_to: Option<u32>) -> ExportedMessage {
        ExportedMessage {
            id: MessageId(Uuid::parse_str(&message_id(n)).unwrap()),
            seq: 0,
            sender,
            message_type: MessageType::Text,
            content: format!("imported {n}"),
            metadata: serde_json::from_str("{\"k\":1}").unwrap(),
            timestamp: time::from_micros(at),
            reply_to: reply_to.map(|r| MessageId(Uuid::parse_str(&message_id(r)).unwrap())),
        }
    }

    fn record(id: &str, owner_email: &str, messages: Vec<ExportedMessage>) -> ExportedSession {
        ExportedSession {
            id: sid(id),
            owner_email: owner_email.to_owned(),
            title: "imported".to_owned(),
            category: Category::Consultation,
            is_active: true,
            created_at: time::from_micros(D0 + 4 * DAY),
            updated_at: time::from_micros(D0 + 4 * DAY + HOUR),
            message_count: u64::try_from(messages.len()).unwrap(),
            messages,
        }
    }

    /// Every admin call of the scenario, its answer as a line.
    fn scenario(store: &dyn AdminStore) -> Vec<String> {
        let mut lines = Vec::new();
        let mut log = |what: &str, answer: String| lines.push(format!("{what}: {answer}"));
        let queries = [
            SessionQuery::default(),
            SessionQuery {
                owner: Some(UserId(2)),
                ..SessionQuery::default()
            },
            SessionQuery {
                category: Some(Category::General),
                ..SessionQuery::default()
            },
            SessionQuery {
                is_active: Some(false),
                ..SessionQuery::default()
            },
            SessionQuery {
                owner: Some(UserId(1)),
                is_active: Some(true),
                updated_since: Some(time::from_micros(D0 + 2 * DAY + 5 * HOUR)),
                category: None,
            },
        ];
        for query in &queries {
            log("owned", format!("{:?}", store.owned_sessions(query)));
            let mut exported = Vec::new();
            store
                .export_sessions(query, &mut |total, session| {
                    exported.push((total, session));
                    if exported.len() == 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            log("export", format!("{exported:?}"));
        }
        for id in [S1, S2, S4, "99999999-9999-4999-8999-999999999999"] {
            log("exported", format!("{:?}", store.exported_session(sid(id))));
        }
        for user in 1..=5 {
            log(
                "activity",
                format!("{:?}", store.user_activity(UserId(user))),
            );
        }
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
        log("stats", format!("{:?}", store.stats(day(1), day(4))));
        log("stats", format!("{:?}", store.stats(day(2), day(2))));
        let feb28 = NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        log("stats", format!("{:?}", store.stats(feb28, day(1))));
        log("counters", format!("{:?}", store.counter_problems()));

        // The import's checks.
        let new = record(
            "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
            "erin@x.io",
            vec![
                message(10, Sender::User, D0 + 4 * DAY, None),
                message(11, Sender::Ai, D0 + 4 * DAY + 1, Some(10)),
            ],
        );
        let mut s1_more = store.exported_session(sid(S1)).unwrap();
        s1_more
            .messages
            .push(message(12, Sender::User, D0 + 4 * DAY, None));
        let s2_as_is = store.exported_session(sid(S2)).unwrap();
        let mut s2_more = s2_as_is.clone();
        s2_more
            .messages
            .push(message(13, Sender::User, D0 + 4 * DAY, None));
        let mut s3_as_alice = store.exported_session(sid(S3)).unwrap();
        s3_as_alice.owner_email = "alice@x.io".to_owned();
        let elsewhere = record(
            "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
            "bob@x.io",
            vec![
                message(14, Sender::User, D0, None),
                message(1, Sender::User, D0, None),
            ],
        );
        for asked in [
            vec![&new, &s1_more],
            vec![&s1_more, &s3_as_alice],
            vec![&s2_more],
            vec![&s2_as_is, &new],
            vec![&elsewhere],
        ] {
            log(
                "import_owners",
                format!("{:?}", store.import_owners(&asked)),
            );
        }

        // The owners.
        let owner = |email: &str, base: &str| ImportOwner {
            email: email.to_owned(),
            username_base: base.to_owned(),
        };
        let created = store
            .create_import_owners(
                &[
                    owner("erin@x.io", "bob"),
                    owner("alice@x.io", "alice"),
                    owner("erin@x.io", "erin"),
                    owner("fay@x.io", "bob"),
                ],
                "import-hash",
                time::from_micros(D0 + 4 * DAY),
            )
            .unwrap();
        log("owners", format!("{created:?}"));
        let erin = created[0].id;

        // The batches.
        let slice =
            |owner: UserId, record: &'static ExportedSession, range: std::ops::Range<usize>| {
                ImportSlice {
                    owner,
                    record,
                    messages: &record.messages[range],
                }
            };
        let new: &'static ExportedSession = Box::leak(Box::new(new));
        let s1_more: &'static ExportedSession = Box::leak(Box::new(s1_more));
        let s2_more: &'static ExportedSession = Box::leak(Box::new(s2_more));
        let gone: &'static ExportedSession = Box::leak(Box::new(record(
            "dddddddd-dddd-4ddd-8ddd-dddddddddddd",
            "ghost@x.io",
            vec![message(15, Sender::User, D0, None)],
        )));
        let batches = [
            vec![
                slice(UserId(1), s1_more, 0..4),
                slice(UserId(2), s2_more, 0..4),
            ],
            vec![
                slice(erin, new, 0..1),
                slice(erin, new, 1..2),
                slice(UserId(1), s1_more, 0..4),
            ],
            vec![slice(erin, new, 0..2), slice(UserId(1), s1_more, 2..4)],
            vec![slice(UserId(999), gone, 0..1)],
            vec![slice(UserId(2), s2_more, 0..3)],
        ];
        for batch in &batches {
            log("batch", format!("{:?}", store.import_batch(batch)));
        }
        for id in [S1, S2, &new.id.to_string()] {
            log("exported", format!("{:?}", store.exported_session(sid(id))));
        }
        log(
            "owned",
            format!("{:?}", store.owned_sessions(&SessionQuery::default())),
        );
        log("counters", format!("{:?}", store.counter_problems()));
        log("stats", format!("{:?}", store.stats(day(1), day(6))));

        // Deletion.
        for id in [S3, S3, "99999999-9999-4999-8999-999999999999"] {
            log(
                "delete",
                format!("{:?}", store.delete_any_session(sid(id), &audit())),
            );
        }
        log(
            "owned",
            format!("{:?}", store.owned_sessions(&SessionQuery::default())),
        );
        lines
    }

    type OutboxRow = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
        i64,
        Option<String>,
        String,
    );

    const OUTBOX: &str = "SELECT kind, session_id, seq, user_id, actor, created_at, request_id, payload \
                          FROM outbox ORDER BY id";

    #[test]
    fn every_admin_call_answers_and_writes_as_on_sqlite() {
        let Some(twins) = twins("pg_admin_scenario") else {
            return;
        };
        let on_sqlite = scenario(&twins.sqlite);
        let on_postgres = scenario(&twins.postgres);
        assert_eq!(on_sqlite.len(), on_postgres.len());
        for (sqlite, postgres) in on_sqlite.iter().zip(&on_postgres) {
            assert_eq!(sqlite, postgres);
        }
        // The scenario saw what it was meant to.
        let all = on_postgres.join("\n");
        for expected in [
            "TurnsPending { count: 1 }",
            "SessionOfAnotherUser { owner: UserId(2) }",
            "MessageInAnotherSession",
            "OwnerGone",
            "username: \"bob2\"",
            "username: \"bob3\"",
            "created: true, added: 1, present: 0",
            "created: false, added: 1, present: 3",
            "delete: Ok(UserId(2))",
            "delete: Err(NotFound)",
        ] {
            assert!(all.contains(expected), "{expected} is missing from:\n{all}");
        }

        let mut statement = twins.raw.prepare(OUTBOX).unwrap();
        let sqlite_outbox: Vec<OutboxRow> = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let postgres_outbox: Vec<OutboxRow> = twins
            .postgres
            .read(|tx| {
                Ok(tx
                    .query(OUTBOX, &[])?
                    .iter()
                    .map(|row| {
                        (
                            row.get(0),
                            row.get(1),
                            row.get(2),
                            row.get(3),
                            row.get(4),
                            row.get(5),
                            row.get(6),
                            row.get(7),
                        )
                    })
                    .collect())
            })
            .unwrap();
        assert_eq!(sqlite_outbox.len(), 1);
        assert_eq!(sqlite_outbox, postgres_outbox);

        // Every user row alike (the import's owners included).
        let users = "SELECT id, username, email, password_hash, role, department, is_verified, is_active, \
                     date_joined FROM users ORDER BY id";
        let sqlite_users: Vec<String> = twins
            .raw
            .prepare(users)
            .unwrap()
            .query_map([], |row| {
                Ok(format!(
                    "{:?}",
                    (
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, bool>(6)?,
                        row.get::<_, bool>(7)?,
                        row.get::<_, i64>(8)?,
                    )
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let postgres_users: Vec<String> = twins
            .postgres
            .read(|tx| {
                Ok(tx
                    .query(users, &[])?
                    .iter()
                    .map(|row| {
                        format!(
                            "{:?}",
                            (
                                row.get::<_, i64>(0),
                                row.get::<_, String>(1),
                                row.get::<_, String>(2),
                                row.get::<_, String>(3),
                                row.get::<_, String>(4),
                                row.get::<_, String>(5),
                                row.get::<_, bool>(6),
                                row.get::<_, bool>(7),
                                row.get::<_, i64>(8),
                            )
                        )
                    })
                    .collect())
            })
            .unwrap();
        assert_eq!(sqlite_users, postgres_users);
    }

    /// Waits until `count` lock requests of this database's sessions wait: the threads of
    /// a race are where the test wants them.
    fn wait_for_waiters(store: &PostgresStore, count: i64) {
        let started = Instant::now();
        loop {
            let waiting: i64 = store
                .read(|tx| {
                    Ok(tx
                        .query_one("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                             WHERE NOT l.granted AND a.datname = current_database()", &[])?
                        .get(0))
                })
                .unwrap();
            if waiting >= count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{count} lock waits never came"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `sql` in a write that holds its locks until `release` is passed.
    fn hold(
        store: &PostgresStore,
        sql: &[(&str, Option<&str>)],
        locked: &Barrier,
        release: &Barrier,
    ) {
        store
            .write(Instant::now(), |tx| {
                for (sql, param) in sql {
                    match param {
                        Some(param) => tx.execute(sql, &[param])?,
                        None => tx.execute(sql, &[])?,
                    };
                }
                locked.wait();
                release.wait();
                Ok(())
            })
            .unwrap();
    }

    fn alice(store: &PostgresStore) {
        store
            .write(Instant::now(), |tx| {
                tx.execute(
                    "INSERT INTO users (username, email, password_hash, date_joined) \
                     VALUES ('alice', 'alice@x.io', 'h', 0)",
                    &[],
                )
            })
            .unwrap();
    }

    #[test]
    fn two_imports_of_the_same_new_session_create_it_once() {
        let Some((store, _)) = testing::store("pg_admin_import_race") else {
            return;
        };
        alice(&store);
        let new = record(
            S1,
            "alice@x.io",
            vec![
                message(1, Sender::User, D0, None),
                message(2, Sender::Ai, D0 + 1, Some(1)),
            ],
        );
        let slices = [ImportSlice {
            owner: UserId(1),
            record: &new,
            messages: &new.messages,
        }];
        // Both imports pass their checks; the table's share lock keeps the first from
        // inserting until the second waits too (for the first's advisory lock, or,
        // without it, for the table).
        let (locked, release) = (Barrier::new(2), Barrier::new(2));
        let outcomes: Vec<SliceOutcome> = std::thread::scope(|scope| {
            scope.spawn(|| {
                hold(
                    &store,
                    &[("LOCK TABLE chat_sessions IN SHARE MODE", None)],
                    &locked,
                    &release,
                );
            });
            locked.wait();
            let imports: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| store.import_batch(&slices)))
                .collect();
            wait_for_waiters(&store, 2);
            release.wait();
            imports
                .into_iter()
                .map(|import| import.join().unwrap().unwrap().unwrap()[0])
                .collect()
        });
        let mut outcomes = outcomes;
        outcomes.sort_by_key(|outcome| !outcome.created);
        assert_eq!(
            outcomes,
            [
                SliceOutcome {
                    created: true,
                    added: 2,
                    present: 0
                },
                SliceOutcome {
                    created: false,
                    added: 0,
                    present: 2
                }
            ]
        );
        let exported = store.exported_session(sid(S1)).unwrap();
        assert_eq!(exported.messages.len(), 2);
        assert_eq!(store.counter_problems().unwrap(), []);
    }

    #[test]
    fn an_import_waits_for_a_post_and_refuses_to_append_behind_its_pending_turn() {
        let Some((store, _)) = testing::store("pg_admin_import_post") else {
            return;
        };
        alice(&store);
        let existing = record(
            S1,
            "alice@x.io",
            vec![
                message(1, Sender::User, D0, None),
                message(2, Sender::Ai, D0 + 1, Some(1)),
            ],
        );
        let first = [ImportSlice {
            owner: UserId(1),
            record: &existing,
            messages: &existing.messages,
        }];
        store.import_batch(&first).unwrap().unwrap();
        let mut more = existing.clone();
        more.messages.push(message(3, Sender::User, D0 + 2, None));
        let slices = [ImportSlice {
            owner: UserId(1),
            record: &more,
            messages: &more.messages,
        }];
        // A post, as the chat stores it: the session's row locked, the message inserted
        // with the next sequence number, the counters and the pending turn moved; not
        // committed until the import waits.
        let posted = message_id(4);
        let post = [
            (
                "SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE",
                Some(S1),
            ),
            (
                "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, created_at) \
                 VALUES ($1, '11111111-1111-4111-8111-111111111111', 3, 'user', 'text', 'posted', 0)",
                Some(posted.as_str()),
            ),
            (
                "UPDATE chat_sessions SET last_seq = 3, message_count = 3, turns_pending = 1, \
                 answered_seq = 2 WHERE id = $1",
                Some(S1),
            ),
        ];
        let (locked, release) = (Barrier::new(2), Barrier::new(2));
        let answer = std::thread::scope(|scope| {
            scope.spawn(|| hold(&store, &post, &locked, &release));
            locked.wait();
            let import = scope.spawn(|| store.import_batch(&slices));
            wait_for_waiters(&store, 1);
            release.wait();
            import.join().unwrap()
        });
        assert_eq!(
            answer.unwrap(),
            Err(ImportConflict {
                index: 0,
                problem: ImportProblem::TurnsPending { count: 1 }
            })
        );
        let exported = store.exported_session(sid(S1)).unwrap();
        assert_eq!(exported.messages.len(), 3);
        assert_eq!(exported.messages[2].content, "posted");
        assert_eq!(store.counter_problems().unwrap(), []);
    }

    #[test]
    fn two_imports_creating_the_same_owner_create_it_once() {
        let Some((store, _)) = testing::store("pg_admin_owner_race") else {
            return;
        };
        let owners = [ImportOwner {
            email: "erin@x.io".to_owned(),
            username_base: "erin".to_owned(),
        }];
        // Both look, find no such user, and wait at their insert for the table.
        let (locked, release) = (Barrier::new(2), Barrier::new(2));
        let answers: Vec<Vec<ImportedOwner>> = std::thread::scope(|scope| {
            scope.spawn(|| {
                hold(
                    &store,
                    &[("LOCK TABLE users IN SHARE MODE", None)],
                    &locked,
                    &release,
                );
            });
            locked.wait();
            let imports: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| store.create_import_owners(&owners, "h", time::from_micros(D0)))
                })
                .collect();
            wait_for_waiters(&store, 2);
            release.wait();
            imports
                .into_iter()
                .map(|import| import.join().unwrap().unwrap())
                .collect()
        });
        assert_eq!(answers[0][0].id, answers[1][0].id);
        let created = answers
            .iter()
            .filter(|answer| answer[0].created.is_some())
            .count();
        assert_eq!(created, 1);
        let users: i64 = store
            .read(|tx| Ok(tx.query_one("SELECT count(*) FROM users", &[])?.get(0)))
            .unwrap();
        assert_eq!(users, 1);
    }
}
