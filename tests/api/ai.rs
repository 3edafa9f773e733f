//! Contract sections 3.1, 4, 6 and 7 with real AI responders: the `http` and `openai`
//! backends against fake services on 127.0.0.1 (`fake_ai`) that answer as the real ones
//! would: plain JSON, SSE streams in chunks, slow answers, errors, a stream cut off, a
//! refused port.

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::Duration;

use narutalk_core::config::{AiBackend, Config, DEFAULT_AI_SYSTEM_PROMPT, Secret};
use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_ai::{
    Answer, FakeService, Gate, OPENAI_DONE, Received, Step, openai_delta, openai_finish,
    openai_stream, refused_url,
};
use crate::helpers::{
    Account, FRAME_WAIT, TestApp, assert_silent, frame_of, next_frames, next_json, send_json,
    spawn_app_with, stored,
};

/// The content of the system message stored when the AI fails.
const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";

/// The model the `openai` backend is configured with in these tests (the fake reports
/// `fake-model` in its chunks).
const MODEL: &str = "test-model";

/// The usage the fake's last chunk reports.
fn fake_usage() -> Value {
    json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A server whose `openai` backend is the fake `service` (base URL `/v1`), with
/// `configure` applied last.
async fn openai_app(service: &FakeService, configure: impl FnOnce(&mut Config)) -> TestApp {
    openai_app_at(&service.url("/v1"), configure).await
}

/// A server whose `openai` backend has the base URL `url`.
async fn openai_app_at(url: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(
        move |c| {
            c.core.ai_backend = AiBackend::Openai;
            c.core.ai_url = url;
            c.core.ai_model = MODEL.to_owned();
            configure(&mut c.core);
        },
        ServeOptions::default(),
    )
    .await
}

/// A server whose `http` backend is the service at `url`.
async fn http_app_at(url: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(
        move |c| {
            c.core.ai_backend = AiBackend::Http;
            c.core.ai_url = url;
            configure(&mut c.core);
        },
        ServeOptions::default(),
    )
    .await
}

/// A fake that answers each request by its last message's content (the new user message,
/// for both backends).
fn fake_by_message(answers: Vec<(&'static str, Answer)>) -> FakeService {
    FakeService::start(move |request| {
        let message = last_message(request);
        answers
            .iter()
            .find(|(content, _)| *content == message)
            .map(|(_, answer)| answer.clone())
            .unwrap_or_else(|| panic!("the fake has no answer for {message:?}"))
    })
}

/// The new user message in a request of either backend.
fn last_message(request: &Received) -> String {
    let body = request.json();
    let message = match body.get("messages") {
        Some(messages) => messages.as_array().unwrap().last().unwrap()["content"].clone(),
        None => body["message"].clone(),
    };
    message.as_str().unwrap().to_owned()
}

/// Waits (off the async threads) until the fake has received `n` requests.
async fn requests_received(service: &FakeService, n: usize) -> Vec<Received> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || service.wait_for_requests(n))
        .await
        .unwrap()
}

/// Posts `content` through REST and answers the 201 body (the message with its `reply`).
async fn post(app: &TestApp, account: &Account, session: &str, content: &str) -> Value {
    app.say(account, session, content).await
}

/// The `openai` request body the server sends for `messages` with the default settings.
fn default_openai_body(messages: Value) -> Value {
    json!({
        "model": MODEL,
        "messages": messages,
        "stream": true,
        "temperature": 0.2,
        "max_tokens": 1024,
    })
}

/// The default system prompt for `category`.
fn default_system_prompt(category: &str) -> String {
    DEFAULT_AI_SYSTEM_PROMPT.replace("{category}", category)
}

/// Posts one message to a server whose AI fails, and asserts the contract's answer: the
/// user's message is stored and kept, and its reply is the system error message with
/// exactly `reason`.
async fn assert_turn_fails_with(app: &TestApp, reason: &str) {
    let kim = app.account("kim").await;
    let session = app.session(&kim, "failing").await;

    let posted = post(app, &kim, &session, "Am I okay?").await;

    let reply = &posted["reply"];
    assert_eq!(reply["sender"], "system");
    assert_eq!(reply["message_type"], "error");
    assert_eq!(reply["content"], AI_UNAVAILABLE);
    assert_eq!(reply["metadata"], json!({"reason": reason}));
    let messages = stored(app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["id"], posted["id"]);
    assert_eq!(messages[0]["sender"], "user");
    assert_eq!(messages[0]["content"], "Am I okay?");
    assert_eq!(&messages[1], reply);
}

