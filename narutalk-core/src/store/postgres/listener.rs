//! [`Feed`] on PostgreSQL: what other servers store reaches this one through `LISTEN` /
//! `NOTIFY`.
//!
//! Every outbox row is written together with a `pg_notify` on [`CHANNEL`], in the
//! change's own transaction, so a notification is delivered only once its change has
//! committed (PostgreSQL delivers them in commit order, and never those of a rollback).
//! Its payload is small, never the message itself: the writing store's random origin (a
//! store drops its own, which its rules publish already), the row's kind, and the
//! session, sequence number, user, message id or family it is about.
//!
//! One thread per following store holds a connection of its own, outside the pool (a
//! listening connection cannot be lent out). Notifications are lost while it is
//! disconnected: after every (re)connection, and every [`RESYNC_EVERY`] in case the
//! connection died without a word, the follower hears [`Notice::MayHaveMissed`] and
//! re-reads what it keeps track of. So a lost notification costs a delay, never a message.
//!
//! [`Feed`]: crate::store::Feed

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::PostgresStore;
use crate::accounts::UserId;
use crate::chat::{MessageId, SessionId};
use crate::events::Revocation;
use crate::store::outbox::{Kind, Row};
use crate::store::{Feed, FeedGuard, Notice};
use crate::tokens::Family;

/// The channel every store notifies and listens on.
pub(super) const CHANNEL: &str = "narutalk_events";

/// How often a follower hears [`Notice::MayHaveMissed`] even when nothing was lost.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// How long the listening thread waits for a notification before it looks whether it
/// must stop or resync.
const TICK: Duration = Duration::from_millis(250);

/// How long the thread waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

impl Feed for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    fn follow(&self, sink: Box<dyn Fn(Notice) + Send + Sync>) -> Option<FeedGuard> {
        let stop = Arc::new(AtomicBool::new(false));
        let listening = Listening {
            config: self.config.clone(),
            origin: self.origin.clone(),
            stop: stop.clone(),
            sink,
        };
        let thread = std::thread::Builder::new()
            .name("narutalk-pg-listen".into())
            .spawn(move || listening.run())
            .ok()?;
        Some(FeedGuard::new(move || {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }))
    }
}

