//! `/api/chat/` (contract section 3): sessions, their list and its pages and filters,
//! messages, the AI turn with its error message and ordering, idempotent posts, the
//! dashboard counts that chatting moves, and that nobody sees another user's session.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use narutalk_core::ai::{AiError, AiReply, AiRequest, HistoryTurn, Responder};
use narutalk_core::chat::{Category, Sender};
use narutalk_core::fields::JsonObject;
use narutalk_server::ServeOptions;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Account, TestApp, assert_answer, body, spawn_app, spawn_app_with, spawn_app_with_responder,
};

const SESSIONS: &str = "/api/chat/sessions/";
const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";

// Sessions: create, read, update, delete.

#[tokio::test]
async fn creating_a_session_answers_201_with_its_detail_in_category_general() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::POST, SESSIONS, &kim)
        .json(&json!({ "title": "Headache" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created = body(response).await;
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(
        redact(&created),
        json!({
            "id": "<uuid>", "title": "Headache", "category": "general",
            "created_at": "<time>", "updated_at": "<time>", "is_active": true,
            "messages": [], "message_count": 0,
        })
    );
}

#[tokio::test]
async fn a_created_session_is_stored_with_its_title_trimmed_and_its_category() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;

    // Act
    let created = app
        .authed(Method::POST, SESSIONS, &kim)
        .json(&json!({ "title": "  \t가슴 통증 \n", "category": "emergency" }))
        .send()
        .await
        .unwrap();

    // Assert
    let created = body(created).await;
    let id = created["id"].as_str().unwrap();
    let stored = body(
        app.authed(Method::GET, &session_path(id), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stored, created);
    assert_eq!(stored["title"], "가슴 통증");
    assert_eq!(stored["category"], "emergency");
}

#[tokio::test]
async fn a_title_may_have_200_characters_after_trimming_but_not_201() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let longest = "가".repeat(200);

    // Act
    let accepted = app
        .authed(Method::POST, SESSIONS, &kim)
        .json(&json!({ "title": format!("  {longest}  ") }))
        .send()
        .await
        .unwrap();
    let refused = app
        .authed(Method::POST, SESSIONS, &kim)
        .json(&json!({ "title": format!("{longest}a") }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(accepted.status(), StatusCode::CREATED);
    assert_eq!(body(accepted).await["title"], longest.as_str());
    assert_answer(
        refused,
        StatusCode::BAD_REQUEST,
        json!({ "title": ["Ensure this field has no more than 200 characters."] }),
    )
    .await;
}

#[tokio::test]
async fn a_session_body_with_bad_fields_answers_each_fields_message() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let cases = [
        (json!({}), json!({ "title": ["This field is required."] })),
        (
            json!({ "title": " \n\t " }),
            json!({ "title": ["This field may not be blank."] }),
        ),
        (
            json!({ "title": null }),
            json!({ "title": ["This field may not be null."] }),
        ),
        (
            json!({ "title": 7, "category": "x" }),
            json!({
                "title": ["Not a valid string."],
                "category": ["\"x\" is not a valid choice."],
            }),
        ),
    ];

    for (sent, expected) in cases {
        // Act
        let response = app
            .authed(Method::POST, SESSIONS, &kim)
            .json(&sent)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(response, StatusCode::BAD_REQUEST, expected).await;
    }
    assert_eq!(list(&app, &kim, SESSIONS).await["count"], 0);
}

#[tokio::test]
async fn a_session_answers_its_detail_with_every_message_oldest_first() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    app.say(&kim, &session, "first").await;
    app.say(&kim, &session, "second").await;

    // Act
    let response = app
        .authed(Method::GET, &session_path(&session), &kim)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let detail = body(response).await;
    assert_eq!(
        redact(&detail),
        json!({
            "id": "<uuid>", "title": "Headache", "category": "general",
            "created_at": "<time>", "updated_at": "<time>", "is_active": true,
            "messages": [
                user_message("first"),
                template_reply("first"),
                user_message("second"),
                template_reply("second"),
            ],
            "message_count": 4,
        })
    );
    assert_eq!(detail["id"], session.as_str());
}

#[tokio::test]
async fn an_empty_patch_moves_updated_at_forward_and_changes_nothing_else() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let before = create_session(&app, &kim, json!({ "title": "Headache" })).await;
    let id = before["id"].as_str().unwrap();

    // Act
    let response = app
        .authed(Method::PATCH, &session_path(id), &kim)
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let after = body(response).await;
    assert!(after["updated_at"].as_str() > before["updated_at"].as_str());
    let mut unchanged = after.clone();
    unchanged["updated_at"] = before["updated_at"].clone();
    assert_eq!(unchanged, before);
    let stored = body(
        app.authed(Method::GET, &session_path(id), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stored, after);
}

#[tokio::test]
async fn a_patch_changes_title_category_and_the_is_active_label() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;

    // Act
    let response = app
        .authed(Method::PATCH, &session_path(&session), &kim)
        .json(&json!({ "title": "  Migraine ", "category": "medical", "is_active": false }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        redact(&body(response).await),
        json!({
            "id": "<uuid>", "title": "Migraine", "category": "medical",
            "created_at": "<time>", "updated_at": "<time>", "is_active": false,
            "messages": [], "message_count": 0,
        })
    );
}

#[tokio::test]
async fn a_patch_with_bad_fields_answers_every_field_error_and_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let before = create_session(&app, &kim, json!({ "title": "Headache" })).await;
    let id = before["id"].as_str().unwrap();

    // Act
    let response = app
        .authed(Method::PATCH, &session_path(id), &kim)
        .json(&json!({ "title": "  ", "category": "surgery", "is_active": "false" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({
            "title": ["This field may not be blank."],
            "category": ["\"surgery\" is not a valid choice."],
            "is_active": ["Must be a valid boolean."],
        }),
    )
    .await;
    let stored = body(
        app.authed(Method::GET, &session_path(id), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stored, before);
}

#[tokio::test]
async fn an_inactive_session_still_takes_messages() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Archived").await;
    let archived = app
        .authed(Method::PATCH, &session_path(&session), &kim)
        .json(&json!({ "is_active": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status(), StatusCode::OK);

    // Act
    let posted = post_message(&app, &kim, &session, json!({ "content": "still there?" })).await;

    // Assert
    assert_eq!(posted.status(), StatusCode::CREATED);
    let detail = body(
        app.authed(Method::GET, &session_path(&session), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(detail["is_active"], false);
    assert_eq!(detail["message_count"], 2);
}

#[tokio::test]
async fn deleting_a_session_answers_204_then_404_and_its_messages_are_gone() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    app.say(&kim, &session, "두통").await;

    // Act
    let deleted = app
        .authed(Method::DELETE, &session_path(&session), &kim)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(deleted.bytes().await.unwrap().len(), 0);
    for method in [Method::GET, Method::DELETE] {
        let again = app
            .authed(method, &session_path(&session), &kim)
            .send()
            .await
            .unwrap();
        assert_answer(
            again,
            StatusCode::NOT_FOUND,
            json!({ "detail": "Not found." }),
        )
        .await;
    }
    let messages = app
        .authed(Method::GET, &messages_path(&session), &kim)
        .send()
        .await
        .unwrap();
    assert_answer(
        messages,
        StatusCode::NOT_FOUND,
        json!({ "detail": "Not found." }),
    )
    .await;
    let dashboard = body(
        app.authed(Method::GET, "/api/auth/dashboard/", &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(dashboard["total_messages"], 0);
    assert_eq!(dashboard["recent_chats"], 0);
}

#[tokio::test]
async fn read_only_and_unknown_session_fields_are_ignored() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let ignored = json!({
        "id": "00000000-0000-4000-8000-000000000000", "message_count": 9,
        "created_at": "2000-01-01T00:00:00.000000Z", "messages": [1], "colour": "red",
    });
    let mut sent = ignored.clone();
    sent["title"] = json!("Headache");
    sent["is_active"] = json!(false);

    // Act
    let created = create_session(&app, &kim, sent).await;
    let patched = app
        .authed(
            Method::PATCH,
            &session_path(created["id"].as_str().unwrap()),
            &kim,
        )
        .json(&ignored)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(
        redact(&created),
        json!({
            "id": "<uuid>", "title": "Headache", "category": "general",
            "created_at": "<time>", "updated_at": "<time>", "is_active": true,
            "messages": [], "message_count": 0,
        })
    );
    assert_eq!(patched.status(), StatusCode::OK);
    let patched = body(patched).await;
    assert_eq!(patched["id"], created["id"]);
    assert_eq!(patched["created_at"], created["created_at"]);
    assert_eq!(patched["message_count"], 0);
}

#[tokio::test]
async fn a_session_id_that_is_not_a_canonical_uuid_is_not_found() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let ids = [
        session.to_uppercase(),
        session.replace('-', ""),
        "not-a-uuid".to_owned(),
        "00000000-0000-4000-8000-000000000000".to_owned(),
    ];

    for id in ids {
        // Act
        let response = app
            .authed(Method::GET, &session_path(&id), &kim)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::NOT_FOUND,
            json!({ "detail": "Not found." }),
        )
        .await;
    }
}

// The session list: order, items, pages, filters.

#[tokio::test]
async fn sessions_are_listed_most_recently_updated_first() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let oldest = app.session(&kim, "A").await;
    let middle = app.session(&kim, "B").await;
    app.session(&kim, "C").await;
    let created_order = titles(&list(&app, &kim, SESSIONS).await);

    // Act
    app.say(&kim, &oldest, "hello").await;
    let after_message = titles(&list(&app, &kim, SESSIONS).await);
    let patched = app
        .authed(Method::PATCH, &session_path(&middle), &kim)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let after_patch = titles(&list(&app, &kim, SESSIONS).await);

    // Assert
    assert_eq!(created_order, ["C", "B", "A"]);
    assert_eq!(after_message, ["A", "C", "B"]);
    assert_eq!(after_patch, ["B", "A", "C"]);
}

#[tokio::test]
async fn a_list_item_has_the_list_shape_with_its_last_message_and_count() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let chatted = app.session(&kim, "Chatted").await;
    app.say(&kim, &chatted, "두통").await;
    let detail = body(
        app.authed(Method::GET, &session_path(&chatted), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    app.session(&kim, "Empty").await;

    // Act
    let response = app
        .authed(Method::GET, SESSIONS, &kim)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let page = body(response).await;
    assert_eq!(
        redact(&page),
        json!({
            "count": 2, "next": null, "previous": null,
            "results": [
                {
                    "id": "<uuid>", "title": "Empty", "category": "general",
                    "created_at": "<time>", "updated_at": "<time>",
                    "last_message": null, "message_count": 0,
                },
                {
                    "id": "<uuid>", "title": "Chatted", "category": "general",
                    "created_at": "<time>", "updated_at": "<time>",
                    "last_message": template_reply("두통"), "message_count": 2,
                },
            ],
        })
    );
    assert_eq!(page["results"][1]["last_message"], detail["messages"][1]);
    assert_eq!(page["results"][1]["updated_at"], detail["updated_at"]);
}

#[tokio::test]
async fn page_one_of_25_sessions_links_to_page_two_by_the_requests_host() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_sessions(&app, &kim, 25).await;

    // Act
    let by_address = list(&app, &kim, SESSIONS).await;
    let by_name = app
        .authed(Method::GET, SESSIONS, &kim)
        .header("host", "chat.example.org:8443")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(by_address["count"], 25);
    assert_eq!(by_address["next"], app.url("/api/chat/sessions/?page=2"));
    assert_eq!(by_address["previous"], Value::Null);
    let expected: Vec<String> = (6..=25).rev().map(|n| format!("Session {n}")).collect();
    assert_eq!(titles(&by_address), expected);
    let by_name = body(by_name).await;
    assert_eq!(
        by_name["next"],
        "http://chat.example.org:8443/api/chat/sessions/?page=2"
    );
}

#[tokio::test]
async fn page_two_links_back_to_page_one_without_a_page_parameter() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_sessions(&app, &kim, 25).await;

    // Act
    let page = list(&app, &kim, "/api/chat/sessions/?page=2").await;

    // Assert
    assert_eq!(page["count"], 25);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], app.url("/api/chat/sessions/"));
    assert_eq!(
        titles(&page),
        [
            "Session 5",
            "Session 4",
            "Session 3",
            "Session 2",
            "Session 1"
        ]
    );
}

