//! Several server processes on one PostgreSQL database (contract section 10), for what
//! servers in the test's own process cannot show: a server killed with `kill -9` in the
//! middle of a turn, and processes starting together on an empty database. The servers
//! are the suite's binary re-executed (`server_process`); they need PostgreSQL whatever
//! `NARUTALK_TEST_BACKEND` says, and skip without it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fake_ai::{Answer, FakeService, Gate, Received, Step};
use crate::helpers::{WsStream, frame_of, postgres_database, postgres_sql};
use crate::server_process::{Api, ServerProcess};

/// The signing key every server shares.
const SHARED_SECRET: &str = "several-processes-share-this-signing-key-0123456789abcdef";

/// The AI timeout of the servers, in seconds: a turn's lease is this plus 30 s. Short, so
/// that the test waits little for the lease of a killed server to expire; long enough that
/// the server is killed before its own call times out (which would store a failure): the
/// kill follows the fake service seeing the call by milliseconds of work, and 10 s leaves
/// room for a machine busy with other tests.
const AI_TIMEOUT_SECONDS: &str = "10";

/// Generous bound for what must happen: the killed server's lease expiring (the AI
/// timeout plus 30 s), the other server noticing (it looks every 5 s) and answering.
const TAKEOVER_PATIENCE: Duration = Duration::from_secs(180);

/// The settings every server of `url` gets.
fn shared(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NARUTALK_DATABASE", url.to_owned()),
        ("NARUTALK_SECRET_KEY", SHARED_SECRET.to_owned()),
    ]
}

/// Starts a server with `vars`.
async fn server(vars: &[(&'static str, String)]) -> ServerProcess {
    let vars: Vec<(&str, &str)> = vars
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    ServerProcess::start(&vars).await
}

/// The next `chat_message` frame on `socket` (other frames are skipped), waiting until
/// `deadline` at most.
async fn next_chat_message(socket: &mut WsStream, deadline: tokio::time::Instant) -> Value {
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no chat_message arrived in time")
            .expect("the socket ended")
            .expect("the socket failed");
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            if frame["type"] == "chat_message" {
                return frame;
            }
        }
    }
}

/// Waits (off the async threads) until the fake has received `n` requests.
async fn requests_received(service: &FakeService, n: usize) -> Vec<Received> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || service.wait_for_requests(n))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_of_a_server_killed_with_kill_9_is_answered_once_by_the_other() {
    let Some(url) = postgres_database("several_processes_kill_9").await else {
        return;
    };
    // The fake AI service: A's call (on `/a/`) never gets an answer, B's (on `/b/`) does.
    let never = Gate::new();
    let service = FakeService::start({
        let never = never.clone();
        move |request| match request.path.as_str() {
            "/a/" => Answer::steps(vec![Step::Wait(never.clone())]),
            _ => Answer::json(200, &json!({ "reply": "Answered by B." })),
        }
    });
    let with_ai = |path: &str| {
        let mut vars = shared(&url);
        vars.extend([
            ("NARUTALK_AI_BACKEND", "http".to_owned()),
            ("NARUTALK_AI_URL", service.url(path)),
            ("NARUTALK_AI_TIMEOUT_SECONDS", AI_TIMEOUT_SECONDS.to_owned()),
        ]);
        vars
    };
    let a = server(&with_ai("/a/")).await;
    let b = server(&with_ai("/b/")).await;
    let (on_a, on_b) = (Api::new(a.addr), Api::new(b.addr));
    let kim = on_a.account("kim").await;
    let session = on_a.session(&kim, "interrupted").await;
    let mut socket = on_b.socket(&kim, &session).await;

    // A stores the message and calls the AI, which hangs; A is killed mid-turn.
    let post = tokio::spawn({
        let (session, kim, a) = (session.clone(), kim.clone(), a.addr);
        async move { Api::new(a).post(&kim, &session, "hello").await }
    });
    let seen = requests_received(&service, 1).await;
    assert_eq!(seen[0].path, "/a/");
    a.kill9().await;
    let _ = post.await;

    // B answers the turn once A's lease expires; its socket receives the message and the
    // reply.
    let deadline = tokio::time::Instant::now() + TAKEOVER_PATIENCE;
    let message = next_chat_message(&mut socket, deadline).await;
    let reply = next_chat_message(&mut socket, deadline).await;
    never.open();

    let stored = on_b.stored(&kim, &session).await;
    assert_eq!(
        stored.len(),
        2,
        "exactly one reply: {stored:?}\n{}",
        b.log()
    );
    assert_eq!(stored[0]["sender"], "user");
    assert_eq!(stored[0]["content"], "hello");
    assert_eq!(stored[1]["sender"], "ai");
    assert_eq!(stored[1]["content"], "Answered by B.");
    assert_eq!(
        [message, reply],
        [frame_of(&stored[0]), frame_of(&stored[1])]
    );
    // One call from each server, both for that message: B's reply is the one stored.
    let calls: Vec<(String, Value)> = service
        .requests()
        .iter()
        .map(|request| (request.path.clone(), request.json()["message"].clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("/a/".to_owned(), json!("hello")),
            ("/b/".to_owned(), json!("hello"))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_starting_together_on_an_empty_database_migrate_it_once_and_all_serve() {
    let Some(url) = postgres_database("several_processes_migrate").await else {
        return;
    };
    let vars = shared(&url);

    // Started at the same moment: each process is spawned on the join's first poll.
    let servers = futures_util::future::join_all((0..3).map(|_| server(&vars))).await;

    // Each serves, with the others' rows: one registers, every one logs in.
    let apis: Vec<Api> = servers.iter().map(|server| Api::new(server.addr)).collect();
    apis[0].register("kim").await;
    for api in &apis {
        assert_eq!(api.status("/api/health/").await, reqwest::StatusCode::OK);
        let kim = api.login("kim").await;
        api.session(&kim, "started").await;
    }
    // One history row per migration file, each applied once.
    let migrations = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("narutalk-core/src/store/postgres/migrations"),
    )
    .unwrap()
    .filter_map(|entry| {
        let name = entry.unwrap().file_name().into_string().unwrap();
        name.strip_prefix('V')?
            .split_once("__")?
            .0
            .parse::<u64>()
            .ok()
    })
    .collect::<std::collections::BTreeSet<_>>();
    let history = postgres_sql(
        &url,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history",
    )
    .await;
    assert!(!migrations.is_empty());
    assert_eq!(
        history,
        migrations
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "{}",
        servers
            .iter()
            .map(ServerProcess::log)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
