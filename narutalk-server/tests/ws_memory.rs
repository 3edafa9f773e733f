//! Protects contract section 9's bound on what a WebSocket client can make the server hold:
//! the real binary, a client that floods it with pings and never reads, and the server's
//! resident memory read from `/proc` (so the server is measured alone, apart from the
//! test's own client).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

/// How much the server's memory may grow for one such client.
const GROWTH_LIMIT_KIB: u64 = 32 * 1024;

/// How much the client sends at most: three times the bound, so that a server that keeps
/// what it owes this client (a pong per ping) would outgrow it.
const FLOOD_BYTES: usize = 96 * 1024 * 1024;

/// How long one send may be blocked before the client concludes that the server has
/// stopped reading it.
const BLOCKED: Duration = Duration::from_secs(3);

/// The server process, killed (by its pid) when the test ends, whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Its resident memory (`VmRSS`), in KiB.
    fn resident_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap_or_else(|| panic!("no VmRSS in {status}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// One HTTP/1.1 request with a JSON body over a plain socket; answers the whole response.
fn http_post_json(address: &str, path: &str, access: Option<&str>, body: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    let authorization = access
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The string value of `"key":"..."` in a response.
fn string_field(response: &str, key: &str) -> String {
    response
        .split(&format!(r#""{key}":""#))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in {response}"))
        .to_owned()
}

/// A client that sends WebSocket pings (control frames: tungstenite answers each with a
/// pong by itself) as fast as it can and never reads: the server stops reading it once its
/// pongs are blocked, so its memory grows by less than 32 MiB, however much is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_pings_and_never_reads_grows_the_server_by_less_than_32_mib() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_narutalk-server"))
        .env_clear()
        .current_dir(dir.path())
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut banner = String::new();
    BufReader::new(stdout).read_line(&mut banner).unwrap();
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    let setup = address.clone();
    let (access, session) = tokio::task::spawn_blocking(move || {
        let password = "violet-harbour-42";
        http_post_json(
            &setup,
            "/api/auth/register/",
            None,
            &format!(
                r#"{{"username": "kim", "email": "kim@example.com", "password": "{password}", "password_confirm": "{password}"}}"#
            ),
        );
        let login = http_post_json(
            &setup,
            "/api/auth/login/",
            None,
            &format!(r#"{{"email": "kim@example.com", "password": "{password}"}}"#),
        );
        let access = string_field(&login, "access");
        let created = http_post_json(
            &setup,
            "/api/chat/sessions/",
            Some(&access),
            r#"{"title": "pings"}"#,
        );
        (access, string_field(&created, "id"))
    })
    .await
    .unwrap();
    // A client with small socket buffers: the server's pongs block soon, and so do this
    // client's pings once the server stops reading.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    tcp.set_send_buffer_size(4096).unwrap();
    let stream = tcp.connect(address.parse().unwrap()).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(
        format!("ws://{address}/ws/chat/{session}/?token={access}"),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    // The hashing threads let their memory go after a second without work: measured from
    // then, the baseline holds none of it. (On a slower machine the baseline is only
    // higher, which makes the check looser, never failing.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.resident_kib();

    // Act
    let ping = Message::Ping(vec![b'p'; 125].into());
    let frame_bytes = ping.len();
    let started = Instant::now();
    let mut sent = 0;
    while sent * frame_bytes < FLOOD_BYTES {
        match tokio::time::timeout(BLOCKED, socket.send(ping.clone())).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let after = server.resident_kib();

    // Assert
    let growth = after.saturating_sub(before);
    println!(
        "{sent} pings ({} MiB) sent in {:?}; the server's memory: {before} KiB before, {after} KiB after, {growth} KiB more",
        sent * frame_bytes / (1024 * 1024),
        started.elapsed()
    );
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "the server grew by {growth} KiB for one client that pings and never reads"
    );
}
