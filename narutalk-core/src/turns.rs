//! The turn engine: it answers every posted user message, one turn at a time per session,
//! in the session's order, for REST, WebSocket, the CLI and embedders alike.
//!
//! **Pending turns are stored.** Posting stores the user message and its pending turn in
//! one transaction ([`crate::store::ChatStore::post_message`]); storing the reply marks it
//! answered. So a turn that a crash interrupts is still pending at the next start, and answered
//! then (contract section 9), while a migration or `narutalk session import` creates no
//! turn at all.
//!
//! **One driver per session.** The engine answers a session's turns one at a time, oldest
//! first: a *driver* claims the session's oldest pending turn (a lease written to the store:
//! this process's random id and an expiry, so that a backend shared by several processes
//! can tell whose it is), reads the history, runs the responder, stores the reply or the
//! system error message (claiming the session's next pending turn in the same
//! transaction), publishes it, and goes on with the next turn of the session until there
//! is none. Sessions are driven in parallel; a process has at most one driver per session
//! (the engine's map of sessions, under one lock that is never held across storage or a
//! responder). A post that finds its session's driver at work hands its turn over (or
//! marks the session to be looked at again) instead of starting another.
//!
//! **Where drivers run.** With the engine started ([`crate::Narutalk::start_turns`]: the
//! server, and embedders that opt in), each driver is one job of the handle's AI pool
//! ([`crate::ai::pool::AiPool`]): at most `NARUTALK_AI_CONCURRENCY` run at once and
//! [`crate::ai::pool::QUEUE`] more wait; a driver the pool refuses answers its turns at
//! once, on the posting thread, with the system error message whose reason is
//! [`crate::ai::ASSISTANT_BUSY`]. A responder that answers from memory
//! ([`Responder::answers_at_once`], such as the template) is not worth a thread hop: a
//! post's own turn is then driven on the posting thread, started engine or not (a reply
//! the database refuses is then handed to the pool, so the post returns at once). Without
//! the engine (the CLI, [`crate::Narutalk::open_for_administration`], embedders that did
//! not opt in), the posting thread drives the session itself, through the same code,
//! before the post returns.
//!
//! **Waiting holds no thread.** Every post gets a [`ReplyCompletion`], registered on its
//! message id (also for an idempotent repeat whose reply is not stored yet; ready at once
//! when it is): a runtime-agnostic future an async server awaits, which a blocking caller
//! [`ReplyCompletion::wait`]s for. The driver that stores the reply completes them all.
//!
//! **A reply the database refuses is kept.** When storing a reply answers
//! [`Error::Unavailable`], the driver keeps it and stores it again with backoff (0.1 s,
//! doubling up to 2 s) before any later turn of the session, so replies stay in order; the
//! waiters hear [`Error::Unavailable`] at the first refusal, and so does a repeat while the
//! reply is kept. A stop ([`crate::Narutalk::stop_turns`]) gives a kept reply up (its turn
//! stays pending, answered after the next start) and lets running turns finish; waiting
//! for the drivers to end is [`crate::Narutalk::turns_drained`].
//!
//! **Starting voids leases.** On SQLite one process owns the file, so the leases a start
//! finds are its dead predecessor's: [`crate::Narutalk::start_turns`] frees them all and
//! drives every session with pending turns, in the order of their oldest turn.
//!
//! Metrics (`narutalk_ai_turns_total`, `narutalk_ai_turn_duration_seconds`,
//! `narutalk_ai_first_delta_seconds`, `narutalk_ai_turns_queued`, and the pool's
//! `narutalk_ai_turns_running`) and the failure's log line (target `narutalk::ai`, fields
//! `session`, `responder`, `reason` and `detail`) are the engine's.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::ai::pool::AiPool;
use crate::ai::{AiError, AiReply, AiRequest, Responder, run_responder};
use crate::chat::{AI_UNAVAILABLE, Message, MessageId, MessageType, NewMessage, Sender, SessionId};
use crate::error::Error;
use crate::events::{Actor, Event, EventBus, Origin};
use crate::fields::JsonObject;
use crate::metrics;
use crate::store::{Audit, ClaimedTurn, Lease, Store};
use crate::workers::{Busy, Completer, Completion, JobLost, completion};

/// The first wait before storing a refused reply again; it doubles after each refusal.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two tries to store a refused reply.
pub const LAST_RETRY: Duration = Duration::from_secs(2);

/// How long a lease outlives the AI call it covers (contract section 9: another server
/// takes a turn over within `NARUTALK_AI_TIMEOUT_SECONDS` + 30 s).
const LEASE_MARGIN_SECONDS: i64 = 30;

/// A reply that is not stored yet: await it, or [`ReplyCompletion::wait`] for it.
///
/// It completes with the stored reply (the AI's, or the system error message), with
/// [`Error::Unavailable`] when the database refused the reply (it is kept and stored
/// later) or the engine stopped, and with [`Error::NotFound`] when the session was
/// deleted first. A repeat's completion has a patience ([`ReplyCompletion::patience`]):
/// how long a caller should wait before answering [`Error::Unavailable`].
#[must_use = "a completion does nothing unless awaited or waited for"]
pub struct ReplyCompletion {
    completion: Completion<Result<Message, Error>>,
    patience: Option<Duration>,
}

impl ReplyCompletion {
    /// How long to wait at most, if the wait is bounded: a repeated post waits one whole
    /// AI call plus the time to store it ([`crate::Narutalk::reply_wait`]); a first post
    /// waits for its turn however long it takes.
    pub fn patience(&self) -> Option<Duration> {
        self.patience
    }

    /// Blocks until the reply is stored (or will not be), within the patience.
    pub fn wait(mut self) -> Result<Message, Error> {
        match self.patience {
            Some(patience) => match self.completion.wait_timeout(patience) {
                Some(outcome) => flatten(outcome),
                None => Err(Error::Unavailable(
                    "the reply is still being produced".into(),
                )),
            },
            None => flatten(self.completion.wait()),
        }
    }

