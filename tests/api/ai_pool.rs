//! Contract section 9, "AI turns never starve the database": responders run on a pool of
//! `NARUTALK_AI_CONCURRENCY` turns at once, up to 1,024 more wait, and beyond that the
//! turn's stored answer is the system error message with reason `assistant busy`; waiting
//! for a reply (a REST post, an idempotent repeat) holds no thread that database work
//! needs.
//!
//! The AI is the `http` backend against the fake service (`fake_ai`), which holds every
//! answer until the test opens its gate, so that the turns pile up for as long as the test
//! needs and nothing depends on timing. The settings are read through the server's
//! settings loader (`Settings::load_from`, the core's keys and the server's) from
//! `NARUTALK_*` variables, as a deployment sets them.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use narutalk_server::ServeOptions;
use narutalk_server::settings::{Overrides, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::fake_ai::{Answer, FakeService, Gate, Received, Step};
use crate::helpers::{Account, TestApp, spawn_app_with, stored};

/// The content of the system message stored when the AI fails.
const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";

/// Turns that may wait for the pool beyond those running (contract section 9).
const QUEUE: usize = 1_024;

/// Threads of tokio's blocking pool: tokio's default, which `narutalk-server`'s
/// `#[tokio::main]` keeps (it sets no `max_blocking_threads`); the runtime of the test that
/// needs it is built with the same number.
const BLOCKING_THREADS: usize = 512;

/// How long anything that must happen may take (a generous upper bound, not a speed
/// requirement): a post's answer, the fake's requests, a read while turns wait.
const DEADLINE: Duration = Duration::from_secs(120);

/// How long a read may take while turns wait (a generous upper bound: a read that needs a
/// thread held by a waiting turn never answers while it waits).
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The AI's timeout in these tests: far longer than a test, so that no held turn ends on
/// its own.
const AI_TIMEOUT_SECONDS: &str = "600";

// ---------------------------------------------------------------------------------------
// The pool's bound and `assistant busy`
// ---------------------------------------------------------------------------------------

/// With `NARUTALK_AI_CONCURRENCY=2` and a fake AI that holds every answer, 2 + 1,024 + 1
/// turns are posted at once on as many sessions: exactly 2 requests reach the AI while
/// the others wait, one turn (the one that finds the queue full) is answered at once with
/// the system error message `assistant busy`, and once the AI answers, every other turn
/// gets its own reply, one AI call each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_pool_runs_its_concurrency_queues_1024_more_and_answers_the_next_turn_assistant_busy()
 {
    const CONCURRENCY: usize = 2;
    const TURNS: usize = CONCURRENCY + QUEUE + 1;
    // Arrange: each post is a connection at both ends, all in this process.
    raise_open_files(2 * TURNS + 512);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let service = holding_fake(&gate);
    let app = app_with_ai(&service, &[("NARUTALK_AI_CONCURRENCY", "2")]).await;
    let kim = app.account("kim").await;
    let sessions = create_sessions(&app, &kim, TURNS).await;

    // Act: every turn at once, each on its own session.
    let mut posts: FuturesUnordered<JoinHandle<Posted>> = sessions
        .iter()
        .enumerate()
        .map(|(number, session)| {
            tokio::spawn(post(&app, &kim, session, &format!("turn {number}"), None))
        })
        .collect();
    let busy = first_answer_within_bound(&service, CONCURRENCY, &mut posts).await;

    // Assert: the first answer is the turn that found the queue full, while exactly
    // CONCURRENCY requests are held at the AI.
    assert_eq!(busy.status, StatusCode::CREATED, "{}", busy.body);
    assert_busy_reply(&busy.body["reply"]);
    wait_for_ai_requests(&service, CONCURRENCY).await;
    assert_eq!(
        service.requests().len(),
        CONCURRENCY,
        "while {TURNS} turns waited, more AI requests than NARUTALK_AI_CONCURRENCY arrived"
    );
    assert_eq!(
        stored(&app, &kim, &session_of(&sessions, &busy.content)).await[1],
        busy.body["reply"],
        "the busy answer is stored as the turn's reply"
    );

    // Act: the AI answers.
    gate.open();
    let mut answered = Vec::new();
    while let Some(joined) = tokio::time::timeout(DEADLINE, posts.next())
        .await
        .expect("a post was not answered after the AI answered")
    {
        answered.push(joined.unwrap());
    }

    // Assert: every other turn got its own reply; the AI was asked once for each.
    assert_eq!(answered.len(), TURNS - 1);
    for posted in &answered {
        assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
        let reply = &posted.body["reply"];
        assert_eq!(
            (&reply["sender"], &reply["content"]),
            (&json!("ai"), &json!(reply_to(&posted.content))),
            "the reply to {:?}",
            posted.content
        );
    }
    let asked: Vec<String> = service.requests().iter().map(message_of).collect();
    let asked_once: BTreeSet<&str> = asked.iter().map(String::as_str).collect();
    let answered_contents: BTreeSet<&str> = answered
        .iter()
        .map(|posted| posted.content.as_str())
        .collect();
    assert_eq!(
        asked.len(),
        TURNS - 1,
        "one AI call per turn that was not busy"
    );
    assert_eq!(asked_once, answered_contents);
}

// ---------------------------------------------------------------------------------------
// Waiting without a blocking thread
// ---------------------------------------------------------------------------------------

/// While a turn is held at the AI, more repeats of its post (same `Idempotency-Key`) than
/// tokio's blocking pool has threads wait for its reply; health and an authenticated read
/// still answer all along. Once the AI answers, every repeat answers the first result (the
/// same message and reply ids), and the AI was asked once.
#[test]
fn idempotent_repeats_of_a_held_turn_hold_no_blocking_thread_and_all_answer_its_first_result() {
    // The runtime of `narutalk-server`'s `#[tokio::main]`: multi-threaded, with tokio's
    // blocking pool (the server and this test's client share it here).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(repeats_hold_no_blocking_thread());
}

async fn repeats_hold_no_blocking_thread() {
    const REPEATS: usize = BLOCKING_THREADS + 64;
    /// Rounds of reads while the repeats wait, and the pause between two.
    const READ_ROUNDS: usize = 10;
    const READ_PAUSE: Duration = Duration::from_millis(200);
    const KEY: &str = "held-turn-1";
    // Arrange
    raise_open_files(2 * REPEATS + 512);
    let gate = Gate::new();
    let _open = OpenOnDrop(gate.clone());
    let service = holding_fake(&gate);
    let app = app_with_ai(&service, &[]).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "held").await;
    let first = tokio::spawn(post(&app, &kim, &session, "Am I okay?", Some(KEY)));
    wait_for_ai_requests(&service, 1).await;

    // Act: the repeats, all at once, while the reply is held.
    let repeats: Vec<JoinHandle<Posted>> = (0..REPEATS)
        .map(|_| tokio::spawn(post(&app, &kim, &session, "Am I okay?", Some(KEY))))
        .collect();

    // Assert: the server still answers health and an authenticated read, round after
    // round, while every repeat waits.
    for round in 0..READ_ROUNDS {
        let health = answered_in_time(
            app.request(Method::GET, "/api/health/"),
            &format!("round {round}: GET /api/health/ while {REPEATS} repeats waited"),
        )
        .await;
        assert_eq!(health, StatusCode::OK, "round {round}: health");
        let read = answered_in_time(
            app.authed(Method::GET, "/api/chat/sessions/", &kim),
            &format!("round {round}: GET /api/chat/sessions/ while {REPEATS} repeats waited"),
        )
        .await;
        assert_eq!(read, StatusCode::OK, "round {round}: the session list");
        tokio::time::sleep(READ_PAUSE).await;
    }
    assert!(
        !first.is_finished() && repeats.iter().all(|repeat| !repeat.is_finished()),
        "a post was answered while its reply was held at the AI"
    );

    // Act: the AI answers.
    gate.open();
    let first = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("the first post was not answered after the AI answered")
        .unwrap();

    // Assert: every repeat answers the first result; one AI call, one exchange stored.
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["reply"]["content"], reply_to("Am I okay?"));
    for repeat in repeats {
        let repeat = tokio::time::timeout(DEADLINE, repeat)
            .await
            .expect("a repeat was not answered after the AI answered")
            .unwrap();
        assert_eq!(
            (repeat.status, &repeat.body),
            (StatusCode::CREATED, &first.body)
        );
    }
    assert_eq!(service.requests().len(), 1, "one AI call for every repeat");
    assert_eq!(stored(&app, &kim, &session).await.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A server whose `http` AI is `service`, with the settings a deployment would set
/// (throttles and the per-IP connection share off, the AI's timeout longer than any test)
/// and `vars` read last, all through the settings loader.
async fn app_with_ai(service: &FakeService, vars: &[(&str, &str)]) -> TestApp {
    let url = service.url("/reply");
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    spawn_app_with(
        move |settings| {
            let secret = settings
                .core
                .secret_key
                .as_ref()
                .map(|secret| secret.expose().to_owned())
                .unwrap();
            let mut env: Vec<(String, String)> = [
                (
                    "NARUTALK_DATABASE",
                    settings.core.database.display().to_string(),
                ),
                ("NARUTALK_SECRET_KEY", secret),
                ("NARUTALK_AUTH_THROTTLE_PER_MINUTE", "0".to_owned()),
                ("NARUTALK_MESSAGE_THROTTLE_PER_MINUTE", "0".to_owned()),
                ("NARUTALK_MAX_CONNECTIONS_PER_IP", "0".to_owned()),
                ("NARUTALK_SEARCH_URL", String::new()),
                ("NARUTALK_AI_BACKEND", "http".to_owned()),
                ("NARUTALK_AI_URL", url),
                ("NARUTALK_AI_TIMEOUT_SECONDS", AI_TIMEOUT_SECONDS.to_owned()),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
            env.extend(vars);
            *settings = Settings::load_from(env, &Overrides::default()).unwrap();
        },
        ServeOptions::default(),
    )
    .await
}

/// A fake `http` AI service that holds every request until `gate` opens, then answers it
/// with [`reply_to`] its message.
fn holding_fake(gate: &Gate) -> FakeService {
    let gate = gate.clone();
    FakeService::start(move |request| {
        Answer::steps(vec![Step::Wait(gate.clone())])
            .then_json(200, &json!({ "reply": reply_to(&message_of(request)) }))
    })
}

/// The fake's reply to `message`.
fn reply_to(message: &str) -> String {
    format!("reply to: {message}")
}

/// The new user message of an `http` backend request.
fn message_of(request: &Received) -> String {
    request.json()["message"].as_str().unwrap().to_owned()
}

/// Opens a gate when dropped, so that the fake's held answers end (and with them the
/// server's turns) even when the test fails.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A post's answer.
#[derive(Debug)]
struct Posted {
    /// What was posted.
    content: String,
    status: StatusCode,
    body: Value,
}

/// A post of `content` to `session` (with an `Idempotency-Key` when given), ready to be
/// spawned.
fn post(
    app: &TestApp,
    account: &Account,
    session: &str,
    content: &str,
    key: Option<&str>,
) -> impl Future<Output = Posted> + Send + 'static {
    let mut request = app
        .authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            account,
        )
        .json(&json!({ "content": content }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let content = content.to_owned();
    async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Posted {
            content,
            status,
            body,
        }
    }
}

/// Creates `n` sessions, 16 at a time.
async fn create_sessions(app: &TestApp, account: &Account, n: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|number| async move { app.session(account, &format!("session {number}")).await })
        .buffered(16)
        .collect()
        .await
}

