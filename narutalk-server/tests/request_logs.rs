//! Every line a request logs carries its id: the real binary, logging JSON, is asked for
//! an AI turn that fails (its warning is logged on a blocking thread of a task of its own)
//! and for a search whose service is down (its warning is logged in the handler); each
//! warning's `request` span has the id the request sent, as the access line has.
#![allow(clippy::unwrap_used)]

mod common;

use common::{http, json_string, register_and_log_in};

#[test]
fn a_warning_logged_on_behalf_of_a_request_carries_its_request_id() {
    // Arrange: nothing listens on port 9 (discard) of the loopback address.
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(
        dir.path(),
        &[
            ("NARUTALK_LOG_FORMAT", "json"),
            ("NARUTALK_AI_BACKEND", "http"),
            ("NARUTALK_AI_URL", "http://127.0.0.1:9/"),
            ("NARUTALK_SEARCH_URL", "http://127.0.0.1:9/"),
        ],
    );
    let address = running.address.clone();
    let access = register_and_log_in(&address);
    let authorization =
        format!("Authorization: Bearer {access}\r\nContent-Type: application/json\r\n");
    let created = http(
        &address,
        "POST",
        "/api/chat/sessions/",
        &authorization,
        r#"{"title": "night shift"}"#,
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let session = json_string(&created, "id");

    // Act
    let posted = http(
        &address,
        "POST",
        &format!("/api/chat/sessions/{session}/messages/"),
        &format!("{authorization}X-Request-Id: turn-1\r\n"),
        r#"{"content": "How long is the fast before surgery?"}"#,
    );
    let searched = http(
        &address,
        "POST",
        "/api/proxy/search/",
        &format!("{authorization}X-Request-Id: search-1\r\n"),
        r#"{"query": "fasting"}"#,
    );
    let (status, stderr) = running.stop();

    // Assert
    assert!(posted.starts_with("HTTP/1.1 201"), "{posted}");
    assert!(searched.starts_with("HTTP/1.1 503"), "{searched}");
    assert!(status.success(), "{status:?}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let ai_failure = lines
        .iter()
        .find(|line| line["target"] == "narutalk::ai")
        .unwrap_or_else(|| panic!("no AI warning in {stderr}"));
    assert_eq!(ai_failure["level"], "WARN", "{ai_failure}");
    assert_eq!(ai_failure["span"]["name"], "request", "{ai_failure}");
    assert_eq!(ai_failure["span"]["request_id"], "turn-1", "{ai_failure}");
    let search_failure = lines
        .iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("the search service is unreachable"))
        })
        .unwrap_or_else(|| panic!("no search warning in {stderr}"));
    assert_eq!(
        search_failure["span"]["request_id"], "search-1",
        "{search_failure}"
    );
    let access_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["target"] == "narutalk::access")
        .collect();
    assert_eq!(access_lines.len(), 5, "{stderr}");
    for line in access_lines {
        assert_eq!(
            line["span"]["request_id"], line["fields"]["request_id"],
            "{line}"
        );
    }
}
