//! The AI turn of contract section 3.1, in the order the contract asks for.
//!
//! Each session has a *line*: a message is stored and takes its place in the line in one
//! step (under the line's lock), so places follow the storage order; a reply is produced
//! only when the turn before it in the same session has finished. A turn runs in its own
//! task, so a client that disconnects mid-turn loses nothing: its message is already
//! stored and its reply is still produced and stored.
//!
//! Every store of a session, user message or reply, runs under its line's lock together
//! with its broadcast to the session's sockets, so sockets receive the messages of a
//! session in storage order. The lock is a plain mutex taken on the blocking thread that
//! stores, never across an await.
//!
//! Thread hops are the price of a turn, so a turn takes as few as it can: a REST post
//! whose session has no earlier turn still running stores the message, asks the
//! responder and stores the reply in one blocking call; otherwise (and for sockets, whose
//! loop must go on reading while the AI works) the message is one call and the reply,
//! once the turn's place comes up, another.
//!
//! A reply that the database will not take (locked, full, failing: the core answers
//! `Unavailable`) is kept: the turn's task tries again with backoff, still holding the
//! turn's place, so no later reply of the session overtakes it. A REST post answers 503
//! at the first failure, while its turn goes on; at shutdown the turn gives up and says
//! so in the log. The bound on each store runs from when it asked for the session's line
//! (`Chat::asked_at`), so the wait for the line counts toward it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::ai;
use narutalk_core::chat::{
    Exchange, Message, PendingReply, PostOutcome, ReplyNotStored, ReplyWait, SessionId, TurnClaim,
};
use narutalk_core::error::Error as CoreError;
use narutalk_core::fields::JsonObject;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::calls::Calls;
use crate::error::ApiError;
use crate::frames;
use crate::hub::{Hub, RoomEvent};
use crate::metrics::{self, GaugeHold};

/// The first wait before storing a refused reply again; it doubles after each refusal.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two tries to store a refused reply.
const LAST_RETRY: Duration = Duration::from_secs(2);

/// What the AI turns of the process share: the core, the rooms their messages go to, the
/// sessions' lines, and the tasks the turns run in.
pub struct Turns {
    calls: Arc<Calls>,
    hub: Arc<dyn Hub>,
    lines: SessionLines,
    /// The turns running in their own tasks, and the socket messages being stored; a
    /// shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when a shutdown begins: a reply the database refuses is given up.
    stopping: CancellationToken,
}

