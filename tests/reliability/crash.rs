//! Crash rounds: writers post messages concurrently across several sessions, the server
//! is killed with SIGKILL at a random moment, and restarted on the same database. Then
//! every acknowledged message (a 201) of every round so far, and its reply, must be stored
//! exactly as answered, and the stored rows must be sound (`Database::problems`: on SQLite
//! `PRAGMA integrity_check` too). After the last restart every user message, also those
//! whose post the kills cut, must get exactly one reply.
//!
//! On PostgreSQL a killed server's turns are taken over once their leases expire
//! (`NARUTALK_AI_TIMEOUT_SECONDS` + 30 s, contract section 9): the AI timeout is 1 s
//! there (the template AI answers at once), and the wait for the last replies is that
//! much longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::api::{Account, Api, Exchange, check_stored};
use crate::report::Row;
use crate::server::{ServerProcess, Settings, start_with_user};
use crate::{Context, Rng};

/// Sessions written to.
const SESSIONS: usize = 4;

/// Concurrent writers: two a session, so that each session's turns queue.
const WRITERS: usize = 8;

/// The kill comes at a random moment within this long after the round's first 201.
const KILL_WINDOW: Duration = Duration::from_millis(1_500);

/// How long a round waits for its first 201 (an upper bound, not a speed requirement).
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long, after the last restart, every user message may take to get its reply (an
/// upper bound, not a speed requirement), on top of a lease on PostgreSQL.
const ANSWERED_TIMEOUT: Duration = Duration::from_secs(60);

/// The AI timeout on PostgreSQL, where a killed server's leases last it + 30 s.
const POSTGRES_AI_TIMEOUT_SECONDS: u64 = 1;

/// How much longer than its AI timeout a lease lasts (`turns.rs`'s margin).
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Runs the rounds.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let mut settings = Settings::new(ctx)?;
    let mut answered_timeout = ANSWERED_TIMEOUT;
    if ctx.backend.is_postgres() {
        settings = settings.set("NARUTALK_AI_TIMEOUT_SECONDS", POSTGRES_AI_TIMEOUT_SECONDS);
        answered_timeout += Duration::from_secs(POSTGRES_AI_TIMEOUT_SECONDS) + LEASE_MARGIN;
    }
    let database = settings.database().clone();
    let (mut server, account) = start_with_user(&settings, "crash", SESSIONS).await?;
    let mut rng = Rng::new(ctx.seed);
    let mut acknowledged: Vec<Exchange> = Vec::new();
    let mut findings = Vec::new();
    let mut kill_delays = Vec::new();
    let mut restarts = Vec::new();
    let mut in_flight_total = 0usize;
    let mut refused_total = 0usize;
    let mut unanswered_last = 0usize;
    let mut stored_last = 0usize;
    let mut lost_last = 0usize;
    let mut file_problems = 0usize;
    for round in 1..=ctx.rounds {
        let api = server.api()?;
        let outcome = write_until_killed(&api, &account, round, &mut rng, server).await?;
        kill_delays.push(outcome.kill_delay.as_millis());
        in_flight_total += outcome.in_flight;
        refused_total += outcome.refused;
        findings.extend(
            outcome
                .unexpected
                .iter()
                .map(|problem| format!("round {round}: {problem}")),
        );
        if outcome.acknowledged.is_empty() {
            findings.push(format!(
                "round {round}: no post was acknowledged within {} s",
                FIRST_ACK_TIMEOUT.as_secs()
            ));
        }
        acknowledged.extend(outcome.acknowledged);

        let restarted = Instant::now();
        server = ServerProcess::start(&settings)
            .await
            .with_context(|| format!("restarting after the kill of round {round}"))?;
        restarts.push(restarted.elapsed().as_secs_f64() * 1000.0);
        let stored = check_stored(&server.api()?, &account, &account.sessions, &acknowledged)
            .await
            .with_context(|| format!("reading the sessions after round {round}"))?;
        findings.extend(
            stored
                .problems
                .iter()
                .map(|problem| format!("round {round}: {problem}")),
        );
        unanswered_last = stored.unanswered;
        stored_last = stored.messages;
        lost_last = stored.problems.len();
        let problems = database.problems().await?;
        file_problems += problems.len();
        findings.extend(
            problems
                .iter()
                .map(|problem| format!("round {round}: {problem}")),
        );
    }
    // Every user message, also those of the posts the kills cut, gets its reply.
    let waited = Instant::now();
    let mut unanswered = database.unanswered().await?;
    while unanswered > 0 && waited.elapsed() < answered_timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        unanswered = database.unanswered().await?;
    }
    let answered_after = waited.elapsed().as_secs_f64();
    if unanswered > 0 {
        findings.push(format!(
            "{unanswered} user messages still without a reply {} s after the last restart",
            answered_timeout.as_secs()
        ));
    }
    server.stop().await?;
    let after_stop = database.problems().await?;
    file_problems += after_stop.len();
    findings.extend(
        after_stop
            .iter()
            .map(|problem| format!("after the final stop: {problem}")),
    );
    let restarts_sorted = {
        let mut sorted = restarts.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    };
    Ok(Row::new(
        format!(
            "{} round(s): {WRITERS} writers on {SESSIONS} sessions, kill -9 within {} ms of the first 201, restart, check",
            ctx.rounds,
            KILL_WINDOW.as_millis()
        ),
        format!(
            "{} acknowledged posts, {lost_last} missing or different after the last round\n{in_flight_total} posts cut by the kills, {refused_total} answered 503\n{stored_last} messages stored, {unanswered_last} user messages without a reply at the last restart, {unanswered} after waiting",
            acknowledged.len(),
        ),
        format!(
            "kill delays {kill_delays:?} ms\nrestart (start to listening) median {:.0} / max {:.0} ms\nevery reply stored {answered_after:.1} s after the last restart\n{} after every round and the final stop: {}",
            restarts_sorted
                .get(restarts_sorted.len() / 2)
                .copied()
                .unwrap_or_default(),
            restarts_sorted.last().copied().unwrap_or_default(),
            database.checked(),
            if file_problems == 0 { "ok" } else { "problems" }
        ),
        findings,
    ))
}