#[tokio::test]
async fn page_links_keep_the_other_query_parameters_sorted_by_name() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_sessions(&app, &kim, 25).await;

    // Act
    let first = list(
        &app,
        &kim,
        "/api/chat/sessions/?page_size=5&is_active=true&category=general",
    )
    .await;
    let second = list(
        &app,
        &kim,
        "/api/chat/sessions/?page=2&is_active=true&category=general&page_size=5",
    )
    .await;

    // Assert
    assert_eq!(first["results"].as_array().unwrap().len(), 20);
    assert_eq!(
        first["next"],
        app.url("/api/chat/sessions/?category=general&is_active=true&page=2&page_size=5")
    );
    assert_eq!(
        second["previous"],
        app.url("/api/chat/sessions/?category=general&is_active=true&page_size=5")
    );
    assert_eq!(second["next"], Value::Null);
}

#[tokio::test]
async fn page_links_are_https_only_when_a_trusted_proxy_says_so() {
    // Arrange
    let trusted = spawn_app_with(
        |config| config.trusted_proxies = vec![[127, 0, 0, 1].into()],
        ServeOptions::default(),
    )
    .await;
    let untrusted = spawn_app().await;
    let mut next_links = Vec::new();

    for app in [&trusted, &untrusted] {
        let kim = app.account("kim").await;
        create_sessions(app, &kim, 21).await;

        // Act
        let response = app
            .authed(Method::GET, SESSIONS, &kim)
            .header("host", "chat.example.org")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        next_links.push(body(response).await["next"].clone());
    }

    // Assert
    assert_eq!(
        next_links,
        [
            "https://chat.example.org/api/chat/sessions/?page=2",
            "http://chat.example.org/api/chat/sessions/?page=2",
        ]
    );
}

