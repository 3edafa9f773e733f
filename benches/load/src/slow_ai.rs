//! The `slow-ai` scenario: does a slow AI starve the database? (Contract section 9, "AI
//! turns never starve the database".)
//!
//! It runs a server of its own, on a database of its own, whose AI is the `http` backend
//! against [`SlowModel`], a fake model in the harness that answers every request after a
//! fixed delay (2 s), at the default `ai_concurrency` and `ai_timeout_seconds`. First
//! `health` and `sessions-list` run alone on that server, half of the connections each;
//! then the same connections run again while the turns are in flight: one REST post per
//! session, each posted again as soon as it is answered, so that as many turns as there
//! are sessions (1,024 in a full run) are in flight during the whole measured
//! window. The rows give each group's p99 beside its p99 alone, their ratio, and every
//! failed request; the turns' row says how many were in flight, how many reached the model
//! at once, and how the turns ended. Their peak memory is that of `slow-ai`'s own server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ceilings::{Ceilings, kib_to_mib};
use crate::child::{Server, ServerProcess};
use crate::client::{self, Connection, Lane, RequestBytes, Timing};
use crate::measure::{self, Measured};
use crate::report::{Row, ms, thousands};
use crate::seed::{self, Ai, SlowAiFixture};

/// The issue's bound: each group's p99 with the slow turns within this multiple of its p99
/// alone.
pub const P99_RATIO_TARGET: f64 = 2.0;

/// How long one turn's post may take before it counts as failed: the queue's wait (1,024
/// turns at 64 a time, 2 s each, about 32 s) plus the AI's timeout, with room.
const POST_TIMEOUT: Duration = Duration::from_secs(120);

/// The sizes of `slow-ai`.
#[derive(Clone, Copy, Debug)]
pub struct SlowAiPlan {
    /// Turns in flight: one session each.
    pub turns: usize,
    /// The model's time per reply.
    pub reply_delay: Duration,
}

/// Runs `slow-ai` in a subfolder of `dir`: its own model, database and server. Answers
/// its rows: `slow-ai: health`, `slow-ai: sessions-list` and `slow-ai: turns`.
pub async fn run(
    dir: &Path,
    connections: usize,
    max_connections: usize,
    timing: Timing,
    plan: SlowAiPlan,
    ceilings: &Ceilings,
) -> anyhow::Result<Vec<Row>> {
    let model = SlowModel::start(plan.reply_delay).await?;
    let dir = dir.join("slow-ai");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let settings = seed::write_settings(&dir, &Ai::Http(model.url()), false)?;
    let config = seed::load_settings(&settings, None)?.core;
    let turns = plan.turns;
    let fixture = tokio::task::spawn_blocking(move || seed::seed_slow_ai(&config, turns))
        .await
        .context("seeding slow-ai panicked")?
        .context("seeding slow-ai's database")?;
    let mut server = ServerProcess::start(&Server::Narutalk {
        settings,
        max_connections: max_connections + plan.turns,
    })
    .await
    .context("starting slow-ai's server")?;
    let peak_reset = server.reset_peak();
    let outcome = measure(&server, &fixture, &model, connections, timing, plan).await;
    let peak = server.peak_kib().map(kib_to_mib);
    let running = server.check_running();
    let stopped = server.stop().await;
    model.stop();
    let mut outcome = outcome?;
    running.context("slow-ai's server")?;
    if let Err(error) = stopped {
        outcome
            .turns_notes
            .push(format!("the server's stop: {error:#}"));
    }
    let mut rows = outcome.rows(ceilings);
    for row in &mut rows {
        row.server_peak_mib = peak;
        if !peak_reset {
            row.notes.push("peak since its start".to_owned());
        }
    }
    Ok(rows)
}

