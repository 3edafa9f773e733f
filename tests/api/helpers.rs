//! Starting a server for a test and talking to it.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::cluster::{Cluster, Durability};
use narutalk_core::Narutalk;
use narutalk_core::ai::Responder;
use narutalk_core::store::OpenMode;
use narutalk_server::ServeOptions;
use narutalk_server::settings::Settings;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The password every test account gets: it passes every password rule.
pub const PASSWORD: &str = "violet-harbour-42";

/// A running server on a free port, stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub core: Arc<Narutalk>,
    pub dir: tempfile::TempDir,
    /// The server's database: its SQLite file, or its PostgreSQL URL.
    pub database: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

/// A registered, logged-in user.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    /// The absolute URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request to `path` with no credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// A request to `path` with `account`'s access token.
    pub fn authed(&self, method: Method, path: &str, account: &Account) -> RequestBuilder {
        self.request(method, path).bearer_auth(&account.access)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// `POST path` with a JSON body and no credentials.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Registers `username` (email `username@example.com`) with [`PASSWORD`] and logs in.
    pub async fn account(&self, username: &str) -> Account {
        let email = format!("{username}@example.com");
        let registered = self
            .post_json(
                "/api/auth/register/",
                &json!({
                    "username": username, "email": email,
                    "password": PASSWORD, "password_confirm": PASSWORD,
                }),
            )
            .await;
        assert_eq!(registered.status(), StatusCode::CREATED);
        self.login(&email).await
    }

    /// Logs in with [`PASSWORD`].
    pub async fn login(&self, email: &str) -> Account {
        let login = self
            .post_json(
                "/api/auth/login/",
                &json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(login.status(), StatusCode::OK);
        let body: Value = login.json().await.unwrap();
        Account {
            id: body["user"]["id"].as_i64().unwrap(),
            email: body["user"]["email"].as_str().unwrap().to_owned(),
            username: body["user"]["username"].as_str().unwrap().to_owned(),
            access: body["access"].as_str().unwrap().to_owned(),
            refresh: body["refresh"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates a session titled `title` and answers its id.
    pub async fn session(&self, account: &Account, title: &str) -> String {
        self.create_session(account, &json!({ "title": title }))
            .await
    }

    /// Creates a session of `category` titled `title` and answers its id.
    pub async fn session_in(&self, account: &Account, title: &str, category: &str) -> String {
        self.create_session(account, &json!({ "title": title, "category": category }))
            .await
    }

    async fn create_session(&self, account: &Account, body: &Value) -> String {
        let created = self
            .authed(Method::POST, "/api/chat/sessions/", account)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let body: Value = created.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Posts `content` to the session and answers the created message (with `reply`).
    pub async fn say(&self, account: &Account, session: &str, content: &str) -> Value {
        let posted = self
            .authed(
                Method::POST,
                &format!("/api/chat/sessions/{session}/messages/"),
                account,
            )
            .json(&json!({ "content": content }))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), StatusCode::CREATED);
        posted.json().await.unwrap()
    }

    /// Stops the server and waits until it has finished every in-flight request.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            stopped.await.unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server with `Settings::for_tests` (throttles off) in a new temporary folder.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, ServeOptions::default()).await
}

/// Starts a server with `Settings::for_tests` changed by `configure`, and `options`. The
/// listener is bound before the server task starts, so requests can be sent at once.
pub async fn spawn_app_with(
    configure: impl FnOnce(&mut Settings),
    options: ServeOptions,
) -> TestApp {
    start(configure, options, None).await
}

/// Starts a server like [`spawn_app_with`] whose AI replies come from `responder` (a test
/// double that fails, waits or panics) instead of the configured one.
pub async fn spawn_app_with_responder(
    configure: impl FnOnce(&mut Settings),
    responder: Arc<dyn Responder>,
) -> TestApp {
    start(configure, ServeOptions::default(), Some(responder)).await
}

/// Whether this run tests the PostgreSQL backend (`NARUTALK_TEST_BACKEND=postgres`, which
/// `.ci/run` sets for its second run of the black-box suites) rather than SQLite.
pub fn on_postgres() -> bool {
    std::env::var("NARUTALK_TEST_BACKEND").is_ok_and(|backend| backend == "postgres")
}

/// True (after one printed line) on the PostgreSQL run, for a test of a fault of SQLite's
/// own: another process holding the file's write lock (the `sqlite3` shell), or a full
/// file (the writer's page cap). The SQLite run covers them.
pub fn sqlite_fault_test(test: &str) -> bool {
    if on_postgres() {
        eprintln!("{test}: a fault of SQLite's own: tested by the SQLite run");
    }
    on_postgres()
}

/// The test process's throwaway PostgreSQL cluster, once a test asked for it.
static CLUSTER: std::sync::OnceLock<Option<Cluster>> = std::sync::OnceLock::new();

/// The URL of a new, empty database on this test process's throwaway PostgreSQL cluster
/// (started by the first test that asks, stopped when the process ends); `None`, after
/// one printed line, when PostgreSQL is not installed (a failure under
/// `NARUTALK_REQUIRE_ALL=1`).
pub async fn postgres_database(test: &'static str) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        CLUSTER
            .get_or_init(|| Cluster::start(test, Durability::Fast))
            .as_ref()
            .map(Cluster::create_database)
    })
    .await
    .unwrap()
}

/// Runs `sql` as the cluster's superuser in the database `url` names (the process's
/// cluster must be started: [`postgres_database`]).
pub async fn postgres_sql(url: &str, sql: &str) -> String {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        let name = url.rsplit('/').next().unwrap().to_owned();
        let cluster = CLUSTER.get().and_then(Option::as_ref);
        cluster.expect("the cluster is started").psql(&name, &sql)
    })
    .await
    .unwrap()
}