#[tokio::test]
async fn page_last_answers_the_last_page() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_sessions(&app, &kim, 25).await;

    // Act
    let last = list(&app, &kim, "/api/chat/sessions/?page=last").await;

    // Assert
    let second = list(&app, &kim, "/api/chat/sessions/?page=2").await;
    assert_eq!(last, second);
}

#[tokio::test]
async fn a_page_past_the_end_zero_negative_or_not_a_number_is_an_invalid_page() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_sessions(&app, &kim, 25).await;

    for page in ["3", "0", "-1", "x", "1.5", "LAST", "99999999999"] {
        // Act
        let response = app
            .authed(Method::GET, &format!("{SESSIONS}?page={page}"), &kim)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::NOT_FOUND,
            json!({ "detail": "Invalid page." }),
        )
        .await;
    }
}

#[tokio::test]
async fn page_one_of_an_empty_list_is_200_with_no_results() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;

    for path in [
        "/api/chat/sessions/",
        "/api/chat/sessions/?page=",
        "/api/chat/sessions/?page=1",
        "/api/chat/sessions/?page=last",
    ] {
        // Act
        let response = app.authed(Method::GET, path, &kim).send().await.unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::OK,
            json!({ "count": 0, "next": null, "previous": null, "results": [] }),
        )
        .await;
    }
    let page_two = app
        .authed(Method::GET, "/api/chat/sessions/?page=2", &kim)
        .send()
        .await
        .unwrap();
    assert_answer(
        page_two,
        StatusCode::NOT_FOUND,
        json!({ "detail": "Invalid page." }),
    )
    .await;
}