    /// Whether the outcome is known already.
    pub fn is_ready(&self) -> bool {
        self.completion.is_finished()
    }

    /// A completion that is ready with `outcome`.
    fn ready(outcome: Result<Message, Error>) -> ReplyCompletion {
        let (completer, completion) = completion();
        completer.finish(Ok(outcome));
        ReplyCompletion {
            completion,
            patience: None,
        }
    }
}

impl Future for ReplyCompletion {
    type Output = Result<Message, Error>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.completion).poll(context).map(flatten)
    }
}

impl std::fmt::Debug for ReplyCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyCompletion")
            .field("ready", &self.is_ready())
            .field("patience", &self.patience)
            .finish()
    }
}

fn flatten(outcome: Result<Result<Message, Error>, JobLost>) -> Result<Message, Error> {
    outcome.unwrap_or_else(|_| Err(Error::Unavailable("the turn engine stopped".into())))
}

/// Waits until every driver has ended: see [`crate::Narutalk::turns_drained`].
#[must_use = "a completion does nothing unless awaited or waited for"]
#[derive(Debug)]
pub struct Drained(Completion<()>);

impl Drained {
    /// Blocks until every driver has ended, at most `limit`; true if they have.
    pub fn wait_timeout(mut self, limit: Duration) -> bool {
        self.0.wait_timeout(limit).is_some()
    }
}

impl Future for Drained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(context).map(|_| ())
    }
}

/// What the engine needs: built once per handle.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) responder: Arc<dyn Responder>,
    pub(crate) events: Arc<EventBus>,
    pub(crate) pool: AiPool,
    pub(crate) history_messages: u32,
    pub(crate) ai_timeout: Duration,
    pub(crate) reply_wait: Duration,
}

/// The turn engine of one handle.
pub(crate) struct Engine {
    store: Arc<dyn Store>,
    responder: Arc<dyn Responder>,
    events: Arc<EventBus>,
    pool: AiPool,
    history_messages: u32,
    lease_for: chrono::Duration,
    reply_wait: Duration,
    /// This process's lease holder: a random id.
    holder: Arc<str>,
    /// Whether other processes share the storage ([`crate::store::Feed::shared`]): their
    /// leases are kept at a start, and every reply looks for the session's next turn
    /// (another process may have stored it).
    shared: bool,
    /// Drivers run on the pool (the engine is started); otherwise on the posting thread.
    started: AtomicBool,
    /// A stop was asked for: kept replies are given up.
    stopping: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a stop is asked for, to end a backoff's sleep early.
    stopped: Condvar,
}

#[derive(Default)]
struct State {
    /// The sessions with a driver at work.
    drivers: HashMap<SessionId, Driver>,
    /// Who waits for the reply to each message.
    waiters: HashMap<MessageId, Waiting>,
    /// Messages whose reply is produced but refused by the database, and kept.
    unstored: HashSet<MessageId>,
    /// Who waits for every driver to end.
    drained: Vec<Completer<()>>,
}

impl State {
    /// Removes the session's driver; answers the drain waits to complete when it was the
    /// last one.
    fn remove_driver(&mut self, session: SessionId) -> Vec<Completer<()>> {
        if let Some(driver) = self.drivers.remove(&session) {
            metrics::gauge_add(metrics::AI_QUEUED, -f64::from(driver.waiting));
        }
        if self.drivers.is_empty() {
            std::mem::take(&mut self.drained)
        } else {
            Vec::new()
        }
    }
}

/// Who waits for the reply to one message of a session.
struct Waiting {
    session: SessionId,
    /// The tracing span the message was posted in (a server's request span): the turn's
    /// work and log lines run in it, so they carry the request's id.
    span: tracing::Span,
    completers: Vec<Completer<Result<Message, Error>>>,
}

/// What a session's driver must look at once its current turn is done.
#[derive(Default)]
struct Driver {
    /// A turn a post claimed and handed over.
    handoff: Option<ClaimedTurn>,
    /// A post stored a turn that it did not claim: look for it.
    dirty: bool,
    /// Posts that found the driver at work: their turns wait behind an earlier one
    /// (counted in [`metrics::AI_QUEUED`]).
    waiting: u32,
}

/// Where a driver goes next.
enum Next {
    /// Answer this turn.
    Turn(ClaimedTurn),
    /// Claim the session's oldest pending turn.
    Claim,
    /// Look at what posts left meanwhile, or end.
    Settle,
    /// End now (a stop gave a reply up, or storage failed).
    End,
    /// Store a produced reply that the database refused.
    Store(Box<Kept>),
}

/// A produced reply the database refused, kept to be stored again before any later turn
/// of its session.
struct Kept {
    /// The user message it answers.
    message: Message,
    reply: NewMessage,
    /// Whether the driver began with a backlog (see [`Engine::drive`]).
    backlog: bool,
    /// Whether a refusal was told already (logged, and the waiters answered).
    refused: bool,
    /// The wait before the next try.
    wait: Duration,
}

