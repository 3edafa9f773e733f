//! [`ChatStore`] on SQLite: the `chat_sessions`, `chat_messages` and `idempotency_keys`
//! tables (and the `outbox` rows of their changes).
//!
//! Each session row carries its message count and last sequence number, updated in the
//! same transaction as every insert, so that a message's sequence number is the row's last
//! plus one and a page of the session list is two queries (count and page) however many
//! sessions it shows.
//!
//! The session row also carries its pending turns (migration V4 says how): their count,
//! the sequence number after which its user messages are the pending ones, and the lease.
//! Every post and every reply rewrites that row anyway, so a turn costs neither a row nor
//! a page of its own. Measured with `cargo load`'s `post-message`, a `pending_turns` table
//! (a row inserted with each post and deleted with its reply) cost about 13% of the posts
//! per second.

use std::time::Instant;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::outbox;
use super::{SqliteStore, WriteTx};
use crate::accounts::UserId;
use crate::ai::HistoryTurn;
use crate::chat::{
    Category, ChatSession, Message, MessageId, MessageType, NewMessage, PAGE_SIZE, Page,
    PageRequest, Sender, SessionDetail, SessionFilter, SessionId, SessionSummary, next_updated_at,
};
use crate::error::{Error, InternalError};
use crate::store::outbox::Kind;
use crate::store::{
    Audit, ChatStore, ClaimedTurn, Lease, NewSession, Posted, ReplayBounds, ReplyContext,
    SessionChange, StoredReply, UserPost,
};
use crate::time;

