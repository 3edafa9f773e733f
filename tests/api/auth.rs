//! `/api/auth/` (contract sections 2 and 9): registration with every field rule, login
//! and its device token, refresh rotation with reuse detection, logout, the end of a login
//! family's access tokens, the profile, password changes, the dashboard's counts, and
//! revocation made from the core (as the CLI makes it) taking effect at once.

use narutalk_core::accounts::UserId;
use narutalk_core::config::Secret;
use narutalk_server::ServeOptions;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Account, PASSWORD, TestApp, assert_answer, body, spawn_app, spawn_app_with};

const REQUIRED: &str = "This field is required.";
const BLANK: &str = "This field may not be blank.";
const EMAIL_TAKEN: &str = "user with this email already exists.";
const USERNAME_TAKEN: &str = "A user with that username already exists.";
const USERNAME_INVALID: &str = "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.";
const EMAIL_INVALID: &str = "Enter a valid email address.";
const TOO_SHORT: &str = "This password is too short. It must contain at least 8 characters.";
const TOO_LONG: &str = "This password is too long. It must contain at most 128 characters.";
const NUMERIC: &str = "This password is entirely numeric.";
const COMMON: &str = "This password is too common.";
const SIMILAR_USERNAME: &str = "The password is too similar to the username.";
const SIMILAR_EMAIL: &str = "The password is too similar to the email address.";
const OLD_PASSWORD_WRONG: &str =
    "Your old password was entered incorrectly. Please enter it again.";
const BAD_CREDENTIALS: &str = "No active account found with the given credentials";
const NEW_PASSWORD: &str = "amber-lantern-77";

// ---- register -------------------------------------------------------------------------

#[tokio::test]
async fn register_creates_an_unverified_account_and_answers_the_user_object() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = register(
        &app,
        json!({
            "username": "kim", "email": "kim@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD,
            "role": "doctor", "department": "Cardiology",
        }),
    )
    .await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let user = body(response).await;
    let id = user["id"].as_i64().unwrap();
    assert_eq!(
        user,
        json!({
            "id": id, "username": "kim", "email": "kim@example.com",
            "role": "doctor", "department": "Cardiology", "is_verified": false,
        })
    );
}

#[tokio::test]
async fn register_without_role_or_department_makes_a_user_with_an_empty_department() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = register(&app, registration("lee", "lee@example.com")).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let user = body(response).await;
    assert_eq!(user["role"], "user");
    assert_eq!(user["department"], "");
    assert_eq!(user["is_verified"], false);
}

#[tokio::test]
async fn register_accepts_a_korean_username_and_login_shows_it() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let registered = register(&app, registration("김철수", "chulsoo@example.com")).await;
    let account = app.login("chulsoo@example.com").await;

    // Assert
    assert_eq!(registered.status(), StatusCode::CREATED);
    assert_eq!(body(registered).await["username"], "김철수");
    assert_eq!(account.username, "김철수");
}

#[tokio::test]
async fn register_refuses_the_admin_role_and_unknown_roles() {
    // Arrange
    let app = spawn_app().await;

    for role in ["admin", "Admin", "superuser"] {
        // Act
        let mut request = registration("kim", "kim@example.com");
        request["role"] = json!(role);
        let response = register(&app, request).await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "role": [format!("\"{role}\" is not a valid choice.")] }),
        )
        .await;
    }
}

#[tokio::test]
async fn register_accepts_the_nurse_role() {
    // Arrange
    let app = spawn_app().await;
    let mut request = registration("park", "park@example.com");
    request["role"] = json!("nurse");

    // Act
    let response = register(&app, request).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(body(response).await["role"], "nurse");
}

#[tokio::test]
async fn register_with_an_empty_object_lists_every_required_field() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = register(&app, json!({})).await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({
            "username": [REQUIRED], "email": [REQUIRED],
            "password": [REQUIRED], "password_confirm": [REQUIRED],
        }),
    )
    .await;
}

