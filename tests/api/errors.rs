//! The error answers of contract section 1 and the order of checks of section 1.1, against
//! the real server: every row of the table, the field messages of section 1.2 for values
//! of the wrong JSON type, trailing slashes, `HEAD` and `OPTIONS`, and the headers every
//! response carries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use narutalk_server::ServeOptions;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_answer, body, spawn_app, spawn_app_with};

const NOT_FOUND: &str = "Not found.";
const NOT_PROVIDED: &str = "Authentication credentials were not provided.";
const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const NOT_A_STRING: &str = "Not a valid string.";
const NOT_A_BOOLEAN: &str = "Must be a valid boolean.";
const WWW_AUTHENTICATE: &str = "Bearer realm=\"api\"";

/// Every endpoint that needs an access token, with a method it allows.
const AUTHENTICATED: [(&str, &str); 9] = [
    ("GET", "/api/auth/profile/"),
    ("PATCH", "/api/auth/profile/"),
    ("POST", "/api/auth/password/"),
    ("GET", "/api/auth/dashboard/"),
    ("GET", "/api/chat/sessions/"),
    (
        "GET",
        "/api/chat/sessions/6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4b/",
    ),
    (
        "POST",
        "/api/chat/sessions/6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4b/messages/",
    ),
    ("POST", "/api/proxy/search/"),
    ("OPTIONS", "/api/chat/sessions/"),
];

// ---- 404 ------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_answer_the_404_json_body() {
    // Arrange
    let app = spawn_app().await;

    for path in [
        "/index.html",
        "/api/",
        "/api/auth/",
        "/api//auth/login/",
        "/api/auth/login//",
        "/api/auth/login/extra/",
        "/api/chat/sessions/x/messages/y/",
        "/API/auth/login/",
        "/api/auth/login.json",
    ] {
        // Act
        let response = app.request(Method::POST, path).send().await.unwrap();

        // Assert
        assert_eq!(
            response.headers()["content-type"],
            "application/json; charset=utf-8",
            "{path}"
        );
        assert_answer(
            response,
            StatusCode::NOT_FOUND,
            json!({ "detail": NOT_FOUND }),
        )
        .await;
    }
}

#[tokio::test]
async fn an_unknown_path_answers_404_before_authentication_and_body_checks() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 16,
        ServeOptions::default(),
    )
    .await;

    // Act
    let response = app
        .request(Method::POST, "/api/chat/unknown/")
        .header("content-type", "text/plain")
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::NOT_FOUND,
        json!({ "detail": NOT_FOUND }),
    )
    .await;
}

// ---- 401 ------------------------------------------------------------------------------

#[tokio::test]
async fn every_authenticated_endpoint_without_credentials_answers_401_with_www_authenticate() {
    // Arrange
    let app = spawn_app().await;

    for (method, path) in AUTHENTICATED {
        // Act
        let response = app
            .request(Method::from_bytes(method.as_bytes()).unwrap(), path)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["www-authenticate"], WWW_AUTHENTICATE);
        assert_eq!(body(response).await, json!({ "detail": NOT_PROVIDED }));
    }
}

#[tokio::test]
async fn an_authorization_header_of_another_scheme_counts_as_no_credentials() {
    // Arrange
    let app = spawn_app().await;

    for authorization in ["Token abc", "Basic a2ltOnB3", "bearer abc"] {
        // Act
        let response = app
            .request(Method::GET, "/api/auth/profile/")
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.headers()["www-authenticate"], WWW_AUTHENTICATE);
        assert_answer(
            response,
            StatusCode::UNAUTHORIZED,
            json!({ "detail": NOT_PROVIDED }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_bad_access_token_answers_token_not_valid_with_www_authenticate() {
    // Arrange
    let app = spawn_app().await;

    for (method, path) in AUTHENTICATED {
        // Act
        let response = app
            .request(Method::from_bytes(method.as_bytes()).unwrap(), path)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["www-authenticate"], WWW_AUTHENTICATE);
        assert_eq!(
            body(response).await,
            json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            })
        );
    }
}

