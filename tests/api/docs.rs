//! The API documentation (contract section 5): the OpenAPI document, the offline docs
//! page and its assets, and a drift check that every object the server answers has
//! exactly the properties its schema in the document lists.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Account, PASSWORD, TestApp, body, spawn_app};

#[tokio::test]
async fn the_schema_is_an_openapi_3_document_with_title_version_and_bearer_scheme() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/api/schema/").await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let schema = body(response).await;
    assert!(
        schema["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        schema["openapi"]
    );
    assert_eq!(schema["info"]["title"], "Narutalk API");
    assert_eq!(schema["info"]["version"], "1.0.0");
    assert_eq!(
        schema["components"]["securitySchemes"]["bearer"],
        json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" })
    );
    assert_eq!(body(app.get("/api/schema").await).await, schema);
}

#[tokio::test]
async fn the_schema_documents_every_endpoint_with_its_methods() {
    // Arrange
    let app = spawn_app().await;
    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("/api/auth/register/", vec!["post"]),
        ("/api/auth/login/", vec!["post"]),
        ("/api/auth/token/refresh/", vec!["post"]),
        ("/api/auth/logout/", vec!["post"]),
        ("/api/auth/profile/", vec!["get", "patch", "put"]),
        ("/api/auth/password/", vec!["post"]),
        ("/api/auth/dashboard/", vec!["get"]),
        ("/api/chat/sessions/", vec!["get", "post"]),
        ("/api/chat/sessions/{id}/", vec!["delete", "get", "patch"]),
        ("/api/chat/sessions/{id}/messages/", vec!["get", "post"]),
        ("/api/health/", vec!["get"]),
        ("/api/proxy/search/", vec!["post"]),
    ]);

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    let documented: BTreeMap<&str, Vec<&str>> = schema["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item.as_object().unwrap().keys().map(String::as_str);
            let mut methods: Vec<&str> = methods.filter(|key| is_method(key)).collect();
            methods.sort_unstable();
            (path.as_str(), methods)
        })
        .collect();
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn exactly_the_operations_that_need_an_access_token_name_the_bearer_scheme() {
    // Arrange
    let app = spawn_app().await;
    let open = [
        ("/api/auth/register/", "post"),
        ("/api/auth/login/", "post"),
        ("/api/auth/token/refresh/", "post"),
        ("/api/auth/logout/", "post"),
        ("/api/health/", "get"),
    ];

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    for (path, item) in schema["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !is_method(method) {
                continue;
            }
            let expected = if open.contains(&(path.as_str(), method.as_str())) {
                Value::Null
            } else {
                json!([{ "bearer": [] }])
            };
            assert_eq!(operation["security"], expected, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn the_docs_page_is_html_with_and_without_the_slash() {
    // Arrange
    let app = spawn_app().await;

    for path in ["/api/docs/", "/api/docs"] {
        // Act
        let response = app.get(path).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("<div id=\"swagger-ui\">"), "{path}");
    }
}

#[tokio::test]
async fn every_asset_of_the_docs_page_is_served_by_the_server_itself() {
    // Arrange
    let app = spawn_app().await;

    for page_path in ["/api/docs/", "/api/docs"] {
        let page = app.get(page_path).await.text().await.unwrap();
        let mut assets: BTreeSet<String> = asset_urls(&page)
            .iter()
            .map(|url| resolve(&app, page_path, url))
            .collect();
        assets.insert(resolve(&app, page_path, "/api/docs/swagger-initializer.js"));
        assert!(assets.len() >= 4, "{page_path}: {assets:?}");

        for asset in assets {
            // Act
            let response = app.get(&asset).await;

            // Assert
            assert_eq!(response.status(), StatusCode::OK, "{page_path}: {asset}");
            assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
        }
    }
}

#[tokio::test]
async fn the_docs_initializer_loads_the_servers_own_schema() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.get("/api/docs/swagger-initializer.js").await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let script = response.text().await.unwrap();
    assert!(script.contains("\"url\": \"/api/schema/\""), "{script}");
    assert!(!script.contains("{{config}}"), "{script}");
}

