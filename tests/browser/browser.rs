//! Chromium under chromedriver, through the `fantoccini` WebDriver client, plus the two
//! chromedriver extensions the tests need: DevTools protocol commands
//! (`goog/cdp/execute`) and the browser's logs (`se/log`: the network events of the
//! DevTools protocol, and the console).
//!
//! One chromedriver serves every browser open at once; it is started by the first and
//! shut down (by its process id) when the last is dropped. A browser's session is deleted
//! when its [`Browser`] is dropped, which quits that Chromium, also when the test panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand, WindowHandle};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::system::require;

/// How long a test waits for something the page must do (a view shown, a message
/// received, a reconnection) before it fails. Generous: only a broken page reaches it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// The desktop size every browser window has (the screenshot's size too).
pub const WINDOW: (u32, u32) = (1280, 800);

/// The programs a browser test needs, or `None` after printing why the test skips.
fn programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = require("chromium", "chromium", test)?;
    let chromedriver = require("chromedriver", "chromium-driver", test)?;
    Some((chromium, chromedriver))
}

// ---------------------------------------------------------------------------------------
// chromedriver
// ---------------------------------------------------------------------------------------

/// A chromedriver process on a loopback port.
struct Driver {
    port: u16,
    child: Child,
}

/// The chromedriver of the browsers open now, if any.
static DRIVER: Mutex<Weak<Driver>> = Mutex::new(Weak::new());

