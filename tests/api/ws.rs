//! Contract section 6: the WebSocket chat, from the handshake's refusals to the frames,
//! fan-out across sockets and REST, resume with `after`, and (section 9) sockets of a
//! login family closed when a logout or a refresh-token reuse ends it.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{
    Account, FRAME_WAIT, TestApp, assert_silent, close_code, frame_of, next_frames, next_json,
    send_json, spawn_app, spawn_app_with, stored, template,
};

#[tokio::test]
async fn a_message_frame_is_echoed_as_stored_then_answered_with_every_key() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "ward 3").await;
    let mut socket = app.socket(&kim, &session).await;

    send_json(
        &mut socket,
        &json!({"message": "열이 나요", "metadata": {"ward": 3}, "sender": "ai"}),
    )
    .await;
    let frames = next_frames(&mut socket, 2).await;
    let messages = stored(&app, &kim, &session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0]["sender"], "user",
        "a sender in the frame is ignored"
    );
    assert_eq!(messages[0]["content"], "열이 나요");
    assert_eq!(messages[0]["metadata"], json!({"ward": 3}));
    assert_eq!(messages[1]["content"], template("열이 나요"));
    assert_eq!(frames, [frame_of(&messages[0]), frame_of(&messages[1])]);
    let keys: Vec<&str> = frames[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        BTreeSet::from_iter(keys),
        BTreeSet::from([
            "type",
            "message",
            "sender",
            "message_type",
            "metadata",
            "timestamp",
            "message_id"
        ])
    );
}

/// A handshake that must be refused: URL, extra headers, the status and body expected.
type RefusalCase<'a> = (String, Vec<(&'a str, &'a str)>, StatusCode, Value);

/// A handshake request to `url` with extra headers.
fn handshake(
    url: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

/// Every refusal of contract section 6 happens before the upgrade, with the contract's
/// HTTP status and body: 401 without a token or with a bad one (with `WWW-Authenticate`),
/// 404 for an unknown, malformed or someone else's session, 403 for a foreign `Origin`,
/// 400 for an `after` that is not a message of this session.
#[tokio::test]
async fn handshakes_are_refused_with_the_contract_status_before_the_upgrade() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let session = app.session(&kim, "mine").await;
    let other = app.session(&kim, "other").await;
    let elsewhere = app.say(&kim, &other, "hello").await;
    let not_authenticated = json!({"detail": "Authentication credentials were not provided."});
    let invalid =
        json!({"detail": "Given token not valid for any token type", "code": "token_not_valid"});
    let not_found = json!({"detail": "Not found."});
    let token = format!("token={}", kim.access);

    let cases: Vec<RefusalCase> = vec![
        (
            app.ws_url(&session, ""),
            vec![],
            StatusCode::UNAUTHORIZED,
            not_authenticated.clone(),
        ),
        (
            app.ws_url(&session, "token="),
            vec![],
            StatusCode::UNAUTHORIZED,
            not_authenticated,
        ),
        (
            app.ws_url(&session, "token=not.a.jwt"),
            vec![],
            StatusCode::UNAUTHORIZED,
            invalid.clone(),
        ),
        (
            app.ws_url(&session, &format!("token={}", kim.refresh)),
            vec![],
            StatusCode::UNAUTHORIZED,
            invalid.clone(),
        ),
        (
            app.ws_url(&session, ""),
            vec![("authorization", "Bearer not.a.jwt")],
            StatusCode::UNAUTHORIZED,
            invalid,
        ),
        (
            app.ws_url(&session, &format!("token={}", lee.access)),
            vec![],
            StatusCode::NOT_FOUND,
            not_found.clone(),
        ),
        (
            app.ws_url("c0ffee00-0000-4000-8000-000000000000", &token),
            vec![],
            StatusCode::NOT_FOUND,
            not_found.clone(),
        ),
        (
            app.ws_url("not-a-uuid", &token),
            vec![],
            StatusCode::NOT_FOUND,
            not_found.clone(),
        ),
        (
            app.ws_url(&session, &token),
            vec![("origin", "http://evil.example")],
            StatusCode::FORBIDDEN,
            json!({"detail": "You do not have permission to perform this action."}),
        ),
        (
            app.ws_url(
                &session,
                &format!("{token}&after={}", elsewhere["id"].as_str().unwrap()),
            ),
            vec![],
            StatusCode::BAD_REQUEST,
            json!({"after": ["Unknown message id."]}),
        ),
        (
            app.ws_url(&session, &format!("{token}&after=nonsense")),
            vec![],
            StatusCode::BAD_REQUEST,
            json!({"after": ["Unknown message id."]}),
        ),
    ];
    for (url, headers, status, expected) in cases {
        let (got, response_headers, body) = app.refused_handshake(handshake(&url, &headers)).await;
        assert_eq!((got, &body), (status, &expected), "{url} {headers:?}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(response_headers["www-authenticate"], "Bearer realm=\"api\"");
        }
    }
    // Someone else's session is 404 whatever the origin: its existence is never revealed.
    let (status, _, _) = app
        .refused_handshake(handshake(
            &app.ws_url(&session, &format!("token={}", lee.access)),
            &[("origin", "http://evil.example")],
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Requests that are not WebSocket upgrades are told so after the same checks: 405 for
/// another method, 426 (with `Upgrade: websocket`) for a plain GET, and the path works
/// without its trailing slash.
#[tokio::test]
async fn plain_http_on_the_socket_path_is_405_or_426_after_the_checks() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "mine").await;
    let path = format!("/ws/chat/{session}/");

    let anonymous = app.get(&path).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let post = app.authed(Method::POST, &path, &kim).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET");
    let plain = app.authed(Method::GET, &path, &kim).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    let bare = app
        .authed(Method::GET, path.trim_end_matches('/'), &kim)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UPGRADE_REQUIRED);
}

