//! `GET /api/health/` and the 404 body for unknown paths (contract sections 1 and 4).

use serde_json::{Value, json};

use crate::helpers::spawn_app;

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
