//! `/api/auth/`: contract section 2.

use narutalk_core::accounts::{EmailKey, LoginInput, User};
use narutalk_core::fields::JsonObject;
use serde_json::Value;
use warp::http::StatusCode;

use crate::api::Call;
use crate::docs;
use crate::error::ApiError;
use crate::http::Request;
use crate::limits::Throttle;
use crate::response::{Response, empty_response, json_response};
use crate::state::State;
use crate::wire;

/// Registers an account. Throttled per client IP and per email.
#[utoipa::path(
    post, path = "/api/auth/register/", tag = "auth",
    request_body = docs::RegisterRequest,
    responses(
        (status = 201, description = "The new account", body = wire::accounts::User),
        (status = 400, description = "Field errors (a taken username or email, each password rule broken, `Passwords do not match.` under `non_field_errors`), or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 429, description = "Throttled: 10 registrations a minute per client IP and per email, unless configured", body = wire::errors::Detail,
            headers(("Retry-After" = docs::RetryAfterSeconds, description = "N, the whole seconds to wait"))),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn register(call: Call<'_>) -> Result<Response, ApiError> {
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    count_email(&state.throttles.register_email, &body).await?;
    let user = state
        .run(move |core| core.accounts().register_fields(&body))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &wire::accounts::User::from(&user),
    ))
}

/// Logs in. Throttled per client IP (every attempt) and by a budget of failed attempts per
/// email, or per device token when the body carries a valid one of the account; every
/// cause of failure answers alike.
#[utoipa::path(
    post, path = "/api/auth/login/", tag = "auth",
    request_body = docs::LoginRequest,
    responses(
        (status = 200, description = "A new token pair, the user and the account's device token", body = wire::accounts::LoginResponse),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, description = "`No active account found with the given credentials`: the same answer, after the same work, for an unknown email, a wrong password and an inactive account", body = wire::errors::Detail,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"api\"`"))),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 429, description = "Throttled: 10 attempts a minute per client IP, and a budget of failed logins per account (or per device token)", body = wire::errors::Detail,
            headers(("Retry-After" = docs::RetryAfterSeconds, description = "N, the whole seconds to wait"))),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn login(call: Call<'_>) -> Result<Response, ApiError> {
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    // Contract section 9: the fields first (400 spends nothing), then a failure budget,
    // then the hashing. The budget's token is reserved before the hashing and kept only
    // for a 401, so parallel wrong attempts cannot all pass on the last token.
    let input = LoginInput::from_fields(&body)?;
    let throttles = &state.throttles;
    let trusted = match input.device() {
        Some(_) => {
            let checked = input.clone();
            state
                .run(move |core| core.accounts().trusted_device(&checked))
                .await?
        }
        None => None,
    };
    // A valid device token of the account counts against its own budget instead of the
    // email's; once that is spent, the token is ignored until it refills.
    let device = match trusted {
        Some(device) => throttles.device_failures.try_reserve(device).await,
        None => None,
    };
    let email = match device {
        Some(_) => None,
        None => Some(throttles.login_failures.reserve(input.email_key()).await?),
    };
    let honoured = device.as_ref().map(|reservation| *reservation.key());
    let outcome = state
        .run(move |core| core.accounts().login_with(&input, honoured))
        .await;
    // A 401 keeps the token; any other answer gives it back before it is sent, so that
    // the next attempt, on any server, finds it.
    let failed = matches!(outcome, Err(ApiError::BadCredentials));
    if let Some(device) = device {
        if failed {
            device.spend();
        } else {
            device.release().await;
        }
    }
    if let Some(email) = email {
        if failed {
            email.spend();
        } else {
            email.release().await;
        }
    }
    let login = outcome?;
    Ok(json_response(
        StatusCode::OK,
        &wire::accounts::LoginResponse::from(&login),
    ))
}

