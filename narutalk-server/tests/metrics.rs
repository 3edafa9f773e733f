//! Protects the Prometheus metrics: served on their own listener only
//! (`NARUTALK_METRICS_BIND`), never on the API's port; in Prometheus's text format, every
//! metric with its HELP and TYPE; one request moves its counter by exactly one; labels
//! are route templates, never an id a client sent; and the server's parts (sockets, AI
//! turns, throttles) and the core's (database writes, commits, argon2) show up.
//!
//! The real binary runs in a child process, so the process-wide recorder counts this
//! test's requests alone.
#![allow(clippy::unwrap_used)]

mod common;
// The fake AI service is the core's own test fake, shared rather than copied.
#[path = "../../narutalk-core/src/ai/fake_service.rs"]
mod fake_ai;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{body, http, http_get, http_post_json, json_string};
use fake_ai::{Answer, FakeService, Gate, OPENAI_DONE, openai_delta, openai_finish};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The value of the sample written exactly `series` (`name{labels}`), 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// Scrapes `GET /metrics` at `metrics` and answers the body, after checking the status
/// and the content type.
fn scrape(metrics: &str) -> String {
    let response = http_get(metrics, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    body(&response).to_owned()
}

/// A metric name as Prometheus allows it.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks `labels` (what is between the braces) as `name="value"` pairs separated by
/// commas, values escaped as the format says; answers the pairs.
fn parse_labels(labels: &str, line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("a label without =\": {line}"));
        assert!(
            is_metric_name(name) && !name.contains(':'),
            "label name {name:?}: {line}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, escaped @ ('\\' | '"' | 'n'))) => value.push(escaped),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => panic!("an unterminated label value: {line}"),
            }
        };
        pairs.push((name.to_owned(), value));
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
        } else {
            assert!(rest.is_empty(), "junk after a label: {line}");
        }
    }
    pairs
}

/// Checks the text line by line against Prometheus's text format (version 0.0.4): each
/// line is a `# HELP name text`, a `# TYPE name kind` or a sample `name{labels} value`;
/// every sample's metric has a TYPE and a HELP before it, and a histogram's samples are
/// its `_bucket` (with `le`), `_sum` and `_count`. Answers every label value seen.
fn check_exposition(text: &str) -> BTreeSet<String> {
    let mut help = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    let mut values = BTreeSet::new();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the text ends with a line break"
    );
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap();
            assert!(is_metric_name(name), "{line}");
            assert!(!doc.trim().is_empty(), "an empty HELP: {line}");
            assert!(help.insert(name.to_owned()), "a second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(help.contains(name), "TYPE before (or without) HELP: {line}");
            assert!(
                kinds.insert(name.to_owned(), kind).is_none(),
                "a second TYPE: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').unwrap(), line)),
            None => (series, Vec::new()),
        };
        assert!(is_metric_name(name), "{line}");
        assert!(
            name.starts_with("narutalk_"),
            "every metric is Narutalk's: {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (kinds.get(base) == Some(&"histogram")).then_some(base)
            })
            .unwrap_or(name);
        let kind = kinds
            .get(family)
            .unwrap_or_else(|| panic!("a sample without TYPE: {line}"));
        if *kind == "histogram" {
            assert_ne!(
                family, name,
                "a histogram sample is a bucket, sum or count: {line}"
            );
            assert_eq!(
                name.ends_with("_bucket"),
                labels.iter().any(|(label, _)| label == "le"),
                "buckets, and only they, have `le`: {line}"
            );
        }
        if *kind == "counter" {
            assert!(
                family.ends_with("_total"),
                "a counter's name ends with _total: {line}"
            );
        }
        values.extend(labels.into_iter().map(|(_, value)| value));
    }
    values
}

