//! A crash in the middle of AI turns (contract section 9, "A turn left unanswered by a crash
//! is answered"): a fake AI service holds every answer, messages are posted on several
//! sessions over sockets and over REST, and the server is killed with SIGKILL while the
//! first turn of every session is at the AI and the later ones wait behind it. A session
//! is then imported into the database, as `narutalk session import` does, with a user
//! message and no reply. The server starts again on the same database with a fake AI that
//! answers at once.
//!
//! What must hold after the restart: every user message posted before the kill gets
//! exactly one reply (an AI reply or the system error message), in its session's order,
//! each reply stored after every earlier one and linked (`reply_to`, read from the database)
//! to its message; the replies reach a socket that resumes with `after` = the last
//! message it saw, in that order with nothing twice; the AI is asked once per message;
//! and the imported message creates no turn (no AI call, no reply).
//!
//! On PostgreSQL the restarted server is another holder: it takes the killed server's
//! turns over once their leases expire (`NARUTALK_AI_TIMEOUT_SECONDS` + 30 s, contract
//! section 9), so the AI timeout is 10 s there and the wait for the replies that much
//! longer. The links and the soundness of the rows are read through the backend in use
//! (`Database`); the import goes through the core on either.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use narutalk_core::Narutalk;
use narutalk_core::admin::ImportFile;
use narutalk_core::config::{Config, Overrides};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::Context;
use crate::api::Account;
use crate::fake_ai::{Answer, FakeService, Gate, Received, Step};
use crate::report::Row;
use crate::server::{ServerProcess, Settings, start_with_user};

/// Sessions with turns in flight at the kill.
const SESSIONS: usize = 4;

/// Messages posted on each session before the kill: the first and the last over the
/// session's socket, the middle one over REST (a post whose answer the kill cuts off).
const MESSAGES: usize = 3;

/// The AI's timeout: far longer than the part, so that no held turn ends on its own.
const AI_TIMEOUT_SECONDS: u64 = 300;

/// The AI's timeout on PostgreSQL, where the killed server's leases last it + 30 s: long
/// enough for the posts before the kill.
const POSTGRES_AI_TIMEOUT_SECONDS: u64 = 10;

/// How much longer than its AI timeout a lease lasts (`turns.rs`'s margin).
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How long anything that must happen may take: a frame, the AI's requests, the replies
/// after the restart (a generous upper bound, not a speed requirement).
const DEADLINE: Duration = Duration::from_secs(60);

/// The user of the part (email `turns@example.com`).
const USERNAME: &str = "turns";

/// The content of the imported message that no turn may answer.
const IMPORTED: &str = "imported before the restart, never answered";

/// The content of the system message stored when the AI fails.
const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";

