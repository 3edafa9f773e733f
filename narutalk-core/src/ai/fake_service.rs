//! A fake AI service for tests: a `std::net::TcpListener` on 127.0.0.1 with a thread per
//! connection that answers raw HTTP/1.1, byte for byte as the test scripts it, so that
//! slow answers, pauses between streamed chunks, a stream cut off in the middle, error
//! statuses and malformed bodies are exact. Every request it receives is recorded.
//!
//! It needs nothing but the standard library and serde_json, so the core's unit tests
//! and the black-box tests (`tests/api/main.rs` includes this file as `fake_ai`) share it.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fake"
)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`FakeService::wait_for_requests`] and [`FakeService::wait_for_connections`]
/// wait before they fail the test.
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The request target, such as `/v1/chat/completions`.
    pub path: String,
    /// The headers, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Received {
    /// The value of the header `name` (lower-case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A barrier the test opens: a fake answer that waits on it stays pending until then.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    /// Blocks until the gate is open.
    pub fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut guard = open.lock().unwrap();
        while !*guard {
            guard = changed.wait(guard).unwrap();
        }
    }
}

/// One step of an answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Writes these bytes (and flushes them).
    Send(Vec<u8>),
    /// Sleeps.
    Pause(Duration),
    /// Waits until the gate is opened.
    Wait(Gate),
}

/// What the fake does for one request: its steps, then it closes the connection or waits
/// for the next request on it.
#[derive(Clone, Debug)]
pub struct Answer {
    steps: Vec<Step>,
    close: bool,
}

impl Answer {
    /// These steps, keeping the connection open afterwards.
    pub fn steps(steps: Vec<Step>) -> Answer {
        Answer {
            steps,
            close: false,
        }
    }

    /// Exactly `text`, then the connection is closed.
    pub fn raw(text: &str) -> Answer {
        Answer::steps(vec![Step::Send(text.as_bytes().to_vec())]).closing()
    }

    /// A complete answer with `Content-Length`.
    pub fn body(status: u16, content_type: &str, body: &str) -> Answer {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            reason_phrase(status),
            body.len()
        );
        Answer::steps(vec![Step::Send(format!("{head}{body}").into_bytes())])
    }

    /// A complete JSON answer.
    pub fn json(status: u16, body: &Value) -> Answer {
        Answer::body(status, "application/json", &body.to_string())
    }

    /// These steps, then a complete JSON answer.
    pub fn then_json(self, status: u16, body: &Value) -> Answer {
        self.then_answer(Answer::json(status, body))
    }

    /// These steps, then those of `next` (whose end, closing or not, applies).
    pub fn then_answer(mut self, next: Answer) -> Answer {
        self.steps.extend(next.steps);
        self.close = next.close;
        self
    }

    /// The same answer, closing the connection at its end.
    pub fn closing(mut self) -> Answer {
        self.close = true;
        self
    }

    /// A `200 text/event-stream` answer in chunked encoding, to be given its chunks.
    pub fn stream() -> Stream {
        Answer::stream_of_type("text/event-stream")
    }

    /// A `200` answer of `content_type` in chunked encoding, to be given its chunks.
    pub fn stream_of_type(content_type: &str) -> Stream {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        Stream {
            steps: vec![Step::Send(head.into_bytes())],
        }
    }

    /// A complete event stream of these chunks, each flushed on its own.
    pub fn sse(chunks: &[&str]) -> Answer {
        chunks
            .iter()
            .fold(Answer::stream(), |stream, chunk| stream.chunk(chunk))
            .end()
    }
}

/// A chunked answer being written.
#[derive(Clone, Debug)]
pub struct Stream {
    steps: Vec<Step>,
}

impl Stream {
    /// Sends `text` as one HTTP chunk.
    pub fn chunk(self, text: &str) -> Stream {
        self.chunk_bytes(text.as_bytes())
    }

    /// Sends `bytes` (which need not be UTF-8, nor end at a character) as one HTTP chunk.
    pub fn chunk_bytes(mut self, bytes: &[u8]) -> Stream {
        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
        chunk.extend_from_slice(bytes);
        chunk.extend_from_slice(b"\r\n");
        self.steps.push(Step::Send(chunk));
        self
    }

    /// Pauses.
    pub fn pause(mut self, pause: Duration) -> Stream {
        self.steps.push(Step::Pause(pause));
        self
    }

    /// Waits for `gate`.
    pub fn wait(mut self, gate: &Gate) -> Stream {
        self.steps.push(Step::Wait(gate.clone()));
        self
    }

