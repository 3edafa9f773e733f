//! Protects the zero-setup start of contract section 8: the real binary, run in an empty
//! folder, creates the database and a 0600 secret, binds, serves health, and stops cleanly
//! on SIGTERM; a bad setting stops the start with one line naming it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::{http_get, http_post_json, server};

#[test]
fn first_start_in_an_empty_folder_creates_database_and_secret_then_serves_health() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .current_dir(dir.path())
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    let database = dir
        .path()
        .canonicalize()
        .unwrap()
        .join("data/databases/db.sqlite3");

    // Act
    let health = http_get(&address, "/api/health/");
    let unknown = http_get(&address, "/api/nothing-here/");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();

    // Assert
    assert_eq!(
        banner.trim_end(),
        format!(
            "Narutalk is listening on http://{address}/ (chat page: http://{address}/, \
             API docs: http://{address}/api/docs/, database: {}, AI: template, metrics: off)",
            database.display()
        ),
        "the start line names the listen address first, then the page, the docs, the \
         database and the AI"
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(
        r#"{"services":{"ai_service":"available","database":"connected","search_service":"not_configured","server":"running"},"status":"healthy"}"#
    ), "{health}");
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    assert!(unknown.ends_with(r#"{"detail":"Not found."}"#), "{unknown}");
    assert!(
        status.success(),
        "SIGTERM must stop the server with exit 0, got {status:?}"
    );
    assert!(dir.path().join("data/databases/db.sqlite3").is_file());
    let secret = std::fs::read_to_string(dir.path().join("data/secret.key")).unwrap();
    assert_eq!(secret.len(), 128);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_bad_setting_stops_the_start_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = server()
        .current_dir(dir.path())
        .env("NARUTALK_SQLITE_SYNCHRONOUS", "sometimes")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NARUTALK_SQLITE_SYNCHRONOUS"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the settings are valid"
    );
}

#[test]
fn a_short_secret_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = server()
        .current_dir(dir.path())
        .env("NARUTALK_SECRET_KEY", "too-short-to-sign")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NARUTALK_SECRET_KEY"), "{stderr}");
    assert!(!stderr.contains("too-short-to-sign"), "{stderr}");
}

#[test]
fn json_logs_have_one_line_per_request_with_its_id_and_never_a_password_or_token() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .current_dir(dir.path())
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .env("NARUTALK_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let password = "violet-harbour-42";
    let registration = format!(
        r#"{{"username": "kim", "email": "kim@example.com", "password": "{password}", "password_confirm": "{password}"}}"#
    );

    // Act
    let registered = http_post_json(&address, "/api/auth/register/", &registration);
    let login = http_post_json(
        &address,
        "/api/auth/login/",
        &format!(r#"{{"email": "kim@example.com", "password": "{password}"}}"#),
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    // Assert
    assert!(registered.starts_with("HTTP/1.1 201"), "{registered}");
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let access = login
        .split(r#""access":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let request_lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "narutalk::access")
        .collect();
    assert_eq!(request_lines.len(), 2, "{stderr}");
    let fields = &request_lines[1]["fields"];
    assert_eq!(fields["method"], "POST");
    assert_eq!(fields["path"], "/api/auth/login/");
    assert_eq!(fields["status"], 200);
    assert!(fields["duration_ms"].is_number());
    let request_id = fields["request_id"].as_str().unwrap();
    assert!(
        login
            .to_ascii_lowercase()
            .contains(&format!("x-request-id: {request_id}")),
        "the logged id is the one returned"
    );
    assert!(!stderr.contains(password), "a password was logged");
    assert!(!stderr.contains(access), "a token was logged");
}

/// SIGTERM with a WebSocket open on the real binary: the socket is closed with 1001
/// `server shutting down`, the process exits 0, and the JSON log has one `narutalk::ws`
/// line for the socket (code 1001) that, like every line, carries no token, although the
/// token travelled in the socket's query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_websockets_with_1001_and_exits_0_without_logging_the_token() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .current_dir(dir.path())
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .env("NARUTALK_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let password = "violet-harbour-42";
    let setup = address.clone();
    let (access, session) = tokio::task::spawn_blocking(move || {
        http_post_json(
            &setup,
            "/api/auth/register/",
            &format!(
                r#"{{"username": "kim", "email": "kim@example.com", "password": "{password}", "password_confirm": "{password}"}}"#
            ),
        );
        let login = http_post_json(
            &setup,
            "/api/auth/login/",
            &format!(r#"{{"email": "kim@example.com", "password": "{password}"}}"#),
        );
        let access = login
            .split(r#""access":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        let mut stream = TcpStream::connect(&setup).unwrap();
        let body = r#"{"title": "night shift"}"#;
        write!(
            stream,
            "POST /api/chat/sessions/ HTTP/1.1\r\nHost: {setup}\r\nConnection: close\r\nAuthorization: Bearer {access}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut created = String::new();
        stream.read_to_string(&mut created).unwrap();
        let session = created
            .split(r#""id":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        (access, session)
    })
    .await
    .unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://{address}/ws/chat/{session}/?token={access}"
    ))
    .await
    .unwrap();

    // Act
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let close = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    drop(socket);
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    let (status, stderr) = status;

    // Assert
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "server shutting down");
    assert!(status.success(), "exit status {status:?}");
    let socket_lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "narutalk::ws")
        .collect();
    assert_eq!(socket_lines.len(), 1, "{stderr}");
    assert_eq!(socket_lines[0]["fields"]["code"], 1001);
    assert_eq!(socket_lines[0]["fields"]["session"], session.as_str());
    assert_eq!(
        socket_lines[0]["span"]["request_id"], socket_lines[0]["fields"]["request_id"],
        "the socket's line is in its handshake's span"
    );
    assert!(!stderr.contains(&access), "a token was logged");
}

/// The signal handlers are in place once the start line is out: a SIGTERM sent at once,
/// before any request, still drains and exits 0 with the last line.
#[test]
fn sigterm_right_after_the_start_line_stops_gracefully() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let common::Running {
        mut child,
        mut stdout,
        ..
    } = common::start(dir.path(), &[]);

    // Act
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();

    // Assert
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "Narutalk stopped.\n");
}

#[test]
fn the_openapi_flag_prints_the_document_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let output = server()
        .current_dir(dir.path())
        .arg("--openapi")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["info"]["title"], "Narutalk API");
    assert_eq!(document["info"]["version"], "1.1.0");
    assert!(!dir.path().join("data").exists(), "nothing is created");
}

