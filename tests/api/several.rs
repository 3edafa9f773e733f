//! Several servers on one PostgreSQL database (contract section 10): two servers, each with
//! its own pool, listener, turn engine and rooms, share a throwaway cluster's database.
//! These tests need PostgreSQL whatever `NARUTALK_TEST_BACKEND` says.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use narutalk_core::ai::{AiError, AiReply, AiRequest, Responder};
use narutalk_core::config::Secret;
use narutalk_core::fields::JsonObject;
use narutalk_server::ServeOptions;
use narutalk_server::settings::Settings;
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
    two_servers_with(test, responder, |_| {}, ServeOptions::default()).await
}

/// [`two_servers`] whose settings `configure` changes, with `options`.
async fn two_servers_with(
    test: &'static str,
    responder: Option<Arc<dyn Responder>>,
    configure: fn(&mut Settings),
    options: ServeOptions,
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
                    configure(settings);
                },
                options,
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

/// Both servers: 3 logins and 3 registrations a minute per client IP, 3 registrations a
/// minute per email, 10 failed logins per email (a token back every hour, so that none
/// comes back while the test runs), 2 posts a minute per user; the client IP taken from
/// `X-Forwarded-For` (the test is the proxy).
async fn throttled_servers(test: &'static str) -> Option<(TestApp, TestApp, String)> {
    two_servers_with(
        test,
        None,
        |settings| {
            settings.auth_throttle_per_minute = 3;
            settings.message_throttle_per_minute = 2;
            settings.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        },
        ServeOptions {
            login_failure_refill: Duration::from_secs(3600),
            ..ServeOptions::default()
        },
    )
    .await
}

/// `POST path` with `body` from the client at `ip`.
async fn post_from(app: &TestApp, path: &str, ip: &str, body: &Value) -> StatusCode {
    app.request(Method::POST, path)
        .header("x-forwarded-for", ip)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// Registers `email` with [`PASSWORD`] from the client at `ip`.
async fn register_from(app: &TestApp, email: &str, ip: &str) -> StatusCode {
    let username = email.split('@').next().unwrap();
    let body = json!({
        "username": username, "email": email,
        "password": PASSWORD, "password_confirm": PASSWORD,
    });
    post_from(app, "/api/auth/register/", ip, &body).await
}

/// Logs in as `email` with `password` from the client at `ip`.
async fn login_from(app: &TestApp, email: &str, password: &str, ip: &str) -> StatusCode {
    let body = json!({ "email": email, "password": password });
    post_from(app, "/api/auth/login/", ip, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_two_servers_meet_the_limits_of_one() {
    let Some((a, b, _)) = throttled_servers("several_servers_throttles").await else {
        return;
    };
    let servers = [&a, &b];
    let server = |n: usize| servers[n % 2];

    // Registrations per client IP: 3 a minute, whichever server answers.
    for n in 0..3 {
        let email = format!("user{n}@example.com");
        let registered = register_from(server(n), &email, "10.1.0.1").await;
        assert_eq!(registered, StatusCode::CREATED);
    }
    let fourth = register_from(server(3), "user3@example.com", "10.1.0.1").await;
    assert_eq!(
        fourth,
        StatusCode::TOO_MANY_REQUESTS,
        "registrations per IP"
    );

    // Registrations per email, from new IPs: the taken email still counts.
    for n in 0..2 {
        let ip = format!("10.2.0.{n}");
        let again = register_from(server(n), "user0@example.com", &ip).await;
        assert_eq!(again, StatusCode::BAD_REQUEST);
    }
    let third = register_from(server(2), "User0@Example.com", "10.2.0.9").await;
    assert_eq!(
        third,
        StatusCode::TOO_MANY_REQUESTS,
        "registrations per email"
    );

    // Logins per client IP, of unknown emails (their own budgets are untouched).
    for n in 0..3 {
        let email = format!("nobody{n}@example.com");
        let refused = login_from(server(n), &email, PASSWORD, "10.3.0.1").await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED);
    }
    let fourth = login_from(server(3), "user1@example.com", PASSWORD, "10.3.0.1").await;
    assert_eq!(fourth, StatusCode::TOO_MANY_REQUESTS, "logins per IP");

    // Message posts per user: 2 a minute over both servers.
    let kim = a.login("user1@example.com").await;
    let session = b.session(&kim, "limited").await;
    let post = |app: &TestApp| {
        app.authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            &kim,
        )
        .json(&json!({ "content": "hello" }))
        .send()
    };
    assert_eq!(post(&a).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(post(&b).await.unwrap().status(), StatusCode::CREATED);
    let third = post(&a).await.unwrap();
    assert_eq!(
        third.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "posts per user"
    );
    assert!(third.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_failure_budget_of_an_email_is_spent_across_both_servers() {
    let Some((a, b, _)) = throttled_servers("several_servers_failure_budget").await else {
        return;
    };
    let servers = [&a, &b];
    let server = |n: usize| servers[n % 2];
    assert_eq!(
        register_from(&a, "kim@example.com", "10.4.0.1").await,
        StatusCode::CREATED
    );

    // 9 wrong passwords, each from a new IP, alternating between the servers; a right one
    // spends nothing (its token is back before it answers); a tenth wrong one spends the
    // last token.
    for n in 0..9 {
        let ip = format!("10.5.0.{n}");
        let wrong = login_from(server(n), "kim@example.com", "violet-harbour-43", &ip).await;
        assert_eq!(wrong, StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let right = login_from(&b, "kim@example.com", PASSWORD, "10.5.1.1").await;
    assert_eq!(right, StatusCode::OK);
    let tenth = login_from(&a, "Kim@Example.com", "violet-harbour-43", "10.5.1.2").await;
    assert_eq!(tenth, StatusCode::UNAUTHORIZED);

    // Spent on both servers, even for the right password.
    for (app, ip) in [(&b, "10.5.1.3"), (&a, "10.5.1.4")] {
        let answer = app
            .request(Method::POST, "/api/auth/login/")
            .header("x-forwarded-for", ip)
            .json(&json!({ "email": "kim@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = answer.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&wait), "{wait}");
        assert_eq!(
            body(answer).await,
            json!({ "detail": format!("Request was throttled. Expected available in {wait} seconds.") })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_shared_throttle_fails_each_server_counts_alone_and_locks_nobody_out() {
    let Some((a, b, url)) = throttled_servers("several_servers_throttle_fails").await else {
        return;
    };
    // Every take of a shared bucket now fails.
    postgres_sql(&url, "DROP TABLE throttle_buckets").await;

    // A counts the logins of one IP itself: 3 a minute.
    for n in 0..3 {
        let email = format!("nobody{n}@example.com");
        let refused = login_from(&a, &email, PASSWORD, "10.6.0.1").await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED);
    }
    let fourth = login_from(&a, "nobody3@example.com", PASSWORD, "10.6.0.1").await;
    assert_eq!(fourth, StatusCode::TOO_MANY_REQUESTS);
    // B has counted none of them.
    let on_b = login_from(&b, "nobody4@example.com", PASSWORD, "10.6.0.1").await;
    assert_eq!(on_b, StatusCode::UNAUTHORIZED);
}
