//! The room hub: every socket open on a session receives what is published on that
//! session, in publish order.
//!
//! [`Hub`] is the seam: [`LocalHub`] serves the sockets of this process. Several server
//! processes would share rooms by implementing [`Hub`] over a broker: `publish` sends the
//! event to the broker's channel for the session, and a task receiving from the broker
//! hands each event to a [`LocalHub`] of the process, which delivers it to the local
//! sockets. Events carry ready-made frames and the storage sequence number, so they cross
//! a process boundary as they are.
//!
//! Invariants of [`LocalHub`]:
//! - every member of a room sees the events of the room in one order, the order of
//!   [`Hub::publish`] calls (the caller publishes stored messages in storage order);
//! - publishing never waits: each member has a bounded queue; a member whose queue is
//!   full when a stored message arrives is evicted and closed with 1013, never buffered
//!   without bound, while deltas may fill only half a queue and are skipped beyond it
//!   (the rest of that reply's deltas for that member, so it gets a prefix, never a gap);
//! - no lock is held across an await (the room map's lock is a plain mutex, held only to
//!   hand events to the queues);
//! - a room exists while it has members: the last member's leaving removes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use narutalk_core::chat::{MessageId, SessionId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// The close codes the server ends a socket with (RFC 6455 section 7.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: a normal close (the peer was silent too long).
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    Protocol,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1008: the user's tokens were revoked or the session was deleted.
    PolicyViolation,
    /// 1009: a frame or message over the size limit.
    TooBig,
    /// 1011: the server could not go on (its database failed).
    Internal,
    /// 1013: the peer reads too slowly to keep up.
    TryAgainLater,
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        match code {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryAgainLater => 1013,
        }
    }
}

/// Ends one socket from outside its task (the hub, the revocation watch, shutdown). The
/// first reason given wins; the socket's task notices at once, even in the middle of a
/// write to a peer that does not read.
#[derive(Debug, Default)]
pub struct Closer {
    reason: OnceLock<(CloseCode, &'static str)>,
    fired: CancellationToken,
}

impl Closer {
    /// Asks the socket to close with `code` and the short `reason` sent in its close frame.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        let _ = self.reason.set((code, reason));
        self.fired.cancel();
    }

    /// Completes once [`Closer::close`] has been called.
    pub async fn closed(&self) {
        self.fired.cancelled().await;
    }

    /// The code and reason given, if the socket was asked to close.
    pub fn reason(&self) -> Option<(CloseCode, &'static str)> {
        self.reason.get().copied()
    }
}

/// What is published on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message stored in the session: its place in the storage order and its
    /// `chat_message` frame.
    Stored {
        /// The message's sequence number in its session.
        seq: i64,
        /// The message's id.
        id: MessageId,
        /// The frame, serialized once for every socket.
        frame: Utf8Bytes,
    },
    /// An `ai_delta` frame: part of a reply being produced (not stored yet).
    Delta {
        /// The id the reply will be stored under.
        reply: MessageId,
        /// The frame.
        frame: Utf8Bytes,
    },
    /// The session was deleted: its sockets close with 1008.
    Deleted,
}

/// A socket's membership of a room: its queue of events. Dropping it leaves the room.
///
/// The queue holds shared events (one allocation per publish, whatever the room's size),
/// so a queue's storage costs a pointer per place: an idle socket's queue is a few
/// hundred bytes, not the few kilobytes inline events would take.
pub struct Subscription {
    events: mpsc::Receiver<Arc<RoomEvent>>,
    _membership: Box<dyn Send + Sync>,
}

impl Subscription {
    /// A subscription reading `events`; `membership` is dropped when the socket leaves.
    pub fn new(
        events: mpsc::Receiver<Arc<RoomEvent>>,
        membership: impl Send + Sync + 'static,
    ) -> Self {
        Subscription {
            events,
            _membership: Box::new(membership),
        }
    }

    /// The next event; `None` once the hub has let the socket go (evicted or shut down).
    pub async fn next(&mut self) -> Option<RoomEvent> {
        self.events.recv().await.map(Arc::unwrap_or_clone)
    }

    /// The next event if one is queued already.
    pub fn try_next(&mut self) -> Option<RoomEvent> {
        self.events.try_recv().ok().map(Arc::unwrap_or_clone)
    }
}

