//! [`AdminStore`] on SQLite: sessions of every owner, whole sessions for an export, the
//! import of exported sessions (through the same message insert as a posted message, so
//! `seq`, `message_count` and `last_seq` move together), the owners an import creates,
//! the session counters check, and the statistics.

use std::collections::HashMap;
use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::accounts::{credentials_by_email, exists, user_by_id};
use super::chat::{
    SESSION_COLUMNS, StoredSession, TurnWrite, all_messages, insert_message, session_by_id,
    session_from_row,
};
use super::{SqliteStore, WriteTx};
use crate::accounts::{Role, User, UserId};
use crate::admin::{
    CategoryCount, DayCount, ExportedMessage, ExportedSession, OwnedSession, RoleCount,
    SessionQuery, UserActivity,
};
use crate::chat::{Category, ChatSession, NewMessage, SessionId, next_updated_at};
use crate::error::Error;
use crate::store::{
    AdminStore, Audit, CounterProblem, ImportConflict, ImportOwner, ImportProblem, ImportSlice,
    ImportedOwner, SliceOutcome, StatsCounts,
};
use crate::time;

impl AdminStore for SqliteStore {
    fn owned_sessions(&self, query: &SessionQuery) -> Result<Vec<OwnedSession>, Error> {
        self.read(|conn| {
            let mut owners = Owners::default();
            sessions(conn, query, Order::RecentlyUpdatedFirst)?
                .into_iter()
                .map(|session| {
                    Ok(OwnedSession {
                        owner_id: session.user_id,
                        owner_email: owners.email(conn, &session)?,
                        session,
                    })
                })
                .collect()
        })
    }

    fn exported_session(&self, id: SessionId) -> Result<ExportedSession, Error> {
        self.read(|conn| {
            let session = session_by_id(conn, id)?
                .map(|stored| stored.session)
                .ok_or(Error::NotFound)?;
            exported(conn, &mut Owners::default(), session)
        })
    }

