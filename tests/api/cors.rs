//! CORS (contract section 4): allowed origins get their origin back with credentials and
//! a preflight answer; every other origin is served as if it had sent none. Never `*`.

use narutalk_server::ServeOptions;
use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_answer, body, spawn_app, spawn_app_with};

const FRONTEND: &str = "http://localhost:3000";

#[tokio::test]
async fn the_default_frontend_origin_gets_its_origin_back_with_credentials() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::GET, "/api/health/")
        .header("origin", FRONTEND)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], FRONTEND);
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
    assert_eq!(body(response).await["status"], "healthy");
}

#[tokio::test]
async fn configured_origins_replace_the_default() {
    // Arrange
    let app = spawn_app_with(
        |config| {
            config.cors_origins = vec![
                "https://app.example.org".into(),
                "https://admin.example.org".into(),
            ];
        },
        ServeOptions::default(),
    )
    .await;

    // Act
    let app_origin = get_from(&app, "https://app.example.org").await;
    let admin_origin = get_from(&app, "https://admin.example.org").await;
    let default_origin = get_from(&app, FRONTEND).await;

    // Assert
    assert_eq!(
        app_origin.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    assert_eq!(
        admin_origin.headers()["access-control-allow-origin"],
        "https://admin.example.org"
    );
    assert_eq!(cors_headers(&default_origin), Vec::<String>::new());
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_answers_200_with_methods_and_headers() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::OPTIONS, "/api/chat/sessions/")
        .header("origin", FRONTEND)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], FRONTEND);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let methods = listed(&response, "access-control-allow-methods");
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert!(
            methods.contains(&method.to_owned()),
            "{method} in {methods:?}"
        );
    }
    let allowed = listed(&response, "access-control-allow-headers");
    for header in ["Authorization", "Content-Type", "Idempotency-Key"] {
        assert!(
            allowed.contains(&header.to_owned()),
            "{header} in {allowed:?}"
        );
    }
}

#[tokio::test]
async fn the_servers_own_origin_is_allowed() {
    // Arrange
    let app = spawn_app().await;
    let own = format!("http://{}", app.addr);

    // Act
    let response = get_from(&app, &own).await;

    // Assert
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        own.as_str()
    );
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
}

#[tokio::test]
async fn an_error_answer_to_an_allowed_origin_carries_the_cors_headers() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::GET, "/api/chat/sessions/")
        .header("origin", FRONTEND)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.headers()["access-control-allow-origin"], FRONTEND);
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Authentication credentials were not provided." }),
    )
    .await;
}

#[tokio::test]
async fn any_other_origin_is_served_normally_with_no_cors_header_at_all() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let strangers = [
        "https://evil.example",
        "null",
        "http://localhost:3000/",
        "https://localhost:3000",
        "http://localhost:3001",
        "HTTP://LOCALHOST:3000",
        "*",
    ];

    for origin in strangers {
        // Act
        let response = app
            .authed(Method::POST, "/api/chat/sessions/", &kim)
            .header("origin", origin)
            .json(&json!({ "title": "Still served" }))
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(cors_headers(&response), Vec::<String>::new(), "{origin}");
        assert_eq!(response.status(), StatusCode::CREATED, "{origin}");
        assert_eq!(body(response).await["title"], "Still served");
    }
}

#[tokio::test]
async fn a_preflight_from_another_origin_is_answered_as_a_plain_options_request() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app
        .request(Method::OPTIONS, "/api/health/")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(cors_headers(&response), Vec::<String>::new());
    assert_eq!(response.headers()["allow"], "GET, HEAD, OPTIONS");
    assert_answer(
        response,
        StatusCode::OK,
        json!({
            "name": "Health", "description": "",
            "renders": ["application/json"], "parses": ["application/json"],
        }),
    )
    .await;
}

#[tokio::test]
async fn a_request_without_an_origin_gets_no_cors_header() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/api/health/").await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cors_headers(&response), Vec::<String>::new());
}

async fn get_from(app: &TestApp, origin: &str) -> Response {
    app.request(Method::GET, "/api/health/")
        .header("origin", origin)
        .send()
        .await
        .unwrap()
}

/// The names of the response's `Access-Control-*` headers.
fn cors_headers(response: &Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

/// The comma-separated items of a header.
fn listed(response: &Response, name: &str) -> Vec<String> {
    response.headers()[name]
        .to_str()
        .unwrap()
        .split(',')
        .map(|item| item.trim().to_owned())
        .collect()
}