    /// Ends the body properly (the last, empty chunk); the connection stays open.
    pub fn end(mut self) -> Answer {
        self.steps.push(Step::Send(b"0\r\n\r\n".to_vec()));
        Answer::steps(self.steps)
    }

    /// Closes the connection without ending the body: the stream is cut off.
    pub fn cut(self) -> Answer {
        Answer::steps(self.steps).closing()
    }
}

/// An OpenAI chat completion chunk carrying `content`, as one SSE event.
pub fn openai_delta(content: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// The last chunk of an OpenAI stream: no content, a finish reason and the usage.
pub fn openai_finish(finish_reason: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    });
    format!("data: {chunk}\n\n")
}

/// The event that ends an OpenAI stream.
pub const OPENAI_DONE: &str = "data: [DONE]\n\n";

/// The whole OpenAI event stream of a reply made of `pieces`: a delta per piece, the
/// finish chunk (`stop`) and `[DONE]`, each in its own HTTP chunk.
pub fn openai_stream(pieces: &[&str]) -> Answer {
    pieces
        .iter()
        .fold(Answer::stream(), |stream, piece| {
            stream.chunk(&openai_delta(piece))
        })
        .chunk(&openai_finish("stop"))
        .chunk(OPENAI_DONE)
        .end()
}

type Handler = dyn Fn(&Received) -> Answer + Send + Sync;

/// A running fake service; it stops accepting when the last clone is dropped.
#[derive(Clone)]
pub struct FakeService {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stopper: Arc<Stopper>,
}

struct Shared {
    handler: Box<Handler>,
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    /// Connections accepted so far: counted by the accept thread, which may run a little
    /// after a client's connect has returned.
    connections: Mutex<usize>,
    connected: Condvar,
    stopping: AtomicBool,
}

/// Stops the accept loop when dropped, and waits until it has closed the listener, so
/// that the port refuses connections from then on.
struct Stopper {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag and returns; without that wake
        // it would never return, so it is waited for only then.
        if TcpStream::connect(self.addr).is_ok()
            && let Some(accepting) = self.accepting.take()
        {
            let _ = accepting.join();
        }
    }
}

impl FakeService {
    /// Starts a fake that answers each request with `handler(request)`.
    pub fn start(handler: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> FakeService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            connections: Mutex::new(0),
            connected: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let accept_loop = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                *accepting.connections.lock().unwrap() += 1;
                accepting.connected.notify_all();
                let serving = accepting.clone();
                thread::spawn(move || serve(stream, &serving));
            }
        });
        FakeService {
            addr,
            shared: shared.clone(),
            _stopper: Arc::new(Stopper {
                addr,
                shared,
                accepting: Some(accept_loop),
            }),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Blocks until at least `n` requests have arrived, and answers them; fails the test
    /// after [`REQUEST_WAIT`].
    pub fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + REQUEST_WAIT;
        let mut received = self.shared.received.lock().unwrap();
        while received.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the fake AI service got no request {n}");
            received = self.shared.arrived.wait_timeout(received, left).unwrap().0;
        }
        received.clone()
    }

    /// How many connections were accepted so far (reachability probes included). A
    /// client's connect can return before the fake has accepted it: to count a connection
    /// that was just made, use [`FakeService::wait_for_connections`].
    pub fn connections(&self) -> usize {
        *self.shared.connections.lock().unwrap()
    }

    /// Blocks until at least `n` connections have been accepted, and answers how many
    /// were; fails the test after [`REQUEST_WAIT`].
    pub fn wait_for_connections(&self, n: usize) -> usize {
        let deadline = Instant::now() + REQUEST_WAIT;
        let mut connections = self.shared.connections.lock().unwrap();
        while *connections < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the fake AI service accepted no connection {n}"
            );
            connections = self
                .shared
                .connected
                .wait_timeout(connections, left)
                .unwrap()
                .0;
        }
        *connections
    }
}

/// `http://127.0.0.1:PORT{path}` for a port where nothing listens: a listener is bound to a
/// free port and closed again, so connecting is refused.
pub fn refused_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}{path}")
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(reading) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reading);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let answer = (shared.handler)(&request);
        shared.received.lock().unwrap().push(request);
        shared.arrived.notify_all();
        for step in answer.steps {
            match step {
                Step::Send(bytes) => {
                    if writer
                        .write_all(&bytes)
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        return;
                    }
                }
                Step::Pause(pause) => thread::sleep(pause),
                Step::Wait(gate) => gate.wait(),
            }
        }
        if answer.close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Reads one request; `None` at the end of the connection or on anything unreadable.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        body.resize(length.parse().ok()?, 0);
        reader.read_exact(&mut body).ok()?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
