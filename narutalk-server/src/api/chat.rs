//! `/api/chat/`: contract section 3.

use std::collections::BTreeMap;
use std::str::FromStr;

use narutalk_core::chat::{Page, PageRequest, PostInput, SessionFilter, SessionId};
use warp::http::StatusCode;

use crate::api::Call;
use crate::docs;
use crate::error::ApiError;
use crate::http::{Request, percent_encode, query_pairs};
use crate::response::{Response, empty_response, json_response};
use crate::state::State;
use crate::turns;
use crate::wire;
use crate::wire::chat::Links;

/// The user's sessions, most recently updated first.
#[utoipa::path(
    get, path = "/api/chat/sessions/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("page" = Option<docs::PageNumber>, Query, description = "A page number from 1, `last` for the last page, or empty for the first; 20 sessions a page"),
        ("category" = Option<docs::CategoryFilter>, Query, description = "Only sessions of this category; empty for every category"),
        ("is_active" = Option<bool>, Query, nullable = false, description = "Only active (`true` or `1`) or archived (`false` or `0`) sessions; `true` and `false` in any letter case; empty for both"),
    ),
    responses(
        (status = 200, description = "A page of sessions", body = wire::chat::SessionPage),
        (status = 400, description = "A filter that is not one of its values (under `category` or `is_active`)", body = wire::errors::FieldErrors),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Invalid page.`: a page past the end, or not a page number", body = wire::errors::Detail),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn list_sessions(call: Call<'_>) -> Result<Response, ApiError> {
    let caller = call.caller()?;
    let Call { state, request, .. } = call;
    // Read now, reported after the token is checked.
    let filter = SessionFilter::parse(
        request.query_param("category").as_deref(),
        request.query_param("is_active").as_deref(),
    );
    let page = PageRequest::parse(request.query_param("page").as_deref());
    let sessions = state
        .run_as(caller, move |core, user| {
            core.chat().list_sessions(user.id, filter?, page?)
        })
        .await?;
    let links = page_links(state, request, &sessions);
    Ok(json_response(
        StatusCode::OK,
        &wire::chat::SessionPage::new(&sessions, links),
    ))
}

/// Opens a session.
#[utoipa::path(
    post, path = "/api/chat/sessions/", tag = "chat",
    security(("bearer" = [])),
    request_body = docs::SessionCreate,
    responses(
        (status = 201, description = "The new session", body = wire::chat::SessionDetail),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn create_session(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    let Call { state, request, .. } = call;
    let body = request.json_object(state.body).await?;
    let session = state
        .run(move |core| core.chat().create_session_fields(user.id, &body))
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &wire::chat::SessionDetail::from(&session),
    ))
}

/// A session with all its messages.
#[utoipa::path(
    get, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = wire::chat::SessionDetail),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Not found.`: no session of this user has this id", body = wire::errors::Detail),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn get_session(call: Call<'_>) -> Result<Response, ApiError> {
    let caller = call.caller()?;
    let id = SessionId::from_str(call.param);
    let session = call
        .state
        .run_as(caller, move |core, user| core.chat().session(user.id, id?))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &wire::chat::SessionDetail::from(&session),
    ))
}

/// Changes a session's title, category or active label.
#[utoipa::path(
    patch, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    request_body = Option<docs::SessionUpdate>,
    responses(
        (status = 200, description = "The session", body = wire::chat::SessionDetail),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Not found.`: no session of this user has this id", body = wire::errors::Detail),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn update_session(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    let Call {
        state,
        request,
        param: id,
        ..
    } = call;
    let body = request.json_object(state.body).await?;
    let id = SessionId::from_str(id)?;
    let session = state
        .run(move |core| core.chat().update_session_fields(user.id, id, &body))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &wire::chat::SessionDetail::from(&session),
    ))
}

/// Deletes a session and its messages.
#[utoipa::path(
    delete, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Deleted, with its messages; its open sockets are closed"),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Not found.`: no session of this user has this id", body = wire::errors::Detail),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn delete_session(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    let Call {
        state,
        request,
        param: id,
        ..
    } = call;
    let id = SessionId::from_str(id)?;
    let request_id = request.request_id.clone();
    // The core publishes the deletion (its sockets close) once it is committed.
    state
        .run(move |core| {
            core.chat()
                .with_request(&request_id)
                .delete_session(user.id, id)
        })
        .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// A session's messages, oldest first.
