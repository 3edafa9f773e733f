//! The server's side of the AI turn, a thin adapter over the core's turn engine
//! (`narutalk_core::turns`): the engine orders, answers, stores and publishes every turn;
//! the server only posts, awaits, and drains the engine at shutdown.
//!
//! A post is one blocking call (the message and its pending turn stored in one
//! transaction); its reply is then awaited as the core's runtime-agnostic completion, so a
//! REST post holds no blocking thread while the AI works, and a repeated post's wait is
//! bounded by the core's reply wait (503 after).

use std::sync::Arc;
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::chat::{Exchange, Message, PostInput, SessionId};
use narutalk_core::error::Error as CoreError;
use narutalk_core::turns::ReplyCompletion;

use crate::calls::Calls;
use crate::error::ApiError;

/// Stores a user message (checked as `input`, on a blocking thread) and answers its
/// message and the completion of its reply.
pub async fn post(
    calls: &Calls,
    owner: UserId,
    session: SessionId,
    input: Result<PostInput, CoreError>,
    request_id: String,
) -> Result<(Message, ReplyCompletion), ApiError> {
    calls
        .run(move |core| {
            let posting = core
                .chat()
                .with_request(&request_id)
                .post(owner, session, input)?;
            Ok((posting.message, posting.reply))
        })
        .await
}

/// The REST `POST .../messages/`: posts, then awaits the reply without a thread. The turn
/// goes on in the engine if the caller goes away.
pub async fn exchange(
    calls: &Calls,
    owner: UserId,
    session: SessionId,
    input: Result<PostInput, CoreError>,
    request_id: String,
) -> Result<Exchange, ApiError> {
    let (message, reply) = post(calls, owner, session, input, request_id).await?;
    let reply = match reply.patience() {
        Some(patience) => tokio::time::timeout(patience, reply)
            .await
            .unwrap_or_else(|_| {
                Err(CoreError::Unavailable(
                    "the reply is still being produced".into(),
                ))
            }),
        None => reply.await,
    }?;
    Ok(Exchange { message, reply })
}

/// Stops the core's turn engine and waits (at most `limit`) for the turns in flight to
/// store their replies; a reply the database refuses is given up at once. The stop itself
/// runs on the blocking pool: it waits for the thread that follows other servers' changes.
pub async fn drain(core: &Arc<Narutalk>, limit: Duration) {
    let stopping = Arc::clone(core);
    if tokio::task::spawn_blocking(move || stopping.stop_turns())
        .await
        .is_err()
    {
        tracing::error!("stopping the turn engine panicked");
    }
    if tokio::time::timeout(limit, core.turns_drained())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_seconds = limit.as_secs(),
            "stopped before every AI turn finished: turns were still running when the drain time ran out"
        );
    }
}
