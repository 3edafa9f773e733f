//! `GET /api/health/` and the 404 body for unknown paths (contract sections 1, 4 and 9).

use std::time::Duration;

use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{spawn_app, sqlite_fault_test, start};
use crate::system::require;
use crate::unavailable::LockHolder;

#[tokio::test]
async fn health_reports_every_service_with_a_real_database_check() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let with_slash = app.get("/api/health/").await;
    let without_slash = app.get("/api/health").await;

    // Assert
    for response in [with_slash, without_slash] {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "status": "healthy",
                "services": {
                    "server": "running",
                    "database": "connected",
                    "ai_service": "available",
                    "search_service": "not_configured",
                }
            })
        );
    }
}

#[tokio::test]
async fn an_unknown_path_answers_the_contract_404_body() {
    let app = spawn_app().await;

    let response = app.get("/api/does-not-exist/").await;

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Not found."}));
}

/// Health reports `read_only`/`degraded` (200) from a write refused for a database cause
/// until a later write succeeds, not merely while another process holds the lock; with
/// the write probe a whole hour away, only the write that succeeds ends the state.
#[tokio::test]
async fn health_is_read_only_from_a_refused_write_until_a_later_write_succeeds() {
    let test = "health_is_read_only_from_a_refused_write_until_a_later_write_succeeds";
    if sqlite_fault_test(test) {
        return;
    }
    let Some(sqlite3) = require("sqlite3", "sqlite3", test) else {
        return;
    };
    // Arrange
    let options = ServeOptions {
        write_probe_interval: Duration::from_secs(3600),
        ..ServeOptions::default()
    };
    let app = start(|_| {}, options, None).await;
    let kim = app.account("kim").await;
    let create_session = || {
        app.authed(Method::POST, "/api/chat/sessions/", &kim)
            .json(&json!({"title": "t"}))
            .send()
    };
    let health = || async {
        let response = app.get("/api/health/").await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["status"].clone(),
            body["services"]["database"].clone(),
        )
    };
    let lock = LockHolder::hold(&sqlite3, app.core.sqlite().expect("a SQLite store").path()).await;
    let locked_before_any_write = health().await;

    // Act
    let refused = create_session().await.unwrap();
    let after_the_refusal = health().await;
    lock.release().await;
    let after_the_release = health().await;
    let accepted = create_session().await.unwrap();
    let after_a_write = health().await;

    // Assert
    assert_eq!(
        locked_before_any_write,
        (StatusCode::OK, json!("healthy"), json!("connected"))
    );
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let read_only = (StatusCode::OK, json!("degraded"), json!("read_only"));
    assert_eq!(after_the_refusal, read_only);
    assert_eq!(after_the_release, read_only, "no write has succeeded yet");
    assert_eq!(accepted.status(), StatusCode::CREATED);
    assert_eq!(
        after_a_write,
        (StatusCode::OK, json!("healthy"), json!("connected"))
    );
}