/// Whether `text` holds a UUID in its canonical form.
fn holds_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(36).any(|window| {
        window.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_port_in_prometheus_format_and_count_exactly() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), &[("NARUTALK_METRICS_BIND", "127.0.0.1:0")]);
    let address = running.address.clone();
    let metrics = common::url_host(&running.banner, "metrics: http://").unwrap();
    assert_ne!(metrics, address, "the metrics have a port of their own");
    let health = r#"narutalk_http_requests_total{method="GET",route="/api/health/",status="200"}"#;

    // Act: one request between two scrapes.
    let (before, after, on_api_port, elsewhere) = {
        let (address, metrics) = (address.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || {
            let before = scrape(&metrics);
            let answered = http_get(&address, "/api/health/");
            assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
            let after = scrape(&metrics);
            (
                before,
                after,
                http_get(&address, "/metrics"),
                http_get(&metrics, "/api/health/"),
            )
        })
        .await
        .unwrap()
    };

    // Assert
    check_exposition(&before);
    check_exposition(&after);
    assert_eq!(
        sample(&after, health) - sample(&before, health),
        1.0,
        "{after}"
    );
    let duration =
        r#"narutalk_http_request_duration_seconds_count{method="GET",route="/api/health/"}"#;
    assert_eq!(
        sample(&after, duration) - sample(&before, duration),
        1.0,
        "{after}"
    );
    assert!(
        after.contains(r#"narutalk_http_request_duration_seconds_bucket{method="GET",route="/api/health/",le="+Inf"}"#),
        "{after}"
    );
    assert!(on_api_port.starts_with("HTTP/1.1 404"), "{on_api_port}");
    assert!(elsewhere.starts_with("HTTP/1.1 404"), "{elsewhere}");

    // Act: a session's routes with its id, an unknown path with an id, a message with its
    // AI turn, a socket, and a throttled login.
    let address_for_work = address.clone();
    let (access, session) = tokio::task::spawn_blocking(move || {
        let access = common::register_and_log_in(&address_for_work);
        let auth = format!("Authorization: Bearer {access}\r\nContent-Type: application/json\r\n");
        let created = http(
            &address_for_work,
            "POST",
            "/api/chat/sessions/",
            &auth,
            r#"{"title": "night shift"}"#,
        );
        let session = json_string(&created, "id");
        let posted = http(
            &address_for_work,
            "POST",
            &format!("/api/chat/sessions/{session}/messages/"),
            &auth,
            r#"{"content": "두통"}"#,
        );
        assert!(posted.starts_with("HTTP/1.1 201"), "{posted}");
        let read = http(
            &address_for_work,
            "GET",
            &format!("/api/chat/sessions/{session}/"),
            &auth,
            "",
        );
        assert!(read.starts_with("HTTP/1.1 200"), "{read}");
        let unknown = http_get(&address_for_work, &format!("/api/{session}/"));
        assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
        // The login throttle: 10 attempts a minute per IP (the login above was the
        // first); the 11th is refused.
        for attempt in 2..=11 {
            let answer = http_post_json(&address_for_work, "/api/auth/login/", "{}");
            let expected = if attempt <= 10 {
                "HTTP/1.1 400"
            } else {
                "HTTP/1.1 429"
            };
            assert!(answer.starts_with(expected), "attempt {attempt}: {answer}");
        }
        (access, session)
    })
    .await
    .unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://{address}/ws/chat/{session}/?token={access}"
    ))
    .await
    .unwrap();
    socket
        .send(Message::Text(r#"{"type": "ping"}"#.into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong.into_text().unwrap().as_str(), r#"{"type":"pong"}"#);
    // The pong is counted once the server's write of it returned, which may be just
    // after the client read it: wait for the count.
    let with_socket = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            scrape_until(&metrics, |text| {
                sample(text, r#"narutalk_ws_frames_sent_total{kind="pong"}"#) >= 1.0
            })
        })
        .await
        .unwrap()
    };
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    while socket.next().await.is_some() {}
    // The socket's end is counted once the server has closed it: wait for that.
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        let metrics = metrics.clone();
        let now = tokio::task::spawn_blocking(move || scrape(&metrics))
            .await
            .unwrap();
        if sample(&now, "narutalk_ws_sockets_open") == 0.0 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, stderr) = running.stop();

    // Assert
    assert!(status.success(), "{status:?}: {stderr}");
    let values = check_exposition(&closed);
    assert!(!holds_uuid(&closed), "a label holds an id: {closed}");
    assert!(values.contains("/api/chat/sessions/{id}/"), "{closed}");
    assert!(
        values.contains("/api/chat/sessions/{id}/messages/"),
        "{closed}"
    );
    assert!(values.contains("/ws/chat/{id}/"), "{closed}");
    assert!(values.contains("unmatched"), "{closed}");
    assert_eq!(
        sample(&with_socket, "narutalk_ws_sockets_open"),
        1.0,
        "{with_socket}"
    );
    assert_eq!(
        sample(
            &with_socket,
            r#"narutalk_ws_frames_sent_total{kind="pong"}"#
        ),
        1.0,
        "{with_socket}"
    );
    assert_eq!(sample(&closed, "narutalk_ws_sockets_open"), 0.0, "{closed}");
    assert_eq!(
        sample(&closed, r#"narutalk_ws_sockets_closed_total{code="1000"}"#),
        1.0,
        "{closed}"
    );
    assert_eq!(
        sample(
            &closed,
            r#"narutalk_ai_turns_total{responder="template",outcome="replied",reason=""}"#
        ),
        1.0,
        "{closed}"
    );
    assert_eq!(
        sample(
            &closed,
            r#"narutalk_ai_turn_duration_seconds_count{responder="template"}"#
        ),
        1.0,
        "{closed}"
    );
    assert_eq!(
        sample(&closed, "narutalk_ai_turns_running"),
        0.0,
        "{closed}"
    );
    assert_eq!(
        sample(&closed, r#"narutalk_throttled_total{bucket="login_ip"}"#),
        1.0,
        "{closed}"
    );
    assert_eq!(
        sample(
            &closed,
            r#"narutalk_http_requests_total{method="POST",route="/api/auth/login/",status="429"}"#
        ),
        1.0,
        "{closed}"
    );
    // Registration hashes once and login verifies once.
    assert_eq!(
        sample(&closed, "narutalk_argon2_duration_seconds_count"),
        2.0,
        "{closed}"
    );
    assert_eq!(
        sample(&closed, "narutalk_argon2_queued_hashes"),
        0.0,
        "{closed}"
    );
    assert!(
        sample(&closed, "narutalk_db_write_duration_seconds_count") >= 4.0,
        "{closed}"
    );
    assert!(
        sample(&closed, "narutalk_db_commit_batch_writes_count") >= 1.0,
        "{closed}"
    );
}

/// Scrapes `metrics` until `done` holds for the scrape, for at most 30 s; the last scrape.
fn scrape_until(metrics: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(metrics);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A streaming model: the first call streams one piece, then holds until released; the
/// second fails with HTTP 500. While the first runs, the AI gauges show it running, its
/// first delta is timed, and the second message of the session waits in the queue; then
/// each turn is counted under its outcome and reason, and the gauges come back to 0.
#[test]
fn ai_turns_are_counted_running_queued_by_outcome_and_reason_with_time_to_first_delta() {
    // Arrange
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = {
        let (gate, calls) = (gate.clone(), calls.clone());
        FakeService::start(move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Answer::stream()
                    .chunk(&openai_delta("Rest"))
                    .wait(&gate)
                    .chunk(&openai_delta(" and drink water."))
                    .chunk(&openai_finish("stop"))
                    .chunk(OPENAI_DONE)
                    .end()
            } else {
                Answer::json(500, &serde_json::json!({"error": "overloaded"}))
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let url = fake.url("/v1");
    let running = common::start(
        dir.path(),
        &[
            ("NARUTALK_METRICS_BIND", "127.0.0.1:0"),
            ("NARUTALK_AI_BACKEND", "openai"),
            ("NARUTALK_AI_URL", url.as_str()),
            ("NARUTALK_AI_MODEL", "fake-model"),
        ],
    );
    let address = running.address.clone();
    let metrics = common::url_host(&running.banner, "metrics: http://").unwrap();
    let access = common::register_and_log_in(&address);
    let auth = format!("Authorization: Bearer {access}\r\nContent-Type: application/json\r\n");
    let created = http(
        &address,
        "POST",
        "/api/chat/sessions/",
        &auth,
        r#"{"title": "t"}"#,
    );
    let messages = format!(
        "/api/chat/sessions/{}/messages/",
        json_string(&created, "id")
    );
    let post = |content: &'static str| {
        let (address, auth, messages) = (address.clone(), auth.clone(), messages.clone());
        std::thread::spawn(move || {
            http(
                &address,
                "POST",
                &messages,
                &auth,
                &format!(r#"{{"content": "{content}"}}"#),
            )
        })
    };

    // Act
    let first = post("I have a headache.");
    fake.wait_for_requests(1);
    let streaming = scrape_until(&metrics, |text| {
        sample(
            text,
            r#"narutalk_ai_first_delta_seconds_count{responder="openai"}"#,
        ) == 1.0
    });
    let second = post("Since this morning.");
    let queued = scrape_until(&metrics, |text| {
        sample(text, "narutalk_ai_turns_queued") == 1.0
    });
    gate.open();
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let done = scrape_until(&metrics, |text| {
        sample(
            text,
            r#"narutalk_ai_turn_duration_seconds_count{responder="openai"}"#,
        ) == 2.0
    });
    let (status, stderr) = running.stop();

    // Assert
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(first.contains("Rest and drink water."), "{first}");
    assert!(second.contains("HTTP 500 from the AI service"), "{second}");
    assert_eq!(
        sample(&streaming, "narutalk_ai_turns_running"),
        1.0,
        "{streaming}"
    );
    assert_eq!(sample(&queued, "narutalk_ai_turns_queued"), 1.0, "{queued}");
    assert_eq!(
        sample(&queued, "narutalk_ai_turns_running"),
        1.0,
        "{queued}"
    );
    check_exposition(&done);
    for (series, value) in [
        ("narutalk_ai_turns_running", 0.0),
        ("narutalk_ai_turns_queued", 0.0),
        (
            r#"narutalk_ai_turn_duration_seconds_count{responder="openai"}"#,
            2.0,
        ),
        (
            r#"narutalk_ai_first_delta_seconds_count{responder="openai"}"#,
            1.0,
        ),
        (
            r#"narutalk_ai_turns_total{responder="openai",outcome="replied",reason=""}"#,
            1.0,
        ),
        (
            r#"narutalk_ai_turns_total{responder="openai",outcome="failed",reason="HTTP 500 from the AI service"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&done, series), value, "{series}: {done}");
    }
}
