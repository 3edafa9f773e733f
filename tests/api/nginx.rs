//! The server behind a real nginx (contract section 9, "Early answers reach proxies"):
//! nginx buffers a client's body and forwards it whole, so an answer the server gives
//! before reading the body must not break nginx's sending, or nginx answers 502 and counts
//! the server as failed.
//!
//! nginx runs as a child process on a configuration written into a temporary folder (its
//! pid file, logs and temporary files in there too), listening on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

use crate::system::require;

/// Generous bound for nginx to start listening; only a broken start reaches it.
const START_PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn behind_nginx_a_2_mib_body_gets_the_servers_413_and_nginx_keeps_the_server() {
    let Some(nginx) = require(
        "nginx",
        "nginx",
        "behind_nginx_a_2_mib_body_gets_the_servers_413_and_nginx_keeps_the_server",
    ) else {
        return;
    };
    // Arrange: nginx in front of the server, which believes its X-Forwarded-For.
    let app = Server::start().await;
    let proxy = Nginx::start(&nginx, app.addr).await;
    let http = reqwest::Client::new();
    let body = format!(
        r#"{{"email": "kim@example.com", "password": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );

    // Act
    let too_large = http
        .post(proxy.url("/api/auth/login/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let too_large_status = too_large.status();
    let too_large_body = too_large.text().await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let health = http.get(proxy.url("/api/health/")).send().await.unwrap();
        statuses.push(health.status());
    }
    let error_log = proxy.error_log();

    // Assert: the server's own answer, and every later request served.
    assert_eq!(
        too_large_status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{too_large_body}\n{error_log}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&too_large_body).unwrap(),
        json!({ "detail": "Request body too large." })
    );
    assert_eq!(statuses, vec![StatusCode::OK; 20], "{error_log}");
    for failure in [
        "upstream server temporarily disabled",
        "no live upstreams",
        "while sending request to upstream",
    ] {
        assert!(!error_log.contains(failure), "{failure}: {error_log}");
    }
}

/// The server on a listener whose connections take at most 64 KiB into their receive
/// buffers (a socket's buffer grows to megabytes on loopback otherwise): like a server
/// across a network, it holds back a sender that it does not read.
struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = narutalk_server::settings::Settings::for_tests(dir.path());
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        let open_config = config.core.clone();
        let core = tokio::task::spawn_blocking(move || {
            narutalk_core::Narutalk::open(
                &open_config,
                narutalk_core::store::OpenMode::CreateIfMissing,
            )
        })
        .await
        .unwrap()
        .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            narutalk_server::serve_with(
                std::sync::Arc::new(core),
                &config,
                listener,
                narutalk_server::ServeOptions::default(),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        });
        Server {
            addr,
            _stop: stop,
            _dir: dir,
        }
    }
}

/// A running nginx, killed (by its pid) when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts `program` as a reverse proxy to `upstream` and waits until it accepts
    /// connections.
    async fn start(program: &Path, upstream: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, configuration(dir.path(), addr, upstream)).unwrap();
        let child = Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Nginx { child, addr, dir };
        let started = std::time::Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(
                started.elapsed() < START_PATIENCE,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (bound, then let go for nginx to take).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One nginx process (no master, so killing it leaves no worker behind), in the
/// foreground, with every file it writes in `dir`. The upstream names the server twice so
/// that nginx counts failures per peer, as it does for any group of several servers
/// (default `max_fails=1 fail_timeout=10s`): one broken exchange would disable a peer.
/// Bodies up to 16 MiB pass, so that the server's own limit answers.
fn configuration(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {error_log} info;
events {{
    worker_connections 64;
}}
http {{
    access_log {access_log};
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    client_max_body_size 16m;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    upstream narutalk {{
        server {upstream};
        server {upstream};
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://narutalk;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#,
        pid = path("nginx.pid").display(),
        error_log = path("error.log").display(),
        access_log = path("access.log").display(),
        client_body = path("client_body").display(),
        proxy = path("proxy").display(),
        fastcgi = path("fastcgi").display(),
        uwsgi = path("uwsgi").display(),
        scgi = path("scgi").display(),
    )
}