/// A client's socket.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A user message stored before the kill.
#[derive(Clone, Debug)]
struct Posted {
    id: String,
    content: String,
}

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let ran = format!(
        "{SESSIONS} sessions x {MESSAGES} messages (socket, REST, socket) held by a fake AI; kill -9 with a turn of every session at the AI; a session imported; restart with an answering AI; sockets resume with `after`"
    );
    let held = Gate::new();
    let _release = OpenOnDrop(held.clone());
    let holding = {
        let held = held.clone();
        FakeService::start(move |_| {
            Answer::steps(vec![Step::Wait(held.clone())])
                .then_json(200, &json!({ "reply": "too late: the server is gone" }))
        })
    };
    // How long the replies may take after the restart: on PostgreSQL, a lease longer.
    let (ai_timeout, patience) = if ctx.backend.is_postgres() {
        let timeout = POSTGRES_AI_TIMEOUT_SECONDS;
        (
            timeout,
            DEADLINE + Duration::from_secs(timeout) + LEASE_MARGIN,
        )
    } else {
        (AI_TIMEOUT_SECONDS, DEADLINE)
    };
    let settings = Settings::new(ctx)?
        .set("NARUTALK_AI_BACKEND", "http")
        .set("NARUTALK_AI_URL", holding.url("/reply"))
        .set("NARUTALK_AI_TIMEOUT_SECONDS", ai_timeout);
    let (server, account) = start_with_user(&settings, USERNAME, SESSIONS).await?;

    // Before the kill: every message stored (its frame seen), a turn of every session at
    // the AI.
    let mut posted: Vec<Vec<Posted>> = Vec::new();
    let mut cut_posts = Vec::new();
    for (number, session) in account.sessions.iter().enumerate() {
        let (messages, cut) = post_session(&server, &account, session, number)
            .await
            .with_context(|| format!("posting on session {number}"))?;
        posted.push(messages);
        cut_posts.push(cut);
    }
    wait_for_requests(&holding, SESSIONS)
        .await
        .context("before the kill")?;
    let at_the_ai = holding.requests().len();
    server.kill9().await?;
    for cut in cut_posts {
        cut.abort();
    }
    held.open();

    let imported_session = import_unanswered(&settings)
        .await
        .context("importing a session with an unanswered message")?;

    let answering = FakeService::start(|request| {
        let message = message_of(request);
        Answer::json(200, &json!({ "reply": reply_to(&message) }))
    });
    let settings = settings.set("NARUTALK_AI_URL", answering.url("/reply"));
    let restarted = Instant::now();
    let server = ServerProcess::start(&settings)
        .await
        .context("restarting after the kill")?;
    let mut findings = Vec::new();
    let mut received_after = Vec::new();
    let mut resumed = Vec::new();
    for (session, messages) in account.sessions.iter().zip(&posted) {
        let last = messages.last().context("a session without messages")?;
        resumed.push(open_socket(&server, &account, session, Some(&last.id)).await?);
    }
    let mut replies: Vec<Vec<Value>> = Vec::new();
    for (number, (socket, messages)) in resumed.iter_mut().zip(&posted).enumerate() {
        let (frames, problems) = collect_replies(socket, messages.len(), restarted, patience).await;
        findings.extend(
            problems
                .into_iter()
                .map(|problem| format!("session {number}, resumed socket: {problem}")),
        );
        if frames.len() == messages.len() {
            received_after.push(restarted.elapsed().as_millis());
        }
        replies.push(frames);
    }
    for (number, (messages, frames)) in posted.iter().zip(&replies).enumerate() {
        findings.extend(
            check_frames(messages, frames)
                .into_iter()
                .map(|problem| format!("session {number}, resumed socket: {problem}")),
        );
    }

    // What is stored: each session's messages, then exactly one reply each, in order.
    let api = server.api()?;
    let database = settings.database().clone();
    for (number, (session, messages)) in account.sessions.iter().zip(&posted).enumerate() {
        let stored = api.session(&account, session).await?;
        let links = database.reply_links(session).await?;
        findings.extend(
            check_stored(messages, &stored, &links)
                .into_iter()
                .map(|problem| format!("session {number}, stored: {problem}")),
        );
    }
    let asked: Vec<String> = answering.requests().iter().map(message_of).collect();
    let mut asked_counts: HashMap<&str, usize> = HashMap::new();
    for message in &asked {
        *asked_counts.entry(message.as_str()).or_default() += 1;
    }
    for message in posted.iter().flatten() {
        match asked_counts.get(message.content.as_str()) {
            Some(1) => {}
            Some(times) => findings.push(format!(
                "the AI was asked {times} times about {:?} after the restart (once expected)",
                message.content
            )),
            // Unanswered after the restart: already found through the frames and storage.
            None => {}
        }
    }
    if asked_counts.contains_key(IMPORTED) {
        findings
            .push("the imported message was sent to the AI: an import created a turn".to_owned());
    }
    let imported = api.session(&account, &imported_session).await?;
    let imported_count = imported["messages"].as_array().map_or(0, Vec::len);
    if imported_count != 1 {
        findings.push(format!(
            "the imported session holds {imported_count} messages after the restart (1 expected: an import creates no turn)"
        ));
    }
    server.stop().await?;
    let file_problems = database.problems().await?;
    let integrity = if file_problems.is_empty() {
        "ok"
    } else {
        "problems"
    };
    findings.extend(file_problems);

    let answered: usize = replies.iter().map(Vec::len).sum();
    Ok(Row::new(
        ran,
        format!(
            "{} messages posted, {at_the_ai} turns at the AI at the kill\n{answered} replies on the resumed sockets, {} AI requests after the restart",
            SESSIONS * MESSAGES,
            asked.len()
        ),
        format!(
            "every reply of a session on its socket, after the restart: {received_after:?} ms\n{} after the final stop: {integrity}",
            database.checked()
        ),
        findings,
    ))
}