/// What the two phases measured.
struct Outcome {
    /// `health` and `sessions-list` alone.
    alone: Vec<Measured>,
    /// The same with the turns in flight.
    loaded: Vec<Measured>,
    /// Connections of each group.
    lanes: [usize; 2],
    /// Sessions with a turn in flight (one poster each).
    sessions: usize,
    /// The turns' posts answered within the measured window.
    turns: Measured,
    turns_notes: Vec<String>,
    turns_figures: Vec<(&'static str, f64)>,
}

impl Outcome {
    fn rows(self, ceilings: &Ceilings) -> Vec<Row> {
        let mut rows = Vec::new();
        for (group, name) in ["health", "sessions-list"].into_iter().enumerate() {
            let (Some(loaded), Some(alone)) = (self.loaded.get(group), self.alone.get(group))
            else {
                continue;
            };
            let mut row = Row::new(
                &format!("slow-ai: {name}"),
                self.lanes[group],
                "req/s",
                loaded,
            );
            row.compare("req/s warp hello", ceilings.hello_per_second);
            let alone_p99 = alone.quantile_ms(0.99);
            let ratio = if alone_p99 > 0.0 {
                row.p99_ms / alone_p99
            } else {
                0.0
            };
            row.notes.push(format!(
                "alone (same conns): p99 {} ms,\n{} req/s, {} failed\np99 ratio {ratio:.2} (target <= {P99_RATIO_TARGET:.0})",
                ms(alone_p99),
                thousands(alone.rate()),
                alone.errors
            ));
            row.figures.insert("alone_p99_ms", alone_p99);
            row.figures.insert("alone_per_second", alone.rate());
            row.figures.insert("alone_errors", alone.errors as f64);
            row.figures.insert("p99_ratio", ratio);
            rows.push(row);
        }
        let mut turns = Row::new("slow-ai: turns", self.sessions, "turns/s", &self.turns);
        turns.notes = self.turns_notes;
        turns.figures.extend(self.turns_figures);
        rows.push(turns);
        rows
    }
}

/// The two phases against `server`: the measured groups alone, then beside the turns.
async fn measure(
    server: &ServerProcess,
    fixture: &SlowAiFixture,
    model: &SlowModel,
    connections: usize,
    timing: Timing,
    plan: SlowAiPlan,
) -> anyhow::Result<Outcome> {
    let addr = server.addr;
    let healths = (connections / 2).max(1);
    let lists = connections.saturating_sub(healths).max(1);
    let health = client::get(addr, "/api/health/", None);
    let list = client::get(addr, "/api/chat/sessions/", Some(&fixture.reader.access));
    let lanes = || -> Vec<Lane> {
        let mut lanes = Vec::with_capacity(healths + lists);
        lanes.extend((0..healths).map(|_| Lane::single(0, health.clone())));
        lanes.extend((0..lists).map(|_| Lane::single(1, list.clone())));
        lanes
    };
    let alone = client::drive(addr, lanes(), 2, timing).await?;

    // The turns: every poster connected first, then all posting at once.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (stop, stopping) = watch::channel(false);
    let mut posters = Vec::with_capacity(plan.turns);
    for session in fixture.writer_sessions.iter().take(plan.turns) {
        let request = client::post_json(
            addr,
            &format!("/api/chat/sessions/{session}/messages/"),
            Some(&fixture.writer.access),
            r#"{"content":"A slow question: what does this rash mean?"}"#,
        );
        posters.push(Poster::connect(addr, request).await?);
    }
    let sessions = posters.len();
    let started = Instant::now();
    let window = Window {
        start: started + timing.warmup,
        end: started + timing.warmup + timing.duration,
        length: timing.duration,
    };
    let tasks: Vec<JoinHandle<anyhow::Result<Turns>>> = posters
        .into_iter()
        .map(|poster| tokio::spawn(poster.run(window, in_flight.clone(), stopping.clone())))
        .collect();
    // The measured groups start once the model has its first request (the turns have
    // reached the AI) and the warm-up has passed.
    let model_deadline = Instant::now() + POST_TIMEOUT;
    while model.requests() == 0 && Instant::now() < model_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until(window.start).await;
    let sampling = sample_in_flight(in_flight.clone(), model.clone(), window);
    let loaded = client::drive(
        addr,
        lanes(),
        2,
        Timing {
            warmup: Duration::ZERO,
            duration: timing.duration,
        },
    )
    .await?;
    let _ = stop.send(true);
    let (in_flight_min, in_flight_max, model_max) =
        sampling.await.context("the sampler panicked")?;
    let mut turns = Turns::new(timing.duration)?;
    for task in tasks {
        turns.merge(task.await.context("a poster panicked")??)?;
    }
    let notes = vec![format!(
        "{sessions} sessions, one post each in flight;\nin flight during the window: min {in_flight_min}, max {in_flight_max}\nat the model at once: max {model_max} ({} ms a reply)\nturns ended: {} AI reply, {} system error\n({} busy), {} no answer or not 201",
        plan.reply_delay.as_millis(),
        turns.measured.ok,
        turns.system_errors,
        turns.busy,
        turns.measured.errors - turns.system_errors,
    )];
    let figures = vec![
        ("in_flight_min", in_flight_min as f64),
        ("in_flight_max", in_flight_max as f64),
        ("model_at_once_max", model_max as f64),
        ("system_errors", turns.system_errors as f64),
        ("busy", turns.busy as f64),
    ];
    Ok(Outcome {
        alone,
        loaded,
        lanes: [healths, lists],
        sessions,
        turns: turns.measured,
        turns_notes: notes,
        turns_figures: figures,
    })
}

/// The measured window of the turns (their posts before it are the warm-up).
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
    length: Duration,
}