impl Engine {
    pub(crate) fn new(parts: Parts) -> Engine {
        let lease_for = chrono::Duration::from_std(parts.ai_timeout)
            .unwrap_or(chrono::Duration::MAX)
            .checked_add(&chrono::Duration::seconds(LEASE_MARGIN_SECONDS))
            .unwrap_or(chrono::Duration::MAX);
        let shared = parts.store.shared();
        Engine {
            store: parts.store,
            responder: parts.responder,
            events: parts.events,
            pool: parts.pool,
            history_messages: parts.history_messages,
            lease_for,
            reply_wait: parts.reply_wait,
            holder: random_holder().into(),
            shared,
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            stopped: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The AI pool the drivers run on.
    pub(crate) fn pool(&self) -> &AiPool {
        &self.pool
    }

    /// The responder in use.
    pub(crate) fn responder(&self) -> &Arc<dyn Responder> {
        &self.responder
    }

    /// Whether drivers run on the pool.
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// A lease of this process, from now.
    pub(crate) fn lease(&self) -> Lease {
        let now = crate::time::now();
        Lease {
            holder: self.holder.clone(),
            now,
            until: now.checked_add_signed(self.lease_for).unwrap_or(now),
        }
    }

    /// Starts the engine: frees every lease, then drives each session with pending turns.
    /// When storage fails on the way, the engine is started all the same; the turns left
    /// pending are then answered with their session's next post.
    pub(crate) fn start(self: &Arc<Self>) -> Result<(), Error> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stopping.store(false, Ordering::Release);
        // Shared storage: the leases found are other processes' (alive or expiring), not
        // a dead predecessor's.
        let voided = if self.shared {
            0
        } else {
            self.store.void_leases()?
        };
        let sessions = self.store.pending_sessions(crate::time::now())?;
        if !sessions.is_empty() || voided > 0 {
            tracing::info!(
                target: "narutalk::ai",
                sessions = sessions.len(),
                leases_voided = voided,
                "answering the turns left pending"
            );
        }
        for session in sessions {
            self.kick(session, None);
        }
        Ok(())
    }

    /// Asks for a stop: kept replies are given up, and no driver starts on the pool any
    /// more (later posts are driven on their own thread).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.started.store(false, Ordering::Release);
        let _state = self.lock();
        self.stopped.notify_all();
    }

    /// Completes once no driver is at work.
    pub(crate) fn drained(&self) -> Drained {
        let (completer, completion) = completion();
        let mut state = self.lock();
        if state.drivers.is_empty() {
            drop(state);
            completer.finish(Ok(()));
        } else {
            state.drained.push(completer);
        }
        Drained(completion)
    }

    /// Registers a wait for the reply to `message` of `session` (before anyone can store
    /// it).
    pub(crate) fn register(&self, session: SessionId, message: MessageId) -> ReplyCompletion {
        let (completer, completion) = completion();
        let mut state = self.lock();
        let waiting = state.waiters.entry(message).or_insert_with(|| Waiting {
            session,
            span: tracing::Span::current(),
            completers: Vec::new(),
        });
        waiting.completers.retain(|waiter| !waiter.abandoned());
        waiting.completers.push(completer);
        ReplyCompletion {
            completion,
            patience: None,
        }
    }

    /// Forgets the waits registered for `message` (a post that stored nothing).
    pub(crate) fn forget(&self, message: MessageId) {
        let removed = self.lock().waiters.remove(&message);
        // Dropped outside the lock: each waiter hears that its wait ended.
        drop(removed);
    }

    /// The wait of a repeated post whose reply was not stored when it looked: ready at
    /// once when the reply is stored by now or is kept unstored, bounded by the reply wait.
    pub(crate) fn register_repeat(&self, message: &Message) -> Result<ReplyCompletion, Error> {
        if self.lock().unstored.contains(&message.id) {
            return Ok(ReplyCompletion::ready(Err(unstored_error())));
        }
        let mut waiting = self.register(message.session_id, message.id);
        // The reply may have been stored between the post's read and the registration.
        if let Some(reply) = self.store.reply_for(message.id)? {
            self.forget_abandoned(message.id);
            return Ok(ReplyCompletion::ready(Ok(reply)));
        }
        waiting.patience = Some(self.reply_wait);
        Ok(waiting)
    }

    /// A stored reply, ready: for a repeat whose reply was found stored.
    pub(crate) fn ready(reply: Message) -> ReplyCompletion {
        ReplyCompletion::ready(Ok(reply))
    }

    fn forget_abandoned(&self, message: MessageId) {
        let mut state = self.lock();
        if let Some(waiting) = state.waiters.get_mut(&message) {
            waiting.completers.retain(|waiter| !waiter.abandoned());
            if waiting.completers.is_empty() {
                state.waiters.remove(&message);
            }
        }
    }

    /// Makes sure `session`'s pending turns are answered: hands `claimed` (a turn the
    /// post claimed) to the session's driver, or starts one: on the pool when the engine
    /// is started (answering `assistant busy` at once when the pool is full), or else on
    /// this thread.
    pub(crate) fn kick(self: &Arc<Self>, session: SessionId, claimed: Option<ClaimedTurn>) {
        let claimed_here = claimed.is_some();
        {
            let mut state = self.lock();
            if let Some(driver) = state.drivers.get_mut(&session) {
                match claimed {
                    Some(turn) => driver.handoff = Some(turn),
                    None => driver.dirty = true,
                }
                driver.waiting += 1;
                metrics::gauge_add(metrics::AI_QUEUED, 1.0);
                return;
            }
            state.drivers.insert(
                session,
                Driver {
                    handoff: claimed,
                    ..Driver::default()
                },
            );
        }
        // A responder that waits on nothing is run where the post was made: a fresh post's
        // turn (claimed by the post itself) then costs no thread hop.
        if !self.is_started() {
            self.drive(session, false, false);
            return;
        }
        if claimed_here && self.responder.answers_at_once() {
            self.drive(session, false, true);
            return;
        }
        let engine = self.clone();
        let submitted = self
            .pool
            .submit(move || engine.drive(session, false, false));
        match submitted {
            // The driver tells its waiters itself; nobody waits for the job.
            Ok(job) => drop(job),
            Err(Busy) => self.drive(session, true, false),
        }
    }