/// Exchanges a refresh token for a new pair (rotation; reuse revokes the login's family,
/// its access tokens included).
#[utoipa::path(
    post, path = "/api/auth/token/refresh/", tag = "auth",
    request_body = docs::RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = wire::accounts::TokenPair),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::RefreshTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn refresh(call: Call<'_>) -> Result<Response, ApiError> {
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    let request_id = request.request_id.clone();
    // A refused reuse ends its family: the core publishes it, and its sockets close.
    let pair = state
        .run(move |core| {
            core.tokens()
                .with_request(&request_id)
                .refresh_fields(&body)
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &wire::accounts::TokenPair::from(&pair),
    ))
}

/// Revokes a refresh token and its login's family, access tokens included.
#[utoipa::path(
    post, path = "/api/auth/logout/", tag = "auth",
    request_body = docs::RefreshRequest,
    responses(
        (status = 205, description = "Logged out; no body. Every token of that login, access tokens included, is refused from now on"),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::RefreshTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn logout(call: Call<'_>) -> Result<Response, ApiError> {
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    let request_id = request.request_id.clone();
    // The core publishes the family's end (its sockets close) once it is committed.
    state
        .run(move |core| core.tokens().with_request(&request_id).logout_fields(&body))
        .await?;
    Ok(empty_response(StatusCode::RESET_CONTENT))
}

/// The signed-in user.
#[utoipa::path(
    get, path = "/api/auth/profile/", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = wire::accounts::User),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn profile_get(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    Ok(json_response(
        StatusCode::OK,
        &wire::accounts::User::from(&user),
    ))
}

/// Replaces the profile (username and email required).
#[utoipa::path(
    put, path = "/api/auth/profile/", tag = "auth",
    security(("bearer" = [])),
    request_body = docs::ProfileReplace,
    responses(
        (status = 200, description = "The updated user", body = wire::accounts::User),
        (status = 400, description = "Field errors (a username or email another user has), or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn profile_put(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    update_profile(call.state, call.request, user, false).await
}

/// Updates some of the profile's fields.
#[utoipa::path(
    patch, path = "/api/auth/profile/", tag = "auth",
    security(("bearer" = [])),
    request_body = Option<docs::ProfileUpdate>,
    responses(
        (status = 200, description = "The updated user", body = wire::accounts::User),
        (status = 400, description = "Field errors (a username or email another user has), or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn profile_patch(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    update_profile(call.state, call.request, user, true).await
}

async fn update_profile(
    state: &State,
    request: &mut Request,
    user: User,
    partial: bool,
) -> Result<Response, ApiError> {
    let body = request.json_object(state.body).await?;
    let updated = state
        .run(move |core| {
            core.accounts()
                .update_profile_fields(user.id, &body, partial)
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &wire::accounts::User::from(&updated),
    ))
}

/// Changes the password and revokes every token the user holds.
#[utoipa::path(
    post, path = "/api/auth/password/", tag = "auth",
    security(("bearer" = [])),
    request_body = docs::PasswordChange,
    responses(
        (status = 204, description = "Changed; every earlier token is revoked"),
        (status = 400, description = "Field errors (a wrong `old_password`, each rule the new password breaks), or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn password(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    let request_id = request.request_id.clone();
    // The core publishes the revocation (the user's sockets close) once it is committed.
    state
        .run(move |core| {
            core.accounts()
                .with_request(&request_id)
                .change_password_fields(user.id, &body)
        })
        .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// The user with real counts of recent sessions and messages.
#[utoipa::path(
    get, path = "/api/auth/dashboard/", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dashboard", body = wire::accounts::Dashboard),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn dashboard(call: Call<'_>) -> Result<Response, ApiError> {
    let caller = call.caller()?;
    let dashboard = call
        .state
        .run_as(caller, move |core, user| core.accounts().dashboard(user.id))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &wire::accounts::Dashboard::from(&dashboard),
    ))
}

/// Counts a registration against the per-email throttle (keyed by the lower-cased email's
/// digest) when the body names an email.
async fn count_email(throttle: &Throttle<EmailKey>, body: &JsonObject) -> Result<(), ApiError> {
    match body.get("email").and_then(Value::as_str) {
        Some(email) if !email.trim().is_empty() => throttle.check(&EmailKey::of(email)).await,
        _ => Ok(()),
    }
}
