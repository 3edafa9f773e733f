//! Writes the database cannot take (contract section 9, "writes are bounded in time" and
//! "health tells the truth about writes"): the database locked by another process (the
//! real `sqlite3` shell holding its write lock), a full database (the writer's page cap,
//! or a tmpfs filled to the last page), and the message POST whose user message is stored
//! but whose reply cannot be.
//!
//! Every refused write answers 503 with `Retry-After: 1` and the contract's body (on a
//! socket, the error frame) and is not applied; health says `read_only`/`degraded`
//! meanwhile; once the cause is gone, health recovers by itself and writes work, without
//! a restart. Latencies are printed, never asserted.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use narutalk_core::Narutalk;
use narutalk_core::ai::{AiError, AiReply, AiRequest, Responder};
use narutalk_server::ServeOptions;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::cluster::{Cluster, Durability};
use crate::helpers::{
    PASSWORD, TestApp, body, next_frames, next_json, send_json, sqlite_fault_test, start, stored,
    template,
};
use crate::system::require;

/// The contract's 503 `detail`, also the socket's error frame.
const UNAVAILABLE: &str = "Service temporarily unavailable, try again later.";

/// How long a test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(30);

/// The test's generous upper bound for refused writes to be answered while the lock is
/// held. Writes bounded at 5 s come well within it; writes queued one behind another for
/// 5 s each (up to 30 s) do not.
const ANSWERED_WITHIN: Duration = Duration::from_secs(20);

/// A server whose health tries its write probe every 200 ms (10 s by default), so that
/// recovering by itself happens within a test's patience.
async fn spawn(responder: Option<Arc<dyn Responder>>) -> TestApp {
    spawn_on(None, responder).await
}