#[tokio::test]
async fn register_refuses_blank_and_whitespace_only_fields() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = register(
        &app,
        json!({ "username": "   ", "email": "", "password": " \t ", "password_confirm": "" }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({
            "username": [BLANK], "email": [BLANK],
            "password": [BLANK], "password_confirm": [BLANK],
        }),
    )
    .await;
}

#[tokio::test]
async fn register_refuses_a_bad_username_and_a_bad_email_with_the_drf_texts() {
    // Arrange
    let app = spawn_app().await;

    for (username, email) in [
        ("kim lee", "kim@"),
        ("kim!", "kim.example.com"),
        ("<kim>", "kim@exa mple.com"),
    ] {
        // Act
        let response = register(&app, registration(username, email)).await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "username": [USERNAME_INVALID], "email": [EMAIL_INVALID] }),
        )
        .await;
    }
}

#[tokio::test]
async fn register_refuses_fields_over_their_length_limits() {
    // Arrange
    let app = spawn_app().await;
    let mut request = registration(&"a".repeat(151), &email_of_length(255));
    request["department"] = json!("d".repeat(101));

    // Act
    let response = register(&app, request).await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({
            "username": ["Ensure this field has no more than 150 characters."],
            "email": ["Ensure this field has no more than 254 characters."],
            "department": ["Ensure this field has no more than 100 characters."],
        }),
    )
    .await;
}

#[tokio::test]
async fn register_accepts_fields_at_their_length_limits_counted_in_characters() {
    // Arrange
    let app = spawn_app().await;
    let username = "한".repeat(150);
    let email = email_of_length(254);
    let mut request = registration(&username, &email);
    request["department"] = json!("심".repeat(100));

    // Act
    let response = register(&app, request).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    let user = body(response).await;
    assert_eq!(user["username"], username.as_str());
    assert_eq!(user["email"], email.as_str());
}

#[tokio::test]
async fn register_reports_every_password_rule_with_its_message() {
    // Arrange
    let app = spawn_app().await;
    let cases: [(&str, &str, String, Vec<&str>); 8] = [
        ("kim", "kim@example.com", "qz7#".into(), vec![TOO_SHORT]),
        ("kim", "kim@example.com", "x".repeat(129), vec![TOO_LONG]),
        (
            "kim",
            "kim@example.com",
            "50384729163".into(),
            vec![NUMERIC],
        ),
        ("kim", "kim@example.com", "password".into(), vec![COMMON]),
        ("kim", "kim@example.com", "PassWord".into(), vec![COMMON]),
        (
            "kim",
            "kim@example.com",
            "12345678".into(),
            vec![COMMON, NUMERIC],
        ),
        (
            "margaretha",
            "kim@example.com",
            "margaretha1".into(),
            vec![SIMILAR_USERNAME],
        ),
        (
            "kim",
            "bartholomew@example.com",
            "bartholomew9".into(),
            vec![SIMILAR_EMAIL],
        ),
    ];

    for (username, email, password, messages) in cases {
        // Act
        let response = register(
            &app,
            json!({
                "username": username, "email": email,
                "password": password, "password_confirm": password,
            }),
        )
        .await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "password": messages }),
        )
        .await;
    }
}

#[tokio::test]
async fn register_with_different_passwords_answers_a_non_field_error() {
    // Arrange
    let app = spawn_app().await;
    let mut request = registration("kim", "kim@example.com");
    request["password_confirm"] = json!("violet-harbour-43");

    // Act
    let response = register(&app, request).await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "non_field_errors": ["Passwords do not match."] }),
    )
    .await;
}

