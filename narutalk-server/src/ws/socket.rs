//! One open socket, from the upgrade to the close.
//!
//! The handshake has already joined the session's room for the socket, so nothing
//! stored after the handshake's read of the session is missed. The task replays what was
//! stored after `after` (if given; or after that read, when the room had already
//! delivered past it) a page at a time, then serves live: the room's events, the client's
//! frames, the heartbeat, and the reasons to close. Live events already covered by the
//! replay are recognised by their sequence number and skipped, so the client sees every
//! message once, in storage order, with no gap between replay and live.
//!
//! Every frame the server owes the peer is written before anything more is read from
//! it: the room's frames, the answers to its frames, the heartbeat, and the pongs that
//! tungstenite queues by itself for the peer's pings. So a peer that sends and never reads
//! stops being read once its writes block (TCP then pushes back on it), and the socket
//! holds at most one frame on its way out, never a pile of pongs. A write blocked for the
//! idle limit closes the socket as too slow (1013). Every write waits on the socket's
//! [`Closer`] too, so a peer that stops reading is closed (1013) as soon as its room queue
//! overflows, and revocation (1008) is not held up by a blocked write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use narutalk_core::accounts::UserId;
use narutalk_core::chat::{MessageId, PostInput, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::error::ApiError;
use crate::frames::{self, Incoming};
use crate::hub::{CloseCode, Closer, RoomEvent, Subscription};
use crate::listener::Upgrade;
use crate::logging::millis;
use crate::metrics::{self, GaugeHold};
use crate::turns;
use crate::ws::Shared;
use crate::ws::sockets::Registration;

/// Frames (and messages) over this many bytes close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The read buffer of a socket: it is allocated up front, so it sets much of an idle
/// socket's memory. A chat frame fits it; a larger frame grows the buffer to its size
/// and is read into it a kibibyte at a time.
const READ_BUFFER_BYTES: usize = 1024;

/// How many of the last stored messages a socket sent it remembers, to drop late deltas
/// of their replies (replies of a session are produced one at a time, so a few suffice).
const RECENTLY_SENT: usize = 8;

/// Messages read from the database per page of a replay.
const REPLAY_PAGE: u32 = 200;

/// How long a close handshake (or the drain of an oversized frame) may take: a slow
/// reader closed with 1013 has this long to read what is still on its way, then its close
/// frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long the peer of an oversized frame may pause before the rest is no longer read.
const DISCARD_QUIET: Duration = Duration::from_millis(500);

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the handshake established.
pub struct Opened {
    /// The socket's user.
    pub user: UserId,
    /// The session.
    pub session: SessionId,
    /// The session's last sequence number when the handshake read it: live messages
    /// start after it.
    pub seen: i64,
    /// Where the replay starts: the sequence number of `after`, or `seen` when the room
    /// was ahead of it at the join; `None`: no replay.
    pub replay_from: Option<i64>,
    /// The handshake's request id, for the logs.
    pub request_id: String,
    /// The socket's entry in the registry, made before the `101` was sent.
    pub registration: Registration,
    /// Its membership of the session's room, taken before the `101` was sent, so that
    /// nothing published after the handshake can miss the socket.
    pub subscription: Subscription,
}

/// Why the socket ends, and what is still owed to the peer.
#[derive(Debug)]
enum Ending {
    /// Send a close frame with this code and reason, and wait (briefly) for the peer's.
    Close(CloseCode, &'static str),
    /// A frame over the limit: tungstenite stopped at its header, so the close frame
    /// (1009) is written by hand and what the peer still sends is read and dropped, so that
    /// the close frame is not lost to a reset.
    TooBig,
    /// The peer closed with this code (1005: none given): its close frame has been
    /// answered, the answer only needs flushing.
    PeerClosed(u16),
    /// The connection is gone; nothing can be sent.
    Gone(&'static str),
}

/// Runs one socket until it closes.
pub async fn run(shared: Arc<Shared>, upgrade: Upgrade, opened: Opened) {
    let Upgrade { on_upgrade, place } = upgrade;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, request_id = opened.request_id, "the upgrade failed");
            return;
        }
    };
    // No `max_write_buffer_size`: the socket never writes a frame before the previous one
    // is out, nor reads while a pong is owed, so tungstenite's buffer holds at most the
    // frame being written and a pong or the close frame. A cap would refuse any frame
    // larger than itself, and a stored message has no size the server knows (an AI reply
    // of up to 10 MiB, an imported message of any size).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let open = GaugeHold::new(metrics::WS_OPEN);
    let Opened {
        user,
        session,
        seen,
        replay_from,
        request_id,
        registration,
        subscription,
    } = opened;
    let started = Instant::now();
    let mut socket = Socket {
        closer: registration.closer().clone(),
        shared,
        ws,
        subscription,
        // The replay (if any) starts over from its own point.
        last_seq: seen,
        recently_sent: VecDeque::with_capacity(RECENTLY_SENT),
        user,
        session,
        replay_from,
        request_id: request_id.clone(),
        _registration: registration,
    };
    let ending = socket.serve().await;
    let (code, reason) = match &ending {
        Ending::Close(code, reason) => (u16::from(*code), *reason),
        Ending::TooBig => (u16::from(CloseCode::TooBig), "frame too large"),
        Ending::PeerClosed(code) => (*code, "closed by the client"),
        // 1006: the connection ended without a close frame.
        Ending::Gone(reason) => (1006, *reason),
    };
    socket.finish(ending).await;
    drop(open);
    metrics::socket_closed(code);
    // In a span of its own with the handshake's request id, as a request's lines are.
    socket.span().in_scope(|| {
        tracing::info!(
            target: "narutalk::ws",
            session = %session,
            user = user.0,
            code,
            reason,
            duration_ms = millis(started.elapsed()),
            request_id,
            "socket closed"
        );
    });
    let activity = socket.shared.activity.clone();
    drop(socket);
    drop(place);
    activity.fetch_add(1, Ordering::Relaxed);
}

