//! `/api/health/` with a search service, and the search proxy `/api/proxy/search/`
//! (contract section 4), against a fake search service each test starts on a free
//! loopback port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Account, TestApp, assert_answer, body, spawn_app, spawn_app_with};

const SEARCH: &str = "/api/proxy/search/";
/// The largest search answer the proxy passes through.
const TEN_MIB: usize = 10 * 1024 * 1024;

// Health.

#[tokio::test]
async fn health_reports_a_configured_search_service_that_is_down_as_unavailable() {
    // Arrange
    let url = refused_url().await;
    let app = spawn_app_with(|config| config.search_url = url, ServeOptions::default()).await;

    // Act
    let response = app.get("/api/health/").await;

    // Assert
    assert_answer(
        response,
        StatusCode::OK,
        json!({
            "status": "healthy",
            "services": {
                "server": "running",
                "database": "connected",
                "ai_service": "available",
                "search_service": "unavailable",
            }
        }),
    )
    .await;
}

#[tokio::test]
async fn health_reports_a_reachable_search_service_as_available_after_the_first_probe() {
    // Arrange
    let search = FakeSearch::start(json_answer("200 OK", &json!({})), Duration::ZERO).await;
    let url = search.url.clone();
    let app = spawn_app_with(|config| config.search_url = url, ServeOptions::default()).await;

    // Act
    // The first probe runs at start; a busy machine may be slow to run it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut health = body(app.get("/api/health/").await).await;
    while health["services"]["search_service"] != "available"
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        health = body(app.get("/api/health/").await).await;
    }

    // Assert
    assert_eq!(
        health,
        json!({
            "status": "healthy",
            "services": {
                "server": "running",
                "database": "connected",
                "ai_service": "available",
                "search_service": "available",
            }
        })
    );
    assert_eq!(search.received(), [], "a probe only connects");
}

// The search proxy.

#[tokio::test]
async fn the_proxy_passes_a_json_answer_through_with_its_status() {
    // Arrange
    let results = json!({ "results": [{ "title": "두통", "score": 0.93 }], "total": 1 });
    let search = FakeSearch::start(json_answer("200 OK", &results), Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "두통" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(body(response).await, results);
}

#[tokio::test]
async fn the_proxy_passes_an_error_status_with_a_json_body_through() {
    // Arrange
    let missing = json!({ "detail": "no such index" });
    let search = FakeSearch::start(json_answer("404 Not Found", &missing), Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(response, StatusCode::NOT_FOUND, missing).await;
}

#[tokio::test]
async fn the_proxy_forwards_the_body_with_only_content_type_and_request_id() {
    // Arrange
    let search = FakeSearch::start(json_answer("200 OK", &json!({})), Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;
    let sent = json!({ "query": "두통", "filters": { "category": "medical" }, "limit": 5 });

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .header("x-request-id", "trace-42")
        .header("user-agent", "narutalk-test/1")
        .header("cookie", "sessionid=secret")
        .header("x-custom", "1")
        .json(&sent)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let received = search.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.request_line, "POST /api/search/ HTTP/1.1");
    assert_eq!(
        serde_json::from_slice::<Value>(&request.body).unwrap(),
        sent
    );
    assert_eq!(
        request.forwarded_headers(),
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-request-id".to_owned(), "trace-42".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_proxy_forwards_the_request_id_it_made_when_the_client_sent_none() {
    // Arrange
    let search = FakeSearch::start(json_answer("200 OK", &json!({})), Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!request_id.is_empty());
    let received = search.received();
    assert_eq!(
        received[0].header("x-request-id"),
        Some(request_id.as_str())
    );
    assert_eq!(received[0].header("authorization"), None);
}

#[tokio::test]
async fn a_search_answer_that_is_not_json_is_502() {
    // Arrange
    let html = http_answer("200 OK", "text/html", b"<html>search is down</html>");
    let search = FakeSearch::start(html, Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_GATEWAY,
        json!({ "error": "search service answered with a body that is not JSON" }),
    )
    .await;
}

#[tokio::test]
async fn a_search_answer_of_exactly_10_mib_is_passed_through() {
    // Arrange
    let largest = json_string_of(TEN_MIB);
    let answer = http_answer("200 OK", "application/json", &largest);
    let search = FakeSearch::start(answer, Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap(), largest);
}

#[tokio::test]
async fn a_search_answer_over_10_mib_is_502() {
    // Arrange
    let answer = http_answer("200 OK", "application/json", &json_string_of(TEN_MIB + 1));
    let search = FakeSearch::start(answer, Duration::ZERO).await;
    let (app, kim) = app_with_search(&search).await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::BAD_GATEWAY,
        json!({ "error": "search service answer is larger than 10 MiB" }),
    )
    .await;
}

#[tokio::test]
async fn a_search_service_that_refuses_the_connection_is_503() {
    // Arrange
    let url = refused_url().await;
    let app = spawn_app_with(|config| config.search_url = url, ServeOptions::default()).await;
    let kim = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "search service unavailable" }),
    )
    .await;
}