#[utoipa::path(
    get, path = "/api/chat/sessions/{id}/messages/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("page" = Option<docs::PageNumber>, Query, description = "A page number from 1, `last` for the last page, or empty for the first; 20 messages a page"),
        ("after" = Option<docs::AfterMessage>, Query, description = "The id of a message of this session: only the messages stored after it are listed (and paginated); empty for every message"),
    ),
    responses(
        (status = 200, description = "A page of messages", body = wire::chat::MessagePage),
        (status = 400, description = "`Unknown message id.` under `after`: not a message of this session", body = wire::errors::FieldErrors),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Not found.` (no session of this user has this id) or `Invalid page.`", body = wire::errors::Detail),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn list_messages(call: Call<'_>) -> Result<Response, ApiError> {
    let caller = call.caller()?;
    let Call {
        state,
        request,
        param: id,
        ..
    } = call;
    let id = SessionId::from_str(id);
    let after = request.query_param("after").filter(|a| !a.is_empty());
    let page = request.query_param("page");
    let messages = state
        .run_as(caller, move |core, user| {
            // The session is checked first (404), then `after` (400), then the page (404):
            // a bad page number is reported only after page 1 has passed the other checks.
            let id = id?;
            let chat = core.chat();
            match PageRequest::parse(page.as_deref()) {
                Ok(page) => chat.messages(user.id, id, after.as_deref(), page),
                Err(error) => {
                    chat.messages(user.id, id, after.as_deref(), PageRequest::Number(1))?;
                    Err(error)
                }
            }
        })
        .await?;
    let links = page_links(state, request, &messages);
    Ok(json_response(
        StatusCode::OK,
        &wire::chat::MessagePage::new(&messages, links),
    ))
}

/// Posts a message and answers it with the AI's reply (or the system error message).
#[utoipa::path(
    post, path = "/api/chat/sessions/{id}/messages/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 64, pattern = "^[!-~]{1,64}$",
            description = "1-64 visible ASCII characters: a repeat on this session within 24 hours answers the first result again, with no new message and no new AI call (a malformed key is a 400 under `Idempotency-Key`)"),
    ),
    request_body = docs::MessageCreate,
    responses(
        (status = 201, description = "The stored message with its reply (the AI's, or the system error message when the AI failed)", body = wire::chat::MessageWithReply),
        (status = 400, description = "Field errors, or a body that is not a JSON object", body = wire::errors::BadRequest),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 404, description = "`Not found.`: no session of this user has this id", body = wire::errors::Detail),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 429, description = "Throttled: 30 messages a minute per user, unless configured", body = wire::errors::Detail,
            headers(("Retry-After" = docs::RetryAfterSeconds, description = "N, the whole seconds to wait"))),
        (status = 503, response = docs::Unavailable),
    )
)]
pub async fn post_message(call: Call<'_>) -> Result<Response, ApiError> {
    let user = call.user()?;
    let Call {
        state,
        request,
        param: id,
        ..
    } = call;
    let body = request.json_object(state.body).await?;
    let id = SessionId::from_str(id)?;
    let key = request
        .headers
        .get("idempotency-key")
        .map(|key| String::from_utf8_lossy(key.as_bytes()).into_owned());
    let input = PostInput::from_fields(&body, key.as_deref(), state.calls.content_max_chars());
    let exchange =
        turns::exchange(&state.calls, user.id, id, input, request.request_id.clone()).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &wire::chat::MessageWithReply::new(&exchange.message, &exchange.reply),
    ))
}

/// The `next` and `previous` links of a DRF page.
fn page_links<T>(state: &State, request: &Request, page: &Page<T>) -> Links {
    let link = |number: u32| page_link(state, request, number);
    Links {
        next: page.has_next().then(|| link(page.number + 1)),
        previous: page.has_previous().then(|| link(page.number - 1)),
    }
}

/// The absolute URL of page `number` of this list, as DRF builds it: the request's other
/// query parameters kept, every parameter sorted by name, and no `page` for page 1.
fn page_link(state: &State, request: &Request, number: u32) -> String {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in query_pairs(request.query.as_deref().unwrap_or("")) {
        if key != "page" {
            params.entry(key).or_default().push(value);
        }
    }
    if number > 1 {
        params.insert("page".into(), vec![number.to_string()]);
    }
    let query: Vec<String> = params
        .iter()
        .flat_map(|(key, values)| {
            values
                .iter()
                .map(move |value| format!("{}={}", percent_encode(key), percent_encode(value)))
        })
        .collect();
    let mut url = format!(
        "{}://{}{}",
        request.scheme(&state.site.trusted_proxies),
        request.host(state.site.local_addr),
        request.path
    );
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}