impl Turns {
    /// Turns that call the core through `calls` and publish to `hub`.
    pub fn new(calls: Arc<Calls>, hub: Arc<dyn Hub>) -> Turns {
        Turns {
            calls,
            hub,
            lines: SessionLines::default(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Waits (at most `limit`) for the turns in flight to store their replies; a reply
    /// the database refuses is given up at once. No turn starts in a task afterwards.
    pub async fn finish(&self, limit: Duration) {
        self.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                turns = self.tasks.len(),
                drain_seconds = limit.as_secs(),
                "stopped before every AI turn finished: turns were still running when the drain time ran out"
            );
        }
    }
}

/// The lines of the sessions that have turns in flight.
#[derive(Default)]
pub struct SessionLines {
    lines: Mutex<HashMap<SessionId, Weak<Line>>>,
}

/// One session's line: the completion signal of the last turn that joined it, behind the
/// lock every store of the session holds.
#[derive(Default)]
struct Line {
    tail: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, Option<oneshot::Receiver<()>>> {
        self.tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A place in a session's line, held from joining until the turn's reply is stored.
/// Dropping it lets the next turn go.
pub struct Place {
    line: Arc<Line>,
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Place {
    /// Waits until every turn that joined the line earlier has finished.
    pub async fn ready(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the earlier turn ended without signalling: it has ended all
            // the same.
            let _ = previous.await;
        }
    }

    /// Whether every turn that joined the line earlier has finished, without waiting.
    fn ready_now(&mut self) -> bool {
        let finished = match &mut self.previous {
            None => return true,
            Some(previous) => !matches!(previous.try_recv(), Err(TryRecvError::Empty)),
        };
        if finished {
            self.previous = None;
        }
        finished
    }

    /// Runs `store` (which stores a message of this session and publishes it) while no
    /// other store of the session runs, so stores and their broadcasts follow one order.
    /// It blocks: call it on a blocking thread.
    fn in_order<T>(&self, store: impl FnOnce() -> T) -> T {
        let _tail = self.line.lock();
        store()
    }
}

impl SessionLines {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Weak<Line>>> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn line(&self, session: SessionId) -> Arc<Line> {
        let mut lines = self.lock();
        if let Some(line) = lines.get(&session).and_then(Weak::upgrade) {
            return line;
        }
        let line = Arc::new(Line::default());
        if lines.len() >= 64 {
            lines.retain(|_, line| line.strong_count() > 0);
        }
        lines.insert(session, Arc::downgrade(&line));
        line
    }

    /// Runs `store` and joins the session's line in one step: stores of one session run
    /// one at a time (with [`Place::in_order`]), so the places follow the storage order.
    /// It blocks: call it on a blocking thread.
    pub fn join<T, E>(
        &self,
        session: SessionId,
        store: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, Place), E> {
        let line = self.line(session);
        let mut tail = line.lock();
        let stored = store()?;
        let (done, next) = oneshot::channel();
        let previous = tail.replace(next);
        drop(tail);
        Ok((
            stored,
            Place {
                line,
                previous,
                _done: done,
            },
        ))
    }

    /// Sessions with a line right now (for tests of the bookkeeping).
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|l| l.strong_count() > 0)
            .count()
    }
}

/// A user message just stored (or found again by its idempotency key), and what is left
/// of its turn.
pub enum Posted {
    /// The key was used before and the reply is stored: nothing is left to do.
    Replayed(Exchange),
    /// The reply is still to come: [`answer`] produces it, or waits for it.
    Waiting {
        /// The user message.
        message: Message,
        /// Its place in the session's line.
        turn: Turn,
    },
}

/// The rest of a turn: its place in the line, and the claim to produce its reply (`None`
/// when a repeated idempotency key found the reply still being produced elsewhere).
pub struct Turn {
    place: Place,
    claim: Option<TurnClaim>,
}

/// How far the first blocking call of a REST exchange got.
enum FirstCall {
    /// The message and its reply are stored (or were, for a repeated key).
    Done(Exchange),
    /// The message is stored; its reply comes later.
    Posted(Posted),
    /// The message is stored and its reply produced, but the database would not take it.
    Unstored(Unstored),
}

/// What producing a turn's reply came to.
enum Answered {
    /// The reply is stored and published.
    Stored(Message),
    /// The database would not take the reply: it is kept, with the turn's place.
    Unstored(Unstored),
}

/// A reply the database would not take, with the turn's place in the line and why.
struct Unstored {
    pending: Box<PendingReply>,
    place: Place,
    cause: CoreError,
}

/// Posts a user message and answers it with its reply: the REST `POST .../messages/`.
/// The work runs in a task of its own, so it completes even if the caller goes away, and
/// a shutdown waits for it.
///
/// When the message is stored but the database will not take its reply, the caller hears
/// 503 at once, and the task goes on trying to store the reply (see [`answer`]).
pub async fn exchange(
    turns: Arc<Turns>,
    owner: UserId,
    session: SessionId,
    body: JsonObject,
    idempotency_key: Option<String>,
) -> Result<Exchange, ApiError> {
    let (answered, answer_of) = oneshot::channel();
    turns.tasks.spawn({
        let turns = turns.clone();
        async move {
            let shared = turns.clone();
            let first = turns
                .calls
                .run(move |core| {
                    let (outcome, mut place) =
                        store_message(&shared, core, owner, session, &body, idempotency_key)?;
                    Ok(match outcome {
                        // No earlier turn of the session is running: the reply is produced
                        // now, on this thread.
                        PostOutcome::Stored(message, claim) if place.ready_now() => {
                            match answer_now(&shared, core, place, &message, claim)? {
                                Answered::Stored(reply) => {
                                    FirstCall::Done(Exchange { message, reply })
                                }
                                Answered::Unstored(unstored) => FirstCall::Unstored(unstored),
                            }
                        }
                        outcome => FirstCall::Posted(posted(outcome, place)),
                    })
                })
                .await;
            let unstored = match first {
                Ok(FirstCall::Done(exchange) | FirstCall::Posted(Posted::Replayed(exchange))) => {
                    let _ = answered.send(Ok(exchange));
                    return;
                }
                Ok(FirstCall::Posted(Posted::Waiting { message, turn })) => {
                    match produce(turns.clone(), message.clone(), turn).await {
                        Ok(Answered::Stored(reply)) => {
                            let _ = answered.send(Ok(Exchange { message, reply }));
                            return;
                        }
                        Ok(Answered::Unstored(unstored)) => unstored,
                        Err(error) => {
                            let _ = answered.send(Err(error));
                            return;
                        }
                    }
                }
                Ok(FirstCall::Unstored(unstored)) => unstored,
                Err(error) => {
                    let _ = answered.send(Err(error));
                    return;
                }
            };
            // The message is stored, its reply is not: the client hears 503 now, and the
            // reply is stored once the database takes it, whether or not anyone listens.
            let _ = answered.send(Err(ApiError::Unavailable));
            let _ = keep_storing(turns, unstored).await;
        }
        .in_current_span()
    });
    match answer_of.await {
        Ok(result) => result,
        Err(ended) => Err(ApiError::internal(
            "a chat turn ended before answering",
            ended,
        )),
    }
}

/// Stores a user message (the core checks it) and takes its place in the session's line;
/// a new message is broadcast to the session's sockets before anything else happens.
pub async fn post(
    turns: &Arc<Turns>,
    owner: UserId,
    session: SessionId,
    body: JsonObject,
    idempotency_key: Option<String>,
) -> Result<Posted, ApiError> {
    let shared = turns.clone();
    turns
        .calls
        .run(move |core| {
            let (outcome, place) =
                store_message(&shared, core, owner, session, &body, idempotency_key)?;
            Ok(posted(outcome, place))
        })
        .await
}

/// Stores the message and joins the line (blocking), publishing a new message.
fn store_message(
    turns: &Turns,
    core: &Narutalk,
    owner: UserId,
    session: SessionId,
    body: &JsonObject,
    idempotency_key: Option<String>,
) -> Result<(PostOutcome, Place), CoreError> {
    let asked_at = Instant::now();
    turns.lines.join(session, || {
        let outcome = core.chat().asked_at(asked_at).post_message_fields(
            owner,
            session,
            body,
            idempotency_key.as_deref(),
        )?;
        if let PostOutcome::Stored(message, _) = &outcome {
            publish_stored(turns, message);
        }
        Ok(outcome)
    })
}

/// What is left of a turn once its message is stored.
fn posted(outcome: PostOutcome, place: Place) -> Posted {
    match outcome {
        PostOutcome::Stored(message, claim) => Posted::Waiting {
            message,
            turn: Turn {
                place,
                claim: Some(claim),
            },
        },
        PostOutcome::Replayed {
            message,
            reply: Some(reply),
        } => Posted::Replayed(Exchange { message, reply }),
        PostOutcome::Replayed {
            message,
            reply: None,
        } => Posted::Waiting {
            message,
            turn: Turn { place, claim: None },
        },
    }
}

/// Produces and stores the reply to `message` once the turns before it in its session
/// have finished: the history is read, the responder runs on a blocking thread with no
/// database connection held (its partial text goes to the session's sockets as
/// `ai_delta` frames), and its reply, or the system error message, is stored and
/// broadcast in the session's storage order. A failed AI call is logged once
/// (`narutalk::ai`, a warning). A reply the database will not take is tried again with
/// backoff (see [`keep_storing`]) before this returns.
pub async fn answer(turns: Arc<Turns>, message: Message, turn: Turn) -> Result<Message, ApiError> {
    match produce(turns.clone(), message, turn).await? {
        Answered::Stored(reply) => Ok(reply),
        Answered::Unstored(unstored) => keep_storing(turns, unstored).await,
    }
}

/// [`answer`] up to the first try to store the reply.
async fn produce(turns: Arc<Turns>, message: Message, turn: Turn) -> Result<Answered, ApiError> {
    let Turn { mut place, claim } = turn;
    let claim = match claim {
        Some(claim) => claim,
        None => {
            let waited = message.clone();
            let wait = turns.calls.core().reply_wait();
            match turns
                .calls
                .run(move |core| core.chat().wait_for_reply(&waited, wait))
                .await?
            {
                ReplyWait::Ready(reply) => return Ok(Answered::Stored(reply)),
                ReplyWait::YourTurn(claim) => claim,
            }
        }
    };
    if !place.ready_now() {
        let _queued = GaugeHold::new(metrics::AI_QUEUED);
        place.ready().await;
    }
    let shared = turns.clone();
    // The place goes with the call and is dropped when the reply is stored.
    turns
        .calls
        .run(move |core| answer_now(&shared, core, place, &message, claim))
        .await
}

/// Stores a reply the database refused, trying again with backoff (0.1 s, doubling up to
/// 2 s) until it is stored, while holding the turn's place so that no later reply of the
/// session is stored before it. Each try is bounded like any write. At shutdown it gives
/// up and logs which reply stayed unstored; the user message stays without its reply.
async fn keep_storing(turns: Arc<Turns>, unstored: Unstored) -> Result<Message, ApiError> {
    let Unstored {
        pending,
        place,
        cause,
    } = unstored;
    let (session, message) = (pending.session_id(), pending.reply_to());
    tracing::warn!(
        session = %session,
        message = %message,
        %cause,
        "the database refused a reply: it is kept and stored once writes work again"
    );
    let mut wait = FIRST_RETRY;
    let mut kept = (pending, place);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = turns.stopping.cancelled() => {
                tracing::warn!(
                    session = %session,
                    message = %message,
                    "shutting down with a reply the database refused: it is not stored"
                );
                return Err(ApiError::Unavailable);
            }
        }
        wait = (wait * 2).min(LAST_RETRY);
        let shared = turns.clone();
        let (pending, place) = kept;
        let tried = turns
            .calls
            .run(move |core| Ok(store_in_order(&shared, core, place, *pending)))
            .await?;
        match tried {
            Ok(Answered::Stored(reply)) => {
                tracing::info!(session = %session, message = %message, "the refused reply is stored");
                return Ok(reply);
            }
            Ok(Answered::Unstored(unstored)) => kept = (unstored.pending, unstored.place),
            Err(error) => return Err(ApiError::from(error)),
        }
    }
}