#[tokio::test]
async fn a_search_service_slower_than_the_timeout_is_503() {
    // Arrange
    // It answers long after the server's 1 s timeout, however busy the machine.
    let search =
        FakeSearch::start(json_answer("200 OK", &json!({})), Duration::from_secs(120)).await;
    let url = search.url.clone();
    let app = spawn_app_with(
        |config| {
            config.search_url = url;
            config.search_timeout_seconds = 1;
        },
        ServeOptions::default(),
    )
    .await;
    let kim = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "search service timed out" }),
    )
    .await;
}

#[tokio::test]
async fn the_proxy_answers_503_when_no_search_service_is_configured() {
    // Arrange
    let app = spawn_app().await;
    let kim = app.account("kim").await;

    // Act
    let response = app
        .authed(Method::POST, SEARCH, &kim)
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_answer(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "search service is not configured" }),
    )
    .await;
}

#[tokio::test]
async fn the_proxy_needs_an_access_token_and_forwards_nothing_without_one() {
    // Arrange
    let search = FakeSearch::start(json_answer("200 OK", &json!({})), Duration::ZERO).await;
    let url = search.url.clone();
    let app = spawn_app_with(|config| config.search_url = url, ServeOptions::default()).await;

    // Act
    let missing = app.post_json(SEARCH, &json!({ "query": "x" })).await;
    let bad = app
        .request(Method::POST, SEARCH)
        .bearer_auth("not-a-token")
        .json(&json!({ "query": "x" }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"api\""
    );
    assert_answer(
        missing,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Authentication credentials were not provided." }),
    )
    .await;
    assert_answer(
        bad,
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Given token not valid for any token type", "code": "token_not_valid" }),
    )
    .await;
    assert_eq!(search.received(), []);
}

// The fake search service.

/// A search service on a free loopback port: it answers every request with the same raw
/// HTTP answer after a delay, and records each request it was sent. It stops with the
/// test's runtime.
struct FakeSearch {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

/// One request the fake search service read.
#[derive(Clone, Debug, PartialEq)]
struct Received {
    request_line: String,
    /// Lower-cased names, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// The headers other than those any HTTP client adds by itself, sorted by name.
    fn forwarded_headers(&self) -> Vec<(String, String)> {
        const TRANSPORT: [&str; 6] = [
            "host",
            "content-length",
            "accept",
            "accept-encoding",
            "connection",
            "transfer-encoding",
        ];
        let mut forwarded: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| !TRANSPORT.contains(&name.as_str()))
            .cloned()
            .collect();
        forwarded.sort();
        forwarded
    }
}

impl FakeSearch {
    async fn start(answer: Vec<u8>, delay: Duration) -> FakeSearch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/search/", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, record) = (answer.clone(), record.clone());
                tokio::spawn(async move {
                    // A health probe connects and leaves without a request.
                    let Some(request) = read_request(&stream).await else {
                        return;
                    };
                    record.lock().unwrap().push(request);
                    tokio::time::sleep(delay).await;
                    write_all(&stream, &answer).await;
                });
            }
        });
        FakeSearch { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one request (head and `Content-Length` body); `None` when the peer leaves first.
async fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut bytes = Vec::new();
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0);
            let body_start = end + 4;
            if bytes.len() >= body_start + length {
                return Some(Received {
                    request_line,
                    headers,
                    body: bytes[body_start..body_start + length].to_vec(),
                });
            }
        }
        stream.readable().await.ok()?;
        let mut buffer = [0; 8192];
        match stream.try_read(&mut buffer) {
            Ok(0) => return None,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        if stream.writable().await.is_err() {
            return;
        }
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A whole HTTP/1.1 answer that closes the connection.
fn http_answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

fn json_answer(status: &str, body: &Value) -> Vec<u8> {
    http_answer(
        status,
        "application/json",
        &serde_json::to_vec(body).unwrap(),
    )
}

/// A JSON string of exactly `bytes` bytes.
fn json_string_of(bytes: usize) -> Vec<u8> {
    let mut json = vec![b'a'; bytes];
    json[0] = b'"';
    json[bytes - 1] = b'"';
    json
}

/// The URL of a loopback port where nothing listens.
async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/api/search/")
}

/// A server proxying to `search`, and a logged-in user.
async fn app_with_search(search: &FakeSearch) -> (TestApp, Account) {
    let url = search.url.clone();
    let app = spawn_app_with(|config| config.search_url = url, ServeOptions::default()).await;
    let kim = app.account("kim").await;
    (app, kim)
}
