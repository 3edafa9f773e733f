//! What the core tells the outside about changes: the [`Event`]s and the in-process
//! [`EventBus`] that hands them to subscribers (a server's room hub and revocation watch,
//! an embedder's own listener).
//!
//! - **Stored changes are published after their commit.** A message stored, a session
//!   deleted, tokens revoked, a login ended: each is recorded in the transaction that
//!   makes the change (an outbox row, with the actor, the time and the request id where
//!   there is one) and published only once that transaction has committed, from those
//!   rows. So a subscriber never hears of a change that was rolled back, and an event a
//!   process did not hear (another process made the change, or a subscriber fell behind)
//!   is still in the store. A reply's deltas are not stored: they are published as the
//!   responder produces them.
//! - **Publishing never blocks on a subscriber.** Callbacks run on the publishing thread
//!   and must only hand the event on (a `try_send` into a queue of their own); a channel
//!   subscriber ([`EventBus::subscribe_channel`]) has a bounded queue, and when it is full
//!   the event is dropped for that subscriber and counted ([`EventReceiver::missed`]).
//!   A panicking callback is contained: the publisher and the other subscribers go on.
//! - **Order is per publisher.** Events published by one thread reach every subscriber
//!   in that order; events of different threads may interleave. Stored messages carry
//!   their session's sequence number so that a subscriber can put them in order, drop a
//!   duplicate and notice a gap (and read the gap from the store: the server's room hub
//!   does).
//!
//! The bus is runtime-agnostic: no async runtime, only a lock held to copy the list of
//! subscribers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::accounts::UserId;
use crate::chat::{Message, MessageId, SessionId};
use crate::tokens::Family;

/// A change the core tells the outside about.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message was stored in a session (a user message, an AI reply or a system error
    /// message).
    MessageStored {
        /// The session.
        session: SessionId,
        /// The message's place in the session's storage order.
        seq: i64,
        /// The message's id.
        id: MessageId,
        /// The stored message, when the emitter had it at hand (a local subscriber then
        /// needs no read); `None` when the event was rebuilt from a record that does not
        /// carry it.
        message: Option<Arc<Message>>,
    },
    /// A session was deleted with its messages.
    SessionDeleted {
        /// The session.
        session: SessionId,
        /// Its owner.
        owner: UserId,
    },
    /// Every token of a user stopped being valid: a password change or reset, "log out
    /// everywhere", or the account deactivated or deleted.
    UserRevoked {
        /// The user.
        user: UserId,
        /// Why.
        cause: Revocation,
    },
    /// One login family ended (a logout, or a refresh token used twice): the access
    /// tokens of that login stop being valid.
    LoginEnded {
        /// The family's user.
        user: UserId,
        /// The family.
        family: Family,
    },
    /// A piece of a reply being produced (not stored yet; its deltas add up to the
    /// stored reply, which follows them).
    ReplyDelta {
        /// The session.
        session: SessionId,
        /// The id the reply will be stored under.
        reply: MessageId,
        /// The user message it answers.
        answers: MessageId,
        /// That user message's sequence number: a subscriber that has not delivered it
        /// yet knows the delta is early.
        answers_seq: i64,
        /// The text.
        text: String,
    },
    /// Changes made by other processes sharing the storage may have been missed (the
    /// storage's feed lost its connection, or its periodic look): a subscriber re-reads
    /// what it keeps track of. Published only on shared storage (PostgreSQL).
    MayHaveMissed,
}

/// Why a user's tokens were revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revocation {
    /// The password was changed or reset, or the user logged out everywhere.
    TokensRevoked,
    /// The account was deactivated.
    Deactivated,
    /// The account was deleted.
    Deleted,
}

impl Event {
    /// The session the event is about, if it is about one.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Event::MessageStored { session, .. }
            | Event::SessionDeleted { session, .. }
            | Event::ReplyDelta { session, .. } => Some(*session),
            Event::UserRevoked { .. } | Event::LoginEnded { .. } | Event::MayHaveMissed => None,
        }
    }

    /// The event of `message`, just stored (it carries the message).
    pub fn stored(message: Message) -> Event {
        Event::MessageStored {
            session: message.session_id,
            seq: message.seq,
            id: message.id,
            message: Some(Arc::new(message)),
        }
    }
}

/// Who made a stored change, as its outbox row records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Actor {
    /// A user acting on their own account or sessions (through the API, or an embedder
    /// calling on their behalf).
    User(UserId),
    /// An administrator's operation with no user named: the core's administration calls
    /// made by an embedder.
    Administrator,
    /// The command-line tool (`narutalk`).
    Cli,
    /// The turn engine: an AI reply or the system error message of a failed turn.
    Engine,
}

impl Actor {
    /// The actor as the outbox stores it: `user:<id>`, `administrator`, `cli` or `engine`.
    pub fn as_text(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{}", id.0),
            Actor::Administrator => "administrator".to_owned(),
            Actor::Cli => "cli".to_owned(),
            Actor::Engine => "engine".to_owned(),
        }
    }
}