/// Starts a server with every knob: settings, limits and (optionally) the responder. On a
/// PostgreSQL run, each server gets a database of its own unless `configure` chose one.
pub async fn start(
    configure: impl FnOnce(&mut Settings),
    options: ServeOptions,
    responder: Option<Arc<dyn Responder>>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Settings::for_tests(dir.path());
    if on_postgres() {
        config.core.database = postgres_database("the PostgreSQL run of the black-box tests")
            .await
            .expect("NARUTALK_TEST_BACKEND=postgres needs PostgreSQL")
            .into();
    }
    configure(&mut config);
    let open_config = config.core.clone();
    let database = config.core.database.clone();
    let core = tokio::task::spawn_blocking(move || {
        Narutalk::open(&open_config, OpenMode::CreateIfMissing)
    })
    .await
    .unwrap()
    .unwrap();
    let core = match responder {
        Some(responder) => core.with_responder(responder),
        None => core,
    };
    let core = Arc::new(core);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = core.clone();
    let server = tokio::spawn(async move {
        narutalk_server::serve_with(served, &config, listener, options, async {
            let _ = stopped.await;
        })
        .await;
    });
    TestApp {
        addr,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        core,
        dir,
        database,
        stop: Some(stop),
        stopped: Some(server),
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// How long a test waits for one frame before it fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A client socket of the tests.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl TestApp {
    /// `ws://addr/ws/chat/{session}/?{query}` (no `?` for an empty query).
    pub fn ws_url(&self, session: &str, query: &str) -> String {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("ws://{}/ws/chat/{session}/{query}", self.addr)
    }

    /// Opens a socket on `session` with `account`'s token in the query string.
    pub async fn socket(&self, account: &Account, session: &str) -> WsStream {
        self.socket_with(&format!("token={}", account.access), session)
            .await
    }

    /// Opens a socket on `session` with `query` (which carries the token) and expects the
    /// upgrade to succeed.
    pub async fn socket_with(&self, query: &str, session: &str) -> WsStream {
        let (stream, response) = connect_async(self.ws_url(session, query)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        stream
    }

    /// Sends `request` as a handshake that must be refused, and answers the refusal's
    /// status, headers and JSON body.
    pub async fn refused_handshake(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        match connect_async(request).await {
            Err(WsError::Http(response)) => {
                let (parts, body) = response.into_parts();
                let body = serde_json::from_slice(&body.unwrap_or_default()).unwrap();
                (parts.status, parts.headers, body)
            }
            Ok((_, response)) => panic!("the upgrade was accepted: {response:?}"),
            Err(other) => panic!("expected an HTTP refusal, got {other}"),
        }
    }
}

/// The template responder's reply to `message`.
pub fn template(message: &str) -> String {
    format!("AI 응답: {message}에 대한 의료 정보를 제공합니다.")
}

/// Every message of the session through REST, oldest first.
pub async fn stored(app: &TestApp, account: &Account, session: &str) -> Vec<Value> {
    let response = app
        .authed(
            Method::GET,
            &format!("/api/chat/sessions/{session}/"),
            account,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let detail: Value = response.json().await.unwrap();
    detail["messages"].as_array().unwrap().clone()
}

/// The `chat_message` frame the contract gives for a stored message (REST shape).
pub fn frame_of(message: &Value) -> Value {
    json!({
        "type": "chat_message",
        "message": message["content"],
        "sender": message["sender"],
        "message_type": message["message_type"],
        "metadata": message["metadata"],
        "timestamp": message["timestamp"],
        "message_id": message["id"],
    })
}

/// The next text frame as JSON, skipping pings and pongs; fails after [`FRAME_WAIT`].
pub async fn next_json(socket: &mut WsStream) -> Value {
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no frame arrived in time")
            .expect("the socket ended")
            .expect("the socket failed");
        match frame {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next `n` text frames as JSON.
pub async fn next_frames(socket: &mut WsStream, n: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(next_json(socket).await);
    }
    frames
}

/// Sends `value` as a text frame.
pub async fn send_json(socket: &mut WsStream, value: &Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Reads until the server's close frame and answers its code and reason; text frames
/// before it are skipped. Fails if the socket is not closed within `within`.
pub async fn close_code(socket: &mut WsStream, within: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the socket was not closed in time");
        match frame {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned());
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("the socket failed before its close frame: {error}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

/// Asserts that nothing but pings arrives on `socket` for `quiet`.
pub async fn assert_silent(socket: &mut WsStream, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// The body of `response` as JSON.
pub async fn body(response: Response) -> Value {
    response.json().await.unwrap()
}

/// Asserts status and JSON body exactly.
pub async fn assert_answer(response: Response, status: StatusCode, expected: Value) {
    assert_eq!(response.status(), status);
    assert_eq!(body(response).await, expected);
}