#[tokio::test]
async fn on_the_read_endpoints_a_bad_token_is_reported_before_bad_ids_filters_and_pages() {
    // Arrange: the reads check their token in the same blocking call as the read, after
    // the query was parsed; the order of contract section 1.1 must not change with that.
    let app = spawn_app().await;
    let bad_reads = [
        "/api/chat/sessions/?category=astrology",
        "/api/chat/sessions/?page=0",
        "/api/chat/sessions/not-a-uuid/",
        "/api/chat/sessions/not-a-uuid/messages/?page=x",
        "/api/auth/dashboard/",
    ];

    for path in bad_reads {
        // Act
        let response = app
            .request(Method::GET, path)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            body(response).await,
            json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            }),
            "{path}"
        );
    }

    // With a good token, the same requests get their own errors.
    let account = app.account("reader").await;
    let filter = app
        .authed(
            Method::GET,
            "/api/chat/sessions/?category=astrology",
            &account,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(filter.status(), StatusCode::BAD_REQUEST);
    let page = app
        .authed(Method::GET, "/api/chat/sessions/?page=0", &account)
        .send()
        .await
        .unwrap();
    assert_answer(
        page,
        StatusCode::NOT_FOUND,
        json!({ "detail": "Invalid page." }),
    )
    .await;
    let id = app
        .authed(Method::GET, "/api/chat/sessions/not-a-uuid/", &account)
        .send()
        .await
        .unwrap();
    assert_answer(id, StatusCode::NOT_FOUND, json!({ "detail": NOT_FOUND })).await;
}

#[tokio::test]
async fn a_bearer_token_after_several_spaces_or_a_tab_is_read_as_simplejwt_reads_it() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    for separator in ["  ", "\t", " \t "] {
        // Act
        let response = app
            .request(Method::GET, "/api/auth/profile/")
            .header(
                "authorization",
                format!("Bearer{separator}{}", account.access),
            )
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{separator:?}");
    }
}

#[tokio::test]
async fn a_bearer_header_without_exactly_one_token_is_a_bad_token() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    for authorization in [
        "Bearer".to_owned(),
        format!("Bearer {} extra", account.access),
    ] {
        // Act
        let response = app
            .request(Method::GET, "/api/auth/profile/")
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.headers()["www-authenticate"], WWW_AUTHENTICATE);
        assert_answer(
            response,
            StatusCode::UNAUTHORIZED,
            json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            }),
        )
        .await;
    }
}

// ---- 405 ------------------------------------------------------------------------------

#[tokio::test]
async fn a_method_not_allowed_answers_405_with_allow_and_the_drf_text() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let session = app.session(&account, "Headache").await;
    let session_path = format!("/api/chat/sessions/{session}/");
    let cases = [
        ("PATCH", "/api/auth/login/", "POST, OPTIONS"),
        ("GET", "/api/auth/register", "POST, OPTIONS"),
        ("PUT", "/api/auth/token/refresh/", "POST, OPTIONS"),
        ("DELETE", "/api/health/", "GET, HEAD, OPTIONS"),
        ("POST", "/api/auth/dashboard/", "GET, HEAD, OPTIONS"),
        (
            "DELETE",
            "/api/auth/profile/",
            "GET, PUT, PATCH, HEAD, OPTIONS",
        ),
        (
            "PUT",
            session_path.as_str(),
            "GET, PATCH, DELETE, HEAD, OPTIONS",
        ),
        ("DELETE", "/api/chat/sessions/", "GET, POST, HEAD, OPTIONS"),
    ];

    for (method, path, allow) in cases {
        // Act
        let response = app
            .authed(
                Method::from_bytes(method.as_bytes()).unwrap(),
                path,
                &account,
            )
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_answer(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "detail": format!("Method \"{method}\" not allowed.") }),
        )
        .await;
    }
}

#[tokio::test]
async fn authentication_is_checked_before_the_method() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::DELETE, "/api/chat/sessions/")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.headers()["www-authenticate"], WWW_AUTHENTICATE);
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": NOT_PROVIDED }),
    )
    .await;
}

#[tokio::test]
async fn the_method_is_checked_before_the_body() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 16,
        ServeOptions::default(),
    )
    .await;

    // Act
    let response = app
        .request(Method::PUT, "/api/auth/login/")
        .header("content-type", "text/plain")
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "detail": "Method \"PUT\" not allowed." }),
    )
    .await;
}