/// How the turns of one poster (or of all) ended within the measured window.
struct Turns {
    /// Answered 201 with the AI's reply (`ok`, latency), or not (`errors`: the system error
    /// message, another status, no answer in time, a broken connection).
    measured: Measured,
    /// Of the errors, 201s whose reply is the system error message.
    system_errors: u64,
    /// Of those, the `assistant busy` ones.
    busy: u64,
}

impl Turns {
    fn new(window: Duration) -> anyhow::Result<Turns> {
        Ok(Turns {
            measured: Measured::new(window, 3)?,
            system_errors: 0,
            busy: 0,
        })
    }

    fn merge(&mut self, other: Turns) -> anyhow::Result<()> {
        self.measured.merge(&other.measured)?;
        self.system_errors += other.system_errors;
        self.busy += other.busy;
        Ok(())
    }
}

/// One session's turns: a keep-alive connection that posts, waits for the answer (the
/// reply), and posts again.
struct Poster {
    addr: SocketAddr,
    request: RequestBytes,
    connection: Option<Connection>,
}

impl Poster {
    async fn connect(addr: SocketAddr, request: RequestBytes) -> anyhow::Result<Poster> {
        Ok(Poster {
            addr,
            request,
            connection: Some(Connection::open(addr).await?),
        })
    }

