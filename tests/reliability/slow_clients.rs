//! Slow clients: from 127.0.0.1, trickled bodies (a login whose body comes one byte every
//! 3 s) on as many connections as the server's connection cap, then slowloris
//! connections (headers sent a line every 2 s, never finished), each reconnecting whenever
//! the server closes it. Meanwhile a normal client on 127.0.0.2 (its sockets bound to that
//! address, a new connection for every request) reads and writes: every one of its
//! requests must be answered. Its latencies are printed, not asserted.
//!
//! The server runs with a connection cap of 2,000 instead of its default 10,000, so that
//! one address can take every place cheaply. Each trickler first has a whole request
//! answered on its connection, which proves that the server accepted it (it holds a place
//! under the cap), and only then starts its trickled login. The normal client starts once
//! every trickler has been accepted or refused: without a per-address share of the
//! connections and the body rate rule of contract section 9, the tricklers hold every
//! place and the normal client is never served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Semaphore, watch};

use crate::Context;
use crate::api::Api;
use crate::report::{Row, latencies};
use crate::server::{Settings, start_with_user};

/// The server's connection cap in this part.
const MAX_CONNECTIONS: usize = 2_000;

/// Connections trickling a body: as many as the cap.
const TRICKLERS: usize = 2_000;

/// Connections sending headers slowly.
const SLOWLORIS: usize = 500;

/// A trickled body's byte comes this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(3);

/// A slowloris connection's next header line comes this often.
const SLOWLORIS_EVERY: Duration = Duration::from_secs(2);

/// An attacker whose connection was closed connects again after this pause.
const RECONNECT_PAUSE: Duration = Duration::from_secs(3);

/// An attacker's connect, or its first answer, that has not come in this long is
/// abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the normal client keeps sending requests during the attack: longer than the
/// server's 10 s header limit and its 10 s of grace for a body.
const NORMAL_RUN: Duration = Duration::from_secs(30);

/// The normal client's pause between requests.
const NORMAL_PAUSE: Duration = Duration::from_millis(200);

/// The normal client's address.
const NORMAL_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// What the attackers of one kind saw.
#[derive(Default)]
struct AttackStats {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    closed_at_once: AtomicU64,
    closed_later: AtomicU64,
    answered_408: AtomicU64,
    answered_other: AtomicU64,
    /// Connections the server answered a first request on (tricklers only), now and at
    /// most.
    held: AtomicI64,
    most_held: AtomicI64,
}

impl AttackStats {
    /// `N connects (N failed); closed at once N, later N; 408 answers N, other answers N`.
    fn describe(&self) -> String {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "{} connects ({} failed); closed at once {}, later {}; 408 answers {}, other answers {}",
            count(&self.connects),
            count(&self.connect_failures),
            count(&self.closed_at_once),
            count(&self.closed_later),
            count(&self.answered_408),
            count(&self.answered_other),
        )
    }
}

/// An attacker's kind.
#[derive(Clone, Copy)]
enum Attack {
    Slowloris,
    Trickle,
}

/// How an attacker's connection ended.
enum Ended {
    /// The server closed it without an answer.
    Closed,
    /// The server answered with this status (and so ended the request).
    Answered(u16),
    /// The part is over.
    Stopped,
}

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let ran = format!(
        "{SLOWLORIS} slowloris + {TRICKLERS} trickled bodies from 127.0.0.1 (cap {MAX_CONNECTIONS}) for {} s; a normal client on 127.0.0.2",
        NORMAL_RUN.as_secs()
    );
    let settings = Settings::new(ctx)?.max_connections(MAX_CONNECTIONS);
    let (mut server, account) = start_with_user(&settings, "normal", 1).await?;
    let session = account.sessions[0].clone();
    let normal = Api::new(server.addr, Some(NORMAL_ADDRESS))?;
    // The normal client works before the attack (and 127.0.0.2 is usable here).
    let before = normal
        .health()
        .await
        .context("the normal client before the attack")?;
    anyhow::ensure!(
        before.status == 200,
        "health answered {} before the attack",
        before.describe()
    );

    let slowloris = Arc::new(AttackStats::default());
    let tricklers = Arc::new(AttackStats::default());
    let (stop, stopped) = watch::channel(false);
    let mut attackers = Vec::new();
    // Tricklers first; once each was accepted (or refused), the slowloris connections.
    for (attack, stats, count) in [
        (Attack::Trickle, &tricklers, TRICKLERS),
        (Attack::Slowloris, &slowloris, SLOWLORIS),
    ] {
        let first_attempts = Arc::new(Semaphore::new(0));
        for _ in 0..count {
            attackers.push(tokio::spawn(attacker(
                server.addr,
                attack,
                stats.clone(),
                stopped.clone(),
                first_attempts.clone(),
            )));
        }
        let _ = tokio::time::timeout(
            CONNECT_TIMEOUT * 3,
            first_attempts.acquire_many(count as u32),
        )
        .await;
    }
    let held_at_start = tricklers.held.load(Ordering::Relaxed);

    let mut findings = Vec::new();
    let mut millis = Vec::new();
    let mut sent = 0;
    let started = Instant::now();
    while started.elapsed() < NORMAL_RUN {
        let (what, method, path, body, expected) = match sent % 3 {
            0 => ("health", Method::GET, "/api/health/".to_owned(), None, 200),
            1 => (
                "the session list",
                Method::GET,
                "/api/chat/sessions/".to_owned(),
                None,
                200,
            ),
            _ => (
                "a post",
                Method::POST,
                format!("/api/chat/sessions/{session}/messages/"),
                Some(json!({ "content": format!("normal client {sent}") })),
                201,
            ),
        };
        sent += 1;
        let at = started.elapsed().as_secs_f64();
        match normal
            .send(method, &path, Some(&account.access), body.as_ref())
            .await
        {
            Ok(answer) if answer.status == expected => millis.push(answer.millis),
            Ok(answer) => findings.push(format!(
                "the normal client's {what} at {at:.0} s answered {}",
                answer.describe()
            )),
            Err(error) => findings.push(format!(
                "the normal client's {what} at {at:.0} s got no answer: {error:#}"
            )),
        }
        tokio::time::sleep(NORMAL_PAUSE).await;
    }
    let _ = stop.send(true);
    for attacker in attackers {
        let _ = attacker.await;
    }
    server.check_running()?;
    server.stop().await?;

    Ok(Row::new(
        ran,
        format!(
            "normal: {sent} requests, {} answered as expected\ntricklers: {}\nslowloris: {}\ntricklers the server held: {held_at_start} when the normal client started, {} at most",
            millis.len(),
            tricklers.describe(),
            slowloris.describe(),
            tricklers.most_held.load(Ordering::Relaxed),
        ),
        format!(
            "normal client (new connection each): {}",
            latencies(&millis)
        ),
        findings,
    ))
}