#[tokio::test]
async fn sessions_are_filtered_by_category_and_is_active() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    create_session(&app, &kim, json!({ "title": "General" })).await;
    create_session(
        &app,
        &kim,
        json!({ "title": "Medical", "category": "medical" }),
    )
    .await;
    let archived = create_session(
        &app,
        &kim,
        json!({ "title": "Archived medical", "category": "medical" }),
    )
    .await;
    let patched = app
        .authed(
            Method::PATCH,
            &session_path(archived["id"].as_str().unwrap()),
            &kim,
        )
        .json(&json!({ "is_active": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let cases: [(&str, &[&str]); 7] = [
        ("category=medical", &["Archived medical", "Medical"]),
        ("category=emergency", &[]),
        ("is_active=false", &["Archived medical"]),
        ("is_active=0", &["Archived medical"]),
        ("is_active=true", &["Medical", "General"]),
        ("is_active=1&category=medical", &["Medical"]),
        (
            "category=&is_active=",
            &["Archived medical", "Medical", "General"],
        ),
    ];

    for (query, expected) in cases {
        // Act
        let page = list(&app, &kim, &format!("{SESSIONS}?{query}")).await;

        // Assert
        assert_eq!(titles(&page), expected, "?{query}");
        assert_eq!(page["count"], expected.len(), "?{query}");
    }
}

#[tokio::test]
async fn a_bad_filter_answers_400_under_its_parameter() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let cases = [
        (
            "category=x",
            json!({ "category": ["Select a valid choice. x is not one of the available choices."] }),
        ),
        (
            "is_active=maybe",
            json!({ "is_active": ["Must be a valid boolean."] }),
        ),
        (
            "category=Medical&is_active=yes",
            json!({
                "category": ["Select a valid choice. Medical is not one of the available choices."],
                "is_active": ["Must be a valid boolean."],
            }),
        ),
    ];

    for (query, expected) in cases {
        // Act
        let response = app
            .authed(Method::GET, &format!("{SESSIONS}?{query}"), &kim)
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(response, StatusCode::BAD_REQUEST, expected).await;
    }
}

// Messages: the list and `after`.

#[tokio::test]
async fn messages_are_listed_oldest_first_twenty_a_page() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Long").await;
    for n in 1..=13 {
        app.say(&kim, &session, &format!("q{n}")).await;
    }

    // Act
    let first = list(&app, &kim, &messages_path(&session)).await;
    let second = list(&app, &kim, &format!("{}?page=2", messages_path(&session))).await;

    // Assert
    let conversation: Vec<String> = (1..=13)
        .flat_map(|n| [format!("q{n}"), template_text(&format!("q{n}"))])
        .collect();
    assert_eq!(first["count"], 26);
    assert_eq!(
        first["next"],
        app.url(&format!("{}?page=2", messages_path(&session)))
    );
    assert_eq!(first["previous"], Value::Null);
    assert_eq!(contents(&first), conversation[..20]);
    assert_eq!(second["next"], Value::Null);
    assert_eq!(second["previous"], app.url(&messages_path(&session)));
    assert_eq!(contents(&second), conversation[20..]);
    assert_eq!(redact(&first["results"][0]), user_message("q1"));
    assert_eq!(redact(&first["results"][1]), template_reply("q1"));
}

#[tokio::test]
async fn after_lists_only_the_messages_stored_after_that_one_in_pages() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Long").await;
    let mut exchanges = Vec::new();
    for n in 1..=13 {
        exchanges.push(app.say(&kim, &session, &format!("q{n}")).await);
    }
    let after = exchanges[1]["reply"]["id"].as_str().unwrap();
    let path = format!("{}?after={after}", messages_path(&session));

    // Act
    let first = list(&app, &kim, &path).await;
    let second = list(&app, &kim, &format!("{path}&page=2")).await;

    // Assert
    let rest: Vec<String> = (3..=13)
        .flat_map(|n| [format!("q{n}"), template_text(&format!("q{n}"))])
        .collect();
    assert_eq!(first["count"], 22);
    assert_eq!(contents(&first), rest[..20]);
    assert_eq!(
        first["next"],
        app.url(&format!("{}?after={after}&page=2", messages_path(&session)))
    );
    assert_eq!(second["count"], 22);
    assert_eq!(contents(&second), rest[20..]);
    assert_eq!(second["previous"], app.url(&path));
    let last = exchanges[12]["reply"]["id"].as_str().unwrap();
    let nothing_after = list(
        &app,
        &kim,
        &format!("{}?after={last}", messages_path(&session)),
    )
    .await;
    assert_eq!(
        nothing_after,
        json!({ "count": 0, "next": null, "previous": null, "results": [] })
    );
}

#[tokio::test]
async fn after_that_is_not_a_message_of_this_session_is_unknown_message_id() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Here").await;
    app.say(&kim, &session, "hello").await;
    let elsewhere = app.session(&kim, "Elsewhere").await;
    let other_message = app.say(&kim, &elsewhere, "hi").await;
    let afters = [
        other_message["id"].as_str().unwrap().to_owned(),
        "00000000-0000-4000-8000-000000000000".to_owned(),
        "not-an-id".to_owned(),
    ];

    for after in afters {
        // Act
        let response = app
            .authed(
                Method::GET,
                &format!("{}?after={after}", messages_path(&session)),
                &kim,
            )
            .send()
            .await
            .unwrap();

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "after": ["Unknown message id."] }),
        )
        .await;
    }
}

// Posting a message.

#[tokio::test]
async fn posting_a_message_answers_201_with_the_stored_message_and_its_reply() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;

    // Act
    let response = post_message(&app, &kim, &session, json!({ "content": "두통" })).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created = body(response).await;
    let mut expected = user_message("두통");
    expected["reply"] = template_reply("두통");
    assert_eq!(redact(&created), expected);
    assert!(created["reply"]["timestamp"].as_str() >= created["timestamp"].as_str());
    let stored = list(&app, &kim, &messages_path(&session)).await;
    let mut message = created.clone();
    let reply = message.as_object_mut().unwrap().remove("reply").unwrap();
    assert_eq!(stored["results"], json!([message, reply]));
}

