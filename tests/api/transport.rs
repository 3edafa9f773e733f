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
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use narutalk_core::ai::{AiError, AiReply, AiRequest, Responder};
use narutalk_core::fields::JsonObject;
use narutalk_server::ServeOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{Account, PASSWORD, TestApp, spawn_app, spawn_app_with, start};

/// Generous bound for anything that must happen; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(20);

const BODY_TIMED_OUT: &str = r#"{"detail":"Request body timed out."}"#;
const TOO_LARGE: &str = r#"{"detail":"Request body too large."}"#;
const BAD_REQUEST: &str = r#"{"detail":"Bad request."}"#;

// ---- slow bodies ----------------------------------------------------------------------

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_closed_while_a_normal_client_is_served() {
    // Arrange: half a second of grace, then 500 bytes a second. The trickler sends a byte
    // every 100 ms, which an idle timer would never catch.
    let app = spawn_app_with(|_| {}, short_grace(Duration::from_millis(500))).await;
    let (mut reader, writer) = TcpStream::connect(app.addr).await.unwrap().into_split();
    let head = "POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    let started = Instant::now();
    let trickling = tokio::spawn(trickle(writer, head, 1, Duration::from_millis(100)));

    // Act
    let normal = app
        .post_json(
            "/api/auth/login/",
            &json!({ "email": "kim@example.com", "password": "violet-harbour-42" }),
        )
        .await;
    let answer = read_response(&mut reader).await;
    println!(
        "the trickled body was answered after {:?}",
        started.elapsed()
    );
    let after = read_after_answer(&mut reader).await;
    let sent = trickling.await.unwrap();

    // Assert
    assert_eq!(normal.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.text(), BODY_TIMED_OUT);
    assert!(after.is_closed(), "the connection is closed: {after:?}");
    assert!(
        sent < 1000,
        "the trickler never finished its body ({sent} bytes)"
    );
}