/// How often the server probes the AI service.
const PROBE_PERIOD: Duration = Duration::from_secs(10);

/// How long a probe that is due may take to show in health before a test fails: a busy
/// machine may be slow to run it, and a connect to a closed loopback port fails at once.
const PROBE_WAIT: Duration = Duration::from_secs(20);

/// Polls health until its `ai_service` is `expected`; fails after `within`.
async fn assert_ai_service_becomes(app: &TestApp, expected: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let health: Value = app.get("/api/health/").await.json().await.unwrap();
        if health["services"]["ai_service"] == expected {
            assert_eq!(health["status"], "healthy");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ai_service is still {} instead of {expected}",
            health["services"]["ai_service"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// openai: streaming
// ---------------------------------------------------------------------------------------

/// An `openai` reply streams to every socket of the session as `ai_delta` frames under
/// the id it is then stored with, and its `chat_message` (the deltas' sum, with the
/// model's metadata) follows them. The request carries the model, the default system
/// prompt with the session's category, the history as user/assistant turns, the message,
/// `stream`, the temperature and the token limit, and no `Authorization` without a key.
#[tokio::test]
async fn an_openai_reply_streams_to_every_socket_then_arrives_as_the_stored_message() {
    let service = fake_by_message(vec![
        (
            "I have a headache.",
            openai_stream(&["Rest and drink water."]),
        ),
        (
            "Since this morning.",
            openai_stream(&["Then ", "see a doctor ", "if it lasts."]),
        ),
    ]);
    let app = openai_app(&service, |_| {}).await;
    let kim = app.account("kim").await;
    let session = app.session_in(&kim, "Headache", "medical").await;
    post(&app, &kim, &session, "I have a headache.").await;
    let mut first = app.socket(&kim, &session).await;
    let mut second = app.socket(&kim, &session).await;

    send_json(&mut first, &json!({"message": "Since this morning."})).await;
    let frames = next_frames(&mut first, 5).await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 4);
    let reply = &messages[3];
    assert_eq!(reply["sender"], "ai");
    assert_eq!(reply["content"], "Then see a doctor if it lasts.");
    assert_eq!(
        reply["metadata"],
        json!({"responder": "openai", "model": "fake-model", "finish_reason": "stop", "usage": fake_usage()})
    );
    let delta = |text: &str| json!({"type": "ai_delta", "message_id": reply["id"], "delta": text});
    assert_eq!(
        frames,
        [
            frame_of(&messages[2]),
            delta("Then "),
            delta("see a doctor "),
            delta("if it lasts."),
            frame_of(reply),
        ]
    );
    assert_eq!(next_frames(&mut second, 5).await, frames);
    assert_silent(&mut first, Duration::from_millis(200)).await;

    let received = service.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].method, "POST");
    assert_eq!(received[1].path, "/v1/chat/completions");
    assert_eq!(received[1].header("authorization"), None);
    assert_eq!(received[1].header("accept"), Some("text/event-stream"));
    assert_eq!(
        received[1].json(),
        default_openai_body(json!([
            {"role": "system", "content": default_system_prompt("medical")},
            {"role": "user", "content": "I have a headache."},
            {"role": "assistant", "content": "Rest and drink water."},
            {"role": "user", "content": "Since this morning."},
        ]))
    );
}