// ---- 413 ------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_over_the_limit_by_content_length_answers_413() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 64,
        ServeOptions::default(),
    )
    .await;
    let over = format!(
        r#"{{"email": "kim@example.com", "password": "{}"}}"#,
        "p".repeat(21)
    );
    assert_eq!(over.len(), 65);

    for content_type in ["application/json", "text/plain"] {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/login/")
            .header("content-type", content_type)
            .body(over.clone())
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "detail": "Request body too large." }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_at_the_limit_is_read() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 64,
        ServeOptions::default(),
    )
    .await;
    let at_limit = format!(
        r#"{{"email": "kim@example.com", "password": "{}"}}"#,
        "p".repeat(20)
    );
    assert_eq!(at_limit.len(), 64);

    // Act
    let response = app
        .request(Method::POST, "/api/auth/login/")
        .header("content-type", "application/json")
        .body(at_limit)
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "No active account found with the given credentials" }),
    )
    .await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_answers_413_by_counting() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 64,
        ServeOptions::default(),
    )
    .await;
    let chunks = vec![
        b"{\"email\": \"".to_vec(),
        vec![b'k'; 40],
        b"@example.com\"}".to_vec(),
    ];

    // Act
    let answer = chunked_post(app.addr, "/api/auth/login/", &chunks).await;

    // Assert
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.head.contains("x-content-type-options: nosniff"));
    assert_eq!(answer.body, json!({ "detail": "Request body too large." }));
}

#[tokio::test]
async fn a_chunked_body_under_the_limit_is_read() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 64,
        ServeOptions::default(),
    )
    .await;
    let chunks = vec![
        b"{\"email\": \"kim@".to_vec(),
        b"example.com\", ".to_vec(),
        b"\"password\": \"wrong-password\"}".to_vec(),
    ];

    // Act
    let answer = chunked_post(app.addr, "/api/auth/login/", &chunks).await;

    // Assert
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.body,
        json!({ "detail": "No active account found with the given credentials" })
    );
}

#[tokio::test]
async fn the_body_size_is_checked_before_the_content_type_and_the_syntax() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 16,
        ServeOptions::default(),
    )
    .await;

    for content_type in ["text/plain", "application/json"] {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/register/")
            .header("content-type", content_type)
            .body("{not json at all, and long}")
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{content_type}"
        );
    }
}

// ---- 415 ------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_of_another_content_type_answers_415_naming_it() {
    // Arrange
    let app = spawn_app().await;

    for content_type in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/login/")
            .header("content-type", content_type)
            .body(r#"{"email": "kim@example.com", "password": "x"}"#)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "detail": format!("Unsupported media type \"{content_type}\" in request.") }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_without_a_content_type_answers_415() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::POST, "/api/auth/login/")
        .body(r#"{"email": "kim@example.com", "password": "x"}"#)
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        json!({ "detail": "Unsupported media type \"\" in request." }),
    )
    .await;
}

#[tokio::test]
async fn json_content_types_with_parameters_or_in_capitals_are_accepted() {
    // Arrange
    let app = spawn_app().await;

    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/login/")
            .header("content-type", content_type)
            .body("{}")
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "email": [REQUIRED], "password": [REQUIRED] }),
        )
        .await;
    }
}

#[tokio::test]
async fn an_empty_body_counts_as_an_empty_object_whatever_its_content_type() {
    // Arrange
    let app = spawn_app().await;

    for content_type in [None, Some("text/plain"), Some("application/json")] {
        // Act
        let mut request = app.request(Method::POST, "/api/auth/login/");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "email": [REQUIRED], "password": [REQUIRED] }),
        )
        .await;
    }
}

#[tokio::test]
async fn the_content_type_is_checked_before_the_syntax() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::POST, "/api/auth/login/")
        .header("content-type", "text/plain")
        .body("{not json")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

// ---- 400: syntax and shape ------------------------------------------------------------

#[tokio::test]
async fn malformed_json_answers_400_json_parse_error() {
    // Arrange
    let app = spawn_app().await;
    let bodies: [&[u8]; 6] = [
        b"{",
        b"{\"email\": }",
        b"not json",
        b"{\"email\": \"kim@example.com\",}",
        b"{\"email\": \"\xff\xfe\"}",
        b"{} {}",
    ];

    for raw in bodies {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/login/")
            .header("content-type", "application/json")
            .body(raw.to_vec())
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let answer = body(response).await;
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.starts_with("JSON parse error - "), "{detail}");
        assert!(detail.len() > "JSON parse error - ".len(), "{detail}");
        assert_eq!(answer, json!({ "detail": detail }));
    }
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_answers_non_field_errors_with_its_python_type() {
    // Arrange
    let app = spawn_app().await;
    let cases = [
        ("[]", "list"),
        ("[{\"email\": \"kim@example.com\"}]", "list"),
        ("\"kim\"", "str"),
        ("42", "int"),
        ("-7", "int"),
        ("1.5", "float"),
        ("1e3", "float"),
        ("true", "bool"),
        ("null", "NoneType"),
    ];

    for (raw, type_name) in cases {
        // Act
        let response = app
            .request(Method::POST, "/api/auth/register/")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({
                "non_field_errors": [
                    format!("Invalid data. Expected a dictionary, but got {type_name}.")
                ]
            }),
        )
        .await;
    }
}

