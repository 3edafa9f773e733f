//! What wraps every request: its id, CORS, the headers every response carries, the
//! access log line, the 400 of a target without a path, and the guarantee that a panic
//! answers the contract's 500 body.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::api;
use crate::error::ApiError;
use crate::http::{Request, Response, empty_response};
use crate::metrics;
use crate::state::State;

/// The methods a preflight is told about.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// The request headers a preflight is told about.
const CORS_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key, X-Request-Id";
/// The response headers a script may read.
const CORS_EXPOSE: &str = "Retry-After, X-Request-Id, WWW-Authenticate";

/// Answers one request, whatever happens in its handler, and logs it once.
pub async fn respond(state: Arc<State>, mut request: Request) -> Response {
    let started = Instant::now();
    state.activity.fetch_add(1, Ordering::Relaxed);
    request.request_id = request_id(&request.headers);
    let request_id = request.request_id.clone();
    let method = request.method.clone();
    let path = request
        .target_without_path
        .clone()
        .unwrap_or_else(|| request.path.clone());
    let cors_origin = allowed_origin(&state, &request);
    let endpoint = if request.target_without_path.is_some() {
        None
    } else {
        api::Endpoint::at(&request.path)
    };
    let route = endpoint
        .as_ref()
        .map_or(metrics::UNMATCHED, api::Endpoint::template);

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
        AssertUnwindSafe(api::handle(&state, endpoint, request))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(%request_id, "a handler panicked");
                ApiError::Internal.into_response()
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

/// A duration in milliseconds, rounded to the microsecond (as logs show durations).
pub fn millis(duration: Duration) -> f64 {
    // Exact below 2^53 µs (285 years).
    #[allow(clippy::cast_precision_loss)]
    let micros = duration.as_micros() as f64;
    micros / 1000.0
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

/// The request's `Origin` when it gets CORS headers: one of the configured origins, or
/// the server's own. Any other origin is served as if it had sent none.
pub fn allowed_origin(state: &State, request: &Request) -> Option<String> {
    let origin = request.header(header::ORIGIN)?;
    let own = format!(
        "{}://{}",
        request.scheme(&state.trusted_proxies),
        request.host(state.local_addr)
    );
    (origin == own || state.cors_origins.iter().any(|allowed| allowed == origin))
        .then(|| origin.to_owned())
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
    fn logged_durations_are_milliseconds_rounded_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(777_938)), 0.777);
        assert_eq!(millis(Duration::from_nanos(1_500)), 0.001);
        assert_eq!(millis(Duration::from_secs(30)), 30_000.0);
        assert_eq!(
            serde_json::json!(millis(Duration::from_nanos(777_938))).to_string(),
            "0.777"
        );
    }

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