/// The session that `content` ("turn N") was posted to.
fn session_of(sessions: &[String], content: &str) -> String {
    let number: usize = content.trim_start_matches("turn ").parse().unwrap();
    sessions[number].clone()
}

/// The first post answered, while checking, as the posts pile up, that no more than
/// `bound` requests ever reach the held AI.
async fn first_answer_within_bound(
    service: &FakeService,
    bound: usize,
    posts: &mut FuturesUnordered<JoinHandle<Posted>>,
) -> Posted {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let at_the_ai = service.requests().len();
        assert!(
            at_the_ai <= bound,
            "{at_the_ai} AI requests arrived at once (the AI holds every answer), but NARUTALK_AI_CONCURRENCY is {bound}"
        );
        tokio::select! {
            joined = posts.next() => return joined.expect("no post").unwrap(),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no post was answered within {} s while the AI held {at_the_ai} turns (the one beyond the queue must be answered `assistant busy` at once)",
            DEADLINE.as_secs()
        );
    }
}

/// Asserts that `reply` is the stored system error message of a turn refused by a full
/// pool (contract sections 3.1 and 9).
fn assert_busy_reply(reply: &Value) {
    assert_eq!(reply["sender"], "system", "{reply}");
    assert_eq!(reply["message_type"], "error", "{reply}");
    assert_eq!(reply["content"], AI_UNAVAILABLE, "{reply}");
    assert_eq!(reply["metadata"], json!({ "reason": "assistant busy" }));
}

/// Waits until the fake has received `n` requests; fails after [`DEADLINE`].
async fn wait_for_ai_requests(service: &FakeService, n: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while service.requests().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake AI received {} of {n} requests",
            service.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `request` and answers its status; fails when no answer came within
/// [`READ_DEADLINE`] (`what` says which request, and while what).
async fn answered_in_time(request: reqwest::RequestBuilder, what: &str) -> StatusCode {
    match tokio::time::timeout(READ_DEADLINE, request.send()).await {
        Ok(response) => response.unwrap().status(),
        Err(_) => panic!(
            "{what}: no answer within {} s (the waits hold the threads database work needs)",
            READ_DEADLINE.as_secs()
        ),
    }
}

/// Raises this process's open-files limit to at least `needed`; fails when the hard limit
/// is lower.
fn raise_open_files(needed: usize) {
    let needed = u64::try_from(needed).unwrap();
    let limit = rlimit::increase_nofile_limit(needed.max(16_384)).unwrap();
    assert!(
        limit >= needed,
        "this test needs {needed} open files, the hard limit allows {limit}"
    );
}