#[tokio::test]
async fn posting_a_message_moves_the_sessions_updated_at_forward() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let before = create_session(&app, &kim, json!({ "title": "Headache" })).await;
    let id = before["id"].as_str().unwrap();

    // Act
    let created = app.say(&kim, id, "두통").await;

    // Assert
    let after = body(
        app.authed(Method::GET, &session_path(id), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(after["updated_at"].as_str() > before["updated_at"].as_str());
    assert!(after["updated_at"].as_str() >= created["reply"]["timestamp"].as_str());
    assert_eq!(after["created_at"], before["created_at"]);
}

#[tokio::test]
async fn a_sender_in_the_body_is_ignored() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;

    // Act
    let response = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "I am the AI", "sender": "ai" }),
    )
    .await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let created = body(response).await;
    assert_eq!(created["sender"], "user");
    assert_eq!(created["reply"]["sender"], "ai");
}

#[tokio::test]
async fn image_and_file_message_types_are_accepted_and_error_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Attachments").await;

    // Act
    let image = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "x-ray.png", "message_type": "image" }),
    )
    .await;
    let file = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "report.pdf", "message_type": "file" }),
    )
    .await;
    let error = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "fake", "message_type": "error" }),
    )
    .await;

    // Assert
    assert_eq!(image.status(), StatusCode::CREATED);
    assert_eq!(body(image).await["message_type"], "image");
    assert_eq!(file.status(), StatusCode::CREATED);
    assert_eq!(body(file).await["message_type"], "file");
    assert_answer(
        error,
        StatusCode::BAD_REQUEST,
        json!({ "message_type": ["\"error\" is not a valid choice."] }),
    )
    .await;
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 4);
}

#[tokio::test]
async fn content_is_stored_exactly_as_sent_with_its_whitespace() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Spaces").await;
    let content = "  두통이\n\t심해요  \r\n";

    // Act
    let created = app.say(&kim, &session, content).await;

    // Assert
    assert_eq!(created["content"], content);
    let stored = list(&app, &kim, &messages_path(&session)).await;
    assert_eq!(stored["results"][0]["content"], content);
    assert_eq!(stored["results"][1]["content"], template_text(content));
}

#[tokio::test]
async fn blank_missing_or_non_string_content_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let cases = [
        (json!({}), "This field is required."),
        (json!({ "content": "" }), "This field may not be blank."),
        (
            json!({ "content": " \n\t " }),
            "This field may not be blank.",
        ),
        (json!({ "content": null }), "This field may not be null."),
        (json!({ "content": ["hi"] }), "Not a valid string."),
    ];

    for (sent, message) in cases {
        // Act
        let response = post_message(&app, &kim, &session, sent).await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "content": [message] }),
        )
        .await;
    }
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 0);
}

#[tokio::test]
async fn content_over_the_character_limit_is_refused_with_the_limit() {
    // Arrange
    let app = spawn_app_with(
        |config| config.core.content_max_chars = 5,
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Short").await;

    // Act
    let longest = post_message(&app, &kim, &session, json!({ "content": "안녕하세요" })).await;
    let too_long = post_message(&app, &kim, &session, json!({ "content": "안녕하세요!" })).await;

    // Assert
    assert_eq!(longest.status(), StatusCode::CREATED);
    assert_answer(
        too_long,
        StatusCode::BAD_REQUEST,
        json!({ "content": ["Ensure this field has no more than 5 characters."] }),
    )
    .await;
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 2);
}

#[tokio::test]
async fn metadata_must_be_an_object_and_is_stored_as_sent() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Metadata").await;
    let metadata = json!({ "source": "mobile", "nested": { "n": [1, 2.5, null, true] } });

    // Act
    let stored = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "hi", "metadata": metadata }),
    )
    .await;
    let refused = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "hi", "metadata": ["a"] }),
    )
    .await;
    let null = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "hi", "metadata": null }),
    )
    .await;

    // Assert
    assert_eq!(stored.status(), StatusCode::CREATED);
    assert_eq!(body(stored).await["metadata"], metadata);
    assert_answer(
        refused,
        StatusCode::BAD_REQUEST,
        json!({ "metadata": ["Expected a dictionary of items but got type \"list\"."] }),
    )
    .await;
    assert_answer(
        null,
        StatusCode::BAD_REQUEST,
        json!({ "metadata": ["This field may not be null."] }),
    )
    .await;
}

#[tokio::test]
async fn metadata_of_16384_bytes_is_accepted_and_one_byte_more_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Metadata").await;
    // `{"k":"…"}` is 8 bytes around the value; `é` is 2 bytes of UTF-8.
    let largest = json!({ "k": "é".repeat(8188) });
    let too_large = json!({ "k": format!("{}a", "é".repeat(8188)) });
    assert_eq!(serde_json::to_vec(&largest).unwrap().len(), 16_384);

    // Act
    let accepted = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "hi", "metadata": largest }),
    )
    .await;
    let refused = post_message(
        &app,
        &kim,
        &session,
        json!({ "content": "hi", "metadata": too_large }),
    )
    .await;

    // Assert
    assert_eq!(accepted.status(), StatusCode::CREATED);
    assert_answer(
        refused,
        StatusCode::BAD_REQUEST,
        json!({ "metadata": ["Ensure this value has at most 16384 bytes."] }),
    )
    .await;
}

