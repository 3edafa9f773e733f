//! A dropped connection: the test's proxy closes every connection between the browser
//! and the server and refuses new ones, messages are posted meanwhile, then the network
//! comes back. The page must say it is offline, reconnect by itself (resuming after the
//! last message it has), and end up showing every message once, in order.

use crate::browser::Browser;
use crate::page::{
    Site, open_logged_in, open_session, send, wait_for_connection, wait_until_disconnected,
    wait_until_page_shows_stored,
};

/// Messages posted while the connection is down are shown once it is back, after those
/// already shown and before later ones, none twice; a second drop works the same.
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
    send(&browser, "다시 연결됨").await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 10).await;
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