#[test]
fn the_help_sends_its_reader_nowhere_outside_the_repository() {
    let output = server().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--openapi"), "{help}");
    let lower = help.to_lowercase();
    for outside in ["../", "shared/", "spec/", "api.md", "contract", "section "] {
        assert!(!lower.contains(outside), "{outside:?} in:\n{help}");
    }
}

/// The settings file of a start: the log's one `narutalk::start` event names it, `none` when an
/// empty `NARUTALK_CONFIG` asks for no file (whatever `/etc/narutalk/narutalk.toml` holds).
fn settings_file_logged(settings: &std::path::Path, narutalk_config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = server()
        .current_dir(dir.path())
        .env("NARUTALK_CONFIG", narutalk_config)
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .env("NARUTALK_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    // Answered: the server is serving, its SIGTERM handler installed.
    assert!(http_get(&address, "/api/health/").starts_with("HTTP/1.1 200"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let start: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "narutalk::start")
        .collect();
    assert_eq!(start.len(), 1, "{stderr}");
    assert_eq!(
        start[0]["fields"]["message"], "Narutalk is starting",
        "{stderr}"
    );
    assert!(settings.exists());
    start[0]["fields"]["settings_file"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_start_logs_which_settings_file_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("narutalk.toml");
    std::fs::write(&settings, "access_token_minutes = 5\n").unwrap();
    let named = settings.to_str().unwrap();
    assert_eq!(settings_file_logged(&settings, named), named);
    assert_eq!(settings_file_logged(&settings, ""), "none");
}

#[test]
fn help_names_the_default_settings_file() {
    let output = server().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("without either, /etc/narutalk/narutalk.toml when it exists"),
        "{help}"
    );
}

/// With the API's port taken, the start fails with one line naming NARUTALK_BIND and its
/// cause, and nothing is created on disk: no `data/`, no database, no secret. The same
/// for a taken metrics port.
#[test]
fn a_taken_port_stops_the_start_before_anything_is_created_on_disk() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    for (setting, extra) in [
        (
            "NARUTALK_BIND",
            vec![("NARUTALK_BIND", taken_address.as_str())],
        ),
        (
            "NARUTALK_METRICS_BIND",
            vec![
                ("NARUTALK_BIND", "127.0.0.1:0"),
                ("NARUTALK_METRICS_BIND", taken_address.as_str()),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = server();
        command.current_dir(dir.path());
        for (name, value) in extra {
            command.env(name, value);
        }
        let output = command.output().unwrap();

        assert_eq!(output.status.code(), Some(1), "{setting}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(stderr.contains("Address already in use"), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "no start line for a start that failed"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing is created when {setting} is taken"
        );
    }
}

/// The start line names the AI backend and its model, and the metrics URL; the JSON log's
/// first event says the same (and the page and docs URLs, and the database); refinery's
/// migration lines keep their text but lose the build machine's source paths; access
/// lines give durations in milliseconds rounded to the microsecond.
#[test]
fn json_start_event_comes_first_and_no_log_line_carries_a_source_path() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(
        dir.path(),
        &[
            ("NARUTALK_LOG_FORMAT", "json"),
            ("NARUTALK_LOG", "debug"),
            ("NARUTALK_AI_BACKEND", "openai"),
            ("NARUTALK_AI_URL", "http://127.0.0.1:9/v1"),
            ("NARUTALK_AI_MODEL", "llama3.2"),
            ("NARUTALK_METRICS_BIND", "127.0.0.1:0"),
        ],
    );
    let address = running.address.clone();
    let banner = running.banner.clone();
    let database = dir
        .path()
        .canonicalize()
        .unwrap()
        .join("data/databases/db.sqlite3");

    // Act
    for _ in 0..5 {
        http_get(&address, "/api/health/");
    }
    let (status, stderr) = running.stop();

    // Assert
    assert!(status.success(), "{status:?}");
    let metrics = common::url_host(&banner, "metrics: http://").unwrap();
    assert_eq!(
        banner,
        format!(
            "Narutalk is listening on http://{address}/ (chat page: http://{address}/, \
             API docs: http://{address}/api/docs/, database: {}, AI: openai model llama3.2, \
             metrics: http://{metrics}/metrics)",
            database.display()
        )
    );
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let first = &lines[0];
    assert_eq!(first["target"], "narutalk::start", "{stderr}");
    let fields = &first["fields"];
    assert_eq!(fields["listen"], format!("http://{address}/"));
    assert_eq!(fields["page"], format!("http://{address}/"));
    assert_eq!(fields["docs"], format!("http://{address}/api/docs/"));
    assert_eq!(fields["database"], database.display().to_string());
    assert_eq!(fields["ai_backend"], "openai");
    assert_eq!(fields["ai_model"], "llama3.2");
    assert_eq!(fields["metrics"], format!("http://{metrics}/metrics"));
    assert!(
        lines.iter().any(|line| line["target"]
            .as_str()
            .is_some_and(|target| target.starts_with("refinery"))),
        "refinery's lines are kept: {stderr}"
    );
    assert!(
        !stderr.contains(".cargo"),
        "a source path was logged: {stderr}"
    );
    assert!(
        !stderr.contains("log.file"),
        "a source path was logged: {stderr}"
    );
    assert!(
        !stderr.contains("log.line"),
        "a source line was logged: {stderr}"
    );
    let durations: Vec<&str> = stderr
        .split(r#""duration_ms":"#)
        .skip(1)
        .map(|rest| rest.split([',', '}']).next().unwrap())
        .collect();
    assert_eq!(durations.len(), 5, "{stderr}");
    for duration in durations {
        let decimals = duration.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3,
            "{duration} is not rounded to the microsecond"
        );
        assert!(duration.parse::<f64>().is_ok(), "{duration}");
    }
}

/// The search proxy's warning says why the service is unreachable (the refused
/// connection, beneath reqwest's own "error sending request"), and not its URL.
#[test]
fn the_search_proxy_warning_names_its_cause() {
    // Arrange
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let search = format!(
        "http://127.0.0.1:{}/api/search/",
        free.local_addr().unwrap().port()
    );
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(
        dir.path(),
        &[
            ("NARUTALK_SEARCH_URL", search.as_str()),
            ("NARUTALK_LOG_FORMAT", "json"),
        ],
    );
    let access = common::register_and_log_in(&running.address);

    // Act
    let answer = common::http(
        &running.address,
        "POST",
        "/api/proxy/search/",
        &format!("Authorization: Bearer {access}\r\nContent-Type: application/json\r\n"),
        r#"{"query": "migraine"}"#,
    );
    let (_, stderr) = running.stop();

    // Assert
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let warnings: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["level"] == "WARN" && line["target"] != "narutalk::access")
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let fields = &warnings[0]["fields"];
    assert_eq!(
        fields["message"],
        "the search service is unreachable: the search proxy answered 503"
    );
    let cause = fields["cause"].as_str().unwrap();
    assert!(cause.contains("Connection refused"), "{cause}");
    assert!(!stderr.contains(&search), "the URL was logged: {stderr}");
}
