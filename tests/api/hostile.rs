//! Hostile input (contract sections 1, 2 and 9): strings that look like SQL or carry
//! Korean, emoji and odd whitespace are stored verbatim, NUL is refused; forged, expired
//! and misused tokens are refused; oversized headers and deeply nested JSON are answered;
//! another user's session does not exist. No request here ever answers 500 or loses its
//! connection: every `send().await.unwrap()` below is also an assertion that the
//! connection held.

use narutalk_core::config::Secret;
use narutalk_server::ServeOptions;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_answer, body, spawn_app, spawn_app_with};

/// The signing secret of the apps that need to forge tokens.
const SECRET: &str = "hostile-tests-secret-of-more-than-32-bytes";
const NOT_FOUND: &str = "Not found.";

// ---- strings stored verbatim ----------------------------------------------------------

#[tokio::test]
async fn sql_looking_korean_and_emoji_account_fields_are_stored_verbatim() {
    // Arrange
    let app = spawn_app().await;
    let department = "'; DROP TABLE users; -- 심장내과 🫀";
    let cases = [
        ("robert--drop_table@x.y", "o'brien+1@example.com"),
        ("김철수", "kim@example.com"),
        ("1.0+1-1_@", "\"quoted\"@example.com"),
    ];

    for (username, email) in cases {
        // Act
        let registered = app
            .post_json(
                "/api/auth/register/",
                &json!({
                    "username": username, "email": email, "department": department,
                    "password": PASSWORD, "password_confirm": PASSWORD,
                }),
            )
            .await;
        let account = app.login(email).await;
        let profile = app
            .authed(Method::GET, "/api/auth/profile/", &account)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(registered.status(), StatusCode::CREATED, "{username}");
        let expected = json!({
            "id": account.id, "username": username, "email": email,
            "role": "user", "department": department, "is_verified": false,
        });
        assert_answer(profile, StatusCode::OK, expected).await;
    }
}

#[tokio::test]
async fn sql_looking_korean_and_emoji_chat_text_is_stored_verbatim_with_its_whitespace() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let title = "Robert'); DROP TABLE chat_sessions;-- 두통 😷";
    let content = "  SELECT * FROM users WHERE '1'='1';\n\t머리가 아파요 🤕 \u{200b}\r\n\n  ";

    // Act
    let created = app
        .authed(Method::POST, "/api/chat/sessions/", &account)
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap();
    let session = body(created).await["id"].as_str().unwrap().to_owned();
    let posted = app.say(&account, &session, content).await;
    let stored = app
        .authed(
            Method::GET,
            &format!("/api/chat/sessions/{session}/"),
            &account,
        )
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(posted["content"], content);
    assert_eq!(stored.status(), StatusCode::OK);
    let stored = body(stored).await;
    assert_eq!(stored["title"], title);
    assert_eq!(stored["messages"][0]["content"], content);
    assert_eq!(stored["message_count"], 2);
}

#[tokio::test]
async fn like_wildcards_in_a_login_email_match_nothing() {
    // Arrange
    let app = spawn_app().await;
    app.account("kim").await;

    for email in ["%@example.com", "k_m@example.com", "%", "' OR '1'='1"] {
        // Act
        let response = app
            .post_json(
                "/api/auth/login/",
                &json!({ "email": email, "password": PASSWORD }),
            )
            .await;

        // Assert
        assert_answer(
            response,
            StatusCode::UNAUTHORIZED,
            json!({ "detail": "No active account found with the given credentials" }),
        )
        .await;
    }
}

// ---- forged and misused tokens --------------------------------------------------------

#[tokio::test]
async fn an_alg_none_token_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let payload = account.access.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}, base64url.
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let signature = account.access.rsplit('.').next().unwrap();

    for forged in [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}.{signature}"),
    ] {
        // Act
        let response = profile_with(&app, &forged).await;

        // Assert
        assert_access_refused(response).await;
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused_as_access_and_as_refresh() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let other_secret = "another-secret-that-is-also-more-than-32-bytes";
    let access = resign(
        &account.access,
        jsonwebtoken::Algorithm::HS256,
        other_secret,
    );
    let refresh = resign(
        &account.refresh,
        jsonwebtoken::Algorithm::HS256,
        other_secret,
    );

    // Act
    let as_access = profile_with(&app, &access).await;
    let as_refresh = refresh_with(&app, &refresh).await;

    // Assert
    assert_access_refused(as_access).await;
    assert_refresh_refused(as_refresh, "Token is invalid").await;
}