/// Fans events out to the sockets open on a session.
pub trait Hub: Send + Sync {
    /// Joins the room of `session`: every event published on it from now on is queued for
    /// the subscription, in publish order, until the subscription is dropped. `closer`
    /// ends the socket if it falls too far behind (1013) or the session is deleted (1008).
    fn subscribe(&self, session: SessionId, closer: Arc<Closer>) -> Subscription;

    /// Hands `event` to every socket in the room of `session`, without waiting.
    fn publish(&self, session: SessionId, event: RoomEvent);
}

/// The in-process [`Hub`].
pub struct LocalHub {
    rooms: Arc<Rooms>,
}

struct Rooms {
    /// Events a socket may be behind before it is evicted.
    capacity: usize,
    next_member: AtomicU64,
    by_session: Mutex<HashMap<SessionId, Vec<Member>>>,
}

struct Member {
    id: u64,
    queue: mpsc::Sender<Arc<RoomEvent>>,
    closer: Arc<Closer>,
    /// A reply whose remaining deltas this member does not get (its queue was half full).
    skipping: Option<MessageId>,
}

/// Leaves the room when dropped.
struct Leave {
    rooms: Arc<Rooms>,
    session: SessionId,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut rooms = self.rooms.lock();
        if let Some(members) = rooms.get_mut(&self.session) {
            members.retain(|member| member.id != self.id);
            if members.is_empty() {
                rooms.remove(&self.session);
            }
        }
    }
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Vec<Member>>> {
        self.by_session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LocalHub {
    /// A hub whose sockets may each be `capacity` events behind before they are evicted.
    pub fn new(capacity: usize) -> Self {
        LocalHub {
            rooms: Arc::new(Rooms {
                capacity: capacity.max(1),
                next_member: AtomicU64::new(0),
                by_session: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Rooms with members right now, and members in all of them.
    #[cfg(test)]
    pub fn occupancy(&self) -> (usize, usize) {
        let rooms = self.rooms.lock();
        (rooms.len(), rooms.values().map(Vec::len).sum())
    }
}

impl Hub for LocalHub {
    fn subscribe(&self, session: SessionId, closer: Arc<Closer>) -> Subscription {
        let (queue, events) = mpsc::channel(self.rooms.capacity);
        let id = self.rooms.next_member.fetch_add(1, Ordering::Relaxed);
        self.rooms.lock().entry(session).or_default().push(Member {
            id,
            queue,
            closer,
            skipping: None,
        });
        Subscription::new(
            events,
            Leave {
                rooms: self.rooms.clone(),
                session,
                id,
            },
        )
    }

    fn publish(&self, session: SessionId, event: RoomEvent) {
        let mut rooms = self.rooms.lock();
        let Some(members) = rooms.get_mut(&session) else {
            return;
        };
        if event == RoomEvent::Deleted {
            for member in members.iter() {
                member
                    .closer
                    .close(CloseCode::PolicyViolation, "session deleted");
            }
            rooms.remove(&session);
            return;
        }
        let half = self.rooms.capacity / 2;
        let event = Arc::new(event);
        members.retain_mut(|member| {
            if let RoomEvent::Delta { reply, .. } = event.as_ref() {
                // Deltas are a courtesy: they may fill only half a queue, and a member
                // that falls behind them misses the rest of that reply's deltas (all of
                // them or a prefix, never a gap) rather than being closed; the stored
                // reply follows in any case.
                if member.skipping == Some(*reply) {
                    return true;
                }
                if member.queue.capacity() <= half {
                    member.skipping = Some(*reply);
                    return true;
                }
            }
            match member.queue.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    member
                        .closer
                        .close(CloseCode::TryAgainLater, "reading too slowly");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        if members.is_empty() {
            rooms.remove(&session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: i64) -> RoomEvent {
        RoomEvent::Stored {
            seq,
            id: MessageId(uuid::Uuid::from_u128(
                u128::try_from(seq).unwrap_or_default(),
            )),
            frame: format!("frame {seq}").into(),
        }
    }

    #[tokio::test]
    async fn every_member_gets_every_event_of_its_room_in_publish_order() {
        let hub = LocalHub::new(16);
        let (one, two) = (SessionId::new_random(), SessionId::new_random());
        let mut first = hub.subscribe(one, Arc::default());
        let mut second = hub.subscribe(one, Arc::default());
        let mut elsewhere = hub.subscribe(two, Arc::default());
        for seq in 1..=3 {
            hub.publish(one, stored(seq));
        }
        for subscription in [&mut first, &mut second] {
            for seq in 1..=3 {
                assert_eq!(subscription.next().await, Some(stored(seq)));
            }
            assert_eq!(subscription.try_next(), None);
        }
        assert_eq!(elsewhere.try_next(), None, "no cross-talk between rooms");
    }

    #[tokio::test]
    async fn a_room_disappears_with_its_last_member() {
        let hub = LocalHub::new(4);
        let session = SessionId::new_random();
        let first = hub.subscribe(session, Arc::default());
        let second = hub.subscribe(session, Arc::default());
        assert_eq!(hub.occupancy(), (1, 2));
        drop(first);
        assert_eq!(hub.occupancy(), (1, 1));
        drop(second);
        assert_eq!(hub.occupancy(), (0, 0));
        hub.publish(session, stored(1));
        assert_eq!(hub.occupancy(), (0, 0), "publishing creates no room");
    }

    #[tokio::test]
    async fn a_member_that_falls_a_whole_queue_behind_is_evicted_with_1013() {
        let hub = LocalHub::new(2);
        let session = SessionId::new_random();
        let slow_closer = Arc::new(Closer::default());
        let mut slow = hub.subscribe(session, slow_closer.clone());
        let mut fast = hub.subscribe(session, Arc::default());
        for seq in 1..=3 {
            hub.publish(session, stored(seq));
            assert_eq!(fast.next().await, Some(stored(seq)));
        }
        assert_eq!(
            slow_closer.reason(),
            Some((CloseCode::TryAgainLater, "reading too slowly"))
        );
        assert_eq!(slow.next().await, Some(stored(1)));
        assert_eq!(slow.next().await, Some(stored(2)));
        assert_eq!(slow.next().await, None, "nothing after the eviction");
        assert_eq!(hub.occupancy(), (1, 1));
    }

    #[tokio::test]
    async fn a_burst_of_deltas_never_evicts_and_leaves_room_for_the_stored_reply() {
        let hub = LocalHub::new(8);
        let session = SessionId::new_random();
        let closer = Arc::new(Closer::default());
        let mut member = hub.subscribe(session, closer.clone());
        let reply = MessageId::new_random();
        let delta = |n: usize| RoomEvent::Delta {
            reply,
            frame: format!("delta {n}").into(),
        };
        for n in 0..100 {
            hub.publish(session, delta(n));
        }
        // A later delta of the same reply is skipped too, even with room in the queue:
        // the member gets a prefix of the reply's deltas, never one with a hole.
        assert_eq!(member.next().await, Some(delta(0)));
        hub.publish(session, delta(100));
        hub.publish(session, stored(1));
        assert_eq!(closer.reason(), None, "deltas never close a socket");
        let mut received = vec![Some(delta(0))];
        while let Some(event) = member.try_next() {
            received.push(Some(event));
        }
        let expected: Vec<_> = (0..4).map(|n| Some(delta(n))).collect();
        assert_eq!(received[..4], expected[..]);
        assert_eq!(received.len(), 5);
        assert!(matches!(
            received[4],
            Some(RoomEvent::Stored { seq: 1, .. })
        ));
    }

    #[tokio::test]
    async fn deleting_the_session_closes_its_members_with_1008() {
        let hub = LocalHub::new(4);
        let session = SessionId::new_random();
        let closer = Arc::new(Closer::default());
        let _member = hub.subscribe(session, closer.clone());
        hub.publish(session, RoomEvent::Deleted);
        assert_eq!(
            closer.reason(),
            Some((CloseCode::PolicyViolation, "session deleted"))
        );
        assert_eq!(hub.occupancy(), (0, 0));
    }

    #[test]
    fn the_first_close_reason_wins() {
        let closer = Closer::default();
        closer.close(CloseCode::PolicyViolation, "tokens revoked");
        closer.close(CloseCode::GoingAway, "server shutting down");
        assert_eq!(
            closer.reason(),
            Some((CloseCode::PolicyViolation, "tokens revoked"))
        );
    }
}
