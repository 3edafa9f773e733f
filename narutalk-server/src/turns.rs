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
//! session in storage order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use narutalk_core::accounts::UserId;
use narutalk_core::ai;
use narutalk_core::chat::{Exchange, Message, PostOutcome, ReplyWait, SessionId, TurnClaim};
use narutalk_core::fields::JsonObject;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::state::State;
use crate::ws::frames;
use crate::ws::hub::RoomEvent;

/// The lines of the sessions that have turns in flight.
#[derive(Default)]
pub struct SessionLines {
    lines: Mutex<HashMap<SessionId, Weak<Line>>>,
}

/// One session's line: the end of the line is the completion signal of the last turn
/// that joined it.
#[derive(Default)]
struct Line {
    tail: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// A place in a session's line, held from joining until the turn's reply is stored.
/// Dropping it lets the next turn go.
pub struct Place {
    _line: Arc<Line>,
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
    /// one at a time (with [`SessionLines::in_order`]), so the places follow the storage
    /// order.
    pub async fn join<T>(
        &self,
        session: SessionId,
        store: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<(T, Place), ApiError> {
        let line = self.line(session);
        let mut tail = line.tail.lock().await;
        let stored = store.await?;
        let (done, next) = oneshot::channel();
        let previous = tail.replace(next);
        drop(tail);
        Ok((
            stored,
            Place {
                _line: line,
                previous,
                _done: done,
            },
        ))
    }

    /// Runs `store` (which stores a message of `session` and publishes it) while no other
    /// store of the session runs: stores and their broadcasts follow one order, the
    /// storage order.
    pub async fn in_order<T>(
        &self,
        session: SessionId,
        store: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let line = self.line(session);
        let _tail = line.tail.lock().await;
        store.await
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
            match post(&state, owner, session, body, idempotency_key).await? {
                Posted::Replayed(exchange) => Ok(exchange),
                Posted::Waiting { message, turn } => {
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
    let store = async {
        let outcome = state
            .run(move |core| {
                core.chat()
                    .post_message_fields(owner, session, &body, idempotency_key.as_deref())
            })
            .await?;
        if let PostOutcome::Stored(message, _) = &outcome {
            publish_stored(state, message);
        }
        Ok(outcome)
    };
    let (outcome, place) = state.lines.join(session, store).await?;
    Ok(match outcome {
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
    })
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
    let session = message.session_id;
    let hub = state.hub.clone();
    let (turn, outcome) = state
        .run(move |core| {
            let turn = core.chat().prepare_reply(&message, claim)?;
            let reply_id = turn.reply_id;
            let outcome =
                ai::run_responder(core.responder().as_ref(), &turn.request, &mut |delta| {
                    let frame = frames::ai_delta(reply_id, delta);
                    hub.publish(
                        session,
                        RoomEvent::Delta {
                            reply: reply_id,
                            frame,
                        },
                    );
                });
            Ok((turn, outcome))
        })
        .await?;
    if let Err(error) = &outcome {
        log_failure(session, state.core.responder().name(), error);
    }
    let reply = state
        .lines
        .in_order(session, async {
            let reply = state
                .run(move |core| core.chat().store_reply(turn, outcome))
                .await?;
            publish_stored(&state, &reply);
            Ok(reply)
        })
        .await?;
    drop(place);
    Ok(reply)
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
        let (_, mut first) = lines.join(session, async { Ok(()) }).await.unwrap();
        let (_, mut second) = lines.join(session, async { Ok(()) }).await.unwrap();
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
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn lines_of_finished_sessions_are_forgotten() {
        let lines = SessionLines::default();
        for _ in 0..100 {
            let (_, place) = lines
                .join(SessionId::new_random(), async { Ok(()) })
                .await
                .unwrap();
            drop(place);
        }
        assert_eq!(lines.live(), 0);
        assert!(lines.lock().len() <= 64);
    }
}