    /// A session's driver: answers its pending turns one at a time until none is left.
    /// `busy`: the pool had no room, so each turn is answered `assistant busy`.
    /// `inline`: on a posting thread of a started engine, which must not wait out a
    /// database that refuses a reply: the pool takes the rest of the driver over then.
    fn drive(self: &Arc<Self>, session: SessionId, busy: bool, inline: bool) {
        let next = match self.take_handoff(session) {
            Some(turn) => Next::Turn(turn),
            None => Next::Claim,
        };
        let backlog = matches!(next, Next::Claim);
        self.run(session, next, busy, inline, backlog, false);
    }

    /// [`Engine::drive`]'s loop, from `next`; `answered`: a turn of this driver was
    /// answered already.
    fn run(
        self: &Arc<Self>,
        session: SessionId,
        mut next: Next,
        busy: bool,
        inline: bool,
        mut backlog: bool,
        mut answered: bool,
    ) {
        // `backlog`: whether more turns of the session may be pending than the posts of
        // this process told the driver about (it began by looking, as at a start): each
        // reply then claims the next turn in its transaction. A driver handed a fresh
        // post's turn knows of every later one through the posts' marks.
        loop {
            next = match next {
                Next::Turn(turn) => {
                    if answered {
                        self.dequeue_one(session);
                    }
                    answered = true;
                    self.answer(turn, busy, backlog, inline)
                }
                Next::Store(kept) if inline => {
                    match self.hand_over(session, kept, busy, answered) {
                        None => return,
                        Some(kept) => self.store_in_order(kept, false),
                    }
                }
                Next::Store(kept) => self.store_in_order(kept, false),
                Next::Claim => match self.store.claim_turn(session, &self.lease()) {
                    Ok(Some(turn)) => {
                        backlog = true;
                        Next::Turn(turn)
                    }
                    Ok(None) => Next::Settle,
                    Err(error) => {
                        // The turns stay pending: the session's next post (or the next
                        // start) drives them again.
                        tracing::warn!(
                            target: "narutalk::ai",
                            session = %session,
                            %error,
                            "could not claim a pending turn"
                        );
                        Next::End
                    }
                },
                Next::Settle => match self.settle(session) {
                    Some(next) => next,
                    None => return,
                },
                Next::End => {
                    self.abandon_session(session);
                    return;
                }
            };
        }
    }

    /// Moves the rest of a driver to the pool: a posting thread that met a refused reply
    /// returns (its waiters have heard why) while the pool stores the reply again with
    /// backoff. `None` once the pool has it; the reply back when the pool is full (the
    /// posting thread keeps trying then).
    fn hand_over(
        self: &Arc<Self>,
        session: SessionId,
        kept: Box<Kept>,
        busy: bool,
        answered: bool,
    ) -> Option<Box<Kept>> {
        let slot = Arc::new(Mutex::new(Some(kept)));
        let engine = self.clone();
        let taken = slot.clone();
        let submitted = self.pool.submit(move || {
            let kept = taken
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(kept) = kept {
                let backlog = kept.backlog;
                engine.run(session, Next::Store(kept), busy, false, backlog, answered);
            }
        });
        match submitted {
            Ok(job) => {
                drop(job);
                None
            }
            Err(Busy) => slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        }
    }

    /// The handed-over turn of a session, if a post left one.
    fn take_handoff(&self, session: SessionId) -> Option<ClaimedTurn> {
        self.lock()
            .drivers
            .get_mut(&session)
            .and_then(|driver| driver.handoff.take())
    }

    /// What a driver with nothing in hand does: the turn a post handed over, a look for a
    /// turn a post stored meanwhile, or (`None`) the end of the driver.
    fn settle(&self, session: SessionId) -> Option<Next> {
        let mut state = self.lock();
        if let Some(driver) = state.drivers.get_mut(&session) {
            if let Some(turn) = driver.handoff.take() {
                return Some(Next::Turn(turn));
            }
            if driver.dirty {
                driver.dirty = false;
                return Some(Next::Claim);
            }
        }
        drop(state);
        self.end(session);
        None
    }

    /// Whether a post stored a turn of `session` that this driver has not looked for yet
    /// (the mark stays: [`Engine::settle`] clears it).
    fn posted_meanwhile(&self, session: SessionId) -> bool {
        self.lock()
            .drivers
            .get(&session)
            .is_some_and(|driver| driver.dirty)
    }

    /// One turn that waited behind an earlier one of the session is being answered.
    fn dequeue_one(&self, session: SessionId) {
        if let Some(driver) = self.lock().drivers.get_mut(&session)
            && driver.waiting > 0
        {
            driver.waiting -= 1;
            metrics::gauge_add(metrics::AI_QUEUED, -1.0);
        }
    }

    /// Removes the session's driver; the last one to go completes the drain waits.
    fn end(&self, session: SessionId) {
        let drained = self.lock().remove_driver(session);
        for waiter in drained {
            waiter.finish(Ok(()));
        }
    }

    /// Answers one claimed turn: the responder's reply (or the system error message) is
    /// stored, published and handed to the waiters. Answers where the driver goes next.
    fn answer(&self, turn: ClaimedTurn, busy: bool, backlog: bool, inline: bool) -> Next {
        let span = self
            .lock()
            .waiters
            .get(&turn.message.id)
            .map_or_else(tracing::Span::none, |waiting| waiting.span.clone());
        span.in_scope(|| self.answer_in_span(turn, busy, backlog, inline))
    }

