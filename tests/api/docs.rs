//! The API documentation: the OpenAPI document, the offline docs page and its assets, a
//! drift check that every object the server answers has exactly the properties its schema
//! in the document lists, and the document's strictness: every status, header, length,
//! format and choice it states, the limits probed on the server. Also the reference
//! (`docs/API.md`) as served, its WebSocket part in the document, and that no document of
//! the repository, served or not, sends its reader to a file outside the repository.

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
    assert_eq!(schema["info"]["version"], "1.1.0");
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

#[tokio::test]
async fn every_operation_lists_every_status_the_server_can_answer() {
    // Arrange
    let app = spawn_app().await;
    let reads_body = ["400", "408", "413", "415"];
    let expected: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::from([
        (
            ("/api/auth/register/", "post"),
            with(&["201", "429", "503"], &reads_body),
        ),
        (
            ("/api/auth/login/", "post"),
            with(&["200", "401", "429", "503"], &reads_body),
        ),
        (
            ("/api/auth/token/refresh/", "post"),
            with(&["200", "401", "503"], &reads_body),
        ),
        (
            ("/api/auth/logout/", "post"),
            with(&["205", "401", "503"], &reads_body),
        ),
        (("/api/auth/profile/", "get"), vec!["200", "401", "503"]),
        (
            ("/api/auth/profile/", "put"),
            with(&["200", "401", "503"], &reads_body),
        ),
        (
            ("/api/auth/profile/", "patch"),
            with(&["200", "401", "503"], &reads_body),
        ),
        (
            ("/api/auth/password/", "post"),
            with(&["204", "401", "503"], &reads_body),
        ),
        (("/api/auth/dashboard/", "get"), vec!["200", "401", "503"]),
        (
            ("/api/chat/sessions/", "get"),
            vec!["200", "400", "401", "404", "503"],
        ),
        (
            ("/api/chat/sessions/", "post"),
            with(&["201", "401", "503"], &reads_body),
        ),
        (
            ("/api/chat/sessions/{id}/", "get"),
            vec!["200", "401", "404", "503"],
        ),
        (
            ("/api/chat/sessions/{id}/", "patch"),
            with(&["200", "401", "404", "503"], &reads_body),
        ),
        (
            ("/api/chat/sessions/{id}/", "delete"),
            vec!["204", "401", "404", "503"],
        ),
        (
            ("/api/chat/sessions/{id}/messages/", "get"),
            vec!["200", "400", "401", "404", "503"],
        ),
        (
            ("/api/chat/sessions/{id}/messages/", "post"),
            with(&["201", "401", "404", "429", "503"], &reads_body),
        ),
        (("/api/health/", "get"), vec!["200", "503"]),
        (
            ("/api/proxy/search/", "post"),
            with(&["401", "502", "503", "default"], &reads_body),
        ),
    ]);

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    let mut documented: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (path, method, operation) in operations(&schema) {
        let mut statuses: Vec<&str> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        statuses.sort_unstable();
        documented.insert((path, method), statuses);
    }
    assert_eq!(documented, expected);
}

#[tokio::test]
async fn throttled_unavailable_and_refused_answers_require_their_headers() {
    // Arrange
    let app = spawn_app().await;
    let retry_after = json!({
        "required": true,
        "schema": { "$ref": "#/components/schemas/RetryAfterSeconds" },
    });

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    assert_eq!(
        schema["components"]["schemas"]["RetryAfterSeconds"],
        json!({ "type": "integer", "minimum": 1 })
    );
    for (path, method, operation) in operations(&schema) {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let response = resolve_response(&schema, response);
            let headers = &response["headers"];
            let label = format!("{method} {path} {status}");
            match (status.as_str(), path) {
                ("429", _) => assert_subset(&headers["Retry-After"], &retry_after, &label),
                ("503", "/api/health/" | "/api/proxy/search/") => {
                    assert_eq!(*headers, Value::Null, "{label}")
                }
                ("503", _) => assert_subset(&headers["Retry-After"], &retry_after, &label),
                ("401", _) => assert_subset(
                    &headers["WWW-Authenticate"],
                    &json!({ "required": true, "schema": { "type": "string" } }),
                    &label,
                ),
                _ => assert_eq!(*headers, Value::Null, "{label}"),
            }
        }
    }
}