impl ChatStore for SqliteStore {
    fn create_session(
        &self,
        owner: UserId,
        session: &NewSession,
        asked_at: Instant,
    ) -> Result<ChatSession, Error> {
        let created_at = time::to_micros(&session.created_at);
        self.write_asked_at(asked_at, |tx| {
            tx.prepare_cached(
                "INSERT INTO chat_sessions (id, user_id, title, category, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![
                session.id.to_string(),
                owner.0,
                session.title,
                session.category.as_str(),
                created_at
            ])
            .map_err(|error| match error.sqlite_error_code() {
                // The owner's row is gone: the foreign key refuses the session.
                Some(rusqlite::ErrorCode::ConstraintViolation) => Error::NotFound,
                _ => error.into(),
            })?;
            Ok(owned_session(tx, owner, session.id)?.session)
        })
    }

    fn session_detail(&self, owner: UserId, id: SessionId) -> Result<SessionDetail, Error> {
        self.read(|conn| {
            let session = owned_session(conn, owner, id)?.session;
            let messages = all_messages(conn, id)?;
            Ok(SessionDetail { session, messages })
        })
    }

    fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, Error> {
        // In process, a lookup per session costs no more than one query for all.
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT last_seq FROM chat_sessions WHERE id = ?1 AND user_id = ?2",
            )?;
            sessions
                .iter()
                .map(|(owner, id)| {
                    Ok(statement
                        .query_row(params![id.to_string(), owner.0], |row| row.get(0))
                        .optional()?)
                })
                .collect()
        })
    }

    fn session_page(
        &self,
        owner: UserId,
        filter: SessionFilter,
        page: PageRequest,
    ) -> Result<Page<SessionSummary>, Error> {
        self.read(|conn| session_page(conn, owner, filter, page))
    }

    fn update_session(
        &self,
        owner: UserId,
        id: SessionId,
        change: &SessionChange,
        now: DateTime<Utc>,
        asked_at: Instant,
    ) -> Result<SessionDetail, Error> {
        self.write_asked_at(asked_at, |tx| {
            let session = owned_session(tx, owner, id)?;
            let updated_at = next_updated_at(&session.updated_at, &now);
            tx.prepare_cached(
                "UPDATE chat_sessions SET title = ?1, category = ?2, is_active = ?3, updated_at = ?4 WHERE id = ?5",
            )?
            .execute(params![
                change.title.as_deref().unwrap_or(&session.title),
                change.category.unwrap_or(session.category).as_str(),
                change.is_active.unwrap_or(session.is_active),
                time::to_micros(&updated_at),
                id.to_string()
            ])?;
            let session = owned_session(tx, owner, id)?.session;
            let messages = all_messages(tx, id)?;
            Ok(SessionDetail { session, messages })
        })
    }

    fn delete_session(
        &self,
        owner: UserId,
        id: SessionId,
        audit: &Audit,
        asked_at: Instant,
    ) -> Result<(), Error> {
        self.write_asked_at(asked_at, |tx| {
            match tx
                .prepare_cached("DELETE FROM chat_sessions WHERE id = ?1 AND user_id = ?2")?
                .execute(params![id.to_string(), owner.0])?
            {
                0 => Err(Error::NotFound),
                _ => self.record_deletion(tx, id, owner, audit),
            }
        })
    }

    fn message_page(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<MessageId>,
        page: PageRequest,
    ) -> Result<Option<Page<Message>>, Error> {
        self.read(|conn| {
            let session = owned_session(conn, owner, id)?;
            let after_seq = match after {
                None => 0,
                Some(after) => match message_seq(conn, id, after)? {
                    Some(seq) => seq,
                    None => return Ok(None),
                },
            };
            let count = if after_seq == 0 {
                session.message_count
            } else {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM chat_messages WHERE session_id = ?1 AND seq > ?2",
                    )?
                    .query_row(params![id.to_string(), after_seq], |row| row.get(0))?;
                u64::try_from(n).unwrap_or_default()
            };
            let (number, num_pages) = page.resolve(count)?;
            let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = statement.query_map(
                params![id.to_string(), after_seq, PAGE_SIZE, offset],
                |row| message_from_row(row, 0),
            )?;
            Ok(Some(Page {
                count,
                number,
                num_pages,
                results: rows.collect::<Result<Vec<_>, _>>()?,
            }))
        })
    }

    fn replay_bounds(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<MessageId>,
    ) -> Result<ReplayBounds, Error> {
        self.read(|conn| {
            let session = owned_session(conn, owner, id)?;
            let after_seq = match after {
                Some(after) => message_seq(conn, id, after)?,
                None => None,
            };
            Ok(ReplayBounds {
                after_seq,
                last_seq: session.last_seq,
            })
        })
    }

    fn messages_after_seq(
        &self,
        owner: UserId,
        id: SessionId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, Error> {
        self.read(|conn| {
            owned_session(conn, owner, id)?;
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![id.to_string(), after_seq, limit], |row| {
                message_from_row(row, 0)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn post_message(&self, post: &UserPost<'_>, asked_at: Instant) -> Result<Posted, Error> {
        self.write_asked_at(asked_at, |tx| {
            let session = owned_session(tx, post.owner, post.session)?;
            if let Some(key) = post.idempotency_key
                && let Some(replayed) = replay(tx, post.owner, post.session, key.key, &key.since)?
            {
                return Ok(replayed);
            }
            // A session with no turn pending starts its pending messages at this one, and
            // the post's lease claims it.
            let (turns, claimed) = match (session.turns_pending, post.lease) {
                (0, lease) => (TurnWrite::First { lease }, lease.is_some()),
                _ => (TurnWrite::Queued, false),
            };
            let message = insert_message(tx, &session, post.message, &post.now, turns)?;
            self.record_message(tx, &message, post.owner, post.audit)?;
            if let Some(key) = post.idempotency_key {
                remember_key(
                    tx,
                    post.owner,
                    post.session,
                    key.key,
                    message.id,
                    &post.now,
                    &key.since,
                )?;
            }
            Ok(Posted::Stored { message, claimed })
        })
    }

    fn reply_for(&self, message: MessageId) -> Result<Option<Message>, Error> {
        self.read(|conn| reply_for(conn, message))
    }

    fn reply_context(
        &self,
        session: SessionId,
        before_seq: i64,
        history: u32,
    ) -> Result<ReplyContext, Error> {
        self.read(|conn| {
            let category: String = conn
                .prepare_cached("SELECT category FROM chat_sessions WHERE id = ?1")?
                .query_row([session.to_string()], |row| row.get(0))
                .optional()?
                .ok_or(Error::NotFound)?;
            let mut statement = conn.prepare_cached(
                "SELECT sender, content FROM chat_messages \
                 WHERE session_id = ?1 AND seq < ?2 AND sender != 'system' ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = statement.query_map(
                params![session.to_string(), before_seq, history],
                |row| {
                    let sender: String = row.get(0)?;
                    Ok(HistoryTurn {
                        sender: sender.parse().unwrap_or(Sender::User),
                        content: row.get(1)?,
                    })
                },
            )?;
            let mut history = rows.collect::<Result<Vec<_>, _>>()?;
            history.reverse();
            Ok(ReplyContext {
                category: category.parse().unwrap_or_default(),
                history,
            })
        })
    }

    fn store_reply(
        &self,
        session: SessionId,
        answers_seq: i64,
        reply: &NewMessage,
        audit: &Audit,
        next: Option<&Lease>,
        asked_at: Instant,
    ) -> Result<StoredReply, Error> {
        self.write_asked_at(asked_at, |tx| {
            let stored = session_by_id(tx, session)?.ok_or(Error::NotFound)?;
            // A turn is answered once: one answered already has its reply stored.
            let answered = reply.reply_to.is_some() && answers_seq <= stored.answered_seq;
            let existing = match reply.reply_to {
                Some(reply_to) if answered => reply_for(tx, reply_to)?,
                _ => None,
            };
            let (reply, stored_now) = match existing {
                Some(existing) => (existing, false),
                None => {
                    let turns = if answered || reply.reply_to.is_none() {
                        TurnWrite::None
                    } else {
                        TurnWrite::Answer { seq: answers_seq }
                    };
                    let message = insert_message(tx, &stored, reply, &audit.at, turns)?;
                    self.record_message(tx, &message, stored.session.user_id, audit)?;
                    (message, true)
                }
            };
            let next = match next {
                Some(lease) => claim_turn(tx, session, lease)?,
                None => None,
            };
            Ok(StoredReply {
                reply,
                stored_now,
                next,
            })
        })
    }

    fn claim_turn(&self, session: SessionId, lease: &Lease) -> Result<Option<ClaimedTurn>, Error> {
        self.write(|tx| claim_turn(tx, session, lease))
    }

    fn void_leases(&self) -> Result<usize, Error> {
        self.write(|tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE chat_sessions SET turn_holder = NULL, turn_expires = NULL \
                     WHERE turn_holder IS NOT NULL",
                )?
                .execute([])?)
        })
    }

    fn pending_sessions(&self, now: DateTime<Utc>) -> Result<Vec<SessionId>, Error> {
        // A scan of the sessions (at a start only): an index on `turns_pending` would be
        // written by every post and every reply.
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT s.id FROM chat_sessions s WHERE s.turns_pending > 0 \
                 AND (s.turn_holder IS NULL OR s.turn_expires <= ?1) \
                 ORDER BY (SELECT m.created_at FROM chat_messages m \
                           WHERE m.session_id = s.id AND m.seq > s.answered_seq AND m.sender = 'user' \
                           ORDER BY m.seq LIMIT 1), s.id",
            )?;
            let rows = statement.query_map([time::to_micros(&now)], |row| {
                Ok(SessionId(uuid_column(row, 0)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

impl SqliteStore {
    /// The outbox row of a stored message.
    fn record_message(
        &self,
        tx: &WriteTx<'_>,
        message: &Message,
        owner: UserId,
        audit: &Audit,
    ) -> Result<(), Error> {
        self.record(
            tx,
            &outbox::Row {
                kind: Kind::MessageStored,
                session: Some(message.session_id),
                seq: Some(message.seq),
                user: Some(owner),
                payload: serde_json::json!({
                    "message": message.id.to_string(),
                    "sender": message.sender.as_str(),
                }),
                audit,
            },
        )
    }

    /// The outbox row of a deleted session.
    pub(super) fn record_deletion(
        &self,
        tx: &WriteTx<'_>,
        session: SessionId,
        owner: UserId,
        audit: &Audit,
    ) -> Result<(), Error> {
        self.record(
            tx,
            &outbox::Row {
                kind: Kind::SessionDeleted,
                session: Some(session),
                seq: None,
                user: Some(owner),
                payload: serde_json::json!({}),
                audit,
            },
        )
    }
}

/// Claims the session's oldest pending turn when its lease is free, expired or the
/// holder's own.
fn claim_turn(
    tx: &WriteTx<'_>,
    session: SessionId,
    lease: &Lease,
) -> Result<Option<ClaimedTurn>, Error> {
    let oldest: Option<(Option<String>, Option<i64>, Message)> = tx
        .prepare_cached(&format!(
            "SELECT s.turn_holder, s.turn_expires, {MESSAGE_COLUMNS_M} FROM chat_sessions s \
             JOIN chat_messages m ON m.session_id = s.id AND m.seq > s.answered_seq AND m.sender = 'user' \
             WHERE s.id = ?1 AND s.turns_pending > 0 ORDER BY m.seq LIMIT 1"
        ))?
        .query_row([session.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, message_from_row(row, 2)?))
        })
        .optional()?;
    let Some((holder, expires, message)) = oldest else {
        return Ok(None);
    };
    let free = match (holder, expires) {
        (None, _) => true,
        (Some(holder), _) if *holder == *lease.holder => true,
        (Some(_), expires) => expires.is_none_or(|at| at < time::to_micros(&lease.now)),
    };
    if !free {
        return Ok(None);
    }
    tx.prepare_cached(
        "UPDATE chat_sessions SET turn_holder = ?1, turn_expires = ?2 WHERE id = ?3",
    )?
    .execute(params![
        lease.holder.as_ref(),
        time::to_micros(&lease.until),
        session.to_string(),
    ])?;
    Ok(Some(ClaimedTurn { message }))
}

/// The session list's two queries (count, then the page joined to each session's last
/// message) on one connection.
fn session_page(
    conn: &Connection,
    owner: UserId,
    filter: SessionFilter,
    page: PageRequest,
) -> Result<Page<SessionSummary>, Error> {
    let category = filter.category.map(Category::as_str);
    let count: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM chat_sessions \
             WHERE user_id = ?1 AND (?2 IS NULL OR category = ?2) AND (?3 IS NULL OR is_active = ?3)",
        )?
        .query_row(params![owner.0, category, filter.is_active], |row| row.get(0))?;
    let count = u64::try_from(count).unwrap_or_default();
    let (number, num_pages) = page.resolve(count)?;
    let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS_S}, {MESSAGE_COLUMNS_M} FROM chat_sessions s \
         LEFT JOIN chat_messages m ON m.session_id = s.id AND m.seq = s.last_seq \
         WHERE s.user_id = ?1 AND (?2 IS NULL OR s.category = ?2) AND (?3 IS NULL OR s.is_active = ?3) \
         ORDER BY s.updated_at DESC, s.created_at DESC, s.rowid DESC LIMIT ?4 OFFSET ?5"
    ))?;
    let rows = statement.query_map(
        params![owner.0, category, filter.is_active, PAGE_SIZE, offset],
        |row| {
            let session = session_from_row(row, 0)?;
            let last_message = match row.get::<_, Option<String>>(SESSION_COLUMN_COUNT)? {
                Some(_) => Some(message_from_row(row, SESSION_COLUMN_COUNT)?),
                None => None,
            };
            Ok(SessionSummary {
                session,
                last_message,
            })
        },
    )?;
    let results = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        count,
        number,
        num_pages,
        results,
    })
}

