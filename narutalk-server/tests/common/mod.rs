//! What the tests of the real `narutalk-server` binary share: starting it in a folder,
//! reading its start line, plain HTTP/1.1 over a socket, and stopping it with SIGTERM.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

/// The binary with an empty environment.
pub fn server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_narutalk-server"));
    command.env_clear();
    command
}

/// A server started by [`start`].
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its start line, without the line break.
    pub banner: String,
    /// The API's `host:port`: the first URL of the start line.
    pub address: String,
    /// The rest of its standard output, kept open: the server's last line goes there.
    pub stdout: BufReader<ChildStdout>,
}

/// Starts the binary in `dir` on a free port, with no search service and `env`, and
/// waits for its start line.
pub fn start(dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut command = server();
    command
        .current_dir(dir)
        .env("NARUTALK_BIND", "127.0.0.1:0")
        .env("NARUTALK_SEARCH_URL", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let banner = banner.trim_end().to_owned();
    let address =
        url_host(&banner, "http://").unwrap_or_else(|| panic!("no address in {banner:?}"));
    Running {
        child,
        banner,
        address,
        stdout,
    }
}

/// The `host:port` of the first URL after `prefix` in `line`.
pub fn url_host(line: &str, prefix: &str) -> Option<String> {
    line.split_once(prefix)
        .and_then(|(_, rest)| rest.split('/').next())
        .map(str::to_owned)
}

impl Running {
    /// Stops the server with SIGTERM; its exit status and everything it logged.
    pub fn stop(mut self) -> (ExitStatus, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

/// One HTTP/1.1 request over a plain socket; returns the whole response as text.
pub fn http(address: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// One HTTP/1.1 GET over a plain socket; returns the whole response as text.
pub fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// One HTTP/1.1 POST of a JSON body over a plain socket; returns the whole response.
pub fn http_post_json(address: &str, path: &str, body: &str) -> String {
    http(
        address,
        "POST",
        path,
        "Content-Type: application/json\r\n",
        body,
    )
}

/// The body of a whole HTTP response.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The string value of `"key":"..."` in a JSON response.
pub fn json_string(response: &str, key: &str) -> String {
    response
        .split(&format!(r#""{key}":""#))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in {response}"))
        .to_owned()
}

/// Registers `kim@example.com` and logs her in: her access token.
pub fn register_and_log_in(address: &str) -> String {
    let password = "violet-harbour-42";
    let registered = http_post_json(
        address,
        "/api/auth/register/",
        &format!(
            r#"{{"username": "kim", "email": "kim@example.com", "password": "{password}", "password_confirm": "{password}"}}"#
        ),
    );
    assert!(registered.starts_with("HTTP/1.1 201"), "{registered}");
    let login = http_post_json(
        address,
        "/api/auth/login/",
        &format!(r#"{{"email": "kim@example.com", "password": "{password}"}}"#),
    );
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    json_string(&login, "access")
}
