//! A database locked by another process: the `sqlite3` shell holds the write lock
//! (`BEGIN IMMEDIATE`) for 30 s while several clients write. Every write must be answered
//! 503 (section 1's body, `Retry-After: 1`) before the lock ends, reads must keep working,
//! health must say `read_only`; once the shell has gone, writes must answer 201 (200 for
//! a change) again at once, health must recover, and no refused write may have been
//! applied.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::api::{Account, Answer, Api};
use crate::report::{Row, latencies};
use crate::server::{Settings, start_with_user};
use crate::{Context, sqlite, system};

/// Concurrent writing clients, each with its own session.
const CLIENTS: usize = 4;

/// How long the shell holds the lock.
const HOLD: Duration = Duration::from_secs(30);

/// Clients send new writes during this first part of the hold only, so that writes bounded
/// to 5 s are all answered, with room to spare, before the lock ends.
const WRITE_WINDOW: Duration = Duration::from_secs(15);

/// How long before the lock ends health must have said `read_only`, so that its answer
/// is known to come from while the lock was held.
const HEALTH_MARGIN: Duration = Duration::from_secs(5);

/// How long health gets to report the database connected again after a successful write
/// (an upper bound for "it must happen").
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// One write the clients send.
#[derive(Clone, Copy, Debug)]
enum Write {
    PostMessage,
    CreateSession,
    RenameSession,
}