/// What the insert of a message does to the turn columns of its session row.
pub(super) enum TurnWrite<'a> {
    /// Nothing: an import, or a reply to no pending turn.
    None,
    /// A posted message, the first pending turn of its session: the pending messages
    /// start at it, and `lease` (if any) claims it.
    First { lease: Option<&'a Lease> },
    /// A posted message behind pending turns.
    Queued,
    /// The reply to the pending turn `seq`: answered, and the lease freed.
    Answer { seq: i64 },
}

/// Inserts a message with the session's next sequence number and moves the session's
/// count, last sequence, `updated_at` and (per `turns`) pending turns, in the same
/// transaction: one statement for the row, which every post and reply rewrites anyway.
pub(super) fn insert_message(
    tx: &WriteTx<'_>,
    session: &StoredSession,
    new: &NewMessage,
    now: &DateTime<Utc>,
    turns: TurnWrite<'_>,
) -> Result<Message, Error> {
    let seq = session.last_seq + 1;
    let metadata = serde_json::to_string(&new.metadata)
        .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
    tx.prepare_cached(
        "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        new.id.to_string(),
        session.session.id.to_string(),
        seq,
        new.sender.as_str(),
        new.message_type.as_str(),
        new.content,
        metadata,
        time::to_micros(now),
        new.reply_to.map(|id| id.to_string()),
    ])?;
    let updated_at = time::to_micros(&next_updated_at(&session.session.updated_at, now));
    let id = session.session.id.to_string();
    const MOVE: &str = "UPDATE chat_sessions SET last_seq = ?1, message_count = message_count + 1, updated_at = ?2";
    match turns {
        TurnWrite::None => tx
            .prepare_cached(&format!("{MOVE} WHERE id = ?3"))?
            .execute(params![seq, updated_at, id])?,
        TurnWrite::First { lease } => tx
            .prepare_cached(&format!(
                "{MOVE}, turns_pending = 1, answered_seq = ?4, turn_holder = ?5, turn_expires = ?6 WHERE id = ?3"
            ))?
            .execute(params![
                seq,
                updated_at,
                id,
                seq - 1,
                lease.map(|lease| lease.holder.as_ref()),
                lease.map(|lease| time::to_micros(&lease.until)),
            ])?,
        TurnWrite::Queued => tx
            .prepare_cached(&format!(
                "{MOVE}, turns_pending = turns_pending + 1 WHERE id = ?3"
            ))?
            .execute(params![seq, updated_at, id])?,
        TurnWrite::Answer { seq: answered } => tx
            .prepare_cached(&format!(
                "{MOVE}, turns_pending = max(turns_pending - 1, 0), answered_seq = ?4, \
                 turn_holder = NULL, turn_expires = NULL WHERE id = ?3"
            ))?
            .execute(params![seq, updated_at, id, answered])?,
    };
    Ok(Message {
        id: new.id,
        session_id: session.session.id,
        seq,
        content: new.content.clone(),
        sender: new.sender,
        message_type: new.message_type,
        metadata: new.metadata.clone(),
        timestamp: *now,
        reply_to: new.reply_to,
    })
}