/// What one round's writers saw.
struct RoundOutcome {
    acknowledged: Vec<Exchange>,
    /// Posts answered section 1's 503 (a write not applied: the contract allows it when the
    /// database is slow, so it is counted, not failed).
    refused: usize,
    unexpected: Vec<String>,
    in_flight: usize,
    kill_delay: Duration,
}

/// Starts the writers, kills `server` with SIGKILL at a random moment after the first
/// 201, and collects what was acknowledged.
async fn write_until_killed(
    api: &Api,
    account: &Account,
    round: u32,
    rng: &mut Rng,
    server: ServerProcess,
) -> anyhow::Result<RoundOutcome> {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Notify::new());
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let api = api.clone();
        let account = account.clone();
        let session = account.sessions[writer % SESSIONS].clone();
        let acknowledged = acknowledged.clone();
        let unexpected = unexpected.clone();
        let refused = refused.clone();
        let first = first.clone();
        let mut texts = Rng::new(rng.next_u64());
        writers.push(tokio::spawn(async move {
            for number in 0.. {
                let body = message_body(round, writer, number, &mut texts);
                let Ok(answer) = api.post_message(&account, &session, &body).await else {
                    // No whole answer: the server is gone; this post's fate is unknown.
                    return true;
                };
                match Exchange::from_answer(&answer) {
                    Some(exchange) => {
                        if let Ok(mut list) = acknowledged.lock() {
                            list.push(exchange);
                        }
                        first.notify_one();
                    }
                    None if answer.is_unavailable() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        if let Ok(mut list) = unexpected.lock() {
                            list.push(format!(
                                "a post answered {} before the kill",
                                answer.describe()
                            ));
                        }
                        return false;
                    }
                }
            }
            false
        }));
    }
    let _ = tokio::time::timeout(FIRST_ACK_TIMEOUT, first.notified()).await;
    let kill_delay = Duration::from_millis(rng.below(KILL_WINDOW.as_millis() as u64));
    tokio::time::sleep(kill_delay).await;
    server.kill9().await?;
    let mut in_flight = 0;
    for writer in writers {
        if writer.await.context("a writer task")? {
            in_flight += 1;
        }
    }
    Ok(RoundOutcome {
        acknowledged: take(acknowledged),
        refused: refused.load(Ordering::Relaxed),
        unexpected: take(unexpected),
        in_flight,
        kill_delay,
    })
}

/// Empties the list behind `list`.
fn take<T>(list: Arc<Mutex<Vec<T>>>) -> Vec<T> {
    list.lock()
        .map(|mut list| std::mem::take(&mut *list))
        .unwrap_or_default()
}

/// A post of varied text: Korean, quotes, backslashes, emoji, tabs, newlines and edge
/// spaces, 1 to about 3,000 characters, with metadata on some.
fn message_body(round: u32, writer: usize, number: usize, rng: &mut Rng) -> Value {
    const PIECES: &[&str] = &[
        "두통이 있어요",
        " \"quoted\" ",
        "back\\slash",
        "🙂",
        "\t",
        "\n",
        "héllo",
        "'; DROP TABLE chat_messages;--",
        "   ",
        "x",
    ];
    let mut content = format!("r{round} w{writer} n{number} ");
    for _ in 0..rng.below(300) {
        content.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
    }
    if rng.below(4) == 0 {
        json!({
            "content": content,
            "metadata": { "round": round, "writer": writer, "note": "ü 🙂", "n": number },
        })
    } else {
        json!({ "content": content })
    }
}