#[tokio::test]
async fn register_refuses_a_taken_username_and_a_taken_email_under_their_fields() {
    // Arrange
    let app = spawn_app().await;
    app.account("kim").await;

    // Act
    let same_username = register(&app, registration("kim", "other@example.com")).await;
    let same_email = register(&app, registration("lee", "KIM@Example.COM")).await;
    let both = register(&app, registration("kim", "kim@example.com")).await;

    // Assert
    assert_answer(
        same_username,
        StatusCode::BAD_REQUEST,
        json!({ "username": [USERNAME_TAKEN] }),
    )
    .await;
    assert_answer(
        same_email,
        StatusCode::BAD_REQUEST,
        json!({ "email": [EMAIL_TAKEN] }),
    )
    .await;
    assert_answer(
        both,
        StatusCode::BAD_REQUEST,
        json!({ "username": [USERNAME_TAKEN], "email": [EMAIL_TAKEN] }),
    )
    .await;
}

#[tokio::test]
async fn usernames_differing_only_in_case_are_different_users_as_in_django() {
    // Arrange
    let app = spawn_app().await;
    app.account("kim").await;

    // Act
    let response = register(&app, registration("Kim", "kim2@example.com")).await;

    // Assert
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(body(response).await["username"], "Kim");
}

#[tokio::test]
async fn register_stores_the_email_lower_cased_and_login_ignores_its_case() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let registered = register(&app, registration("kim", "Kim.Lee@Example.COM")).await;
    let login = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "KIM.LEE@EXAMPLE.com", "password": PASSWORD }),
        )
        .await;

    // Assert
    assert_eq!(registered.status(), StatusCode::CREATED);
    assert_eq!(body(registered).await["email"], "kim.lee@example.com");
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(body(login).await["user"]["email"], "kim.lee@example.com");
}

// ---- login ----------------------------------------------------------------------------

#[tokio::test]
async fn login_answers_a_token_pair_with_simplejwt_claims_and_the_user() {
    // Arrange
    let app = spawn_app_with(
        |config| config.core.secret_key = Some(Secret::new(SECRET)),
        ServeOptions::default(),
    )
    .await;
    let registered = body(register(&app, registration("kim", "kim@example.com")).await).await;
    let id = registered["id"].as_i64().unwrap();

    // Act
    let response = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": PASSWORD }),
        )
        .await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let login = body(response).await;
    let access = login["access"].as_str().unwrap();
    let refresh = login["refresh"].as_str().unwrap();
    let device = login["device"].as_str().unwrap();
    assert_eq!(
        login,
        json!({ "access": access, "refresh": refresh, "user": registered, "device": device })
    );
    let access_claims = claims(access);
    let refresh_claims = claims(refresh);
    assert_eq!(access_claims["token_type"], "access");
    assert_eq!(refresh_claims["token_type"], "refresh");
    for claims in [&access_claims, &refresh_claims] {
        assert_eq!(claims["user_id"], id.to_string());
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 32);
        assert!(
            jti.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    let lifetime =
        |claims: &Value| claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime(&access_claims), 60 * 60);
    assert_eq!(lifetime(&refresh_claims), 7 * 24 * 60 * 60);
    assert_ne!(access_claims["jti"], refresh_claims["jti"]);
}

#[tokio::test]
async fn login_answers_one_401_for_a_wrong_password_an_unknown_email_and_an_inactive_account() {
    // Arrange
    let app = spawn_app().await;
    app.account("kim").await;
    let inactive = app.account("lee").await;
    set_active(&app, &inactive, false).await;
    let attempts = [
        json!({ "email": "kim@example.com", "password": "violet-harbour-43" }),
        json!({ "email": "nobody@example.com", "password": PASSWORD }),
        json!({ "email": "lee@example.com", "password": PASSWORD }),
    ];

    for attempt in attempts {
        // Act
        let response = app.post_json("/api/auth/login/", &attempt).await;

        // Assert
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"api\""
        );
        assert_answer(
            response,
            StatusCode::UNAUTHORIZED,
            json!({ "detail": BAD_CREDENTIALS }),
        )
        .await;
    }
}

