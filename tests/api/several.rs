//! Several servers on one PostgreSQL database (contract section 10): two servers, each with
//! its own pool, listener, turn engine and rooms, share a throwaway cluster's database.
//! These tests need PostgreSQL whatever `NARUTALK_TEST_BACKEND` says.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use narutalk_core::ai::{AiError, AiReply, AiRequest, Responder};
use narutalk_core::config::Secret;
use narutalk_core::fields::JsonObject;
use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The signing key both servers share.
const SHARED_SECRET: &str = "several-servers-share-this-signing-key-0123456789abcdef";

/// Two servers on one new database; `None` (the test skips) without PostgreSQL.
async fn two_servers(
    test: &'static str,
    responder: Option<Arc<dyn Responder>>,
) -> Option<(TestApp, TestApp, String)> {
    let url = postgres_database(test).await?;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        apps.push(
            start(
                move |settings| {
                    settings.core.database = url.into();
                    // Every server signs with the same key (contract section 10).
                    settings.core.secret_key = Some(Secret::new(SHARED_SECRET));
                },
                ServeOptions::default(),
                responder.clone(),
            )
            .await,
        );
    }
    let second = apps.pop()?;
    let first = apps.pop()?;
    Some((first, second, url))
}

/// Kills the connections that listen for other servers' changes (both servers').
async fn cut_listeners(url: &str) -> String {
    postgres_sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query = 'LISTEN narutalk_events' AND datname = current_database()",
    )
    .await
}

/// Reads frames until `n` `chat_message` frames came (other frames are skipped).
async fn chat_messages(socket: &mut WsStream, n: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages.len() < n {
        let frame = next_json(socket).await;
        if frame["type"] == "chat_message" {
            messages.push(frame);
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_one_server_receives_what_the_other_stores_in_order_also_after_its_listener_is_cut()
 {
    let Some((a, b, url)) = two_servers("several_servers_fan_out", None).await else {
        return;
    };
    let kim = a.account("kim").await;
    let session = b.session(&kim, "shared").await;
    let mut on_a = a.socket(&kim, &session).await;

    // Posts alternate between the servers; each answers its own.
    for n in 0..6 {
        let server = if n % 2 == 0 { &b } else { &a };
        server.say(&kim, &session, &format!("message {n}")).await;
    }
    let live = chat_messages(&mut on_a, 12).await;

    // The listening connections die; what B stores meanwhile still reaches A's socket.
    assert_eq!(cut_listeners(&url).await, "2");
    for n in 6..9 {
        b.say(&kim, &session, &format!("message {n}")).await;
    }
    let after_cut = chat_messages(&mut on_a, 6).await;

    let expected: Vec<Value> = stored(&b, &kim, &session)
        .await
        .iter()
        .map(frame_of)
        .collect();
    assert_eq!(expected.len(), 18);
    assert_eq!([live, after_cut].concat(), expected);
    assert_silent(&mut on_a, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stay_in_the_order_of_the_messages_when_they_alternate_between_servers() {
    let Some((a, b, _)) = two_servers("several_servers_order", None).await else {
        return;
    };
    let kim = a.account("kim").await;
    let session = a.session(&kim, "busy").await;
    let mut on_a = a.socket(&kim, &session).await;
    let mut on_b = b.socket(&kim, &session).await;

    // Frames sent without waiting, alternating between the servers' sockets.
    for n in 0..8 {
        let socket = if n % 2 == 0 { &mut on_a } else { &mut on_b };
        send_json(socket, &json!({ "message": format!("m{n}") })).await;
    }
    let seen_on_a = chat_messages(&mut on_a, 16).await;
    let seen_on_b = chat_messages(&mut on_b, 16).await;
    assert_eq!(seen_on_a, seen_on_b, "both sockets see one order");

    // The n-th reply answers the n-th user message, and comes after it: one turn at a
    // time, in the order the messages were stored, whichever server received them.
    let mut users = Vec::new();
    let mut replies = Vec::new();
    for frame in &seen_on_a {
        let content = frame["message"].as_str().unwrap().to_owned();
        if frame["sender"] == "user" {
            users.push(content);
        } else {
            assert!(
                replies.len() < users.len(),
                "a reply before its message: {seen_on_a:?}"
            );
            replies.push(content);
        }
    }
    let expected: Vec<String> = users.iter().map(|content| template(content)).collect();
    assert_eq!(replies, expected);
    assert_eq!(users.len(), 8);
}

/// Answers `AI: {message}`, counts its calls, and holds every reply until released.
struct GatedResponder {
    calls: Mutex<Vec<String>>,
    gate: Mutex<mpsc::Receiver<()>>,
}

impl Responder for GatedResponder {
    fn name(&self) -> &str {
        "gated"
    }

    fn respond(&self, request: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        self.calls.lock().unwrap().push(request.message.clone());
        let _ = self.gate.lock().unwrap().recv();
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: JsonObject::new(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_repeat_on_the_other_server_waits_for_the_first_reply_with_no_second_ai_call()
{
    let (release, gate) = mpsc::channel();
    let responder = Arc::new(GatedResponder {
        calls: Mutex::new(Vec::new()),
        gate: Mutex::new(gate),
    });
    let Some((a, b, _)) = two_servers("several_servers_repeat", Some(responder.clone())).await
    else {
        return;
    };
    let kim = a.account("kim").await;
    let session = a.session(&kim, "keyed").await;
    let post = |app: &TestApp| {
        app.authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            &kim,
        )
        .header("Idempotency-Key", "once")
        .json(&json!({ "content": "hello" }))
        .send()
    };

    // The first post's reply is being produced on A while the repeat reaches B.
    let first = tokio::spawn(post(&a));
    while responder.calls.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let repeat = tokio::spawn(post(&b));
    // The repeat waits (it cannot answer before the reply exists); then the reply comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !repeat.is_finished(),
        "the repeat answered before the reply was stored"
    );
    release.send(()).unwrap();

    let first = first.await.unwrap().unwrap();
    let repeat = repeat.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(repeat.status(), StatusCode::CREATED);
    let (first, repeat): (Value, Value) =
        (first.json().await.unwrap(), repeat.json().await.unwrap());
    assert_eq!(first, repeat);
    assert_eq!(first["reply"]["content"], "AI: hello");
    assert_eq!(*responder.calls.lock().unwrap(), ["hello"]);
    assert_eq!(stored(&a, &kim, &session).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_through_one_server_closes_the_sockets_on_both() {
    let Some((a, b, _)) = two_servers("several_servers_revocation", None).await else {
        return;
    };
    let kim = a.account("kim").await;
    let session = a.session(&kim, "watched").await;
    let mut on_a = a.socket(&kim, &session).await;
    let mut on_b = b.socket(&kim, &session).await;

    let changed = a
        .authed(Method::POST, "/api/auth/password/", &kim)
        .json(&json!({ "old_password": PASSWORD, "new_password": "another-harbour-43" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);

    for socket in [&mut on_a, &mut on_b] {
        assert_eq!(
            close_code(socket, Duration::from_secs(5)).await,
            (1008, "tokens revoked".to_owned())
        );
    }
}