/// The reply of a turn whose place has come up, produced on this (blocking) thread: the
/// history is read, the responder runs with no database connection held, its deltas go to
/// the room, and the reply (or the system error message) is stored and broadcast in
/// order. The place is dropped once the reply is stored, or handed back with a reply the
/// database refused.
fn answer_now(
    turns: &Turns,
    core: &Narutalk,
    place: Place,
    message: &Message,
    claim: TurnClaim,
) -> Result<Answered, CoreError> {
    let session = message.session_id;
    let turn = core.chat().prepare_reply(message, claim)?;
    let reply_id = turn.reply_id;
    let responder = metrics::responder_label(core.responder().name());
    let running = GaugeHold::new(metrics::AI_RUNNING);
    let called = Instant::now();
    let mut streamed = false;
    let outcome = ai::run_responder(core.responder().as_ref(), &turn.request, &mut |delta| {
        if !streamed {
            streamed = true;
            metrics::ai_first_delta(responder, called.elapsed());
        }
        let frame = frames::ai_delta(reply_id, delta);
        turns.hub.publish(
            session,
            RoomEvent::Delta {
                reply: reply_id,
                after: message.seq,
                frame,
            },
        );
    });
    drop(running);
    metrics::ai_turn(
        responder,
        outcome.as_ref().err().map(ai::AiError::reason),
        called.elapsed(),
    );
    if let Err(error) = &outcome {
        log_failure(session, core.responder().name(), error);
    }
    store_in_order(turns, core, place, turn.into_reply(outcome))
}