#[tokio::test]
async fn login_answers_a_device_token_and_the_same_one_when_it_is_sent_back() {
    // Arrange
    let app = spawn_app().await;
    app.account("kim").await;
    let first = login_with(
        &app,
        json!({ "email": "kim@example.com", "password": PASSWORD }),
    )
    .await;
    let device = first["device"].as_str().unwrap().to_owned();

    // Act
    let again = login_with(
        &app,
        json!({ "email": "kim@example.com", "password": PASSWORD, "device": device }),
    )
    .await;
    let ignored = [json!(5), json!(null), json!("garbage"), json!(["x"])].map(
        |device| json!({ "email": "kim@example.com", "password": PASSWORD, "device": device }),
    );
    let mut others = Vec::new();
    for request in ignored {
        others.push(login_with(&app, request).await["device"].clone());
    }

    // Assert
    assert_eq!(device.len(), 43);
    assert!(
        device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{device}"
    );
    assert_eq!(again["device"], device);
    let mut seen = std::collections::BTreeSet::from([device.clone()]);
    for other in others {
        assert_eq!(other.as_str().unwrap().len(), 43);
        assert!(
            seen.insert(other.as_str().unwrap().to_owned()),
            "a new token each time"
        );
    }
}

#[tokio::test]
async fn a_password_change_revokes_the_device_token() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let device = login_with(
        &app,
        json!({ "email": "kim@example.com", "password": PASSWORD }),
    )
    .await["device"]
        .clone();
    let changed = change_password(
        &app,
        &account,
        json!({ "old_password": PASSWORD, "new_password": NEW_PASSWORD }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);

    // Act
    let after = login_with(
        &app,
        json!({ "email": "kim@example.com", "password": NEW_PASSWORD, "device": device }),
    )
    .await;

    // Assert
    assert_ne!(after["device"], device);
}

#[tokio::test]
async fn login_with_an_empty_object_answers_required_fields() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = app.post_json("/api/auth/login/", &json!({})).await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "email": [REQUIRED], "password": [REQUIRED] }),
    )
    .await;
}

// ---- refresh and logout ---------------------------------------------------------------

#[tokio::test]
async fn refresh_answers_a_new_pair_whose_access_token_works() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = refresh(&app, &account.refresh).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    let pair = body(response).await;
    let access = pair["access"].as_str().unwrap();
    let new_refresh = pair["refresh"].as_str().unwrap();
    assert_eq!(pair, json!({ "access": access, "refresh": new_refresh }));
    assert_ne!(access, account.access);
    assert_ne!(new_refresh, account.refresh);
    let profile = app
        .request(Method::GET, "/api/auth/profile/")
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_refresh_token_is_blacklisted_and_its_reuse_revokes_the_whole_family() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let rotated = body(refresh(&app, &account.refresh).await).await;
    let new_refresh = rotated["refresh"].as_str().unwrap();

    // Act
    let reused = refresh(&app, &account.refresh).await;
    let descendant = refresh(&app, new_refresh).await;

    // Assert
    assert_token_refused(reused, "Token is blacklisted").await;
    assert_token_refused(descendant, "Token is blacklisted").await;
}

#[tokio::test]
async fn reuse_of_a_refresh_token_refuses_every_access_token_of_its_family() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let other_login = app.login("kim@example.com").await;
    let rotated = body(refresh(&app, &account.refresh).await).await;
    let rotated_access = rotated["access"].as_str().unwrap();
    assert_still_signed_in(&app, &account).await;

    // Act
    let reused = refresh(&app, &account.refresh).await;

    // Assert
    assert_token_refused(reused, "Token is blacklisted").await;
    assert_access_refused(&app, &account.access).await;
    assert_access_refused(&app, rotated_access).await;
    assert_still_signed_in(&app, &other_login).await;
}

