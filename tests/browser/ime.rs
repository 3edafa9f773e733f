//! Typing Korean through an input method: the Enter that ends a composition belongs to
//! the input method and must not send; the next plain Enter sends. The composition is
//! driven through Chromium's own input machinery (the DevTools protocol's `Input`
//! domain), so the page receives the events a real IME produces: composition events,
//! then a `keydown` of Enter with `isComposing` true and key code 229, then the commit.

use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{stored, template};
use crate::page::{
    Site, composer, messages, open_logged_in, open_session, wait_until_page_shows_stored,
};

/// Composes 한글 as a Korean IME would (ㅎ, 하, 한, 한ㄱ, 한그, 한글), presses Enter to end
/// the composition, and commits it: nothing is sent and the composer holds the text.
/// The next plain Enter sends it, once.
#[tokio::test]
async fn an_enter_that_ends_a_korean_composition_does_not_send_and_the_next_enter_does() {
    let Some(browser) = Browser::start(
        "an_enter_that_ends_a_korean_composition_does_not_send_and_the_next_enter_does",
    )
    .await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "입력기").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    browser.click("#composer-input").await;

    for composing in ["ㅎ", "하", "한", "한ㄱ", "한그", "한글"] {
        let end = composing.chars().count();
        browser
            .cdp(
                "Input.imeSetComposition",
                json!({"text": composing, "selectionStart": end, "selectionEnd": end}),
            )
            .await;
    }
    // The Enter that ends the composition: during a composition the key reaches the
    // page as key code 229 with `isComposing` set, then the IME commits its text.
    enter(&browser, "rawKeyDown", 229, false).await;
    browser
        .cdp("Input.insertText", json!({"text": "한글"}))
        .await;
    enter(&browser, "keyUp", 13, false).await;

    // Key events are handled when they are dispatched: had that Enter sent, the composer
    // would be empty by now.
    assert_eq!(composer(&browser).await, "한글");
    assert_eq!(messages(&browser).await, []);

    // A plain Enter, as the keyboard sends it (it would type a line break if not taken).
    enter(&browser, "keyDown", 13, true).await;
    enter(&browser, "keyUp", 13, false).await;

    // Messages of one socket are stored in the order sent: had anything been sent before
    // this Enter, it would be stored first.
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;
    let messages = stored(&site.app, &kim, &session).await;
    assert_eq!(messages[0]["sender"], "user");
    assert_eq!(messages[0]["content"], "한글");
    assert_eq!(messages[1]["content"], template("한글"));
}

/// Dispatches an Enter key event of `kind` (`keyDown`, `rawKeyDown`, `keyUp`) with key
/// code `code` through Chromium's input pipeline; with `types`, it carries the text a
/// keyboard's Enter types (a line break, unless the page takes the key).
async fn enter(browser: &Browser, kind: &str, code: u32, types: bool) {
    let mut event = json!({"type": kind, "key": "Enter", "code": "Enter",
                           "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code});
    if types {
        event["text"] = json!("\r");
        event["unmodifiedText"] = json!("\r");
    }
    browser.cdp("Input.dispatchKeyEvent", event).await;
}