    /// Posts until `stopping` says true; a post still waiting then is dropped with its
    /// connection (its turn goes on in the server).
    async fn run(
        mut self,
        window: Window,
        in_flight: Arc<AtomicUsize>,
        mut stopping: watch::Receiver<bool>,
    ) -> anyhow::Result<Turns> {
        let mut turns = Turns::new(window.length)?;
        let mut body = Vec::new();
        while !*stopping.borrow() {
            let connection = match self.connection.as_mut() {
                Some(connection) => connection,
                None => match Connection::open(self.addr).await {
                    Ok(connection) => self.connection.insert(connection),
                    Err(_) => {
                        if Instant::now() >= window.start {
                            turns.measured.errors += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let sent = Instant::now();
            in_flight.fetch_add(1, Ordering::SeqCst);
            let answer = tokio::select! {
                answer = tokio::time::timeout(
                    POST_TIMEOUT,
                    connection.exchange_keeping_body(&self.request, &mut body),
                ) => Some(answer),
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let done = Instant::now();
            let Some(answer) = answer else {
                break;
            };
            let recorded = done >= window.start && done <= window.end;
            match answer {
                Ok(Ok(answer)) => {
                    if !answer.keep_alive {
                        self.connection = None;
                    }
                    if !recorded {
                        continue;
                    }
                    if answer.status == 201 {
                        let reply = serde_json::from_slice::<serde_json::Value>(&body)
                            .map(|posted| posted["reply"].clone())
                            .unwrap_or_default();
                        if reply["sender"] == "ai" {
                            turns.measured.ok += 1;
                            measure::record(&mut turns.measured.latency, done - sent);
                        } else {
                            // The system error message: the turn failed.
                            turns.measured.errors += 1;
                            turns.system_errors += 1;
                            if reply["metadata"]["reason"] == "assistant busy" {
                                turns.busy += 1;
                            }
                        }
                    } else {
                        turns.measured.errors += 1;
                        if (400..500).contains(&answer.status) {
                            turns.measured.refused += 1;
                        }
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    self.connection = None;
                    if recorded {
                        turns.measured.errors += 1;
                    }
                }
            }
        }
        Ok(turns)
    }
}

/// Samples, every 100 ms of the measured window, the turns in flight and the requests at
/// the model; answers the fewest and most turns in flight and the most requests at once.
fn sample_in_flight(
    in_flight: Arc<AtomicUsize>,
    model: SlowModel,
    window: Window,
) -> JoinHandle<(usize, usize, usize)> {
    tokio::spawn(async move {
        let (mut least, mut most) = (usize::MAX, 0);
        while Instant::now() < window.end {
            let now = in_flight.load(Ordering::SeqCst);
            least = least.min(now);
            most = most.max(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (least.min(most), most, model.most_at_once())
    })
}

// ---------------------------------------------------------------------------------------
// The slow model
// ---------------------------------------------------------------------------------------

/// A fake AI service of the `http` backend's protocol on 127.0.0.1: every `POST` is
/// answered `{"reply": ...}` after a fixed delay, on as many keep-alive connections as the
/// server opens. It counts the requests and the most it held at once.
#[derive(Clone)]
pub struct SlowModel {
    addr: SocketAddr,
    counts: Arc<ModelCounts>,
    accepting: Arc<JoinHandle<()>>,
}

#[derive(Default)]
struct ModelCounts {
    requests: AtomicUsize,
    now: AtomicUsize,
    most: AtomicUsize,
}

impl SlowModel {
    /// Starts the model on a free loopback port.
    pub async fn start(delay: Duration) -> anyhow::Result<SlowModel> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the slow model")?;
        let addr = listener.local_addr().context("the slow model's address")?;
        let counts = Arc::new(ModelCounts::default());
        let accepted = counts.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_slowly(stream, delay, accepted.clone()));
            }
        });
        Ok(SlowModel {
            addr,
            counts,
            accepting: Arc::new(accepting),
        })
    }

    /// Its URL, for `ai_url`.
    pub fn url(&self) -> String {
        format!("http://{}/reply", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// The most requests it held at once so far.
    pub fn most_at_once(&self) -> usize {
        self.counts.most.load(Ordering::SeqCst)
    }

    /// Stops accepting (connections already open are served until they close).
    pub fn stop(&self) {
        self.accepting.abort();
    }
}

/// Serves one connection: each request (head and `Content-Length` body) is answered after
/// `delay`.
async fn answer_slowly(mut stream: TcpStream, delay: Duration, counts: Arc<ModelCounts>) {
    const REPLY: &str = r#"{"reply":"A slow answer: see a clinician if it spreads."}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{REPLY}",
        REPLY.len()
    );
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let Some(length) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        buffer.drain(..length);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        counts.now.fetch_sub(1, Ordering::SeqCst);
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until `buffer` starts with a whole request (head and `Content-Length` body) and
/// answers its length; `None` when the connection ends or the request is unreadable.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = request.parse(buffer).ok()? {
            let body = request
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                .and_then(|header| std::str::from_utf8(header.value).ok())
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buffer.len() >= head + body {
                return Some(head + body);
            }
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}
