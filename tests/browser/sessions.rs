//! The session list and what can be done to a session through the page: filters,
//! renaming, archiving, deleting after a confirmation, and older messages on demand.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::helpers::{Account, body};
use crate::page::{Site, messages, open_logged_in, open_session, wait_until_page_shows_stored};

/// Waits until `#session-list` shows exactly `ids`, in that order.
async fn wait_for_listed(browser: &Browser, ids: &[&str]) {
    browser
        .wait_for(
            &format!("the session list to be {ids:?}"),
            "const ids = Array.from(document.querySelectorAll('#session-list li[data-session-id]')) \
                 .map(li => li.dataset.sessionId); \
             return JSON.stringify(ids) === JSON.stringify(arguments[0]);",
            vec![json!(ids)],
        )
        .await;
}

/// The session as the API gives it.
async fn detail(site: &Site, account: &Account, id: &str) -> (StatusCode, Value) {
    let response = site
        .app
        .authed(Method::GET, &format!("/api/chat/sessions/{id}/"), account)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, body(response).await)
}

/// The list is newest first and follows both filters; renaming and archiving go to the
/// server (an archived session leaves the default list and is under "archived"); deleting
/// asks first in the page's own dialog: "no" keeps the session, "yes" deletes it.
#[tokio::test]
async fn sessions_are_filtered_renamed_archived_and_deleted_after_a_confirmation() {
    let Some(browser) =
        Browser::start("sessions_are_filtered_renamed_archived_and_deleted_after_a_confirmation")
            .await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let older = site.app.session_in(&kim, "오래된 상담", "medical").await;
    let newer = site.app.session_in(&kim, "새 상담", "general").await;
    open_logged_in(&browser, &site, &kim).await;

    wait_for_listed(&browser, &[&newer, &older]).await;
    browser.choose("select#filter-category", "medical").await;
    wait_for_listed(&browser, &[&older]).await;
    browser.choose("select#filter-category", "").await;
    wait_for_listed(&browser, &[&newer, &older]).await;

    open_session(&browser, &older).await;
    browser.click("#rename-session").await;
    let title = browser.element("form#rename-form input[name=title]").await;
    title.clear().await.unwrap();
    browser
        .type_into("form#rename-form input[name=title]", "두통 (이름 바꿈)")
        .await;
    browser
        .click("form#rename-form [type=submit], form#rename-form button:not([type])")
        .await;
    browser
        .wait_for(
            "the renamed session in the list",
            "const li = document.querySelector(`#session-list li[data-session-id=\"${arguments[0]}\"]`); \
             return !!li && li.textContent.includes('두통 (이름 바꿈)');",
            vec![json!(older)],
        )
        .await;
    assert_eq!(
        detail(&site, &kim, &older).await.1["title"],
        "두통 (이름 바꿈)"
    );

    browser.click("#archive-session").await;
    wait_for_listed(&browser, &[&newer]).await;
    assert_eq!(detail(&site, &kim, &older).await.1["is_active"], false);
    browser.choose("select#filter-archived", "archived").await;
    wait_for_listed(&browser, &[&older]).await;
    browser.choose("select#filter-archived", "all").await;
    wait_for_listed(&browser, &[&older, &newer]).await;

    open_session(&browser, &newer).await;
    browser.click("#delete-session").await;
    wait_for_dialog(&browser, true).await;
    browser.click("#confirm-no").await;
    wait_for_dialog(&browser, false).await;
    assert_eq!(detail(&site, &kim, &newer).await.0, StatusCode::OK);
    browser.click("#delete-session").await;
    wait_for_dialog(&browser, true).await;
    browser.click("#confirm-yes").await;
    wait_for_listed(&browser, &[&older]).await;
    assert_eq!(detail(&site, &kim, &newer).await.0, StatusCode::NOT_FOUND);
}

/// Waits until `dialog#confirm-dialog` is open (or closed).
async fn wait_for_dialog(browser: &Browser, open: bool) {
    browser
        .wait_for(
            &format!(
                "the confirmation dialog to be {}",
                if open { "open" } else { "closed" }
            ),
            "return document.querySelector('dialog#confirm-dialog').open === arguments[0];",
            vec![json!(open)],
        )
        .await;
}

/// A long conversation opens on its latest messages; `#load-older` brings the earlier
/// ones, page by page, above them, until there are none left and the button goes.
#[tokio::test]
async fn older_messages_are_loaded_on_demand() {
    let Some(browser) = Browser::start("older_messages_are_loaded_on_demand").await else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "긴 대화").await;
    for n in 1..=25 {
        site.app.say(&kim, &session, &format!("질문 {n}")).await;
    }
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    let first = browser
        .wait_for(
            "the latest messages",
            "return document.querySelectorAll('#messages li.message').length;",
            vec![],
        )
        .await;
    let first = usize::try_from(first.as_u64().unwrap()).unwrap();
    assert!(first < 50, "all 50 messages were shown at once");
    let shown = messages(&browser).await;
    assert_eq!(
        shown.last().unwrap().text,
        crate::helpers::template("질문 25")
    );

    let mut clicks = 0;
    while browser
        .js(
            "const b = document.querySelector('#load-older'); return !b.hidden && !b.disabled;",
            vec![],
        )
        .await
        == json!(true)
    {
        let before = messages(&browser).await.len();
        browser.click("#load-older").await;
        browser
            .wait_for(
                "older messages above the shown ones",
                "return document.querySelectorAll('#messages li.message').length > arguments[0];",
                vec![json!(before)],
            )
            .await;
        clicks += 1;
        assert!(clicks <= 3, "more than 3 pages of older messages for 50");
    }

    assert!(clicks >= 1);
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 50).await;
}