#[tokio::test]
async fn a_body_that_sends_nothing_is_answered_408_after_the_grace() {
    // Arrange
    let app = spawn_app_with(|_| {}, short_grace(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();

    // Act: a body of 100 bytes announced, none sent.
    stream
        .write_all(b"POST /api/auth/register/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;

    // Assert
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.text(), BODY_TIMED_OUT);
    assert!(read_after_answer(&mut stream).await.is_closed());
}

#[tokio::test]
async fn a_body_that_keeps_pace_after_the_grace_is_read_in_full() {
    // Arrange: a second of grace, then a body of 12,000 bytes sent at about 10,000 bytes
    // a second: 20 times the minimum, and longer than the grace.
    let app = spawn_app_with(|_| {}, short_grace(Duration::from_secs(1))).await;
    let (mut reader, writer) = TcpStream::connect(app.addr).await.unwrap().into_split();
    let password = "x".repeat(11_950);
    let body = json!({ "email": "kim@example.com", "password": password }).to_string();
    let head = format!(
        "POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let started = Instant::now();

    // Act
    let sending = tokio::spawn(send_in_pieces(
        writer,
        head,
        body.clone().into_bytes(),
        1000,
        Duration::from_millis(100),
    ));
    let answer = read_response(&mut reader).await;
    println!(
        "a paced body of {} bytes took {:?}",
        body.len(),
        started.elapsed()
    );
    let writer = sending.await.unwrap();
    drop(writer);

    // Assert: credentials refused, which only a body read whole and parsed can give.
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.json(),
        json!({ "detail": "No active account found with the given credentials" })
    );
}

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

// ---- early answers --------------------------------------------------------------------

#[tokio::test]
async fn an_early_answer_reaches_a_client_that_keeps_sending_its_body() {
    // Arrange: 2 MiB bodies (the limit is 1 MiB) answered before they are read whole:
    // by their `Content-Length`, by counting a chunked body, by authentication, by route.
    let app = spawn_app().await;
    let body = vec![b'x'; 2 * 1024 * 1024];
    let cases = [
        ("POST /api/auth/login/", false, 413, TOO_LARGE),
        ("POST /api/auth/login/", true, 413, TOO_LARGE),
        (
            "POST /api/chat/sessions/",
            false,
            401,
            r#"{"detail":"Authentication credentials were not provided."}"#,
        ),
        (
            "PUT /api/nowhere/",
            false,
            404,
            r#"{"detail":"Not found."}"#,
        ),
    ];

    for (request_line, chunked, status, detail) in cases {
        let (mut reader, writer) = TcpStream::connect(app.addr).await.unwrap().into_split();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let head = format!(
            "{request_line} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        );
        let (answered, answer_read) = tokio::sync::oneshot::channel();

        // Act: a first part of the body (enough for the answer), then, once the answer
        // has been read, the rest of it.
        let first_part = if chunked {
            1024 * 1024 + 64 * 1024
        } else {
            64 * 1024
        };
        let sending = tokio::spawn(send_body(
            writer,
            head,
            body.clone(),
            chunked,
            first_part,
            answer_read,
        ));
        let answer = read_response(&mut reader).await;
        answered.send(()).unwrap();
        let sent = sending.await.unwrap();
        let after = read_after_answer(&mut reader).await;

        // Assert: every byte went out, the whole answer came back, then a clean close.
        let case = format!("{request_line} chunked={chunked}");
        assert!(sent.is_ok(), "{case}: sending failed: {sent:?}");
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        assert_eq!(answer.text(), detail, "{case}");
        assert_eq!(answer.header("connection"), Some("close"), "{case}");
        assert_eq!(after, AfterAnswer::Closed(Vec::new()), "{case}");
    }
}

#[tokio::test]
async fn a_body_far_beyond_the_drain_limit_is_cut_off_after_its_answer() {
    // Arrange: a body of 256 MiB announced; the server reads at most 8 MiB of it after
    // answering 413.
    let app = spawn_app().await;
    let (mut reader, mut writer) = TcpStream::connect(app.addr).await.unwrap().into_split();
    let announced: u64 = 256 * 1024 * 1024;
    writer
        .write_all(
            format!("POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {announced}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();

    // Act
    let sending = tokio::spawn(async move {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent: u64 = 0;
        while sent < announced {
            if writer.write_all(&piece).await.is_err() {
                break;
            }
            sent += piece.len() as u64;
        }
        sent
    });
    let answer = read_response(&mut reader).await;
    let sent = tokio::time::timeout(PATIENCE, sending)
        .await
        .expect("the server should stop reading the body")
        .unwrap();
    println!(
        "{} MiB went out before the server closed",
        sent / (1024 * 1024)
    );

    // Assert
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.text(), TOO_LARGE);
    assert!(sent < announced, "the server read all of {announced} bytes");
}

// ---- stopping -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_a_body_still_arriving_503_at_once_and_finishes_the_request_in_flight() {
    // Arrange: a message post whose reply the responder holds, and a login whose body is
    // half sent. `Expect: 100-continue` makes the server say when it reads the body.
    let (responder, mut asked, release) = HeldResponder::new();
    let app = start(|_| {}, ServeOptions::default(), Some(Arc::new(responder))).await;
    let account = app.account("kim").await;
    let session = app.session(&account, "Closing time").await;
    let posting = tokio::spawn(
        app.authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            &account,
        )
        .json(&json!({ "content": "last words" }))
        .send(),
    );
    tokio::time::timeout(PATIENCE, asked.recv())
        .await
        .expect("the responder should be asked");
    let mut half_sent = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"email": "nobody@example.com", "password": "violet-harbour-42"}"#;
    half_sent
        .write_all(
            format!("POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len())
                .as_bytes(),
        )
        .await
        .unwrap();
    let go_ahead = read_response(&mut half_sent).await;
    assert_eq!(go_ahead.status, 100);
    half_sent.write_all(&body[..10]).await.unwrap();

    // Act
    let stopping = tokio::spawn(app.stop());
    let refused = read_response(&mut half_sent).await;
    let refused_after = read_after_answer(&mut half_sent).await;
    release.send(()).unwrap();
    let posted = tokio::time::timeout(PATIENCE, posting)
        .await
        .expect("the post in flight should be answered")
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the stop should return")
        .unwrap();

    // Assert: the 503 came while the post was still held; the post was answered.
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        refused.text(),
        r#"{"detail":"Service temporarily unavailable, try again later."}"#
    );
    assert!(refused_after.is_closed(), "{refused_after:?}");
    assert_eq!(posted.status(), StatusCode::CREATED);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(posted["reply"]["content"], "AI: last words");
}

// ---- helpers --------------------------------------------------------------------------

const HEALTH: &[u8] = b"GET /api/health/ HTTP/1.1\r\nHost: test\r\n\r\n";

/// Default options with a body grace of `grace` (and the default 500 bytes a second).
fn short_grace(grace: Duration) -> ServeOptions {
    ServeOptions {
        body_grace: grace,
        ..ServeOptions::default()
    }
}

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

/// Writes `head`, then one `byte_count`-byte piece of body every `every`, until the
/// connection fails or 1,000 bytes are sent; answers how many body bytes went out.
async fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    head: &str,
    byte_count: usize,
    every: Duration,
) -> usize {
    writer.write_all(head.as_bytes()).await.unwrap();
    let mut sent = 0;
    while sent < 1000 {
        tokio::time::sleep(every).await;
        if writer.write_all(&b"x".repeat(byte_count)).await.is_err() {
            break;
        }
        sent += byte_count;
    }
    sent
}

