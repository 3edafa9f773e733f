//! The WebSocket scenarios (contract section 6): `ws-roundtrip`, `ws-fanout` and
//! `ws-idle`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::measure::{self, Measured};

/// How long the harness waits for one expected frame before it counts as missing.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets opened at once while ramping up.
const CONNECT_CONCURRENCY: usize = 64;

/// A client socket.
pub type Socket = WebSocketStream<TcpStream>;

/// Why a socket did not open.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the handshake with this HTTP status (4xx: the harness's
    /// request is wrong).
    Refused(u16),
    /// The connection or the handshake failed.
    Failed(anyhow::Error),
}

impl ConnectError {
    /// Counts this failure in `measured`.
    fn count(&self, measured: &mut Measured) {
        measured.errors += 1;
        if matches!(self, ConnectError::Refused(status) if (400..500).contains(status)) {
            measured.refused += 1;
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(status) => write!(f, "the handshake was refused with {status}"),
            ConnectError::Failed(error) => write!(f, "{error:#}"),
        }
    }
}

/// Opens `ws://addr/ws/chat/{session}/?token=...` with small client buffers (a load
/// generator holding 10,000 sockets must stay small too).
pub async fn connect(addr: SocketAddr, session: &str, token: &str) -> Result<Socket, ConnectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| ConnectError::Failed(error.into()))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{addr}/ws/chat/{session}/?token={token}");
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match client_async_with_config(url, stream, Some(config)).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            Err(ConnectError::Refused(response.status().as_u16()))
        }
        Err(error) => Err(ConnectError::Failed(error.into())),
    }
}

/// The parts of a server frame the harness reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sender: Option<Cow<'a, str>>,
}

/// A `chat_message` frame: who sent it and its content.
enum Received<'a> {
    Chat { ai: bool, content: Cow<'a, str> },
    Error,
    Other,
}

fn read_frame(text: &str) -> Received<'_> {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Received::Other;
    };
    match (frame.kind.as_ref(), frame.message) {
        ("chat_message", Some(content)) => Received::Chat {
            ai: frame.sender.as_deref() == Some("ai"),
            content,
        },
        ("error", _) => Received::Error,
        _ => Received::Other,
    }
}

/// The numbers after `tag ` in `content` (`fanout 3 17 1234` gives 3, 17, 1234; the
/// template reply `AI 응답: fanout 3 17 1234에 ...` gives the same).
fn numbers_after<const N: usize>(content: &str, tag: &str) -> Option<[u64; N]> {
    let start = content.find(tag)? + tag.len();
    let mut numbers = [0u64; N];
    let mut words = content[start..].split(' ');
    for number in &mut numbers {
        let word = words.next()?;
        let digits = word
            .find(|c: char| !c.is_ascii_digit())
            .map_or(word, |end| &word[..end]);
        *number = digits.parse().ok()?;
    }
    Some(numbers)
}

// ---------------------------------------------------------------------------------------
// ws-roundtrip
// ---------------------------------------------------------------------------------------

/// `ws-roundtrip`: one socket; after `warmup` (at least 10 messages), `count` messages
/// one at a time, each timed from its send to the AI reply's `chat_message`.
pub async fn roundtrip(
    addr: SocketAddr,
    session: &str,
    token: &str,
    warmup: Duration,
    count: usize,
) -> anyhow::Result<Measured> {
    let mut socket = match connect(addr, session, token).await {
        Ok(socket) => socket,
        Err(error) => {
            let mut failed = Measured::new(Duration::ZERO, 3)?;
            error.count(&mut failed);
            return Ok(failed);
        }
    };
    let mut seq = 0u64;
    let warmup_end = Instant::now() + warmup;
    let mut warmed = 0;
    while warmed < 10 || Instant::now() < warmup_end {
        seq += 1;
        warmed += 1;
        // A warm-up failure shows again in the measured part.
        let _ = one_roundtrip(&mut socket, seq).await;
    }
    let mut measured = Measured::new(Duration::ZERO, 3)?;
    let started = Instant::now();
    for _ in 0..count {
        seq += 1;
        let sent = Instant::now();
        match one_roundtrip(&mut socket, seq).await {
            Trip::Answered => {
                measured.ok += 1;
                measure::record(&mut measured.latency, sent.elapsed());
            }
            Trip::Refused => {
                measured.errors += 1;
                measured.refused += 1;
            }
            Trip::Lost => measured.errors += 1,
            Trip::Closed => {
                measured.errors += (count as u64).saturating_sub(measured.ok + measured.errors);
                break;
            }
        }
    }
    measured.window = started.elapsed();
    let _ = socket.close(None).await;
    Ok(measured)
}