#[tokio::test]
async fn request_bodies_are_optional_exactly_where_the_server_takes_none() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let optional = [
        (
            "/api/auth/profile/",
            "patch",
            json!({ "$ref": "#/components/schemas/ProfileUpdate" }),
        ),
        (
            "/api/chat/sessions/{id}/",
            "patch",
            json!({ "$ref": "#/components/schemas/SessionUpdate" }),
        ),
        ("/api/proxy/search/", "post", json!({})),
    ];

    // Act
    let schema = body(app.get("/api/schema/").await).await;
    let profile = app
        .authed(Method::PATCH, "/api/auth/profile/", &kim)
        .send()
        .await
        .unwrap();
    let update = app
        .authed(
            Method::PATCH,
            &format!("/api/chat/sessions/{session}/"),
            &kim,
        )
        .send()
        .await
        .unwrap();
    let create = app
        .authed(Method::POST, "/api/chat/sessions/", &kim)
        .send()
        .await
        .unwrap();

    // Assert
    for (path, method, operation) in operations(&schema) {
        let Some(request_body) = operation.get("requestBody") else {
            continue;
        };
        let content = &request_body["content"]["application/json"]["schema"];
        match optional.iter().find(|(p, m, _)| (*p, *m) == (path, method)) {
            Some((_, _, expected)) => {
                assert_eq!(request_body.get("required"), None, "{method} {path}");
                assert_eq!(content, expected, "{method} {path}: no `null` alternative");
            }
            None => assert_eq!(request_body["required"], true, "{method} {path}"),
        }
    }
    assert_eq!(profile.status(), StatusCode::OK);
    assert_eq!(update.status(), StatusCode::OK);
    assert_eq!(
        body(create).await,
        json!({ "title": ["This field is required."] })
    );
}

