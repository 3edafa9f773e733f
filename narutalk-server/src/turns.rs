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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::ai;
use narutalk_core::chat::{Exchange, Message, PostOutcome, ReplyWait, SessionId, TurnClaim};
use narutalk_core::error::Error as CoreError;
use narutalk_core::fields::JsonObject;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use crate::error::ApiError;
use crate::state::State;
use crate::ws::frames;
use crate::ws::hub::RoomEvent;

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
}

/// Posts a user message and answers it with its reply: the REST `POST .../messages/`.
/// The work runs in a task of its own, so it completes even if the caller goes away, and
/// a shutdown waits for it.
pub async fn exchange(
    state: Arc<State>,
    owner: UserId,
    session: SessionId,
    body: JsonObject,
    idempotency_key: Option<String>,
) -> Result<Exchange, ApiError> {
    let task = state.tasks.spawn({
        let state = state.clone();
        async move {
            let shared = state.clone();
            let first = state
                .run(move |core| {
                    let (outcome, mut place) =
                        store_message(&shared, core, owner, session, &body, idempotency_key)?;
                    Ok(match outcome {
                        // No earlier turn of the session is running: the reply is produced
                        // now, on this thread.
                        PostOutcome::Stored(message, claim) if place.ready_now() => {
                            let reply = answer_now(&shared, core, &place, &message, claim)?;
                            FirstCall::Done(Exchange { message, reply })
                        }
                        outcome => FirstCall::Posted(posted(outcome, place)),
                    })
                })
                .await?;
            match first {
                FirstCall::Done(exchange) | FirstCall::Posted(Posted::Replayed(exchange)) => {
                    Ok(exchange)
                }
                FirstCall::Posted(Posted::Waiting { message, turn }) => {
                    let reply = answer(state, message.clone(), turn).await?;
                    Ok(Exchange { message, reply })
                }
            }
        }
    });
    match task.await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "a chat turn failed");
            Err(ApiError::Internal)
        }
    }
}

/// Stores a user message (the core checks it) and takes its place in the session's line;
/// a new message is broadcast to the session's sockets before anything else happens.
pub async fn post(
    state: &Arc<State>,
    owner: UserId,
    session: SessionId,
    body: JsonObject,
    idempotency_key: Option<String>,
) -> Result<Posted, ApiError> {
    let shared = state.clone();
    state
        .run(move |core| {
            let (outcome, place) =
                store_message(&shared, core, owner, session, &body, idempotency_key)?;
            Ok(posted(outcome, place))
        })
        .await
}

/// Stores the message and joins the line (blocking), publishing a new message.
fn store_message(
    state: &State,
    core: &Narutalk,
    owner: UserId,
    session: SessionId,
    body: &JsonObject,
    idempotency_key: Option<String>,
) -> Result<(PostOutcome, Place), CoreError> {
    state.lines.join(session, || {
        let outcome =
            core.chat()
                .post_message_fields(owner, session, body, idempotency_key.as_deref())?;
        if let PostOutcome::Stored(message, _) = &outcome {
            publish_stored(state, message);
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
/// (`narutalk::ai`, a warning).
pub async fn answer(state: Arc<State>, message: Message, turn: Turn) -> Result<Message, ApiError> {
    let Turn { mut place, claim } = turn;
    let claim = match claim {
        Some(claim) => claim,
        None => {
            let waited = message.clone();
            let wait = state.core.reply_wait();
            match state
                .run(move |core| core.chat().wait_for_reply(&waited, wait))
                .await?
            {
                ReplyWait::Ready(reply) => return Ok(reply),
                ReplyWait::YourTurn(claim) => claim,
            }
        }
    };
    place.ready().await;
    let shared = state.clone();
    // The place goes with the call and is dropped when the reply is stored.
    state
        .run(move |core| answer_now(&shared, core, &place, &message, claim))
        .await
}

/// The reply of a turn whose place has come up, produced on this (blocking) thread: the
/// history is read, the responder runs with no database connection held, its deltas go to
/// the room, and the reply (or the system error message) is stored and broadcast in
/// order.
fn answer_now(
    state: &State,
    core: &Narutalk,
    place: &Place,
    message: &Message,
    claim: TurnClaim,
) -> Result<Message, CoreError> {
    let session = message.session_id;
    let turn = core.chat().prepare_reply(message, claim)?;
    let reply_id = turn.reply_id;
    let outcome = ai::run_responder(core.responder().as_ref(), &turn.request, &mut |delta| {
        let frame = frames::ai_delta(reply_id, delta);
        state.hub.publish(
            session,
            RoomEvent::Delta {
                reply: reply_id,
                frame,
            },
        );
    });
    if let Err(error) = &outcome {
        log_failure(session, core.responder().name(), error);
    }
    place.in_order(|| {
        let reply = core.chat().store_reply(turn, outcome)?;
        publish_stored(state, &reply);
        Ok(reply)
    })
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
fn publish_stored(state: &State, message: &Message) {
    state.hub.publish(
        message.session_id,
        RoomEvent::Stored {
            seq: message.seq,
            id: message.id,
            frame: frames::chat_message(message),
        },
    );
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
