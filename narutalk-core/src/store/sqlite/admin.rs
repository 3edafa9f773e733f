//! The SQL behind [`crate::admin`] on the chat tables: sessions of every owner, whole
//! sessions for an export, the import of exported sessions (through the same message insert
//! as a posted message, so `seq`, `message_count` and `last_seq` move together), the
//! session counters check, and the statistics.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::WriteTx;
use super::accounts::user_by_id;
use super::chat::{
    SESSION_COLUMNS, StoredSession, all_messages, insert_message, session_by_id, session_from_row,
};
use crate::accounts::UserId;
use crate::admin::{CategoryCount, DayCount, ExportedMessage, ExportedSession, SessionQuery};
use crate::chat::Category;
use crate::chat::{ChatSession, Message, NewMessage, SessionId, next_updated_at};
use crate::error::Error;
use crate::time;

/// How a list of sessions is ordered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Order {
    /// As the API lists them: most recently updated first, ties by newest creation.
    RecentlyUpdatedFirst,
    /// As an export writes them: oldest first, so that a later export only appends.
    OldestFirst,
}

/// Every session matching `query`, whoever owns it.
pub(crate) fn sessions(
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

/// The session with this id, whoever owns it.
pub(crate) fn session(conn: &Connection, id: SessionId) -> Result<Option<ChatSession>, Error> {
    Ok(session_by_id(conn, id)?.map(|stored| stored.session))
}

/// Every message of a session, in storage order.
pub(crate) fn messages(conn: &Connection, id: SessionId) -> Result<Vec<Message>, Error> {
    all_messages(conn, id)
}

/// Deletes a session (its messages and idempotency keys go with it); false when there was
/// none.
pub(crate) fn delete(tx: &WriteTx<'_>, id: SessionId) -> Result<bool, Error> {
    Ok(tx
        .prepare_cached("DELETE FROM chat_sessions WHERE id = ?1")?
        .execute([id.to_string()])?
        > 0)
}

/// A user's sessions and the messages in them.
pub(crate) fn activity(conn: &Connection, owner: UserId) -> Result<(u64, u64), Error> {
    let (sessions, messages): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(message_count), 0) FROM chat_sessions WHERE user_id = ?1",
        )?
        .query_row([owner.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok((
        u64::try_from(sessions).unwrap_or_default(),
        u64::try_from(messages).unwrap_or_default(),
    ))
}

/// Why `messages` of `record` cannot be imported for `owner`, if they cannot: the owner is
/// gone, the session belongs to someone else, or a message id is used in another session.
/// `None` is an owner the import has yet to create, to whom no session belongs.
pub(crate) fn import_conflict(
    conn: &Connection,
    owner: Option<UserId>,
    record: &ExportedSession,
    messages: &[ExportedMessage],
) -> Result<Option<String>, Error> {
    if let Some(owner) = owner
        && user_by_id(conn, owner)?.is_none()
    {
        return Ok(Some(format!(
            "no user {} any more (deleted during the import)",
            record.owner_email
        )));
    }
    if let Some(existing) = session_by_id(conn, record.id)?
        && Some(existing.user_id) != owner
    {
        return Ok(Some(format!(
            "session {} exists already and belongs to user {}, not to {}",
            record.id, existing.user_id, record.owner_email
        )));
    }
    let mut statement =
        conn.prepare_cached("SELECT session_id FROM chat_messages WHERE id = ?1")?;
    for message in messages {
        let session_id: Option<String> = statement
            .query_row([message.id.to_string()], |row| row.get(0))
            .optional()?;
        if let Some(session_id) = session_id
            && session_id != record.id.to_string()
        {
            return Ok(Some(format!(
                "message {} exists already in another session ({session_id})",
                message.id
            )));
        }
    }
    Ok(None)
}

/// What importing one slice of a session's messages did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SliceOutcome {
    /// The session row was created by this slice.
    pub created: bool,
    /// Messages inserted.
    pub added: u64,
    /// Messages skipped because a message with their id is in the session already.
    pub present: u64,
}

/// Imports `messages` (a slice of `record.messages`) into the session `record.id` of
/// `owner`, creating the session first when it does not exist. Messages already present
/// (by id) are skipped; the others are appended in the record's order with the session's
/// next sequence numbers, keeping their ids, timestamps and reply links. The session's
/// `updated_at` becomes the later of its own and the record's. Call
/// [`import_conflict`] in the same transaction first.
pub(crate) fn import_slice(
    tx: &WriteTx<'_>,
    owner: UserId,
    record: &ExportedSession,
    messages: &[ExportedMessage],
) -> Result<SliceOutcome, Error> {
    let mut outcome = SliceOutcome::default();
    let mut stored = match session_by_id(tx, record.id)? {
        Some(stored) => stored,
        None => {
            insert_exported_session(tx, owner, record)?;
            outcome.created = true;
            session_by_id(tx, record.id)?.ok_or(Error::NotFound)?
        }
    };
    let updated_at = stored.session.updated_at.max(record.updated_at);
    let mut exists =
        tx.prepare_cached("SELECT 1 FROM chat_messages WHERE id = ?1 AND session_id = ?2")?;
    for message in messages {
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
        )?;
        stored = StoredSession {
            last_seq: inserted.seq,
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

/// Sessions whose `message_count` or `last_seq` disagrees with their messages, one line
/// each.
pub(crate) fn counter_problems(conn: &Connection) -> Result<Vec<String>, Error> {
    let mut statement = conn.prepare(
        "SELECT s.id, s.message_count, s.last_seq, count(m.id), coalesce(max(m.seq), 0) \
         FROM chat_sessions s LEFT JOIN chat_messages m ON m.session_id = s.id \
         GROUP BY s.id \
         HAVING s.message_count != count(m.id) OR s.last_seq != coalesce(max(m.seq), 0) \
         ORDER BY s.id",
    )?;
    let rows = statement.query_map([], |row| {
        let id: String = row.get(0)?;
        let [message_count, last_seq, counted, max_seq]: [i64; 4] =
            [row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?];
        Ok(format!(
            "session {id}: message_count {message_count} and last_seq {last_seq}, \
             but it has {counted} message(s) and its last seq is {max_seq}"
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Sessions and messages per category, in the API's order, zeros included.
pub(crate) fn category_counts(conn: &Connection) -> Result<Vec<CategoryCount>, Error> {
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
pub(crate) fn messages_per_day(
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