/// [`spawn`] with the database at `database` (default: in the test's folder).
async fn spawn_on(database: Option<PathBuf>, responder: Option<Arc<dyn Responder>>) -> TestApp {
    let options = ServeOptions {
        write_probe_interval: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    start(
        move |config| {
            if let Some(database) = database {
                config.core.database = database;
            }
        },
        options,
        responder,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// PostgreSQL goes away
// ---------------------------------------------------------------------------------------

/// While the PostgreSQL server is down, reads and writes answer 503 and health says the
/// database is `unavailable`; once it is back, the same server serves again with no
/// restart (the pool drops the connections the stop closed), and the refused post left
/// no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgresql_is_down_requests_answer_503_and_the_server_recovers_when_it_is_back() {
    let test =
        "while_postgresql_is_down_requests_answer_503_and_the_server_recovers_when_it_is_back";
    let Some(cluster) =
        tokio::task::spawn_blocking(move || Cluster::start(test, Durability::Fast).map(Arc::new))
            .await
            .unwrap()
    else {
        return;
    };
    let database = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.create_database())
            .await
            .unwrap()
    };
    let app = spawn_on(Some(database.into()), None).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "outage").await;
    app.say(&kim, &session, "before").await;

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    assert_unavailable("a post", post_content(&app, &kim, &session, "during").await).await;
    let listed = app
        .authed(Method::GET, "/api/chat/sessions/", &kim)
        .send()
        .await
        .unwrap();
    assert_unavailable("the session list", listed).await;
    let health = body(app.get("/api/health/").await).await;
    assert_eq!(health["services"]["database"], "unavailable", "{health}");

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    let after = post_content(&app, &kim, &session, "after").await;
    assert_eq!(after.status(), StatusCode::CREATED);
    let contents: Vec<Value> = stored(&app, &kim, &session)
        .await
        .iter()
        .map(|message| message["content"].clone())
        .collect();
    assert_eq!(
        contents,
        [
            json!("before"),
            json!(template("before")),
            json!("after"),
            json!(template("after"))
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Locked by another process
// ---------------------------------------------------------------------------------------

/// While another process holds the write lock, every kind of write (registration, login's
/// token issue, session create and update, message post, token refresh and logout, a
/// socket's message) answers 503 within the bound, while the lock is still held; health
/// says `read_only`. Once the lock goes, health recovers by itself, the same writes
/// succeed, and none of the refused ones left a trace.
#[tokio::test]
async fn every_write_answers_503_while_another_process_holds_the_lock_and_none_is_applied() {
    let test = "every_write_answers_503_while_another_process_holds_the_lock_and_none_is_applied";
    if sqlite_fault_test(test) {
        return;
    }
    let Some(sqlite3) = require("sqlite3", "sqlite3", test) else {
        return;
    };
    // Arrange
    let app = spawn(None).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "before").await;
    let mut socket = app.socket(&kim, &session).await;
    let mut lock =
        LockHolder::hold(&sqlite3, app.core.sqlite().expect("a SQLite store").path()).await;
    let session_path = format!("/api/chat/sessions/{session}/");
    let messages_path = format!("/api/chat/sessions/{session}/messages/");
    let registration = json!({
        "username": "lee", "email": "lee@example.com",
        "password": PASSWORD, "password_confirm": PASSWORD,
    });

    // Act: several clients write at once, and a socket sends a message.
    let started = Instant::now();
    let socket_error = async {
        send_json(&mut socket, &json!({"message": "over the socket"})).await;
        let frame = next_json(&mut socket).await;
        (started.elapsed(), frame)
    };
    let answered = tokio::time::timeout(ANSWERED_WITHIN, async {
        tokio::join!(
            async {
                tokio::join!(
                    timed(
                        "register",
                        app.request(Method::POST, "/api/auth/register/")
                            .json(&registration)
                    ),
                    timed(
                        "login",
                        app.request(Method::POST, "/api/auth/login/")
                            .json(&json!({"email": kim.email, "password": PASSWORD}))
                    ),
                    timed(
                        "create session",
                        app.authed(Method::POST, "/api/chat/sessions/", &kim)
                            .json(&json!({"title": "during"}))
                    ),
                    timed(
                        "post message",
                        app.authed(Method::POST, &messages_path, &kim)
                            .json(&json!({"content": "during"}))
                    ),
                    timed(
                        "patch session",
                        app.authed(Method::PATCH, &session_path, &kim)
                            .json(&json!({"title": "renamed"}))
                    ),
                    timed(
                        "refresh",
                        app.request(Method::POST, "/api/auth/token/refresh/")
                            .json(&json!({"refresh": kim.refresh}))
                    ),
                    timed(
                        "logout",
                        app.request(Method::POST, "/api/auth/logout/")
                            .json(&json!({"refresh": kim.refresh}))
                    ),
                )
            },
            socket_error,
        )
    })
    .await;
    let lock_still_held = lock.still_holds();
    let (answers, (socket_latency, socket_frame)) =
        answered.expect("the writes were not answered while the lock was held");
    let (register, login, create, post, patch, refresh, logout) = answers;
    let health = health_of(&app).await;

    // Assert: every write refused while the lock was still held, health read-only.
    assert!(
        lock_still_held,
        "the lock was let go before the answers came"
    );
    println!("while locked, socket message answered in {socket_latency:?}");
    for (what, latency, response) in [register, login, create, post, patch, refresh, logout] {
        println!("while locked, {what} answered in {latency:?}");
        assert_unavailable(what, response).await;
    }
    assert_eq!(socket_frame, json!({"type": "error", "error": UNAVAILABLE}));
    assert_eq!(
        health,
        (StatusCode::OK, health_body("degraded", "read_only"))
    );

    // Act: the other process lets go.
    lock.release().await;

    // Assert: health recovers without any other write, then the same writes succeed.
    let recovered = until_health_says(&app, "connected").await;
    assert_eq!(
        recovered,
        (StatusCode::OK, health_body("healthy", "connected"))
    );
    assert_eq!(stored(&app, &kim, &session).await, Vec::<Value>::new());
    let sessions = body(
        app.authed(Method::GET, "/api/chat/sessions/", &kim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(sessions["count"], 1);
    assert_eq!(sessions["results"][0]["title"], "before");
    let refreshed = app
        .post_json("/api/auth/token/refresh/", &json!({"refresh": kim.refresh}))
        .await;
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "the refused refresh rotated nothing"
    );
    let registered = app.post_json("/api/auth/register/", &registration).await;
    assert_eq!(
        registered.status(),
        StatusCode::CREATED,
        "the refused registration left no user"
    );
    let lee = app.login("lee@example.com").await;
    assert_eq!(lee.username, "lee");
    let said = app.say(&kim, &session, "after").await;
    assert_eq!(said["reply"]["content"], template("after"));
    send_json(&mut socket, &json!({"message": "over the socket again"})).await;
    let frames: Vec<Value> = next_frames(&mut socket, 4)
        .await
        .into_iter()
        .map(|frame| frame["message"].clone())
        .collect();
    assert_eq!(
        frames,
        [
            json!("after"),
            json!(template("after")),
            json!("over the socket again"),
            json!(template("over the socket again")),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Full
// ---------------------------------------------------------------------------------------

/// With the writer's page cap at the file's size (`limit_writer_pages`, the core's hook
/// for tests), a message that needs new pages answers 503 and is not stored, reads go on,
/// health says `read_only`; once the cap is lifted, health recovers by itself and the same
/// message is stored.
#[tokio::test]
async fn a_write_that_needs_room_in_a_full_database_answers_503_until_room_comes_back() {
    if sqlite_fault_test(
        "a_write_that_needs_room_in_a_full_database_answers_503_until_room_comes_back",
    ) {
        return;
    }
    // Arrange
    let app = spawn(None).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "full").await;
    app.say(&kim, &session, "small").await;
    let cap = on_core(&app, |core| {
        core.sqlite().expect("a SQLite store").limit_writer_pages(1)
    })
    .await
    .unwrap();
    println!("the writer may not grow the file past {cap:?} pages");
    // 30,000 bytes of UTF-8: several new pages.
    let big = "가".repeat(10_000);

    // Act
    let refused = post_content(&app, &kim, &session, &big).await;

    // Assert
    assert_unavailable("a big message", refused).await;
    let contents: Vec<Value> = stored(&app, &kim, &session)
        .await
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("small"), json!(template("small"))]);
    assert_eq!(
        health_of(&app).await,
        (StatusCode::OK, health_body("degraded", "read_only"))
    );

    // Act: room again.
    on_core(&app, |core| {
        core.sqlite()
            .expect("a SQLite store")
            .limit_writer_pages(u32::MAX)
    })
    .await
    .unwrap();

    // Assert
    let recovered = until_health_says(&app, "connected").await;
    assert_eq!(
        recovered,
        (StatusCode::OK, health_body("healthy", "connected"))
    );
    let accepted = post_content(&app, &kim, &session, &big).await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    assert_eq!(stored(&app, &kim, &session).await.len(), 4);
}

/// The same on a real full disk: the database on a small tmpfs this test mounts, filled
/// to the last page by another file. Needs root and the right to mount; otherwise it
/// skips with one line (the page-cap test above covers the behaviour).
#[tokio::test]
async fn writes_answer_503_while_the_disk_is_full_and_work_again_once_space_is_back() {
    let test = "writes_answer_503_while_the_disk_is_full_and_work_again_once_space_is_back";
    let (Some(mount), Some(umount)) = (
        require("mount", "mount", test),
        require("umount", "mount", test),
    ) else {
        return;
    };
    let Some(disk) = Tmpfs::mount(&mount, &umount) else {
        eprintln!("{test}: skipped: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    };
    // Arrange
    let app = spawn_on(Some(disk.path().join("db.sqlite3")), None).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "full disk").await;
    app.say(&kim, &session, "small").await;
    let filler = disk.fill();

    // Act
    let refused = post_content(&app, &kim, &session, "no room").await;

    // Assert
    assert_unavailable("a message on a full disk", refused).await;
    assert_eq!(stored(&app, &kim, &session).await.len(), 2);
    assert_eq!(
        health_of(&app).await,
        (StatusCode::OK, health_body("degraded", "read_only"))
    );

    // Act: space again.
    std::fs::remove_file(filler).unwrap();

    // Assert
    let recovered = until_health_says(&app, "connected").await;
    assert_eq!(
        recovered,
        (StatusCode::OK, health_body("healthy", "connected"))
    );
    let said = app.say(&kim, &session, "room again").await;
    assert_eq!(said["reply"]["content"], template("room again"));
    assert_eq!(stored(&app, &kim, &session).await.len(), 4);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// The message POST exception
// ---------------------------------------------------------------------------------------

/// A post whose user message is stored but whose reply cannot be (another process takes
/// the lock while the AI works) answers 503; the user message stays; the reply is kept by
/// its turn and stored once the lock goes, before the reply of a later message; a repeat
/// with the same `Idempotency-Key` answers 503 while the reply is not stored, and the
/// first result (201, the same ids) once it is.
#[tokio::test]
async fn a_reply_that_cannot_be_stored_answers_503_and_is_stored_in_order_once_writes_work() {
    let test = "a_reply_that_cannot_be_stored_answers_503_and_is_stored_in_order_once_writes_work";
    if sqlite_fault_test(test) {
        return;
    }
    let Some(sqlite3) = require("sqlite3", "sqlite3", test) else {
        return;
    };
    // Arrange: the AI holds its first reply until the lock is taken.
    let (responder, started, go) = GateResponder::new();
    let app = spawn(Some(Arc::new(responder))).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "pending").await;
    let path = format!("/api/chat/sessions/{session}/messages/");
    let post_first = || {
        app.authed(Method::POST, &path, &kim)
            .header("idempotency-key", "first-try")
            .json(&json!({"content": "first"}))
            .send()
    };
    let first = tokio::spawn(post_first());
    tokio::time::timeout(WAIT, started)
        .await
        .expect("the AI was never asked")
        .unwrap();
    let mut lock =
        LockHolder::hold(&sqlite3, app.core.sqlite().expect("a SQLite store").path()).await;

    // Act
    let asked = Instant::now();
    go.send(()).unwrap();
    let first = tokio::time::timeout(ANSWERED_WITHIN, first)
        .await
        .expect("the post was not answered while the lock was held")
        .unwrap()
        .unwrap();
    let first_latency = asked.elapsed();
    let lock_still_held = lock.still_holds();
    let (_, repeat_latency, repeat) = timed(
        "repeat",
        app.authed(Method::POST, &path, &kim)
            .header("idempotency-key", "first-try")
            .json(&json!({"content": "first"})),
    )
    .await;
    let health = health_of(&app).await;

    // Assert: 503 while the lock was held; the user message is stored, its reply not.
    assert!(
        lock_still_held,
        "the lock was let go before the answer came"
    );
    println!("the post whose reply was refused answered in {first_latency:?}");
    println!("its repeat while locked answered in {repeat_latency:?}");
    assert_unavailable("the post", first).await;
    assert_unavailable("its repeat", repeat).await;
    assert_eq!(
        health,
        (StatusCode::OK, health_body("degraded", "read_only"))
    );
    let messages = stored(&app, &kim, &session).await;
    let contents: Vec<&Value> = messages.iter().map(|m| &m["content"]).collect();
    assert_eq!(contents, [&json!("first")]);

    // Act: the lock goes; a later message follows at once.
    lock.release().await;
    let second = app.say(&kim, &session, "second").await;

    // Assert: the kept reply came first, and the repeat answers the first result.
    assert_eq!(second["reply"]["content"], "AI: second");
    let messages = stored(&app, &kim, &session).await;
    let replies: Vec<(&Value, &Value)> = messages
        .iter()
        .filter(|m| m["sender"] == "ai")
        .map(|m| (&m["content"], &m["sender"]))
        .collect();
    assert_eq!(
        replies,
        [
            (&json!("AI: first"), &json!("ai")),
            (&json!("AI: second"), &json!("ai"))
        ]
    );
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0]["content"], "first");
    let first_reply = messages
        .iter()
        .find(|m| m["content"] == "AI: first")
        .unwrap();
    let again = post_first().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let again = body(again).await;
    assert_eq!(again["id"], messages[0]["id"]);
    assert_eq!(again["reply"], *first_reply);
    assert_eq!(
        stored(&app, &kim, &session).await.len(),
        4,
        "the repeat stored nothing"
    );
}

/// At shutdown, a turn still trying to store a refused reply gives up (it logs which), so
/// the stop does not wait for the database; the user message stays without its reply.
#[tokio::test]
async fn a_stop_does_not_wait_for_a_reply_the_database_refuses() {
    let test = "a_stop_does_not_wait_for_a_reply_the_database_refuses";
    if sqlite_fault_test(test) {
        return;
    }
    let Some(sqlite3) = require("sqlite3", "sqlite3", test) else {
        return;
    };
    // Arrange: a reply refused while another process holds the lock, and kept.
    let (responder, started, go) = GateResponder::new();
    let app = spawn(Some(Arc::new(responder))).await;
    let kim = app.account("kim").await;
    let session = app.session(&kim, "stopping").await;
    let path = format!("/api/chat/sessions/{session}/messages/");
    let first = tokio::spawn(
        app.authed(Method::POST, &path, &kim)
            .json(&json!({"content": "first"}))
            .send(),
    );
    tokio::time::timeout(WAIT, started)
        .await
        .expect("the AI was never asked")
        .unwrap();
    let mut lock =
        LockHolder::hold(&sqlite3, app.core.sqlite().expect("a SQLite store").path()).await;
    go.send(()).unwrap();
    assert_unavailable("the post", first.await.unwrap().unwrap()).await;
    let core = app.core.clone();

    // Act: stop while the lock is still held (the drain would wait 60 s for the turn).
    let stopping = Instant::now();
    tokio::time::timeout(WAIT, app.stop())
        .await
        .expect("the stop waited for the refused reply");
    println!("the stop took {:?}", stopping.elapsed());

    // Assert
    assert!(lock.still_holds());
    lock.release().await;
    let kim_id = narutalk_core::accounts::UserId(kim.id);
    let id = session.parse().unwrap();
    let contents: Vec<String> =
        tokio::task::spawn_blocking(move || core.chat().session(kim_id, id).unwrap().messages)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
    assert_eq!(contents, ["first"]);
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Sends `request`; answers its name, how long it took and the response.
async fn timed(name: &'static str, request: RequestBuilder) -> (&'static str, Duration, Response) {
    let started = Instant::now();
    let response = request.send().await.unwrap();
    (name, started.elapsed(), response)
}

/// Asserts the contract's 503: status, `Retry-After: 1` and the exact body.
async fn assert_unavailable(what: &str, response: Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(response.headers()["retry-after"], "1", "{what}");
    assert_eq!(
        body(response).await,
        json!({"detail": UNAVAILABLE}),
        "{what}"
    );
}

/// Posts a message with `content`.
async fn post_content(
    app: &TestApp,
    account: &crate::helpers::Account,
    session: &str,
    content: &str,
) -> Response {
    app.authed(
        Method::POST,
        &format!("/api/chat/sessions/{session}/messages/"),
        account,
    )
    .json(&json!({ "content": content }))
    .send()
    .await
    .unwrap()
}

/// Health's status and body.
async fn health_of(app: &TestApp) -> (StatusCode, Value) {
    let response = app.get("/api/health/").await;
    (response.status(), body(response).await)
}

/// The health body of a server with the template AI and no search service.
fn health_body(status: &str, database: &str) -> Value {
    json!({
        "status": status,
        "services": {
            "server": "running",
            "database": database,
            "ai_service": "available",
            "search_service": "not_configured",
        }
    })
}

/// Asks health until it reports the database `database`; fails after [`WAIT`].
async fn until_health_says(app: &TestApp, database: &str) -> (StatusCode, Value) {
    let started = Instant::now();
    loop {
        let health = health_of(app).await;
        if health.1["services"]["database"] == database {
            println!("health said {database} after {:?}", started.elapsed());
            return health;
        }
        assert!(
            started.elapsed() < WAIT,
            "health never said {database}: {health:?}"
        );
        // Health is asked, not awaited: it changes only when its probe has run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `operation` on the server's core on a blocking thread.
async fn on_core<T: Send + 'static>(
    app: &TestApp,
    operation: impl FnOnce(&Narutalk) -> T + Send + 'static,
) -> T {
    let core = app.core.clone();
    tokio::task::spawn_blocking(move || operation(&core))
        .await
        .unwrap()
}

/// The `sqlite3` shell holding the write lock on a database file: `BEGIN IMMEDIATE` and a
/// write, its standard input kept open, until [`LockHolder::release`] rolls back. Killed
/// (by its own handle) if the test ends first.
pub(crate) struct LockHolder {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl LockHolder {
    /// Starts the shell and returns once it holds the lock.
    pub(crate) async fn hold(sqlite3: &Path, database: &Path) -> LockHolder {
        let mut child = Command::new(sqlite3)
            .arg("-batch")
            .arg(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The shell waits up to 20 s for a write of the server's in flight.
        stdin
            .write_all(
                b".timeout 20000
BEGIN IMMEDIATE;
CREATE TABLE lock_holder (x);
SELECT 'locked';
",
            )
            .unwrap();
        stdin.flush().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reading = tokio::task::spawn_blocking(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            (line, stdout)
        });
        let (line, stdout) = tokio::time::timeout(WAIT, reading)
            .await
            .expect("sqlite3 never took the lock")
            .unwrap();
        assert_eq!(line.trim(), "locked");
        LockHolder {
            child: Some(child),
            stdin: Some(stdin),
            _stdout: stdout,
        }
    }

    /// Whether the shell is still running, and so still holds the lock.
    pub(crate) fn still_holds(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Rolls back (its write never lands) and waits for the shell to exit.
    pub(crate) async fn release(mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin
            .write_all(
                b"ROLLBACK;
.quit
",
            )
            .unwrap();
        drop(stdin);
        let mut child = self.child.take().unwrap();
        let status = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .expect("sqlite3 did not exit")
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small tmpfs mounted on a temporary folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
    umount: PathBuf,
}

impl Tmpfs {
    /// Mounts 4 MiB of tmpfs; `None` when this process may not.
    fn mount(mount: &Path, umount: &Path) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new(mount)
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "narutalk-test"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Tmpfs {
            dir,
            umount: umount.to_owned(),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros into a file until the disk is full; answers the file.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let page = [0u8; 4096];
        loop {
            match file.write(&page) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(error.raw_os_error(), Some(28), "ENOSPC expected: {error}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a file still open elsewhere must not keep the mount alive.
        let _ = Command::new(&self.umount)
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Answers `AI: {message}`. Its first call tells the test it has started (the user
/// message is stored by then) and waits until the test lets it go.
struct GateResponder {
    first: Mutex<Option<(oneshot::Sender<()>, mpsc::Receiver<()>)>>,
}

impl GateResponder {
    /// The responder, the signal that its first call started, and the sender that lets
    /// that call go on.
    fn new() -> (GateResponder, oneshot::Receiver<()>, mpsc::Sender<()>) {
        let (started, started_signal) = oneshot::channel();
        let (go, gate) = mpsc::channel();
        (
            GateResponder {
                first: Mutex::new(Some((started, gate))),
            },
            started_signal,
            go,
        )
    }
}

impl Responder for GateResponder {
    fn name(&self) -> &str {
        "gate"
    }

    fn respond(&self, request: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
        let first = self.first.lock().unwrap().take();
        if let Some((started, gate)) = first {
            let _ = started.send(());
            let _ = gate.recv_timeout(WAIT);
        }
        Ok(AiReply {
            content: format!("AI: {}", request.message),
            metadata: Default::default(),
        })
    }
}
