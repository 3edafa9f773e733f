//! The HTTP transport against hostile and clumsy clients (contract section 9, "Slow and
//! greedy clients" and "Early answers reach proxies"; section 1, "no input yields a
//! dropped connection"), spoken as raw HTTP/1.1 over TCP so that every byte and every
//! close is seen: bodies that trickle, clients that hold too many connections, targets
//! without a path, answers given before the body is read, and a stop while a body is
//! still arriving.
//!
//! No assertion here is about time: latencies are printed, and every wait is a generous
//! upper bound for something that must happen.

use std::net::SocketAddr;
use std::time::Duration;

use narutalk_server::ServeOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{Account, PASSWORD, TestApp, spawn_app, spawn_app_with};

/// Generous bound for anything that must happen; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(20);

const BAD_REQUEST: &str = r#"{"detail":"Bad request."}"#;

// ---- greedy clients -------------------------------------------------------------------

#[tokio::test]
async fn a_connection_over_its_ips_share_is_closed_at_once_and_other_ips_are_served() {
    // Arrange: two connections for each IP; 127.0.0.1 holds both.
    let app = spawn_app_with(
        |config| config.max_connections_per_ip = 2,
        ServeOptions::default(),
    )
    .await;
    let mut first = connect_from([127, 0, 0, 1], app.addr).await;
    let mut second = connect_from([127, 0, 0, 1], app.addr).await;
    assert_eq!(health(&mut first).await.status, 200);
    assert_eq!(health(&mut second).await.status, 200);

    // Act
    let mut third = connect_from([127, 0, 0, 1], app.addr).await;
    let refused = read_after_answer(&mut third).await;
    let mut other_ip = connect_from([127, 0, 0, 2], app.addr).await;
    let other_ip = health(&mut other_ip).await;

    // Assert: closed before any HTTP, while the first two and the other IP are served.
    assert_eq!(refused, AfterAnswer::Closed(Vec::new()));
    assert_eq!(other_ip.status, 200, "{}", other_ip.text());
    assert_eq!(
        other_ip.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(other_ip.json()["status"], "healthy");
    assert_eq!(health(&mut first).await.status, 200);
}

#[tokio::test]
async fn a_connection_closed_gives_its_place_in_the_ips_share_back() {
    // Arrange
    let app = spawn_app_with(
        |config| config.max_connections_per_ip = 1,
        ServeOptions::default(),
    )
    .await;
    let mut only = connect_from([127, 0, 0, 1], app.addr).await;
    assert_eq!(health(&mut only).await.status, 200);
    drop(only);

    // Act: the server notices the close on its own time; a new connection is served
    // once it has.
    let served = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut next = connect_from([127, 0, 0, 1], app.addr).await;
            next.write_all(b"GET /api/health/ HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut first_byte = [0u8; 1];
            if let Ok(1) = next.read(&mut first_byte).await {
                let mut rest = Vec::new();
                let _ = next.read_to_end(&mut rest).await;
                break [first_byte.to_vec(), rest].concat();
            }
        }
    })
    .await
    .expect("a connection should be served once the first one is gone");

    // Assert
    assert!(served.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn trusted_proxies_are_exempt_from_the_per_ip_share() {
    // Arrange: one connection per IP, but 127.0.0.3 is a trusted proxy.
    let app = spawn_app_with(
        |config| {
            config.max_connections_per_ip = 1;
            config.trusted_proxies = vec!["127.0.0.3".parse().unwrap()];
        },
        ServeOptions::default(),
    )
    .await;
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(connect_from([127, 0, 0, 3], app.addr).await);
    }

    // Act
    let mut statuses = Vec::new();
    for connection in &mut connections {
        statuses.push(health(connection).await.status);
    }

    // Assert
    assert_eq!(statuses, [200, 200, 200]);
}

