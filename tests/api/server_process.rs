//! The real server as a child process of the suite, for what an in-process server cannot
//! show: a `kill -9` in the middle of a turn, several processes starting at once.
//!
//! The suite re-executes its own binary to run the test [`serve_as_child_process`] alone,
//! with [`CHILD_VARIABLE`] set. That test then starts Narutalk through
//! `narutalk-server`'s own start (`narutalk_server::Launch`, as the reliability suite's
//! child does), so the server tested is the one this binary was built from: settings from
//! the `NARUTALK_*` variables the suite sets (after removing any it inherited), no
//! settings file, the start line `Narutalk is listening on http://ADDR/ ...` on standard
//! output. It stops gracefully when its standard input closes (so it never outlives the
//! suite); the suite kills it (by its pid) when a [`ServerProcess`] is dropped. Without
//! the variable, as in every ordinary run, the test does nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::helpers::{Account, PASSWORD, WsStream};

/// The variable that makes [`serve_as_child_process`] serve.
const CHILD_VARIABLE: &str = "NARUTALK_API_SUITE_SERVER_CHILD";

/// The child's test, by its full name.
const CHILD_TEST: &str = "server_process::serve_as_child_process";

/// Generous bound for a server to print its start line (migrations included, several
/// processes starting together on a loaded machine); only a broken start reaches it.
const START_PATIENCE: Duration = Duration::from_secs(120);

/// Not a test of its own: the suite's binary as a server process (see the module's doc).
#[test]
fn serve_as_child_process() {
    if std::env::var_os(CHILD_VARIABLE).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let served: anyhow::Result<()> = runtime.block_on(async {
        let (config, settings_file) = narutalk_server::settings::Settings::load(
            &narutalk_server::settings::Overrides::default(),
        )?;
        narutalk_server::Launch::new(config, settings_file)
            .until(|_| stdin_closed())
            .run()
            .await?;
        Ok(())
    });
    if let Err(error) = served {
        eprintln!("narutalk-server: {error:#}");
        std::process::exit(1);
    }
}

/// Completes when standard input closes or fails.
async fn stdin_closed() {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A running server process, killed (SIGKILL, by its pid) when dropped.
pub struct ServerProcess {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its standard error (its log).
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts a server with `vars` on top of the suite's defaults (a free port on
    /// 127.0.0.1, throttles off, the template AI, no search service, log level `warn`) in
    /// a new temporary folder, and waits until it listens.
    pub async fn start(vars: &[(&str, &str)]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads", "1"]);
        // Only these settings: none of the developer's own NARUTALK_* variables.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NARUTALK_") {
                command.env_remove(name);
            }
        }
        command
            .env(CHILD_VARIABLE, "1")
            .env("NARUTALK_CONFIG", "")
            .env("NARUTALK_BIND", "127.0.0.1:0")
            .env("NARUTALK_AUTH_THROTTLE_PER_MINUTE", "0")
            .env("NARUTALK_MESSAGE_THROTTLE_PER_MINUTE", "0")
            .env("NARUTALK_AI_BACKEND", "template")
            .env("NARUTALK_SEARCH_URL", "")
            .env("NARUTALK_LOG", "warn")
            .envs(vars.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // The test harness prints its own words first (`test NAME ... ` may begin the start
        // line's line); the start line names the address.
        let addr = tokio::time::timeout(START_PATIENCE, async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.unwrap() == 0 {
                    return None;
                }
                if let Some(addr) = listening_address(&line) {
                    return Some(addr);
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server did not listen in time: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "the server exited before listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        // The rest of its output is read to the end, so that it never blocks on the pipe.
        tokio::spawn(async move {
            let mut rest = Vec::new();
            while stdout
                .read_until(b'\n', &mut rest)
                .await
                .is_ok_and(|n| n > 0)
            {
                rest.clear();
            }
        });
        ServerProcess {
            child,
            _stdin: stdin,
            addr,
            log,
            _dir: dir,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9` (SIGKILL to its pid), and waits until the process is gone.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// The address in the start line `Narutalk is listening on http://ADDR/ (...)`.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("Narutalk is listening on ")?;
    rest.split_whitespace()
        .next()?
        .strip_prefix("http://")?
        .strip_suffix('/')?
        .parse()
        .ok()
}

/// A client of a server (or of a proxy in front of servers) at an address, for the tests
/// of server processes: the calls of [`crate::helpers::TestApp`] they need.
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of `http://{addr}`.
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to `path` with `account`'s access token.
    pub fn authed(&self, method: Method, path: &str, account: &Account) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&account.access)
    }

    /// `GET path` with no credentials: its status.
    pub async fn status(&self, path: &str) -> StatusCode {
        self.http.get(self.url(path)).send().await.unwrap().status()
    }

    /// Registers `username` (email `username@example.com`) with [`PASSWORD`].
    pub async fn register(&self, username: &str) {
        let registered = self
            .http
            .post(self.url("/api/auth/register/"))
            .json(&json!({
                "username": username, "email": format!("{username}@example.com"),
                "password": PASSWORD, "password_confirm": PASSWORD,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), StatusCode::CREATED);
    }

    /// Logs `username` in with [`PASSWORD`].
    pub async fn login(&self, username: &str) -> Account {
        let login = self
            .http
            .post(self.url("/api/auth/login/"))
            .json(&json!({ "email": format!("{username}@example.com"), "password": PASSWORD }))
            .send()
            .await
            .unwrap();
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

    /// Registers `username` and logs in.
    pub async fn account(&self, username: &str) -> Account {
        self.register(username).await;
        self.login(username).await
    }

    /// Creates a session titled `title` and answers its id.
    pub async fn session(&self, account: &Account, title: &str) -> String {
        let created = self
            .authed(Method::POST, "/api/chat/sessions/", account)
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let body: Value = created.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Posts `content` to the session: the response.
    pub async fn post(&self, account: &Account, session: &str, content: &str) -> Response {
        self.authed(
            Method::POST,
            &format!("/api/chat/sessions/{session}/messages/"),
            account,
        )
        .json(&json!({ "content": content }))
        .send()
        .await
        .unwrap()
    }

    /// Every message of the session through REST, oldest first.
    pub async fn stored(&self, account: &Account, session: &str) -> Vec<Value> {
        let response = self
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

    /// Opens a socket on `session` with `account`'s token in the query string.
    pub async fn socket(&self, account: &Account, session: &str) -> WsStream {
        let url = format!(
            "{}/ws/chat/{session}/?token={}",
            self.base.replacen("http://", "ws://", 1),
            account.access
        );
        let (stream, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        stream
    }
}