#[tokio::test]
async fn a_token_signed_with_the_right_secret_but_another_algorithm_is_refused() {
    // Arrange
    let app = app_with_known_secret().await;
    let account = app.account("kim").await;
    assert_eq!(
        profile_with(
            &app,
            &resign(&account.access, jsonwebtoken::Algorithm::HS256, SECRET)
        )
        .await
        .status(),
        StatusCode::OK,
        "re-signing with HS256 and the right secret gives a working token"
    );

    for algorithm in [
        jsonwebtoken::Algorithm::HS512,
        jsonwebtoken::Algorithm::HS384,
    ] {
        // Act
        let as_access = profile_with(&app, &resign(&account.access, algorithm, SECRET)).await;
        let as_refresh = refresh_with(&app, &resign(&account.refresh, algorithm, SECRET)).await;

        // Assert
        assert_access_refused(as_access).await;
        assert_refresh_refused(as_refresh, "Token is invalid").await;
    }
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    // Arrange
    let app = app_with_known_secret().await;
    let account = app.account("kim").await;
    let mut claims = claims_of(&account.access);
    let now = now_seconds();
    claims["iat"] = json!(now - 2 * 3600);
    claims["exp"] = json!(now - 3600);
    let expired = sign(&claims, jsonwebtoken::Algorithm::HS256, SECRET);

    // Act
    let response = profile_with(&app, &expired).await;

    // Assert
    assert_access_refused(response).await;
}

#[tokio::test]
async fn a_token_whose_exp_is_now_is_already_expired() {
    // Arrange
    let app = app_with_known_secret().await;
    let account = app.account("kim").await;
    let mut claims = claims_of(&account.refresh);
    claims["exp"] = json!(now_seconds());
    let expiring = sign(&claims, jsonwebtoken::Algorithm::HS256, SECRET);

    // Act
    let response = refresh_with(&app, &expiring).await;

    // Assert
    assert_refresh_refused(response, "Token is expired").await;
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused_as_expired() {
    // Arrange
    let app = app_with_known_secret().await;
    let account = app.account("kim").await;
    let mut claims = claims_of(&account.refresh);
    let now = now_seconds();
    claims["iat"] = json!(now - 8 * 24 * 3600);
    claims["exp"] = json!(now - 24 * 3600);
    let expired = sign(&claims, jsonwebtoken::Algorithm::HS256, SECRET);

    // Act
    let refreshed = refresh_with(&app, &expired).await;
    let logged_out = app
        .post_json("/api/auth/logout/", &json!({ "refresh": expired }))
        .await;

    // Assert
    assert_refresh_refused(refreshed, "Token is expired").await;
    assert_refresh_refused(logged_out, "Token is expired").await;
}

#[tokio::test]
async fn a_token_naming_another_user_or_an_unknown_jti_is_refused() {
    // Arrange
    let app = app_with_known_secret().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let mut other_user = claims_of(&kim.refresh);
    other_user["user_id"] = json!(lee.id.to_string());
    let mut unknown_jti = claims_of(&kim.refresh);
    unknown_jti["jti"] = json!("0123456789abcdef0123456789abcdef");
    let mut missing_user = claims_of(&kim.access);
    missing_user["user_id"] = json!("999999");

    // Act
    let other_user = refresh_with(
        &app,
        &sign(&other_user, jsonwebtoken::Algorithm::HS256, SECRET),
    )
    .await;
    let unknown_jti = refresh_with(
        &app,
        &sign(&unknown_jti, jsonwebtoken::Algorithm::HS256, SECRET),
    )
    .await;
    let missing_user = profile_with(
        &app,
        &sign(&missing_user, jsonwebtoken::Algorithm::HS256, SECRET),
    )
    .await;

    // Assert
    assert_refresh_refused(other_user, "Token is invalid").await;
    assert_refresh_refused(unknown_jti, "Token is invalid").await;
    assert_access_refused(missing_user).await;
}

#[tokio::test]
async fn a_refresh_token_is_never_accepted_as_an_access_token() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = profile_with(&app, &account.refresh).await;

    // Assert
    assert_access_refused(response).await;
}