/// How one round trip ended.
enum Trip {
    /// The user message's frame, then the AI reply's.
    Answered,
    /// An `error` frame: the server refused the harness's message.
    Refused,
    /// A frame missing (in time) or out of order.
    Lost,
    /// The socket ended.
    Closed,
}

async fn one_roundtrip(socket: &mut Socket, seq: u64) -> Trip {
    let frame = format!("{{\"message\":\"roundtrip {seq}\"}}");
    if socket.send(Message::Text(frame.into())).await.is_err() {
        return Trip::Closed;
    }
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut echoed = false;
    loop {
        let text = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Trip::Lost,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Trip::Closed,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
        };
        match read_frame(text.as_str()) {
            Received::Chat { ai, content } => {
                let Some([number]) = numbers_after::<1>(&content, "roundtrip ") else {
                    return Trip::Lost;
                };
                if number < seq {
                    // A late frame of an earlier round trip that timed out.
                    continue;
                }
                if number > seq {
                    return Trip::Lost;
                }
                if !ai {
                    echoed = true;
                } else {
                    return if echoed { Trip::Answered } else { Trip::Lost };
                }
            }
            Received::Error => return Trip::Refused,
            Received::Other => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// ws-fanout
// ---------------------------------------------------------------------------------------

/// How `ws-fanout` runs.
#[derive(Clone, Copy, Debug)]
pub struct FanoutPlan {
    /// Sockets on each session.
    pub per_session: usize,
    /// Messages posted per second, over all sessions.
    pub rate: u32,
    /// Posting time not recorded in the latency (every frame is still counted).
    pub warmup: Duration,
    /// Recorded posting time.
    pub duration: Duration,
}

/// What `ws-fanout` found.
#[derive(Debug)]
pub struct Fanout {
    /// Messages posted (the rate's operations), their delivery latency (post to frame,
    /// at every socket, after the warm-up), and every error (failed sockets and sends,
    /// error frames, out-of-order and lost frames).
    pub measured: Measured,
    /// Sockets that opened.
    pub sockets: usize,
    /// Sessions they were on.
    pub sessions: usize,
    /// Messages posted.
    pub posted: u64,
    /// `chat_message` frames that should have arrived: for each session, its posted
    /// messages times two (the message and its AI reply) times its sockets.
    pub expected: u64,
    /// `chat_message` frames that arrived.
    pub received: u64,
    /// Frames that arrived out of storage order.
    pub out_of_order: u64,
    /// The time from the first post to the last frame.
    pub elapsed: Duration,
}

impl Fanout {
    /// Frames that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

/// One socket's count.
struct Tally {
    received: u64,
    out_of_order: u64,
    error_frames: u64,
    latency: hdrhistogram::Histogram<u64>,
}

/// `ws-fanout`: `per_session` sockets on each of `sessions`; one socket of each session
/// posts (over the socket) in turn, at `rate` messages a second over all sessions, for
/// the warm-up and the duration; every socket counts every `chat_message` frame.
pub async fn fanout(
    addr: SocketAddr,
    sessions: &[String],
    token: &str,
    plan: FanoutPlan,
) -> anyhow::Result<Fanout> {
    let mut failures = Measured::new(plan.duration, 2)?;
    let opened = open_many(addr, sessions, token, sessions.len() * plan.per_session).await?;
    let mut speakers: Vec<Option<SplitSink<Socket, Message>>> =
        (0..sessions.len()).map(|_| None).collect();
    let mut listeners = vec![0u64; sessions.len()];
    let mut quiet_sinks = Vec::new();
    let (stop, stopped) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut readers = Vec::new();
    for (index, attempt) in opened.sockets {
        let socket = match attempt {
            Ok(socket) => socket,
            Err(error) => {
                error.count(&mut failures);
                continue;
            }
        };
        let session = index % sessions.len();
        listeners[session] += 1;
        let (sink, stream) = socket.split();
        match &mut speakers[session] {
            slot @ None => *slot = Some(sink),
            Some(_) => quiet_sinks.push(sink),
        }
        readers.push(tokio::spawn(count_frames(
            stream,
            measure::histogram(2)?,
            stopped.clone(),
            received.clone(),
            epoch,
            plan.warmup,
        )));
    }
    let sockets = readers.len();

    // Post at a steady rate, one session after the other.
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let posting_end = epoch + plan.warmup + plan.duration;
    let mut posted = vec![0u64; sessions.len()];
    let mut turn = 0usize;
    while Instant::now() < posting_end {
        ticks.tick().await;
        let session = turn % sessions.len();
        turn += 1;
        let Some(sink) = speakers[session].as_mut() else {
            continue;
        };
        let seq = posted[session] + 1;
        let at = epoch.elapsed().as_micros();
        let frame = format!("{{\"message\":\"fanout {session} {seq} {at}\"}}");
        match tokio::time::timeout(FRAME_TIMEOUT, sink.send(Message::Text(frame.into()))).await {
            Ok(Ok(())) => posted[session] = seq,
            _ => {
                failures.errors += 1;
                speakers[session] = None;
            }
        }
    }

    // Wait for every frame (or until they stop coming).
    let expected: u64 = posted
        .iter()
        .zip(&listeners)
        .map(|(posted, listeners)| posted * 2 * listeners)
        .sum();
    let mut last = received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let now_received = received.load(Ordering::Relaxed);
        if now_received >= expected || Instant::now() > give_up {
            break;
        }
        if now_received != last {
            last = now_received;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = epoch.elapsed();
    let _ = stop.send(true);

    let mut measured = Measured::new(plan.duration, 2)?;
    measured.merge(&failures)?;
    let mut total_received = 0;
    let mut out_of_order = 0;
    for reader in readers {
        let tally = reader.await.context("a fan-out socket panicked")?;
        total_received += tally.received;
        out_of_order += tally.out_of_order;
        measured.errors += tally.out_of_order + tally.error_frames;
        measured.refused += tally.error_frames;
        measured
            .latency
            .add(&tally.latency)
            .map_err(|error| anyhow::anyhow!("merging latencies: {error}"))?;
    }
    drop(quiet_sinks);
    drop(speakers);
    let posted_total: u64 = posted.iter().sum();
    measured.ok = posted_total;
    measured.window = plan.warmup + plan.duration;
    measured.errors += expected.saturating_sub(total_received);
    Ok(Fanout {
        measured,
        sockets,
        sessions: sessions.len(),
        posted: posted_total,
        expected,
        received: total_received,
        out_of_order,
        elapsed,
    })
}

/// Counts the `chat_message` frames of one socket until told to stop; checks that the
/// user messages and the AI replies of the session each arrive in posting order, and
/// records the delivery latency of user messages posted after the warm-up.
async fn count_frames(
    mut stream: SplitStream<Socket>,
    latency: hdrhistogram::Histogram<u64>,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
    epoch: Instant,
    warmup: Duration,
) -> Tally {
    let mut tally = Tally {
        received: 0,
        out_of_order: 0,
        error_frames: 0,
        latency,
    };
    let warmup_micros = warmup.as_micros();
    let mut last_user = 0u64;
    let mut last_ai = 0u64;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = stream.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        match read_frame(text.as_str()) {
            Received::Chat { ai, content } => {
                tally.received += 1;
                received.fetch_add(1, Ordering::Relaxed);
                let Some([_, seq, at]) = numbers_after::<3>(&content, "fanout ") else {
                    tally.out_of_order += 1;
                    continue;
                };
                let last = if ai { &mut last_ai } else { &mut last_user };
                if seq <= *last {
                    tally.out_of_order += 1;
                }
                *last = seq;
                if !ai && u128::from(at) >= warmup_micros {
                    let now = epoch.elapsed().as_micros();
                    let micros = u64::try_from(now.saturating_sub(u128::from(at))).unwrap_or(0);
                    measure::record(&mut tally.latency, Duration::from_micros(micros));
                }
            }
            Received::Error => tally.error_frames += 1,
            Received::Other => {}
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------
// ws-idle and opening many sockets
// ---------------------------------------------------------------------------------------

/// Sockets opened by [`open_many`], with the handshakes' latency.
pub struct Opened {
    /// Each socket's index (socket `i` is on session `i % sessions`) and how it went.
    pub sockets: Vec<(usize, Result<Socket, ConnectError>)>,
    /// Handshake latency of the sockets that opened (its window is the whole ramp).
    pub latency: Measured,
}

/// Opens `count` sockets, socket `i` on `sessions[i % sessions.len()]`, 64 at a time.
pub async fn open_many(
    addr: SocketAddr,
    sessions: &[String],
    token: &str,
    count: usize,
) -> anyhow::Result<Opened> {
    let started = Instant::now();
    let attempts: Vec<(usize, Result<Socket, ConnectError>, Duration)> =
        futures_util::stream::iter(0..count)
            .map(|index| {
                let session = sessions
                    .get(index % sessions.len().max(1))
                    .cloned()
                    .unwrap_or_default();
                async move {
                    let begun = Instant::now();
                    let socket = connect(addr, &session, token).await;
                    (index, socket, begun.elapsed())
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let elapsed = started.elapsed();
    let mut latency = Measured::new(elapsed, 3)?;
    let mut sockets = Vec::with_capacity(attempts.len());
    for (index, socket, took) in attempts {
        match &socket {
            Ok(_) => {
                latency.ok += 1;
                measure::record(&mut latency.latency, took);
            }
            Err(error) => error.count(&mut latency),
        }
        sockets.push((index, socket));
    }
    Ok(Opened { sockets, latency })
}

/// What `ws-idle` found.
#[derive(Debug)]
pub struct Idle {
    /// Handshakes: rate (sockets opened per second of the ramp), latency, errors.
    pub measured: Measured,
    /// Sockets open at once.
    pub open: usize,
    /// Server memory before the ramp, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Server memory with every socket open and idle, in KiB.
    pub rss_open_kib: Option<u64>,
}

/// `ws-idle`: opens `count` sockets (64 handshakes at a time), holds them idle for
/// `hold`, reads the server's memory through `rss_kib`, then closes them all.
pub async fn idle(
    addr: SocketAddr,
    sessions: &[String],
    token: &str,
    count: usize,
    hold: Duration,
    rss_kib: impl Fn() -> Option<u64>,
) -> anyhow::Result<Idle> {
    let rss_before_kib = rss_kib();
    let opened = open_many(addr, sessions, token, count).await?;
    let open: Vec<Socket> = opened
        .sockets
        .into_iter()
        .filter_map(|(_, socket)| socket.ok())
        .collect();
    tokio::time::sleep(hold).await;
    let rss_open_kib = rss_kib();
    let count_open = open.len();
    // Closing 10,000 sockets at once: a close frame each, then the TCP close.
    futures_util::stream::iter(open)
        .for_each_concurrent(CONNECT_CONCURRENCY * 4, |mut socket| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), socket.close(None)).await;
        })
        .await;
    Ok(Idle {
        measured: opened.latency,
        open: count_open,
        rss_before_kib,
        rss_open_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_from_messages_and_template_replies() {
        assert_eq!(
            numbers_after::<3>("fanout 3 17 1234", "fanout "),
            Some([3, 17, 1234])
        );
        assert_eq!(
            numbers_after::<3>(
                "AI 응답: fanout 3 17 1234에 대한 의료 정보를 제공합니다.",
                "fanout "
            ),
            Some([3, 17, 1234])
        );
        assert_eq!(numbers_after::<1>("roundtrip 9", "roundtrip "), Some([9]));
        assert_eq!(numbers_after::<1>("something else", "roundtrip "), None);
    }

    #[test]
    fn frames_are_told_apart() {
        let chat = r#"{"type":"chat_message","message":"fanout 1 2 3","sender":"ai","message_type":"text","metadata":{},"timestamp":"t","message_id":"m"}"#;
        assert!(matches!(read_frame(chat), Received::Chat { ai: true, .. }));
        assert!(matches!(
            read_frame(r#"{"type":"error","error":"x"}"#),
            Received::Error
        ));
        assert!(matches!(read_frame(r#"{"type":"pong"}"#), Received::Other));
        assert!(matches!(read_frame("not json"), Received::Other));
    }
}
