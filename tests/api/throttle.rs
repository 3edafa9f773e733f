//! Throttles and the hashing queue (contract sections 1, 1.1, 2, 3 and 9): login and
//! register are limited per client IP, register also per lower-cased email, in separate
//! buckets; login failures are limited per lower-cased email (known or not) or per device
//! token; the client IP comes from `X-Forwarded-For` only behind a trusted proxy; message
//! posting is limited per user; a full password-hashing queue answers 503.

use std::time::Duration;

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
async fn ten_wrong_passwords_for_an_email_make_the_eleventh_attempt_429_from_any_ip() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    let spellings = ["kim@example.com", "KIM@example.com", " Kim@Example.COM "];
    for n in 0..10 {
        let response = attempt(&app, spellings[n % 3], WRONG, None, &mut ips).await;
        assert_bad_credentials(response).await;
    }

    // Act
    let wrong = attempt(&app, "kim@EXAMPLE.com", WRONG, None, &mut ips).await;
    let right = attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await;
    let other_email = attempt(&app, "lee@example.com", WRONG, None, &mut ips).await;

    // Assert
    let seconds = assert_throttled(wrong).await;
    assert!(
        (1..=3600).contains(&seconds),
        "one back every hour in this app: {seconds}"
    );
    assert_throttled(right).await;
    assert_bad_credentials(other_email).await;
}

#[tokio::test]
async fn an_unknown_email_is_throttled_exactly_like_a_known_one() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;

    for email in ["kim@example.com", "nobody@example.com"] {
        // Act
        let mut answers = Vec::new();
        for _ in 0..11 {
            let response = attempt(&app, email, WRONG, None, &mut ips).await;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").is_some();
            answers.push((status, retry_after, body(response).await));
        }

        // Assert
        let mut expected = vec![
            (
                StatusCode::UNAUTHORIZED,
                false,
                json!({ "detail": BAD_CREDENTIALS })
            );
            10
        ];
        let last = answers[10].2["detail"].as_str().unwrap().to_owned();
        assert!(
            last.starts_with("Request was throttled. Expected available in "),
            "{last}"
        );
        expected.push((
            StatusCode::TOO_MANY_REQUESTS,
            true,
            json!({ "detail": last }),
        ));
        assert_eq!(answers, expected, "{email}");
    }
}

#[tokio::test]
async fn field_errors_and_successful_logins_spend_nothing_of_the_budget() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    for body in [
        json!({ "email": "kim@example.com" }),
        json!({ "email": "kim@example.com", "password": "" }),
        json!({ "email": "kim@example.com", "password": 5 }),
        json!({ "email": "kim@example.com", "password": "a\u{0}b" }),
    ] {
        for _ in 0..3 {
            let response = post_login(&app, &body, &mut ips).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        }
    }
    for _ in 0..3 {
        let response = attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    for _ in 0..10 {
        let response = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;
        assert_bad_credentials(response).await;
    }

    // Act
    let eleventh = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;

    // Assert
    assert_throttled(eleventh).await;
}

#[tokio::test]
async fn parallel_wrong_logins_cannot_all_pass_on_the_last_token_of_the_budget() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    for _ in 0..9 {
        let response = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;
        assert_bad_credentials(response).await;
    }
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            app.request(Method::POST, "/api/auth/login/")
                .header("x-forwarded-for", ips.next())
                .json(&json!({ "email": "kim@example.com", "password": WRONG }))
        })
        .collect();

    // Act
    let responses = join_all(
        attempts
            .into_iter()
            .map(|request| async move { request.send().await.unwrap().status() }),
    )
    .await;

    // Assert
    let failed = responses
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = responses
        .iter()
        .filter(|status| **status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((failed, throttled), (1, 7), "{responses:?}");
}

#[tokio::test]
async fn a_valid_device_token_logs_in_while_the_accounts_budget_is_spent() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    let device = device_of(attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await).await;
    for _ in 0..10 {
        let response = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;
        assert_bad_credentials(response).await;
    }
    let spent = attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await;
    assert_throttled(spent).await;

    // Act
    let with_device = attempt(
        &app,
        "kim@example.com",
        PASSWORD,
        Some(json!(device)),
        &mut ips,
    )
    .await;
    let wrong_with_device = attempt(
        &app,
        "kim@example.com",
        WRONG,
        Some(json!(device)),
        &mut ips,
    )
    .await;
    let without_device = attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await;

    // Assert
    assert_eq!(with_device.status(), StatusCode::OK);
    assert_eq!(
        device_of(with_device).await,
        device,
        "the same token answers back"
    );
    assert_bad_credentials(wrong_with_device).await;
    assert_throttled(without_device).await;
}

