//! The room hub: every socket open on a session receives every message stored in the
//! session, once, in storage order, whatever order the events about them arrive in.
//!
//! [`Hub`] is the seam; [`LocalHub`] serves the sockets of this process. Each room
//! remembers the highest sequence number it delivered. A stored message with the next
//! number is delivered at once; one with a number already delivered is dropped (a
//! duplicate, or late); one beyond the next means events were lost or overtaken, so the
//! *room* (not each socket) reads the missing messages from the store once, on a blocking
//! thread ([`RoomStore`]), and delivers them in order before going on. Events that arrive
//! during that read wait behind it (at most a queue's worth; beyond that they are dropped
//! and a later read brings their messages). A delta whose user message the room has not
//! delivered yet waits the same way. A room starts from its first member's view: the
//! session's last sequence number when its handshake read it, so a message stored between
//! that read and the join is filled in by the room's first read, not lost.
//!
//! The rooms hear the core's event bus (the server's state subscribes them: a stored
//! message, a reply's delta, a deleted session), never a handler. So the bus, or a broker
//! between processes, may lose, repeat or reorder stored-message events: that costs a
//! read, never a message. Several server processes would share rooms by feeding each
//! process's [`LocalHub`] from a broker channel per session; what changes then is only
//! where the events come from.
//!
//! Invariants of [`LocalHub`]:
//! - every member of a room sees the room's stored messages in sequence order, each once,
//!   from the room's starting point on (a socket that joins a room already ahead of what
//!   its handshake saw is told so by [`Subscription::joined_at`] and replays the
//!   difference itself);
//! - publishing never waits: each member has a bounded queue; a member whose queue is
//!   full when a stored message arrives is evicted and closed with 1013, never buffered
//!   without bound, while deltas may fill only half a queue and are skipped beyond it
//!   (the rest of that reply's deltas for that member, so it gets a prefix, never a gap);
//! - a room reads at most once at a time, and what waits behind its read is bounded;
//! - no lock is held across an await or a read (the room map's lock is a plain mutex,
//!   held only to hand events to the queues; the read runs with no lock held);
//! - a room exists while it has members: the last member's leaving removes it, and a read
//!   that finishes for a room that is gone is dropped.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::chat::{Message, MessageId, SessionId};
use narutalk_core::error::Error as CoreError;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::frames;

/// The most messages a room reads at once to fill a gap (fewer with small queues: at
/// most half a queue).
const FILL_PAGE: usize = 100;

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
        /// The sequence number of the user message the reply answers: the delta follows
        /// that message.
        after: i64,
        /// The frame.
        frame: Utf8Bytes,
    },
    /// The session was deleted: its sockets close with 1008.
    Deleted,
    /// Another server stored the session's messages up to this sequence number: the room
    /// reads those it has not delivered (never delivered itself: it carries no frame).
    Reached {
        /// The sequence number stored.
        seq: i64,
    },
}

impl RoomEvent {
    /// The event of a stored message.
    pub fn stored(message: &Message) -> RoomEvent {
        RoomEvent::Stored {
            seq: message.seq,
            id: message.id,
            frame: frames::chat_message(message),
        }
    }
}

/// A socket's membership of a room: its queue of events. Dropping it leaves the room.
///
/// The queue holds shared events (one allocation per publish, whatever the room's size),
/// so a queue's storage costs a pointer per place: an idle socket's queue is a few
/// hundred bytes, not the few kilobytes inline events would take.
pub struct Subscription {
    events: mpsc::Receiver<Arc<RoomEvent>>,
    joined_at: i64,
    _membership: Box<dyn Send + Sync>,
}

impl Subscription {
    /// A subscription reading `events`, in a room that had delivered the messages up to
    /// `joined_at` when it joined; `membership` is dropped when the socket leaves.
    pub fn new(
        events: mpsc::Receiver<Arc<RoomEvent>>,
        joined_at: i64,
        membership: impl Send + Sync + 'static,
    ) -> Self {
        Subscription {
            events,
            joined_at,
            _membership: Box::new(membership),
        }
    }

    /// The sequence number the room had delivered up to when the socket joined: the
    /// socket gets every stored message after it, none before. Above what the socket's
    /// handshake saw, the socket reads the difference itself.
    pub fn joined_at(&self) -> i64 {
        self.joined_at
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

/// Who joins a room: the session's owner, and the session's last sequence number as the
/// socket's handshake read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joining {
    /// The session's owner (the socket's user), in whose name a room reads.
    pub owner: UserId,
    /// The session's last sequence number when the handshake read it (0: no message).
    pub seen: i64,
}

/// Fans events out to the sockets open on a session.
pub trait Hub: Send + Sync {
    /// Joins the room of `session`: every stored message after the subscription's
    /// [`Subscription::joined_at`] is queued for it, in storage order, and every delta
    /// and deletion from now on, until the subscription is dropped. A new room starts
    /// from `joining.seen`. `closer` ends the socket if it falls too far behind (1013),
    /// the session is deleted (1008) or a gap cannot be read (1011).
    fn subscribe(&self, session: SessionId, joining: Joining, closer: Arc<Closer>) -> Subscription;