/// Every `openai` setting reaches the request: the key as a bearer token, the system
/// prompt with its category, the history limit, the temperature and the token limit; the
/// key is stored nowhere.
#[tokio::test]
async fn every_openai_setting_shapes_the_request() {
    let service = fake_by_message(vec![
        ("one", openai_stream(&["1"])),
        ("two", openai_stream(&["2"])),
    ]);
    let app = openai_app(&service, |c| {
        c.ai_url.push('/');
        c.ai_api_key = Some(Secret::new("sk-narutalk-test"));
        c.ai_system_prompt = "Answer {category} questions briefly.".to_owned();
        c.ai_history_messages = 1;
        c.ai_temperature = 1.5;
        c.ai_max_tokens = 64;
    })
    .await;
    let kim = app.account("kim").await;
    let session = app.session_in(&kim, "Triage", "emergency").await;

    post(&app, &kim, &session, "one").await;
    let posted = post(&app, &kim, &session, "two").await;

    assert_eq!(posted["reply"]["content"], "2");
    let received = service.requests();
    assert_eq!(received[1].path, "/v1/chat/completions");
    assert_eq!(
        received[1].header("authorization"),
        Some("Bearer sk-narutalk-test")
    );
    assert_eq!(
        received[1].json(),
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Answer emergency questions briefly."},
                {"role": "assistant", "content": "1"},
                {"role": "user", "content": "two"},
            ],
            "stream": true,
            "temperature": 1.5,
            "max_tokens": 64,
        })
    );
    let everything = serde_json::to_string(&stored(&app, &kim, &session).await).unwrap();
    assert!(!everything.contains("sk-narutalk"));
}

// ---------------------------------------------------------------------------------------
// http
// ---------------------------------------------------------------------------------------

/// The `http` backend posts the original design's body (session, category, message,
/// history with senders) and stores the service's reply with its metadata and
/// `"responder": "http"`; the REST answer carries the same reply.
#[tokio::test]
async fn an_http_service_reply_is_stored_with_its_metadata() {
    let service = fake_by_message(vec![
        (
            "I feel dizzy.",
            Answer::json(200, &json!({"reply": "Sit down for a moment."})),
        ),
        (
            "It keeps coming back.",
            Answer::json(
                200,
                &json!({"reply": "Book a check-up.", "metadata": {"source": "triage-v2", "confidence": 0.8}}),
            ),
        ),
    ]);
    let app = http_app_at(&service.url("/api/answer/"), |_| {}).await;
    let kim = app.account("kim").await;
    let session = app.session_in(&kim, "Dizzy", "consultation").await;

    post(&app, &kim, &session, "I feel dizzy.").await;
    let posted = post(&app, &kim, &session, "It keeps coming back.").await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1]["metadata"], json!({"responder": "http"}));
    let reply = &messages[3];
    assert_eq!(&posted["reply"], reply);
    assert_eq!(reply["sender"], "ai");
    assert_eq!(reply["message_type"], "text");
    assert_eq!(reply["content"], "Book a check-up.");
    assert_eq!(
        reply["metadata"],
        json!({"source": "triage-v2", "confidence": 0.8, "responder": "http"})
    );
    let received = service.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].method, "POST");
    assert_eq!(received[1].path, "/api/answer/");
    assert_eq!(received[1].header("content-type"), Some("application/json"));
    assert_eq!(
        received[1].json(),
        json!({
            "session_id": session,
            "category": "consultation",
            "message": "It keeps coming back.",
            "history": [
                {"sender": "user", "content": "I feel dizzy."},
                {"sender": "ai", "content": "Sit down for a moment."},
            ],
        })
    );
}

// ---------------------------------------------------------------------------------------
// Failures: each ends in the stored system error message, the user's message kept
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_http_error_status_is_stored_as_its_reason() {
    let service = FakeService::start(|_| {
        Answer::json(
            503,
            &json!({"detail": "model loading, internal trace id 42"}),
        )
    });
    let app = http_app_at(&service.url("/"), |_| {}).await;
    assert_turn_fails_with(&app, "HTTP 503 from the AI service").await;
}

#[tokio::test]
async fn an_openai_error_status_is_stored_as_its_reason() {
    let service = FakeService::start(|_| {
        Answer::json(500, &json!({"error": {"message": "CUDA out of memory"}}))
    });
    let app = openai_app(&service, |_| {}).await;
    assert_turn_fails_with(&app, "HTTP 500 from the AI service").await;
}