#[tokio::test]
async fn fields_carry_the_servers_lengths_formats_and_choices() {
    // Arrange
    let app = spawn_app().await;
    let non_blank = format!("^[^\\u0000]*[^\\u0000{WHITE_SPACE}][^\\u0000]*$");
    let no_nul = "^[^\\u0000]*$";
    let expected = [
        (
            "RegisterRequest",
            "username",
            json!({ "$ref": "#/components/schemas/Username" }),
        ),
        (
            "RegisterRequest",
            "email",
            json!({ "format": "email", "minLength": 1, "maxLength": 254 }),
        ),
        (
            "RegisterRequest",
            "password",
            json!({ "minLength": 8, "maxLength": 128, "pattern": no_nul }),
        ),
        (
            "RegisterRequest",
            "password_confirm",
            json!({ "minLength": 8, "maxLength": 128, "pattern": no_nul }),
        ),
        (
            "RegisterRequest",
            "role",
            json!({ "$ref": "#/components/schemas/RegisterRole" }),
        ),
        (
            "RegisterRequest",
            "department",
            json!({ "maxLength": 100, "pattern": no_nul }),
        ),
        (
            "LoginRequest",
            "email",
            json!({ "minLength": 1, "pattern": non_blank }),
        ),
        (
            "LoginRequest",
            "password",
            json!({ "minLength": 1, "pattern": non_blank }),
        ),
        ("LoginRequest", "device", json!({ "type": "string" })),
        (
            "RefreshRequest",
            "refresh",
            json!({ "minLength": 1, "pattern": non_blank }),
        ),
        (
            "ProfileUpdate",
            "username",
            json!({ "$ref": "#/components/schemas/Username" }),
        ),
        (
            "ProfileUpdate",
            "email",
            json!({ "format": "email", "maxLength": 254 }),
        ),
        (
            "ProfileUpdate",
            "department",
            json!({ "maxLength": 100, "pattern": no_nul }),
        ),
        (
            "ProfileReplace",
            "username",
            json!({ "$ref": "#/components/schemas/Username" }),
        ),
        (
            "ProfileReplace",
            "email",
            json!({ "format": "email", "maxLength": 254 }),
        ),
        (
            "PasswordChange",
            "old_password",
            json!({ "minLength": 1, "pattern": non_blank }),
        ),
        (
            "PasswordChange",
            "new_password",
            json!({ "minLength": 8, "maxLength": 128, "pattern": no_nul }),
        ),
        (
            "SessionCreate",
            "title",
            json!({ "minLength": 1, "maxLength": 200, "pattern": non_blank }),
        ),
        (
            "SessionCreate",
            "category",
            json!({ "$ref": "#/components/schemas/Category" }),
        ),
        (
            "SessionUpdate",
            "title",
            json!({ "minLength": 1, "maxLength": 200, "pattern": non_blank }),
        ),
        ("SessionUpdate", "is_active", json!({ "type": "boolean" })),
        (
            "MessageCreate",
            "content",
            json!({ "minLength": 1, "maxLength": 10000, "pattern": non_blank }),
        ),
        (
            "MessageCreate",
            "message_type",
            json!({ "$ref": "#/components/schemas/ClientMessageType" }),
        ),
        ("MessageCreate", "metadata", json!({ "type": "object" })),
        ("User", "email", json!({ "format": "email" })),
        ("Message", "id", json!({ "format": "uuid" })),
        ("Message", "timestamp", json!({ "format": "date-time" })),
        (
            "MessageWithReply",
            "timestamp",
            json!({ "format": "date-time" }),
        ),
        ("SessionDetail", "id", json!({ "format": "uuid" })),
        (
            "SessionDetail",
            "created_at",
            json!({ "format": "date-time" }),
        ),
        (
            "SessionDetail",
            "updated_at",
            json!({ "format": "date-time" }),
        ),
        (
            "SessionListItem",
            "updated_at",
            json!({ "format": "date-time" }),
        ),
        ("SessionPage", "next", json!({ "format": "uri" })),
        ("MessagePage", "previous", json!({ "format": "uri" })),
    ];
    let required = [
        (
            "RegisterRequest",
            json!(["username", "email", "password", "password_confirm"]),
        ),
        ("LoginRequest", json!(["email", "password"])),
        ("ProfileReplace", json!(["username", "email"])),
        ("SessionCreate", json!(["title"])),
        ("MessageCreate", json!(["content"])),
    ];

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    let schemas = &schema["components"]["schemas"];
    for (name, property, constraints) in expected {
        let label = format!("{name}.{property}");
        assert_subset(&schemas[name]["properties"][property], &constraints, &label);
    }
    for (name, fields) in required {
        assert_eq!(schemas[name]["required"], fields, "{name}");
    }
    for name in ["ProfileUpdate", "SessionUpdate"] {
        assert_eq!(schemas[name].get("required"), None, "{name}");
    }
    let username = &schemas["Username"];
    assert_subset(
        username,
        &json!({ "type": "string", "minLength": 1, "maxLength": 150 }),
        "Username",
    );
    let pattern = username["pattern"].as_str().unwrap();
    assert!(
        pattern.starts_with(&format!("^[{WHITE_SPACE}]*[")),
        "{pattern}"
    );
    assert!(
        pattern.ends_with(&format!("]+[{WHITE_SPACE}]*$")),
        "{pattern}"
    );
    assert!(pattern.contains(r"\uac00-\ud7a3"), "Korean names are valid");
    assert_eq!(
        schemas["RegisterRole"]["enum"],
        json!(["doctor", "nurse", "user"])
    );
    assert_eq!(
        schemas["ClientMessageType"]["enum"],
        json!(["text", "image", "file"])
    );
}

#[tokio::test]
async fn parameters_carry_the_servers_formats_and_choices() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    for (path, method, operation) in operations(&schema) {
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap();
            let label = format!("{method} {path} {name}");
            let expected = match name {
                "id" => {
                    json!({ "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } })
                }
                "page" => {
                    json!({ "in": "query", "required": false, "schema": { "$ref": "#/components/schemas/PageNumber" } })
                }
                "category" => {
                    json!({ "in": "query", "required": false, "schema": { "$ref": "#/components/schemas/CategoryFilter" } })
                }
                "is_active" => {
                    json!({ "in": "query", "required": false, "schema": { "type": "boolean" } })
                }
                "after" => {
                    json!({ "in": "query", "required": false, "schema": { "$ref": "#/components/schemas/AfterMessage" } })
                }
                "Idempotency-Key" => json!({
                    "in": "header",
                    "required": false,
                    "schema": { "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[!-~]{1,64}$" },
                }),
                other => panic!("{label}: unexpected parameter {other}"),
            };
            assert_subset(&parameter, &expected, &label);
        }
    }
    let schemas = &schema["components"]["schemas"];
    assert_eq!(
        schemas["PageNumber"],
        json!({ "oneOf": [
            { "type": "integer", "minimum": 1 },
            { "type": "string", "enum": ["last", ""] },
        ] })
    );
    assert_eq!(
        schemas["CategoryFilter"],
        json!({ "type": "string", "enum": ["medical", "general", "emergency", "consultation", ""] })
    );
    assert_eq!(
        schemas["AfterMessage"],
        json!({ "oneOf": [
            { "type": "string", "format": "uuid" },
            { "type": "string", "enum": [""] },
        ] })
    );
}