    /// [`Engine::answer`], in the span of the post that asked for the turn, if known.
    fn answer_in_span(&self, turn: ClaimedTurn, busy: bool, backlog: bool, inline: bool) -> Next {
        let message = turn.message;
        let session = message.session_id;
        let reply_id = MessageId::new_random();
        let responder = metrics::responder_label(self.responder.name());
        let outcome = if busy {
            metrics::ai_turn(responder, Some(crate::ai::ASSISTANT_BUSY), Duration::ZERO);
            Err(AiError::from(Busy))
        } else {
            let context =
                match self
                    .store
                    .reply_context(session, message.seq, self.history_messages)
                {
                    Ok(context) => context,
                    Err(error) => {
                        // Gone with its session, or unreadable: the waiters hear why; an
                        // unreadable turn stays pending for the session's next driver.
                        let gone = matches!(error, Error::NotFound);
                        self.complete(message.id, |_| Err(copy_error(&error)));
                        return if gone { Next::Settle } else { Next::End };
                    }
                };
            let request = AiRequest {
                session_id: session,
                category: context.category,
                history: context.history,
                message: message.content.clone(),
            };
            self.respond(&message, reply_id, &request)
        };
        if let Err(error) = &outcome {
            log_failure(session, self.responder.name(), error);
        }
        let reply = reply_message(reply_id, message.id, outcome);
        let kept = Kept {
            message,
            reply,
            backlog,
            refused: false,
            wait: FIRST_RETRY,
        };
        self.store_in_order(Box::new(kept), inline)
    }

    /// Runs the responder on this thread, publishing its deltas and timing it.
    fn respond(
        &self,
        message: &Message,
        reply_id: MessageId,
        request: &AiRequest,
    ) -> Result<AiReply, AiError> {
        let responder = metrics::responder_label(self.responder.name());
        let running = metrics::GaugeHold::new(metrics::AI_RUNNING);
        let called = Instant::now();
        let mut streamed = false;
        let outcome = run_responder(self.responder.as_ref(), request, &mut |delta| {
            if !streamed {
                streamed = true;
                metrics::ai_first_delta(responder, called.elapsed());
            }
            self.events.publish(&Event::ReplyDelta {
                session: message.session_id,
                reply: reply_id,
                answers: message.id,
                answers_seq: message.seq,
                text: delta.to_owned(),
            });
        });
        drop(running);
        metrics::ai_turn(
            responder,
            outcome.as_ref().err().map(AiError::reason),
            called.elapsed(),
        );
        outcome
    }