    /// Hands `event` to the sockets in the room of `session`, without waiting: at once,
    /// or after the read of the messages it shows the room missed.
    fn publish(&self, session: SessionId, event: RoomEvent);

    /// Looks, in one read for every room, for messages the rooms have not delivered (events
    /// from other servers may have been lost), and makes the rooms that are behind (or
    /// whose session is gone) read them; without waiting.
    fn resync(&self);
}

/// Where a room reads the messages its events missed.
pub trait RoomStore: Send + Sync + 'static {
    /// Up to `limit` messages of `owner`'s `session` stored after `after_seq`, oldest
    /// first. Blocking: the hub calls it on a blocking thread.
    fn messages_after(
        &self,
        owner: UserId,
        session: SessionId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, CoreError>;

    /// For each `(owner, session)`, the session's last sequence number, `None` once it
    /// is gone: one read for every room. Blocking, like [`RoomStore::messages_after`].
    fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, CoreError>;
}

impl RoomStore for Narutalk {
    fn messages_after(
        &self,
        owner: UserId,
        session: SessionId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, CoreError> {
        self.chat()
            .messages_after_seq(owner, session, after_seq, limit)
    }

    fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, CoreError> {
        self.chat().last_seqs(sessions)
    }
}

/// The in-process [`Hub`].
pub struct LocalHub {
    rooms: Arc<Rooms>,
}

struct Rooms {
    /// Events a socket may be behind before it is evicted. Half of it is the most events
    /// that wait behind a room's read, and the most messages one read brings, so that a
    /// member with an empty queue takes what a read releases at once.
    capacity: usize,
    /// Where gaps are read.
    store: Arc<dyn RoomStore>,
    /// The runtime whose blocking threads run the reads (a plain thread without one).
    runtime: Option<tokio::runtime::Handle>,
    next_id: AtomicU64,
    by_session: Mutex<HashMap<SessionId, Room>>,
}

struct Room {
    /// Tells this room from a later one of the same session, for a read that finishes
    /// after the room went away.
    id: u64,
    owner: UserId,
    members: Vec<Member>,
    /// The highest sequence number delivered.
    delivered: i64,
    /// The read in flight, if any, and what waits behind it.
    fill: Option<Fill>,
    /// A reply whose remaining deltas the room drops: one of them found no place
    /// behind a read.
    skipping: Option<MessageId>,
}

/// A room's read in flight.
#[derive(Default)]
struct Fill {
    /// Events that arrived during the read, in arrival order.
    waiting: VecDeque<Arc<RoomEvent>>,
    /// The highest sequence number of a stored message dropped because `waiting` was
    /// full: a later read brings it.
    dropped: i64,
}

struct Member {
    id: u64,
    queue: mpsc::Sender<Arc<RoomEvent>>,
    closer: Arc<Closer>,
    /// A reply whose remaining deltas this member does not get (its queue was half full).
    skipping: Option<MessageId>,
}

/// A read to start once the room map's lock is released.
struct Read {
    session: SessionId,
    room: u64,
    owner: UserId,
    after: i64,
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
        if let Some(room) = rooms.get_mut(&self.session) {
            room.members.retain(|member| member.id != self.id);
            if room.members.is_empty() {
                rooms.remove(&self.session);
            }
        }
    }
}

impl LocalHub {
    /// A hub whose sockets may each be `capacity` events behind before they are evicted,
    /// and whose rooms read what they missed from `store`. Reads run on the blocking
    /// threads of the current tokio runtime, if any.
    pub fn new(capacity: usize, store: Arc<dyn RoomStore>) -> Self {
        LocalHub {
            rooms: Arc::new(Rooms {
                capacity: capacity.max(1),
                store,
                runtime: tokio::runtime::Handle::try_current().ok(),
                next_id: AtomicU64::new(0),
                by_session: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Rooms with members right now, and members in all of them.
    #[cfg(test)]
    pub fn occupancy(&self) -> (usize, usize) {
        let rooms = self.rooms.lock();
        (
            rooms.len(),
            rooms.values().map(|room| room.members.len()).sum(),
        )
    }
}

impl Hub for LocalHub {
    fn subscribe(&self, session: SessionId, joining: Joining, closer: Arc<Closer>) -> Subscription {
        let (queue, events) = mpsc::channel(self.rooms.capacity);
        let id = self.rooms.next_id.fetch_add(1, Ordering::Relaxed);
        let joined_at = {
            let mut rooms = self.rooms.lock();
            let room = rooms.entry(session).or_insert_with(|| Room {
                id,
                owner: joining.owner,
                members: Vec::new(),
                delivered: joining.seen,
                fill: None,
                skipping: None,
            });
            room.members.push(Member {
                id,
                queue,
                closer,
                skipping: None,
            });
            room.delivered
        };
        Subscription::new(
            events,
            joined_at,
            Leave {
                rooms: self.rooms.clone(),
                session,
                id,
            },
        )
    }

    fn publish(&self, session: SessionId, event: RoomEvent) {
        let read = {
            let mut rooms = self.rooms.lock();
            let Some(room) = rooms.get_mut(&session) else {
                return;
            };
            if event == RoomEvent::Deleted {
                room.close(CloseCode::PolicyViolation, "session deleted");
                rooms.remove(&session);
                return;
            }
            let read = room.accept(Arc::new(event), self.rooms.capacity, false);
            if room.members.is_empty() {
                rooms.remove(&session);
                return;
            }
            read.map(|after| Read {
                session,
                room: room.id,
                owner: room.owner,
                after,
            })
        };
        if let Some(read) = read {
            self.rooms.start(read);
        }
    }

    fn resync(&self) {
        let watched: Vec<Watched> = self
            .rooms
            .lock()
            .iter()
            .filter(|(_, room)| !room.members.is_empty())
            .map(|(session, room)| Watched {
                session: *session,
                room: room.id,
                owner: room.owner,
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        let rooms = self.rooms.clone();
        let work = move || {
            let pairs: Vec<(UserId, SessionId)> = watched
                .iter()
                .map(|watched| (watched.owner, watched.session))
                .collect();
            let result = catch_unwind(AssertUnwindSafe(|| rooms.store.last_seqs(&pairs)))
                .unwrap_or_else(|_| Err(CoreError::internal("the rooms' look panicked")));
            match result {
                Ok(last_seqs) => rooms.reached(watched.into_iter().zip(last_seqs)),
                // Nothing is lost: the next look (or event) finds what this one missed.
                Err(error) => tracing::warn!(
                    rooms = pairs.len(),
                    %error,
                    "the rooms could not look for messages stored elsewhere"
                ),
            }
        };
        self.rooms.run_blocking(work);
    }
}

/// A room [`LocalHub::resync`] looks at.
struct Watched {
    session: SessionId,
    room: u64,
    owner: UserId,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Room>> {
        self.by_session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most messages one read brings.
    fn page(&self) -> usize {
        FILL_PAGE.min(self.capacity / 2).max(1)
    }

    /// Runs `work` on the runtime's blocking threads (on this thread without a runtime,
    /// which is never the server's case).
    fn run_blocking(&self, work: impl FnOnce() + Send + 'static) {
        match &self.runtime {
            Some(runtime) => {
                runtime.spawn_blocking(work);
            }
            None => work(),
        }
    }

    /// Makes each room that has not delivered its session's last sequence number (or whose
    /// session is gone: `None`) read what it missed, unless a read is in flight already.
    fn reached(self: &Arc<Self>, looked: impl Iterator<Item = (Watched, Option<i64>)>) {
        let reads: Vec<Read> = {
            let mut rooms = self.lock();
            looked
                .filter_map(|(watched, last_seq)| {
                    let room = rooms
                        .get_mut(&watched.session)
                        .filter(|room| room.id == watched.room)?;
                    let behind = last_seq.is_none_or(|seq| seq > room.delivered);
                    (behind && room.fill.is_none() && !room.members.is_empty()).then(|| {
                        room.fill = Some(Fill::default());
                        Read {
                            session: watched.session,
                            room: room.id,
                            owner: room.owner,
                            after: room.delivered,
                        }
                    })
                })
                .collect()
        };
        for read in reads {
            self.start(read);
        }
    }

    /// Reads the messages after `read.after` on a blocking thread, then hands them to
    /// the room.
    fn start(self: &Arc<Self>, read: Read) {
        let rooms = self.clone();
        let work = move || {
            let limit = u32::try_from(rooms.page()).unwrap_or(u32::MAX);
            // The frames are made here, not under the room map's lock. A panic must not
            // leave the room waiting for this read forever: it fails the read.
            let result = catch_unwind(AssertUnwindSafe(|| {
                rooms
                    .store
                    .messages_after(read.owner, read.session, read.after, limit)
                    .map(|messages| {
                        messages
                            .iter()
                            .map(|message| (message.seq, Arc::new(RoomEvent::stored(message))))
                            .collect()
                    })
            }))
            .unwrap_or_else(|_| Err(CoreError::internal("a room's read panicked")));
            rooms.filled(read, result);
        };
        self.run_blocking(work);
    }

    /// Delivers what a read brought, then what waited behind it; starts the next read
    /// when that is not all.
    fn filled(self: &Arc<Self>, read: Read, result: Result<Vec<(i64, Arc<RoomEvent>)>, CoreError>) {
        let next = {
            let mut rooms = self.lock();
            let Some(room) = rooms
                .get_mut(&read.session)
                .filter(|room| room.id == read.room)
            else {
                return;
            };
            let next = match result {
                Ok(stored) => room.take_read(stored, self.page(), self.capacity),
                Err(CoreError::NotFound) => {
                    room.close(CloseCode::PolicyViolation, "session deleted");
                    room.members.clear();
                    None
                }
                Err(error) => {
                    tracing::warn!(
                        session = %read.session,
                        %error,
                        "a room could not read the messages its events missed"
                    );
                    room.close(CloseCode::Internal, "server error");
                    room.members.clear();
                    None
                }
            };
            if room.members.is_empty() {
                rooms.remove(&read.session);
                return;
            }
            next.map(|after| Read { after, ..read })
        };
        if let Some(next) = next {
            self.start(next);
        }
    }
}

impl Room {
    /// Takes one event (a stored message or a delta): delivers it, keeps it behind the
    /// read in flight, or starts a read. `admitted`: the event waited behind a read
    /// already, so a reply's deltas that were stopped since then do not stop it.
    /// Returns where a new read starts.
    fn accept(&mut self, event: Arc<RoomEvent>, capacity: usize, admitted: bool) -> Option<i64> {
        if let Some(fill) = &mut self.fill {
            fill.keep(event, capacity, &mut self.skipping);
            return None;
        }
        let (awaited, stored) = match event.as_ref() {
            RoomEvent::Reached { seq } => {
                if *seq <= self.delivered {
                    return None;
                }
                // The messages are elsewhere: read them (the event itself has no frame).
                self.fill = Some(Fill::default());
                return Some(self.delivered);
            }
            RoomEvent::Stored { seq, .. } => (*seq, true),
            RoomEvent::Delta { reply, after, .. } => {
                if !admitted && self.skipping == Some(*reply) {
                    return None;
                }
                (*after, false)
            }
            RoomEvent::Deleted => return None,
        };
        if stored && awaited <= self.delivered {
            // Delivered already: a duplicate or a latecomer.
            return None;
        }
        let next = self.delivered + 1;
        if (stored && awaited == next) || (!stored && awaited <= self.delivered) {
            self.deliver(&event, capacity);
            if stored {
                self.delivered = awaited;
            }
            return None;
        }
        // Messages are missing before this event: read them, and let it wait.
        let mut fill = Fill::default();
        fill.waiting.push_back(event);
        self.fill = Some(fill);
        Some(self.delivered)
    }

    /// Delivers a read's messages (those not delivered yet, in order), then what waited
    /// behind the read; returns where the next read starts, if another is needed.
    fn take_read(
        &mut self,
        stored: Vec<(i64, Arc<RoomEvent>)>,
        page: usize,
        capacity: usize,
    ) -> Option<i64> {
        let full_page = stored.len() >= page;
        // A read that brought nothing new while events showed a gap: the store has no
        // message before theirs (a bug of the emitter, never a normal case). Their own
        // word is then taken, rather than reading the same nothing again and again.
        let progressed = stored.iter().any(|(seq, _)| *seq > self.delivered);
        for (seq, event) in stored {
            if seq > self.delivered {
                self.deliver(&event, capacity);
                self.delivered = seq;
            }
        }
        if full_page {
            // More may follow: read on before anything that waits.
            return Some(self.delivered);
        }
        let mut done = self.fill.take().unwrap_or_default();
        while let Some(event) = done.waiting.pop_front() {
            if !progressed {
                match event.as_ref() {
                    RoomEvent::Stored { seq, .. } if *seq > self.delivered => {
                        self.deliver(&event, capacity);
                        self.delivered = *seq;
                    }
                    RoomEvent::Delta { .. } => self.deliver(&event, capacity),
                    _ => {}
                }
                continue;
            }
            if let Some(after) = self.accept(event, capacity, true) {
                // Another gap: the rest waits behind the new read, which also brings
                // what the finished one could not keep.
                let fill = self.fill.get_or_insert_with(Fill::default);
                fill.dropped = fill.dropped.max(done.dropped);
                for event in done.waiting {
                    fill.keep(event, capacity, &mut self.skipping);
                }
                return Some(after);
            }
        }
        // Messages whose events found no place behind the read: a read brings them.
        (progressed && done.dropped > self.delivered).then(|| {
            self.fill = Some(Fill::default());
            self.delivered
        })
    }

    /// Hands `event` to every member's queue, evicting the members that cannot take it.
    fn deliver(&mut self, event: &Arc<RoomEvent>, capacity: usize) {
        let half = capacity / 2;
        self.members.retain_mut(|member| {
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
    }

    /// Closes every member with `code`.
    fn close(&self, code: CloseCode, reason: &'static str) {
        for member in &self.members {
            member.closer.close(code, reason);
        }
    }
}

impl Fill {
    /// Keeps `event` behind the read, if there is room (half a queue); otherwise
    /// remembers what a later read must bring (a stored message) or stops that reply's
    /// deltas (a delta, so that the members get a prefix of them, never a gap).
    fn keep(&mut self, event: Arc<RoomEvent>, capacity: usize, skipping: &mut Option<MessageId>) {
        if let RoomEvent::Delta { reply, .. } = event.as_ref()
            && *skipping == Some(*reply)
        {
            return;
        }
        if self.waiting.len() < (capacity / 2).max(1) {
            self.waiting.push_back(event);
            return;
        }
        match event.as_ref() {
            RoomEvent::Stored { seq, .. } | RoomEvent::Reached { seq } => {
                self.dropped = self.dropped.max(*seq);
            }
            RoomEvent::Delta { reply, .. } => *skipping = Some(*reply),
            RoomEvent::Deleted => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use narutalk_core::chat::{MessageType, Sender};
    use narutalk_core::fields::JsonObject;

    use super::*;

    /// The longest a test waits for an event that should come (only a bug reaches it).
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A store whose messages the test adds; it counts its reads, and can hold them.
    #[derive(Default)]
    struct FakeStore {
        messages: Mutex<Vec<Message>>,
        /// Reads that took their snapshot.
        reads: AtomicUsize,
        /// Reads that gave their answer.
        returned: AtomicUsize,
        /// While set, a read takes its snapshot, then waits for it to be cleared.
        held: Mutex<bool>,
        released: Condvar,
        /// Every read fails with this, when set.
        failure: Mutex<Option<CoreError>>,
        /// Sessions deleted: reads answer not found, looks `None`.
        deleted: Mutex<Vec<SessionId>>,
        /// Looks for the last sequence numbers ([`RoomStore::last_seqs`]).
        looks: AtomicUsize,
    }

    impl FakeStore {
        fn with_messages(session: SessionId, seqs: impl IntoIterator<Item = i64>) -> Arc<Self> {
            let store = Arc::new(FakeStore::default());
            store.add(session, seqs);
            store
        }

        /// Stores messages `seqs` and returns their events.
        fn add(&self, session: SessionId, seqs: impl IntoIterator<Item = i64>) -> Vec<RoomEvent> {
            let mut messages = self.messages.lock().unwrap();
            seqs.into_iter()
                .map(|seq| {
                    let message = message(session, seq);
                    let event = RoomEvent::stored(&message);
                    messages.push(message);
                    event
                })
                .collect()
        }

        fn event(&self, seq: i64) -> RoomEvent {
            let messages = self.messages.lock().unwrap();
            let message = messages.iter().find(|message| message.seq == seq).unwrap();
            RoomEvent::stored(message)
        }

        fn hold(&self) {
            *self.held.lock().unwrap() = true;
        }

        fn release(&self) {
            *self.held.lock().unwrap() = false;
            self.released.notify_all();
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }

        /// Waits until `n` reads have taken their snapshot.
        async fn until_read(&self, n: usize) {
            while self.reads() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl RoomStore for FakeStore {
        fn messages_after(
            &self,
            _owner: UserId,
            session: SessionId,
            after_seq: i64,
            limit: u32,
        ) -> Result<Vec<Message>, CoreError> {
            let snapshot: Vec<Message> = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .filter(|message| message.session_id == session && message.seq > after_seq)
                .take(limit as usize)
                .cloned()
                .collect();
            self.reads.fetch_add(1, Ordering::SeqCst);
            let held = self.held.lock().unwrap();
            drop(self.released.wait_while(held, |held| *held).unwrap());
            let answer = match self.failure.lock().unwrap().take() {
                Some(error) => Err(error),
                None if self.deleted.lock().unwrap().contains(&session) => Err(CoreError::NotFound),
                None => Ok(snapshot),
            };
            self.returned.fetch_add(1, Ordering::SeqCst);
            answer
        }

        fn last_seqs(
            &self,
            sessions: &[(UserId, SessionId)],
        ) -> Result<Vec<Option<i64>>, CoreError> {
            self.looks.fetch_add(1, Ordering::SeqCst);
            let messages = self.messages.lock().unwrap();
            let deleted = self.deleted.lock().unwrap();
            Ok(sessions
                .iter()
                .map(|(_, session)| {
                    (!deleted.contains(session)).then(|| {
                        messages
                            .iter()
                            .filter(|message| message.session_id == *session)
                            .map(|message| message.seq)
                            .max()
                            .unwrap_or(0)
                    })
                })
                .collect())
        }
    }

    fn message(session: SessionId, seq: i64) -> Message {
        Message {
            id: MessageId(uuid::Uuid::from_u128(
                u128::try_from(seq).unwrap_or_default(),
            )),
            session_id: session,
            seq,
            content: format!("message {seq}"),
            sender: Sender::User,
            message_type: MessageType::Text,
            metadata: JsonObject::new(),
            timestamp: Default::default(),
            reply_to: None,
        }
    }

    fn owner() -> UserId {
        UserId(1)
    }

    fn joining(seen: i64) -> Joining {
        Joining {
            owner: owner(),
            seen,
        }
    }

    fn hub_over(capacity: usize, store: &Arc<FakeStore>) -> LocalHub {
        LocalHub::new(capacity, store.clone())
    }

    /// A hub whose store is empty: for tests where events come in order.
    fn hub(capacity: usize) -> LocalHub {
        LocalHub::new(capacity, Arc::new(FakeStore::default()))
    }

    /// The stored event of message `seq`, made as the fake store makes it.
    fn stored(seq: i64) -> RoomEvent {
        RoomEvent::stored(&message(SessionId(uuid::Uuid::nil()), seq))
    }

    fn delta(reply: MessageId, after: i64, n: usize) -> RoomEvent {
        RoomEvent::Delta {
            reply,
            after,
            frame: format!("delta {n}").into(),
        }
    }

    fn seq_of(event: &RoomEvent) -> Option<i64> {
        match event {
            RoomEvent::Stored { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    async fn next(subscription: &mut Subscription) -> Option<RoomEvent> {
        tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("an event came in time")
    }

    /// The sequence numbers of the next `n` events, which must all be stored messages.
    async fn next_seqs(subscription: &mut Subscription, n: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let event = next(subscription).await.expect("the member is still in");
            seqs.push(seq_of(&event).expect("a stored message"));
        }
        seqs
    }

    /// A deterministic shuffle (a linear congruential generator): tests must not depend
    /// on luck.
    struct Scramble(u64);

    impl Scramble {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(self.0 >> 33).unwrap_or_default() % n
        }
    }

    #[tokio::test]
    async fn every_member_gets_every_event_of_its_room_in_publish_order() {
        let hub = hub(16);
        let (one, two) = (SessionId::new_random(), SessionId::new_random());
        let mut first = hub.subscribe(one, joining(0), Arc::default());
        let mut second = hub.subscribe(one, joining(0), Arc::default());
        let mut elsewhere = hub.subscribe(two, joining(0), Arc::default());
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
    async fn events_out_of_order_repeated_or_lost_still_give_every_member_every_message_once_in_order()
     {
        for seed in 1..=20 {
            // Arrange: 40 stored messages; their events scrambled, some twice, some lost
            // (but for the last one's: nothing could reveal a gap after the last event).
            let session = SessionId::new_random();
            let store = FakeStore::with_messages(session, 1..=40);
            let hub = hub_over(256, &store);
            let mut members: Vec<Subscription> = (0..3)
                .map(|_| hub.subscribe(session, joining(0), Arc::default()))
                .collect();
            let mut scramble = Scramble(seed);
            let mut events: Vec<i64> = Vec::new();
            for seq in 1..=40 {
                match scramble.below(4) {
                    0 if seq != 40 => {}
                    1 => events.extend([seq, seq]),
                    _ => events.push(seq),
                }
            }
            for n in (1..events.len()).rev() {
                events.swap(n, scramble.below(n + 1));
            }

            // Act
            for seq in events {
                hub.publish(session, store.event(seq));
            }

            // Assert: all 40 in order, then nothing but the next live message.
            for member in &mut members {
                assert_eq!(next_seqs(member, 40).await, (1..=40).collect::<Vec<_>>());
            }
            let live = store.add(session, [41]);
            hub.publish(session, live[0].clone());
            for member in &mut members {
                assert_eq!(
                    next_seqs(member, 1).await,
                    [41],
                    "seed {seed}: no duplicate"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_gap_is_read_once_for_the_room_not_once_per_member() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=5);
        let hub = hub_over(16, &store);
        let mut members: Vec<Subscription> = (0..5)
            .map(|_| hub.subscribe(session, joining(0), Arc::default()))
            .collect();
        hub.publish(session, store.event(5));
        for member in &mut members {
            assert_eq!(next_seqs(member, 5).await, [1, 2, 3, 4, 5]);
        }
        assert_eq!(store.reads(), 1);
    }

    #[tokio::test]
    async fn a_message_stored_between_the_handshake_read_and_the_join_is_filled_in() {
        // The handshake read seq 3; message 4 was stored and published before the socket
        // joined, so its event reached no room.
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=5);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(3), Arc::default());
        assert_eq!(member.joined_at(), 3);
        hub.publish(session, store.event(5));
        assert_eq!(next_seqs(&mut member, 2).await, [4, 5]);
    }

    #[tokio::test]
    async fn a_socket_joining_a_room_ahead_of_its_handshake_learns_where_the_room_stands() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=4);
        let hub = hub_over(16, &store);
        let mut first = hub.subscribe(session, joining(2), Arc::default());
        hub.publish(session, store.event(3));
        hub.publish(session, store.event(4));
        assert_eq!(next_seqs(&mut first, 2).await, [3, 4]);
        let second = hub.subscribe(session, joining(2), Arc::default());
        assert_eq!(second.joined_at(), 4, "the socket replays 3 and 4 itself");
        assert_eq!(store.reads(), 0);
    }

    #[tokio::test]
    async fn events_arriving_during_a_read_wait_behind_it() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=2);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        let reply = MessageId::new_random();
        store.hold();
        hub.publish(session, store.event(2));
        store.until_read(1).await;
        let later = store.add(session, 3..=4);
        hub.publish(session, later[1].clone());
        hub.publish(session, delta(reply, 4, 0));
        hub.publish(session, later[0].clone());
        assert_eq!(member.try_next(), None, "nothing overtakes the read");
        store.release();
        // The read (taken before 3 and 4 were stored) brings 1 and 2; then 4 shows a
        // gap again, and a second read brings 3 and 4; then the delta.
        assert_eq!(next_seqs(&mut member, 4).await, [1, 2, 3, 4]);
        assert_eq!(next(&mut member).await, Some(delta(reply, 4, 0)));
        assert_eq!(store.reads(), 2);
        hub.publish(session, store.add(session, [5])[0].clone());
        assert_eq!(
            next_seqs(&mut member, 1).await,
            [5],
            "3's late event was dropped"
        );
    }

    #[tokio::test]
    async fn beyond_half_a_queue_behind_a_read_events_are_dropped_and_read_again() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=2);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        store.hold();
        hub.publish(session, store.event(2));
        store.until_read(1).await;
        // 8 events wait (half of 16); the last 4 are dropped.
        for event in store.add(session, 3..=14) {
            hub.publish(session, event);
        }
        store.release();
        assert_eq!(
            next_seqs(&mut member, 14).await,
            (1..=14).collect::<Vec<_>>()
        );
        assert_eq!(
            store.reads(),
            2,
            "one read for the gap, one for the dropped events"
        );
    }

    #[tokio::test]
    async fn a_gap_longer_than_a_page_is_read_a_page_at_a_time() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=10);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        hub.publish(session, store.event(10));
        // Pages of 8: 1-8, then 9-10 (short: the read is done).
        assert_eq!(
            next_seqs(&mut member, 10).await,
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(store.reads(), 2);
    }

    #[tokio::test]
    async fn a_delta_whose_user_message_was_not_delivered_waits_for_it() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=1);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        let reply = MessageId::new_random();
        hub.publish(session, delta(reply, 1, 0));
        assert_eq!(next_seqs(&mut member, 1).await, [1]);
        assert_eq!(next(&mut member).await, Some(delta(reply, 1, 0)));
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_new_takes_the_events_word_instead_of_reading_forever() {
        let session = SessionId::new_random();
        let store = Arc::new(FakeStore::default());
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        hub.publish(session, stored(3));
        assert_eq!(next_seqs(&mut member, 1).await, [3]);
        hub.publish(session, stored(4));
        assert_eq!(next_seqs(&mut member, 1).await, [4]);
        assert_eq!(store.reads(), 1);
    }

    #[tokio::test]
    async fn a_session_deleted_during_a_read_closes_its_members_and_the_read_is_dropped() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=2);
        let hub = hub_over(16, &store);
        let closer = Arc::new(Closer::default());
        let mut member = hub.subscribe(session, joining(0), closer.clone());
        store.hold();
        hub.publish(session, store.event(2));
        hub.publish(session, RoomEvent::Deleted);
        assert_eq!(
            closer.reason(),
            Some((CloseCode::PolicyViolation, "session deleted"))
        );
        assert_eq!(hub.occupancy(), (0, 0));
        // A new room of the same session is not fed by the old read.
        let mut newcomer = hub.subscribe(session, joining(2), Arc::default());
        store.release();
        while store.returned.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(next(&mut member).await, None);
        hub.publish(session, store.add(session, [3])[0].clone());
        assert_eq!(next_seqs(&mut newcomer, 1).await, [3]);
    }

    /// A resync (every few seconds on shared storage) looks at every room in one read and
    /// reads messages only for the rooms that are behind: the one whose events were lost
    /// gets them, in order; the one up to date costs no read.
    #[tokio::test]
    async fn a_resync_reads_only_for_the_rooms_that_are_behind() {
        let (behind, current) = (SessionId::new_random(), SessionId::new_random());
        let store = FakeStore::with_messages(behind, 1..=3);
        store.add(current, 1..=2);
        let hub = hub_over(16, &store);
        let mut lagging = hub.subscribe(behind, joining(1), Arc::default());
        let mut up_to_date = hub.subscribe(current, joining(2), Arc::default());

        hub.resync();

        assert_eq!(next_seqs(&mut lagging, 2).await, [2, 3]);
        assert_eq!(store.looks.load(Ordering::SeqCst), 1);
        assert_eq!(store.reads(), 1, "only the room that was behind read");
        assert_eq!(up_to_date.try_next(), None);
        // Nothing is behind any more: the next look reads nothing.
        hub.resync();
        while store.looks.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.reads(), 1);
        assert_eq!(lagging.try_next(), None);
    }

    /// A session deleted by another server while its deletion event was lost: the next
    /// resync closes its room's members with 1008 `session deleted`.
    #[tokio::test]
    async fn a_resync_closes_the_room_of_a_session_deleted_elsewhere() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=2);
        let hub = hub_over(16, &store);
        let closer = Arc::new(Closer::default());
        let mut member = hub.subscribe(session, joining(2), closer.clone());
        store.deleted.lock().unwrap().push(session);

        hub.resync();

        assert_eq!(next(&mut member).await, None);
        assert_eq!(
            closer.reason(),
            Some((CloseCode::PolicyViolation, "session deleted"))
        );
        assert_eq!(hub.occupancy(), (0, 0));
    }

    #[tokio::test]
    async fn a_read_that_fails_closes_the_room_with_1011_and_a_missing_session_with_1008() {
        for (failure, expected) in [
            (
                CoreError::Unavailable("locked".into()),
                (CloseCode::Internal, "server error"),
            ),
            (
                CoreError::NotFound,
                (CloseCode::PolicyViolation, "session deleted"),
            ),
        ] {
            let session = SessionId::new_random();
            let store = FakeStore::with_messages(session, 1..=2);
            *store.failure.lock().unwrap() = Some(failure);
            let hub = hub_over(16, &store);
            let closer = Arc::new(Closer::default());
            let mut member = hub.subscribe(session, joining(0), closer.clone());
            hub.publish(session, store.event(2));
            assert_eq!(next(&mut member).await, None);
            assert_eq!(closer.reason(), Some(expected));
            assert_eq!(hub.occupancy(), (0, 0));
        }
    }

    #[tokio::test]
    async fn the_core_is_a_rooms_store_in_the_owners_name() {
        // Arrange: a session of kim's with two exchanges (four messages) in a real core.
        let dir = tempfile::tempdir().unwrap();
        let config = narutalk_core::config::Config::for_tests(dir.path());
        let core = Arc::new(
            Narutalk::open(&config, narutalk_core::store::OpenMode::CreateIfMissing).unwrap(),
        );
        let body = serde_json::json!({
            "username": "kim", "email": "kim@example.com",
            "password": "violet-harbour-42", "password_confirm": "violet-harbour-42",
        });
        let kim = core
            .accounts()
            .register_fields(body.as_object().unwrap())
            .unwrap();
        let session = core
            .chat()
            .create_session(kim.id, "Headache", narutalk_core::chat::Category::Medical)
            .unwrap()
            .session
            .id;
        let mut last = None;
        for question in ["one", "two"] {
            last = Some(core.send_message(kim.id, session, question).unwrap().reply);
        }
        let hub = LocalHub::new(16, core.clone());
        let mut member = hub.subscribe(
            session,
            Joining {
                owner: kim.id,
                seen: 0,
            },
            Arc::default(),
        );

        // Act: only the last reply's event arrives.
        hub.publish(session, RoomEvent::stored(&last.unwrap()));

        // Assert
        assert_eq!(next_seqs(&mut member, 4).await, [1, 2, 3, 4]);
        assert_eq!(
            RoomStore::messages_after(core.as_ref(), UserId(kim.id.0 + 1), session, 0, 10)
                .unwrap_err()
                .to_string(),
            CoreError::NotFound.to_string(),
            "another user's session is a missing one"
        );
    }

    #[tokio::test]
    async fn a_room_disappears_with_its_last_member() {
        let hub = hub(4);
        let session = SessionId::new_random();
        let first = hub.subscribe(session, joining(0), Arc::default());
        let second = hub.subscribe(session, joining(0), Arc::default());
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
        let hub = hub(2);
        let session = SessionId::new_random();
        let slow_closer = Arc::new(Closer::default());
        let mut slow = hub.subscribe(session, joining(0), slow_closer.clone());
        let mut fast = hub.subscribe(session, joining(0), Arc::default());
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
        let hub = hub(8);
        let session = SessionId::new_random();
        let closer = Arc::new(Closer::default());
        let mut member = hub.subscribe(session, joining(0), closer.clone());
        let reply = MessageId::new_random();
        for n in 0..100 {
            hub.publish(session, delta(reply, 0, n));
        }
        // A later delta of the same reply is skipped too, even with room in the queue:
        // the member gets a prefix of the reply's deltas, never one with a hole.
        assert_eq!(member.next().await, Some(delta(reply, 0, 0)));
        hub.publish(session, delta(reply, 0, 100));
        hub.publish(session, stored(1));
        assert_eq!(closer.reason(), None, "deltas never close a socket");
        let mut received = vec![Some(delta(reply, 0, 0))];
        while let Some(event) = member.try_next() {
            received.push(Some(event));
        }
        let expected: Vec<_> = (0..4).map(|n| Some(delta(reply, 0, n))).collect();
        assert_eq!(received[..4], expected[..]);
        assert_eq!(received.len(), 5);
        assert!(matches!(
            received[4],
            Some(RoomEvent::Stored { seq: 1, .. })
        ));
    }

    #[tokio::test]
    async fn deltas_that_find_no_place_behind_a_read_stop_for_that_reply() {
        let session = SessionId::new_random();
        let store = FakeStore::with_messages(session, 1..=1);
        let hub = hub_over(16, &store);
        let mut member = hub.subscribe(session, joining(0), Arc::default());
        let reply = MessageId::new_random();
        store.hold();
        // The first delta waits for the read of message 1; 8 wait in all (half of 16),
        // and the rest of that reply's deltas are dropped, a later one included.
        for n in 0..10 {
            hub.publish(session, delta(reply, 1, n));
        }
        store.release();
        store.until_read(1).await;
        hub.publish(session, delta(reply, 1, 10));
        hub.publish(session, store.add(session, [2])[0].clone());
        let mut received = Vec::new();
        loop {
            let event = next(&mut member).await.unwrap();
            let last = seq_of(&event) == Some(2);
            received.push(event);
            if last {
                break;
            }
        }
        // 1, then a prefix of the deltas (the member's own half-queue rule may cut it
        // shorter), then 2.
        assert_eq!(seq_of(&received[0]), Some(1));
        let deltas = &received[1..received.len() - 1];
        assert!(!deltas.is_empty() && deltas.len() <= 8, "{received:?}");
        for (n, event) in deltas.iter().enumerate() {
            assert_eq!(event, &delta(reply, 1, n));
        }
    }

    #[tokio::test]
    async fn deleting_the_session_closes_its_members_with_1008() {
        let hub = hub(4);
        let session = SessionId::new_random();
        let closer = Arc::new(Closer::default());
        let _member = hub.subscribe(session, joining(0), closer.clone());
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