#[tokio::test]
async fn logout_refuses_every_access_token_of_its_family() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let other_login = app.login("kim@example.com").await;
    let rotated = body(refresh(&app, &account.refresh).await).await;
    let rotated_access = rotated["access"].as_str().unwrap();
    let rotated_refresh = rotated["refresh"].as_str().unwrap();

    // Act
    let response = logout(&app, rotated_refresh).await;

    // Assert
    assert_eq!(response.status(), StatusCode::RESET_CONTENT);
    assert_access_refused(&app, &account.access).await;
    assert_access_refused(&app, rotated_access).await;
    assert_token_refused(refresh(&app, rotated_refresh).await, "Token is blacklisted").await;
    assert_still_signed_in(&app, &other_login).await;
    assert_eq!(
        refresh(&app, &other_login.refresh).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reuse_revokes_only_the_family_of_that_login() {
    // Arrange
    let app = spawn_app().await;
    let first_login = app.account("kim").await;
    let second_login = app.login("kim@example.com").await;
    refresh(&app, &first_login.refresh).await;
    refresh(&app, &first_login.refresh).await;

    // Act
    let other_family = refresh(&app, &second_login.refresh).await;

    // Assert
    assert_eq!(other_family.status(), StatusCode::OK);
}

#[tokio::test]
async fn of_concurrent_refreshes_with_one_token_exactly_one_succeeds() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let request = app
                .request(Method::POST, "/api/auth/token/refresh/")
                .json(&json!({ "refresh": account.refresh }));
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();

    // Act
    let mut responses = Vec::new();
    for attempt in attempts {
        responses.push(attempt.await.unwrap());
    }

    // Assert
    let (succeeded, refused): (Vec<_>, Vec<_>) = responses
        .into_iter()
        .partition(|response| response.status() == StatusCode::OK);
    assert_eq!(succeeded.len(), 1);
    for response in refused {
        assert_token_refused(response, "Token is blacklisted").await;
    }
}

#[tokio::test]
async fn refresh_refuses_a_token_that_is_not_a_jwt_as_invalid() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let response = refresh(&app, "not-a-token").await;

    // Assert
    assert_token_refused(response, "Token is invalid").await;
}

#[tokio::test]
async fn refresh_and_logout_require_the_refresh_field() {
    // Arrange
    let app = spawn_app().await;

    for path in ["/api/auth/token/refresh/", "/api/auth/logout/"] {
        // Act
        let response = app.post_json(path, &json!({})).await;

        // Assert
        assert_answer(
            response,
            StatusCode::BAD_REQUEST,
            json!({ "refresh": [REQUIRED] }),
        )
        .await;
    }
}

#[tokio::test]
async fn logout_answers_205_with_an_empty_body_and_blacklists_that_refresh_token() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = logout(&app, &account.refresh).await;

    // Assert
    assert_eq!(response.status(), StatusCode::RESET_CONTENT);
    assert!(response.headers().get("content-type").is_none());
    assert!(response.bytes().await.unwrap().is_empty());
    assert_token_refused(
        refresh(&app, &account.refresh).await,
        "Token is blacklisted",
    )
    .await;
    assert_token_refused(logout(&app, &account.refresh).await, "Token is blacklisted").await;
}

// ---- profile --------------------------------------------------------------------------

#[tokio::test]
async fn profile_answers_the_user_object() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::GET, "/api/auth/profile/", &account)
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(response, StatusCode::OK, user_object(&account, "")).await;
}

#[tokio::test]
async fn profile_patch_changes_only_the_fields_sent() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = profile(
        &app,
        Method::PATCH,
        &account,
        json!({ "department": "Cardiology" }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        user_object(&account, "Cardiology"),
    )
    .await;
    let stored = app
        .authed(Method::GET, "/api/auth/profile/", &account)
        .send()
        .await
        .unwrap();
    assert_answer(stored, StatusCode::OK, user_object(&account, "Cardiology")).await;
}

#[tokio::test]
async fn profile_update_ignores_role_is_verified_and_id() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    for method in [Method::PATCH, Method::PUT] {
        // Act
        let response = profile(
            &app,
            method,
            &account,
            json!({
                "username": "kim", "email": "kim@example.com",
                "role": "admin", "is_verified": true, "id": account.id + 100,
            }),
        )
        .await;

        // Assert
        assert_answer(response, StatusCode::OK, user_object(&account, "")).await;
    }
}