/// The first result of an idempotency key used by `owner` on the session since `since`.
fn replay(
    tx: &WriteTx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    since: &DateTime<Utc>,
) -> Result<Option<Posted>, Error> {
    let message_id: Option<String> = tx
        .prepare_cached(
            "SELECT message_id FROM idempotency_keys \
             WHERE session_id = ?1 AND user_id = ?2 AND key = ?3 AND created_at >= ?4",
        )?
        .query_row(
            params![id.to_string(), owner.0, key, time::to_micros(since)],
            |row| row.get(0),
        )
        .optional()?;
    let Some(message_id) = message_id else {
        return Ok(None);
    };
    let message = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE id = ?1"
        ))?
        .query_row([&message_id], |row| message_from_row(row, 0))
        .optional()?;
    let Some(message) = message else {
        return Ok(None);
    };
    let reply = reply_for(tx, message.id)?;
    Ok(Some(Posted::Replayed { message, reply }))
}

fn remember_key(
    tx: &WriteTx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    message_id: MessageId,
    now: &DateTime<Utc>,
    since: &DateTime<Utc>,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (session_id, user_id, key, message_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.to_string(),
        owner.0,
        key,
        message_id.to_string(),
        time::to_micros(now)
    ])?;
    // Forget a few expired keys each time one is remembered, so the table stays small
    // without a separate sweeper.
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE (session_id, user_id, key) IN \
         (SELECT session_id, user_id, key FROM idempotency_keys WHERE created_at < ?1 LIMIT 100)",
    )?
    .execute([time::to_micros(since)])?;
    Ok(())
}