#[tokio::test]
async fn malformed_json_from_the_http_service_is_a_malformed_reply() {
    let service =
        FakeService::start(|_| Answer::body(200, "application/json", "{\"reply\": \"unfinished"));
    let app = http_app_at(&service.url("/"), |_| {}).await;
    assert_turn_fails_with(&app, "malformed reply from the AI service").await;
}

#[tokio::test]
async fn a_malformed_chunk_in_an_openai_stream_is_a_malformed_reply() {
    let service = FakeService::start(|_| {
        Answer::sse(&[&openai_delta("Fine"), "data: {not json}\n\n", OPENAI_DONE])
    });
    let app = openai_app(&service, |_| {}).await;
    assert_turn_fails_with(&app, "malformed reply from the AI service").await;
}

#[tokio::test]
async fn an_openai_stream_cut_off_in_the_middle_is_stored_as_cut_off() {
    let service = FakeService::start(|_| {
        Answer::stream()
            .chunk(&openai_delta("You are "))
            .chunk(&openai_delta("prob"))
            .cut()
    });
    let app = openai_app(&service, |_| {}).await;
    assert_turn_fails_with(&app, "the AI stream was cut off").await;
}

#[tokio::test]
async fn a_refused_connection_is_stored_as_unreachable() {
    for backend in [AiBackend::Http, AiBackend::Openai] {
        let app = spawn_app_with(
            |c| {
                c.core.ai_backend = backend;
                c.core.ai_url = refused_url("/v1");
                c.core.ai_model = MODEL.to_owned();
            },
            ServeOptions::default(),
        )
        .await;
        assert_turn_fails_with(&app, "AI service unreachable").await;
    }
}

/// With `NARUTALK_AI_TIMEOUT_SECONDS=1` and a service that has not answered when it
/// expires (it waits until the test is over), the turn ends `timed out`.
#[tokio::test]
async fn a_service_slower_than_the_timeout_is_stored_as_timed_out() {
    let gate = Gate::new();
    let service = FakeService::start({
        let gate = gate.clone();
        move |_| Answer::steps(vec![Step::Wait(gate.clone())]).then_answer(openai_stream(&["late"]))
    });
    let app = openai_app(&service, |c| c.ai_timeout_seconds = 1).await;

    assert_turn_fails_with(&app, "timed out").await;
    gate.open();
}

/// On sockets, a stream cut off after some text ends the turn with the `chat_message` of
/// the system error message, stored under the id the deltas announced.
#[tokio::test]
async fn a_cut_off_stream_ends_the_turn_on_sockets_with_the_error_message() {
    let service = FakeService::start(|_| {
        Answer::stream()
            .chunk(&openai_delta("You are "))
            .chunk(&openai_delta("prob"))
            .cut()
    });
    let app = openai_app(&service, |_| {}).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "cut").await;
    let mut socket = app.socket(&kim, &session).await;

    send_json(&mut socket, &json!({"message": "Am I okay?"})).await;
    let frames = next_frames(&mut socket, 4).await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["sender"], "system");
    assert_eq!(
        messages[1]["metadata"],
        json!({"reason": "the AI stream was cut off"})
    );
    let id = &messages[1]["id"];
    assert_eq!(
        frames,
        [
            frame_of(&messages[0]),
            json!({"type": "ai_delta", "message_id": id, "delta": "You are "}),
            json!({"type": "ai_delta", "message_id": id, "delta": "prob"}),
            frame_of(&messages[1]),
        ]
    );
}

/// A failed turn is logged once, as a warning naming the session, the responder, the
/// reason and its detail; never the message or the key.
#[tokio::test]
async fn a_failed_turn_is_logged_once_with_its_session_responder_and_reason() {
    let logs = capture_logs();
    let app = openai_app_at(&refused_url("/v1"), |c| {
        c.ai_api_key = Some(Secret::new("sk-never-logged"));
    })
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "logged").await;

    post(&app, &kim, &session, "my private symptom").await;

    // Other tests log at the same time: this one's lines are those naming its session.
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&session))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    let warning = warnings[0];
    assert!(warning.contains("narutalk::ai"), "{warning}");
    assert!(warning.contains("the AI turn failed"), "{warning}");
    assert!(warning.contains(&format!("session={session}")), "{warning}");
    assert!(warning.contains("responder=\"openai\""), "{warning}");
    assert!(
        warning.contains("reason=\"AI service unreachable\""),
        "{warning}"
    );
    assert!(warning.contains("detail=\"network: "), "{warning}");
    assert!(!text.contains("my private symptom"), "{text}");
    assert!(!text.contains("sk-never-logged"), "{text}");
}