/// The token may come in the `Authorization` header instead of the query, and an allowed
/// `Origin` (configured, or the server's own) is accepted.
#[tokio::test]
async fn header_tokens_and_allowed_origins_open_the_socket() {
    let app = spawn_app_with(
        |config| config.cors_origins = vec!["https://ward.example".to_owned()],
        narutalk_server::ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "mine").await;
    let bearer = format!("Bearer {}", kim.access);
    let own = format!("http://{}", app.addr);
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![
            ("authorization", bearer.as_str()),
            ("origin", "https://ward.example"),
        ],
        vec![("authorization", bearer.as_str()), ("origin", own.as_str())],
    ] {
        let (mut socket, response) =
            tokio_tungstenite::connect_async(handshake(&app.ws_url(&session, ""), &headers))
                .await
                .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        send_json(&mut socket, &json!({"type": "ping"})).await;
        assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));
    }
}

/// `{"type": "ping"}` is answered with `{"type": "pong"}`, and a protocol-level ping
/// with a pong.
#[tokio::test]
async fn pings_are_answered() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "mine").await;
    let mut socket = app.socket(&kim, &session).await;
    send_json(&mut socket, &json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(FRAME_WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
}

/// Bad frames get an `error` frame naming the problem; the socket stays open and usable,
/// and nothing is stored for them.
#[tokio::test]
async fn bad_frames_get_an_error_frame_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "mine").await;
    let mut socket = app.socket(&kim, &session).await;
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Text("not json".into()),
            "The frame is not valid JSON: expected ident at line 1 column 2.",
        ),
        (
            Message::Text("[1, 2]".into()),
            "The frame must be a JSON object, not list.",
        ),
        (
            Message::Text("\"hi\"".into()),
            "The frame must be a JSON object, not str.",
        ),
        (
            Message::Text(r#"{"text": "hi"}"#.into()),
            "The frame has no \"message\".",
        ),
        (
            Message::Text(r#"{"message": "   "}"#.into()),
            "message: This field may not be blank.",
        ),
        (
            Message::Text(r#"{"message": 42}"#.into()),
            "message: Not a valid string.",
        ),
        (
            Message::Text(r#"{"message": "x", "message_type": "error"}"#.into()),
            "message_type: \"error\" is not a valid choice.",
        ),
        (
            Message::Text(r#"{"message": "x", "metadata": [1]}"#.into()),
            "metadata: Expected a dictionary of items but got type \"list\".",
        ),
        (
            Message::Text(r#"{"message": "a\u0000b"}"#.into()),
            "message: Null characters are not allowed.",
        ),
        (
            Message::Text(r#"{"message": "x", "metadata": {"k": ["\u0000"]}}"#.into()),
            "metadata: Null characters are not allowed.",
        ),
        (
            Message::Binary(b"{\"message\": \"hi\"}".to_vec().into()),
            "Binary frames are not accepted: send JSON in a text frame.",
        ),
    ];
    for (frame, expected) in cases {
        socket.send(frame.clone()).await.unwrap();
        assert_eq!(
            next_json(&mut socket).await,
            json!({"type": "error", "error": expected}),
            "{frame:?}"
        );
    }
    assert!(stored(&app, &kim, &session).await.is_empty());
    send_json(&mut socket, &json!({"message": "still here"})).await;
    let frames = next_frames(&mut socket, 2).await;
    assert_eq!(frames[0]["message"], "still here");
    assert_eq!(frames[1]["message"], template("still here"));
}

/// Every socket on a session receives every message of it, whichever socket or REST
/// call posted it; a socket on another session receives none of them.
#[tokio::test]
async fn sockets_and_rest_fan_out_to_every_socket_of_the_session_only() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "shared").await;
    let quiet_session = app.session(&kim, "quiet").await;
    let mut first = app.socket(&kim, &session).await;
    let mut second = app.socket(&kim, &session).await;
    let mut quiet = app.socket(&kim, &quiet_session).await;

    send_json(&mut first, &json!({"message": "from a socket"})).await;
    let from_socket = next_frames(&mut first, 2).await;
    assert_eq!(next_frames(&mut second, 2).await, from_socket);
    app.say(&kim, &session, "from REST").await;
    let from_rest = next_frames(&mut first, 2).await;
    assert_eq!(next_frames(&mut second, 2).await, from_rest);

    let messages = stored(&app, &kim, &session).await;
    let expected: Vec<Value> = messages.iter().map(frame_of).collect();
    assert_eq!([from_socket, from_rest].concat(), expected);
    assert_eq!(expected[2]["message"], "from REST");
    assert_silent(&mut quiet, Duration::from_millis(300)).await;
}

/// Resume: `after=<id>` first replays every message stored after that one, then goes
/// live; while other clients keep posting during the replay, the socket still sees every
/// message exactly once, in storage order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_then_goes_live_with_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "long").await;
    let mut first_ids = Vec::new();
    for n in 0..30 {
        let posted = app.say(&kim, &session, &format!("before {n}")).await;
        first_ids.push(posted["id"].as_str().unwrap().to_owned());
    }
    let after = first_ids[9].clone();

    // Two writers keep posting (through REST and through a socket) while the resuming
    // socket replays.
    let writer_app = std::sync::Arc::new(app);
    let rest_writer = {
        let app = writer_app.clone();
        let kim = kim.clone();
        let session = session.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                app.say(&kim, &session, &format!("rest {n}")).await;
            }
        })
    };
    let mut writer_socket = writer_app.socket(&kim, &session).await;
    for n in 0..20 {
        send_json(
            &mut writer_socket,
            &json!({"message": format!("socket {n}")}),
        )
        .await;
    }
    let mut resumed = writer_app
        .socket_with(&format!("token={}&after={after}", kim.access), &session)
        .await;
    rest_writer.await.unwrap();
    // The reply to `after`, the 20 exchanges posted after it, then 40 REST and 20 socket
    // exchanges: two frames each.
    let expected_frames = 1 + (20 + 40 + 20) * 2;
    let frames = next_frames(&mut resumed, expected_frames).await;
    assert_silent(&mut resumed, Duration::from_millis(300)).await;

    let messages = stored(&writer_app, &kim, &session).await;
    let after_index = messages
        .iter()
        .position(|m| m["id"] == after.as_str())
        .unwrap();
    let expected: Vec<Value> = messages[after_index + 1..].iter().map(frame_of).collect();
    assert_eq!(frames.len(), expected.len());
    assert_eq!(frames, expected);
}

