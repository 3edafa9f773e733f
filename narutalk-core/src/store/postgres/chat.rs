//! [`ChatStore`] on PostgreSQL: the `chat_sessions`, `chat_messages` and
//! `idempotency_keys` tables (and the `outbox` rows of their changes), with the SQLite
//! backend's answers, rows and outbox rows.
//!
//! As on SQLite, each session row carries its message count, last sequence number and
//! pending turns (their count, the sequence number after which its user messages are the
//! pending ones, and the lease), rewritten in the transaction of every insert.
//!
//! **Ordering.** SQLite has one writer; here several servers write at once, so every write
//! to a session first locks the session's row (`SELECT ... FOR UPDATE`): the ownership
//! check, the idempotency key's lookup, the turn columns a post or a reply decides on and
//! the lease a claim looks at are then read after the previous writer of the session
//! committed, and stay true until this one commits. A message's sequence number comes from
//! the same row (`UPDATE ... SET last_seq = last_seq + 1 ... RETURNING last_seq`), never a
//! SEQUENCE, so the numbers of a session have no gap. A session deleted meanwhile is not
//! found once its lock is granted ([`Error::NotFound`]).
//!
//! **NUL.** PostgreSQL's `TEXT` cannot hold the NUL character, which SQLite stores. The
//! rules refuse it in every field a user sends (titles, content, metadata: see
//! `crate::fields`), and metadata is stored as JSON text, where it is escaped; but a
//! responder's reply may hold one. A message whose content holds a NUL is refused with the
//! field error SQLite's callers would give (`content`: `Null characters are not
//! allowed.`), rather than as an internal error.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use postgres::Row;
use uuid::Uuid;

use super::{PostgresStore, Tx};
use crate::accounts::UserId;
use crate::ai::HistoryTurn;
use crate::chat::{
    Category, ChatSession, Message, MessageId, MessageType, NewMessage, PAGE_SIZE, Page,
    PageRequest, Sender, SessionDetail, SessionFilter, SessionId, SessionSummary,
};
use crate::error::{Error, FieldErrors, InternalError};
use crate::fields;
use crate::store::outbox::{self, Kind};
use crate::store::{
    Audit, ChatStore, ClaimedTurn, Lease, NewSession, Posted, ReplayBounds, ReplyContext,
    SessionChange, StoredReply, UserPost,
};
use crate::time;