#[tokio::test]
async fn every_object_the_server_answers_has_exactly_its_schemas_properties() {
    // Arrange
    let app = spawn_app().await;
    let schema = body(app.get("/api/schema/").await).await;
    let kim = app.account("kim").await;
    let mut answers: Vec<(&str, Value)> = Vec::new();

    // Act
    let login = body(
        app.post_json(
            "/api/auth/login/",
            &json!({ "email": kim.email, "password": PASSWORD }),
        )
        .await,
    )
    .await;
    answers.push(("User", login["user"].clone()));
    answers.push(("LoginResponse", login));
    let pair = body(
        app.post_json(
            "/api/auth/token/refresh/",
            &json!({ "refresh": kim.refresh }),
        )
        .await,
    )
    .await;
    answers.push(("TokenPair", pair));
    answers.push(("User", get(&app, &kim, "/api/auth/profile/").await));
    let created = app
        .authed(Method::POST, "/api/chat/sessions/", &kim)
        .json(&json!({ "title": "Drift" }))
        .send()
        .await
        .unwrap();
    let session = body(created).await;
    let id = session["id"].as_str().unwrap().to_owned();
    answers.push(("SessionDetail", session));
    let exchange = app.say(&kim, &id, "두통").await;
    answers.push(("Message", exchange["reply"].clone()));
    answers.push(("MessageWithReply", exchange));
    let detail = get(&app, &kim, &format!("/api/chat/sessions/{id}/")).await;
    answers.push(("Message", detail["messages"][0].clone()));
    answers.push(("SessionDetail", detail));
    let sessions = get(&app, &kim, "/api/chat/sessions/").await;
    answers.push(("SessionListItem", sessions["results"][0].clone()));
    answers.push(("Message", sessions["results"][0]["last_message"].clone()));
    answers.push(("SessionPage", sessions));
    let messages = get(&app, &kim, &format!("/api/chat/sessions/{id}/messages/")).await;
    answers.push(("Message", messages["results"][0].clone()));
    answers.push(("MessagePage", messages));
    answers.push(("Dashboard", get(&app, &kim, "/api/auth/dashboard/").await));
    let health = body(app.get("/api/health/").await).await;
    answers.push(("Services", health["services"].clone()));
    answers.push(("Health", health));
    answers.push(("Detail", body(app.get("/api/nowhere/").await).await));
    let refused = app
        .request(Method::GET, "/api/auth/profile/")
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    answers.push(("TokenError", body(refused).await));
    let unconfigured = app
        .authed(Method::POST, "/api/proxy/search/", &kim)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    answers.push(("ProxyError", body(unconfigured).await));

    // Assert
    for (name, answer) in answers {
        let properties = &schema["components"]["schemas"][name]["properties"];
        let documented: BTreeSet<&str> = properties
            .as_object()
            .unwrap_or_else(|| panic!("no properties for schema {name}"))
            .keys()
            .map(String::as_str)
            .collect();
        let answered: BTreeSet<&str> = answer
            .as_object()
            .unwrap_or_else(|| panic!("{name} answered {answer}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(answered, documented, "{name}");
    }
}

async fn get(app: &TestApp, account: &Account, path: &str) -> Value {
    let response = app.authed(Method::GET, path, account).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    body(response).await
}

fn is_method(key: &str) -> bool {
    matches!(
        key,
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
    )
}

/// The values of the page's `src="..."` and `href="..."` attributes.
fn asset_urls(page: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = page;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let end = rest.find('"').unwrap();
            urls.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    urls
}

/// The path on this server that a browser showing `page_path` loads for `url`; fails when
/// `url` points to another host.
fn resolve(app: &TestApp, page_path: &str, url: &str) -> String {
    let own = app.url("");
    if let Some(path) = url.strip_prefix(&own) {
        return path.to_owned();
    }
    assert!(
        !url.contains("://") && !url.starts_with("//"),
        "{page_path} loads {url} from another host"
    );
    if url.starts_with('/') {
        return url.to_owned();
    }
    let directory = &page_path[..=page_path.rfind('/').unwrap()];
    format!("{directory}{}", url.strip_prefix("./").unwrap_or(url))
}