/// Resuming after the last stored message replays nothing and goes live.
#[tokio::test]
async fn resume_after_the_last_message_replays_nothing() {
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "s").await;
    let posted = app.say(&kim, &session, "one").await;
    let last = posted["reply"]["id"].as_str().unwrap();
    let mut socket = app
        .socket_with(&format!("token={}&after={last}", kim.access), &session)
        .await;
    assert_silent(&mut socket, Duration::from_millis(300)).await;
    app.say(&kim, &session, "two").await;
    let frames = next_frames(&mut socket, 2).await;
    assert_eq!(frames[0]["message"], "two");
}

/// Socket messages share the user's message throttle with REST: over the limit, the
/// frame gets the 429 text as an `error` frame with the wait in whole seconds as
/// `retry_after` (section 11), nothing is stored, and the socket stays open.
#[tokio::test]
async fn a_throttled_message_gets_an_error_frame_and_is_not_stored() {
    let app = spawn_app_with(
        |config| config.message_throttle_per_minute = 1,
        narutalk_server::ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "limited").await;
    let mut socket = app.socket(&kim, &session).await;
    send_json(&mut socket, &json!({"message": "first"})).await;
    assert_eq!(next_frames(&mut socket, 2).await[0]["message"], "first");
    send_json(&mut socket, &json!({"message": "second"})).await;
    // The bucket of one refills a minute after the first message: 60 s, or 59 on a
    // machine slow enough for a second to pass in between.
    let refused = next_json(&mut socket).await;
    let waits: Vec<Value> = [59, 60]
        .iter()
        .map(|s| json!({"type": "error", "error": format!("Request was throttled. Expected available in {s} seconds."), "retry_after": s}))
        .collect();
    assert!(waits.contains(&refused), "{refused}");
    let rest = app
        .authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            &kim,
        )
        .json(&json!({"content": "third"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rest.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one budget for both"
    );
    assert_eq!(stored(&app, &kim, &session).await.len(), 2);
    send_json(&mut socket, &json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));
}