/// The payload of the notification that goes with outbox row `row`, written by a store
/// of origin `origin`: tab-separated, `-` for a field the row has not.
pub(super) fn payload(origin: &str, row: &Row<'_>) -> String {
    let text = |key: &str| {
        row.payload
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let extra = match row.kind {
        Kind::MessageStored => format!("{}\t{}", text("message"), text("sender")),
        Kind::UserRevoked => text("cause"),
        Kind::LoginEnded => text("family"),
        Kind::SessionDeleted => "-".to_owned(),
    };
    format!(
        "{origin}\t{}\t{}\t{}\t{}\t{extra}",
        row.kind.as_str(),
        row.session
            .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        row.seq
            .map_or_else(|| "-".to_owned(), |seq| seq.to_string()),
        row.user
            .map_or_else(|| "-".to_owned(), |id| id.0.to_string()),
    )
}

/// The notice of a payload written by another store than `own`; `None` for this store's
/// own, and for a payload this build cannot read (a newer build's kind).
pub(super) fn notice(own: &str, payload: &str) -> Option<Notice> {
    let fields: Vec<&str> = payload.split('\t').collect();
    let [origin, kind, session, seq, user, rest @ ..] = fields.as_slice() else {
        return None;
    };
    if *origin == own {
        return None;
    }
    let session = || SessionId::from_str(session).ok();
    let user = || user.parse().ok().map(UserId);
    match *kind {
        "message_stored" => Some(Notice::MessageStored {
            session: session()?,
            seq: seq.parse().ok()?,
            id: MessageId::from_str(rest.first()?).ok()?,
            from_user: *rest.get(1)? == "user",
        }),
        "session_deleted" => Some(Notice::SessionDeleted {
            session: session()?,
            owner: user()?,
        }),
        "user_revoked" => Some(Notice::UserRevoked {
            user: user()?,
            cause: match *rest.first()? {
                "deactivated" => Revocation::Deactivated,
                "deleted" => Revocation::Deleted,
                _ => Revocation::TokensRevoked,
            },
        }),
        "login_ended" => Some(Notice::LoginEnded {
            user: user()?,
            family: Family::parse(rest.first()?)?,
        }),
        _ => None,
    }
}

/// The listening thread's state.
struct Listening {
    config: postgres::Config,
    origin: Arc<str>,
    stop: Arc<AtomicBool>,
    sink: Box<dyn Fn(Notice) + Send + Sync>,
}

impl Listening {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Listens until stopped, connecting again whenever the connection is lost.
    fn run(self) {
        while !self.stopping() {
            match self.connect() {
                Ok(client) => {
                    (self.sink)(Notice::MayHaveMissed);
                    self.listen(client);
                }
                Err(error) => {
                    tracing::warn!(
                        target: "narutalk::store",
                        error = %super::describe(&error),
                        "cannot listen for other servers' changes; trying again"
                    );
                    let until = Instant::now() + RECONNECT_AFTER;
                    while !self.stopping() && Instant::now() < until {
                        std::thread::sleep(TICK.min(RECONNECT_AFTER));
                    }
                }
            }
        }
    }

    fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(client)
    }

    /// Hands every notification on until the connection fails or the thread must stop.
    fn listen(&self, mut client: Client) {
        let mut resync_at = Instant::now() + RESYNC_EVERY;
        while !self.stopping() {
            {
                let mut notifications = client.notifications();
                let mut batch = notifications.timeout_iter(TICK);
                loop {
                    match batch.next() {
                        Ok(Some(notification)) => {
                            if let Some(notice) = notice(&self.origin, notification.payload()) {
                                (self.sink)(notice);
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(
                                target: "narutalk::store",
                                error = %super::describe(&error),
                                "lost the connection that listens for other servers' changes"
                            );
                            return;
                        }
                    }
                }
            }
            if Instant::now() >= resync_at {
                // Also proves the connection alive: a silent one fails here.
                if client.simple_query("").is_err() || client.is_closed() {
                    return;
                }
                (self.sink)(Notice::MayHaveMissed);
                resync_at = Instant::now() + RESYNC_EVERY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::events::Actor;
    use crate::store::Audit;

    #[test]
    fn payloads_round_trip_and_a_stores_own_are_dropped() {
        let audit = Audit {
            actor: Actor::Administrator,
            at: crate::time::now(),
            request_id: None,
        };
        let session = SessionId::from_str("4b3c2a10-0000-4000-8000-000000000001").unwrap();
        let id = MessageId::from_str("4b3c2a10-0000-4000-8000-000000000002").unwrap();
        let row = Row {
            kind: Kind::MessageStored,
            session: Some(session),
            seq: Some(7),
            user: Some(UserId(3)),
            payload: json!({"message": id.to_string(), "sender": "ai"}),
            audit: &audit,
        };
        let text = payload("a1", &row);
        assert_eq!(notice("a1", &text), None);
        assert_eq!(
            notice("b2", &text),
            Some(Notice::MessageStored {
                session,
                seq: 7,
                id,
                from_user: false
            })
        );
        let family = Family::parse("0123456789abcdef0123456789abcdef").unwrap();
        let row = Row {
            kind: Kind::LoginEnded,
            session: None,
            seq: None,
            user: Some(UserId(3)),
            payload: json!({"family": family.to_string()}),
            audit: &audit,
        };
        assert_eq!(
            notice("b2", &payload("a1", &row)),
            Some(Notice::LoginEnded {
                user: UserId(3),
                family
            })
        );
        assert_eq!(notice("b2", "a1\tfrom_the_future\t-\t-\t-\t-"), None);
    }
}