/// One attacker: connects, holds the connection as `attack` says until the server ends
/// it, pauses, and connects again, until the part stops. Its first attempt ends (a permit
/// of `first_attempts`) once it is held (or refused, or failed to connect).
async fn attacker(
    addr: SocketAddr,
    attack: Attack,
    stats: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
    first_attempts: Arc<Semaphore>,
) {
    let mut first = Some(first_attempts);
    loop {
        if *stop.borrow() {
            break;
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        match connected {
            Ok(Ok(stream)) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                let since = Instant::now();
                let ended = hold(stream, attack, &stats, &mut stop, &mut first).await;
                let at_once = since.elapsed() < Duration::from_secs(1);
                match ended {
                    Ended::Stopped => break,
                    Ended::Answered(408) => stats.answered_408.fetch_add(1, Ordering::Relaxed),
                    Ended::Answered(_) => stats.answered_other.fetch_add(1, Ordering::Relaxed),
                    Ended::Closed if at_once => {
                        stats.closed_at_once.fetch_add(1, Ordering::Relaxed)
                    }
                    Ended::Closed => stats.closed_later.fetch_add(1, Ordering::Relaxed),
                };
            }
            _ => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(first_attempts) = first.take() {
            first_attempts.add_permits(1);
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(first_attempts) = first.take() {
        first_attempts.add_permits(1);
    }
}

/// Holds one connection: a trickler first has `GET /api/health/` answered (the server
/// accepted it), then both send the start of a request and a little more now and then,
/// until the server answers or closes, or the part stops.
async fn hold(
    stream: TcpStream,
    attack: Attack,
    stats: &AttackStats,
    stop: &mut watch::Receiver<bool>,
    first: &mut Option<Arc<Semaphore>>,
) -> Ended {
    let (mut reader, mut writer) = stream.into_split();
    let (head, every, more): (&[u8], Duration, &[u8]) = match attack {
        Attack::Slowloris => (
            b"GET /api/health/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n",
            SLOWLORIS_EVERY,
            b"X-Slow: 1\r\n",
        ),
        Attack::Trickle => (
            b"POST /api/auth/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            TRICKLE_EVERY,
            b" ",
        ),
    };
    let _held = match attack {
        Attack::Slowloris => None,
        Attack::Trickle => {
            let probe = b"GET /api/health/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
            if writer.write_all(probe).await.is_err() {
                return Ended::Closed;
            }
            let answered = tokio::select! {
                answered = tokio::time::timeout(CONNECT_TIMEOUT, read_response(&mut reader)) => answered,
                _ = stop.changed() => return Ended::Stopped,
            };
            match answered {
                Ok(Some(200)) => Some(Held::new(stats)),
                Ok(Some(status)) => return Ended::Answered(status),
                Ok(None) | Err(_) => return Ended::Closed,
            }
        }
    };
    if let Some(first_attempts) = first.take() {
        first_attempts.add_permits(1);
    }
    if writer.write_all(head).await.is_err() {
        return Ended::Closed;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut buffer = [0u8; 512];
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => {
                return match read {
                    Ok(0) | Err(_) => Ended::Closed,
                    Ok(n) => status_of(&buffer[..n]).map_or(Ended::Closed, Ended::Answered),
                };
            }
            _ = ticks.tick() => {
                if writer.write_all(more).await.is_err() {
                    return Ended::Closed;
                }
            }
            _ = stop.changed() => return Ended::Stopped,
        }
    }
}

/// A trickler's connection that the server holds, counted while it lives.
struct Held<'a>(&'a AttackStats);

impl<'a> Held<'a> {
    fn new(stats: &'a AttackStats) -> Held<'a> {
        let now = stats.held.fetch_add(1, Ordering::Relaxed) + 1;
        stats.most_held.fetch_max(now, Ordering::Relaxed);
        Held(stats)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads one whole response (head, then `Content-Length` bytes of body) and answers its
/// status; `None` when the connection ends first or the head is not HTTP/1.1.
async fn read_response(reader: &mut OwnedReadHalf) -> Option<u16> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        if received.len() > 64 * 1024 {
            return None;
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    };
    let status = status_of(&received)?;
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = received.len() - head_end;
    while body < length {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body += n,
        }
    }
    Some(status)
}

/// The status of a response that starts with `HTTP/1.1 NNN`.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}