#[tokio::test]
async fn profile_put_requires_username_and_email() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = profile(
        &app,
        Method::PUT,
        &account,
        json!({ "department": "Cardiology" }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "username": [REQUIRED], "email": [REQUIRED] }),
    )
    .await;
}

#[tokio::test]
async fn profile_put_replaces_username_and_email_and_keeps_an_unsent_department() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    profile(
        &app,
        Method::PATCH,
        &account,
        json!({ "department": "Cardiology" }),
    )
    .await;

    // Act
    let response = profile(
        &app,
        Method::PUT,
        &account,
        json!({ "username": "김민지", "email": "MinJi@Example.com" }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        json!({
            "id": account.id, "username": "김민지", "email": "minji@example.com",
            "role": "user", "department": "Cardiology", "is_verified": false,
        }),
    )
    .await;
    app.login("minji@example.com").await;
}

#[tokio::test]
async fn profile_update_refuses_another_users_username_or_email_but_not_ones_own() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    app.account("lee").await;

    // Act
    let taken = profile(
        &app,
        Method::PATCH,
        &kim,
        json!({ "username": "lee", "email": "LEE@example.com" }),
    )
    .await;
    let own = profile(
        &app,
        Method::PATCH,
        &kim,
        json!({ "username": "kim", "email": "KIM@example.com" }),
    )
    .await;

    // Assert
    assert_answer(
        taken,
        StatusCode::BAD_REQUEST,
        json!({ "username": [USERNAME_TAKEN], "email": [EMAIL_TAKEN] }),
    )
    .await;
    assert_answer(own, StatusCode::OK, user_object(&kim, "")).await;
}

#[tokio::test]
async fn profile_patch_checks_each_field_with_the_registration_rules() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = profile(
        &app,
        Method::PATCH,
        &account,
        json!({ "username": "kim lee", "email": "kim@", "department": "d".repeat(101) }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({
            "username": [USERNAME_INVALID],
            "email": [EMAIL_INVALID],
            "department": ["Ensure this field has no more than 100 characters."],
        }),
    )
    .await;
}

// ---- password -------------------------------------------------------------------------

#[tokio::test]
async fn password_change_answers_204_and_refuses_every_earlier_token_at_once() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = change_password(
        &app,
        &account,
        json!({ "old_password": PASSWORD, "new_password": NEW_PASSWORD }),
    )
    .await;

    // Assert
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    assert_access_refused(&app, &account.access).await;
    assert_token_refused(
        refresh(&app, &account.refresh).await,
        "Token is blacklisted",
    )
    .await;
    let old_login = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": PASSWORD }),
        )
        .await;
    assert_answer(
        old_login,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": BAD_CREDENTIALS }),
    )
    .await;
    let new_login = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(new_login.status(), StatusCode::OK);
    let new_access = body(new_login).await["access"].as_str().unwrap().to_owned();
    let profile = app
        .request(Method::GET, "/api/auth/profile/")
        .bearer_auth(new_access)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::OK);
}

#[tokio::test]
async fn password_change_with_a_wrong_old_password_answers_the_drf_message() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = change_password(
        &app,
        &account,
        json!({ "old_password": "violet-harbour-43", "new_password": NEW_PASSWORD }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "old_password": [OLD_PASSWORD_WRONG] }),
    )
    .await;
    assert_still_signed_in(&app, &account).await;
}

#[tokio::test]
async fn password_change_applies_the_password_rules_to_the_new_password() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = change_password(
        &app,
        &account,
        json!({ "old_password": "wrong-one-entirely", "new_password": "12345678" }),
    )
    .await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "old_password": [OLD_PASSWORD_WRONG], "new_password": [COMMON, NUMERIC] }),
    )
    .await;
    assert_still_signed_in(&app, &account).await;
}

#[tokio::test]
async fn password_change_requires_both_fields() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = change_password(&app, &account, json!({})).await;

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_REQUEST,
        json!({ "old_password": [REQUIRED], "new_password": [REQUIRED] }),
    )
    .await;
}

