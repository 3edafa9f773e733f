//! Throttles and the hashing queue (contract sections 1, 1.1, 2 and 3): login and register
//! are limited per client IP and per lower-cased email, in separate buckets; the client IP
//! comes from `X-Forwarded-For` only behind a trusted proxy; message posting is limited
//! per user; a full password-hashing queue answers 503.

use narutalk_server::ServeOptions;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_answer, body, spawn_app, spawn_app_with};

const BAD_CREDENTIALS: &str = "No active account found with the given credentials";

#[tokio::test]
async fn the_fourth_login_from_one_ip_in_a_minute_answers_429_with_retry_after() {
    // Arrange
    let app = throttled_app(false).await;
    for n in 0..3 {
        let response = login(&app, &format!("user{n}@example.com"), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // Act
    let response = login(&app, "user3@example.com", None).await;

    // Assert
    let seconds = assert_throttled(response).await;
    assert!(
        (1..=20).contains(&seconds),
        "3 a minute refill one every 20 s: {seconds}"
    );
}

#[tokio::test]
async fn every_login_attempt_counts_whatever_it_answered() {
    // Arrange
    let app = throttled_app(false).await;
    let registered = register(&app, "kim", "kim@example.com", None).await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let successful = login(&app, "kim@example.com", None).await;
    let invalid = app.post_json("/api/auth/login/", &json!({})).await;
    let wrong_method = app
        .request(Method::GET, "/api/auth/login/")
        .send()
        .await
        .unwrap();

    // Act
    let response = login(&app, "kim@example.com", None).await;

    // Assert
    assert_eq!(successful.status(), StatusCode::OK);
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_throttled(response).await;
}

#[tokio::test]
async fn the_throttle_is_checked_before_the_method_and_the_body() {
    // Arrange
    let app = throttled_app(false).await;
    for _ in 0..3 {
        app.post_json("/api/auth/login/", &json!({})).await;
    }

    // Act
    let wrong_method = app
        .request(Method::PUT, "/api/auth/login/")
        .send()
        .await
        .unwrap();
    let not_json = app
        .request(Method::POST, "/api/auth/login/")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();

    // Assert
    assert_throttled(wrong_method).await;
    assert_throttled(not_json).await;
}

#[tokio::test]
async fn logins_are_counted_per_lower_cased_email_across_client_ips() {
    // Arrange
    let app = throttled_app(true).await;
    for (n, email) in ["kim@example.com", "KIM@example.com", " Kim@Example.COM "]
        .into_iter()
        .enumerate()
    {
        let response = login(&app, email, Some(&format!("10.0.0.{n}"))).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // Act
    let same_email = login(&app, "kim@EXAMPLE.com", Some("10.0.0.9")).await;
    let other_email = login(&app, "lee@example.com", Some("10.0.0.10")).await;

    // Assert
    assert_throttled(same_email).await;
    assert_answer(
        other_email,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": BAD_CREDENTIALS }),
    )
    .await;
}

#[tokio::test]
async fn login_and_register_are_counted_in_separate_buckets() {
    // Arrange
    let app = throttled_app(true).await;
    for n in 0..3 {
        let ip = format!("10.0.0.{n}");
        login(&app, "kim@example.com", Some(&ip)).await;
        login(&app, &format!("other{n}@example.com"), Some("10.0.1.1")).await;
    }

    // Act
    let register_same_email = register(&app, "kim", "kim@example.com", Some("10.0.2.1")).await;
    let register_same_ip = register(&app, "lee", "lee@example.com", Some("10.0.1.1")).await;
    let login_same_email = login(&app, "kim@example.com", Some("10.0.3.1")).await;
    let login_same_ip = login(&app, "new@example.com", Some("10.0.1.1")).await;

    // Assert
    assert_eq!(register_same_email.status(), StatusCode::CREATED);
    assert_eq!(register_same_ip.status(), StatusCode::CREATED);
    assert_throttled(login_same_email).await;
    assert_throttled(login_same_ip).await;
}

#[tokio::test]
async fn the_fourth_registration_from_one_ip_answers_429() {
    // Arrange
    let app = throttled_app(false).await;
    for n in 0..3 {
        let response = app
            .post_json(
                "/api/auth/register/",
                &json!({ "username": format!("user{n}"), "email": format!("user{n}@example.com") }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    // Act
    let response = register(&app, "kim", "kim@example.com", None).await;

    // Assert
    assert_throttled(response).await;
}

#[tokio::test]
async fn registrations_are_counted_per_lower_cased_email_across_client_ips() {
    // Arrange
    let app = throttled_app(true).await;
    for n in 0..3 {
        let response = app
            .request(Method::POST, "/api/auth/register/")
            .header("x-forwarded-for", format!("10.0.0.{n}"))
            .json(&json!({ "email": "Kim@Example.com" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    // Act
    let response = register(&app, "kim", "kim@example.com", Some("10.0.0.9")).await;

    // Assert
    assert_throttled(response).await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_an_untrusted_peer() {
    // Arrange
    let app = throttled_app(false).await;
    for n in 0..3 {
        let email = format!("user{n}@example.com");
        login(&app, &email, Some(&format!("10.0.0.{n}"))).await;
    }

    // Act
    let response = login(&app, "user9@example.com", Some("10.0.0.9")).await;

    // Assert
    assert_throttled(response).await;
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_names_the_client() {
    // Arrange
    let app = throttled_app(true).await;
    for n in 0..3 {
        let email = format!("user{n}@example.com");
        let forwarded = "203.0.113.7, 10.0.0.1";
        let response = login(&app, &email, Some(forwarded)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // Act
    let same_client = login(&app, "user3@example.com", Some("203.0.113.7")).await;
    let same_proxy_hop = login(&app, "user4@example.com", Some("203.0.113.8, 10.0.0.1")).await;
    let the_proxy_itself = login(&app, "user5@example.com", None).await;

    // Assert
    assert_throttled(same_client).await;
    assert_eq!(same_proxy_hop.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(the_proxy_itself.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_garbage_x_forwarded_for_from_a_trusted_proxy_counts_as_the_proxy() {
    // Arrange
    let app = throttled_app(true).await;
    for n in 0..3 {
        login(&app, &format!("user{n}@example.com"), Some("not-an-ip")).await;
    }

    // Act
    let response = login(&app, "user3@example.com", None).await;

    // Assert
    assert_throttled(response).await;
}

#[tokio::test]
async fn message_posting_is_throttled_per_user() {
    // Arrange
    let app = spawn_app_with(
        |config| config.message_throttle_per_minute = 2,
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let kims = app.session(&kim, "Headache").await;
    let lees = app.session(&lee, "Fever").await;
    app.say(&kim, &kims, "first").await;
    app.say(&kim, &kims, "second").await;

    // Act
    let third = app
        .authed(
            Method::POST,
            &format!("/api/chat/sessions/{kims}/messages/"),
            &kim,
        )
        .json(&json!({ "content": "third" }))
        .send()
        .await
        .unwrap();
    let other_user = app.say(&lee, &lees, "first").await;

    // Assert
    let seconds = assert_throttled(third).await;
    assert!(
        (1..=30).contains(&seconds),
        "2 a minute refill one every 30 s: {seconds}"
    );
    assert_eq!(other_user["content"], "first");
    let stored = app
        .authed(Method::GET, &format!("/api/chat/sessions/{kims}/"), &kim)
        .send()
        .await
        .unwrap();
    assert_eq!(
        body(stored).await["message_count"],
        4,
        "the throttled post stored nothing"
    );
    let reading = app
        .authed(
            Method::GET,
            &format!("/api/chat/sessions/{kims}/messages/"),
            &kim,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reading.status(), StatusCode::OK, "reading is not throttled");
}

#[tokio::test]
async fn a_full_password_hashing_queue_answers_503_with_retry_after_1() {
    // Arrange: far more logins at once than the cores plus the 64 waiting places can take.
    let app = spawn_app().await;
    let logins = (0..200).map(|n| {
        let request = app
            .request(Method::POST, "/api/auth/login/")
            .json(&json!({ "email": format!("nobody{n}@example.com"), "password": PASSWORD }));
        async move { request.send().await.unwrap() }
    });

    // Act
    let responses = join_all(logins).await;

    // Assert
    let mut refused = 0;
    for response in responses {
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(response.headers()["retry-after"], "1");
                assert_eq!(
                    body(response).await,
                    json!({ "detail": "Service temporarily unavailable, try again later." })
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "no login was refused");
}

// ---- helpers --------------------------------------------------------------------------

/// An app allowing 3 logins and 3 registrations a minute per IP and per email, with
/// 127.0.0.1 as a trusted proxy when `behind_proxy`.
async fn throttled_app(behind_proxy: bool) -> TestApp {
    spawn_app_with(
        |config| {
            config.auth_throttle_per_minute = 3;
            if behind_proxy {
                config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        },
        ServeOptions::default(),
    )
    .await
}

async fn login(app: &TestApp, email: &str, forwarded_for: Option<&str>) -> Response {
    let mut request = app
        .request(Method::POST, "/api/auth/login/")
        .json(&json!({ "email": email, "password": PASSWORD }));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    request.send().await.unwrap()
}

async fn register(
    app: &TestApp,
    username: &str,
    email: &str,
    forwarded_for: Option<&str>,
) -> Response {
    let mut request = app
        .request(Method::POST, "/api/auth/register/")
        .json(&json!({
            "username": username, "email": email,
            "password": PASSWORD, "password_confirm": PASSWORD,
        }));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    request.send().await.unwrap()
}

/// Asserts the contract's 429 and answers its N, the same in `Retry-After` and the body.
async fn assert_throttled(response: Response) -> u64 {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let seconds: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1);
    let answer: Value = body(response).await;
    assert_eq!(
        answer,
        json!({ "detail": format!("Request was throttled. Expected available in {seconds} seconds.") })
    );
    seconds
}

/// Runs every future at once, each on its own task, and answers their outputs in order.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
