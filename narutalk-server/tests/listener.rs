//! Protects the accept loop's limits (contract section 4, "Slow clients"; section 9, "Slow
//! and greedy clients") and the graceful stop of section 8, by speaking raw HTTP/1.1 over
//! sockets to a server started in-process.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::store::OpenMode;
use narutalk_server::ServeOptions;
use narutalk_server::settings::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen promptly; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    served: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(options: ServeOptions) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = Settings::for_tests(dir.path());
    let open_config = config.core.clone();
    let core = tokio::task::spawn_blocking(move || {
        Narutalk::open(&open_config, OpenMode::CreateIfMissing)
    })
    .await
    .unwrap()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        narutalk_server::serve_with(Arc::new(core), &config, listener, options, async {
            let _ = stopped.await;
        })
        .await;
    });
    Running {
        address,
        stop,
        served,
        _dir: dir,
    }
}

/// Reads until the peer closes; the text read so far.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buffer))
        .await
        .expect("the server should have closed the connection");
    String::from_utf8_lossy(&buffer).into_owned()
}

const HEALTH: &[u8] = b"GET /api/health/ HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    // Arrange
    let server = start(ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    })
    .await;
    let mut slow = TcpStream::connect(server.address).await.unwrap();

    // Act: half a request head, then nothing.
    slow.write_all(b"GET /api/health/ HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow).await;

    // Assert: closed without serving the request.
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    // Arrange
    let server = start(ServeOptions {
        max_connections: 1,
        ..ServeOptions::default()
    })
    .await;
    let first = TcpStream::connect(server.address).await.unwrap();
    let mut second = TcpStream::connect(server.address).await.unwrap();
    second.write_all(HEALTH).await.unwrap();

    // Act
    let mut byte = [0u8; 1];
    let while_capped =
        tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    drop(first);
    let after = read_to_close(&mut second).await;

    // Assert
    assert!(
        while_capped.is_err(),
        "the second connection must not be served while the first holds the only place"
    );
    assert!(
        format!("{}{after}", char::from(byte[0])).contains("HTTP/1.1 200 OK"),
        "{after}"
    );
}

#[tokio::test]
async fn stopping_answers_a_body_still_arriving_503_at_once_then_refuses_connections() {
    // Arrange: a login whose body is half sent when the stop comes. `Expect:
    // 100-continue` makes the server say when its handler starts reading the body.
    let server = start(ServeOptions::default()).await;
    let mut in_flight = TcpStream::connect(server.address).await.unwrap();
    let body = br#"{"email": "nobody@example.com", "password": "violet-harbour-42"}"#;
    in_flight
        .write_all(
            format!(
                "POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let go_ahead = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut interim = vec![0u8; go_ahead.len()];
    tokio::time::timeout(PATIENCE, in_flight.read_exact(&mut interim))
        .await
        .expect("the handler should ask for the body")
        .unwrap();
    assert_eq!(interim, go_ahead);
    in_flight.write_all(&body[..10]).await.unwrap();

    // Act: the stop, with the rest of the body never sent.
    server.stop.send(()).unwrap();
    let answer = read_to_close(&mut in_flight).await;
    tokio::time::timeout(PATIENCE, server.served)
        .await
        .expect("serve must return without waiting for the body")
        .unwrap();
    let after_stop = TcpStream::connect(server.address).await;

    // Assert
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(
        answer.ends_with(r#"{"detail":"Service temporarily unavailable, try again later."}"#),
        "{answer}"
    );
    assert!(after_stop.is_err(), "nothing listens after the stop");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() {
    // Arrange: 300 ms of grace, then 500 bytes a second.
    let server = start(ServeOptions {
        body_grace: Duration::from_millis(300),
        ..ServeOptions::default()
    })
    .await;
    let mut stalled = TcpStream::connect(server.address).await.unwrap();

    // Act: a body of 100 bytes announced, 10 sent.
    stalled
        .write_all(
            b"POST /api/auth/login/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut stalled).await;

    // Assert
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"detail":"Request body timed out."}"#),
        "{answer}"
    );
}