// Idempotency keys.

#[tokio::test]
async fn a_repeated_idempotency_key_answers_the_first_result_with_no_new_message() {
    // Arrange
    let responder = Arc::new(RecordingResponder::default());
    let app = spawn_app_with_responder(|_| {}, responder.clone()).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let first = post_keyed(&app, &kim, &session, "key-1", json!({ "content": "두통" })).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = body(first).await;

    // Act
    let repeat = post_keyed(&app, &kim, &session, "key-1", json!({ "content": "두통" })).await;
    let other_body = post_keyed(
        &app,
        &kim,
        &session,
        "key-1",
        json!({ "content": "something else" }),
    )
    .await;

    // Assert
    assert_answer(repeat, StatusCode::CREATED, first.clone()).await;
    assert_answer(other_body, StatusCode::CREATED, first).await;
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 2);
    assert_eq!(responder.messages(), ["두통"]);
}

#[tokio::test]
async fn a_repeat_of_a_post_still_being_answered_waits_for_its_reply_without_a_new_ai_call() {
    // Arrange
    let (responder, mut asked, release) = HeldResponder::new("두통");
    let app = spawn_app_with_responder(|_| {}, Arc::new(responder)).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let path = messages_path(&session);
    let post = || {
        app.authed(Method::POST, &path, &kim)
            .header("Idempotency-Key", "key-1")
            .json(&json!({ "content": "두통" }))
            .send()
    };
    let first = tokio::spawn(post());
    assert_eq!(asked.recv().await.unwrap(), "두통");

    // Act
    let repeat = tokio::spawn(post());
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    let repeat = repeat.await.unwrap().unwrap();

    // Assert
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = body(first).await;
    assert_eq!(first["reply"]["content"], "AI: 두통");
    assert_answer(repeat, StatusCode::CREATED, first).await;
    assert_eq!(asked.try_recv().ok(), None);
    assert_eq!(list(&app, &kim, &path).await["count"], 2);
}

#[tokio::test]
async fn an_idempotency_key_counts_only_on_its_own_session() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let first_session = app.session(&kim, "One").await;
    let second_session = app.session(&kim, "Two").await;
    let first = post_keyed(
        &app,
        &kim,
        &first_session,
        "key-1",
        json!({ "content": "hi" }),
    )
    .await;
    let first = body(first).await;

    // Act
    let second = post_keyed(
        &app,
        &kim,
        &second_session,
        "key-1",
        json!({ "content": "hi" }),
    )
    .await;

    // Assert
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_ne!(body(second).await["id"], first["id"]);
    assert_eq!(
        list(&app, &kim, &messages_path(&second_session)).await["count"],
        2
    );
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_a_400_under_idempotency_key() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    let longest = "k".repeat(64);
    let accepted = post_keyed(&app, &kim, &session, &longest, json!({ "content": "hi" })).await;
    assert_eq!(accepted.status(), StatusCode::CREATED);

    for key in ["k".repeat(65), "two words".to_owned(), String::new()] {
        // Act
        let response = post_keyed(&app, &kim, &session, &key, json!({ "content": "hi" })).await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "Idempotency-Key": ["Must be 1 to 64 visible ASCII characters."] }),
        )
        .await;
    }
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 2);
}

// The AI turn.

#[tokio::test]
async fn a_failing_responder_stores_the_system_error_message_and_keeps_the_user_message() {
    // Arrange
    let app = spawn_app_with_responder(|_| {}, Arc::new(RecordingResponder::default())).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;

    // Act
    let response = post_message(&app, &kim, &session, json!({ "content": "fail: please" })).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let created = body(response).await;
    let mut expected = user_message("fail: please");
    expected["reply"] = json!({
        "id": "<uuid>", "content": AI_UNAVAILABLE, "sender": "system",
        "message_type": "error", "metadata": { "reason": "model offline" },
        "timestamp": "<time>",
    });
    assert_eq!(redact(&created), expected);
    let stored = list(&app, &kim, &messages_path(&session)).await;
    assert_eq!(stored["results"][0]["id"], created["id"]);
    assert_eq!(stored["results"][1], created["reply"]);
    assert_eq!(stored["count"], 2);
}

#[tokio::test]
async fn a_panicking_responder_stores_the_system_error_message() {
    // Arrange
    let app = spawn_app_with_responder(|_| {}, Arc::new(PanickingResponder)).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;

    // Act
    let response = post_message(&app, &kim, &session, json!({ "content": "두통" })).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let created = body(response).await;
    assert_eq!(
        redact(&created["reply"]),
        json!({
            "id": "<uuid>", "content": AI_UNAVAILABLE, "sender": "system",
            "message_type": "error", "metadata": { "reason": "responder failed" },
            "timestamp": "<time>",
        })
    );
    assert_eq!(list(&app, &kim, &messages_path(&session)).await["count"], 2);
}

#[tokio::test]
async fn the_responder_gets_the_category_and_the_last_messages_without_system_ones() {
    // Arrange
    let responder = Arc::new(RecordingResponder::default());
    let app = spawn_app_with_responder(
        |config| config.core.ai_history_messages = 2,
        responder.clone(),
    )
    .await;
    let kim = app.account("kim").await;
    let session = create_session(&app, &kim, json!({ "title": "Q", "category": "medical" })).await;
    let session = session["id"].as_str().unwrap();
    app.say(&kim, session, "one").await;
    app.say(&kim, session, "fail: two").await;

    // Act
    app.say(&kim, session, "three").await;

    // Assert
    let requests = responder.requests();
    assert_eq!(requests.len(), 3);
    let last = &requests[2];
    assert_eq!(last.category, Category::Medical);
    assert_eq!(last.message, "three");
    assert_eq!(
        last.history,
        [
            HistoryTurn {
                sender: Sender::Ai,
                content: "AI: one".into()
            },
            HistoryTurn {
                sender: Sender::User,
                content: "fail: two".into()
            },
        ]
    );
    assert_eq!(requests[0].history, []);
}

