//! Two windows of one browser share one login (the refresh token in `localStorage`).
//! Refresh tokens rotate and a used one counts as theft (the whole login ends), so two
//! windows that refresh with the same token would log each other out; the page must
//! coordinate them (the `narutalk-refresh` Web Lock).

use serde_json::json;

use crate::browser::Browser;
use crate::page::{
    Site, open, open_logged_in, open_session, send, shown, wait_for_chat_view,
    wait_until_page_shows_stored,
};

/// Window A logs in; window B opens the page and refreshes with the stored token (which
/// rotates it under A). Then both windows are reloaded while a third window holds the
/// refresh lock, so that both are waiting to refresh with the same stored token when it
/// is released: the first refreshes, the second must see that the token changed and use
/// the new one. Neither is logged out, and both can still send.
#[tokio::test]
async fn two_windows_of_one_login_refresh_without_logging_each_other_out() {
    let Some(browser) =
        Browser::start("two_windows_of_one_login_refresh_without_logging_each_other_out").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "두 창").await;
    let first = browser.window().await;
    open_logged_in(&browser, &site, &kim).await;
    let second = browser.new_window().await;
    browser.switch_to(&second).await;
    open(&browser, &site).await;
    wait_for_chat_view(&browser).await;

    // A third window of the same origin holds the lock while both pages reload.
    let holder = browser.new_window().await;
    browser.switch_to(&holder).await;
    browser.goto(&site.url("/api/health/")).await;
    browser
        .js(
            "return new Promise(granted => navigator.locks.request('narutalk-refresh', () => { \
                 granted(true); \
                 return new Promise(release => { window.releaseRefreshLock = release; }); \
             }));",
            vec![],
        )
        .await;
    for window in [&first, &second] {
        browser.switch_to(window).await;
        browser.reload().await;
    }
    browser.switch_to(&holder).await;
    browser
        .wait_for(
            "both reloaded pages to wait for the refresh lock",
            "return navigator.locks.query().then(locks => \
                 locks.pending.filter(lock => lock.name === 'narutalk-refresh').length >= 2);",
            vec![],
        )
        .await;
    browser
        .js("window.releaseRefreshLock(); return true;", vec![])
        .await;

    for (window, text) in [(&first, "첫 창에서"), (&second, "둘째 창에서")] {
        browser.switch_to(window).await;
        wait_for_chat_view(&browser).await;
        open_session(&browser, &session).await;
        send(&browser, text).await;
    }
    for window in [&first, &second] {
        browser.switch_to(window).await;
        let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 4).await;
        let sent: Vec<&str> = shown
            .iter()
            .filter(|message| message.sender == "user")
            .map(|message| message.text.as_str())
            .collect();
        assert_eq!(sent, ["첫 창에서", "둘째 창에서"]);
        assert!(!shown_logged_out(&browser).await);
    }
}

/// Whether the page shows the login view or the logged-out notice.
async fn shown_logged_out(browser: &Browser) -> bool {
    shown(browser, "#auth-view").await
        || browser
            .js(
                "return document.querySelector('#notice').dataset.kind;",
                vec![],
            )
            .await
            == json!("logged-out")
}
