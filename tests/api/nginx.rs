//! The server behind a real nginx (contract section 9, "Early answers reach proxies"):
//! nginx buffers a client's body and forwards it whole, so an answer the server gives
//! before reading the body must not break nginx's sending, or nginx answers 502 and counts
//! the server as failed.
//!
//! Also two server processes on one PostgreSQL database behind nginx configured as the
//! README's "Running several servers" says (its block read from the README): REST and a
//! socket through nginx, each server answering in turn (contract section 10), and the
//! throttles counting the client nginx names in `X-Forwarded-For`, across both servers.
//!
//! nginx runs as a child process on a configuration written into a temporary folder (its
//! pid file, logs and temporary files in there too), listening on 127.0.0.1.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

use crate::helpers::{frame_of, next_json, postgres_database, template};
use crate::server_process::{Api, ServerProcess};
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
    let proxy = Nginx::start(&nginx, |dir, listen| configuration(dir, listen, app.addr)).await;
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
    /// Starts `program` on the configuration that `configuration` writes for its folder
    /// and its listen address, and waits until it accepts connections.
    async fn start(
        program: &Path,
        configuration: impl FnOnce(&Path, SocketAddr) -> String,
    ) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, configuration(dir.path(), addr)).unwrap();
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
/// foreground, with every file it writes in `dir`, and `http` in its `http` block. The
/// access log gives each request's method, path and the server that answered it.
fn process_configuration(dir: &Path, http: &str) -> String {
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
    log_format upstreams '$request_method $uri $upstream_addr';
    access_log {access_log} upstreams;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
{http}
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

/// A reverse proxy to `upstream`. The upstream names the server twice so that nginx
/// counts failures per peer, as it does for any group of several servers (default
/// `max_fails=1 fail_timeout=10s`): one broken exchange would disable a peer. Bodies up to
/// 16 MiB pass, so that the server's own limit answers.
fn configuration(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    process_configuration(
        dir,
        &format!(
            r#"    client_max_body_size 16m;
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
    }}"#
        ),
    )
}

/// The nginx block of the README's "Running several servers", as written there, with its
/// two example servers replaced by `upstreams` and its `listen 80` by `listen`: the test
/// keeps the README's configuration true.
fn readme_configuration(dir: &Path, listen: SocketAddr, upstreams: [SocketAddr; 2]) -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("\n## Running several servers\n")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("the README has a section \"Running several servers\"");
    let block = section
        .split_once("```nginx\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("the section has an nginx block");
    let mut block = block.to_owned();
    for (example, actual) in [
        (
            "server 10.0.0.11:8000;",
            format!("server {};", upstreams[0]),
        ),
        (
            "server 10.0.0.12:8000;",
            format!("server {};", upstreams[1]),
        ),
        ("listen 80;", format!("listen {listen};")),
    ] {
        assert_eq!(block.matches(example).count(), 1, "{example} in {block}");
        block = block.replace(example, &actual);
    }
    process_configuration(dir, &block)
}