#[tokio::test]
async fn replies_are_produced_one_at_a_time_in_the_order_the_messages_were_stored() {
    // Arrange
    let (responder, mut asked, release) = HeldResponder::new("first");
    let app = spawn_app_with_responder(|_| {}, Arc::new(responder)).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Queue").await;
    let path = messages_path(&session);
    let post = |content: &'static str| {
        app.authed(Method::POST, &path, &kim)
            .json(&json!({ "content": content }))
            .send()
    };

    // Act
    let first = tokio::spawn(post("first"));
    assert_eq!(asked.recv().await.unwrap(), "first");
    let second = tokio::spawn(post("second"));
    wait_until_stored(&app, &kim, &session, 2).await;
    // The second message is stored while the first reply is held; its reply must wait.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked_while_held = asked.try_recv().ok();
    release.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();

    // Assert
    assert_eq!(asked_while_held, None);
    assert_eq!(asked.recv().await.unwrap(), "second");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(body(first).await["reply"]["content"], "AI: first");
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(body(second).await["reply"]["content"], "AI: second");
    let stored = list(&app, &kim, &path).await;
    let order: Vec<(String, String)> = stored["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("user".to_owned(), "first".to_owned()),
            ("user".to_owned(), "second".to_owned()),
            ("ai".to_owned(), "AI: first".to_owned()),
            ("ai".to_owned(), "AI: second".to_owned()),
        ]
    );
    let timestamps: Vec<&str> = stored["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["timestamp"].as_str().unwrap())
        .collect();
    assert!(timestamps.is_sorted(), "{timestamps:?}");
}

// The dashboard and ownership.

#[tokio::test]
async fn the_dashboard_counts_recent_chats_and_every_message_of_the_user() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let chatted = app.session(&kim, "Chatted").await;
    app.session(&kim, "Quiet").await;
    app.say(&kim, &chatted, "one").await;
    app.say(&kim, &chatted, "two").await;
    let elsewhere = app.session(&lee, "Lee's").await;
    app.say(&lee, &elsewhere, "not kim's").await;

    // Act
    let response = app
        .authed(Method::GET, "/api/auth/dashboard/", &kim)
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        json!({
            "user": {
                "id": kim.id, "username": "kim", "email": "kim@example.com",
                "role": "user", "department": "", "is_verified": false,
            },
            "recent_chats": 2,
            "total_messages": 4,
        }),
    )
    .await;
}

#[tokio::test]
async fn another_users_session_is_not_found_for_every_method() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let before = create_session(&app, &kim, json!({ "title": "Kim's" })).await;
    let session = before["id"].as_str().unwrap();
    let attempts = [
        (Method::GET, session_path(session), None),
        (
            Method::PATCH,
            session_path(session),
            Some(json!({ "title": "Lee's now" })),
        ),
        (
            Method::PATCH,
            session_path(session),
            Some(json!({ "title": "" })),
        ),
        (Method::DELETE, session_path(session), None),
        (Method::GET, messages_path(session), None),
        (
            Method::GET,
            format!(
                "{}?after=00000000-0000-4000-8000-000000000000&page=9",
                messages_path(session)
            ),
            None,
        ),
        (
            Method::POST,
            messages_path(session),
            Some(json!({ "content": "hi" })),
        ),
        (Method::POST, messages_path(session), Some(json!({}))),
    ];

    for (method, path, sent) in attempts {
        // Act
        let mut request = app.authed(method.clone(), &path, &lee);
        if let Some(sent) = sent {
            request = request.json(&sent);
        }
        let response = request.send().await.unwrap();

        // Assert
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(body(response).await, json!({ "detail": "Not found." }));
    }
    let after = body(
        app.authed(Method::GET, &session_path(session), &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(after, before);
    assert_eq!(list(&app, &lee, SESSIONS).await["count"], 0);
}

// Test doubles of the AI.

/// Answers `AI: {message}`, fails with `model offline` on a message starting with
/// `fail`, and records every request it gets.
#[derive(Default)]
struct RecordingResponder {
    requests: Mutex<Vec<AiRequest>>,
}

impl RecordingResponder {
    fn requests(&self) -> Vec<AiRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn messages(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.message).collect()
    }
}

impl Responder for RecordingResponder {
    fn name(&self) -> &str {
        "recording"
    }

    fn respond(
        &self,
        request: &AiRequest,
        _on_delta: &mut dyn FnMut(&str),
    ) -> Result<AiReply, AiError> {
        self.requests.lock().unwrap().push(request.clone());
        if request.message.starts_with("fail") {
            return Err(AiError::new("model offline"));
        }
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: JsonObject::new(),
        })
    }
}

/// Panics on every request.
struct PanickingResponder;

impl Responder for PanickingResponder {
    fn name(&self) -> &str {
        "panicking"
    }

    fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        panic!("the model crashed")
    }
}

