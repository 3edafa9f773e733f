//! Sessions and messages through the page: creating a session, sending with Enter (and a
//! new line with Shift+Enter), the reply, and a message posted elsewhere arriving live.

use narutalk_core::config::AiBackend;
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, ENTER, RELEASE, SHIFT};
use crate::fake_ai::refused_url;
use crate::helpers::{body, stored, template};
use crate::page::{
    Site, composer, create_session, open_logged_in, open_session, send,
    wait_until_page_shows_stored,
};

/// The new-session form creates the session with its title and category, lists it as
/// the open one and connects to it; Enter sends the composer's text (Shift+Enter only
/// starts a new line) and the page shows the stored message and its reply, in order,
/// each once.
#[tokio::test]
async fn a_session_created_in_the_page_opens_and_a_message_sent_with_enter_gets_its_reply() {
    let Some(browser) = Browser::start(
        "a_session_created_in_the_page_opens_and_a_message_sent_with_enter_gets_its_reply",
    )
    .await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    open_logged_in(&browser, &site, &kim).await;

    let id = create_session(&browser, "두통 상담", Some("medical")).await;
    let listed = body(
        site.app
            .authed(Method::GET, "/api/chat/sessions/", &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["results"][0]["id"], json!(id));
    assert_eq!(listed["results"][0]["title"], "두통 상담");
    assert_eq!(listed["results"][0]["category"], "medical");

    send(&browser, "두통이 있어요").await;
    let first_turn = wait_until_page_shows_stored(&browser, &site, &kim, &id, 2).await;
    browser
        .type_into(
            "#composer-input",
            &format!("아침부터{SHIFT}{ENTER}{RELEASE}계속 아파요{ENTER}"),
        )
        .await;
    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &id, 4).await;

    let messages = stored(&site.app, &kim, &id).await;
    let turns: Vec<(&Value, &Value)> = messages
        .iter()
        .map(|message| (&message["sender"], &message["content"]))
        .collect();
    assert_eq!(
        turns,
        [
            (&json!("user"), &json!("두통이 있어요")),
            (&json!("ai"), &json!(template("두통이 있어요"))),
            (&json!("user"), &json!("아침부터\n계속 아파요")),
            (&json!("ai"), &json!(template("아침부터\n계속 아파요"))),
        ]
    );
    assert_eq!(shown[..2], first_turn[..]);
    assert_eq!(composer(&browser).await, "");
}

/// A message posted through the REST API (another device of the user) appears live on
/// the open page, with its reply, in order and once each.
#[tokio::test]
async fn a_message_posted_through_the_rest_api_appears_live() {
    let Some(browser) = Browser::start("a_message_posted_through_the_rest_api_appears_live").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "회진 메모").await;
    site.app.say(&kim, &session, "Earlier question").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    let before = wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;

    let posted = site
        .app
        .say(&kim, &session, "다른 기기에서 보낸 질문")
        .await;

    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 4).await;
    assert_eq!(shown[..2], before[..]);
    assert_eq!(shown[2].id, posted["id"].as_str().unwrap());
    assert_eq!(shown[2].text, "다른 기기에서 보낸 질문");
    assert_eq!(shown[3].id, posted["reply"]["id"].as_str().unwrap());
    assert_eq!(shown[3].text, template("다른 기기에서 보낸 질문"));
}

/// When the assistant cannot answer (its service refuses connections), the page shows the
/// stored system error message as one: `data-sender="system"`, `data-message-type="error"`.
#[tokio::test]
async fn a_reply_the_assistant_cannot_give_is_shown_as_a_system_error() {
    let Some(browser) =
        Browser::start("a_reply_the_assistant_cannot_give_is_shown_as_a_system_error").await
    else {
        return;
    };
    let url = refused_url("/chat");
    let site = Site::start_with(move |config| {
        config.core.ai_backend = AiBackend::Http;
        config.core.ai_url = url;
    })
    .await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "장애").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;

    send(&browser, "들리나요?").await;

    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;
    assert_eq!(
        (shown[1].sender.as_str(), shown[1].message_type.as_str()),
        ("system", "error")
    );
    assert_eq!(
        shown[1].text,
        "The assistant is unavailable right now. Please try again later."
    );
}
