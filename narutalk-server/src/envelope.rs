//! What wraps every request: its id and the span that carries it, CORS, the headers every
//! response carries, the access log line, the 400 of a target without a path, and the
//! guarantee that a panic answers the contract's 500 body.
//!
//! CORS never refuses anything: a preflight is answered here, and the CORS headers are
//! added to the answers of allowed origins only. Every answer carries `nosniff`; those
//! under `/api/auth/` and `/api/chat/` carry `Cache-Control: no-store` too.
//!
//! The span (`request`, with the `request_id` field) covers everything the request does:
//! its handler, the blocking core calls it makes (`calls`), the AI turn it starts
//! (`turns`) and, for a WebSocket handshake, the socket's whole life. So every line logged
//! on the request's behalf, the access line, an AI warning, an internal error's cause, a
//! socket's lines, carries the id its answer's `X-Request-Id` shows.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::api;
use crate::error::ApiError;
use crate::http::Request;
use crate::logging::millis;
use crate::metrics;
use crate::response::{Response, empty_response};
use crate::state::State;

/// The methods a preflight is told about.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// The request headers a preflight is told about.
const CORS_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key, X-Request-Id";
/// The response headers a script may read.
const CORS_EXPOSE: &str = "Retry-After, X-Request-Id, WWW-Authenticate";

/// Answers one request, whatever happens in its handler, and logs it once, in the
/// request's span.
pub async fn respond(state: Arc<State>, mut request: Request) -> Response {
    request.request_id = request_id(&request.headers);
    // At ERROR, the most severe level, so that the span exists whenever any line is logged.
    let span = tracing::error_span!("request", request_id = %request.request_id);
    answer(state, request).instrument(span).await
}

/// [`respond`] inside the span.
async fn answer(state: Arc<State>, request: Request) -> Response {
    let started = Instant::now();
    state.activity.fetch_add(1, Ordering::Relaxed);
    let request_id = request.request_id.clone();
    let method = request.method.clone();
    let path = request
        .target_without_path
        .clone()
        .unwrap_or_else(|| request.path.clone());
    let cors_origin = state.site.allowed_origin(&request);
    let found = if request.target_without_path.is_some() {
        None
    } else {
        api::find(&request.path)
    };
    let route = found
        .as_ref()
        .map_or(metrics::UNMATCHED, |found| found.route.template);

    let mut response = if request.target_without_path.is_some() {
        ApiError::BadRequest.into_response()
    } else if request.method == Method::OPTIONS
        && cors_origin.is_some()
        && request
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        preflight()
    } else {
        AssertUnwindSafe(api::handle(&state, found, request))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                ApiError::internal("a handler panicked", panic_message(panic.as_ref()))
                    .into_response()
            })
    };

    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.starts_with("/api/auth/") || path.starts_with("/api/chat/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    if let Some(origin) = cors_origin {
        add_cors(headers, &origin);
    }

    let status = response.status();
    metrics::request(&method, route, status, started);
    let duration_ms = millis(started.elapsed());
    if status.is_server_error() {
        tracing::warn!(target: "narutalk::access", %method, path, status = status.as_u16(), duration_ms, %request_id, "request");
    } else {
        tracing::info!(target: "narutalk::access", %method, path, status = status.as_u16(), duration_ms, %request_id, "request");
    }
    response
}

/// What a panic said, when it said it with text.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// The client's `X-Request-Id` when it is 1-64 letters, digits, `-`, `_` or `.`;
/// otherwise a new UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|id| id.to_str().ok())
        .filter(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn preflight() -> Response {
    let mut response = empty_response(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn add_cors(headers: &mut HeaderMap, origin: &str) {
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_request_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(request_id(&headers), "abc-123_x.y");
        headers.insert("x-request-id", HeaderValue::from_static("bad id!"));
        let replaced = request_id(&headers);
        assert_ne!(replaced, "bad id!");
        assert!(uuid::Uuid::parse_str(&replaced).is_ok());
    }
}
