//! What happens elsewhere, told plainly on the page: the open session deleted by another
//! client, and the login ended by a password change.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::PASSWORD;
use crate::page::{Site, open_logged_in, open_session, wait_for_auth_view, wait_for_notice};

/// The open session deleted through the API: the page says so (`session-deleted`) and
/// drops it from the list. Then the password is changed elsewhere, which revokes every
/// token: the page returns to the login view with the `logged-out` notice.
#[tokio::test]
async fn a_session_deleted_and_a_login_ended_elsewhere_are_told() {
    let Some(browser) =
        Browser::start("a_session_deleted_and_a_login_ended_elsewhere_are_told").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    let kept = site.app.session(&kim, "남는 상담").await;
    let doomed = site.app.session(&kim, "지워질 상담").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &doomed).await;

    let deleted = site
        .app
        .authed(
            Method::DELETE,
            &format!("/api/chat/sessions/{doomed}/"),
            &kim,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    wait_for_notice(&browser, "session-deleted").await;
    browser
        .wait_for(
            "the deleted session to leave the list",
            "return !document.querySelector(`#session-list li[data-session-id=\"${arguments[0]}\"]`);",
            vec![json!(doomed)],
        )
        .await;

    open_session(&browser, &kept).await;
    let changed = site
        .app
        .authed(Method::POST, "/api/auth/password/", &kim)
        .json(&json!({"old_password": PASSWORD, "new_password": "amber-lantern-77"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    wait_for_auth_view(&browser).await;
    wait_for_notice(&browser, "logged-out").await;
}