// ---- dashboard ------------------------------------------------------------------------

#[tokio::test]
async fn dashboard_of_a_new_user_counts_nothing() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;

    // Act
    let response = dashboard(&app, &account).await;

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        json!({ "user": user_object(&account, ""), "recent_chats": 0, "total_messages": 0 }),
    )
    .await;
}

#[tokio::test]
async fn dashboard_counts_the_users_own_sessions_and_every_message_in_them() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let lee = app.account("lee").await;
    let first = app.session(&kim, "Headache").await;
    app.session(&kim, "Fever").await;
    app.say(&kim, &first, "두통이 있어요").await;
    app.say(&kim, &first, "이틀째입니다").await;
    let lees = app.session(&lee, "Cough").await;
    app.say(&lee, &lees, "기침").await;

    // Act
    let kims_dashboard = dashboard(&app, &kim).await;
    let lees_dashboard = dashboard(&app, &lee).await;

    // Assert
    assert_answer(
        kims_dashboard,
        StatusCode::OK,
        json!({ "user": user_object(&kim, ""), "recent_chats": 2, "total_messages": 4 }),
    )
    .await;
    assert_answer(
        lees_dashboard,
        StatusCode::OK,
        json!({ "user": user_object(&lee, ""), "recent_chats": 1, "total_messages": 2 }),
    )
    .await;
}

#[tokio::test]
async fn dashboard_stops_counting_a_deleted_session() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "Headache").await;
    app.say(&kim, &session, "두통").await;
    app.session(&kim, "Fever").await;
    let deleted = app
        .authed(
            Method::DELETE,
            &format!("/api/chat/sessions/{session}/"),
            &kim,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    // Act
    let response = dashboard(&app, &kim).await;

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        json!({ "user": user_object(&kim, ""), "recent_chats": 1, "total_messages": 0 }),
    )
    .await;
}

// ---- revocation from the core ---------------------------------------------------------

#[tokio::test]
async fn logout_everywhere_from_the_core_refuses_the_very_next_request() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    assert_still_signed_in(&app, &account).await;
    let core = app.core.clone();
    let id = UserId(account.id);

    // Act
    tokio::task::spawn_blocking(move || core.accounts().logout_all(id))
        .await
        .unwrap()
        .unwrap();

    // Assert
    assert_access_refused(&app, &account.access).await;
    assert_token_refused(
        refresh(&app, &account.refresh).await,
        "Token is blacklisted",
    )
    .await;
    let again = app.login("kim@example.com").await;
    assert_still_signed_in(&app, &again).await;
}

#[tokio::test]
async fn deactivation_from_the_core_refuses_the_very_next_request_and_login() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    assert_still_signed_in(&app, &account).await;

    // Act
    set_active(&app, &account, false).await;

    // Assert
    assert_access_refused(&app, &account.access).await;
    assert_token_refused(
        refresh(&app, &account.refresh).await,
        "Token is blacklisted",
    )
    .await;
    let login = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": PASSWORD }),
        )
        .await;
    assert_answer(
        login,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": BAD_CREDENTIALS }),
    )
    .await;
    set_active(&app, &account, true).await;
    let reactivated = app.login("kim@example.com").await;
    assert_still_signed_in(&app, &reactivated).await;
    assert_access_refused(&app, &account.access).await;
}

#[tokio::test]
async fn a_password_reset_from_the_core_refuses_the_very_next_request() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let core = app.core.clone();
    let id = UserId(account.id);

    // Act
    tokio::task::spawn_blocking(move || core.accounts().reset_password(id, NEW_PASSWORD))
        .await
        .unwrap()
        .unwrap();

    // Assert
    assert_access_refused(&app, &account.access).await;
    assert_token_refused(
        refresh(&app, &account.refresh).await,
        "Token is blacklisted",
    )
    .await;
}

