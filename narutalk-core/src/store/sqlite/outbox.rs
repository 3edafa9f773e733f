//! The `outbox` table: the record of every change the outside must hear about, written
//! by the transaction that makes the change (see the port's module doc).
//!
//! Each insert also forgets a few rows older than the retention (at most
//! [`PRUNED_PER_INSERT`], oldest first, by the `created_at` index), so the table stays
//! within its retention with no sweeper of its own and no commit of its own.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde_json::Value;

use super::WriteTx;
use crate::accounts::UserId;
use crate::chat::SessionId;
use crate::error::{Error, InternalError};
use crate::store::Audit;
use crate::time;

/// Rows older than the retention that one insert deletes at most: more than one, so that
/// the table shrinks back after a burst.
const PRUNED_PER_INSERT: u32 = 4;

/// What a row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A message stored in a session.
    MessageStored,
    /// A session deleted.
    SessionDeleted,
    /// Every token of a user revoked (the payload's `cause` says why).
    UserRevoked,
    /// A login family ended.
    LoginEnded,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::MessageStored => "message_stored",
            Kind::SessionDeleted => "session_deleted",
            Kind::UserRevoked => "user_revoked",
            Kind::LoginEnded => "login_ended",
        }
    }
}

/// One outbox row to write.
pub(super) struct Row<'a> {
    pub(super) kind: Kind,
    pub(super) session: Option<SessionId>,
    pub(super) seq: Option<i64>,
    pub(super) user: Option<UserId>,
    pub(super) payload: Value,
    pub(super) audit: &'a Audit,
}

/// Writes `row` and forgets a few rows created before `keep_since`.
pub(super) fn record(
    tx: &WriteTx<'_>,
    row: &Row<'_>,
    keep_since: &DateTime<Utc>,
) -> Result<(), Error> {
    let payload = serde_json::to_string(&row.payload)
        .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
    tx.prepare_cached(
        "INSERT INTO outbox (kind, session_id, seq, user_id, actor, created_at, request_id, payload) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.kind.as_str(),
        row.session.map(|id| id.to_string()),
        row.seq,
        row.user.map(|id| id.0),
        row.audit.actor.as_text(),
        time::to_micros(&row.audit.at),
        row.audit.request_id.as_deref(),
        payload,
    ])?;
    tx.prepare_cached(
        "DELETE FROM outbox WHERE id IN \
         (SELECT id FROM outbox WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
    )?
    .execute(params![time::to_micros(keep_since), PRUNED_PER_INSERT])?;
    Ok(())
}