#[tokio::test]
async fn every_query_value_the_document_allows_is_one_the_server_takes() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let message = app.say(&kim, &session, "두통").await;
    let schema = body(app.get("/api/schema/").await).await;
    let categories: Vec<String> = schema["components"]["schemas"]["CategoryFilter"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_str().unwrap().to_owned())
        .collect();
    let mut queries: Vec<String> = categories.iter().map(|c| format!("category={c}")).collect();
    queries.extend(["true", "false", "1", "0", "TRUE", ""].map(|a| format!("is_active={a}")));
    queries.extend(["1", "last", ""].map(|page| format!("page={page}")));
    let messages = format!("/api/chat/sessions/{session}/messages/");
    let mut paths: Vec<String> = queries
        .iter()
        .map(|query| format!("/api/chat/sessions/?{query}"))
        .collect();
    paths.extend(
        [
            "after=",
            "page=last",
            &format!("after={}", message["id"].as_str().unwrap()),
        ]
        .map(|q| format!("{messages}?{q}")),
    );

    for path in paths {
        // Act
        let response = app.authed(Method::GET, &path, &kim).send().await.unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    }
}

#[tokio::test]
async fn the_documented_length_limits_are_the_servers() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Limits").await;
    let schema = body(app.get("/api/schema/").await).await;
    let schemas = &schema["components"]["schemas"];
    let limit = |name: &str, property: &str, key: &str| -> usize {
        let constraints = match property {
            "" => &schemas[name],
            _ => &schemas[name]["properties"][property],
        };
        usize::try_from(
            constraints[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}.{property} {key}")),
        )
        .unwrap()
    };
    let username = limit("Username", "", "maxLength");
    let email = limit("ProfileUpdate", "email", "maxLength");
    let department = limit("ProfileUpdate", "department", "maxLength");
    let title = limit("SessionCreate", "title", "maxLength");
    let content = limit("MessageCreate", "content", "maxLength");
    let password_min = limit("RegisterRequest", "password", "minLength");
    let password_max = limit("RegisterRequest", "password", "maxLength");
    let address =
        |length: usize| format!("{}@example.com", "k".repeat(length - "@example.com".len()));
    let password = |length: usize| {
        "violet-harbour-42-"
            .chars()
            .cycle()
            .take(length)
            .collect::<String>()
    };
    let profile = |field: &str, value: String| {
        (
            Method::PATCH,
            "/api/auth/profile/".to_owned(),
            json!({ field: value }),
        )
    };
    let cases = [
        (
            profile("username", "k".repeat(username)),
            profile("username", "k".repeat(username + 1)),
        ),
        (
            profile("email", address(email)),
            profile("email", address(email + 1)),
        ),
        (
            profile("department", "d".repeat(department)),
            profile("department", "d".repeat(department + 1)),
        ),
        (
            (
                Method::POST,
                "/api/chat/sessions/".to_owned(),
                json!({ "title": "t".repeat(title) }),
            ),
            (
                Method::POST,
                "/api/chat/sessions/".to_owned(),
                json!({ "title": "t".repeat(title + 1) }),
            ),
        ),
        (
            (
                Method::POST,
                format!("/api/chat/sessions/{session}/messages/"),
                json!({ "content": "c".repeat(content) }),
            ),
            (
                Method::POST,
                format!("/api/chat/sessions/{session}/messages/"),
                json!({ "content": "c".repeat(content + 1) }),
            ),
        ),
        (
            (
                Method::POST,
                "/api/auth/password/".to_owned(),
                json!({ "old_password": PASSWORD, "new_password": password(password_max) }),
            ),
            (
                Method::POST,
                "/api/auth/password/".to_owned(),
                json!({ "old_password": PASSWORD, "new_password": password(password_max + 1) }),
            ),
        ),
    ];
    let too_short = app
        .post_json(
            "/api/auth/register/",
            &json!({
                "username": "lee", "email": "lee@example.com",
                "password": password(password_min - 1), "password_confirm": password(password_min - 1),
            }),
        )
        .await;
    let shortest = app
        .post_json(
            "/api/auth/register/",
            &json!({
                "username": "lee", "email": "lee@example.com",
                "password": password(password_min), "password_confirm": password(password_min),
            }),
        )
        .await;

    for ((method, path, at_limit), (_, _, over_limit)) in cases {
        // Act
        let over = app
            .authed(method.clone(), &path, &kim)
            .json(&over_limit)
            .send()
            .await
            .unwrap();
        let at = app
            .authed(method.clone(), &path, &kim)
            .json(&at_limit)
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(
            over.status(),
            StatusCode::BAD_REQUEST,
            "{method} {path} over the limit"
        );
        assert!(
            at.status().is_success(),
            "{method} {path} at the limit: {}",
            at.status()
        );
    }
    assert_eq!(
        body(too_short).await,
        json!({ "password": ["This password is too short. It must contain at least 8 characters."] })
    );
    assert_eq!(shortest.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_document_sends_its_readers_nowhere_outside_it() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let schema = body(app.get("/api/schema/").await).await;

    // Assert
    let mut texts = Vec::new();
    strings(&schema, &mut texts);
    for text in texts {
        for outside in ["../", "API.md", "shared/", "contract", "section "] {
            assert!(!text.contains(outside), "{outside:?} in {text:?}");
        }
    }
}