    /// Stores a produced reply, trying again with backoff while the database refuses it,
    /// so that no later reply of the session is stored before it; claims the session's
    /// next pending turn in the same transaction.
    /// `inline`: at a refusal, answer [`Next::Store`] rather than wait here.
    fn store_in_order(&self, kept: Box<Kept>, inline: bool) -> Next {
        let Kept {
            message,
            reply: new,
            backlog,
            mut refused,
            mut wait,
        } = *kept;
        let (message, new) = (&message, &new);
        let session = message.session_id;
        let audit = Audit::now(&Origin::default(), Actor::Engine);
        loop {
            // The session's next turn is claimed with the reply when there may be one: a
            // backlog, or a post that stored one meanwhile (a post that comes later marks
            // the driver, which then looks). An idle session's reply looks for nothing.
            let lease = self.lease();
            // On shared storage another process may have stored one at any time.
            let next = (backlog || self.shared || self.posted_meanwhile(session)).then_some(&lease);
            match self
                .store
                .store_reply(session, message.seq, new, &audit, next, Instant::now())
            {
                Ok(stored) => {
                    if refused {
                        self.lock().unstored.remove(&message.id);
                        tracing::info!(session = %session, message = %message.id, "the refused reply is stored");
                    }
                    if stored.stored_now {
                        self.events.publish(&Event::stored(stored.reply.clone()));
                    }
                    let reply = stored.reply;
                    self.complete(message.id, |_| Ok(reply.clone()));
                    return match stored.next {
                        Some(turn) => Next::Turn(turn),
                        None => Next::Settle,
                    };
                }
                Err(Error::Unavailable(cause)) => {
                    if !refused {
                        refused = true;
                        tracing::warn!(
                            session = %session,
                            message = %message.id,
                            %cause,
                            "the database refused a reply: it is kept and stored once writes work again"
                        );
                        self.lock().unstored.insert(message.id);
                        self.complete(message.id, |_| Err(unstored_error()));
                    }
                    if inline {
                        return Next::Store(Box::new(Kept {
                            message: message.clone(),
                            reply: new.clone(),
                            backlog,
                            refused,
                            wait,
                        }));
                    }
                    if self.sleep_unless_stopping(wait) {
                        self.lock().unstored.remove(&message.id);
                        tracing::warn!(
                            session = %session,
                            message = %message.id,
                            "shutting down with a reply the database refused: it is not stored"
                        );
                        return Next::End;
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
                Err(error) => {
                    if refused {
                        self.lock().unstored.remove(&message.id);
                    }
                    let gone = matches!(error, Error::NotFound);
                    if !gone {
                        tracing::error!(session = %session, message = %message.id, %error, "a reply could not be stored");
                    }
                    self.complete(message.id, |_| Err(copy_error(&error)));
                    return if gone { Next::Settle } else { Next::End };
                }
            }
        }
    }

    /// A reply (or system message) of `session` was stored by another process: hands it
    /// to whoever here waits for it (an idempotent repeat, or a post whose turn the other
    /// process answered).
    pub(crate) fn stored_elsewhere(&self, session: SessionId) {
        let waited: Vec<MessageId> = self
            .lock()
            .waiters
            .iter()
            .filter(|(_, waiting)| waiting.session == session)
            .map(|(message, _)| *message)
            .collect();
        self.complete_stored(waited);
    }

    /// Looks again at what other processes may have done unheard (shared storage, after
    /// the feed lost notifications, and now and then): replies stored for the waits of
    /// this process, and turns left pending whose lease is free or expired (their process
    /// died: contract section 9), which a driver here then claims.
    pub(crate) fn look_again(self: &Arc<Self>) {
        let waited: Vec<MessageId> = self.lock().waiters.keys().copied().collect();
        self.complete_stored(waited);
        if !self.is_started() {
            return;
        }
        let sessions = match self.store.pending_sessions(crate::time::now()) {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(target: "narutalk::ai", %error, "could not look for turns left pending");
                return;
            }
        };
        for session in sessions {
            if !self.lock().drivers.contains_key(&session) {
                self.kick(session, None);
            }
        }
    }

    /// Completes the waits of those of `messages` whose reply is stored.
    fn complete_stored(&self, messages: Vec<MessageId>) {
        for message in messages {
            match self.store.reply_for(message) {
                Ok(Some(reply)) => self.complete(message, |_| Ok(reply.clone())),
                Ok(None) => {}
                // The next look tries again.
                Err(_) => return,
            }
        }
    }

    /// Sleeps `wait`, or less when a stop is asked for; true when stopping.
    fn sleep_unless_stopping(&self, wait: Duration) -> bool {
        let state = self.lock();
        if self.stopping.load(Ordering::Acquire) {
            return true;
        }
        let _ = self
            .stopped
            .wait_timeout_while(state, wait, |_| !self.stopping.load(Ordering::Acquire))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.stopping.load(Ordering::Acquire)
    }

    /// Hands every waiter of `message` its outcome (made once per waiter).
    fn complete(&self, message: MessageId, outcome: impl Fn(()) -> Result<Message, Error>) {
        let waiting = self.lock().waiters.remove(&message);
        for waiter in waiting.into_iter().flat_map(|waiting| waiting.completers) {
            waiter.finish(Ok(outcome(())));
        }
    }

    /// Tells every waiter of a turn of `session` that its reply will not come from this
    /// driver: the driver ends with turns still pending (storage failed, or a stop), which
    /// the session's next post or the next start answers.
    /// Ends the session's driver too, in the same step, so that a later post starts a new
    /// one.
    fn abandon_session(&self, session: SessionId) {
        let (abandoned, drained): (Vec<Waiting>, Vec<Completer<()>>) = {
            let mut state = self.lock();
            let drained = state.remove_driver(session);
            let messages: Vec<MessageId> = state
                .waiters
                .iter()
                .filter(|(_, waiting)| waiting.session == session)
                .map(|(message, _)| *message)
                .collect();
            let abandoned = messages
                .iter()
                .filter_map(|message| state.waiters.remove(message))
                .collect();
            (abandoned, drained)
        };
        for waiter in drained {
            waiter.finish(Ok(()));
        }
        for waiter in abandoned.into_iter().flat_map(|waiting| waiting.completers) {
            waiter.finish(Ok(Err(Error::Unavailable(
                "the turn could not be answered now; it stays pending".into(),
            ))));
        }
    }
}

/// The stored answer to a turn: the AI's reply, or the system error message with
/// `{"reason": ...}`.
fn reply_message(
    id: MessageId,
    reply_to: MessageId,
    outcome: Result<AiReply, AiError>,
) -> NewMessage {
    match outcome {
        Ok(reply) => NewMessage {
            id,
            sender: Sender::Ai,
            message_type: MessageType::Text,
            content: reply.content,
            metadata: reply.metadata,
            reply_to: Some(reply_to),
        },
        Err(error) => {
            let mut metadata = JsonObject::new();
            metadata.insert(
                "reason".into(),
                serde_json::Value::String(error.reason().to_owned()),
            );
            NewMessage {
                id,
                sender: Sender::System,
                message_type: MessageType::Error,
                content: AI_UNAVAILABLE.to_owned(),
                metadata,
                reply_to: Some(reply_to),
            }
        }
    }
}

/// What a waiter hears while the reply is kept unstored.
fn unstored_error() -> Error {
    Error::Unavailable("the reply is waiting for the database".into())
}

/// An error for one more waiter: the same kind, the same words.
fn copy_error(error: &Error) -> Error {
    match error {
        Error::NotFound => Error::NotFound,
        Error::Unavailable(cause) => Error::Unavailable(cause.clone()),
        other => Error::internal(format!("{other:#}")),
    }
}

/// The one log line of a failed AI turn: the session, the responder and why (the stored
/// reason, and the detail the responder gave for the log). Never the messages or a key.
fn log_failure(session: SessionId, responder: &str, error: &AiError) {
    match error.detail() {
        Some(detail) => tracing::warn!(
            target: "narutalk::ai",
            session = %session,
            responder,
            reason = error.reason(),
            detail,
            "the AI turn failed"
        ),
        None => tracing::warn!(
            target: "narutalk::ai",
            session = %session,
            responder,
            reason = error.reason(),
            "the AI turn failed"
        ),
    }
}

/// A random id for this process: a lease holder, a store's origin in its notifications.
/// 32 hex digits.
pub(crate) fn random_holder() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Never on a working system. The process id alone would repeat across servers
        // (in containers, every server is process 1): the clock tells them apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        return format!("pid-{}-{nanos}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::Narutalk;
    use crate::accounts::{NewUser, Role, UserId};
    use crate::chat::{Category, Chat, PostInput};
    use crate::config::Config;
    use crate::store::{IdempotencyKey, OpenMode, Posted, UserPost};
    use crate::workers::tests::{Latch, block_on};

    /// How long anything that must happen may take (an upper bound, never a speed).
    const DEADLINE: Duration = Duration::from_secs(60);