/// The upstream of each request nginx logged whose method and path satisfy `wanted`,
/// once there are `n` of them (nginx logs a request after answering it).
async fn upstreams_of(proxy: &Nginx, n: usize, wanted: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(proxy.dir.path().join("access.log")).unwrap_or_default();
        let upstreams: Vec<String> = log
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                let (method, path, upstream) = (words.next()?, words.next()?, words.next()?);
                wanted(method, path).then(|| upstream.to_owned())
            })
            .collect();
        if upstreams.len() >= n {
            return upstreams;
        }
        assert!(
            started.elapsed() < START_PATIENCE,
            "nginx logged {} of {n} requests: {log}",
            upstreams.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two server processes on one fresh PostgreSQL database, as the README starts them,
/// believing nginx's `X-Forwarded-For`; nginx on the README's configuration in front.
struct BehindNginx {
    a: ServerProcess,
    b: ServerProcess,
    proxy: Nginx,
    /// A client of nginx.
    api: Api,
}

impl BehindNginx {
    /// Starts them for `test`, with `settings` on top of the shared ones; `None` (the test
    /// skips) without nginx or PostgreSQL.
    async fn start(test: &'static str, settings: &[(&str, &str)]) -> Option<BehindNginx> {
        let nginx = require("nginx", "nginx", test)?;
        let url = postgres_database(test).await?;
        let mut vars = vec![
            ("NARUTALK_DATABASE", url.as_str()),
            (
                "NARUTALK_SECRET_KEY",
                "two-servers-behind-nginx-share-this-key-0123456789abcdef",
            ),
            ("NARUTALK_TRUSTED_PROXIES", "127.0.0.1"),
        ];
        vars.extend_from_slice(settings);
        let a = ServerProcess::start(&vars).await;
        let b = ServerProcess::start(&vars).await;
        let proxy = Nginx::start(&nginx, |dir, listen| {
            readme_configuration(dir, listen, [a.addr, b.addr])
        })
        .await;
        let api = Api::new(proxy.addr);
        Some(BehindNginx { a, b, proxy, api })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_readmes_nginx_two_servers_on_one_database_serve_rest_and_a_socket() {
    let Some(BehindNginx { a, b, proxy, api }) = BehindNginx::start(
        "behind_the_readmes_nginx_two_servers_on_one_database_serve_rest_and_a_socket",
        &[],
    )
    .await
    else {
        return;
    };
    let logs = || format!("{}\n{}\n{}", proxy.error_log(), a.log(), b.log());

    // Act: REST through nginx (requests alternate between the servers), and a socket
    // through nginx that receives what posts through nginx store on either server.
    let kim = api.account("kim").await;
    let session = api.session(&kim, "proxied").await;
    let mut socket = api.socket(&kim, &session).await;
    for n in 0..4 {
        let posted = api.post(&kim, &session, &format!("message {n}")).await;
        assert_eq!(posted.status(), StatusCode::CREATED, "{}", logs());
    }
    let mut frames = Vec::new();
    while frames.len() < 8 {
        let frame = next_json(&mut socket).await;
        if frame["type"] == "chat_message" {
            frames.push(frame);
        }
    }
    let first_read = api.stored(&kim, &session).await;
    let second_read = api.stored(&kim, &session).await;

    // Assert: every message and reply, in order, on the socket and in both reads.
    assert_eq!(first_read.len(), 8, "{first_read:?}");
    let contents: Vec<&str> = first_read
        .iter()
        .map(|message| message["content"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..4)
        .flat_map(|n| {
            let message = format!("message {n}");
            [message.clone(), template(&message)]
        })
        .collect();
    assert_eq!(contents, expected);
    assert_eq!(first_read, second_read);
    assert_eq!(frames, first_read.iter().map(frame_of).collect::<Vec<_>>());
    // Both servers served posts, so the socket (on one of them) received messages the
    // other stored; and both served reads.
    let both: BTreeSet<String> = [a.addr, b.addr].iter().map(ToString::to_string).collect();
    let posts = upstreams_of(&proxy, 4, |method, path| {
        method == "POST" && path.ends_with("/messages/")
    })
    .await;
    assert_eq!(
        posts.into_iter().collect::<BTreeSet<_>>(),
        both,
        "{}",
        logs()
    );
    let reads = upstreams_of(&proxy, 2, |method, path| {
        method == "GET" && path.starts_with("/api/chat/sessions/")
    })
    .await;
    assert_eq!(
        reads.into_iter().collect::<BTreeSet<_>>(),
        both,
        "{}",
        logs()
    );
    for failure in ["upstream server temporarily disabled", "no live upstreams"] {
        assert!(
            !proxy.error_log().contains(failure),
            "{failure}: {}",
            logs()
        );
    }
}

/// Registers a fresh account through `api` as the client `forwarded_for` (sent as
/// `X-Forwarded-For`, to which nginx appends its own peer), or as nginx's peer itself
/// when `None`: the answer's status.
async fn register_as(api: &Api, n: usize, forwarded_for: Option<&str>) -> StatusCode {
    let name = format!("client{n}");
    let mut request = reqwest::Client::new()
        .post(api.url("/api/auth/register/"))
        .json(&json!({
            "username": name, "email": format!("{name}@example.com"),
            "password": crate::helpers::PASSWORD, "password_confirm": crate::helpers::PASSWORD,
        }));
    if let Some(client) = forwarded_for {
        request = request.header("X-Forwarded-For", client);
    }
    request.send().await.unwrap().status()
}

/// Behind the README's nginx, with `NARUTALK_TRUSTED_PROXIES` naming it, the per-IP limit
/// counts the client that nginx's `X-Forwarded-For` names, on both servers together: with
/// the limit at 1 a minute, a client's second registration is throttled although nginx sent
/// it to the other server, and another client (or nginx's own peer) is not. Were the header
/// not passed on, or not believed, all of them would be one client. (A limit of 1 refills
/// after a whole minute: no slowness of the machine lets the second attempt through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_readmes_nginx_the_limits_count_the_forwarded_client_across_both_servers() {
    let Some(BehindNginx { a, b, proxy, api }) = BehindNginx::start(
        "behind_the_readmes_nginx_the_limits_count_the_forwarded_client_across_both_servers",
        &[("NARUTALK_AUTH_THROTTLE_PER_MINUTE", "1")],
    )
    .await
    else {
        return;
    };

    let first_client = [
        register_as(&api, 0, Some("203.0.113.7")).await,
        register_as(&api, 1, Some("203.0.113.7")).await,
    ];
    let second_client = register_as(&api, 2, Some("203.0.113.8")).await;
    let the_proxys_peer = register_as(&api, 3, None).await;

    assert_eq!(
        first_client,
        [StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS],
        "{}\n{}\n{}",
        proxy.error_log(),
        a.log(),
        b.log()
    );
    assert_eq!(second_client, StatusCode::CREATED);
    assert_eq!(the_proxys_peer, StatusCode::CREATED);
    // The first client's two attempts went to the two servers.
    let registrations = upstreams_of(&proxy, 4, |method, path| {
        method == "POST" && path == "/api/auth/register/"
    })
    .await;
    let both: BTreeSet<String> = [a.addr, b.addr].iter().map(ToString::to_string).collect();
    assert_eq!(
        registrations[..2].iter().cloned().collect::<BTreeSet<_>>(),
        both
    );
}