/// One write sent while the lock was held.
struct Sent {
    write: Write,
    /// The message content, session title or new title it carried.
    text: String,
    answer: Result<Answer, String>,
    answered_at: Instant,
}

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let ran = format!(
        "`sqlite3` holds BEGIN IMMEDIATE for {} s; {CLIENTS} clients post messages, create and rename sessions",
        HOLD.as_secs()
    );
    let Some(shell) = system::require("sqlite3", "sqlite3", "reliability: locked") else {
        return Ok(Row::skipped(
            ran,
            "`sqlite3` is missing (Debian package `sqlite3`)".to_owned(),
        ));
    };
    let settings = Settings::new(ctx)?;
    let (server, account) = start_with_user(&settings, "locked", CLIENTS).await?;
    let api = server.api()?;
    let mut findings = Vec::new();

    let mut lock = Lock::take(&shell, &settings.database_file()?).await?;
    let locked_at = Instant::now();
    let refused = Arc::new(Notify::new());
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let api = api.clone();
        let account = account.clone();
        let refused = refused.clone();
        clients.push(tokio::spawn(async move {
            write_while_locked(&api, &account, client, locked_at, &refused).await
        }));
    }
    // Reads and health while the lock is held, once a write has been refused (health
    // reports `read_only` from then on).
    let mut reads = Vec::new();
    let _ = tokio::time::timeout(WRITE_WINDOW, refused.notified()).await;
    for session in &account.sessions {
        reads.push(
            api.send(
                Method::GET,
                &format!("/api/chat/sessions/{session}/"),
                Some(&account.access),
                None,
            )
            .await,
        );
    }
    // The first refusal may be a write that waited in the server's own queue, which health
    // does not count; the write holding the database fails for the lock itself a moment
    // later (SQLite's busy wait sleeps in steps of up to 100 ms). So health is asked until it
    // says `read_only`, for as long as the lock is held (minus a margin for the answer).
    let mut health_locked = api.health().await;
    while !health_locked
        .as_ref()
        .is_ok_and(|health| health.body["services"]["database"] == "read_only")
        && locked_at.elapsed() + HEALTH_MARGIN < HOLD
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        health_locked = api.health().await;
    }
    tokio::time::sleep(HOLD.saturating_sub(locked_at.elapsed())).await;
    let released_at = Instant::now();
    lock.release().await?;
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.context("a writing client")?);
    }

    // While locked: every write refused with section 1's 503, before the lock ended.
    let mut millis = Vec::new();
    for write in &sent {
        match &write.answer {
            Ok(answer) => {
                millis.push(answer.millis);
                if !answer.is_unavailable() {
                    findings.push(format!(
                        "while locked, {:?} answered {} (expected 503, Retry-After: 1, section 1's body)",
                        write.write,
                        answer.describe()
                    ));
                } else if write.answered_at >= released_at {
                    findings.push(format!(
                        "{:?} was answered 503 only after the lock ended ({:.1} s after it was sent)",
                        write.write,
                        answer.millis / 1000.0
                    ));
                }
            }
            Err(error) => findings.push(format!(
                "while locked, {:?} got no answer: {error}",
                write.write
            )),
        }
    }
    if sent.is_empty() {
        findings.push("no write was sent while the lock was held".to_owned());
    }
    for read in &reads {
        match read {
            Ok(answer) if answer.status == 200 => {}
            Ok(answer) => findings.push(format!(
                "while locked, reading a session answered {}",
                answer.describe()
            )),
            Err(error) => findings.push(format!(
                "while locked, reading a session got no answer: {error:#}"
            )),
        }
    }
    match &health_locked {
        Ok(health)
            if health.status == 200
                && health.body["services"]["database"] == "read_only"
                && health.body["status"] == "degraded" => {}
        Ok(health) => findings.push(format!(
            "while locked, health answered {} (expected 200, status degraded, database read_only)",
            health.describe()
        )),
        Err(error) => findings.push(format!("while locked, health got no answer: {error:#}")),
    }

    // Nothing refused was applied.
    let titles_after = titles(&api, &account).await?;
    let mut contents = Vec::new();
    for session in &account.sessions {
        let detail = api.session(&account, session).await?;
        for message in detail["messages"].as_array().into_iter().flatten() {
            contents.push(message["content"].as_str().unwrap_or_default().to_owned());
        }
    }
    let refused_writes = sent
        .iter()
        .filter(|write| write.answer.as_ref().is_ok_and(Answer::is_unavailable));
    for write in refused_writes {
        let applied = match write.write {
            Write::PostMessage => contents.contains(&write.text),
            Write::CreateSession | Write::RenameSession => titles_after.contains(&write.text),
        };
        if applied {
            findings.push(format!(
                "{:?} {:?} was refused but applied",
                write.write, write.text
            ));
        }
    }

    // After: every client's writes succeed at the first try; health recovers.
    let mut after = Vec::new();
    for (client, session) in account.sessions.iter().enumerate() {
        for write in [
            Write::PostMessage,
            Write::CreateSession,
            Write::RenameSession,
        ] {
            let (_, answer) =
                send(&api, &account, session, write, &format!("after {client}")).await;
            let expected = if matches!(write, Write::RenameSession) {
                200
            } else {
                201
            };
            match answer {
                Ok(answer) if answer.status == expected => after.push(answer.millis),
                Ok(answer) => findings.push(format!(
                    "after the lock, {write:?} answered {} (expected {expected})",
                    answer.describe()
                )),
                Err(error) => findings.push(format!(
                    "after the lock, {write:?} got no answer: {error:#}"
                )),
            }
        }
    }
    let mut healthy_after = None;
    let released = Instant::now();
    while released.elapsed() < RECOVERY_TIMEOUT {
        let health = api.health().await?;
        if health.status == 200
            && health.body["services"]["database"] == "connected"
            && health.body["status"] == "healthy"
        {
            healthy_after = Some(released.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if healthy_after.is_none() {
        findings.push(format!(
            "health did not report the database connected and healthy within {} s after the lock",
            RECOVERY_TIMEOUT.as_secs()
        ));
    }
    server.stop().await?;
    findings.extend(sqlite::problems(settings.database_file()?).await?);
    let refused_in_time = sent
        .iter()
        .filter(|write| {
            write.answer.as_ref().is_ok_and(Answer::is_unavailable)
                && write.answered_at < released_at
        })
        .count();
    Ok(Row::new(
        ran,
        format!(
            "{} writes while locked, {refused_in_time} refused with 503 before the lock ended\n{} reads while locked\n{} writes after it",
            sent.len(),
            reads.len(),
            CLIENTS * 3
        ),
        format!(
            "refused writes: {}\nwrites after the lock: {}\nhealthy again after {}",
            latencies(&millis),
            latencies(&after),
            healthy_after.map_or("never".to_owned(), |at| format!(
                "{:.1} s",
                at.as_secs_f64()
            ))
        ),
        findings,
    ))
}

/// One client's writes during the lock: one after the other, cycling through the kinds,
/// until the write window closes; `refused` hears of each 503.
async fn write_while_locked(
    api: &Api,
    account: &Account,
    client: usize,
    locked_at: Instant,
    refused: &Notify,
) -> Vec<Sent> {
    let kinds = [
        Write::PostMessage,
        Write::CreateSession,
        Write::RenameSession,
    ];
    let session = &account.sessions[client];
    let mut sent = Vec::new();
    let mut number = 0;
    while locked_at.elapsed() < WRITE_WINDOW {
        let write = kinds[(client + number) % kinds.len()];
        let (text, answer) = send(
            api,
            account,
            session,
            write,
            &format!("locked {client} {number}"),
        )
        .await;
        let answered_at = Instant::now();
        if answer.as_ref().is_ok_and(Answer::is_unavailable) {
            refused.notify_one();
        }
        sent.push(Sent {
            write,
            text,
            answer: answer.map_err(|error| format!("{error:#}")),
            answered_at,
        });
        number += 1;
    }
    sent
}

/// Sends one write carrying `text`; answers the text as sent and the answer.
async fn send(
    api: &Api,
    account: &Account,
    session: &str,
    write: Write,
    text: &str,
) -> (String, anyhow::Result<Answer>) {
    let access = Some(account.access.as_str());
    let (method, path, body): (Method, String, Value) = match write {
        Write::PostMessage => (
            Method::POST,
            format!("/api/chat/sessions/{session}/messages/"),
            json!({ "content": format!("message {text}") }),
        ),
        Write::CreateSession => (
            Method::POST,
            "/api/chat/sessions/".to_owned(),
            json!({ "title": format!("session {text}") }),
        ),
        Write::RenameSession => (
            Method::PATCH,
            format!("/api/chat/sessions/{session}/"),
            json!({ "title": format!("renamed {text}") }),
        ),
    };
    let carried = body
        .get("content")
        .or_else(|| body.get("title"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let answer = api.send(method, &path, access, Some(&body)).await;
    (carried, answer)
}

/// Every session title of `account` (the first page holds them all here).
async fn titles(api: &Api, account: &Account) -> anyhow::Result<Vec<String>> {
    let list = api
        .send(
            Method::GET,
            "/api/chat/sessions/",
            Some(&account.access),
            None,
        )
        .await?;
    if list.status != 200 {
        bail!("listing the sessions answered {}", list.describe());
    }
    Ok(list.body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|session| session["title"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// The `sqlite3` shell holding the database's write lock.
struct Lock {
    child: Child,
}

impl Lock {
    /// Starts `sqlite3 DATABASE`, has it take the write lock, and returns once it says it
    /// holds it.
    async fn take(shell: &Path, database: &Path) -> anyhow::Result<Lock> {
        let mut child = Command::new(shell)
            .arg(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting sqlite3")?;
        let mut stdin = child.stdin.take().context("sqlite3's standard input")?;
        // Waits for a write of the server in progress, then holds the lock.
        stdin
            .write_all(b".timeout 20000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n")
            .await
            .context("writing to sqlite3")?;
        stdin.flush().await?;
        let stdout = child.stdout.take().context("sqlite3's standard output")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("sqlite3 did not take the lock within 30 s")??;
        if line.trim() != "locked" {
            bail!("sqlite3 answered {line:?} instead of taking the lock");
        }
        // Kept open: the shell holds the lock until its standard input closes.
        child.stdin = Some(stdin);
        Ok(Lock { child })
    }

    /// Ends the transaction by closing the shell's input, and waits until it has exited
    /// (the lock is then free).
    async fn release(&mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("sqlite3 did not exit within 30 s of its input closing")??;
        if !status.success() {
            bail!("sqlite3 exited with {status}");
        }
        Ok(())
    }
}