    fn export_sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(u64, ExportedSession) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        self.read(|conn| {
            let sessions = sessions(conn, query, Order::OldestFirst)?;
            let total = u64::try_from(sessions.len()).unwrap_or(u64::MAX);
            let mut owners = Owners::default();
            for session in sessions {
                let record = exported(conn, &mut owners, session)?;
                if each(total, record).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn delete_any_session(&self, id: SessionId, audit: &Audit) -> Result<UserId, Error> {
        self.write(|tx| {
            let owner = session_by_id(tx, id)?
                .ok_or(Error::NotFound)?
                .session
                .user_id;
            tx.prepare_cached("DELETE FROM chat_sessions WHERE id = ?1")?
                .execute([id.to_string()])?;
            self.record_deletion(tx, id, owner, audit)?;
            Ok(owner)
        })
    }

    fn user_activity(&self, id: UserId) -> Result<UserActivity, Error> {
        self.read(|conn| {
            let (sessions, messages): (i64, i64) = conn
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(message_count), 0) FROM chat_sessions WHERE user_id = ?1",
                )?
                .query_row([id.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
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
        self.read(|conn| {
            let mut by_email: HashMap<&str, Option<UserId>> = HashMap::new();
            let mut owners = Vec::with_capacity(sessions.len());
            for (index, session) in sessions.iter().enumerate() {
                let owner = match by_email.get(session.owner_email.as_str()) {
                    Some(owner) => *owner,
                    None => {
                        let owner = id_by_email(conn, &session.owner_email)?;
                        by_email.insert(&session.owner_email, owner);
                        owner
                    }
                };
                if let Some(problem) = import_problem(conn, owner, session, &session.messages)? {
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
        self.write(|tx| {
            owners
                .iter()
                .map(|owner| {
                    Ok(match id_by_email(tx, &owner.email)? {
                        Some(id) => ImportedOwner {
                            email: owner.email.clone(),
                            id,
                            created: None,
                        },
                        None => {
                            let user = create_import_owner(tx, owner, password_hash, &joined)?;
                            ImportedOwner {
                                email: owner.email.clone(),
                                id: user.id,
                                created: Some(user),
                            }
                        }
                    })
                })
                .collect()
        })
    }

    fn import_batch(
        &self,
        slices: &[ImportSlice<'_>],
    ) -> Result<Result<Vec<SliceOutcome>, ImportConflict>, Error> {
        self.write(|tx| {
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
        self.read(|conn| {
            Ok(StatsCounts {
                by_role: role_counts(conn)?,
                by_category: category_counts(conn)?,
                per_day: messages_per_day(conn, first, last)?,
            })
        })
    }

    fn counter_problems(&self) -> Result<Vec<CounterProblem>, Error> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT s.id, s.message_count, s.last_seq, count(m.id), coalesce(max(m.seq), 0) \
                 FROM chat_sessions s LEFT JOIN chat_messages m ON m.session_id = s.id \
                 GROUP BY s.id \
                 HAVING s.message_count != count(m.id) OR s.last_seq != coalesce(max(m.seq), 0) \
                 ORDER BY s.id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(CounterProblem {
                    session: row.get(0)?,
                    message_count: row.get(1)?,
                    last_seq: row.get(2)?,
                    counted: row.get(3)?,
                    max_seq: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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

/// Every session matching `query`, whoever owns it.
fn sessions(
    conn: &Connection,
    query: &SessionQuery,
    order: Order,
) -> Result<Vec<ChatSession>, Error> {
    let order = match order {
        Order::RecentlyUpdatedFirst => "updated_at DESC, created_at DESC, rowid DESC",
        Order::OldestFirst => "created_at, rowid",
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM chat_sessions \
         WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR category = ?2) \
         AND (?3 IS NULL OR is_active = ?3) AND (?4 IS NULL OR updated_at >= ?4) \
         ORDER BY {order}"
    ))?;
    let rows = statement.query_map(
        params![
            query.owner.map(|id| id.0),
            query.category.map(Category::as_str),
            query.is_active,
            query.updated_since.as_ref().map(time::to_micros),
        ],
        |row| session_from_row(row, 0),
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Owners' emails by id, each read once.
#[derive(Default)]
struct Owners {
    emails: HashMap<UserId, String>,
}

impl Owners {
    fn email(&mut self, conn: &Connection, session: &ChatSession) -> Result<String, Error> {
        if let Some(email) = self.emails.get(&session.user_id) {
            return Ok(email.clone());
        }
        let user = user_by_id(conn, session.user_id)?.ok_or_else(|| {
            Error::internal(format!(
                "session {} belongs to user {}, who does not exist (run `narutalk db check`)",
                session.id, session.user_id
            ))
        })?;
        self.emails.insert(user.id, user.email.clone());
        Ok(user.email)
    }
}

/// A session in its export form, with its owner's email and every message.
fn exported(
    conn: &Connection,
    owners: &mut Owners,
    session: ChatSession,
) -> Result<ExportedSession, Error> {
    let owner_email = owners.email(conn, &session)?;
    let messages: Vec<ExportedMessage> = all_messages(conn, session.id)?
        .into_iter()
        .map(ExportedMessage::from)
        .collect();
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

/// Why `messages` of `record` cannot be imported for `owner`, if they cannot: the owner is
/// gone, the session belongs to someone else, a message id is used in another session, or
/// messages would be added to a session whose posted messages still wait for replies.
/// `None` is an owner the import has yet to create, to whom no session belongs.
fn import_problem(
    conn: &Connection,
    owner: Option<UserId>,
    record: &ExportedSession,
    messages: &[ExportedMessage],
) -> Result<Option<ImportProblem>, Error> {
    if let Some(owner) = owner
        && user_by_id(conn, owner)?.is_none()
    {
        return Ok(Some(ImportProblem::OwnerGone));
    }
    if let Some(existing) = session_by_id(conn, record.id)?
        && Some(existing.user_id) != owner
    {
        return Ok(Some(ImportProblem::SessionOfAnotherUser {
            owner: existing.user_id,
        }));
    }
    let mut statement =
        conn.prepare_cached("SELECT session_id FROM chat_messages WHERE id = ?1")?;
    let mut adds = false;
    for message in messages {
        let session_id: Option<String> = statement
            .query_row([message.id.to_string()], |row| row.get(0))
            .optional()?;
        match session_id {
            Some(session_id) if session_id != record.id.to_string() => {
                return Ok(Some(ImportProblem::MessageInAnotherSession {
                    message: message.id,
                    session: session_id,
                }));
            }
            Some(_) => {}
            None => adds = true,
        }
    }
    // The session's pending turns are its user messages after the last one answered: a
    // message appended behind them would be taken for one.
    if adds {
        let pending: Option<i64> = conn
            .prepare_cached("SELECT turns_pending FROM chat_sessions WHERE id = ?1")?
            .query_row([record.id.to_string()], |row| row.get(0))
            .optional()?;
        if let Some(pending) = pending.filter(|pending| *pending > 0) {
            return Ok(Some(ImportProblem::TurnsPending {
                count: u64::try_from(pending).unwrap_or_default(),
            }));
        }
    }
    Ok(None)
}

/// Imports a slice of a session's messages, creating the session first when it does not
/// exist. Messages already present (by id) are skipped; the others are appended in the
/// record's order with the session's next sequence numbers. Call [`import_problem`] in
/// the same transaction first.
fn import_slice(tx: &WriteTx<'_>, slice: &ImportSlice<'_>) -> Result<SliceOutcome, Error> {
    let record = slice.record;
    let mut outcome = SliceOutcome::default();
    let mut stored = match session_by_id(tx, record.id)? {
        Some(stored) => stored,
        None => {
            insert_exported_session(tx, slice.owner, record)?;
            outcome.created = true;
            session_by_id(tx, record.id)?.ok_or(Error::NotFound)?
        }
    };
    let updated_at = stored.session.updated_at.max(record.updated_at);
    let mut exists =
        tx.prepare_cached("SELECT 1 FROM chat_messages WHERE id = ?1 AND session_id = ?2")?;
    for message in slice.messages {
        if exists
            .query_row(
                params![message.id.to_string(), record.id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some()
        {
            outcome.present += 1;
            continue;
        }
        let inserted = insert_message(
            tx,
            &stored,
            &NewMessage {
                id: message.id,
                sender: message.sender,
                message_type: message.message_type,
                content: message.content.clone(),
                metadata: message.metadata.clone(),
                reply_to: message.reply_to,
            },
            &message.timestamp,
            TurnWrite::None,
        )?;
        stored = StoredSession {
            last_seq: inserted.seq,
            turns_pending: stored.turns_pending,
            answered_seq: stored.answered_seq,
            session: ChatSession {
                updated_at: next_updated_at(&stored.session.updated_at, &message.timestamp),
                message_count: stored.session.message_count + 1,
                ..stored.session
            },
        };
        outcome.added += 1;
    }
    // insert_message moved `updated_at` past each message's time; an import keeps the
    // session's own time instead.
    tx.prepare_cached("UPDATE chat_sessions SET updated_at = ?1 WHERE id = ?2")?
        .execute(params![time::to_micros(&updated_at), record.id.to_string()])?;
    Ok(outcome)
}

fn insert_exported_session(
    tx: &WriteTx<'_>,
    owner: UserId,
    record: &ExportedSession,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO chat_sessions (id, user_id, title, category, is_active, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        record.id.to_string(),
        owner.0,
        record.title,
        record.category.as_str(),
        record.is_active,
        time::to_micros(&record.created_at),
        time::to_micros(&record.updated_at),
    ])?;
    Ok(())
}

/// The id of the user with this email (already lower-cased, as stored), if any.
fn id_by_email(conn: &Connection, email: &str) -> Result<Option<UserId>, Error> {
    Ok(credentials_by_email(conn, email)?.map(|credentials| credentials.user.id))
}

/// Creates the owner of imported sessions (see [`AdminStore::create_import_owners`]).
fn create_import_owner(
    conn: &Connection,
    owner: &ImportOwner,
    password_hash: &str,
    joined: &DateTime<Utc>,
) -> Result<User, Error> {
    let taken = |name: &str| {
        exists(
            conn,
            "SELECT 1 FROM users WHERE username = ?1 AND id != ?2",
            name,
            0,
        )
    };
    let base = &owner.username_base;
    let mut username = base.clone();
    let mut suffix: u64 = 2;
    while taken(&username)? {
        username = format!("{base}{suffix}");
        suffix += 1;
    }
    conn.prepare_cached(
        "INSERT INTO users (username, email, password_hash, role, department, is_verified, date_joined) \
         VALUES (?1, ?2, ?3, ?4, '', 0, ?5)",
    )?
    .execute(params![
        username,
        owner.email,
        password_hash,
        Role::User.as_str(),
        time::to_micros(joined)
    ])?;
    let id = UserId(conn.last_insert_rowid());
    user_by_id(conn, id)?
        .ok_or_else(|| Error::internal(format!("user {id} vanished after its insert")))
}

/// One row per role, in the API's order, zeros included.
fn role_counts(conn: &Connection) -> Result<Vec<RoleCount>, Error> {
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
    let mut statement = conn.prepare_cached(
        "SELECT role, count(*), sum(is_verified), sum(is_active) FROM users GROUP BY role",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let role: String = row.get(0)?;
        let Some(count) = counts.iter_mut().find(|c| c.role.as_str() == role) else {
            // The CHECK constraint keeps other roles out; a damaged row is not counted.
            continue;
        };
        let [total, verified, active] = [row.get(1)?, row.get(2)?, row.get(3)?]
            .map(|n: i64| u64::try_from(n).unwrap_or_default());
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
fn category_counts(conn: &Connection) -> Result<Vec<CategoryCount>, Error> {
    let mut counts: Vec<CategoryCount> = Category::ALL
        .iter()
        .map(|&category| CategoryCount {
            category,
            sessions: 0,
            messages: 0,
        })
        .collect();
    let mut statement = conn.prepare_cached(
        "SELECT category, count(*), coalesce(sum(message_count), 0) FROM chat_sessions GROUP BY category",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let category: String = row.get(0)?;
        if let Some(count) = counts.iter_mut().find(|c| c.category.as_str() == category) {
            count.sessions = u64::try_from(row.get::<_, i64>(1)?).unwrap_or_default();
            count.messages = u64::try_from(row.get::<_, i64>(2)?).unwrap_or_default();
        }
    }
    Ok(counts)
}

/// Messages stored on each UTC day from `first` to `last`, both included, zeros included.
/// Reads every message of those days (there is no index on `created_at`).
fn messages_per_day(
    conn: &Connection,
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
    let mut statement = conn.prepare_cached(
        "SELECT (created_at - ?1) / ?3, count(*) FROM chat_messages \
         WHERE created_at >= ?1 AND created_at < ?2 GROUP BY 1",
    )?;
    let mut rows = statement.query(params![from, until, DAY_MICROS])?;
    while let Some(row) = rows.next()? {
        let index: i64 = row.get(0)?;
        let count: i64 = row.get(1)?;
        if let Some(day) = usize::try_from(index).ok().and_then(|i| days.get_mut(i)) {
            day.messages = u64::try_from(count).unwrap_or_default();
        }
    }
    Ok(days)
}