#[tokio::test]
async fn the_body_shape_is_checked_before_the_addressed_session() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let unknown = "/api/chat/sessions/6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4b/";

    // Act
    let not_an_object = app
        .authed(Method::PATCH, unknown, &account)
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    let an_object = app
        .authed(Method::PATCH, unknown, &account)
        .json(&json!({ "title": 5 }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        not_an_object,
        StatusCode::BAD_REQUEST,
        json!({ "non_field_errors": ["Invalid data. Expected a dictionary, but got list."] }),
    )
    .await;
    assert_answer(
        an_object,
        StatusCode::NOT_FOUND,
        json!({ "detail": NOT_FOUND }),
    )
    .await;
}

#[tokio::test]
async fn the_addressed_session_is_checked_before_the_fields() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = app
        .authed(
            Method::POST,
            "/api/chat/sessions/6f1c9a52-3c1e-4d7a-9a43-0c5b1e2f3a4b/messages/",
            &account,
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::NOT_FOUND,
        json!({ "detail": NOT_FOUND }),
    )
    .await;
}

#[tokio::test]
async fn cross_field_rules_are_checked_only_when_every_field_passed() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .post_json(
            "/api/auth/register/",
            &json!({
                "username": "kim", "email": "kim@example.com",
                "password": "violet-harbour-42", "password_confirm": "something-else-9",
                "department": "d".repeat(101),
            }),
        )
        .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "department": ["Ensure this field has no more than 100 characters."] }),
    )
    .await;
}

// ---- 400: fields of the wrong JSON type -----------------------------------------------

#[tokio::test]
async fn auth_fields_of_the_wrong_json_type_answer_the_drf_messages() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let cases = [
        (
            Method::POST,
            "/api/auth/register/",
            json!({
                "username": 1, "email": true, "password": [], "password_confirm": {},
                "role": 5, "department": null,
            }),
            json!({
                "username": [NOT_A_STRING], "email": [NOT_A_STRING],
                "password": [NOT_A_STRING], "password_confirm": [NOT_A_STRING],
                "role": [NOT_A_STRING], "department": [NOT_NULL],
            }),
        ),
        (
            Method::POST,
            "/api/auth/register/",
            json!({
                "username": null, "email": null, "password": null, "password_confirm": null,
                "role": null, "department": 1.5,
            }),
            json!({
                "username": [NOT_NULL], "email": [NOT_NULL],
                "password": [NOT_NULL], "password_confirm": [NOT_NULL],
                "role": [NOT_NULL], "department": [NOT_A_STRING],
            }),
        ),
        (
            Method::POST,
            "/api/auth/login/",
            json!({ "email": 1, "password": false }),
            json!({ "email": [NOT_A_STRING], "password": [NOT_A_STRING] }),
        ),
        (
            Method::POST,
            "/api/auth/token/refresh/",
            json!({ "refresh": 123 }),
            json!({ "refresh": [NOT_A_STRING] }),
        ),
        (
            Method::POST,
            "/api/auth/logout/",
            json!({ "refresh": null }),
            json!({ "refresh": [NOT_NULL] }),
        ),
        (
            Method::PATCH,
            "/api/auth/profile/",
            json!({ "username": [], "email": {}, "department": 7 }),
            json!({
                "username": [NOT_A_STRING], "email": [NOT_A_STRING],
                "department": [NOT_A_STRING],
            }),
        ),
        (
            Method::PUT,
            "/api/auth/profile/",
            json!({ "username": null, "email": null }),
            json!({ "username": [NOT_NULL], "email": [NOT_NULL] }),
        ),
        (
            Method::POST,
            "/api/auth/password/",
            json!({ "old_password": 1, "new_password": null }),
            json!({ "old_password": [NOT_A_STRING], "new_password": [NOT_NULL] }),
        ),
    ];

    for (method, path, request, expected) in cases {
        // Act
        let response = app
            .authed(method, path, &account)
            .json(&request)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{path} {request}"
        );
        assert_eq!(body(response).await, expected, "{path} {request}");
    }
}