/// Answers `AI: {message}`, reports each message it is asked about, and holds the reply
/// to one message until the test releases it.
struct HeldResponder {
    held: String,
    asked: tokio::sync::mpsc::UnboundedSender<String>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl HeldResponder {
    fn new(
        held: &str,
    ) -> (
        HeldResponder,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        mpsc::Sender<()>,
    ) {
        let (asked, asked_receiver) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_receiver) = mpsc::channel();
        let responder = HeldResponder {
            held: held.to_owned(),
            asked,
            release: Mutex::new(release_receiver),
        };
        (responder, asked_receiver, release)
    }
}

impl Responder for HeldResponder {
    fn name(&self) -> &str {
        "held"
    }

    fn respond(&self, request: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        let _ = self.asked.send(request.message.clone());
        if request.message == self.held {
            let _ = self.release.lock().unwrap().recv();
        }
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: JsonObject::new(),
        })
    }
}

// Helpers.

#[tokio::test]
async fn a_bad_page_of_messages_is_reported_after_the_session_and_after_checks() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let session = app.session(&kim, "Headache").await;
    let first = app.say(&kim, &session, "hello").await;
    let first = first["id"].as_str().unwrap();
    let unknown = "00000000-0000-4000-8000-000000000000";
    let cases = [
        (
            &lee,
            format!("after={first}&page=x"),
            StatusCode::NOT_FOUND,
            json!({ "detail": "Not found." }),
        ),
        (
            &kim,
            format!("after={unknown}&page=x"),
            StatusCode::BAD_REQUEST,
            json!({ "after": ["Unknown message id."] }),
        ),
        (
            &kim,
            format!("after={first}&page=x"),
            StatusCode::NOT_FOUND,
            json!({ "detail": "Invalid page." }),
        ),
    ];

    for (account, query, status, expected) in cases {
        // Act
        let response = app
            .authed(
                Method::GET,
                &format!("{}?{query}", messages_path(&session)),
                account,
            )
            .send()
            .await
            .unwrap();

        // Assert
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(body(response).await, expected, "{query}");
    }
}

fn session_path(id: &str) -> String {
    format!("/api/chat/sessions/{id}/")
}

fn messages_path(id: &str) -> String {
    format!("/api/chat/sessions/{id}/messages/")
}

/// `POST` of a session body; answers the created detail.
async fn create_session(app: &TestApp, account: &Account, sent: Value) -> Value {
    let response = app
        .authed(Method::POST, SESSIONS, account)
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    body(response).await
}

/// Creates `Session 1` to `Session n`, in that order.
async fn create_sessions(app: &TestApp, account: &Account, n: usize) {
    for i in 1..=n {
        app.session(account, &format!("Session {i}")).await;
    }
}

async fn post_message(app: &TestApp, account: &Account, session: &str, sent: Value) -> Response {
    app.authed(Method::POST, &messages_path(session), account)
        .json(&sent)
        .send()
        .await
        .unwrap()
}

async fn post_keyed(
    app: &TestApp,
    account: &Account,
    session: &str,
    key: &str,
    sent: Value,
) -> Response {
    app.authed(Method::POST, &messages_path(session), account)
        .header("Idempotency-Key", key)
        .json(&sent)
        .send()
        .await
        .unwrap()
}

/// `GET` of a list page that must answer 200.
async fn list(app: &TestApp, account: &Account, path: &str) -> Value {
    let response = app.authed(Method::GET, path, account).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    body(response).await
}

/// Waits until the session holds `n` messages (a concurrent post has stored its message);
/// fails after 20 s.
async fn wait_until_stored(app: &TestApp, account: &Account, session: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if list(app, account, &messages_path(session)).await["count"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the session never held {n} messages");
}

fn titles(page: &Value) -> Vec<String> {
    strings(page, "title")
}

fn contents(page: &Value) -> Vec<String> {
    strings(page, "content")
}

fn strings(page: &Value, key: &str) -> Vec<String> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap().to_owned())
        .collect()
}

fn template_text(message: &str) -> String {
    format!("AI 응답: {message}에 대한 의료 정보를 제공합니다.")
}

/// A stored text message from the user, as [`redact`] shows it.
fn user_message(content: &str) -> Value {
    json!({
        "id": "<uuid>", "content": content, "sender": "user", "message_type": "text",
        "metadata": {}, "timestamp": "<time>",
    })
}

/// The template responder's stored reply to `content`, as [`redact`] shows it.
fn template_reply(content: &str) -> Value {
    json!({
        "id": "<uuid>", "content": template_text(content), "sender": "ai",
        "message_type": "text", "metadata": { "responder": "template" },
        "timestamp": "<time>",
    })
}

/// `value` with every `id` replaced by `<uuid>` and every timestamp by `<time>`, after
/// checking that each is a lower-case v4 UUID or an RFC 3339 UTC time with microseconds.
fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let shown = match (key.as_str(), value) {
                        ("id", Value::String(id)) => {
                            assert!(is_uuid_v4(id), "not a lower-case v4 UUID: {id}");
                            json!("<uuid>")
                        }
                        ("timestamp" | "created_at" | "updated_at", Value::String(at)) => {
                            assert!(is_timestamp(at), "not an RFC 3339 UTC time: {at}");
                            json!("<time>")
                        }
                        _ => redact(value),
                    };
                    (key.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

fn is_uuid_v4(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            14 => b == b'4',
            19 => b"89ab".contains(&b),
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// `2026-11-26T10:14:03.123456Z`.
fn is_timestamp(at: &str) -> bool {
    at.len() == 27
        && at.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            26 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}