/// What would send a reader to a file outside the repository, which a clone does not
/// have (compared in lower case).
const OUTSIDE: &[&str] = &[
    "../shared",
    "shared/spec",
    "spec/api.md",
    "../seed",
    "contract",
];

/// The close codes of a socket with their fixed reasons, as the reference lists them.
const CLOSE_CODES: &[(u16, &str)] = &[
    (1000, "idle timeout"),
    (1001, "server shutting down"),
    (1008, "tokens revoked"),
    (1008, "session deleted"),
    (1009, "frame too large"),
    (1013, "reading too slowly"),
];

#[tokio::test]
async fn the_reference_is_served_as_the_repository_keeps_it() {
    // Arrange
    let app = spawn_app().await;
    let expected = std::fs::read_to_string(repository().join("docs/API.md")).unwrap();

    for path in ["/api/docs/reference", "/api/docs/reference/"] {
        // Act
        let response = app.get(path).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/markdown; charset=utf-8",
            "{path}"
        );
        assert!(
            response.text().await.unwrap() == expected,
            "{path} is not docs/API.md"
        );
    }
}

#[tokio::test]
async fn the_served_docs_describe_the_websocket_protocol() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let schema = body(app.get("/api/schema/").await).await;
    let reference = app.get("/api/docs/reference").await.text().await.unwrap();

    // Assert
    let description = schema["info"]["description"].as_str().unwrap();
    assert!(
        description.contains("[`/api/docs/reference`](/api/docs/reference)"),
        "{description}"
    );
    for (name, doc) in [
        ("the OpenAPI description", description),
        ("the reference", reference.as_str()),
    ] {
        for needed in [
            "ws://HOST/ws/chat/{session_id}/",
            "?token=<access>",
            "Authorization: Bearer <access>",
            "after=<message id>",
            r#"{"type": "chat_message", "message": "<content>""#,
            r#"{"type": "ai_delta", "message_id": "<uuid>", "delta": "<text>"}"#,
            r#"{"type": "ping"}"#,
            r#"{"type": "pong"}"#,
            r#"{"type": "error", "error": "<what was wrong>"}"#,
            r#""retry_after": N"#,
        ] {
            assert!(doc.contains(needed), "{name} lacks {needed:?}");
        }
        for status in [101, 400, 401, 403, 404, 405, 426, 503] {
            let row = format!("\n| {status} | ");
            assert!(doc.contains(&row), "{name} lacks the handshake's {status}");
        }
        for (code, reason) in CLOSE_CODES {
            let row = format!("\n| {code} | `{reason}` | ");
            assert!(
                doc.contains(&row),
                "{name} lacks close code {code} {reason:?}"
            );
        }
    }
}