/// Opens a gate when dropped, so that a fake's held answers end even when the part fails.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Posts the session's messages (socket, REST, socket) and answers them as stored (each
/// seen as its `chat_message` frame), with the task of the REST post, which waits for a
/// reply that never comes before the kill.
async fn post_session(
    server: &ServerProcess,
    account: &Account,
    session: &str,
    number: usize,
) -> anyhow::Result<(Vec<Posted>, tokio::task::JoinHandle<()>)> {
    let mut socket = open_socket(server, account, session, None).await?;
    let mut posted = Vec::new();
    let mut cut = None;
    for index in 0..MESSAGES {
        let content = format!("session {number}, message {index}");
        if index == MESSAGES / 2 {
            let api = server.api()?;
            let account = account.clone();
            let session = session.to_owned();
            let body = json!({ "content": content });
            cut = Some(tokio::spawn(async move {
                let _ = api.post_message(&account, &session, &body).await;
            }));
        } else {
            send_frame(&mut socket, &json!({ "message": content })).await?;
        }
        let frame = next_chat_message(&mut socket)
            .await
            .with_context(|| format!("waiting for the frame of {content:?}"))?;
        if frame["sender"] != "user" || frame["message"] != content.as_str() {
            bail!("expected the frame of the user message {content:?}, got {frame}");
        }
        let id = frame["message_id"]
            .as_str()
            .context("a chat_message frame without message_id")?
            .to_owned();
        posted.push(Posted { id, content });
    }
    let cut = cut.context("no REST post")?;
    Ok((posted, cut))
}

/// Opens a socket on `session`, resuming after `after` when given.
async fn open_socket(
    server: &ServerProcess,
    account: &Account,
    session: &str,
    after: Option<&str>,
) -> anyhow::Result<Socket> {
    let mut url = format!(
        "ws://{}/ws/chat/{session}/?token={}",
        server.addr, account.access
    );
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    let (socket, _) = tokio::time::timeout(DEADLINE, connect_async(url))
        .await
        .context("the socket's handshake was not answered")?
        .context("opening a socket")?;
    Ok(socket)
}

async fn send_frame(socket: &mut Socket, frame: &Value) -> anyhow::Result<()> {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .context("sending a frame")
}

/// The next `chat_message` frame (other frames, such as `ai_delta`, skipped; an `error`
/// frame is an error).
async fn next_chat_message(socket: &mut Socket) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    next_chat_message_by(socket, deadline).await
}

async fn next_chat_message_by(
    socket: &mut Socket,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no frame in time")?
            .context("the socket ended")?
            .context("the socket failed")?;
        let Message::Text(text) = frame else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).context("a frame is not JSON")?;
        match frame["type"].as_str() {
            Some("chat_message") => return Ok(frame),
            Some("error") => bail!("an error frame: {frame}"),
            _ => {}
        }
    }
}

/// Reads up to `expected` `chat_message` frames from a resumed socket, until `patience`
/// after `restarted`, and then answers them with what went wrong.
async fn collect_replies(
    socket: &mut Socket,
    expected: usize,
    restarted: Instant,
    patience: Duration,
) -> (Vec<Value>, Vec<String>) {
    let deadline = tokio::time::Instant::from_std(restarted + patience);
    let mut frames = Vec::new();
    let mut problems = Vec::new();
    while frames.len() < expected {
        match next_chat_message_by(socket, deadline).await {
            Ok(frame) => frames.push(frame),
            Err(error) => {
                problems.push(format!(
                    "{} of {expected} replies arrived within {} s of the restart ({error:#}): the turns the crash left pending were not answered",
                    frames.len(),
                    patience.as_secs()
                ));
                break;
            }
        }
    }
    (frames, problems)
}

/// The frames of a resumed socket against the messages posted: one reply each, in order.
fn check_frames(messages: &[Posted], frames: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, frame) in frames.iter().enumerate() {
        let Some(message) = messages.get(index) else {
            break;
        };
        if let Some(problem) = not_a_reply_to(message, frame["sender"].as_str(), &frame["message"])
        {
            problems.push(format!("frame {index}: {problem}"));
        }
    }
    problems
}

