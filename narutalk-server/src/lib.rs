//! narutalk-server: the HTTP face of [`narutalk_core`].
//!
//! This crate translates HTTP to core calls and core results to HTTP; it holds no business
//! rule. For now it performs the start-up of contract section 8 and serves
//! `GET /api/health/`; every other path answers the contract's 404 body. The REST API and
//! the WebSocket chat are built on this in their own changes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::config::Config;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// How often the search service is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server shares between requests.
struct State {
    core: Arc<Narutalk>,
    search_configured: bool,
    search_reachable: AtomicBool,
}

/// Serves the API on `listener` until `shutdown` completes, then finishes in-flight
/// requests and returns.
pub async fn serve(
    core: Arc<Narutalk>,
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(State {
        core,
        search_configured: !config.search_url.is_empty(),
        search_reachable: AtomicBool::new(false),
    });
    let prober = search_address(&config.search_url)
        .map(|address| tokio::spawn(probe_search(state.clone(), address)));
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    if let Some(prober) = prober {
        prober.abort();
    }
}

fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    // `path!` matches the path with and without its trailing slash.
    let health = warp::path!("api" / "health")
        .and(warp::get())
        .and(warp::any().map(move || state.clone()))
        .then(health);
    let not_found = warp::any().map(|| detail(StatusCode::NOT_FOUND, "Not found."));
    health.or(not_found).unify().map(|reply: Response| {
        warp::reply::with_header(reply, "x-content-type-options", "nosniff").into_response()
    })
}

/// `GET /api/health/`: a real database query on a blocking thread, and the last result of
/// the background search probe.
async fn health(state: Arc<State>) -> Response {
    let core = state.core.clone();
    let database_ok = blocking(move || core.database().ping().is_ok())
        .await
        .unwrap_or(false);
    let search = match (
        state.search_configured,
        state.search_reachable.load(Ordering::Relaxed),
    ) {
        (false, _) => "not_configured",
        (true, true) => "available",
        (true, false) => "unavailable",
    };
    let (status, overall, database) = if database_ok {
        (StatusCode::OK, "healthy", "connected")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "unavailable")
    };
    let body = json!({
        "status": overall,
        "services": {
            "server": "running",
            "database": database,
            "ai_service": "available",
            "search_service": search,
        }
    });
    json_response(status, &body)
}

/// Connects to the search service every [`PROBE_INTERVAL`] and records whether it answered.
async fn probe_search(state: Arc<State>, address: String) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    loop {
        ticks.tick().await;
        let reachable = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address.as_str())).await,
            Ok(Ok(_))
        );
        state.search_reachable.store(reachable, Ordering::Relaxed);
    }
}

/// `host:port` of an `http://` or `https://` URL (default ports 80 and 443).
fn search_address(url: &str) -> Option<String> {
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        (url.strip_prefix("https://")?, 443)
    };
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|a| !a.is_empty())?;
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// `{"detail": text}` with `status`.
fn detail(status: StatusCode, text: &str) -> Response {
    json_response(status, &json!({ "detail": text }))
}

/// A JSON body with the contract's `Content-Type: application/json; charset=utf-8`.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Runs blocking core work (SQLite, argon2) off the async worker threads. A panic or a
/// cancelled task comes back as `None`, never as a dropped connection.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::search_address;

    #[test]
    fn search_address_takes_host_and_port_from_the_url() {
        assert_eq!(
            search_address("http://localhost:8001/api/search/").as_deref(),
            Some("localhost:8001")
        );
        assert_eq!(
            search_address("https://search.example.org/x").as_deref(),
            Some("search.example.org:443")
        );
        assert_eq!(
            search_address("http://[::1]/x").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            search_address("http://[::1]:9000").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(search_address("ftp://x"), None);
        assert_eq!(search_address("http:///x"), None);
    }
}