/// The running chromedriver, started if none is. Blocking: call off the async threads.
fn shared_driver(program: &Path) -> Arc<Driver> {
    let mut slot = DRIVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(driver) = slot.upgrade() {
        return driver;
    }
    let driver = Arc::new(Driver::start(program));
    *slot = Arc::downgrade(&driver);
    driver
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it says it is ready. A port
    /// taken between choosing and binding it makes chromedriver exit; another is tried.
    fn start(program: &Path) -> Driver {
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(program)
                .arg(format!("--port={port}"))
                .arg("--log-level=WARNING")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|error| panic!("chromedriver does not start: {error}"));
            let mut driver = Driver { port, child };
            if driver.wait_until_ready() {
                return driver;
            }
            // Dropping it stops it, if it still runs.
        }
        panic!("chromedriver did not get ready on any of three ports");
    }

    /// Polls `GET /status` until chromedriver is ready (true) or has exited (false).
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if blocking_request(self.port, "GET", "/status")
                .is_some_and(|answer| answer.contains("\"ready\":true"))
            {
                return true;
            }
            std::thread::sleep(POLL);
        }
        panic!("chromedriver did not answer /status within {PATIENCE:?}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Driver {
    /// Asks chromedriver to quit (it closes any browser left), then makes sure it did:
    /// after 10 s it is killed. Only this process, by its id.
    fn drop(&mut self) {
        let _ = blocking_request(self.port, "GET", "/shutdown");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request without a body to chromedriver, answered as its body text, or
/// `None` when it cannot be made. Blocking and runtime-free, so that it works in `Drop`,
/// also while a test unwinds. The answer is read by its `Content-Length`: chromedriver
/// says `Connection: close` but keeps the connection open.
fn blocking_request(port: u16, method: &str, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

// ---------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------

/// One headless Chromium with its own profile, driven through WebDriver.
pub struct Browser {
    client: Client,
    session: String,
    driver: Arc<Driver>,
    /// The DevTools network events read so far (`Network.*`, each `{method, params}`).
    network: Mutex<Vec<Value>>,
    /// Removed when the browser is dropped, after its session (and Chromium) ended.
    _profile: tempfile::TempDir,
}

/// A chromedriver command that fantoccini does not have: `POST session/{id}/{path}`.
#[derive(Debug)]
struct Extension {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Browser {
    /// Starts a browser for `test`, or answers `None` after printing why the test skips
    /// (Chromium or chromedriver is not installed).
    pub async fn start(test: &str) -> Option<Browser> {
        let (chromium, chromedriver) = programs(test)?;
        let driver = tokio::task::spawn_blocking(move || shared_driver(&chromedriver))
            .await
            .unwrap();
        let url = driver.url();
        let profile = tempfile::tempdir().unwrap();
        let (width, height) = WINDOW;
        let args = [
            "--headless=new".to_owned(),
            // Chromium's sandbox cannot run as root, which CI is.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            // Every window of a test is in use at once: none may have its timers slowed
            // for being in the background.
            "--disable-background-timer-throttling".to_owned(),
            "--disable-backgrounding-occluded-windows".to_owned(),
            "--disable-renderer-backgrounding".to_owned(),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let capabilities: Capabilities = capabilities;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|error| panic!("Chromium did not start: {error}"));
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("a WebDriver session id");
        let browser = Browser {
            client,
            session,
            driver,
            network: Mutex::new(Vec::new()),
            _profile: profile,
        };
        // Whatever the browser did by itself at start (a distribution's home page) is no
        // page's request: the network log starts empty.
        browser.goto("about:blank").await;
        browser.read_log("performance").await;
        Some(browser)
    }

    /// Opens `url` in the current window and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// Reloads the current window's page.
    pub async fn reload(&self) {
        self.client.refresh().await.unwrap();
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the current window's
    /// page and answers what it returns (a promise is awaited).
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Runs `script` until it returns something other than `null`, `false`, `0` or `""`,
    /// and answers that; fails the test after [`PATIENCE`] saying `what` was awaited,
    /// with the last answer, the page's notice and its console.
    pub async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answer = self.js(script, args.clone()).await;
            if truthy(&answer) {
                return answer;
            }
            if tokio::time::Instant::now() >= deadline {
                let notice = self
                    .js(
                        "const n = document.querySelector('#notice'); \
                         return n && [n.dataset.kind, n.textContent];",
                        vec![],
                    )
                    .await;
                let console = self.read_log("browser").await;
                let traffic = summary(&self.network_events().await);
                panic!(
                    "waited {PATIENCE:?} for {what}; the last answer was {answer}; \
                     #notice: {notice}; the page's console: {console:#?}; \
                     the last answers the browser received: {traffic:#?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The element `css` matches, once it exists and is displayed.
    pub async fn element(&self, css: &str) -> Element {
        self.wait_for(
            &format!("{css} to be displayed"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .await;
        self.client.find(Locator::Css(css)).await.unwrap()
    }

    /// Clicks the element `css` matches, as a person would, once it is displayed. A click
    /// that fails because the page replaced the element meanwhile (a list drawn again) is
    /// tried again on the new one, until [`PATIENCE`] runs out.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let error = match self.element(css).await.click().await {
                Ok(()) => return,
                Err(error) => error,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "cannot click {css}: {error}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Types `keys` into the element `css` matches, as a person would (WebDriver key
    /// codes such as [`ENTER`] included).
    pub async fn type_into(&self, css: &str, keys: &str) {
        self.element(css)
            .await
            .send_keys(keys)
            .await
            .unwrap_or_else(|error| panic!("cannot type into {css}: {error}"));
    }

    /// Chooses the option of value `value` in the `select` element `css` matches.
    pub async fn choose(&self, css: &str, value: &str) {
        self.element(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|error| panic!("cannot choose {value:?} in {css}: {error}"));
    }

    /// Runs the DevTools protocol command `cmd` in the current window and answers its
    /// result.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.extension("goog/cdp/execute", json!({"cmd": cmd, "params": params}))
            .await
    }

    /// Every DevTools network event of every window since the browser started (after its
    /// own start-up), oldest first, each `{"method": ..., "params": ...}`.
    pub async fn network_events(&self) -> Vec<Value> {
        let new = self.read_log("performance").await;
        let mut events = self.network.lock().unwrap();
        events.extend(
            new.iter()
                .filter_map(|entry| entry["message"].as_str())
                .filter_map(|message| serde_json::from_str::<Value>(message).ok())
                .map(|message| message["message"].clone())
                .filter(|event| {
                    event["method"]
                        .as_str()
                        .is_some_and(|method| method.starts_with("Network."))
                }),
        );
        events.clone()
    }

    /// The entries of the log `kind` (`performance`, `browser`) since it was last read.
    async fn read_log(&self, kind: &str) -> Vec<Value> {
        let entries = self.extension("se/log", json!({"type": kind})).await;
        entries.as_array().cloned().unwrap_or_default()
    }

    /// Sends chromedriver's command `path` with `body` for this session.
    async fn extension(&self, path: &'static str, body: Value) -> Value {
        let what = body.to_string();
        self.client
            .issue_cmd(Extension { path, body })
            .await
            .unwrap_or_else(|error| panic!("chromedriver's {path} {what} failed: {error}"))
    }

    /// A PNG of the current window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }

    /// The current window.
    pub async fn window(&self) -> WindowHandle {
        self.client.window().await.unwrap()
    }

    /// Opens a new window (of this browser, so with the same storage) and answers it; the
    /// current window stays current.
    pub async fn new_window(&self) -> WindowHandle {
        let created = self.client.new_window(false).await.unwrap();
        created.handle
    }

    /// Makes `window` the current one.
    pub async fn switch_to(&self, window: &WindowHandle) {
        self.client.switch_to_window(window.clone()).await.unwrap();
    }
}

impl Drop for Browser {
    /// Deletes the WebDriver session, which quits this Chromium; blocking, so that it also
    /// happens while a failed test unwinds.
    fn drop(&mut self) {
        let _ = blocking_request(
            self.driver.port,
            "DELETE",
            &format!("/session/{}", self.session),
        );
    }
}

/// The last 30 HTTP answers and socket closes among `events`, one line each, to show
/// what the page went through when a wait fails.
fn summary(events: &[Value]) -> Vec<String> {
    let lines: Vec<String> = events
        .iter()
        .filter_map(|event| {
            let params = &event["params"];
            match event["method"].as_str()? {
                "Network.responseReceived" => Some(format!(
                    "{} {}",
                    params["response"]["status"],
                    params["response"]["url"].as_str().unwrap_or_default()
                )),
                "Network.webSocketHandshakeResponseReceived" => {
                    Some(format!("{} socket", params["response"]["status"]))
                }
                "Network.webSocketClosed" => Some("socket closed".to_owned()),
                _ => None,
            }
        })
        .collect();
    lines[lines.len().saturating_sub(30)..].to_vec()
}

/// What JavaScript would call truthy, for a JSON answer.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The WebDriver key code of Enter, for [`Browser::type_into`].
pub const ENTER: &str = "\u{E007}";

/// The WebDriver key code of Shift (held until [`RELEASE`]).
pub const SHIFT: &str = "\u{E008}";

/// The WebDriver code that releases held modifier keys.
pub const RELEASE: &str = "\u{E000}";