    /// A responder that records each message it is asked about and how many calls run at
    /// once, after waiting for its latch; it answers `re: <message>`.
    #[derive(Default)]
    struct Recording {
        latch: Option<Latch>,
        asked: Mutex<Vec<String>>,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    impl Recording {
        fn held(latch: &Latch) -> Recording {
            Recording {
                latch: Some(latch.clone()),
                ..Recording::default()
            }
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl Responder for Recording {
        fn name(&self) -> &str {
            "recording"
        }

        fn respond(
            &self,
            request: &AiRequest,
            on_delta: &mut dyn FnMut(&str),
        ) -> Result<AiReply, AiError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            self.asked.lock().unwrap().push(request.message.clone());
            if let Some(latch) = &self.latch {
                latch.wait();
            }
            on_delta("re: ");
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(AiReply {
                content: format!("re: {}", request.message),
                ..AiReply::default()
            })
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        config: Config,
        narutalk: Narutalk,
        user: UserId,
    }

    fn fixture(responder: Arc<dyn Responder>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing)
            .unwrap()
            .with_responder(responder);
        let user = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: true,
            })
            .unwrap()
            .id;
        Fixture {
            _dir: dir,
            config,
            narutalk,
            user,
        }
    }

    impl Fixture {
        fn session(&self) -> SessionId {
            self.narutalk
                .chat()
                .create_session(self.user, "s", Category::General)
                .unwrap()
                .session
                .id
        }

        fn post(&self, session: SessionId, content: &str) -> crate::chat::Posting {
            self.post_keyed(session, content, None)
        }

        fn post_keyed(
            &self,
            session: SessionId,
            content: &str,
            key: Option<&str>,
        ) -> crate::chat::Posting {
            let mut input = PostInput::text(content, 10_000).unwrap();
            if let Some(key) = key {
                input = input.with_idempotency_key(key).unwrap();
            }
            self.narutalk
                .chat()
                .post(self.user, session, Ok(input))
                .unwrap()
        }

        /// Stores a user message with its pending turn and no answer (as a crash leaves
        /// it), leased by `lease` if given.
        fn left_pending(&self, session: SessionId, content: &str, lease: Option<&Lease>) {
            let message = NewMessage {
                id: MessageId::new_random(),
                sender: Sender::User,
                message_type: MessageType::Text,
                content: content.into(),
                metadata: JsonObject::new(),
                reply_to: None,
            };
            let audit = Audit::now(&Origin::default(), Actor::User(self.user));
            let posted = self
                .narutalk
                .store()
                .post_message(
                    &UserPost {
                        owner: self.user,
                        session,
                        message: &message,
                        idempotency_key: None::<IdempotencyKey<'_>>,
                        now: crate::time::now(),
                        audit: &audit,
                        lease,
                    },
                    Instant::now(),
                )
                .unwrap();
            assert!(matches!(posted, Posted::Stored { .. }));
        }

        /// The session's messages as `sender: content`.
        fn stored(&self, session: SessionId) -> Vec<String> {
            self.narutalk
                .chat()
                .session(self.user, session)
                .unwrap()
                .messages
                .iter()
                .map(|m| format!("{}: {}", m.sender.as_str(), m.content))
                .collect()
        }

        fn drained(&self) {
            assert!(self.narutalk.turns_drained().wait_timeout(DEADLINE));
        }
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < deadline, "{what} did not happen in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_sessions_turns_are_answered_one_at_a_time_in_storage_order() {
        // Arrange: the first turn is held at the AI while two more are posted.
        let latch = Latch::default();
        let responder = Arc::new(Recording::held(&latch));
        let f = fixture(responder.clone());
        f.narutalk.start_turns().unwrap();
        let session = f.session();

        // Act
        let first = f.post(session, "one");
        wait_until("the first turn at the AI", || responder.asked().len() == 1);
        let second = f.post(session, "two");
        let third = f.post(session, "three");
        assert!(!first.reply.is_ready() && !second.reply.is_ready());
        latch.open();
        let replies: Vec<Message> = [first, second, third]
            .into_iter()
            .map(|posting| posting.reply.wait().unwrap())
            .collect();

        // Assert
        assert_eq!(responder.asked(), ["one", "two", "three"]);
        assert_eq!(responder.most_at_once.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.stored(session),
            [
                "user: one",
                "user: two",
                "user: three",
                "ai: re: one",
                "ai: re: two",
                "ai: re: three"
            ]
        );
        let seqs: Vec<i64> = replies.iter().map(|reply| reply.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
        f.drained();
    }