/// Every log line of this test binary, from the first capture on.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Starts capturing the log lines of this test binary (every thread, every test: a test
/// picks its own lines out by its session's id).
///
/// The subscriber is the process's global one, installed once. A thread-local
/// `set_default` would not do: the server logs from its blocking threads, and tracing
/// caches each log statement's interest from whichever thread reaches it first.
fn capture_logs() -> CapturedLogs {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    // Statements reached before the subscriber was installed cached "disabled".
    tracing::callsite::rebuild_interest_cache();
    CapturedLogs
}

/// The captured log lines.
struct CapturedLogs;

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
    }
}

/// Appends log lines to [`LOGS`] (the formatter writes each line in one call).
struct LogSink;

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Turns, sockets and sessions
// ---------------------------------------------------------------------------------------

/// The socket that asked closes while the reply streams: the reply is still completed and
/// stored, and a socket that reconnects with `after=<the user message>` receives it.
#[tokio::test]
async fn a_reply_in_progress_survives_its_socket_and_a_resume_gets_it() {
    let gate = Gate::new();
    let service = FakeService::start({
        let gate = gate.clone();
        move |_| {
            Answer::stream()
                .chunk(&openai_delta("Still "))
                .wait(&gate)
                .chunk(&openai_delta("here."))
                .chunk(&openai_finish("stop"))
                .chunk(OPENAI_DONE)
                .end()
        }
    });
    let app = openai_app(&service, |_| {}).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "leaving").await;
    let mut socket = app.socket(&kim, &session).await;
    // Another client of the session, which stays: its frames say when the reply is stored.
    let mut observer = app.socket(&kim, &session).await;

    send_json(&mut socket, &json!({"message": "Are you there?"})).await;
    let user = next_json(&mut socket).await;
    let first_delta = next_json(&mut socket).await;
    assert_eq!(first_delta["delta"], "Still ");
    socket.close(None).await.unwrap();
    drop(socket);
    gate.open();
    let observed = next_frames(&mut observer, 4).await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(frame_of(&messages[0]), user);
    assert_eq!(messages[1]["content"], "Still here.");
    assert_eq!(messages[1]["id"], first_delta["message_id"]);
    assert_eq!(observed[3], frame_of(&messages[1]));
    let after = messages[0]["id"].as_str().unwrap();
    let mut resumed = app
        .socket_with(&format!("token={}&after={after}", kim.access), &session)
        .await;
    assert_eq!(next_json(&mut resumed).await, frame_of(&messages[1]));
    assert_silent(&mut resumed, Duration::from_millis(200)).await;
}

/// A model that is still thinking about one session's message does not hold up another
/// session: its reply is produced and stored while the first is pending (the AI call
/// runs on a blocking thread; this test's runtime has a single async thread, which a
/// blocked call would stall).
#[tokio::test]
async fn a_slow_model_in_one_session_does_not_delay_another_session() {
    let gate = Gate::new();
    let service = fake_by_message(vec![
        (
            "slow question",
            Answer::steps(vec![Step::Wait(gate.clone())])
                .then_answer(openai_stream(&["Slow answer."])),
        ),
        ("fast question", openai_stream(&["Fast answer."])),
    ]);
    let app = openai_app(&service, |_| {}).await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let slow_session = app.session(&kim, "slow").await;
    let fast_session = app.session(&lee, "fast").await;

    let slow = tokio::spawn(
        app.authed(
            Method::POST,
            &format!("/api/chat/sessions/{slow_session}/messages/"),
            &kim,
        )
        .json(&json!({"content": "slow question"}))
        .send(),
    );
    requests_received(&service, 1).await;
    let fast = tokio::time::timeout(FRAME_WAIT, post(&app, &lee, &fast_session, "fast question"))
        .await
        .expect("the fast session waited for the slow one");

    assert_eq!(fast["reply"]["content"], "Fast answer.");
    assert!(!slow.is_finished());
    let pending = stored(&app, &kim, &slow_session).await;
    assert_eq!(pending.len(), 1, "the slow reply is still being produced");
    gate.open();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), StatusCode::CREATED);
    let slow: Value = slow.json().await.unwrap();
    assert_eq!(slow["reply"]["content"], "Slow answer.");
}