#[tokio::test]
async fn a_device_token_of_another_account_or_not_a_token_is_ignored() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    register_from(&app, "lee", &mut ips).await;
    let lees = device_of(attempt(&app, "lee@example.com", PASSWORD, None, &mut ips).await).await;
    for _ in 0..10 {
        let response = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;
        assert_bad_credentials(response).await;
    }

    for device in [
        json!(lees),
        json!("A".repeat(43)),
        json!("garbage"),
        json!(5),
        json!(null),
        json!({"device": lees}),
    ] {
        // Act
        let response = attempt(
            &app,
            "kim@example.com",
            PASSWORD,
            Some(device.clone()),
            &mut ips,
        )
        .await;

        // Assert
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{device}");
        assert_throttled(response).await;
    }
    let lee = attempt(
        &app,
        "lee@example.com",
        PASSWORD,
        Some(json!(lees)),
        &mut ips,
    )
    .await;
    assert_eq!(device_of(lee).await, lees, "still lee's");
}

#[tokio::test]
async fn a_device_token_whose_budget_is_spent_is_ignored_until_it_refills() {
    // Arrange
    let app = throttled_app(true).await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;
    let device = device_of(attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await).await;
    for _ in 0..10 {
        let response = attempt(
            &app,
            "kim@example.com",
            WRONG,
            Some(json!(device)),
            &mut ips,
        )
        .await;
        assert_bad_credentials(response).await;
    }

    // Act: the device's budget is spent, so these count against the email's (still full).
    let ignored_wrong = attempt(
        &app,
        "kim@example.com",
        WRONG,
        Some(json!(device)),
        &mut ips,
    )
    .await;
    let ignored_right = attempt(
        &app,
        "kim@example.com",
        PASSWORD,
        Some(json!(device)),
        &mut ips,
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = attempt(
            &app,
            "kim@example.com",
            WRONG,
            Some(json!(device)),
            &mut ips,
        )
        .await;
        statuses.push(response.status());
    }

    // Assert
    assert_bad_credentials(ignored_wrong).await;
    assert_eq!(ignored_right.status(), StatusCode::OK);
    assert_ne!(
        device_of(ignored_right).await,
        device,
        "an ignored token is not answered back"
    );
    let mut expected = vec![StatusCode::UNAUTHORIZED; 9];
    expected.push(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses, expected);
}

#[tokio::test]
async fn with_the_auth_throttles_off_failures_are_never_throttled() {
    // Arrange
    let app = spawn_app().await;
    let mut ips = Ips::default();
    register_from(&app, "kim", &mut ips).await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = attempt(&app, "kim@example.com", WRONG, None, &mut ips).await;
        statuses.push(response.status());
    }
    let right = attempt(&app, "kim@example.com", PASSWORD, None, &mut ips).await;

    // Assert
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 12]);
    assert_eq!(right.status(), StatusCode::OK);
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
    // Three failures are well within the email's budget of ten.
    assert_eq!(login_same_email.status(), StatusCode::OK);
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

/// A password that breaks no rule but is not [`PASSWORD`].
const WRONG: &str = "violet-harbour-43";

/// Client addresses, a new one for each request, so that the per-IP throttle (3 a minute
/// in [`throttled_app`]) never answers before the budget under test.
#[derive(Default)]
struct Ips(u32);

impl Ips {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("10.9.{}.{}", self.0 / 250, self.0 % 250 + 1)
    }
}

/// Registers `username` (email `username@example.com`) with [`PASSWORD`] from a new IP.
async fn register_from(app: &TestApp, username: &str, ips: &mut Ips) {
    let email = format!("{username}@example.com");
    let response = register(app, username, &email, Some(&ips.next())).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// A login attempt from a new IP, with `device` in the body when given.
async fn attempt(
    app: &TestApp,
    email: &str,
    password: &str,
    device: Option<Value>,
    ips: &mut Ips,
) -> Response {
    let mut request = json!({ "email": email, "password": password });
    if let Some(device) = device {
        request["device"] = device;
    }
    post_login(app, &request, ips).await
}

/// Posts `request` to the login endpoint from a new IP.
async fn post_login(app: &TestApp, request: &Value, ips: &mut Ips) -> Response {
    app.request(Method::POST, "/api/auth/login/")
        .header("x-forwarded-for", ips.next())
        .json(request)
        .send()
        .await
        .unwrap()
}

/// The `device` of a successful login.
async fn device_of(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["device"].as_str().unwrap().to_owned()
}

/// Asserts the contract's one 401 for a failed login.
async fn assert_bad_credentials(response: Response) {
    assert!(response.headers().get("retry-after").is_none());
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": BAD_CREDENTIALS }),
    )
    .await;
}

/// An app allowing 3 logins and 3 registrations a minute per IP, 3 registrations a minute
/// per email and 10 failed logins per email or device token, with 127.0.0.1 as a trusted
/// proxy when `behind_proxy`. The failure budgets get a token back only every hour (36 s
/// in the contract), so that none comes back while a test runs, however slow the machine.
async fn throttled_app(behind_proxy: bool) -> TestApp {
    spawn_app_with(
        |config| {
            config.auth_throttle_per_minute = 3;
            if behind_proxy {
                config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        },
        ServeOptions {
            login_failure_refill: Duration::from_secs(3600),
            ..ServeOptions::default()
        },
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
