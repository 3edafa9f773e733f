//! `/api/chat/`: contract section 3.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use narutalk_core::accounts::User;
use narutalk_core::chat::{Message, Page, PageRequest, SessionFilter, SessionId};
use serde::Serialize;
use warp::http::StatusCode;

use crate::api::Caller;
use crate::docs;
use crate::error::ApiError;
use crate::http::{Request, Response, empty_response, json_response, percent_encode, query_pairs};
use crate::state::State;
use crate::turns;
use crate::ws::hub::RoomEvent;

/// The user's sessions, most recently updated first.
#[utoipa::path(
    get, path = "/api/chat/sessions/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("page" = Option<String>, Query, description = "A page number from 1, or `last`"),
        ("category" = Option<String>, Query, description = "Only this category"),
        ("is_active" = Option<String>, Query, description = "`true`/`false`/`1`/`0`"),
    ),
    responses(
        (status = 200, description = "A page of sessions", body = docs::SessionPage),
        (status = 400, description = "A bad filter", body = docs::FieldErrors),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "Invalid page", body = docs::Detail),
    )
)]
pub async fn list_sessions(
    state: &Arc<State>,
    request: &mut Request,
    caller: Caller,
) -> Result<Response, ApiError> {
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
    Ok(page_response(state, request, &sessions))
}

/// Opens a session.
#[utoipa::path(
    post, path = "/api/chat/sessions/", tag = "chat",
    security(("bearer" = [])),
    request_body = docs::SessionCreate,
    responses(
        (status = 201, description = "The new session", body = docs::SessionDetail),
        (status = 400, description = "Field errors, or malformed JSON (`detail`)", body = docs::BadRequest),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
    )
)]
pub async fn create_session(
    state: &Arc<State>,
    request: &mut Request,
    user: User,
) -> Result<Response, ApiError> {
    let body = request.json_object(state.body).await?;
    let session = state
        .run(move |core| core.chat().create_session_fields(user.id, &body))
        .await?;
    Ok(json_response(StatusCode::CREATED, &session))
}

/// A session with all its messages.
#[utoipa::path(
    get, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = docs::SessionDetail),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "No such session of this user", body = docs::Detail),
    )
)]
pub async fn get_session(
    state: &Arc<State>,
    caller: Caller,
    id: &str,
) -> Result<Response, ApiError> {
    let id = SessionId::from_str(id);
    let session = state
        .run_as(caller, move |core, user| core.chat().session(user.id, id?))
        .await?;
    Ok(json_response(StatusCode::OK, &session))
}

/// Changes a session's title, category or active label.
#[utoipa::path(
    patch, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    request_body = docs::SessionUpdate,
    responses(
        (status = 200, description = "The session", body = docs::SessionDetail),
        (status = 400, description = "Field errors, or malformed JSON (`detail`)", body = docs::BadRequest),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "No such session of this user", body = docs::Detail),
    )
)]
pub async fn update_session(
    state: &Arc<State>,
    request: &mut Request,
    user: User,
    id: &str,
) -> Result<Response, ApiError> {
    let body = request.json_object(state.body).await?;
    let id = SessionId::from_str(id)?;
    let session = state
        .run(move |core| core.chat().update_session_fields(user.id, id, &body))
        .await?;
    Ok(json_response(StatusCode::OK, &session))
}

/// Deletes a session and its messages.
#[utoipa::path(
    delete, path = "/api/chat/sessions/{id}/", tag = "chat",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "No such session of this user", body = docs::Detail),
    )
)]
pub async fn delete_session(
    state: &Arc<State>,
    user: User,
    id: &str,
) -> Result<Response, ApiError> {
    let id = SessionId::from_str(id)?;
    state
        .run(move |core| core.chat().delete_session(user.id, id))
        .await?;
    state.hub.publish(id, RoomEvent::Deleted);
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// A session's messages, oldest first.
#[utoipa::path(
    get, path = "/api/chat/sessions/{id}/messages/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("page" = Option<String>, Query, description = "A page number from 1, or `last`"),
        ("after" = Option<String>, Query, description = "Only messages stored after this one"),
    ),
    responses(
        (status = 200, description = "A page of messages", body = docs::MessagePage),
        (status = 400, description = "`after` is not a message of this session", body = docs::FieldErrors),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "No such session of this user, or an invalid page", body = docs::Detail),
    )
)]
pub async fn list_messages(
    state: &Arc<State>,
    request: &mut Request,
    caller: Caller,
    id: &str,
) -> Result<Response, ApiError> {
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
    Ok(page_response(state, request, &messages))
}

/// Posts a message and answers it with the AI's reply (or the system error message).
#[utoipa::path(
    post, path = "/api/chat/sessions/{id}/messages/", tag = "chat",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-64 visible ASCII characters; a repeat within 24 hours answers the first result"),
    ),
    request_body = docs::MessageCreate,
    responses(
        (status = 201, description = "The stored message with its reply", body = docs::MessageWithReply),
        (status = 400, description = "Field errors, or malformed JSON (`detail`)", body = docs::BadRequest),
        (status = 401, description = "No or bad access token", body = docs::TokenError),
        (status = 404, description = "No such session of this user", body = docs::Detail),
        (status = 429, description = "Throttled", body = docs::Detail),
    )
)]
pub async fn post_message(
    state: &Arc<State>,
    request: &mut Request,
    user: User,
    id: &str,
) -> Result<Response, ApiError> {
    let body = request.json_object(state.body).await?;
    let id = SessionId::from_str(id)?;
    let key = request
        .headers
        .get("idempotency-key")
        .map(|key| String::from_utf8_lossy(key.as_bytes()).into_owned());
    let exchange = turns::exchange(state.clone(), user.id, id, body, key).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &MessageWithReply {
            message: &exchange.message,
            reply: &exchange.reply,
        },
    ))
}

/// The created message: the message object with one more key, `reply`.
#[derive(Serialize)]
struct MessageWithReply<'a> {
    #[serde(flatten)]
    message: &'a Message,
    reply: &'a Message,
}

/// A DRF page.
#[derive(Serialize)]
struct PageBody<'a, T> {
    count: u64,
    next: Option<String>,
    previous: Option<String>,
    results: &'a [T],
}

/// A DRF page: `count`, absolute `next` and `previous` links, `results`.
fn page_response<T: Serialize>(state: &State, request: &Request, page: &Page<T>) -> Response {
    let link = |number: u32| page_link(state, request, number);
    let body = PageBody {
        count: page.count,
        next: page.has_next().then(|| link(page.number + 1)),
        previous: page.has_previous().then(|| link(page.number - 1)),
        results: &page.results,
    };
    json_response(StatusCode::OK, &body)
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
        request.scheme(&state.trusted_proxies),
        request.host(state.local_addr),
        request.path
    );
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}