/// Stores a produced reply under the session's line and publishes it; a reply the
/// database refused comes back with the place.
fn store_in_order(
    turns: &Turns,
    core: &Narutalk,
    place: Place,
    pending: PendingReply,
) -> Result<Answered, CoreError> {
    let asked_at = Instant::now();
    let stored = place.in_order(|| {
        let stored = core.chat().asked_at(asked_at).store_pending_reply(pending);
        if let Ok(reply) = &stored {
            publish_stored(turns, reply);
        }
        stored
    });
    match stored {
        Ok(reply) => Ok(Answered::Stored(reply)),
        Err(ReplyNotStored {
            error,
            pending: Some(pending),
        }) => Ok(Answered::Unstored(Unstored {
            pending,
            place,
            cause: error,
        })),
        Err(ReplyNotStored { error, .. }) => Err(error),
    }
}

/// The one log line of a failed AI turn: the session, the responder and why (the stored
/// reason, and the detail the responder gave for the log). Never the messages or a key.
fn log_failure(session: SessionId, responder: &str, error: &ai::AiError) {
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

/// Hands a stored message to its session's sockets. Callers hold the session's line, so
/// messages are published in storage order.
fn publish_stored(turns: &Turns, message: &Message) {
    turns
        .hub
        .publish(message.session_id, RoomEvent::stored(message));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn places_in_a_line_go_in_the_order_they_joined() {
        let lines = Arc::new(SessionLines::default());
        let session = SessionId::new_random();
        let (_, mut first) = lines.join(session, || Ok::<_, ()>(())).unwrap();
        let (_, mut second) = lines.join(session, || Ok::<_, ()>(())).unwrap();
        assert!(first.ready_now(), "the first turn needs no waiting");
        assert!(!second.ready_now(), "the second turn waits for the first");
        first.ready().await;
        let waiting = tokio::spawn(async move {
            second.ready().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "the second turn waits for the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn lines_of_finished_sessions_are_forgotten() {
        let lines = SessionLines::default();
        for _ in 0..100 {
            let (_, place) = lines
                .join(SessionId::new_random(), || Ok::<_, ()>(()))
                .unwrap();
            drop(place);
        }
        assert_eq!(lines.live(), 0);
        assert!(lines.lock().len() <= 64);
    }
}