#[tokio::test]
async fn no_served_doc_sends_its_reader_outside_the_repository() {
    // Arrange
    let app = spawn_app().await;

    for path in [
        "/api/docs/reference",
        "/api/schema/",
        "/api/docs/",
        "/api/docs/swagger-initializer.js",
    ] {
        // Act
        let response = app.get(path).await;

        // Assert
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let text = response.text().await.unwrap().to_lowercase();
        for outside in OUTSIDE {
            assert!(!text.contains(outside), "{outside:?} in {path}");
        }
    }
}

#[test]
fn no_document_of_the_repository_sends_its_reader_outside_it() {
    // Arrange
    let root = repository();
    let mut documents = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("benches/README.md"),
        root.join("narutalk-core/data/README.md"),
    ];
    let mut folders = vec![root.join("docs")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|extension| extension == "md") {
                documents.push(path);
            }
        }
    }
    assert!(
        documents.contains(&root.join("docs/API.md")),
        "{documents:?}"
    );

    for document in documents {
        // Act
        let text = std::fs::read_to_string(&document).unwrap().to_lowercase();

        // Assert
        for outside in OUTSIDE {
            assert!(
                !text.contains(outside),
                "{outside:?} in {}",
                document.display()
            );
        }
    }
}

#[test]
fn the_readme_links_the_reference_the_licence_and_the_notices() {
    // Arrange
    let root = repository();

    // Act
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();

    // Assert
    for target in ["docs/API.md", "LICENSE", "THIRD-PARTY-NOTICES.md"] {
        assert!(
            readme.contains(&format!("]({target})")),
            "no link to {target}"
        );
        assert!(root.join(target).is_file(), "{target} is missing");
    }
}

#[test]
fn the_licence_is_the_mit_licence_the_manifests_name_and_the_notices_name_their_owners() {
    // Arrange
    let root = repository();

    // Act
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let licence = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    let notices = std::fs::read_to_string(root.join("THIRD-PARTY-NOTICES.md")).unwrap();

    // Assert
    assert!(
        manifest.contains("\nlicense = \"MIT\"\n"),
        "the workspace's licence"
    );
    assert!(licence.starts_with("MIT License\n\nCopyright (c) 2026 The Narutalk developers\n"));
    assert!(licence.contains("Permission is hereby granted, free of charge"));
    for owner in [
        "Copyright (c) Django Software Foundation and individual contributors.",
        "Copyright 2020-2021 SmartBear Software Inc.",
        "Apache License\n                           Version 2.0, January 2004",
        "Community Data License Agreement - Permissive - Version 2.0",
    ] {
        assert!(notices.contains(owner), "the notices lack {owner:?}");
    }
}

/// The repository's root: the folder of the package these tests belong to.
fn repository() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The whitespace the server trims, as the inside of a regex character class (the
/// document's patterns name it instead of `\s`, which each regex engine reads differently).
const WHITE_SPACE: &str =
    r"\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000";

/// `base` and `more`, sorted.
fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    let mut all: Vec<&str> = base.iter().chain(more).copied().collect();
    all.sort_unstable();
    all
}

/// Every operation of the document: path, method and the operation object.
fn operations(schema: &Value) -> Vec<(&str, &str, &Value)> {
    let mut operations = Vec::new();
    for (path, item) in schema["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if is_method(method) {
                operations.push((path.as_str(), method.as_str(), operation));
            }
        }
    }
    operations
}

/// The response object itself, following a `$ref` to `components/responses`.
fn resolve_response<'a>(schema: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/responses/").unwrap();
            &schema["components"]["responses"][name]
        }
        None => response,
    }
}

/// Asserts that every key of `expected` is in `actual` with the same value.
fn assert_subset(actual: &Value, expected: &Value, label: &str) {
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&actual[key], value, "{label}: `{key}` in {actual}");
    }
}

/// Every string in `value`, keys included.
fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(object) => {
            for (key, item) in object {
                out.push(key);
                strings(item, out);
            }
        }
        _ => {}
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
