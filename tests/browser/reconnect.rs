//! A dropped connection: the test's proxy closes every connection between the browser
//! and the server and refuses new ones, messages are posted meanwhile, then the network
//! comes back. The page must say it is offline, reconnect by itself (resuming after the
//! last message it has), and end up showing every message once, in order.

use std::time::Duration;

use crate::browser::{Browser, ENTER, PATIENCE};
use crate::helpers::stored;
use crate::page::{
    Site, composer, open_logged_in, open_session, send, wait_for_connection, wait_for_notice,
    wait_until_disconnected, wait_until_page_shows_stored,
};

/// Messages posted while the connection is down are shown once it is back, after those
/// already shown and before later ones, none twice; a second drop works the same. A
/// message typed while the server cannot be reached at all stays in the composer, with a
/// notice, and is sent once when the user tries again.
#[tokio::test]
async fn a_dropped_connection_comes_back_without_losing_or_doubling_messages() {
    let Some(browser) =
        Browser::start("a_dropped_connection_comes_back_without_losing_or_doubling_messages").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "연결").await;
    site.app.say(&kim, &session, "연결 전 질문").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    send(&browser, "끊기기 전").await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 4).await;

    site.proxy.cut();
    let state = wait_until_disconnected(&browser).await;
    assert!(
        state == "offline" || state == "connecting",
        "#connection-state is {state}"
    );
    send(&browser, "끊긴 동안 쓴 글").await;
    wait_for_notice(&browser, "error").await;
    assert_eq!(composer(&browser).await, "끊긴 동안 쓴 글");
    // Posted elsewhere while this browser cannot hear: the server stores them and their
    // replies.
    site.app.say(&kim, &session, "끊긴 동안 1").await;
    site.app.say(&kim, &session, "끊긴 동안 2").await;
    site.proxy.restore();

    wait_for_connection(&browser, "connected").await;
    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 8).await;
    assert_eq!(shown[4].text, "끊긴 동안 1");
    assert_eq!(shown[6].text, "끊긴 동안 2");

    // The restored connection is live: the page's own message and a REST one arrive.
    browser.type_into("#composer-input", ENTER).await;
    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 10).await;
    assert_eq!(shown[8].text, "끊긴 동안 쓴 글");
    site.app.say(&kim, &session, "다른 기기에서").await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 12).await;

    // A second drop resumes from where the first resumption left off.
    site.proxy.cut();
    wait_until_disconnected(&browser).await;
    site.app.say(&kim, &session, "두 번째로 끊긴 동안").await;
    site.proxy.restore();
    wait_for_connection(&browser, "connected").await;
    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 14).await;
    assert_eq!(shown[12].text, "두 번째로 끊긴 동안");
}

/// A message sent just as the network stops answering (the socket still looks open, so
/// the page writes into it, but nothing reaches the server) is not lost: once the
/// connection is back, it is stored exactly once, or it is back in the composer for the
/// user to send again (and then stored once).
#[tokio::test]
async fn a_message_sent_as_the_connection_dies_is_not_lost() {
    let Some(browser) = Browser::start("a_message_sent_as_the_connection_dies_is_not_lost").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "유실").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    send(&browser, "첫 질문").await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;

    site.proxy.stall();
    send(&browser, "사라지면 안 되는 질문").await;
    site.proxy.cut();
    wait_until_disconnected(&browser).await;
    site.proxy.restore();
    wait_for_connection(&browser, "connected").await;

    let text = "사라지면 안 되는 질문";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = stored(&site.app, &kim, &session).await;
        let copies = stored
            .iter()
            .filter(|message| message["content"] == text)
            .count();
        assert!(copies <= 1, "the message was stored {copies} times");
        if copies == 1 {
            break;
        }
        if composer(&browser).await == text {
            // Given back: the user sends it again.
            browser.type_into("#composer-input", ENTER).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message sent as the connection died is neither stored nor back in the \
             composer; the session holds {stored:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 4).await;
    assert_eq!(shown[2].text, text);
    assert_eq!(composer(&browser).await, "");
}