impl ChatStore for PostgresStore {
    fn create_session(
        &self,
        owner: UserId,
        session: &NewSession,
        asked_at: Instant,
    ) -> Result<ChatSession, Error> {
        let created_at = time::to_micros(&session.created_at);
        let id = session.id.to_string();
        self.write(asked_at, |tx| {
            tx.execute_raw(
                "INSERT INTO chat_sessions (id, user_id, title, category, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[
                    &id,
                    &owner.0,
                    &session.title,
                    &session.category.as_str(),
                    &created_at,
                ],
            )?
            .map_err(|error| match error.code() {
                // The owner's row is gone: the foreign key refuses the session (SQLite
                // answers any constraint violation so).
                Some(code) if code.code().starts_with("23") => Error::NotFound,
                _ => error.into(),
            })?;
            Ok(owned_session(tx, owner, session.id)?.session)
        })
    }

    fn session_detail(&self, owner: UserId, id: SessionId) -> Result<SessionDetail, Error> {
        self.read(|tx| {
            let session = owned_session(tx, owner, id)?.session;
            let messages = all_messages(tx, id)?;
            Ok(SessionDetail { session, messages })
        })
    }

    fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, Error> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every session (a server asks for all its open sockets').
        let ids: Vec<String> = sessions.iter().map(|(_, id)| id.to_string()).collect();
        let found: HashMap<String, (i64, i64)> = self.read(|tx| {
            tx.query(
                "SELECT id, user_id, last_seq FROM chat_sessions WHERE id = ANY($1)",
                &[&ids],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?))))
            .collect()
        })?;
        Ok(sessions
            .iter()
            .zip(&ids)
            .map(|((owner, _), id)| {
                found
                    .get(id)
                    .filter(|(user, _)| *user == owner.0)
                    .map(|(_, last_seq)| *last_seq)
            })
            .collect())
    }

    fn session_page(
        &self,
        owner: UserId,
        filter: SessionFilter,
        page: PageRequest,
    ) -> Result<Page<SessionSummary>, Error> {
        self.read(|tx| session_page(tx, owner, filter, page))
    }

    fn update_session(
        &self,
        owner: UserId,
        id: SessionId,
        change: &SessionChange,
        now: DateTime<Utc>,
        asked_at: Instant,
    ) -> Result<SessionDetail, Error> {
        self.write(asked_at, |tx| {
            let session = locked_session(tx, id)?
                .filter(|stored| stored.session.user_id == owner)
                .ok_or(Error::NotFound)?;
            let updated_at = crate::chat::next_updated_at(&session.updated_at, &now);
            tx.execute(
                "UPDATE chat_sessions SET title = $1, category = $2, is_active = $3, updated_at = $4 \
                 WHERE id = $5",
                &[
                    &change.title.as_deref().unwrap_or(&session.title),
                    &change.category.unwrap_or(session.category).as_str(),
                    &change.is_active.unwrap_or(session.is_active),
                    &time::to_micros(&updated_at),
                    &id.to_string(),
                ],
            )?;
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
        self.write(asked_at, |tx| {
            match tx.execute(
                "DELETE FROM chat_sessions WHERE id = $1 AND user_id = $2",
                &[&id.to_string(), &owner.0],
            )? {
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
        self.read(|tx| {
            let session = owned_session(tx, owner, id)?;
            let after_seq = match after {
                None => 0,
                Some(after) => match message_seq(tx, id, after)? {
                    Some(seq) => seq,
                    None => return Ok(None),
                },
            };
            let count = if after_seq == 0 {
                session.message_count
            } else {
                let n: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM chat_messages WHERE session_id = $1 AND seq > $2",
                        &[&id.to_string(), &after_seq],
                    )?
                    .get(0);
                u64::try_from(n).unwrap_or_default()
            };
            let (number, num_pages) = page.resolve(count)?;
            let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
            let rows = tx.query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3 OFFSET $4"
                ),
                &[&id.to_string(), &after_seq, &i64::from(PAGE_SIZE), &offset],
            )?;
            Ok(Some(Page {
                count,
                number,
                num_pages,
                results: rows
                    .iter()
                    .map(|row| message_from_row(row, 0))
                    .collect::<Result<Vec<_>, _>>()?,
            }))
        })
    }

    fn replay_bounds(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<MessageId>,
    ) -> Result<ReplayBounds, Error> {
        self.read(|tx| {
            let session = owned_session(tx, owner, id)?;
            let after_seq = match after {
                Some(after) => message_seq(tx, id, after)?,
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
        self.read(|tx| {
            owned_session(tx, owner, id)?;
            let rows = tx.query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3"
                ),
                &[&id.to_string(), &after_seq, &i64::from(limit)],
            )?;
            rows.iter().map(|row| message_from_row(row, 0)).collect()
        })
    }

    fn post_message(&self, post: &UserPost<'_>, asked_at: Instant) -> Result<Posted, Error> {
        self.write(asked_at, |tx| {
            // The session's lock orders its posts: a post with the same key waits here
            // for this one to commit, then finds its key.
            let session = locked_session(tx, post.session)?
                .filter(|stored| stored.session.user_id == post.owner)
                .ok_or(Error::NotFound)?;
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
        self.read(|tx| reply_for(tx, message))
    }

    fn reply_context(
        &self,
        session: SessionId,
        before_seq: i64,
        history: u32,
    ) -> Result<ReplyContext, Error> {
        self.read(|tx| {
            let category: String = tx
                .query_opt(
                    "SELECT category FROM chat_sessions WHERE id = $1",
                    &[&session.to_string()],
                )?
                .ok_or(Error::NotFound)?
                .get(0);
            let rows = tx.query(
                "SELECT sender, content FROM chat_messages \
                 WHERE session_id = $1 AND seq < $2 AND sender != 'system' ORDER BY seq DESC LIMIT $3",
                &[&session.to_string(), &before_seq, &i64::from(history)],
            )?;
            let mut history = rows
                .iter()
                .map(|row| {
                    let sender: String = row.try_get(0)?;
                    Ok(HistoryTurn {
                        sender: sender.parse().unwrap_or(Sender::User),
                        content: row.try_get(1)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
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
        self.write(asked_at, |tx| {
            // The session's lock: another process storing a reply to the same turn waits
            // here, then sees the turn answered.
            let stored = locked_session(tx, session)?.ok_or(Error::NotFound)?;
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
                Some(lease) => claim_locked_turn(tx, session, lease)?,
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
        self.write(Instant::now(), |tx| {
            // The session's lock: of two processes claiming at once, the second sees the
            // first's lease.
            if locked_session(tx, session)?.is_none() {
                return Ok(None);
            }
            claim_locked_turn(tx, session, lease)
        })
    }

    fn void_leases(&self) -> Result<usize, Error> {
        self.write(Instant::now(), |tx| {
            let freed = tx.execute(
                "UPDATE chat_sessions SET turn_holder = NULL, turn_expires = NULL \
                 WHERE turn_holder IS NOT NULL",
                &[],
            )?;
            Ok(usize::try_from(freed).unwrap_or(usize::MAX))
        })
    }

    fn pending_sessions(&self, now: DateTime<Utc>) -> Result<Vec<SessionId>, Error> {
        // The partial index on `turns_pending > 0` finds the sessions. SQLite sorts NULL
        // first and compares text bytewise: so does this order.
        self.read(|tx| {
            let rows = tx.query(
                "SELECT s.id FROM chat_sessions s WHERE s.turns_pending > 0 \
                 AND (s.turn_holder IS NULL OR s.turn_expires <= $1) \
                 ORDER BY (SELECT m.created_at FROM chat_messages m \
                           WHERE m.session_id = s.id AND m.seq > s.answered_seq AND m.sender = 'user' \
                           ORDER BY m.seq LIMIT 1) NULLS FIRST, s.id COLLATE \"C\"",
                &[&time::to_micros(&now)],
            )?;
            rows.iter()
                .map(|row| Ok(SessionId(uuid_column(row, 0)?)))
                .collect()
        })
    }
}

impl PostgresStore {
    /// The outbox row of a stored message.
    fn record_message(
        &self,
        tx: &mut Tx<'_>,
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
        tx: &mut Tx<'_>,
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
/// holder's own. The caller holds the session row's lock.
fn claim_locked_turn(
    tx: &mut Tx<'_>,
    session: SessionId,
    lease: &Lease,
) -> Result<Option<ClaimedTurn>, Error> {
    let oldest = tx.query_opt(
        &format!(
            "SELECT s.turn_holder, s.turn_expires, {MESSAGE_COLUMNS_M} FROM chat_sessions s \
             JOIN chat_messages m ON m.session_id = s.id AND m.seq > s.answered_seq AND m.sender = 'user' \
             WHERE s.id = $1 AND s.turns_pending > 0 ORDER BY m.seq LIMIT 1"
        ),
        &[&session.to_string()],
    )?;
    let Some(oldest) = oldest else {
        return Ok(None);
    };
    let holder: Option<String> = oldest.try_get(0)?;
    let expires: Option<i64> = oldest.try_get(1)?;
    let message = message_from_row(&oldest, 2)?;
    let free = match (holder, expires) {
        (None, _) => true,
        (Some(holder), _) if *holder == *lease.holder => true,
        (Some(_), expires) => expires.is_none_or(|at| at < time::to_micros(&lease.now)),
    };
    if !free {
        return Ok(None);
    }
    tx.execute(
        "UPDATE chat_sessions SET turn_holder = $1, turn_expires = $2 WHERE id = $3",
        &[
            &lease.holder.as_ref(),
            &time::to_micros(&lease.until),
            &session.to_string(),
        ],
    )?;
    Ok(Some(ClaimedTurn { message }))
}

/// The session list's two queries (count, then the page joined to each session's last
/// message) in one snapshot. Ties of equal times go to the later insert, as SQLite's
/// rowid does.
fn session_page(
    tx: &mut Tx<'_>,
    owner: UserId,
    filter: SessionFilter,
    page: PageRequest,
) -> Result<Page<SessionSummary>, Error> {
    let category = filter.category.map(Category::as_str);
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM chat_sessions \
             WHERE user_id = $1 AND ($2::TEXT IS NULL OR category = $2) \
             AND ($3::BOOLEAN IS NULL OR is_active = $3)",
            &[&owner.0, &category, &filter.is_active],
        )?
        .get(0);
    let count = u64::try_from(count).unwrap_or_default();
    let (number, num_pages) = page.resolve(count)?;
    let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
    let rows = tx.query(
        &format!(
            "SELECT {SESSION_COLUMNS_S}, {MESSAGE_COLUMNS_M} FROM chat_sessions s \
             LEFT JOIN chat_messages m ON m.session_id = s.id AND m.seq = s.last_seq \
             WHERE s.user_id = $1 AND ($2::TEXT IS NULL OR s.category = $2) \
             AND ($3::BOOLEAN IS NULL OR s.is_active = $3) \
             ORDER BY s.updated_at DESC, s.created_at DESC, s.insert_order DESC LIMIT $4 OFFSET $5"
        ),
        &[
            &owner.0,
            &category,
            &filter.is_active,
            &i64::from(PAGE_SIZE),
            &offset,
        ],
    )?;
    let results = rows
        .iter()
        .map(|row| {
            let session = session_from_row(row, 0)?;
            let last_message = match row.try_get::<_, Option<String>>(SESSION_COLUMN_COUNT)? {
                Some(_) => Some(message_from_row(row, SESSION_COLUMN_COUNT)?),
                None => None,
            };
            Ok(SessionSummary {
                session,
                last_message,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
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

/// Moves the session's count, last sequence number, `updated_at` and (per `turns`)
/// pending turns, then inserts the message with the sequence number the row answers. The
/// caller holds the session row's lock (the `UPDATE` would take it otherwise), so `session`
/// is the row as it is. A content holding a NUL is refused first ([`Error::Invalid`]).
pub(super) fn insert_message(
    tx: &mut Tx<'_>,
    session: &StoredSession,
    new: &NewMessage,
    now: &DateTime<Utc>,
    turns: TurnWrite<'_>,
) -> Result<Message, Error> {
    if new.content.contains('\0') {
        return Err(FieldErrors::single("content", fields::NUL_NOT_ALLOWED).into());
    }
    let metadata = serde_json::to_string(&new.metadata)
        .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
    let id = session.session.id.to_string();
    let now_micros = time::to_micros(now);
    // `updated_at` is `next_updated_at(updated_at, now)`: now, but at least a microsecond
    // after the previous value.
    const MOVE: &str = "UPDATE chat_sessions SET last_seq = last_seq + 1, \
                        message_count = message_count + 1, updated_at = GREATEST($2, updated_at + 1)";
    let row = match turns {
        TurnWrite::None => tx.query_opt(
            &format!("{MOVE} WHERE id = $1 RETURNING last_seq"),
            &[&id, &now_micros],
        )?,
        TurnWrite::First { lease } => tx.query_opt(
            &format!(
                "{MOVE}, turns_pending = 1, answered_seq = last_seq, turn_holder = $3, \
                 turn_expires = $4 WHERE id = $1 RETURNING last_seq"
            ),
            &[
                &id,
                &now_micros,
                &lease.map(|lease| lease.holder.as_ref()),
                &lease.map(|lease| time::to_micros(&lease.until)),
            ],
        )?,
        TurnWrite::Queued => tx.query_opt(
            &format!("{MOVE}, turns_pending = turns_pending + 1 WHERE id = $1 RETURNING last_seq"),
            &[&id, &now_micros],
        )?,
        TurnWrite::Answer { seq: answered } => tx.query_opt(
            &format!(
                "{MOVE}, turns_pending = GREATEST(turns_pending - 1, 0), answered_seq = $3, \
                 turn_holder = NULL, turn_expires = NULL WHERE id = $1 RETURNING last_seq"
            ),
            &[&id, &now_micros, &answered],
        )?,
    };
    let seq: i64 = row.ok_or(Error::NotFound)?.try_get(0)?;
    tx.execute(
        "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &new.id.to_string(),
            &id,
            &seq,
            &new.sender.as_str(),
            &new.message_type.as_str(),
            &new.content,
            &metadata,
            &now_micros,
            &new.reply_to.map(|id| id.to_string()),
        ],
    )?;
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
    tx: &mut Tx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    since: &DateTime<Utc>,
) -> Result<Option<Posted>, Error> {
    let message_id = tx.query_opt(
        "SELECT message_id FROM idempotency_keys \
         WHERE session_id = $1 AND user_id = $2 AND key = $3 AND created_at >= $4",
        &[&id.to_string(), &owner.0, &key, &time::to_micros(since)],
    )?;
    let Some(message_id) = message_id else {
        return Ok(None);
    };
    let message_id: String = message_id.try_get(0)?;
    let message = tx.query_opt(
        &format!("SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE id = $1"),
        &[&message_id],
    )?;
    let Some(message) = message else {
        return Ok(None);
    };
    let message = message_from_row(&message, 0)?;
    let reply = reply_for(tx, message.id)?;
    Ok(Some(Posted::Replayed { message, reply }))
}

/// Remembers the key for the message (replacing a use of it older than `since`, as
/// SQLite's `INSERT OR REPLACE`), and forgets a few expired keys.
fn remember_key(
    tx: &mut Tx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    message_id: MessageId,
    now: &DateTime<Utc>,
    since: &DateTime<Utc>,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO idempotency_keys (session_id, user_id, key, message_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, user_id, key) \
         DO UPDATE SET message_id = EXCLUDED.message_id, created_at = EXCLUDED.created_at",
        &[
            &id.to_string(),
            &owner.0,
            &key,
            &message_id.to_string(),
            &time::to_micros(now),
        ],
    )?;
    // Forget a few expired keys each time one is remembered, so the table stays small
    // without a separate sweeper. Rows another writer is forgetting (or replacing) are
    // skipped rather than waited for: two posts never wait on each other here.
    tx.execute(
        "DELETE FROM idempotency_keys WHERE (session_id, user_id, key) IN \
         (SELECT session_id, user_id, key FROM idempotency_keys WHERE created_at < $1 \
          LIMIT 100 FOR UPDATE SKIP LOCKED)",
        &[&time::to_micros(since)],
    )?;
    Ok(())
}

fn reply_for(tx: &mut Tx<'_>, message_id: MessageId) -> Result<Option<Message>, Error> {
    tx.query_opt(
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE reply_to = $1 ORDER BY seq LIMIT 1"
        ),
        &[&message_id.to_string()],
    )?
    .map(|row| message_from_row(&row, 0))
    .transpose()
}

fn message_seq(
    tx: &mut Tx<'_>,
    session: SessionId,
    message_id: MessageId,
) -> Result<Option<i64>, Error> {
    tx.query_opt(
        "SELECT seq FROM chat_messages WHERE id = $1 AND session_id = $2",
        &[&message_id.to_string(), &session.to_string()],
    )?
    .map(|row| -> Result<i64, Error> { Ok(row.try_get(0)?) })
    .transpose()
}

/// Every message of a session, in storage order.
pub(super) fn all_messages(tx: &mut Tx<'_>, id: SessionId) -> Result<Vec<Message>, Error> {
    tx.query(
        &format!("SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 ORDER BY seq"),
        &[&id.to_string()],
    )?
    .iter()
    .map(|row| message_from_row(row, 0))
    .collect()
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

fn owned_session(tx: &mut Tx<'_>, owner: UserId, id: SessionId) -> Result<StoredSession, Error> {
    session_by_id(tx, id)?
        .filter(|stored| stored.session.user_id == owner)
        .ok_or(Error::NotFound)
}

/// The session with this id, whoever owns it.
pub(super) fn session_by_id(
    tx: &mut Tx<'_>,
    id: SessionId,
) -> Result<Option<StoredSession>, Error> {
    tx.query_opt(
        &format!(
            "SELECT {SESSION_COLUMNS}, turns_pending, answered_seq FROM chat_sessions WHERE id = $1"
        ),
        &[&id.to_string()],
    )?
    .map(|row| stored_session_from_row(&row))
    .transpose()
}

/// The session with this id, whoever owns it, its row locked until the transaction ends:
/// what a write reads before it decides. `None` when it does not exist (or was deleted
/// while this waited for the lock).
pub(super) fn locked_session(
    tx: &mut Tx<'_>,
    id: SessionId,
) -> Result<Option<StoredSession>, Error> {
    tx.query_opt(
        &format!(
            "SELECT {SESSION_COLUMNS}, turns_pending, answered_seq FROM chat_sessions \
             WHERE id = $1 FOR UPDATE"
        ),
        &[&id.to_string()],
    )?
    .map(|row| stored_session_from_row(&row))
    .transpose()
}

fn stored_session_from_row(row: &Row) -> Result<StoredSession, Error> {
    Ok(StoredSession {
        session: session_from_row(row, 0)?,
        last_seq: row.try_get(8)?,
        turns_pending: row.try_get(9)?,
        answered_seq: row.try_get(10)?,
    })
}

fn uuid_column(row: &Row, index: usize) -> Result<Uuid, Error> {
    let text: String = row.try_get(index)?;
    Uuid::parse_str(&text).map_err(|e| Error::Internal(InternalError::from_error(e)))
}

/// A session from the columns of [`SESSION_COLUMNS`] starting at `at`.
pub(super) fn session_from_row(row: &Row, at: usize) -> Result<ChatSession, Error> {
    let category: String = row.try_get(at + 3)?;
    let message_count: i64 = row.try_get(at + 7)?;
    Ok(ChatSession {
        id: SessionId(uuid_column(row, at)?),
        user_id: UserId(row.try_get(at + 1)?),
        title: row.try_get(at + 2)?,
        category: category.parse().unwrap_or_default(),
        is_active: row.try_get(at + 4)?,
        created_at: time::from_micros(row.try_get(at + 5)?),
        updated_at: time::from_micros(row.try_get(at + 6)?),
        message_count: u64::try_from(message_count).unwrap_or_default(),
    })
}

fn message_from_row(row: &Row, at: usize) -> Result<Message, Error> {
    let sender: String = row.try_get(at + 3)?;
    let message_type: String = row.try_get(at + 4)?;
    let metadata: String = row.try_get(at + 6)?;
    let reply_to: Option<String> = row.try_get(at + 8)?;
    Ok(Message {
        id: MessageId(uuid_column(row, at)?),
        session_id: SessionId(uuid_column(row, at + 1)?),
        seq: row.try_get(at + 2)?,
        sender: sender.parse().unwrap_or(Sender::System),
        message_type: message_type.parse().unwrap_or(MessageType::Text),
        content: row.try_get(at + 5)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        timestamp: time::from_micros(row.try_get(at + 7)?),
        reply_to: reply_to
            .and_then(|id| Uuid::parse_str(&id).ok())
            .map(MessageId),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use postgres::{Client, NoTls};

    use super::super::testing;
    use super::*;
    use crate::accounts::Role;
    use crate::config::Synchronous;
    use crate::events::Actor;
    use crate::fields::JsonObject;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AccountStore, IdempotencyKey, NewAccount, OpenMode};

    /// A fixed time: `base + micros`.
    fn at(micros: i64) -> DateTime<Utc> {
        time::from_micros(1_750_000_000_000_000 + micros)
    }

    fn sid(n: u128) -> SessionId {
        SessionId(Uuid::from_u128(
            0x5e55_0000_0000_4000_8000_0000_0000_0000 + n,
        ))
    }

    fn mid(n: u128) -> MessageId {
        MessageId(Uuid::from_u128(
            0x0e55_a9e0_0000_4000_8000_0000_0000_0000 + n,
        ))
    }

    fn text(
        id: MessageId,
        sender: Sender,
        content: &str,
        reply_to: Option<MessageId>,
    ) -> NewMessage {
        let mut metadata = JsonObject::new();
        metadata.insert("n".into(), serde_json::json!(content.len()));
        NewMessage {
            id,
            sender,
            message_type: MessageType::Text,
            content: content.into(),
            metadata,
            reply_to,
        }
    }

    fn audit(actor: Actor, micros: i64) -> Audit {
        Audit {
            actor,
            at: at(micros),
            request_id: Some(Arc::from(format!("req-{micros}"))),
        }
    }

    fn lease(holder: &str, now: i64, until: i64) -> Lease {
        Lease {
            holder: Arc::from(holder),
            now: at(now),
            until: at(until),
        }
    }

    fn new_session(id: SessionId, title: &str, category: Category, micros: i64) -> NewSession {
        NewSession {
            id,
            title: title.into(),
            category,
            created_at: at(micros),
        }
    }

    /// A user posts `message` on `session` (with `key` since `since`, and `lease`).
    fn post(
        store: &dyn ChatStore,
        owner: UserId,
        session: SessionId,
        message: &NewMessage,
        key: Option<(&str, i64)>,
        lease: Option<&Lease>,
        micros: i64,
    ) -> Result<Posted, Error> {
        let audit = audit(Actor::User(owner), micros);
        store.post_message(
            &UserPost {
                owner,
                session,
                message,
                idempotency_key: key.map(|(key, since)| IdempotencyKey {
                    key,
                    since: at(since),
                }),
                now: at(micros),
                audit: &audit,
                lease,
            },
            Instant::now(),
        )
    }

    fn reply(
        store: &dyn ChatStore,
        session: SessionId,
        answers_seq: i64,
        message: &NewMessage,
        next: Option<&Lease>,
        micros: i64,
    ) -> Result<StoredReply, Error> {
        store.store_reply(
            session,
            answers_seq,
            message,
            &audit(Actor::Engine, micros),
            next,
            Instant::now(),
        )
    }

    fn pg_user(store: &PostgresStore, name: &str) -> UserId {
        store
            .write(Instant::now(), |tx| {
                Ok(UserId(
                    tx.query_one(
                        "INSERT INTO users (username, email, password_hash, date_joined) \
                         VALUES ($1, $1 || '@example.com', 'h', 0) RETURNING id",
                        &[&name],
                    )?
                    .get(0),
                ))
            })
            .unwrap()
    }

    fn sqlite_user(store: &SqliteStore, name: &str) -> UserId {
        store
            .insert_user(&NewAccount {
                username: name.into(),
                email: format!("{name}@example.com"),
                password_hash: "h".into(),
                role: Role::User,
                department: String::new(),
                is_verified: false,
                date_joined: at(0),
            })
            .unwrap()
            .unwrap()
            .id
    }

    /// The scenario both backends run: every answer, as text.
    fn scenario(store: &dyn ChatStore, owner: UserId, other: UserId) -> Vec<String> {
        let mut answers = Vec::new();
        let mut say = |answer: String| answers.push(answer);
        let (s1, s2, s3, gone) = (sid(1), sid(2), sid(3), sid(99));
        let user = |n: u128, content: &str| text(mid(n), Sender::User, content, None);
        let ai =
            |n: u128, content: &str, to: u128| text(mid(n), Sender::Ai, content, Some(mid(to)));
        let (a, b) = (lease("a", 100, 1_000), lease("b", 200, 2_000));
        let b_late = lease("b", 5_000, 9_000);

        // Sessions.
        say(format!(
            "{:?}",
            store.create_session(
                owner,
                &new_session(s1, "First", Category::General, 10),
                Instant::now()
            )
        ));
        say(format!(
            "{:?}",
            store.create_session(
                owner,
                &new_session(s2, "Second", Category::Medical, 10),
                Instant::now()
            )
        ));
        say(format!(
            "{:?}",
            store.create_session(
                other,
                &new_session(s3, "Other's", Category::Emergency, 20),
                Instant::now()
            )
        ));
        say(format!(
            "{:?}",
            store.create_session(
                UserId(999),
                &new_session(sid(4), "Nobody's", Category::General, 20),
                Instant::now()
            )
        ));
        // Posts, keys, claims and replies on s1.
        say(format!(
            "{:?}",
            post(store, owner, s1, &user(1, "hello"), None, Some(&a), 100)
        ));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(2, "keyed"),
                Some(("k1", 0)),
                None,
                110
            )
        ));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(3, "keyed again"),
                Some(("k1", 0)),
                None,
                120
            )
        ));
        say(format!(
            "{:?}",
            post(store, other, s1, &user(4, "not mine"), None, None, 130)
        ));
        say(format!(
            "{:?}",
            post(store, owner, gone, &user(5, "nowhere"), None, None, 130)
        ));
        say(format!("{:?}", store.claim_turn(s1, &b)));
        say(format!("{:?}", store.claim_turn(s1, &a)));
        say(format!("{:?}", store.reply_context(s1, 1, 10)));
        say(format!(
            "{:?}",
            reply(store, s1, 1, &ai(6, "re: hello", 1), Some(&a), 300)
        ));
        say(format!(
            "{:?}",
            reply(store, s1, 1, &ai(7, "re: hello twice", 1), None, 310)
        ));
        say(format!("{:?}", store.claim_turn(s1, &b)));
        say(format!("{:?}", store.claim_turn(s1, &b_late)));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(8, "keyed"),
                Some(("k1", 0)),
                None,
                400
            )
        ));
        say(format!("{:?}", store.pending_sessions(crate::time::now())));
        say(format!("{:?}", store.reply_context(s1, 3, 2)));
        say(format!(
            "{:?}",
            reply(store, s1, 3, &ai(9, "re: keyed", 2), None, 500)
        ));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(10, "keyed"),
                Some(("k1", 0)),
                None,
                510
            )
        ));
        say(format!("{:?}", store.pending_sessions(crate::time::now())));
        // The key's use expired: a new message, then its repeats.
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(11, "keyed later"),
                Some(("k1", 200)),
                None,
                600
            )
        ));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(12, "keyed later"),
                Some(("k1", 200)),
                None,
                610
            )
        ));
        say(format!(
            "{:?}",
            post(
                store,
                owner,
                s1,
                &user(13, "other key"),
                Some(("k2", 200)),
                None,
                620
            )
        ));
        // s2: two turns, a void, a claim, a system message to no turn.
        say(format!(
            "{:?}",
            post(store, owner, s2, &user(20, "medical"), None, Some(&b), 700)
        ));
        say(format!(
            "{:?}",
            post(store, owner, s2, &user(21, "more"), None, Some(&b), 710)
        ));
        say(format!("{:?}", store.void_leases()));
        say(format!("{:?}", store.void_leases()));
        say(format!("{:?}", store.pending_sessions(crate::time::now())));
        say(format!("{:?}", store.claim_turn(s2, &a)));
        say(format!("{:?}", store.claim_turn(gone, &a)));
        say(format!(
            "{:?}",
            reply(
                store,
                s2,
                0,
                &text(mid(22), Sender::System, "note", None),
                None,
                720
            )
        ));
        say(format!("{:?}", store.reply_for(mid(1))));
        say(format!("{:?}", store.reply_for(mid(20))));
        // Reads.
        say(format!(
            "{:?}",
            store.session_page(owner, SessionFilter::default(), PageRequest::Number(1))
        ));
        say(format!(
            "{:?}",
            store.session_page(
                owner,
                SessionFilter {
                    category: Some(Category::Medical),
                    is_active: None
                },
                PageRequest::Last
            )
        ));
        say(format!(
            "{:?}",
            store.session_page(
                owner,
                SessionFilter {
                    category: None,
                    is_active: Some(false)
                },
                PageRequest::Number(1)
            )
        ));
        say(format!(
            "{:?}",
            store.session_page(owner, SessionFilter::default(), PageRequest::Number(2))
        ));
        say(format!(
            "{:?}",
            store.message_page(owner, s1, None, PageRequest::Number(1))
        ));
        say(format!(
            "{:?}",
            store.message_page(owner, s1, Some(mid(2)), PageRequest::Last)
        ));
        say(format!(
            "{:?}",
            store.message_page(owner, s1, Some(mid(20)), PageRequest::Number(1))
        ));
        say(format!(
            "{:?}",
            store.message_page(owner, s1, Some(mid(1)), PageRequest::Number(5))
        ));
        say(format!(
            "{:?}",
            store.message_page(other, s1, None, PageRequest::Number(1))
        ));
        say(format!("{:?}", store.replay_bounds(owner, s1, None)));
        say(format!(
            "{:?}",
            store.replay_bounds(owner, s1, Some(mid(6)))
        ));
        say(format!(
            "{:?}",
            store.replay_bounds(owner, s1, Some(mid(20)))
        ));
        say(format!("{:?}", store.replay_bounds(other, s1, None)));
        say(format!("{:?}", store.messages_after_seq(owner, s1, 1, 2)));
        say(format!("{:?}", store.messages_after_seq(owner, s1, 0, 100)));
        say(format!("{:?}", store.messages_after_seq(other, s1, 0, 100)));
        // Updates: a time before `updated_at` still moves it forward.
        let rename = SessionChange {
            title: Some("Renamed".into()),
            category: Some(Category::Consultation),
            is_active: Some(false),
        };
        say(format!(
            "{:?}",
            store.update_session(owner, s1, &rename, at(50), Instant::now())
        ));
        say(format!(
            "{:?}",
            store.update_session(
                owner,
                s2,
                &SessionChange::default(),
                at(800),
                Instant::now()
            )
        ));
        say(format!(
            "{:?}",
            store.update_session(other, s1, &rename, at(900), Instant::now())
        ));
        say(format!(
            "{:?}",
            store.session_page(
                owner,
                SessionFilter {
                    category: None,
                    is_active: Some(false)
                },
                PageRequest::Number(1)
            )
        ));
        say(format!("{:?}", store.session_detail(owner, s1)));
        say(format!("{:?}", store.session_detail(owner, s3)));
        say(format!(
            "{:?}",
            store.last_seqs(&[(owner, s1), (other, s1), (other, s3), (owner, gone)])
        ));
        // Many sessions created at the same time: the later insert first.
        for n in 0..25 {
            say(format!(
                "{:?}",
                store.create_session(
                    owner,
                    &new_session(sid(200 - n), &format!("tie {n}"), Category::General, 1_000),
                    Instant::now()
                )
            ));
        }
        say(format!(
            "{:?}",
            store.session_page(owner, SessionFilter::default(), PageRequest::Number(1))
        ));
        say(format!(
            "{:?}",
            store.session_page(owner, SessionFilter::default(), PageRequest::Last)
        ));
        // Deletion.
        say(format!(
            "{:?}",
            store.delete_session(other, s2, &audit(Actor::User(other), 1_100), Instant::now())
        ));
        say(format!(
            "{:?}",
            store.delete_session(owner, s2, &audit(Actor::User(owner), 1_100), Instant::now())
        ));
        say(format!(
            "{:?}",
            store.delete_session(owner, s2, &audit(Actor::User(owner), 1_110), Instant::now())
        ));
        say(format!(
            "{:?}",
            reply(store, s2, 3, &ai(23, "late", 21), None, 1_200)
        ));
        say(format!("{:?}", store.claim_turn(s2, &a)));
        say(format!("{:?}", store.reply_context(s2, 3, 10)));
        say(format!("{:?}", store.reply_for(mid(20))));
        say(format!("{:?}", store.pending_sessions(crate::time::now())));
        say(format!(
            "{:?}",
            store.session_page(owner, SessionFilter::default(), PageRequest::Last)
        ));
        answers
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

    const OUTBOX: &str = "SELECT kind, session_id, seq, user_id, actor, created_at, request_id, payload FROM outbox ORDER BY id";

    fn pg_outbox(store: &PostgresStore) -> Vec<OutboxRow> {
        store
            .read(|tx| {
                Ok(tx
                    .query(OUTBOX, &[])?
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            r.get(1),
                            r.get(2),
                            r.get(3),
                            r.get(4),
                            r.get(5),
                            r.get(6),
                            r.get(7),
                        )
                    })
                    .collect())
            })
            .unwrap()
    }

    fn sqlite_outbox(store: &SqliteStore) -> Vec<OutboxRow> {
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        let mut statement = conn.prepare(OUTBOX).unwrap();
        statement
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_chat_scenario_answers_and_records_as_on_sqlite() {
        let Some((pg, _)) = testing::store("pg_chat_scenario") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(
            &dir.path().join("db.sqlite3"),
            Synchronous::Full,
            OpenMode::CreateIfMissing,
        )
        .unwrap();
        let (pg_owner, pg_other) = (pg_user(&pg, "kim"), pg_user(&pg, "lee"));
        let (sqlite_owner, sqlite_other) =
            (sqlite_user(&sqlite, "kim"), sqlite_user(&sqlite, "lee"));
        assert_eq!((pg_owner, pg_other), (sqlite_owner, sqlite_other));

        let expected = scenario(&sqlite, sqlite_owner, sqlite_other);
        let answers = scenario(&pg, pg_owner, pg_other);

        assert!(expected.len() > 80, "{}", expected.len());
        for (n, (expected, answer)) in expected.iter().zip(&answers).enumerate() {
            assert_eq!(answer, expected, "answer {n}");
        }
        assert_eq!(answers.len(), expected.len());
        assert!(
            !expected.iter().any(|a| a.contains("Internal")),
            "{expected:#?}"
        );
        let outbox = sqlite_outbox(&sqlite);
        assert_eq!(outbox.len(), 10, "{outbox:?}");
        assert_eq!(pg_outbox(&pg), outbox);
    }

    /// Waits until `n` backends of the database wait for a lock.
    fn wait_for_lock_waiters(url: &str, n: i64) {
        let mut monitor = Client::connect(url, NoTls).unwrap();
        let started = Instant::now();
        loop {
            let waiting: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting >= n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{waiting} waiters"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `calls` at once while another transaction holds the session row's lock, and
    /// releases it (running `in_lock` in that transaction first) once every call waits.
    fn while_locked<T: Send>(
        url: &str,
        session: SessionId,
        in_lock: &str,
        calls: Vec<Box<dyn FnOnce() -> T + Send + '_>>,
    ) -> Vec<T> {
        let mut holder = Client::connect(url, NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.execute(
            "SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE",
            &[&session.to_string()],
        )
        .unwrap();
        if !in_lock.is_empty() {
            tx.execute(in_lock, &[&session.to_string()]).unwrap();
        }
        let waiters = i64::try_from(calls.len()).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = calls.into_iter().map(|call| scope.spawn(call)).collect();
            wait_for_lock_waiters(url, waiters);
            tx.commit().unwrap();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn pg_session(store: &PostgresStore, owner: UserId, id: SessionId) {
        store
            .create_session(
                owner,
                &new_session(id, "s", Category::General, 0),
                Instant::now(),
            )
            .unwrap();
    }

    #[test]
    fn concurrent_posts_to_one_session_get_every_sequence_number_once() {
        let Some((store, _)) = testing::store("pg_chat_seq") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        let start = Barrier::new(8);
        let seqs: Vec<i64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u128)
                .map(|t| {
                    let (store, start) = (&store, &start);
                    scope.spawn(move || {
                        start.wait();
                        (0..25u128)
                            .map(|n| {
                                let message = text(mid(t * 100 + n), Sender::User, "m", None);
                                match post(store, owner, sid(1), &message, None, None, 10).unwrap()
                                {
                                    Posted::Stored { message, .. } => message.seq,
                                    replayed => panic!("{replayed:?}"),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=200).collect::<Vec<_>>());
        let row: (i64, i64, i64, i64) = store
            .read(|tx| {
                let r = tx.query_one(
                    "SELECT message_count, last_seq, turns_pending, answered_seq FROM chat_sessions",
                    &[],
                )?;
                Ok((r.get(0), r.get(1), r.get(2), r.get(3)))
            })
            .unwrap();
        assert_eq!(row, (200, 200, 200, 0));
        let stored: Vec<i64> = store
            .read(|tx| {
                Ok(tx
                    .query("SELECT seq FROM chat_messages ORDER BY seq", &[])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })
            .unwrap();
        assert_eq!(stored, sorted);
    }

    #[test]
    fn two_servers_posting_one_idempotency_key_at_once_store_one_message() {
        let Some((store, url)) = testing::store("pg_chat_key_race") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        let (first, second) = (
            text(mid(1), Sender::User, "once", None),
            text(mid(2), Sender::User, "once", None),
        );
        let store = &store;
        let answers = while_locked(
            &url,
            sid(1),
            "",
            vec![
                Box::new(|| post(store, owner, sid(1), &first, Some(("k", 0)), None, 10).unwrap()),
                Box::new(|| post(store, owner, sid(1), &second, Some(("k", 0)), None, 10).unwrap()),
            ],
        );
        let stored: Vec<&Message> = answers
            .iter()
            .filter_map(|a| match a {
                Posted::Stored { message, .. } => Some(message),
                Posted::Replayed { .. } => None,
            })
            .collect();
        assert_eq!(stored.len(), 1, "{answers:?}");
        let repeat = answers
            .iter()
            .find(|a| matches!(a, Posted::Replayed { .. }))
            .unwrap();
        assert_eq!(
            *repeat,
            Posted::Replayed {
                message: stored[0].clone(),
                reply: None
            }
        );
        let detail = store.session_detail(owner, sid(1)).unwrap();
        assert_eq!(detail.messages, [stored[0].clone()]);
    }

    #[test]
    fn two_servers_claiming_one_turn_at_once_get_it_once() {
        let Some((store, url)) = testing::store("pg_chat_claim_race") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        post(
            &store,
            owner,
            sid(1),
            &text(mid(1), Sender::User, "hi", None),
            None,
            None,
            10,
        )
        .unwrap();
        let (a, b) = (lease("a", 100, 1_000), lease("b", 100, 1_000));
        let store = &store;
        let claims = while_locked(
            &url,
            sid(1),
            "",
            vec![
                Box::new(|| store.claim_turn(sid(1), &a).unwrap()),
                Box::new(|| store.claim_turn(sid(1), &b).unwrap()),
            ],
        );
        assert_eq!(
            claims.iter().filter(|c| c.is_some()).count(),
            1,
            "{claims:?}"
        );
        let holder: String = store
            .read(|tx| {
                Ok(tx
                    .query_one("SELECT turn_holder FROM chat_sessions", &[])?
                    .get(0))
            })
            .unwrap();
        let winner = if claims[0].is_some() { "a" } else { "b" };
        assert_eq!(holder, winner);
    }

    #[test]
    fn two_servers_storing_one_turns_reply_at_once_store_it_once() {
        let Some((store, url)) = testing::store("pg_chat_reply_race") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        post(
            &store,
            owner,
            sid(1),
            &text(mid(1), Sender::User, "hi", None),
            None,
            None,
            10,
        )
        .unwrap();
        let (first, second) = (
            text(mid(2), Sender::Ai, "one", Some(mid(1))),
            text(mid(3), Sender::Ai, "two", Some(mid(1))),
        );
        let store = &store;
        let stored = while_locked(
            &url,
            sid(1),
            "",
            vec![
                Box::new(|| reply(store, sid(1), 1, &first, None, 20).unwrap()),
                Box::new(|| reply(store, sid(1), 1, &second, None, 20).unwrap()),
            ],
        );
        assert_eq!(
            stored.iter().filter(|s| s.stored_now).count(),
            1,
            "{stored:?}"
        );
        assert_eq!(stored[0].reply, stored[1].reply);
        assert_eq!(
            store.session_detail(owner, sid(1)).unwrap().messages.len(),
            2
        );
        assert_eq!(store.pending_sessions(crate::time::now()).unwrap(), []);
    }

    #[test]
    fn writes_to_a_session_deleted_meanwhile_answer_not_found() {
        let Some((store, url)) = testing::store("pg_chat_deleted_meanwhile") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        post(
            &store,
            owner,
            sid(1),
            &text(mid(1), Sender::User, "hi", None),
            None,
            None,
            10,
        )
        .unwrap();
        let store = &store;
        let answers = while_locked(
            &url,
            sid(1),
            "DELETE FROM chat_sessions WHERE id = $1",
            vec![
                Box::new(|| {
                    post(
                        store,
                        owner,
                        sid(1),
                        &text(mid(2), Sender::User, "x", None),
                        Some(("k", 0)),
                        None,
                        20,
                    )
                    .map(drop)
                }),
                Box::new(|| {
                    reply(
                        store,
                        sid(1),
                        1,
                        &text(mid(3), Sender::Ai, "y", Some(mid(1))),
                        Some(&lease("a", 0, 9)),
                        20,
                    )
                    .map(drop)
                }),
                Box::new(|| {
                    store
                        .update_session(
                            owner,
                            sid(1),
                            &SessionChange::default(),
                            at(30),
                            Instant::now(),
                        )
                        .map(drop)
                }),
                Box::new(|| {
                    store
                        .claim_turn(sid(1), &lease("b", 0, 9))
                        .map(|c| assert!(c.is_none()))
                }),
            ],
        );
        for (n, answer) in answers.iter().enumerate().take(3) {
            assert!(matches!(answer, Err(Error::NotFound)), "{n}: {answer:?}");
        }
        assert!(answers[3].is_ok(), "{:?}", answers[3]);
    }

    #[test]
    fn a_session_for_a_user_deleted_meanwhile_is_not_found() {
        let Some((store, url)) = testing::store("pg_chat_owner_deleted") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        let mut holder = Client::connect(&url, NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.execute("DELETE FROM users WHERE id = $1", &[&owner.0])
            .unwrap();
        let created = std::thread::scope(|scope| {
            let creating = scope.spawn(|| {
                store.create_session(
                    owner,
                    &new_session(sid(1), "s", Category::General, 0),
                    Instant::now(),
                )
            });
            wait_for_lock_waiters(&url, 1);
            tx.commit().unwrap();
            creating.join().unwrap()
        });
        assert!(matches!(created, Err(Error::NotFound)), "{created:?}");
        let again = store.create_session(
            owner,
            &new_session(sid(2), "s", Category::General, 0),
            Instant::now(),
        );
        assert!(matches!(again, Err(Error::NotFound)), "{again:?}");
    }

    #[test]
    fn a_reply_with_a_nul_is_refused_as_a_field_error_and_its_turn_stays_pending() {
        let Some((store, _)) = testing::store("pg_chat_nul") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        pg_session(&store, owner, sid(1));
        post(
            &store,
            owner,
            sid(1),
            &text(mid(1), Sender::User, "hi", None),
            None,
            None,
            10,
        )
        .unwrap();
        let refused = reply(
            &store,
            sid(1),
            1,
            &text(mid(2), Sender::Ai, "a\0b", Some(mid(1))),
            None,
            20,
        );
        match refused {
            Err(Error::Invalid(errors)) => {
                assert_eq!(errors.get("content"), [fields::NUL_NOT_ALLOWED])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.pending_sessions(crate::time::now()).unwrap(),
            [sid(1)]
        );
        assert_eq!(
            store.session_detail(owner, sid(1)).unwrap().messages.len(),
            1
        );
    }

    /// The SQLite backend's page test, without its statement count (a page here is the
    /// same two statements in one snapshot).
    #[test]
    fn a_page_of_the_session_list_shows_each_sessions_last_message() {
        let Some((store, _)) = testing::store("pg_chat_page") else {
            return;
        };
        let owner = pg_user(&store, "kim");
        for n in 0..50u128 {
            store
                .create_session(
                    owner,
                    &new_session(sid(n), &format!("s{n}"), Category::General, 0),
                    Instant::now(),
                )
                .unwrap();
            let message = text(mid(n * 2), Sender::User, "hello", None);
            post(&store, owner, sid(n), &message, None, None, 10).unwrap();
            reply(
                &store,
                sid(n),
                1,
                &text(mid(n * 2 + 1), Sender::Ai, "hi", Some(mid(n * 2))),
                None,
                20,
            )
            .unwrap();
        }
        let first = store
            .session_page(owner, SessionFilter::default(), PageRequest::Number(1))
            .unwrap();
        let last = store
            .session_page(owner, SessionFilter::default(), PageRequest::Last)
            .unwrap();
        assert_eq!((first.count, first.num_pages, last.number), (50, 3, 3));
        assert_eq!((first.results.len(), last.results.len()), (20, 10));
        let shown: HashSet<SessionId> = first
            .results
            .iter()
            .chain(&last.results)
            .map(|s| s.session.id)
            .collect();
        assert_eq!(shown.len(), 30);
        assert!(first.results.iter().chain(&last.results).all(|s| {
            s.last_message
                .as_ref()
                .is_some_and(|m| m.seq == 2 && m.sender == Sender::Ai)
        }));
    }
}