#[tokio::test]
async fn chat_fields_of_the_wrong_json_type_answer_the_drf_messages() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let session = app.session(&account, "Headache").await;
    let session_path = format!("/api/chat/sessions/{session}/");
    let messages_path = format!("/api/chat/sessions/{session}/messages/");
    let cases = [
        (
            Method::POST,
            "/api/chat/sessions/",
            json!({ "title": 1, "category": true }),
            json!({ "title": [NOT_A_STRING], "category": [NOT_A_STRING] }),
        ),
        (
            Method::POST,
            "/api/chat/sessions/",
            json!({ "title": null, "category": null }),
            json!({ "title": [NOT_NULL], "category": [NOT_NULL] }),
        ),
        (
            Method::PATCH,
            session_path.as_str(),
            json!({ "title": [], "category": 2, "is_active": "true" }),
            json!({
                "title": [NOT_A_STRING], "category": [NOT_A_STRING],
                "is_active": [NOT_A_BOOLEAN],
            }),
        ),
        (
            Method::PATCH,
            session_path.as_str(),
            json!({ "is_active": 1 }),
            json!({ "is_active": [NOT_A_BOOLEAN] }),
        ),
        (
            Method::PATCH,
            session_path.as_str(),
            json!({ "is_active": null }),
            json!({ "is_active": [NOT_NULL] }),
        ),
        (
            Method::POST,
            messages_path.as_str(),
            json!({ "content": 5, "message_type": [], "metadata": [] }),
            json!({
                "content": [NOT_A_STRING], "message_type": [NOT_A_STRING],
                "metadata": ["Expected a dictionary of items but got type \"list\"."],
            }),
        ),
        (
            Method::POST,
            messages_path.as_str(),
            json!({ "content": "hi", "metadata": "{}" }),
            json!({ "metadata": ["Expected a dictionary of items but got type \"str\"."] }),
        ),
        (
            Method::POST,
            messages_path.as_str(),
            json!({ "content": "hi", "metadata": 3 }),
            json!({ "metadata": ["Expected a dictionary of items but got type \"int\"."] }),
        ),
        (
            Method::POST,
            messages_path.as_str(),
            json!({ "content": "hi", "metadata": false }),
            json!({ "metadata": ["Expected a dictionary of items but got type \"bool\"."] }),
        ),
        (
            Method::POST,
            messages_path.as_str(),
            json!({ "content": null, "metadata": null }),
            json!({ "content": [NOT_NULL], "metadata": [NOT_NULL] }),
        ),
    ];

    for (method, path, request, expected) in cases {
        // Act
        let response = app
            .authed(method, path, &account)
            .json(&request)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{path} {request}"
        );
        assert_eq!(body(response).await, expected, "{path} {request}");
    }
}

// ---- paths, HEAD and OPTIONS ----------------------------------------------------------

#[tokio::test]
async fn paths_answer_alike_with_and_without_the_trailing_slash() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let session = app.session(&account, "Headache").await;

    for path in [
        "/api/auth/profile".to_owned(),
        "/api/auth/profile/".to_owned(),
        "/api/auth/dashboard".to_owned(),
        format!("/api/chat/sessions/{session}"),
        format!("/api/chat/sessions/{session}/"),
        format!("/api/chat/sessions/{session}/messages"),
    ] {
        // Act
        let response = app
            .authed(Method::GET, &path, &account)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    for path in ["/api/auth/login", "/api/auth/login/"] {
        let response = app.post_json(path, &json!({})).await;
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "email": [REQUIRED], "password": [REQUIRED] }),
        )
        .await;
    }
}

#[tokio::test]
async fn head_answers_the_get_status_and_headers_without_a_body() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::HEAD, "/api/auth/profile/", &account)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn head_on_a_post_only_endpoint_answers_405() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::HEAD, "/api/auth/login/")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST, OPTIONS");
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn options_answers_the_views_metadata_and_allow() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let cases = [
        ("/api/auth/login/", "Login", "POST, OPTIONS"),
        ("/api/auth/register", "Register", "POST, OPTIONS"),
        (
            "/api/auth/profile/",
            "Profile",
            "GET, PUT, PATCH, HEAD, OPTIONS",
        ),
        (
            "/api/chat/sessions/",
            "Chat Session List",
            "GET, POST, HEAD, OPTIONS",
        ),
        ("/api/health/", "Health", "GET, HEAD, OPTIONS"),
    ];

    for (path, name, allow) in cases {
        // Act
        let response = app
            .authed(Method::OPTIONS, path, &account)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.headers()["allow"], allow, "{path}");
        assert_answer(
            response,
            StatusCode::OK,
            json!({
                "name": name, "description": "",
                "renders": ["application/json"], "parses": ["application/json"],
            }),
        )
        .await;
    }
}