/// Where the calls of an area handle come from, recorded with every change they make (the
/// outbox's actor and request id).
///
/// By default a change is recorded as made by whoever it acts for (the user who posts,
/// logs out or changes their password; [`Actor::Engine`] for a reply; [`Actor::Administrator`]
/// for administration) with no request id. A server gives each call its request's id
/// (`narutalk.chat().with_request(id)`, and the same on `accounts()`, `tokens()` and
/// `admin()`); a tool that makes every change itself fixes the actor for the whole handle
/// ([`crate::Narutalk::acting_as`]: the CLI records [`Actor::Cli`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The actor recorded for every change, whoever the change acts for; `None`: the
    /// acting user (or the engine, or an administrator).
    pub actor: Option<Actor>,
    /// The id of the request that made the call, if any.
    pub request_id: Option<Arc<str>>,
}

impl Origin {
    /// The actor recorded for a change that acts for `acting`.
    pub fn actor_for(&self, acting: Actor) -> Actor {
        self.actor.unwrap_or(acting)
    }
}

/// A subscriber's callback: it runs on the publishing thread, so it must not block.
pub type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

/// Hands every published [`Event`] to every subscriber, in-process.
#[derive(Default)]
pub struct EventBus {
    shared: Arc<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    /// Copied on write, so publishing holds the lock only to clone the list.
    list: Mutex<Arc<Vec<(u64, Callback)>>>,
    next: AtomicU64,
}

impl Subscribers {
    fn lock(&self) -> MutexGuard<'_, Arc<Vec<(u64, Callback)>>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EventBus {
    /// A bus with no subscriber.
    pub fn new() -> EventBus {
        EventBus::default()
    }

    /// Calls `callback` with every event published from now on, until the returned
    /// subscription is dropped. The callback runs on the publisher's thread: it must
    /// only hand the event on, never block or wait.
    pub fn subscribe(&self, callback: Callback) -> EventSubscription {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut list = self.shared.lock();
        let mut next = Vec::with_capacity(list.len() + 1);
        next.extend(list.iter().cloned());
        next.push((id, callback));
        *list = Arc::new(next);
        EventSubscription {
            bus: Arc::downgrade(&self.shared),
            id,
        }
    }

