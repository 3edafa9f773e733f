//! `/api/health/` and `/api/proxy/search/`: contract section 4.

use std::sync::atomic::Ordering;

use warp::http::{HeaderValue, StatusCode, header};

use crate::api::Call;
use crate::docs;
use crate::error::{ApiError, chain};
use crate::health::DatabaseStatus;
use crate::response::{Response, bytes_response, json_response};
use crate::wire;
use crate::wire::errors::ProxyError;
use crate::wire::health::{
    AiState, DatabaseState, Health, HealthStatus, SearchState, ServerState, Services,
};

/// The largest search answer passed through.
pub const SEARCH_ANSWER_LIMIT: usize = 10 * 1024 * 1024;

/// The server's health: a real database query (reused for a second), whether writes work
/// (`degraded` with the database `read_only` from a write that failed for a database
/// cause until one succeeds; meanwhile health tries a small write at most every 10 s),
/// and the last background probes of the AI and search services, which never change
/// `status`.
#[utoipa::path(
    get, path = "/api/health/", tag = "gateway",
    responses(
        (status = 200, description = "`healthy`, or `degraded` while the database takes no writes", body = wire::health::Health),
        (status = 503, description = "`unhealthy`: the database cannot answer", body = wire::health::Health),
    )
)]
pub async fn health(call: Call<'_>) -> Result<Response, ApiError> {
    let state = call.state;
    let health = &state.health;
    let database = health.database_status().await;
    let ai_service = if health.ai_reachable.load(Ordering::Relaxed) {
        AiState::Available
    } else {
        AiState::Unavailable
    };
    let search_service = match &state.search {
        None => SearchState::NotConfigured,
        Some(_) if health.search_reachable.load(Ordering::Relaxed) => SearchState::Available,
        Some(_) => SearchState::Unavailable,
    };
    let (code, status, database) = match database {
        DatabaseStatus::Connected => (
            StatusCode::OK,
            HealthStatus::Healthy,
            DatabaseState::Connected,
        ),
        DatabaseStatus::ReadOnly => (
            StatusCode::OK,
            HealthStatus::Degraded,
            DatabaseState::ReadOnly,
        ),
        DatabaseStatus::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            HealthStatus::Unhealthy,
            DatabaseState::Unavailable,
        ),
    };
    let health = Health {
        status,
        services: Services {
            server: ServerState::Running,
            database,
            ai_service,
            search_service,
        },
    };
    Ok(json_response(code, &health))
}

/// Posts the body to the search service and passes its JSON answer through.
#[utoipa::path(
    post, path = "/api/proxy/search/", tag = "gateway",
    security(("bearer" = [])),
    request_body(content = Option<serde_json::Value>, description = "Any JSON, passed to the search service as it is; an empty body is sent as `{}`"),
    responses(
        (status = "default", description = "The search service's JSON answer, passed through with its status", body = serde_json::Value),
        (status = 400, description = "The body is not valid JSON (`JSON parse error - ...`)", body = wire::errors::Detail),
        (status = 401, response = docs::AccessTokenRefused),
        (status = 408, response = docs::BodyTimeout),
        (status = 413, response = docs::BodyTooLarge),
        (status = 415, response = docs::UnsupportedMediaType),
        (status = 502, description = "The search service answered something that is not JSON, more than 10 MiB, or a cut-off body", body = wire::errors::ProxyError),
        (status = 503, description = "The search service is not configured, cannot be reached or timed out (`error`); or the database could not check the token (`detail`, with `Retry-After: 1`)", body = wire::errors::SearchUnavailable),
    )
)]
pub async fn search(call: Call<'_>) -> Result<Response, ApiError> {
    let Call { state, request, .. } = call;
    let body = request.json_value(state.body).await?;
    let Some(search) = &state.search else {
        return Ok(proxy_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "search service is not configured",
        ));
    };
    let sent = search
        .client
        .post(&search.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", &request.request_id)
        .body(body.to_string())
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) if error.is_timeout() => {
            return Ok(proxy_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "search service timed out",
            ));
        }
        Err(error) => {
            tracing::warn!(
                cause = chain(&error.without_url()),
                "the search service is unreachable: the search proxy answered 503"
            );
            return Ok(proxy_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "search service unavailable",
            ));
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut bytes = Vec::new();
    let mut answer = answer;
    loop {
        match answer.chunk().await {
            Ok(None) => break,
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= SEARCH_ANSWER_LIMIT => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return Ok(proxy_error(
                    StatusCode::BAD_GATEWAY,
                    "search service answer is larger than 10 MiB",
                ));
            }
            Err(error) if error.is_timeout() => {
                return Ok(proxy_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "search service timed out",
                ));
            }
            Err(_) => {
                return Ok(proxy_error(
                    StatusCode::BAD_GATEWAY,
                    "search service answer was cut off",
                ));
            }
        }
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return Ok(proxy_error(
            StatusCode::BAD_GATEWAY,
            "search service answered with a body that is not JSON",
        ));
    }
    let mut response = bytes_response(status, bytes);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn proxy_error(status: StatusCode, error: &str) -> Response {
    json_response(status, &ProxyError { error })
}