/// What is wrong with a reply (by its sender and content) to `message`, if anything: an
/// AI reply must answer this message (the fake echoes it); a system error message is
/// allowed.
fn not_a_reply_to(message: &Posted, sender: Option<&str>, content: &Value) -> Option<String> {
    match sender {
        Some("ai") if *content == reply_to(&message.content).as_str() => None,
        Some("system") if *content == AI_UNAVAILABLE => None,
        _ => Some(format!(
            "expected the reply to {:?}, got {} {content}",
            message.content,
            sender.unwrap_or("(no sender)")
        )),
    }
}

/// The stored session against the messages posted: the messages, then exactly one reply
/// each in the same order, each linked to its message.
fn check_stored(
    messages: &[Posted],
    stored: &Value,
    links: &HashMap<String, String>,
) -> Vec<String> {
    let Some(stored) = stored["messages"].as_array() else {
        return vec!["the session has no `messages`".to_owned()];
    };
    let mut problems = Vec::new();
    let ids: Vec<&str> = stored.iter().filter_map(|m| m["id"].as_str()).collect();
    let expected_ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    if ids.get(..messages.len()) != Some(expected_ids.as_slice()) {
        problems.push(format!(
            "the session does not start with the {} messages posted: {ids:?}",
            messages.len()
        ));
        return problems;
    }
    let replies = &stored[messages.len()..];
    if replies.len() != messages.len() {
        problems.push(format!(
            "{} replies stored after the {} messages ({} expected: exactly one each)",
            replies.len(),
            messages.len(),
            messages.len()
        ));
    }
    for (index, (message, reply)) in messages.iter().zip(replies).enumerate() {
        if let Some(problem) = not_a_reply_to(message, reply["sender"].as_str(), &reply["content"])
        {
            problems.push(format!("reply {index}: {problem}"));
        }
        let id = reply["id"].as_str().unwrap_or_default();
        match links.get(id) {
            Some(link) if *link == message.id => {}
            other => problems.push(format!(
                "reply {index} ({id}) has reply_to {other:?}, not its message {}",
                message.id
            )),
        }
    }
    problems
}

/// Waits until `service` has received `n` requests.
async fn wait_for_requests(service: &FakeService, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while service.requests().len() < n {
        if Instant::now() >= deadline {
            bail!(
                "the fake AI received {} requests within {} s, {n} expected (a turn of every session)",
                service.requests().len(),
                DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The new user message of an `http` backend request.
fn message_of(request: &Received) -> String {
    serde_json::from_slice::<Value>(&request.body)
        .ok()
        .and_then(|body| body["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The answering fake's reply to `message`.
fn reply_to(message: &str) -> String {
    format!("reply to: {message}")
}

/// Imports, while no server runs, one session of the part's user holding one user message
/// and no reply, through the core's administration handle on the part's database (what
/// `narutalk session import` does, with the server's database settings); answers the
/// session's id.
async fn import_unanswered(settings: &Settings) -> anyhow::Result<String> {
    let session_id = random_uuid()?;
    let message_id = random_uuid()?;
    let now = "2026-12-01T09:00:00.000000Z";
    let line = json!({
        "id": session_id,
        "owner_email": format!("{USERNAME}@example.com"),
        "title": "imported",
        "category": "general",
        "is_active": true,
        "created_at": now,
        "updated_at": now,
        "message_count": 1,
        "messages": [{
            "id": message_id,
            "seq": 1,
            "sender": "user",
            "message_type": "text",
            "content": IMPORTED,
            "metadata": {},
            "timestamp": now,
            "reply_to": null,
        }],
    });
    // The settings `narutalk` needs for the database: a PostgreSQL URL needs the secret.
    let vars: Vec<(String, String)> = ["NARUTALK_DATABASE", "NARUTALK_SECRET_KEY"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), settings.var(name)?.to_owned())))
        .collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let config = Config::load_from(vars, &Overrides::default())?;
        let core = Narutalk::open_for_administration(&config)?;
        let file = ImportFile::parse(format!("{line}\n").as_bytes())?;
        core.admin().import(&file)?;
        Ok(())
    })
    .await
    .context("the import's thread")??;
    Ok(session_id)
}

/// A random UUID v4, lower-case and hyphenated.
fn random_uuid() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}