// ---- headers on every response --------------------------------------------------------

#[tokio::test]
async fn auth_and_chat_responses_carry_cache_control_no_store_even_on_errors() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    for response in [
        app.post_json("/api/auth/login/", &json!({})).await,
        app.post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": "violet-harbour-42" }),
        )
        .await,
        app.post_json("/api/auth/token/refresh/", &json!({ "refresh": "x" }))
            .await,
        app.authed(Method::GET, "/api/auth/profile", &account)
            .send()
            .await
            .unwrap(),
        app.request(Method::GET, "/api/chat/sessions/")
            .send()
            .await
            .unwrap(),
        app.authed(Method::GET, "/api/chat/sessions/", &account)
            .send()
            .await
            .unwrap(),
        app.authed(Method::GET, "/api/chat/sessions/nope/", &account)
            .send()
            .await
            .unwrap(),
        app.post_json("/api/auth/logout/", &json!({ "refresh": account.refresh }))
            .await,
    ] {
        // Assert
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{}",
            response.url()
        );
    }
}

#[tokio::test]
async fn every_response_carries_nosniff() {
    // Arrange
    let app = spawn_app_with(
        |config| config.body_limit_bytes = 256,
        ServeOptions::default(),
    )
    .await;
    let account = app.account("kim").await;

    for response in [
        app.get("/").await,
        app.get("/api/health/").await,
        app.get("/api/auth/profile/").await,
        app.request(Method::PATCH, "/api/auth/login/")
            .send()
            .await
            .unwrap(),
        app.request(Method::POST, "/api/auth/login/")
            .header("content-type", "application/json")
            .body("x".repeat(257))
            .send()
            .await
            .unwrap(),
        app.request(Method::POST, "/api/auth/login/")
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
        app.authed(Method::OPTIONS, "/api/auth/login/", &account)
            .send()
            .await
            .unwrap(),
        app.request(Method::OPTIONS, "/api/auth/login/")
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap(),
        app.post_json("/api/auth/logout/", &json!({ "refresh": account.refresh }))
            .await,
    ] {
        // Assert
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{} {}",
            response.url(),
            response.status()
        );
    }
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_new_uuid_as_x_request_id() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let first = app.get("/api/health/").await;
    let second = app.get("/api/nope/").await;

    // Assert
    let first_id = request_id(first.headers());
    let second_id = request_id(second.headers());
    assert_eq!(first_id.len(), 36);
    assert_eq!(
        first_id,
        first_id.to_lowercase(),
        "a lowercase hyphenated UUID"
    );
    assert_eq!(first_id.matches('-').count(), 4);
    assert_ne!(first_id, second_id);
}

#[tokio::test]
async fn a_valid_incoming_request_id_is_kept_and_a_bad_one_replaced() {
    // Arrange
    let app = spawn_app().await;
    let longest = "r".repeat(64);
    let too_long = "r".repeat(65);

    for (sent, kept) in [
        ("abc-123_x.y", true),
        (longest.as_str(), true),
        ("bad id!", false),
        ("a/b", false),
        (too_long.as_str(), false),
    ] {
        // Act
        let response = app
            .request(Method::GET, "/api/health/")
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();

        // Assert
        let returned = request_id(response.headers());
        if kept {
            assert_eq!(returned, sent);
        } else {
            assert_ne!(returned, sent);
            assert_eq!(returned.len(), 36, "{returned}");
        }
    }
}

// ---- helpers --------------------------------------------------------------------------

fn request_id(headers: &HeaderMap) -> String {
    headers["x-request-id"].to_str().unwrap().to_owned()
}

/// The parts of a raw HTTP/1.1 answer.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    /// The status line and headers, lower-cased.
    head: String,
    body: Value,
}

/// Sends `POST path` with a JSON content type and a chunked body made of `chunks` (no
/// `Content-Length`), over a plain socket, and reads the whole answer.
async fn chunked_post(addr: SocketAddr, path: &str, chunks: &[Vec<u8>]) -> RawAnswer {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let head = head.to_lowercase();
    let status = head[9..12].parse().unwrap();
    // A fixed-length body, or one chunk of a chunked one.
    let json_text = if head.contains("transfer-encoding: chunked") {
        rest.split_once("\r\n")
            .unwrap()
            .1
            .rsplit_once("\r\n0\r\n")
            .unwrap()
            .0
    } else {
        rest
    };
    RawAnswer {
        status,
        head,
        body: serde_json::from_str(json_text).unwrap(),
    }
}