    #[test]
    fn sessions_are_answered_in_parallel_on_the_pool() {
        let latch = Latch::default();
        let responder = Arc::new(Recording::held(&latch));
        let f = fixture(responder.clone());
        f.narutalk.start_turns().unwrap();
        let (a, b) = (f.session(), f.session());
        let first = f.post(a, "in a");
        let second = f.post(b, "in b");
        // Both turns reach the AI while neither is answered.
        wait_until("both turns at the AI", || {
            responder.running.load(Ordering::SeqCst) == 2
        });
        latch.open();
        assert_eq!(first.reply.wait().unwrap().content, "re: in a");
        assert_eq!(block_on(second.reply).unwrap().content, "re: in b");
        assert_eq!(responder.most_at_once.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_start_voids_old_leases_and_answers_the_pending_turns_in_each_sessions_order() {
        // Arrange: turns left by a process that died holding a lease, and one unleased.
        let responder = Arc::new(Recording::default());
        let f = fixture(responder.clone());
        let (a, b) = (f.session(), f.session());
        let dead = Lease {
            holder: "a-dead-process".into(),
            now: crate::time::now(),
            until: crate::time::now() + chrono::Duration::hours(1),
        };
        f.left_pending(a, "a1", Some(&dead));
        f.left_pending(a, "a2", None);
        f.left_pending(b, "b1", None);
        // A session whose oldest turn is under a live lease is not listed until it expires.
        let store = f.narutalk.store();
        assert_eq!(store.pending_sessions(crate::time::now()).unwrap(), [b]);
        let later = crate::time::now() + chrono::Duration::hours(2);
        assert_eq!(store.pending_sessions(later).unwrap(), [a, b]);
        // Without the engine, nothing answers them; another holder finds the dead lease
        // still live.
        let other = Lease {
            holder: "another-process".into(),
            ..dead.clone()
        };
        assert_eq!(f.narutalk.store().claim_turn(a, &other).unwrap(), None);

        // Act
        f.narutalk.start_turns().unwrap();
        f.drained();

        // Assert
        assert_eq!(
            f.stored(a),
            ["user: a1", "user: a2", "ai: re: a1", "ai: re: a2"]
        );
        assert_eq!(f.stored(b), ["user: b1", "ai: re: b1"]);
        assert!(
            f.narutalk
                .store()
                .pending_sessions(crate::time::now())
                .unwrap()
                .is_empty()
        );
        assert_eq!(responder.asked().len(), 3);
    }

    #[test]
    fn beyond_the_pool_and_its_queue_a_turn_is_answered_assistant_busy_at_once() {
        // Arrange: a pool of one thread and no queue, its thread held.
        let latch = Latch::default();
        let responder = Arc::new(Recording::held(&latch));
        let f = fixture(responder.clone());
        let narutalk = &f.narutalk;
        let engine = Arc::new(Engine::new(Parts {
            store: narutalk.store.clone(),
            responder: responder.clone(),
            events: narutalk.events.clone(),
            pool: AiPool::with_queue(1, 0),
            history_messages: 20,
            ai_timeout: Duration::from_secs(30),
            reply_wait: Duration::from_secs(35),
        }));
        engine.start().unwrap();
        let chat = Chat {
            store: &*narutalk.store,
            turns: &engine,
            events: &narutalk.events,
            origin: Origin::default(),
            content_max_chars: 100,
            asked_at: None,
        };
        let (a, b) = (f.session(), f.session());
        let post = |session, content| {
            chat.post(f.user, session, PostInput::text(content, 100))
                .unwrap()
        };
        let held = post(a, "held");
        wait_until("the first turn at the AI", || responder.asked().len() == 1);

        // Act
        let busy = post(b, "one too many");

        // Assert: answered before the held turn, without asking the AI.
        assert!(busy.reply.is_ready());
        let busy = busy.reply.wait().unwrap();
        assert_eq!(busy.sender, Sender::System);
        assert_eq!(busy.metadata["reason"], "assistant busy");
        assert_eq!(responder.asked(), ["held"]);
        latch.open();
        assert_eq!(held.reply.wait().unwrap().content, "re: held");
    }

    #[test]
    fn every_waiter_of_a_turn_is_woken_with_its_one_reply() {
        // Arrange: a turn held at the AI, with repeats of its post waiting.
        let latch = Latch::default();
        let responder = Arc::new(Recording::held(&latch));
        let f = fixture(responder.clone());
        f.narutalk.start_turns().unwrap();
        let session = f.session();
        let first = f.post_keyed(session, "once", Some("k"));
        wait_until("the turn at the AI", || responder.asked().len() == 1);
        let repeats: Vec<_> = (0..5)
            .map(|_| f.post_keyed(session, "once", Some("k")))
            .collect();
        assert!(repeats.iter().all(|repeat| repeat.repeated));
        assert!(
            repeats
                .iter()
                .all(|repeat| repeat.reply.patience() == Some(f.narutalk.reply_wait()))
        );

        // Act
        latch.open();

        // Assert
        let reply = first.reply.wait().unwrap();
        for repeat in repeats {
            assert_eq!(repeat.message.id, first.message.id);
            assert_eq!(block_on(repeat.reply).unwrap(), reply);
        }
        assert_eq!(responder.asked(), ["once"]);
        // A repeat after the reply is stored finds it at once.
        let later = f.post_keyed(session, "once", Some("k"));
        assert!(later.reply.is_ready());
        assert_eq!(later.reply.wait().unwrap(), reply);
    }

    #[test]
    fn without_the_engine_a_post_answers_its_sessions_turns_on_the_posting_thread() {
        // Arrange: a turn a crash left pending, and a handle for administration.
        let responder = Arc::new(Recording::default());
        let f = fixture(responder.clone());
        let session = f.session();
        f.left_pending(session, "left over", None);
        let admin = Narutalk::open_for_administration(&f.config).unwrap();

        // Assert: opening answers nothing; neither handle runs the engine.
        assert!(!admin.turns.is_started() && !f.narutalk.turns.is_started());
        assert_eq!(
            admin.store().pending_sessions(crate::time::now()).unwrap(),
            [session]
        );

        // Act: a post through the other handle answers the older turn first, then its own,
        // before it returns.
        let posting = f.post(session, "new");

        // Assert
        assert!(posting.reply.is_ready());
        assert_eq!(posting.reply.wait().unwrap().content, "re: new");
        assert_eq!(responder.asked(), ["left over", "new"]);
        assert_eq!(
            f.stored(session),
            [
                "user: left over",
                "user: new",
                "ai: re: left over",
                "ai: re: new"
            ]
        );
        assert_eq!(admin.ai_pool().threads(), 0);
        assert_eq!(f.narutalk.ai_pool().threads(), 0);
    }

    #[test]
    fn a_reply_and_its_deltas_are_published_and_a_deleted_session_ends_its_turn() {
        let responder = Arc::new(Recording::default());
        let f = fixture(responder);
        let (_subscription, events) = f.narutalk.events().subscribe_channel(64);
        let session = f.session();
        let posting = f.post(session, "hello");
        let reply = posting.reply.wait().unwrap();
        let heard: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
        assert!(
            matches!(
                &heard[..],
                [
                    Event::MessageStored { seq: 1, .. },
                    Event::ReplyDelta { text, answers_seq: 1, .. },
                    Event::MessageStored { seq: 2, id, .. },
                ] if text == "re: " && *id == reply.id
            ),
            "{heard:?}"
        );
        f.narutalk.chat().delete_session(f.user, session).unwrap();
        assert_eq!(
            events.try_recv(),
            Some(Event::SessionDeleted {
                session,
                owner: f.user
            })
        );
    }
}
