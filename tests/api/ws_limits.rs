//! Contract section 6: limits, heartbeat, revocation and shutdown of the WebSocket chat;
//! and the AI turn of section 3.1 as sockets see it (streamed deltas, failures, a reply
//! that outlives its socket).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::ai::{AiError, AiReply, AiRequest, Responder};
use narutalk_core::chat::SessionId;
use narutalk_core::config::Config;
use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::{
    Account, FRAME_WAIT, PASSWORD, TestApp, WsStream, assert_silent, close_code, frame_of,
    next_frames, next_json, send_json, spawn_app, spawn_app_with, start, stored, template,
};

/// The largest frame payload the server reads: 64 KiB.
const MAX_FRAME: usize = 64 * 1024;

/// The content of the system message stored when the AI fails.
const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";

/// How long a test waits for a revoked socket to close. The contract gives the server 5 s
/// (the revocation watch looks every 2 s); the tests print how long it took and fail only
/// on a hang, not on a busy machine.
const REVOCATION_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Polls the REST listing until the session holds `count` messages (or fails after
/// [`FRAME_WAIT`]), and answers them.
async fn stored_eventually(
    app: &TestApp,
    account: &Account,
    session: &str,
    count: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let messages = stored(app, account, session).await;
        if messages.len() >= count || tokio::time::Instant::now() >= deadline {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `socket` is open and served: `{"type": "ping"}` is answered.
async fn assert_serving(socket: &mut WsStream) {
    send_json(socket, &json!({"type": "ping"})).await;
    assert_eq!(next_json(socket).await, json!({"type": "pong"}));
}

/// Asserts that `socket` still takes messages: one sent is echoed, then answered.
async fn assert_chatting(socket: &mut WsStream, content: &str) {
    send_json(socket, &json!({ "message": content })).await;
    let frames = next_frames(socket, 2).await;
    assert_eq!(frames[0]["message"], content);
    assert_eq!(frames[0]["sender"], "user");
    assert_eq!(frames[1]["message"], template(content));
    assert_eq!(frames[1]["sender"], "ai");
}

/// Reads until the server's close frame and answers the text frames before it (as JSON)
/// and the close's code and reason. Fails if the socket is not closed within `within`,
/// or ends without a close frame.
async fn frames_until_close(socket: &mut WsStream, within: Duration) -> (Vec<Value>, u16, String) {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the socket was not closed in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                frames.push(serde_json::from_str(text.as_str()).unwrap());
            }
            Some(Ok(Message::Close(Some(close)))) => {
                return (
                    frames,
                    u16::from(close.code),
                    close.reason.as_str().to_owned(),
                );
            }
            Some(Ok(Message::Close(None))) => return (frames, 1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("the socket failed before its close frame: {error}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

/// A second handle on the server's database, as the command-line tool in another process
/// would open it: the server hears of its changes only through the database.
async fn another_process(app: &TestApp) -> Arc<Narutalk> {
    let config = Config {
        database: app.database.clone(),
        ..Config::for_tests(app.dir.path())
    };
    let core = tokio::task::spawn_blocking(move || Narutalk::open_for_administration(&config))
        .await
        .unwrap()
        .unwrap();
    Arc::new(core)
}

/// Runs `operation` on a blocking thread with `core`.
async fn on_core<T: Send + 'static>(
    core: &Arc<Narutalk>,
    operation: impl FnOnce(&Narutalk) -> T + Send + 'static,
) -> T {
    let core = core.clone();
    tokio::task::spawn_blocking(move || operation(&core))
        .await
        .unwrap()
}

/// Opens a socket whose client side has receive and send buffers of a few KiB, so that a
/// client that stops reading pushes back on the server soon, and a server that stops
/// reading pushes back on the client soon.
async fn small_buffer_socket(app: &TestApp, account: &Account, session: &str) -> WsStream {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    tcp.set_send_buffer_size(4096).unwrap();
    let stream = tcp.connect(app.addr).await.unwrap();
    let url = app.ws_url(session, &format!("token={}", account.access));
    let (socket, response) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

/// Streams `Hel` and `lo`, then answers `Hello`.
struct StreamingResponder;

impl Responder for StreamingResponder {
    fn name(&self) -> &str {
        "streaming"
    }

    fn respond(&self, _: &AiRequest, on_delta: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        on_delta("Hel");
        on_delta("lo");
        Ok(AiReply {
            content: "Hello".into(),
            metadata: Default::default(),
        })
    }
}

/// Fails every request with the reason `boom`.
struct FailingResponder;

impl Responder for FailingResponder {
    fn name(&self) -> &str {
        "failing"
    }

    fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        Err(AiError::new("boom"))
    }
}

/// Answers `AI: {message}` after a pause.
struct SlowResponder(Duration);

impl Responder for SlowResponder {
    fn name(&self) -> &str {
        "slow"
    }

    fn respond(&self, request: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        std::thread::sleep(self.0);
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: Default::default(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Frame size
// ---------------------------------------------------------------------------------------

/// A text frame of 64 KiB + 1 byte closes the socket with a real close frame, code 1009,
/// even though its message would otherwise be valid (the content limit is raised above
/// it); nothing of it is stored.
#[tokio::test]
async fn a_text_frame_over_64_kib_closes_the_socket_with_1009_and_stores_nothing() {
    let app = spawn_app_with(
        |c| c.core.content_max_chars = 100_000,
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "big").await;
    let mut socket = app.socket(&kim, &session).await;
    let text = format!("{{\"message\": \"{}\"}}", "x".repeat(MAX_FRAME + 1 - 15));
    assert_eq!(text.len(), MAX_FRAME + 1);

    socket.send(Message::Text(text.into())).await.unwrap();

    let (code, _) = close_code(&mut socket, FRAME_WAIT).await;
    assert_eq!(code, 1009);
    assert!(stored(&app, &kim, &session).await.is_empty());
}

/// A binary frame of 64 KiB + 1 byte closes the socket with code 1009 too.
#[tokio::test]
async fn a_binary_frame_over_64_kib_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "big").await;
    let mut socket = app.socket(&kim, &session).await;

    socket
        .send(Message::Binary(vec![b'x'; MAX_FRAME + 1].into()))
        .await
        .unwrap();

    let (code, _) = close_code(&mut socket, FRAME_WAIT).await;
    assert_eq!(code, 1009);
    assert!(stored(&app, &kim, &session).await.is_empty());
}

/// The limit is on the message too: a text message of two 40,000-byte fragments (each
/// frame under 64 KiB, together over it) closes the socket with 1009 and stores nothing,
/// though its content would be valid.
#[tokio::test]
async fn a_fragmented_message_over_64_kib_closes_the_socket_with_1009() {
    let app = spawn_app_with(
        |c| c.core.content_max_chars = 100_000,
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "big").await;
    let mut socket = app.socket(&kim, &session).await;
    let text = format!("{{\"message\": \"{}\"}}", "x".repeat(80_000 - 15));
    let (first, second) = text.as_bytes().split_at(40_000);

    socket
        .feed(Message::Frame(Frame::message(
            first.to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
    socket
        .send(Message::Frame(Frame::message(
            second.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();

    let (code, _) = close_code(&mut socket, FRAME_WAIT).await;
    assert_eq!(code, 1009);
    assert!(stored(&app, &kim, &session).await.is_empty());
}

/// Frames of exactly 64 KiB are read: a text frame whose message is too long gets the
/// core's field error and a binary one the binary refusal, the socket stays open, nothing
/// is stored, and a valid message afterwards is echoed and answered.
#[tokio::test]
async fn frames_of_exactly_64_kib_are_read_and_answered_with_an_error_frame() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "big").await;
    let mut socket = app.socket(&kim, &session).await;
    let text = format!("{{\"message\": \"{}\"}}", "x".repeat(MAX_FRAME - 15));
    assert_eq!(text.len(), MAX_FRAME);

    socket.send(Message::Text(text.into())).await.unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({
            "type": "error",
            "error": "message: Ensure this field has no more than 10000 characters.",
        })
    );
    socket
        .send(Message::Binary(vec![b'x'; MAX_FRAME].into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({
            "type": "error",
            "error": "Binary frames are not accepted: send JSON in a text frame.",
        })
    );
    assert!(stored(&app, &kim, &session).await.is_empty());

    assert_chatting(&mut socket, "still here").await;
    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["content"], "still here");
}

// ---------------------------------------------------------------------------------------
// Slow readers
// ---------------------------------------------------------------------------------------

/// A peer that stops reading is closed with 1013 `reading too slowly` once it falls a
/// whole send queue behind, rather than buffered without bound: what it was sent before is
/// a gap-free prefix of the session's messages. Another socket on the same session that
/// keeps reading gets every frame, in order, and stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_closed_with_1013_and_the_others_keep_going() {
    const POSTS: usize = 300;
    let options = ServeOptions {
        ws_send_queue: 8,
        ..ServeOptions::default()
    };
    let app = spawn_app_with(|_| {}, options).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "busy").await;
    let mut slow = small_buffer_socket(&app, &kim, &session).await;
    assert_serving(&mut slow).await;
    let mut fast = app.socket(&kim, &session).await;
    assert_serving(&mut fast).await;
    let reader = tokio::spawn(async move {
        let frames = next_frames(&mut fast, 2 * POSTS).await;
        (fast, frames)
    });

    // Each post returns once its reply is stored and broadcast: about 18 KB of frames.
    for n in 0..POSTS {
        let content = format!("{n:04} {}", "x".repeat(9_000 - 5));
        app.say(&kim, &session, &content).await;
    }
    let (slow_frames, code, reason) = frames_until_close(&mut slow, Duration::from_secs(20)).await;

    assert_eq!((code, reason.as_str()), (1013, "reading too slowly"));
    let expected: Vec<Value> = stored(&app, &kim, &session)
        .await
        .iter()
        .map(frame_of)
        .collect();
    assert_eq!(expected.len(), 2 * POSTS);
    assert!(
        slow_frames.len() < expected.len(),
        "the slow socket was sent everything ({} frames): it was buffered, not closed",
        slow_frames.len()
    );
    assert!(
        slow_frames == expected[..slow_frames.len()],
        "the slow socket's frames are not a prefix of the session's messages"
    );
    let (mut fast, fast_frames) = reader.await.unwrap();
    assert!(
        fast_frames == expected,
        "the reading socket missed or reordered frames"
    );
    assert_serving(&mut fast).await;
}

// ---------------------------------------------------------------------------------------
// Many sockets
// ---------------------------------------------------------------------------------------

/// 500 sockets on 100 sessions (5 each, over 10 users): when one message is posted on
/// every session at once, every socket receives exactly its own session's user message
/// then AI reply (as stored), and nothing of the other sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sockets_each_get_exactly_their_own_sessions_frames() {
    const USERS: usize = 10;
    const SESSIONS_PER_USER: usize = 10;
    const SOCKETS_PER_SESSION: usize = 5;
    rlimit::increase_nofile_limit(4096).unwrap();
    let app = spawn_app().await;
    let mut sessions: Vec<(Account, String)> = Vec::new();
    for u in 0..USERS {
        let account = app.account(&format!("user{u}")).await;
        for s in 0..SESSIONS_PER_USER {
            let session = app.session(&account, &format!("session {u}-{s}")).await;
            sessions.push((account.clone(), session));
        }
    }
    let app = &app;
    let mut sockets: Vec<(usize, WsStream)> = futures_util::stream::iter(
        (0..sessions.len()).flat_map(|i| std::iter::repeat_n(i, SOCKETS_PER_SESSION)),
    )
    .map(|i| {
        let (account, session) = &sessions[i];
        async move { (i, app.socket(account, session).await) }
    })
    .buffered(32)
    .collect()
    .await;
    assert_eq!(sockets.len(), 500);

    let posted = futures_util::future::join_all(sessions.iter().enumerate().map(
        |(i, (account, session))| async move {
            app.say(account, session, &format!("question {i}")).await
        },
    ))
    .await;
    let received =
        futures_util::future::join_all(sockets.iter_mut().map(|(i, socket)| async move {
            let frames = next_frames(socket, 2).await;
            assert_silent(socket, Duration::from_millis(500)).await;
            (*i, frames)
        }))
        .await;

    for (i, (account, session)) in sessions.iter().enumerate() {
        let messages = stored(app, account, session).await;
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["id"], posted[i]["id"]);
        assert_eq!(messages[0]["content"], format!("question {i}"));
        let expected: Vec<Value> = messages.iter().map(frame_of).collect();
        let mut sockets_of_session = 0;
        for (_, frames) in received
            .iter()
            .filter(|(socket_session, _)| *socket_session == i)
        {
            assert_eq!(frames, &expected, "a socket of session {i}");
            sockets_of_session += 1;
        }
        assert_eq!(sockets_of_session, SOCKETS_PER_SESSION);
    }
}

/// A message posted through REST right after a socket's handshake completed reaches that
/// socket: the socket is a member of its session from the moment the upgrade is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_right_after_the_handshake_reaches_the_socket() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "fresh").await;
    for n in 0..20 {
        let mut socket = app.socket(&kim, &session).await;
        let content = format!("at once {n}");
        let posted = app.say(&kim, &session, &content).await;
        let frames = next_frames(&mut socket, 2).await;
        assert_eq!(frames[0]["message_id"], posted["id"], "attempt {n}");
        assert_eq!(
            frames[1]["message_id"], posted["reply"]["id"],
            "attempt {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------

/// What ends kim's access, or kim's session, while kim's sockets are open.
#[derive(Clone, Copy, Debug)]
enum Revocation {
    LogoutEverywhereElsewhere,
    DeactivateElsewhere,
    DeleteUserElsewhere,
    DeleteSessionElsewhere,
    PasswordChangeThroughRest,
    DeleteSessionThroughRest,
}

/// Opens sockets for kim on two sessions and for lee on one, applies `revocation` to kim
/// or kim's first session, and asserts: kim's socket on that session is closed with
/// `(1008, reason)` (printing how long that took: the contract says 5 s at most); kim's
/// socket on the other session too when kim's tokens
/// were revoked, and untouched when only the session went; lee's socket stays open and
/// still chats.
async fn assert_revocation_closes(revocation: Revocation, reason: &str) {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let doomed = app.session(&kim, "doomed").await;
    let other = app.session(&kim, "other").await;
    let lees = app.session(&lee, "lee's").await;
    let mut kim_socket = app.socket(&kim, &doomed).await;
    let mut kim_other_socket = app.socket(&kim, &other).await;
    let mut lee_socket = app.socket(&lee, &lees).await;
    for socket in [&mut kim_socket, &mut kim_other_socket, &mut lee_socket] {
        assert_serving(socket).await;
    }
    let kim_id = UserId(kim.id);

    match revocation {
        Revocation::LogoutEverywhereElsewhere => {
            let cli = another_process(&app).await;
            on_core(&cli, move |core| core.accounts().logout_all(kim_id))
                .await
                .unwrap();
        }
        Revocation::DeactivateElsewhere => {
            let cli = another_process(&app).await;
            on_core(&cli, move |core| core.accounts().set_active(kim_id, false))
                .await
                .unwrap();
        }
        Revocation::DeleteUserElsewhere => {
            let cli = another_process(&app).await;
            on_core(&cli, move |core| core.accounts().delete(kim_id))
                .await
                .unwrap();
        }
        Revocation::DeleteSessionElsewhere => {
            let cli = another_process(&app).await;
            let id = SessionId::from_str(&doomed).unwrap();
            on_core(&cli, move |core| core.chat().delete_session(kim_id, id))
                .await
                .unwrap();
        }
        Revocation::PasswordChangeThroughRest => {
            let response = app
                .authed(Method::POST, "/api/auth/password/", &kim)
                .json(&json!({ "old_password": PASSWORD, "new_password": "amber-lantern-77" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
        }
        Revocation::DeleteSessionThroughRest => {
            let response = app
                .authed(
                    Method::DELETE,
                    &format!("/api/chat/sessions/{doomed}/"),
                    &kim,
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
        }
    }
    let revoked_at = std::time::Instant::now();

    assert_eq!(
        close_code(&mut kim_socket, REVOCATION_WAIT).await,
        (1008, reason.to_owned()),
        "{revocation:?}"
    );
    println!(
        "{revocation:?}: closed {:?} after the revocation",
        revoked_at.elapsed()
    );
    let session_only = matches!(
        revocation,
        Revocation::DeleteSessionElsewhere | Revocation::DeleteSessionThroughRest
    );
    if session_only {
        tokio::join!(
            assert_silent(&mut kim_other_socket, Duration::from_secs(1)),
            assert_silent(&mut lee_socket, Duration::from_secs(1)),
        );
        assert_serving(&mut kim_other_socket).await;
    } else {
        assert_eq!(
            close_code(&mut kim_other_socket, REVOCATION_WAIT).await,
            (1008, reason.to_owned()),
            "{revocation:?}: kim's socket on another session"
        );
        assert_silent(&mut lee_socket, Duration::from_secs(1)).await;
    }
    assert_chatting(&mut lee_socket, "still here").await;
}

/// Log-out-everywhere by the command-line tool (another process) closes the user's open
/// sockets with 1008 `tokens revoked` (within 5 s by the contract); another user's socket
/// stays open.
#[tokio::test]
async fn logging_out_everywhere_from_another_process_closes_the_sockets_with_1008() {
    assert_revocation_closes(Revocation::LogoutEverywhereElsewhere, "tokens revoked").await;
}

/// Deactivation by another process closes the user's sockets with 1008 (within 5 s by the
/// contract).
#[tokio::test]
async fn deactivation_from_another_process_closes_the_sockets_with_1008() {
    assert_revocation_closes(Revocation::DeactivateElsewhere, "tokens revoked").await;
}

/// Deleting the user from another process closes the user's sockets with 1008 (within 5 s
/// by the contract).
#[tokio::test]
async fn deleting_the_user_from_another_process_closes_the_sockets_with_1008() {
    assert_revocation_closes(Revocation::DeleteUserElsewhere, "tokens revoked").await;
}

/// Deleting a session from another process closes that session's sockets with 1008
/// `session deleted` (within 5 s by the contract), and no other socket of the user.
#[tokio::test]
async fn deleting_the_session_from_another_process_closes_its_sockets_with_1008() {
    assert_revocation_closes(Revocation::DeleteSessionElsewhere, "session deleted").await;
}

/// A password change through REST revokes every token of the user: the user's sockets
/// close with 1008 `tokens revoked` (within 5 s by the contract).
#[tokio::test]
async fn a_password_change_through_rest_closes_the_sockets_with_1008() {
    assert_revocation_closes(Revocation::PasswordChangeThroughRest, "tokens revoked").await;
}

/// `DELETE /api/chat/sessions/{id}/` closes that session's sockets with 1008 `session
/// deleted`, and no other socket of the user.
#[tokio::test]
async fn deleting_the_session_through_rest_closes_its_sockets_with_1008() {
    assert_revocation_closes(Revocation::DeleteSessionThroughRest, "session deleted").await;
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// Shutdown finishes the AI turn in flight, delivers its reply frame, then closes the
/// socket with 1001 `server shutting down`; and the stop returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_the_reply_in_flight_then_closes_with_1001() {
    let app = start(
        |_| {},
        ServeOptions::default(),
        Some(Arc::new(SlowResponder(Duration::from_millis(500)))),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "closing time").await;
    let mut socket = app.socket(&kim, &session).await;
    let core = app.core.clone();
    send_json(&mut socket, &json!({"message": "last words"})).await;
    let echo = next_json(&mut socket).await;
    assert_eq!(echo["message"], "last words");

    let stopping = tokio::spawn(app.stop());
    let (frames, code, reason) = frames_until_close(&mut socket, Duration::from_secs(20)).await;

    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "chat_message");
    assert_eq!(frames[0]["sender"], "ai");
    assert_eq!(frames[0]["message"], "AI: last words");
    // Reading on lets the client's answer to the close go out.
    while let Some(Ok(_)) = socket.next().await {}
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the stop did not return")
        .unwrap();
    let id = SessionId::from_str(&session).unwrap();
    let kim_id = UserId(kim.id);
    let detail = on_core(&core, move |core| core.chat().session(kim_id, id))
        .await
        .unwrap();
    let contents: Vec<&str> = detail.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["last words", "AI: last words"]);
    assert_eq!(frames[0]["message_id"], json!(detail.messages[1].id));
}

/// An idle socket is closed with 1001 `server shutting down` at a stop, and the stop
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_socket_with_1001() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "idle").await;
    let mut socket = app.socket(&kim, &session).await;
    assert_serving(&mut socket).await;

    let stopping = tokio::spawn(app.stop());
    let (frames, code, reason) = frames_until_close(&mut socket, Duration::from_secs(20)).await;

    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert!(frames.is_empty(), "{frames:?}");
    while let Some(Ok(_)) = socket.next().await {}
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the stop did not return")
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------------------

/// With pings every second and a 5 s idle limit, a client that keeps reading (and so
/// answers the pings) stays open past the idle limit: it sees seven pings (six seconds
/// apart at least) and no close, and the socket still serves. Nothing but the pongs shows
/// it alive, and a pong may be late by 4 s on a busy machine without closing it.
#[tokio::test]
async fn a_client_that_answers_pings_stays_open() {
    const PINGS: usize = 7;
    let app = spawn_app_with(
        |c| {
            c.ws_ping_seconds = 1;
            c.ws_idle_seconds = 5;
        },
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "heartbeat").await;
    let mut socket = app.socket(&kim, &session).await;

    let started = std::time::Instant::now();
    for _ in 0..PINGS {
        // Reading on sends the pong that tungstenite queued for the previous ping.
        let frame = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no ping arrived in time");
        match frame {
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    println!("{PINGS} pings in {:?}", started.elapsed());

    assert_serving(&mut socket).await;
}

/// A client that reads nothing (so answers no ping) for 4 s, with a 2 s idle limit, finds
/// pings and then the close 1000 `idle timeout` when it reads.
#[tokio::test]
async fn a_silent_client_is_closed_with_1000_idle_timeout() {
    let app = spawn_app_with(
        |c| {
            c.ws_ping_seconds = 1;
            c.ws_idle_seconds = 2;
        },
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "heartbeat").await;
    let mut socket = app.socket(&kim, &session).await;

    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut pings = 0;
    let close = loop {
        let frame = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("the socket was not closed");
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(Some(close)))) => break close,
            other => panic!("expected pings then a close, got {other:?}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1000, "idle timeout")
    );
    assert!(pings >= 1, "no ping before the idle close");
}

// ---------------------------------------------------------------------------------------
// The AI turn on sockets
// ---------------------------------------------------------------------------------------

/// A streaming responder's deltas reach every socket of the session as `ai_delta` frames
/// carrying the id the reply is then stored under, between the user's message and the
/// reply's `chat_message`, which carries the deltas' sum.
#[tokio::test]
async fn streamed_deltas_reach_every_socket_before_the_reply() {
    let app = start(
        |_| {},
        ServeOptions::default(),
        Some(Arc::new(StreamingResponder)),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "streaming").await;
    let mut first = app.socket(&kim, &session).await;
    let mut second = app.socket(&kim, &session).await;
    assert_serving(&mut second).await;

    send_json(&mut first, &json!({"message": "hi"})).await;
    let frames = next_frames(&mut first, 4).await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["content"], "Hello");
    let reply_id = &messages[1]["id"];
    assert_eq!(
        frames,
        [
            frame_of(&messages[0]),
            json!({"type": "ai_delta", "message_id": reply_id, "delta": "Hel"}),
            json!({"type": "ai_delta", "message_id": reply_id, "delta": "lo"}),
            frame_of(&messages[1]),
        ]
    );
    assert_eq!(next_frames(&mut second, 4).await, frames);
    assert_silent(&mut first, Duration::from_millis(300)).await;
}

/// When the AI fails, the last frame of the turn is the `chat_message` of the stored
/// system error message, with the failure's reason in its metadata.
#[tokio::test]
async fn a_failing_ai_ends_the_turn_with_the_system_error_message_frame() {
    let app = start(
        |_| {},
        ServeOptions::default(),
        Some(Arc::new(FailingResponder)),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "broken").await;
    let mut socket = app.socket(&kim, &session).await;

    send_json(&mut socket, &json!({"message": "hello?"})).await;
    let frames = next_frames(&mut socket, 2).await;

    let messages = stored(&app, &kim, &session).await;
    assert_eq!(frames, [frame_of(&messages[0]), frame_of(&messages[1])]);
    assert_eq!(frames[1]["sender"], "system");
    assert_eq!(frames[1]["message_type"], "error");
    assert_eq!(frames[1]["message"], AI_UNAVAILABLE);
    assert_eq!(frames[1]["metadata"], json!({"reason": "boom"}));
    assert_silent(&mut socket, Duration::from_millis(300)).await;
}

/// A reply is produced and stored even if the socket that sent the message closes at
/// once; resuming with `after=<the user message>` replays exactly that reply first.
#[tokio::test]
async fn a_reply_outlives_the_socket_that_asked_and_is_replayed_on_resume() {
    let app = start(
        |_| {},
        ServeOptions::default(),
        Some(Arc::new(SlowResponder(Duration::from_millis(500)))),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "gone").await;
    let mut socket = app.socket(&kim, &session).await;

    send_json(&mut socket, &json!({"message": "are you there?"})).await;
    socket.close(None).await.unwrap();
    drop(socket);

    let messages = stored_eventually(&app, &kim, &session, 2).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["content"], "are you there?");
    assert_eq!(messages[0]["sender"], "user");
    assert_eq!(messages[1]["content"], "AI: are you there?");
    assert_eq!(messages[1]["sender"], "ai");
    let after = messages[0]["id"].as_str().unwrap();
    let mut resumed = app
        .socket_with(&format!("token={}&after={after}", kim.access), &session)
        .await;
    assert_eq!(next_json(&mut resumed).await, frame_of(&messages[1]));
    assert_silent(&mut resumed, Duration::from_millis(300)).await;
}

/// An open socket keeps its connection's place under the connection cap: with a cap of
/// two and two sockets open, a third connection waits (nothing answers it) until a socket
/// closes, and is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sockets_count_against_the_connection_cap() {
    let app = spawn_app_with(
        |_| {},
        ServeOptions {
            max_connections: 2,
            // The test client's idle keep-alive connection (from making the account) holds
            // a place until the server drops it for sending no request head.
            header_read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        },
    )
    .await;
    // The account and session are made before the sockets take both places.
    let kim = app.account("kim").await;
    let session = app.session(&kim, "capped").await;
    let mut first = app.socket(&kim, &session).await;
    let _second = app.socket(&kim, &session).await;
    assert_serving(&mut first).await;

    let health = tokio::spawn({
        let http = reqwest::Client::new();
        let url = app.url("/api/health/");
        async move { http.get(url).send().await.map(|response| response.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !health.is_finished(),
        "a third connection is served only when a place frees"
    );

    first.close(None).await.unwrap();
    let status = tokio::time::timeout(FRAME_WAIT, health)
        .await
        .expect("the waiting connection was served once a socket closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A stop waits for the AI turn of a socket that has already gone: the reply is stored
/// before the server returns, so a client that reconnects after a restart finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_reply_of_a_socket_that_already_closed() {
    let app = start(
        |_| {},
        ServeOptions::default(),
        Some(Arc::new(SlowResponder(Duration::from_millis(800)))),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "late").await;
    let mut socket = app.socket(&kim, &session).await;
    send_json(&mut socket, &json!({"message": "one more thing"})).await;
    assert_eq!(next_json(&mut socket).await["message"], "one more thing");
    socket.close(None).await.unwrap();
    drop(socket);
    let core = app.core.clone();

    app.stop().await;

    let owner = UserId(kim.id);
    let id = SessionId::from_str(&session).unwrap();
    let detail = tokio::task::spawn_blocking(move || core.chat().session(owner, id))
        .await
        .unwrap()
        .unwrap();
    let contents: Vec<&str> = detail.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["one more thing", "AI: one more thing"]);
}

/// Emits `x` a thousand times as deltas, as fast as it can, then answers the whole text.
struct BurstResponder;

impl Responder for BurstResponder {
    fn name(&self) -> &str {
        "burst"
    }

    fn respond(&self, _: &AiRequest, on_delta: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        for _ in 0..1000 {
            on_delta("x");
        }
        Ok(AiReply {
            content: "x".repeat(1000),
            metadata: Default::default(),
        })
    }
}

/// A burst of deltas faster than a socket can write never closes a reading socket: it
/// gets the user's message, a prefix of the reply's deltas (no hole), then the stored
/// reply, and stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deltas_never_closes_a_reading_socket() {
    let app = start(
        |_| {},
        ServeOptions {
            ws_send_queue: 16,
            ..ServeOptions::default()
        },
        Some(Arc::new(BurstResponder)),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "burst").await;
    let mut socket = app.socket(&kim, &session).await;

    for round in 0..3 {
        let content = format!("round {round}");
        send_json(&mut socket, &json!({ "message": content })).await;
        assert_eq!(next_json(&mut socket).await["message"], content.as_str());
        let mut deltas = String::new();
        let reply = loop {
            let frame = next_json(&mut socket).await;
            match frame["type"].as_str() {
                Some("ai_delta") => deltas.push_str(frame["delta"].as_str().unwrap()),
                Some("chat_message") => break frame,
                _ => panic!("unexpected frame {frame}"),
            }
        };
        assert_eq!(reply["sender"], "ai");
        let reply_text = reply["message"].as_str().unwrap();
        assert_eq!(reply_text, "x".repeat(1000));
        assert!(
            reply_text.starts_with(&deltas),
            "the deltas are a prefix of the reply"
        );
    }
    assert_serving(&mut socket).await;
}

/// The idle limit of the slow-reader tests: long enough that no pause of a busy machine
/// makes the flooding client look silent (which would be a 1000 `idle timeout`).
const SLOW_READER_IDLE_SECONDS: u32 = 6;

/// More than a peer that floods and never reads can push before TCP pushes back on it,
/// once the server has stopped reading: the kernel's buffers on both sides (this client's
/// are small; the server's receive buffer grows with what it read, up to `tcp_rmem`'s
/// maximum, 6 to 32 MiB on common kernels, and its send buffer holds a few MiB of pongs
/// before they block). A server still reading after this much is piling up what it owes.
const FLOOD_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// How a socket that stopped reading ended, as its client finds out once it reads again.
#[derive(Debug, PartialEq)]
enum SlowReaderEnd {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame (the server could not get it out).
    CutOff,
}

/// How many bytes of frames the flooding client hands TCP in one write. One frame per write
/// would make a segment of a few dozen bytes each, and the server's kernel, which counts
/// each segment's memory rather than its bytes, would prune its receive queue and drop
/// some: the client then resends them only after its retransmission timer backs off
/// (seconds), a silence the server rightly takes for an idle peer.
const FLOOD_WRITE_BYTES: usize = 8 * 1024;

/// Sends `frame` again and again and never reads, until one write has been blocked for
/// longer than `blocked_for` (the server stopped reading, and TCP pushed back on this
/// client) or has failed (the server dropped the connection). Frames go out
/// [`FLOOD_WRITE_BYTES`] at a time. Answers how many frames went out. Fails the test if the
/// server is still reading after [`FLOOD_LIMIT_BYTES`].
async fn flood_until_blocked(
    socket: &mut WsStream,
    frame: Message,
    blocked_for: Duration,
) -> usize {
    let frame_bytes = frame.len();
    let batch = (FLOOD_WRITE_BYTES / frame_bytes.max(1)).max(1);
    let mut sent = 0;
    while sent * frame_bytes < FLOOD_LIMIT_BYTES {
        let write = async {
            for _ in 0..batch {
                socket.feed(frame.clone()).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(blocked_for, write).await {
            Ok(Ok(())) => sent += batch,
            Ok(Err(_)) | Err(_) => return sent,
        }
    }
    panic!(
        "the server read {sent} frames of {frame_bytes} bytes and still reads: it piles up what it owes"
    );
}

/// Reads what the server sent a socket that had stopped reading, until the end: skips
/// pings, pongs and text frames that satisfy `expected_text`, and answers the close frame
/// or the end of the connection. Fails on any other frame, and if the connection is still
/// open after `within`.
async fn read_to_the_end(
    socket: &mut WsStream,
    expected_text: impl Fn(&str) -> bool,
    within: Duration,
) -> SlowReaderEnd {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the socket was neither closed nor cut off in time");
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(text))) if expected_text(text.as_str()) => {}
            Some(Ok(Message::Close(Some(close)))) => {
                return SlowReaderEnd::Closed(u16::from(close.code), close.reason.as_str().into());
            }
            Some(Ok(Message::Close(None))) => return SlowReaderEnd::Closed(1005, String::new()),
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(_)) | None => return SlowReaderEnd::CutOff,
        }
    }
}

/// Starts a server whose idle limit is [`SLOW_READER_IDLE_SECONDS`], floods one of kim's
/// sockets with `ping` (this client has small socket buffers and never reads), and answers
/// how the server ended the socket.
async fn flood_and_find_the_end(
    ping: Message,
    expected_text: impl Fn(&str) -> bool,
) -> SlowReaderEnd {
    let app = spawn_app_with(
        |config| {
            // The heartbeat as late as it can be: a server that piles up pongs is not
            // rescued by its own ping blocking before the flood has gone on for a while.
            config.ws_ping_seconds = SLOW_READER_IDLE_SECONDS - 1;
            config.ws_idle_seconds = SLOW_READER_IDLE_SECONDS;
        },
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "quiet").await;
    let mut socket = small_buffer_socket(&app, &kim, &session).await;
    let idle = Duration::from_secs(u64::from(SLOW_READER_IDLE_SECONDS));

    // Blocked for longer than the idle limit: the server has been unable to write for that
    // long too (it reads nothing while a frame is owed), so it has given up on this client.
    let started = std::time::Instant::now();
    let sent = flood_until_blocked(&mut socket, ping, idle + Duration::from_secs(1)).await;
    println!(
        "{sent} pings sent before the server stopped reading ({:?})",
        started.elapsed()
    );

    // The server waits 10 s at most for its close frame to go out, then drops the
    // connection.
    let end = read_to_the_end(&mut socket, expected_text, Duration::from_secs(30)).await;
    println!("then: {end:?}");
    end
}

/// A peer that sends `{"type": "ping"}` frames and never reads, in a quiet session (its
/// queue never overflows), is not kept forever: once the server's pongs are blocked for the
/// idle limit it is closed with 1013 `reading too slowly`, which it finds once it reads
/// again (or, if the close frame could not get out, the connection is cut), never with
/// 1000 `idle timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_in_a_quiet_session_is_closed_with_1013() {
    let ping = Message::Text(r#"{"type":"ping"}"#.into());

    let end = flood_and_find_the_end(ping, |text| text == r#"{"type":"pong"}"#).await;

    assert!(
        matches!(&end, SlowReaderEnd::Closed(1013, reason) if reason == "reading too slowly")
            || end == SlowReaderEnd::CutOff,
        "{end:?}"
    );
}

/// A peer that floods WebSocket pings (control frames, which tungstenite answers by itself)
/// and never reads is treated like any slow reader: its pongs count as frames owed, the
/// server stops reading it while they are blocked, and it is closed with 1013 `reading too
/// slowly` (or cut off when the close frame cannot get out) instead of being read on
/// forever while its pongs pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_control_pings_and_never_reads_is_closed_with_1013() {
    let ping = Message::Ping(vec![b'p'; 125].into());

    let end = flood_and_find_the_end(ping, |_| false).await;

    assert!(
        matches!(&end, SlowReaderEnd::Closed(1013, reason) if reason == "reading too slowly")
            || end == SlowReaderEnd::CutOff,
        "{end:?}"
    );
}

/// When AI turns outlast the drain time, the stop still closes open sockets with 1001
/// instead of leaving them to a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_get_1001_even_when_turns_outlast_the_drain_time() {
    let app = start(
        |_| {},
        ServeOptions {
            drain_timeout: Duration::from_secs(1),
            ..ServeOptions::default()
        },
        Some(Arc::new(SlowResponder(Duration::from_secs(3)))),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "slow").await;
    let mut socket = app.socket(&kim, &session).await;
    send_json(&mut socket, &json!({"message": "take your time"})).await;
    assert_eq!(next_json(&mut socket).await["message"], "take your time");

    let stopping = tokio::spawn(app.stop());
    // The turn takes 3 s, and the stop waits for it before it closes the sockets.
    let (_, code, reason) = frames_until_close(&mut socket, Duration::from_secs(30)).await;

    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the stop did not return")
        .unwrap();
}
