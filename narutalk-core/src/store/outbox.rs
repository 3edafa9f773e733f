//! The outbox rows both backends write (see the port's module doc): what a row is about,
//! and how often the writes that add rows forget old ones.
//!
//! Every [`PRUNE_EVERY`]th insert (by row id) also forgets the rows older than the
//! retention among the [`PRUNED_AT_ONCE`] lowest ids (ids grow with time, so those are
//! the oldest): the table stays within its retention with no sweeper, no index and no
//! commit of its own, and most inserts pay for no delete.

use serde_json::Value;

use crate::accounts::UserId;
use crate::chat::SessionId;
use crate::store::Audit;

/// How often an insert prunes: every this many rows.
pub(crate) const PRUNE_EVERY: i64 = 16;

/// Rows older than the retention that one prune deletes at most: more than
/// [`PRUNE_EVERY`], so that the table shrinks back after a burst.
pub(crate) const PRUNED_AT_ONCE: i64 = 4 * PRUNE_EVERY;

/// What a row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::MessageStored => "message_stored",
            Kind::SessionDeleted => "session_deleted",
            Kind::UserRevoked => "user_revoked",
            Kind::LoginEnded => "login_ended",
        }
    }
}

/// One outbox row to write.
pub(crate) struct Row<'a> {
    pub(crate) kind: Kind,
    pub(crate) session: Option<SessionId>,
    pub(crate) seq: Option<i64>,
    pub(crate) user: Option<UserId>,
    pub(crate) payload: Value,
    pub(crate) audit: &'a Audit,
}