struct Socket {
    shared: Arc<Shared>,
    ws: Stream,
    subscription: Subscription,
    closer: Arc<Closer>,
    /// The sequence number of the last stored message sent.
    last_seq: i64,
    /// The ids of the last stored messages sent.
    recently_sent: VecDeque<MessageId>,
    user: UserId,
    session: SessionId,
    replay_from: Option<i64>,
    /// The handshake's request id, recorded with the messages the socket posts.
    request_id: String,
    _registration: Registration,
}

/// What woke the live loop.
enum Step {
    Closed,
    ShuttingDown,
    Event(Option<RoomEvent>),
    Frame(Option<Result<Message, WsError>>),
    Ping,
    Idle,
}

impl Socket {
    async fn serve(&mut self) -> Ending {
        if let Some(from) = self.replay_from
            && let Err(ending) = self.replay(from).await
        {
            return ending;
        }
        let rules = self.shared.rules;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + rules.ping, rules.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle = tokio::time::sleep(rules.idle);
        tokio::pin!(idle);
        loop {
            let step = tokio::select! {
                biased;
                () = self.closer.closed() => Step::Closed,
                () = self.shared.sockets.closing() => Step::ShuttingDown,
                event = self.subscription.next() => Step::Event(event),
                frame = self.ws.next() => Step::Frame(frame),
                _ = ping.tick() => Step::Ping,
                () = &mut idle => Step::Idle,
            };
            let done = match step {
                Step::Closed => Err(self.closer_ending()),
                Step::ShuttingDown => Err(self.drain_for_shutdown().await),
                Step::Event(event) => self.deliver(event).await,
                Step::Frame(frame) => {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + rules.idle);
                    self.receive(frame).await
                }
                Step::Ping => self.send(Message::Ping(Bytes::new()), "ping").await,
                Step::Idle => Err(Ending::Close(CloseCode::Normal, "idle timeout")),
            };
            if let Err(ending) = done {
                return ending;
            }
        }
    }

    /// Sends every message stored after `from`, a page at a time.
    async fn replay(&mut self, from: i64) -> Result<(), Ending> {
        self.last_seq = from;
        let (owner, session) = (self.user, self.session);
        loop {
            let after = self.last_seq;
            let page = self
                .shared
                .calls
                .run(move |core| {
                    core.chat()
                        .messages_after_seq(owner, session, after, REPLAY_PAGE)
                })
                .instrument(self.span())
                .await
                .map_err(|error| match error {
                    ApiError::NotFound => {
                        Ending::Close(CloseCode::PolicyViolation, "session deleted")
                    }
                    _ => Ending::Close(CloseCode::Internal, "server error"),
                })?;
            for message in &page {
                self.last_seq = message.seq;
                self.remember_sent(message.id);
                self.send(Message::Text(frames::chat_message(message)), "chat_message")
                    .await?;
            }
            if page.len() < REPLAY_PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Sends a room event; a stored message the replay already sent is skipped.
    async fn deliver(&mut self, event: Option<RoomEvent>) -> Result<(), Ending> {
        match event {
            Some(RoomEvent::Stored { seq, id, frame }) => {
                if seq <= self.last_seq {
                    return Ok(());
                }
                self.last_seq = seq;
                self.remember_sent(id);
                self.send(Message::Text(frame), "chat_message").await
            }
            // Deltas queued during a replay may belong to a reply the replay already sent:
            // a reply's deltas never follow it.
            Some(RoomEvent::Delta { reply, frame, .. }) => {
                if self.recently_sent.contains(&reply) {
                    return Ok(());
                }
                self.send(Message::Text(frame), "ai_delta").await
            }
            Some(RoomEvent::Deleted) => {
                Err(Ending::Close(CloseCode::PolicyViolation, "session deleted"))
            }
            // Never queued to a member: the room reads the messages it announces.
            Some(RoomEvent::Reached { .. }) => Ok(()),
            // The hub let the socket go: it was evicted, and its closer says why.
            None => Err(self.closer_ending()),
        }
    }

    /// Handles one frame from the client.
    async fn receive(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Ending> {
        match frame {
            Some(Ok(Message::Text(text))) => self.on_text(&text).await,
            Some(Ok(Message::Binary(_))) => {
                self.send_error("Binary frames are not accepted: send JSON in a text frame.")
                    .await
            }
            // tungstenite has queued the pong; it is written now, before anything more is
            // read, like any other frame owed to the peer. Otherwise a peer that pings and
            // never reads would make tungstenite pile up pongs without bound, and never be
            // found too slow.
            Some(Ok(Message::Ping(_))) => self.flush_pong().await,
            // Pongs and raw frames only show the peer is alive.
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Ok(Message::Close(frame))) => Err(Ending::PeerClosed(
                frame.map_or(1005, |frame| u16::from(frame.code)),
            )),
            Some(Err(WsError::Capacity(_))) => Err(Ending::TooBig),
            Some(Err(WsError::Utf8(_))) => Err(Ending::Close(
                CloseCode::InvalidPayload,
                "text frame is not UTF-8",
            )),
            Some(Err(WsError::Protocol(_))) => {
                Err(Ending::Close(CloseCode::Protocol, "protocol error"))
            }
            Some(Err(_)) | None => Err(Ending::Gone("the connection ended")),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let frame = match frames::parse(text) {
            Ok(Incoming::Ping) => return self.send(Message::Text(frames::PONG), "pong").await,
            Ok(Incoming::Message(frame)) => frame,
            Err(problem) => return self.send_error(&problem).await,
        };
        if self.shared.sockets.is_stopping() {
            return self
                .send_error(
                    "The server is shutting down: send the message again after reconnecting.",
                )
                .await;
        }
        let (owner, session) = (self.user, self.session);
        // The socket's loop waits for the message to be stored (a shutdown that starts
        // meanwhile closes the socket only after): the message and then its reply reach
        // every socket of the session, this one included, through the room, and the engine
        // produces and stores the reply even if this socket closes meanwhile.
        let posted = match self.shared.throttles.messages.check(&owner.0).await {
            Ok(()) => {
                let input = PostInput::from_frame(&frame, self.shared.calls.content_max_chars());
                turns::post(
                    &self.shared.calls,
                    owner,
                    session,
                    input,
                    self.request_id.clone(),
                )
                .instrument(self.span())
                .await
            }
            Err(throttled) => Err(throttled),
        };
        match posted {
            // Nobody waits for the completion: the room delivers the reply.
            Ok(_) => Ok(()),
            Err(ApiError::Throttled(seconds)) => {
                let text = ApiError::Throttled(seconds).into_text(frames::frame_field);
                self.send(Message::Text(frames::throttled(&text, seconds)), "error")
                    .await
            }
            Err(error) => self.send_error(&error.into_text(frames::frame_field)).await,
        }
    }

    /// The span of work done on the socket's behalf (a posted frame, a page of replay):
    /// the handshake's request id, as a request's span carries it. Made for each piece of
    /// work, never held for the socket's life: the logger keeps the memory of as many
    /// spans as were ever open at once, so 10,000 idle sockets holding one each would
    /// leave it behind once they close.
    fn span(&self) -> tracing::Span {
        tracing::error_span!("request", request_id = %self.request_id)
    }

    fn remember_sent(&mut self, id: MessageId) {
        if self.recently_sent.len() == RECENTLY_SENT {
            self.recently_sent.pop_front();
        }
        self.recently_sent.push_back(id);
    }

    async fn send_error(&mut self, text: &str) -> Result<(), Ending> {
        self.send(Message::Text(frames::error(text)), "error").await
    }

    /// Writes one frame, within [`owed`]'s patience; a frame written counts under `kind`.
    async fn send(&mut self, message: Message, kind: &'static str) -> Result<(), Ending> {
        owed(&self.closer, self.shared.rules.idle, self.ws.send(message)).await?;
        metrics::frame_sent(kind);
        Ok(())
    }

    /// Writes the pong tungstenite queued for the peer's ping, within [`owed`]'s patience.
    async fn flush_pong(&mut self) -> Result<(), Ending> {
        owed(&self.closer, self.shared.rules.idle, self.ws.flush()).await
    }

    /// At shutdown: sends what is already queued for the socket, then closes with 1001.
    async fn drain_for_shutdown(&mut self) -> Ending {
        while let Some(event) = self.subscription.try_next() {
            if let Err(ending) = self.deliver(Some(event)).await {
                return ending;
            }
        }
        Ending::Close(CloseCode::GoingAway, "server shutting down")
    }

    fn closer_ending(&self) -> Ending {
        closer_ending(&self.closer)
    }

    /// Says goodbye to the peer, within [`CLOSE_GRACE`].
    async fn finish(&mut self, ending: Ending) {
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            match ending {
                Ending::Close(code, reason) => {
                    let frame = CloseFrame {
                        code: u16::from(code).into(),
                        reason: Utf8Bytes::from_static(reason),
                    };
                    if ws.close(Some(frame)).await.is_ok() {
                        // Until the peer's close frame ends the stream.
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
                Ending::TooBig => {
                    let stream = ws.get_mut();
                    let frame = close_frame(CloseCode::TooBig, "frame too large");
                    if stream.write_all(&frame).await.is_ok() && stream.flush().await.is_ok() {
                        let mut discard = vec![0; 16 * 1024];
                        while let Ok(Ok(read)) =
                            tokio::time::timeout(DISCARD_QUIET, stream.read(&mut discard)).await
                            && read > 0
                        {}
                    }
                    let _ = stream.shutdown().await;
                }
                Ending::PeerClosed(_) => {
                    let _ = ws.flush().await;
                }
                Ending::Gone(_) => {}
            }
        })
        .await;
    }
}

/// Waits until `write` has put a frame owed to the peer on the wire, unless the socket is
/// told to close first. A peer that takes longer than `patience` (the idle limit) to take
/// one frame is not reading at all: it is closed as too slow, which a quiet session (whose
/// queue never overflows) or a peer that only pings would otherwise never be.
async fn owed(
    closer: &Closer,
    patience: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), Ending> {
    tokio::select! {
        biased;
        () = closer.closed() => Err(closer_ending(closer)),
        written = write => written.map_err(|_| Ending::Gone("a write failed")),
        () = tokio::time::sleep(patience) => {
            Err(Ending::Close(CloseCode::TryAgainLater, "reading too slowly"))
        }
    }
}

/// The close a [`Closer`] asked for (1001 if none was given).
fn closer_ending(closer: &Closer) -> Ending {
    let (code, reason) = closer
        .reason()
        .unwrap_or((CloseCode::GoingAway, "server shutting down"));
    Ending::Close(code, reason)
}

/// An unmasked close frame (server to client) with `code` and a short `reason`.
fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88);
    frame.push(u8::try_from(2 + reason.len()).unwrap_or(2));
    frame.extend_from_slice(&u16::from(code).to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_close_frame_is_a_valid_unmasked_close() {
        assert_eq!(
            close_frame(CloseCode::TooBig, "big"),
            [0x88, 5, 0x03, 0xF1, b'b', b'i', b'g']
        );
    }
}
