//! Registering, logging in and logging out through the page.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::helpers::{PASSWORD, body};
use crate::page::{
    Site, local_storage, log_in, open, register, shown, submit_login, wait_for_auth_view,
};

/// Registering through the form creates the account with every field given and logs in
/// at once: the chat view shows the username, and the refresh and device tokens are in
/// `localStorage`. A wrong password then shows the login form's error and keeps the
/// login view; the right one logs in.
#[tokio::test]
async fn registering_logs_in_at_once_and_a_wrong_password_is_refused_in_the_form() {
    let Some(browser) =
        Browser::start("registering_logs_in_at_once_and_a_wrong_password_is_refused_in_the_form")
            .await
    else {
        return;
    };
    let site = Site::start().await;
    open(&browser, &site).await;
    assert!(shown(&browser, "#auth-view").await);

    register(&browser, "minji", "doctor", "내과").await;

    let current_user = browser
        .js(
            "return document.querySelector('#current-user').textContent;",
            vec![],
        )
        .await;
    assert!(
        current_user.as_str().unwrap().contains("minji"),
        "#current-user says {current_user}"
    );
    let refresh = local_storage(&browser, "narutalk.refresh").await;
    let device = local_storage(&browser, "narutalk.device").await;
    assert!(refresh.as_str().is_some_and(|token| !token.is_empty()));
    assert_eq!(device.as_str().map(str::len), Some(43));
    let account = site.app.login("minji@example.com").await;
    let profile = body(
        site.app
            .authed(Method::GET, "/api/auth/profile/", &account)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            &profile["username"],
            &profile["email"],
            &profile["role"],
            &profile["department"]
        ),
        (
            &json!("minji"),
            &json!("minji@example.com"),
            &json!("doctor"),
            &json!("내과")
        )
    );

    browser.click("#logout").await;
    wait_for_auth_view(&browser).await;
    submit_login(&browser, "minji@example.com", "not-the-password-1").await;
    let error = browser
        .wait_for(
            "the login form's error",
            "const e = document.querySelector('form#login-form [data-role=form-error]'); \
             return e && e.textContent.trim();",
            vec![],
        )
        .await;
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("No active account found with the given credentials"),
        "the form says {error}"
    );
    assert!(shown(&browser, "#auth-view").await);
    assert!(!shown(&browser, "#chat-view").await);

    log_in(&browser, "minji@example.com").await;
}

/// Logging out revokes the refresh token on the server (it no longer refreshes), forgets
/// it in the browser, and shows the login view, also after a reload.
#[tokio::test]
async fn logging_out_revokes_and_forgets_the_refresh_token() {
    let Some(browser) = Browser::start("logging_out_revokes_and_forgets_the_refresh_token").await
    else {
        return;
    };
    let site = Site::start().await;
    let kim = site.app.account("kim").await;
    open(&browser, &site).await;
    log_in(&browser, &kim.email).await;
    let refresh = local_storage(&browser, "narutalk.refresh").await;
    let refresh = refresh.as_str().expect("a refresh token in localStorage");

    browser.click("#logout").await;
    wait_for_auth_view(&browser).await;

    assert_eq!(
        local_storage(&browser, "narutalk.refresh").await,
        Value::Null
    );
    let refreshed = site
        .app
        .post_json("/api/auth/token/refresh/", &json!({ "refresh": refresh }))
        .await;
    assert_eq!(refreshed.status(), StatusCode::UNAUTHORIZED);
    browser.reload().await;
    open(&browser, &site).await;
    assert!(shown(&browser, "#auth-view").await);
    assert!(!shown(&browser, "#chat-view").await);
    // The account itself still logs in.
    assert_eq!(
        site.app
            .post_json(
                "/api/auth/login/",
                &json!({"email": kim.email, "password": PASSWORD})
            )
            .await
            .status(),
        StatusCode::OK
    );
}