/// Writes `head`, then `body` in pieces of `piece` bytes, one every `every`; answers the
/// writer still open (dropping it would half-close the connection, which the server
/// takes for a client that left).
async fn send_in_pieces(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    head: String,
    body: Vec<u8>,
    piece: usize,
    every: Duration,
) -> tokio::net::tcp::OwnedWriteHalf {
    writer.write_all(head.as_bytes()).await.unwrap();
    for (index, chunk) in body.chunks(piece).enumerate() {
        if index > 0 {
            tokio::time::sleep(every).await;
        }
        writer.write_all(chunk).await.unwrap();
    }
    writer
}

/// Writes `head` and the first `first_part` bytes of `body` (as 64 KiB chunks when
/// `chunked`), waits for `answered`, then writes the rest of the body.
async fn send_body(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    head: String,
    body: Vec<u8>,
    chunked: bool,
    first_part: usize,
    answered: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    writer.write_all(head.as_bytes()).await?;
    let mut answered = Some(answered);
    for (index, chunk) in body.chunks(64 * 1024).enumerate() {
        if index * 64 * 1024 >= first_part
            && let Some(answered) = answered.take()
        {
            let _ = answered.await;
        }
        if chunked {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
        }
        writer.write_all(chunk).await?;
        if chunked {
            writer.write_all(b"\r\n").await?;
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
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

impl AfterAnswer {
    /// Closed either way, with nothing more sent.
    fn is_closed(&self) -> bool {
        matches!(self, AfterAnswer::Closed(rest) | AfterAnswer::Reset(rest) if rest.is_empty())
    }
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

/// Answers `AI: {message}` once the test releases it, and says when it is asked.
struct HeldResponder {
    asked: tokio::sync::mpsc::UnboundedSender<()>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl HeldResponder {
    fn new() -> (
        HeldResponder,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        mpsc::Sender<()>,
    ) {
        let (asked, asked_receiver) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_receiver) = mpsc::channel();
        let responder = HeldResponder {
            asked,
            release: Mutex::new(release_receiver),
        };
        (responder, asked_receiver, release)
    }
}

impl Responder for HeldResponder {
    fn name(&self) -> &str {
        "held"
    }

    fn respond(&self, request: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        let _ = self.asked.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: JsonObject::new(),
        })
    }
}