/// How a test ends a login family.
#[derive(Clone, Copy, Debug)]
enum FamilyEnd {
    Logout,
    Reuse,
}

/// Opens a socket with each of two logins of kim on one session, ends the first login's
/// family, and asserts that its socket closes with 1008 `tokens revoked` (waiting at most
/// a generous 20 s; the contract's 5 s is printed, not asserted) while the other login's
/// socket keeps chatting.
async fn assert_family_end_closes_its_sockets(end: FamilyEnd) {
    let app = spawn_app().await;
    let first = app.account("kim").await;
    let second = app.login("kim@example.com").await;
    let session = app.session(&first, "mine").await;
    let mut doomed = app.socket(&first, &session).await;
    let mut kept = app.socket(&second, &session).await;
    for socket in [&mut doomed, &mut kept] {
        send_json(socket, &json!({"type": "ping"})).await;
        assert_eq!(next_json(socket).await, json!({"type": "pong"}));
    }

    let started = std::time::Instant::now();
    end_family(&app, &first, end).await;

    assert_eq!(
        close_code(&mut doomed, Duration::from_secs(20)).await,
        (1008, "tokens revoked".to_owned()),
        "{end:?}"
    );
    println!("{end:?}: the socket closed {:?} after", started.elapsed());
    assert_silent(&mut kept, Duration::from_millis(500)).await;
    send_json(&mut kept, &json!({"message": "still here"})).await;
    let frames = next_frames(&mut kept, 2).await;
    assert_eq!(frames[0]["message"], "still here");
    assert_eq!(frames[1]["message"], template("still here"));
}

async fn end_family(app: &TestApp, account: &Account, end: FamilyEnd) {
    let refresh = |token: &str| {
        app.request(Method::POST, "/api/auth/token/refresh/")
            .json(&json!({ "refresh": token }))
            .send()
    };
    match end {
        FamilyEnd::Logout => {
            let response = app
                .request(Method::POST, "/api/auth/logout/")
                .json(&json!({ "refresh": account.refresh }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::RESET_CONTENT);
        }
        FamilyEnd::Reuse => {
            let rotated = refresh(&account.refresh).await.unwrap();
            assert_eq!(rotated.status(), StatusCode::OK);
            let reused = refresh(&account.refresh).await.unwrap();
            assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
        }
    }
}

#[tokio::test]
async fn logging_out_closes_the_sockets_of_that_login_only_with_1008() {
    assert_family_end_closes_its_sockets(FamilyEnd::Logout).await;
}

#[tokio::test]
async fn reusing_a_refresh_token_closes_the_sockets_of_its_login_only_with_1008() {
    assert_family_end_closes_its_sockets(FamilyEnd::Reuse).await;
}