#[tokio::test]
async fn an_access_token_is_never_accepted_as_a_refresh_token() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let refreshed = refresh_with(&app, &account.access).await;
    let logged_out = app
        .post_json("/api/auth/logout/", &json!({ "refresh": account.access }))
        .await;

    // Assert
    assert_refresh_refused(refreshed, "Token is invalid").await;
    assert_refresh_refused(logged_out, "Token is invalid").await;
    assert_eq!(
        refresh_with(&app, &account.refresh).await.status(),
        StatusCode::OK,
        "the refused attempts did not touch the real refresh token"
    );
}

#[tokio::test]
async fn a_token_with_a_tampered_payload_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let mut parts: Vec<&str> = kim.access.split('.').collect();
    let lees_payload = lee.access.split('.').nth(1).unwrap();
    parts[1] = lees_payload;
    let tampered = parts.join(".");

    // Act
    let response = profile_with(&app, &tampered).await;

    // Assert
    assert_access_refused(response).await;
}

#[tokio::test]
async fn a_one_mebibyte_authorization_header_is_answered_without_a_500_or_a_dropped_connection() {
    // Arrange
    let app = spawn_app().await;
    let huge = format!("Bearer {}", "a".repeat(1024 * 1024));

    // Act
    let response = app
        .request(Method::GET, "/api/auth/profile/")
        .header("authorization", huge)
        .send()
        .await
        .unwrap();

    // Assert: hyper refuses a request head larger than its read buffer, with the standard
    // status, before any handler sees it; the server stays up.
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let health = app.get("/api/health/").await;
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_authorization_header_just_over_the_token_limit_is_a_bad_token() {
    // Arrange
    let app = spawn_app().await;
    let long = "a".repeat(9 * 1024);

    // Act
    let response = profile_with(&app, &long).await;

    // Assert
    assert_access_refused(response).await;
}

#[tokio::test]
async fn an_authorization_header_that_is_not_utf8_is_a_bad_token() {
    // Arrange
    let app = spawn_app().await;
    let value = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();

    // Act
    let response = app
        .request(Method::GET, "/api/auth/profile/")
        .header("authorization", value)
        .send()
        .await
        .unwrap();

    // Assert
    assert_access_refused(response).await;
}

// ---- hostile bodies -------------------------------------------------------------------

#[tokio::test]
async fn deeply_nested_json_answers_a_json_parse_error() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let depth = 7000;
    let nested_arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let inside_a_field = format!(
        "{{\"content\": \"hi\", \"metadata\": {}1{}}}",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    let session = app.session(&account, "Headache").await;
    let cases = [
        ("/api/auth/login/".to_owned(), nested_arrays),
        ("/api/auth/register/".to_owned(), nested_objects),
        (
            format!("/api/chat/sessions/{session}/messages/"),
            inside_a_field,
        ),
    ];

    for (path, raw) in cases {
        // Act
        let response = app
            .authed(Method::POST, &path, &account)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let answer = body(response).await;
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.starts_with("JSON parse error - "), "{detail}");
        assert_eq!(answer, json!({ "detail": detail }));
    }
}

#[tokio::test]
async fn nul_is_refused_in_every_string_and_other_control_characters_are_kept() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let session = app.session(&account, "Headache").await;

    // Act
    let username = app
        .post_json(
            "/api/auth/register/",
            &json!({
                "username": "kim\u{0}", "email": "k\u{0}@example.com",
                "password": PASSWORD, "password_confirm": PASSWORD,
            }),
        )
        .await;
    let login = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com\u{0}", "password": PASSWORD }),
        )
        .await;
    let department = app
        .authed(Method::PATCH, "/api/auth/profile/", &account)
        .json(&json!({ "department": "a\u{0}b\u{1b}[31m" }))
        .send()
        .await
        .unwrap();
    let controls = app
        .authed(Method::PATCH, "/api/auth/profile/", &account)
        .json(&json!({ "department": "a\u{1}b\u{1b}[31m" }))
        .send()
        .await
        .unwrap();
    let title = app
        .authed(Method::POST, "/api/chat/sessions/", &account)
        .json(&json!({ "title": "\u{0}" }))
        .send()
        .await
        .unwrap();
    let message = app
        .authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            &account,
        )
        .json(&json!({ "content": "두통\u{0}", "metadata": { "k": [{ "\u{0}": 1 }] } }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        username,
        StatusCode::BAD_REQUEST,
        json!({ "username": [NUL_REFUSED], "email": [NUL_REFUSED] }),
    )
    .await;
    assert_answer(
        login,
        StatusCode::BAD_REQUEST,
        json!({ "email": [NUL_REFUSED] }),
    )
    .await;
    assert_answer(
        department,
        StatusCode::BAD_REQUEST,
        json!({ "department": [NUL_REFUSED] }),
    )
    .await;
    assert_eq!(controls.status(), StatusCode::OK);
    assert_eq!(body(controls).await["department"], "a\u{1}b\u{1b}[31m");
    assert_answer(
        title,
        StatusCode::BAD_REQUEST,
        json!({ "title": [NUL_REFUSED] }),
    )
    .await;
    assert_answer(
        message,
        StatusCode::BAD_REQUEST,
        json!({ "content": [NUL_REFUSED], "metadata": [NUL_REFUSED] }),
    )
    .await;
}