#[tokio::test]
async fn a_deleted_users_token_is_refused() {
    // Arrange
    let app = spawn_app().await;
    let account = app.account("kim").await;
    let core = app.core.clone();
    let id = UserId(account.id);

    // Act
    tokio::task::spawn_blocking(move || core.accounts().delete(id))
        .await
        .unwrap()
        .unwrap();

    // Assert
    assert_access_refused(&app, &account.access).await;
    assert_token_refused(refresh(&app, &account.refresh).await, "Token is invalid").await;
}

// ---- helpers --------------------------------------------------------------------------

/// A signing secret the test knows, so that it can read the claims of issued tokens.
const SECRET: &str = "a-test-secret-of-more-than-thirty-two-bytes";

/// A registration body with [`PASSWORD`] in both password fields.
fn registration(username: &str, email: &str) -> Value {
    json!({
        "username": username, "email": email,
        "password": PASSWORD, "password_confirm": PASSWORD,
    })
}

/// A syntactically valid email address of exactly `length` characters.
fn email_of_length(length: usize) -> String {
    let domain = format!("{}.{}.com", "b".repeat(63), "c".repeat(63));
    let local = "a".repeat(length - domain.len() - 1);
    let email = format!("{local}@{domain}");
    assert_eq!(email.chars().count(), length);
    email
}

/// The contract's user object of an account made by [`TestApp::account`].
fn user_object(account: &Account, department: &str) -> Value {
    json!({
        "id": account.id, "username": account.username, "email": account.email,
        "role": "user", "department": department, "is_verified": false,
    })
}

/// The claims of a token signed with [`SECRET`].
fn claims(token: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims
}

async fn register(app: &TestApp, request: Value) -> Response {
    app.post_json("/api/auth/register/", &request).await
}

/// Posts `request` to the login endpoint, expects 200, and answers the body.
async fn login_with(app: &TestApp, request: Value) -> Value {
    let response = app.post_json("/api/auth/login/", &request).await;
    assert_eq!(response.status(), StatusCode::OK, "{request}");
    body(response).await
}

async fn refresh(app: &TestApp, token: &str) -> Response {
    app.post_json("/api/auth/token/refresh/", &json!({ "refresh": token }))
        .await
}

async fn logout(app: &TestApp, token: &str) -> Response {
    app.post_json("/api/auth/logout/", &json!({ "refresh": token }))
        .await
}

async fn profile(app: &TestApp, method: Method, account: &Account, request: Value) -> Response {
    app.authed(method, "/api/auth/profile/", account)
        .json(&request)
        .send()
        .await
        .unwrap()
}

async fn change_password(app: &TestApp, account: &Account, request: Value) -> Response {
    app.authed(Method::POST, "/api/auth/password/", account)
        .json(&request)
        .send()
        .await
        .unwrap()
}

async fn dashboard(app: &TestApp, account: &Account) -> Response {
    app.authed(Method::GET, "/api/auth/dashboard/", account)
        .send()
        .await
        .unwrap()
}

async fn set_active(app: &TestApp, account: &Account, active: bool) {
    let core = app.core.clone();
    let id = UserId(account.id);
    tokio::task::spawn_blocking(move || core.accounts().set_active(id, active))
        .await
        .unwrap()
        .unwrap();
}

/// Asserts the refresh or logout endpoint's 401 with simplejwt's `detail`.
async fn assert_token_refused(response: Response, detail: &str) {
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"api\""
    );
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": detail, "code": "token_not_valid" }),
    )
    .await;
}

/// Asserts that `access` no longer opens the profile.
async fn assert_access_refused(app: &TestApp, access: &str) {
    let response = app
        .request(Method::GET, "/api/auth/profile/")
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"api\""
    );
    assert_answer(
        response,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Given token not valid for any token type", "code": "token_not_valid" }),
    )
    .await;
}

/// Asserts that the account's access token still opens the profile.
async fn assert_still_signed_in(app: &TestApp, account: &Account) {
    let response = app
        .authed(Method::GET, "/api/auth/profile/", account)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