/// A message sent while the reply to the previous one streams is stored and broadcast at
/// once; its own AI call starts only when that reply is stored, and the replies come in
/// the order of the messages.
#[tokio::test]
async fn a_message_sent_while_a_reply_streams_is_stored_at_once_and_answered_next() {
    let gate = Gate::new();
    let service = fake_by_message(vec![
        (
            "first",
            Answer::stream()
                .chunk(&openai_delta("One "))
                .wait(&gate)
                .chunk(&openai_delta("done."))
                .chunk(&openai_finish("stop"))
                .chunk(OPENAI_DONE)
                .end(),
        ),
        ("second", openai_stream(&["Two."])),
    ]);
    let app = openai_app(&service, |_| {}).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "busy").await;
    let mut socket = app.socket(&kim, &session).await;

    send_json(&mut socket, &json!({"message": "first"})).await;
    let mut frames = next_frames(&mut socket, 2).await;
    assert_eq!(frames[1]["delta"], "One ");
    send_json(&mut socket, &json!({"message": "second"})).await;
    let second = next_json(&mut socket).await;
    assert_eq!(
        (&second["message"], &second["sender"]),
        (&json!("second"), &json!("user"))
    );
    assert_eq!(
        service.requests().len(),
        1,
        "the second AI call waits its turn"
    );
    frames.push(second);
    gate.open();
    frames.extend(next_frames(&mut socket, 4).await);

    let messages = stored(&app, &kim, &session).await;
    let contents: Vec<&str> = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["first", "second", "One done.", "Two."]);
    let delta = |reply: &Value, text: &str| json!({"type": "ai_delta", "message_id": reply["id"], "delta": text});
    assert_eq!(
        frames,
        [
            frame_of(&messages[0]),
            delta(&messages[2], "One "),
            frame_of(&messages[1]),
            delta(&messages[2], "done."),
            frame_of(&messages[2]),
            delta(&messages[3], "Two."),
            frame_of(&messages[3]),
        ]
    );
    // The second message's history is what was stored before it: the first reply came
    // later.
    assert_eq!(
        service.requests()[1].json(),
        default_openai_body(json!([
            {"role": "system", "content": default_system_prompt("general")},
            {"role": "user", "content": "first"},
            {"role": "user", "content": "second"},
        ]))
    );
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

/// The AI service counts as unavailable until the probe, which runs at start, has
/// connected to it; then it is available.
#[tokio::test]
async fn health_reports_the_ai_service_available_once_the_probe_connects() {
    let service = FakeService::start(|_| openai_stream(&["unused"]));
    let app = openai_app(&service, |_| {}).await;

    assert_ai_service_becomes(&app, "available", PROBE_WAIT).await;
    // The probe's connect returns before the fake's accept thread has counted it.
    let counting = service.clone();
    let connections = tokio::task::spawn_blocking(move || counting.wait_for_connections(1))
        .await
        .unwrap();
    assert!(connections >= 1, "the probe never connected");
    assert!(service.requests().is_empty(), "a probe sends no request");
}

/// When the service stops (its port then refuses connections), the next probe, 10 s
/// later at most, makes it unavailable.
#[tokio::test]
async fn health_reports_the_ai_service_unavailable_once_it_refuses_connections() {
    let service = FakeService::start(|_| Answer::json(200, &json!({"reply": "unused"})));
    let app = http_app_at(&service.url("/answer"), |_| {}).await;
    assert_ai_service_becomes(&app, "available", PROBE_WAIT).await;

    // Returns once the fake's listener is closed.
    drop(service);

    assert_ai_service_becomes(&app, "unavailable", PROBE_PERIOD + PROBE_WAIT).await;
}