fn reply_for(conn: &Connection, message_id: MessageId) -> Result<Option<Message>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE reply_to = ?1 ORDER BY seq LIMIT 1"
        ))?
        .query_row([message_id.to_string()], |row| message_from_row(row, 0))
        .optional()?)
}

fn message_seq(
    conn: &Connection,
    session: SessionId,
    message_id: MessageId,
) -> Result<Option<i64>, Error> {
    Ok(conn
        .prepare_cached("SELECT seq FROM chat_messages WHERE id = ?1 AND session_id = ?2")?
        .query_row(
            params![message_id.to_string(), session.to_string()],
            |row| row.get(0),
        )
        .optional()?)
}

/// Every message of a session, in storage order.
pub(super) fn all_messages(conn: &Connection, id: SessionId) -> Result<Vec<Message>, Error> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 ORDER BY seq"
    ))?;
    let rows = statement.query_map([id.to_string()], |row| message_from_row(row, 0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A session row with the bookkeeping the API does not show.
pub(super) struct StoredSession {
    pub(super) session: ChatSession,
    pub(super) last_seq: i64,
    /// Posted user messages whose reply is not stored yet.
    pub(super) turns_pending: i64,
    /// The pending turns are the user messages after this sequence number.
    pub(super) answered_seq: i64,
}

impl std::ops::Deref for StoredSession {
    type Target = ChatSession;

    fn deref(&self) -> &ChatSession {
        &self.session
    }
}

pub(super) const SESSION_COLUMNS: &str =
    "id, user_id, title, category, is_active, created_at, updated_at, message_count, last_seq";
const SESSION_COLUMNS_S: &str = "s.id, s.user_id, s.title, s.category, s.is_active, s.created_at, s.updated_at, s.message_count, s.last_seq";
const SESSION_COLUMN_COUNT: usize = 9;
const MESSAGE_COLUMNS: &str =
    "id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to";
const MESSAGE_COLUMNS_M: &str = "m.id, m.session_id, m.seq, m.sender, m.message_type, m.content, m.metadata, m.created_at, m.reply_to";

fn owned_session(conn: &Connection, owner: UserId, id: SessionId) -> Result<StoredSession, Error> {
    session_by_id(conn, id)?
        .filter(|stored| stored.session.user_id == owner)
        .ok_or(Error::NotFound)
}

/// The session with this id, whoever owns it.
pub(super) fn session_by_id(
    conn: &Connection,
    id: SessionId,
) -> Result<Option<StoredSession>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS}, turns_pending, answered_seq FROM chat_sessions WHERE id = ?1"
        ))?
        .query_row([id.to_string()], |row| {
            Ok(StoredSession {
                session: session_from_row(row, 0)?,
                last_seq: row.get(8)?,
                turns_pending: row.get(9)?,
                answered_seq: row.get(10)?,
            })
        })
        .optional()?)
}