    /// Queues every event published from now on for the returned receiver, at most
    /// `capacity` (at least 1) at a time: when the queue is full, an event is dropped
    /// for this subscriber and counted in [`EventReceiver::missed`]. The receiver's
    /// queue ends when the subscription (or the bus) is dropped.
    pub fn subscribe_channel(&self, capacity: usize) -> (EventSubscription, EventReceiver) {
        let (sender, receiver) = mpsc::sync_channel(capacity.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        let counted = missed.clone();
        let subscription = self.subscribe(Arc::new(move |event: &Event| {
            match sender.try_send(event.clone()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        (subscription, EventReceiver { receiver, missed })
    }

    /// Hands `event` to every subscriber, on this thread, without waiting for any.
    pub fn publish(&self, event: &Event) {
        let list = self.shared.lock().clone();
        for (_, callback) in list.iter() {
            // A subscriber's bug must not reach the core's caller, nor the subscribers
            // after it.
            let _ = catch_unwind(AssertUnwindSafe(|| callback(event)));
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.shared.lock().len()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

/// A subscriber's place on an [`EventBus`]: dropping it unsubscribes.
#[must_use = "dropping the subscription unsubscribes at once"]
#[derive(Debug)]
pub struct EventSubscription {
    bus: Weak<Subscribers>,
    id: u64,
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        let removed = {
            let mut list = bus.lock();
            let next: Vec<_> = list
                .iter()
                .filter(|(id, _)| *id != self.id)
                .cloned()
                .collect();
            std::mem::replace(&mut *list, Arc::new(next))
        };
        // The callback (and whatever it holds) is dropped outside the lock.
        drop(removed);
    }
}

/// The receiving end of [`EventBus::subscribe_channel`].
#[derive(Debug)]
pub struct EventReceiver {
    receiver: mpsc::Receiver<Event>,
    missed: Arc<AtomicU64>,
}

impl EventReceiver {
    /// The next event, waiting for one; `None` once the subscription or the bus is gone.
    pub fn recv(&self) -> Option<Event> {
        self.receiver.recv().ok()
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// Events dropped because the queue was full, since the subscription began.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::AtomicUsize;

    use chrono::Utc;

    use super::*;
    use crate::chat::{MessageType, Sender};
    use crate::fields::JsonObject;

    fn message(session: SessionId, seq: i64) -> Message {
        Message {
            id: MessageId::new_random(),
            session_id: session,
            seq,
            content: format!("message {seq}"),
            sender: Sender::User,
            message_type: MessageType::Text,
            metadata: JsonObject::new(),
            timestamp: Utc::now(),
            reply_to: None,
        }
    }

    #[test]
    fn every_subscriber_hears_every_event_in_publish_order() {
        let bus = EventBus::new();
        let session = SessionId::new_random();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let _callback = bus.subscribe({
            let heard = heard.clone();
            Arc::new(move |event: &Event| heard.lock().unwrap().push(event.clone()))
        });
        let (_channel, receiver) = bus.subscribe_channel(8);
        let events: Vec<Event> = (1..=3)
            .map(|seq| Event::stored(message(session, seq)))
            .collect();
        for event in &events {
            bus.publish(event);
        }
        assert_eq!(*heard.lock().unwrap(), events);
        let received: Vec<Event> = std::iter::from_fn(|| receiver.try_recv()).collect();
        assert_eq!(received, events);
        assert_eq!(receiver.missed(), 0);
    }

    #[test]
    fn a_stored_event_carries_the_message_and_its_place() {
        let session = SessionId::new_random();
        let stored = message(session, 7);
        let event = Event::stored(stored.clone());
        assert_eq!(event.session(), Some(session));
        match event {
            Event::MessageStored {
                seq, id, message, ..
            } => {
                assert_eq!((seq, id), (7, stored.id));
                assert_eq!(message.as_deref(), Some(&stored));
            }
            other => panic!("expected a stored message, got {other:?}"),
        }
        let revoked = Event::UserRevoked {
            user: UserId(1),
            cause: Revocation::Deactivated,
        };
        assert_eq!(revoked.session(), None);
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking_the_publisher() {
        let bus = EventBus::new();
        let (_subscription, receiver) = bus.subscribe_channel(2);
        let session = SessionId::new_random();
        for seq in 1..=5 {
            bus.publish(&Event::stored(message(session, seq)));
        }
        assert_eq!(receiver.missed(), 3);
        let seqs: Vec<i64> = std::iter::from_fn(|| receiver.try_recv())
            .map(|event| match event {
                Event::MessageStored { seq, .. } => seq,
                _ => 0,
            })
            .collect();
        assert_eq!(seqs, [1, 2], "the oldest are kept, the rest counted");
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_and_ends_its_channel() {
        let bus = EventBus::new();
        let count = Arc::new(AtomicUsize::new(0));
        let callback = bus.subscribe({
            let count = count.clone();
            Arc::new(move |_: &Event| {
                count.fetch_add(1, Ordering::SeqCst);
            })
        });
        let (channel, receiver) = bus.subscribe_channel(4);
        assert_eq!(bus.subscribers(), 2);
        let event = Event::SessionDeleted {
            session: SessionId::new_random(),
            owner: UserId(3),
        };
        bus.publish(&event);
        drop(callback);
        drop(channel);
        assert_eq!(bus.subscribers(), 0);
        bus.publish(&event);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(receiver.recv(), Some(event));
        assert_eq!(
            receiver.recv(),
            None,
            "the channel ends with its subscription"
        );
    }

    #[test]
    fn a_panicking_subscriber_harms_neither_the_publisher_nor_the_others() {
        let bus = EventBus::new();
        let _panicking = bus.subscribe(Arc::new(|_: &Event| panic!("a subscriber's bug")));
        let (_channel, receiver) = bus.subscribe_channel(4);
        let event = Event::UserRevoked {
            user: UserId(1),
            cause: Revocation::Deleted,
        };
        bus.publish(&event);
        assert_eq!(receiver.try_recv(), Some(event));
    }

    #[test]
    fn a_callback_may_subscribe_and_unsubscribe_while_it_is_called() {
        let bus = Arc::new(EventBus::new());
        let held = Arc::new(Mutex::new(Vec::new()));
        let _reentrant = bus.subscribe({
            let (bus, held) = (Arc::downgrade(&bus), held.clone());
            Arc::new(move |_: &Event| {
                if let Some(bus) = bus.upgrade() {
                    let subscription = bus.subscribe(Arc::new(|_: &Event| {}));
                    held.lock().unwrap().push(subscription);
                    held.lock().unwrap().clear();
                }
            })
        });
        bus.publish(&Event::UserRevoked {
            user: UserId(2),
            cause: Revocation::TokensRevoked,
        });
        assert_eq!(bus.subscribers(), 1);
    }

    #[test]
    fn publishers_on_many_threads_reach_every_subscriber_with_nothing_lost() {
        let bus = Arc::new(EventBus::new());
        let (_subscription, receiver) = bus.subscribe_channel(10_000);
        let session = SessionId::new_random();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let bus = bus.clone();
                scope.spawn(move || {
                    for n in 0..250 {
                        bus.publish(&Event::stored(message(session, thread * 1000 + n)));
                    }
                });
            }
        });
        let mut seqs: Vec<i64> = std::iter::from_fn(|| receiver.try_recv())
            .map(|event| match event {
                Event::MessageStored { seq, .. } => seq,
                _ => -1,
            })
            .collect();
        assert_eq!(seqs.len(), 1000);
        // Each thread's events arrive in that thread's order.
        for thread in 0..4 {
            let mine: Vec<i64> = seqs
                .iter()
                .copied()
                .filter(|seq| seq / 1000 == thread)
                .collect();
            assert!(mine.windows(2).all(|pair| pair[0] < pair[1]));
        }
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 1000);
    }
}