#[tokio::test]
async fn an_open_websocket_keeps_its_place_in_the_ips_share() {
    // Arrange: one connection per IP, taken by a WebSocket.
    let app = spawn_app_with(
        |config| config.max_connections_per_ip = 1,
        ServeOptions::default(),
    )
    .await;
    let (account, session) = account_and_session_from_127_0_0_2(&app).await;
    let stream = connect_from([127, 0, 0, 1], app.addr).await;
    let (_socket, response) = tokio_tungstenite::client_async(
        app.ws_url(&session, &format!("token={}", account.access)),
        stream,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    // Act
    let mut second = connect_from([127, 0, 0, 1], app.addr).await;
    let refused = read_after_answer(&mut second).await;

    // Assert
    assert_eq!(refused, AfterAnswer::Closed(Vec::new()));
}

// ---- request targets ------------------------------------------------------------------

#[tokio::test]
async fn a_target_without_a_path_is_answered_400_json_with_the_usual_headers() {
    // Arrange
    let app = spawn_app().await;

    for request in [
        "GET example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: test\r\n\r\n",
    ] {
        // Act
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut stream).await;

        // Assert
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert_eq!(answer.text(), BAD_REQUEST, "{request:?}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    }
}

#[tokio::test]
async fn an_absolute_form_target_is_served_as_its_path() {
    // Arrange
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();

    // Act: two requests on one connection.
    stream
        .write_all(b"GET http://narutalk.example/api/health/ HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        .await
        .unwrap();
    let health = read_response(&mut stream).await;
    stream
        .write_all(
            b"GET http://narutalk.example/api/nowhere/?x=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
        )
        .await
        .unwrap();
    let unknown = read_response(&mut stream).await;

    // Assert
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "healthy");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.json(), json!({ "detail": "Not found." }));
}

// ---- helpers --------------------------------------------------------------------------

const HEALTH: &[u8] = b"GET /api/health/ HTTP/1.1\r\nHost: test\r\n\r\n";

/// A connection to `server` from the loopback address `local` (all of 127/8 is local).
async fn connect_from(local: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// `GET /api/health/` on a kept-alive connection.
async fn health(stream: &mut TcpStream) -> RawResponse {
    stream.write_all(HEALTH).await.unwrap();
    read_response(stream).await
}

/// An account and a session of it, made over one connection from 127.0.0.2 (so that the
/// share of 127.0.0.1 stays whole).
async fn account_and_session_from_127_0_0_2(app: &TestApp) -> (Account, String) {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let (email, username) = ("kim@example.com", "kim");
    let registered = client
        .post(app.url("/api/auth/register/"))
        .json(&json!({
            "username": username, "email": email,
            "password": PASSWORD, "password_confirm": PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let login = client
        .post(app.url("/api/auth/login/"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let login: Value = login.json().await.unwrap();
    let account = Account {
        id: login["user"]["id"].as_i64().unwrap(),
        email: email.to_owned(),
        username: username.to_owned(),
        access: login["access"].as_str().unwrap().to_owned(),
        refresh: login["refresh"].as_str().unwrap().to_owned(),
    };
    let created = client
        .post(app.url("/api/chat/sessions/"))
        .bearer_auth(&account.access)
        .json(&json!({ "title": "Shares" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let session = created["id"].as_str().unwrap().to_owned();
    (account, session)
}

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name` (lower-case), when present.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads one response (an interim `1xx` is a response of its own): the head, then a
/// `Content-Length` body. Fails after [`PATIENCE`] or if the connection ends first.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    tokio::time::timeout(PATIENCE, async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream
                .read_u8()
                .await
                .expect("the connection ended before an answer");
            head.push(byte);
        }
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .map_or(0, |(_, value)| value.parse().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        RawResponse {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("no answer came in time")
}

/// What a connection does after an answer: bytes until a clean close, or a reset.
#[derive(Debug, PartialEq, Eq)]
enum AfterAnswer {
    /// The peer closed (FIN) after these further bytes.
    Closed(Vec<u8>),
    /// The connection was reset after these further bytes.
    Reset(Vec<u8>),
}

/// Reads until the connection ends; fails if it stays open past [`PATIENCE`].
async fn read_after_answer(stream: &mut (impl AsyncRead + Unpin)) -> AfterAnswer {
    let mut rest = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("the connection should have ended")
        {
            Ok(0) => return AfterAnswer::Closed(rest),
            Ok(n) => rest.extend_from_slice(&buffer[..n]),
            Err(_) => return AfterAnswer::Reset(rest),
        }
    }
}