fn uuid_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(index)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A session from the columns of [`SESSION_COLUMNS`] starting at `at`.
pub(super) fn session_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<ChatSession> {
    let category: String = row.get(at + 3)?;
    let message_count: i64 = row.get(at + 7)?;
    Ok(ChatSession {
        id: SessionId(uuid_column(row, at)?),
        user_id: UserId(row.get(at + 1)?),
        title: row.get(at + 2)?,
        category: category.parse().unwrap_or_default(),
        is_active: row.get(at + 4)?,
        created_at: time::from_micros(row.get(at + 5)?),
        updated_at: time::from_micros(row.get(at + 6)?),
        message_count: u64::try_from(message_count).unwrap_or_default(),
    })
}

fn message_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let sender: String = row.get(at + 3)?;
    let message_type: String = row.get(at + 4)?;
    let metadata: String = row.get(at + 6)?;
    let reply_to: Option<String> = row.get(at + 8)?;
    Ok(Message {
        id: MessageId(uuid_column(row, at)?),
        session_id: SessionId(uuid_column(row, at + 1)?),
        seq: row.get(at + 2)?,
        sender: sender.parse().unwrap_or(Sender::System),
        message_type: message_type.parse().unwrap_or(MessageType::Text),
        content: row.get(at + 5)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        timestamp: time::from_micros(row.get(at + 7)?),
        reply_to: reply_to
            .and_then(|id| Uuid::parse_str(&id).ok())
            .map(MessageId),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rusqlite::trace::{TraceEvent, TraceEventCodes};

    use super::*;
    use crate::Narutalk;
    use crate::accounts::{NewUser, Role};
    use crate::ai::{AiError, AiReply, AiRequest, Responder};
    use crate::chat::PostInput;
    use crate::config::Config;
    use crate::store::OpenMode;
    use crate::workers::tests::Latch;

    /// Answers after its latch opens: `first` with a reply too large for the pages the
    /// database has, anything else with `re: <message>`.
    struct Large(Latch);

    impl Responder for Large {
        fn name(&self) -> &str {
            "large"
        }

        fn respond(
            &self,
            request: &AiRequest,
            _: &mut dyn FnMut(&str),
        ) -> Result<AiReply, AiError> {
            self.0.wait();
            let content = match request.message.as_str() {
                "first" => "x".repeat(200_000),
                other => format!("re: {other}"),
            };
            Ok(AiReply {
                content,
                ..AiReply::default()
            })
        }
    }

    /// The turn engine keeps a reply the database refuses (here: full) and stores it
    /// again with backoff, before the session's next reply; meanwhile its waiters and a
    /// repeat of its post hear `Unavailable`, and once it is stored a repeat gets it.
    #[test]
    fn a_reply_the_database_refuses_is_kept_and_stored_before_the_next_one() {
        // Arrange: the first turn held at the AI.
        let dir = tempfile::tempdir().unwrap();
        let latch = Latch::default();
        let narutalk = Narutalk::open(&Config::for_tests(dir.path()), OpenMode::CreateIfMissing)
            .unwrap()
            .with_responder(Arc::new(Large(latch.clone())));
        let user = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: false,
            })
            .unwrap();
        let session = narutalk
            .chat()
            .create_session(user.id, "s", Category::General)
            .unwrap()
            .session
            .id;
        narutalk.start_turns().unwrap();
        let post = |content: &str, key: Option<&str>| {
            let mut input = PostInput::text(content, 10_000).unwrap();
            if let Some(key) = key {
                input = input.with_idempotency_key(key).unwrap();
            }
            narutalk.chat().post(user.id, session, Ok(input)).unwrap()
        };
        let first = post("first", Some("k1"));
        let sqlite = narutalk.sqlite().unwrap();

        // Act: the database is full when the reply comes.
        sqlite.limit_writer_pages(1).unwrap();
        latch.open();
        let refused = first.reply.wait();
        let repeat = post("first", Some("k1"));
        let repeat_reply = repeat.reply.wait();
        sqlite.limit_writer_pages(u32::MAX).unwrap();
        let second = post("second", None);
        let second_reply = second.reply.wait().unwrap();

        // Assert
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        assert!(repeat.repeated);
        assert!(
            matches!(repeat_reply, Err(Error::Unavailable(_))),
            "{repeat_reply:?}"
        );
        let messages = narutalk.chat().session(user.id, session).unwrap().messages;
        let kept = &messages[2];
        assert_eq!(
            (kept.reply_to, kept.content.len()),
            (Some(first.message.id), 200_000),
            "the kept reply is stored before the next one"
        );
        assert_eq!(messages[3], second_reply);
        assert_eq!(messages.len(), 4);
        let again = post("first", Some("k1"));
        assert_eq!(again.reply.wait().unwrap(), *kept);
        assert!(
            narutalk
                .turns_drained()
                .wait_timeout(Duration::from_secs(60))
        );
    }

    /// Counts the statements SQLite runs on `conn` while `f` runs.
    fn statements_run(conn: &mut Connection, f: impl FnOnce(&Connection)) -> usize {
        let counter = Arc::new(AtomicUsize::new(0));
        let seen = counter.clone();
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |event: TraceEvent<'_>| {
                if let TraceEvent::Stmt(..) = event {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }),
        )
        .unwrap();
        f(conn);
        conn.trace_v2(TraceEventCodes::empty(), None::<fn(TraceEvent<'_>)>)
            .unwrap();
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn a_page_of_the_session_list_is_two_queries_however_many_sessions_it_shows() {
        // Arrange: a user with 50 sessions, each with a message and its reply.
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
        let user = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: false,
            })
            .unwrap();
        for n in 0..50 {
            let session = narutalk
                .chat()
                .create_session(user.id, &format!("s{n}"), Category::General)
                .unwrap();
            narutalk
                .send_message(user.id, session.session.id, "hello")
                .unwrap();
        }
        let mut conn = Connection::open(&config.database).unwrap();

        // Act
        let mut pages = Vec::new();
        let first = statements_run(&mut conn, |conn| {
            pages.push(
                session_page(
                    conn,
                    user.id,
                    SessionFilter::default(),
                    PageRequest::Number(1),
                )
                .unwrap(),
            );
        });
        let last = statements_run(&mut conn, |conn| {
            pages.push(
                session_page(conn, user.id, SessionFilter::default(), PageRequest::Last).unwrap(),
            );
        });

        // Assert
        assert_eq!((first, last), (2, 2));
        assert_eq!(pages[0].results.len(), 20);
        assert_eq!(pages[1].results.len(), 10);
        assert!(
            pages
                .iter()
                .flat_map(|p| &p.results)
                .all(|s| s.last_message.is_some())
        );
    }
}