const NUL_REFUSED: &str = "Null characters are not allowed.";

// ---- other users' sessions and malformed ids ------------------------------------------

#[tokio::test]
async fn another_users_session_answers_404_to_every_method_and_stays_intact() {
    // Arrange
    let app = spawn_app().await;
    let owner = app.account("kim").await;
    let intruder = app.account("lee").await;
    let session = app.session(&owner, "Private").await;
    app.say(&owner, &session, "비밀").await;
    let detail = format!("/api/chat/sessions/{session}/");
    let messages = format!("/api/chat/sessions/{session}/messages/");

    for (method, path, request) in [
        (Method::GET, detail.as_str(), None),
        (
            Method::PATCH,
            detail.as_str(),
            Some(json!({ "title": "Mine now" })),
        ),
        (Method::DELETE, detail.as_str(), None),
        (Method::GET, messages.as_str(), None),
        (
            Method::POST,
            messages.as_str(),
            Some(json!({ "content": "hello" })),
        ),
    ] {
        // Act
        let mut builder = app.authed(method.clone(), path, &intruder);
        if let Some(request) = request {
            builder = builder.json(&request);
        }
        let response = builder.send().await.unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::NOT_FOUND,
            json!({ "detail": NOT_FOUND }),
        )
        .await;
    }
    let stored = app
        .authed(Method::GET, &detail, &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    let stored = body(stored).await;
    assert_eq!(stored["title"], "Private");
    assert_eq!(stored["message_count"], 2);
}

#[tokio::test]
async fn a_malformed_or_unknown_session_id_answers_404() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    for id in [
        "not-a-uuid",
        "6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4",
        "6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4bb",
        "6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4g",
        "%27%20OR%201%3D1--",
        "1",
        "..",
        "%00",
        "6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4b",
    ] {
        for (method, path) in [
            (Method::GET, format!("/api/chat/sessions/{id}/")),
            (Method::PATCH, format!("/api/chat/sessions/{id}/")),
            (Method::DELETE, format!("/api/chat/sessions/{id}/")),
            (Method::GET, format!("/api/chat/sessions/{id}/messages/")),
            (Method::POST, format!("/api/chat/sessions/{id}/messages/")),
        ] {
            // Act
            let response = app
                .authed(method.clone(), &path, &account)
                .json(&json!({ "title": "x", "content": "x" }))
                .send()
                .await
                .unwrap();

            // Assert
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(body(response).await, json!({ "detail": NOT_FOUND }));
        }
    }
}

// ---- helpers --------------------------------------------------------------------------

async fn app_with_known_secret() -> TestApp {
    spawn_app_with(
        |config| config.core.secret_key = Some(Secret::new(SECRET)),
        ServeOptions::default(),
    )
    .await
}

fn now_seconds() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// The claims of a token, read without checking its signature.
fn claims_of(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

fn sign(claims: &Value, algorithm: jsonwebtoken::Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The same claims as `token`, signed again with `algorithm` and `secret`.
fn resign(token: &str, algorithm: jsonwebtoken::Algorithm, secret: &str) -> String {
    sign(&claims_of(token), algorithm, secret)
}

async fn profile_with(app: &TestApp, access: &str) -> Response {
    app.request(Method::GET, "/api/auth/profile/")
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

async fn refresh_with(app: &TestApp, refresh: &str) -> Response {
    app.post_json("/api/auth/token/refresh/", &json!({ "refresh": refresh }))
        .await
}

async fn assert_access_refused(response: Response) {
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"api\""
    );
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Given token not valid for any token type", "code": "token_not_valid" }),
    )
    .await;
}

async fn assert_refresh_refused(response: Response, detail: &str) {
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": detail, "code": "token_not_valid" }),
    )
    .await;
}
