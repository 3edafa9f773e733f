//! The HTTP side of the load generator: a minimal HTTP/1.1 keep-alive client and the
//! closed-loop driver.
//!
//! The generator shares the machine's cores with the server, so it must cost as little
//! as possible per request: every request is built once, as bytes, before the run; a
//! connection writes those bytes and reads one answer with `httparse`, keeping only its
//! status and whether the connection stays open. Checked against the bare warp hello
//! server (the health ceiling), this client is not the bottleneck.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::measure::{self, Measured};

/// How long one request may take before it counts as an error and its connection is
/// replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most response header lines the client reads.
const MAX_HEADERS: usize = 64;

/// A request built once, sent many times.
pub type RequestBytes = Arc<[u8]>;

/// `GET path` to `addr`, with `token` as a bearer token when given.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> RequestBytes {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes().into()
}

/// `POST path` to `addr` with a JSON `body`, with `token` as a bearer token when given.
pub fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> RequestBytes {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    head.into_bytes().into()
}

/// One answer, as much of it as the harness needs.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// False when the server closes the connection after this answer.
    pub keep_alive: bool,
}

/// A keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
}

impl Connection {
    /// Connects to `addr` (with `TCP_NODELAY`, as the server sets on its side).
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        Ok(Connection {
            stream,
            buffer: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        })
    }

    /// Sends `request` and reads its answer (the body is read and dropped).
    pub async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        self.stream
            .write_all(request)
            .await
            .context("sending a request")?;
        self.read_answer(None).await
    }

    /// Sends `request` and reads its answer, keeping its body (de-chunked) in `body`.
    pub async fn exchange_keeping_body(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
    ) -> anyhow::Result<Answer> {
        body.clear();
        self.stream
            .write_all(request)
            .await
            .context("sending a request")?;
        self.read_answer(Some(body)).await
    }

    async fn read_answer(&mut self, mut body: Option<&mut Vec<u8>>) -> anyhow::Result<Answer> {
        loop {
            if let Some(head) = self.parse_head()? {
                return self.read_body(head, body.as_deref_mut()).await;
            }
            self.fill().await?;
        }
    }

    /// The response head at the front of the buffer, once it is complete.
    fn parse_head(&self) -> anyhow::Result<Option<Head>> {
        if self.start == self.end {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response
            .parse(&self.buffer[self.start..self.end])
            .context("reading a response head")?
        {
            httparse::Status::Complete(length) => length,
            httparse::Status::Partial => return Ok(None),
        };
        let status = response.code.context("a response without a status")?;
        let mut head = Head {
            length,
            status,
            body: if matches!(status, 100..=199 | 204 | 304) {
                Body::Length(0)
            } else {
                Body::UntilClose
            },
            keep_alive: response.version == Some(1),
        };
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(header.value).context("Content-Length")?;
                head.body = Body::Length(text.trim().parse().context("Content-Length")?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding")
                && contains_token(header.value, b"chunked")
            {
                head.body = Body::Chunked;
            } else if header.name.eq_ignore_ascii_case("connection") {
                if contains_token(header.value, b"close") {
                    head.keep_alive = false;
                } else if contains_token(header.value, b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
        if matches!(head.body, Body::UntilClose) {
            head.keep_alive = false;
        }
        Ok(Some(head))
    }

    /// Reads the body of the answer whose head is `head`, into `kept` when given, and drops
    /// it otherwise.
    async fn read_body(
        &mut self,
        head: Head,
        mut kept: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        self.start += head.length;
        match head.body {
            Body::Length(length) => self.skip(length, kept).await?,
            Body::Chunked => loop {
                let size = self.chunk_size().await?;
                self.skip(size, kept.as_deref_mut()).await?;
                // The chunk's CRLF; the last chunk (0) is followed by an empty trailer
                // section, which is its CRLF.
                self.skip(2, None).await?;
                if size == 0 {
                    break;
                }
            },
            Body::UntilClose => loop {
                if let Some(kept) = kept.as_deref_mut() {
                    kept.extend_from_slice(&self.buffer[self.start..self.end]);
                }
                self.start = self.end;
                if self.read_some().await? == 0 {
                    break;
                }
            },
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Answer {
            status: head.status,
            keep_alive: head.keep_alive,
        })
    }

    /// Takes the next `count` bytes of the stream, into `kept` when given.
    async fn skip(
        &mut self,
        mut count: usize,
        mut kept: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<()> {
        loop {
            let available = self.end - self.start;
            let taken = available.min(count);
            if let Some(kept) = kept.as_deref_mut() {
                kept.extend_from_slice(&self.buffer[self.start..self.start + taken]);
            }
            if available >= count {
                self.start += count;
                return Ok(());
            }
            count -= available;
            self.start = 0;
            self.end = 0;
            self.fill().await?;
        }
    }

    /// Reads a chunk-size line and answers the size.
    async fn chunk_size(&mut self) -> anyhow::Result<usize> {
        loop {
            match httparse::parse_chunk_size(&self.buffer[self.start..self.end]) {
                Ok(httparse::Status::Complete((length, size))) => {
                    self.start += length;
                    return usize::try_from(size).context("a chunk too large");
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(_) => bail!("a malformed chunk size"),
            }
        }
    }

    /// Reads more bytes; the connection closing is an error here.
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.read_some().await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    async fn read_some(&mut self) -> anyhow::Result<usize> {
        if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
        }
        let read = self
            .stream
            .read(&mut self.buffer[self.end..])
            .await
            .context("reading an answer")?;
        self.end += read;
        Ok(read)
    }
}

/// A parsed response head.
struct Head {
    /// Bytes of the head, up to and including its blank line.
    length: usize,
    status: u16,
    body: Body,
    keep_alive: bool,
}

/// How the body of an answer is delimited.
enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

/// True when the comma-separated header `value` contains `token` (case-insensitive).
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|byte| *byte == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

// ---------------------------------------------------------------------------------------
// The closed-loop driver
// ---------------------------------------------------------------------------------------

/// The warm-up (run, not recorded) and the measured window that follows it.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Run but not recorded.
    pub warmup: Duration,
    /// Recorded.
    pub duration: Duration,
}

/// One request a connection may send, with its share of that connection's requests.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The group its results are counted in (a kind of request, such as `login`).
    pub group: usize,
    /// Relative weight among the connection's choices.
    pub weight: u32,
    /// The request.
    pub request: RequestBytes,
}

/// What one connection sends: a weighted blend of requests (one choice: always that
/// request).
#[derive(Clone, Debug)]
pub struct Lane {
    /// The requests and their weights.
    pub choices: Vec<Choice>,
}

impl Lane {
    /// A connection that always sends `request`, counted in `group`.
    pub fn single(group: usize, request: RequestBytes) -> Lane {
        Lane {
            choices: vec![Choice {
                group,
                weight: 1,
                request,
            }],
        }
    }

    fn pick(&self, random: &mut Random) -> &Choice {
        let total: u64 = self.choices.iter().map(|c| u64::from(c.weight)).sum();
        let mut point = random.next() % total.max(1);
        for choice in &self.choices {
            let weight = u64::from(choice.weight);
            if point < weight {
                return choice;
            }
            point -= weight;
        }
        &self.choices[0]
    }
}

/// Runs `lanes` (one connection each) closed-loop against `addr`: each connection sends
/// its next request when the previous one is answered. Requests sent during the warm-up
/// are not recorded; the measured window follows it. Answers the results per group (the
/// `group` of each [`Choice`], `0..groups`).
pub async fn drive(
    addr: SocketAddr,
    lanes: Vec<Lane>,
    groups: usize,
    timing: Timing,
) -> anyhow::Result<Vec<Measured>> {
    if lanes.iter().any(|lane| lane.choices.is_empty()) {
        bail!("a connection with nothing to send");
    }
    // Every connection is open before the clock starts.
    let mut connections = Vec::with_capacity(lanes.len());
    for _ in &lanes {
        connections.push(Connection::open(addr).await?);
    }
    let started = Instant::now();
    let window_start = started + timing.warmup;
    let window_end = window_start + timing.duration;
    let mut tasks = Vec::with_capacity(lanes.len());
    for (index, (lane, connection)) in lanes.into_iter().zip(connections).enumerate() {
        let window = Window {
            start: window_start,
            end: window_end,
            length: timing.duration,
        };
        tasks.push(tokio::spawn(run_lane(
            addr, lane, connection, groups, window, index,
        )));
    }
    let mut totals = Vec::with_capacity(groups);
    for _ in 0..groups {
        totals.push(Measured::new(timing.duration, 3)?);
    }
    for task in tasks {
        let measured = task.await.context("a load connection panicked")??;
        for (total, part) in totals.iter_mut().zip(&measured) {
            total.merge(part)?;
        }
    }
    Ok(totals)
}

/// The measured window of a run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
    length: Duration,
}

async fn run_lane(
    addr: SocketAddr,
    lane: Lane,
    connection: Connection,
    groups: usize,
    window: Window,
    index: usize,
) -> anyhow::Result<Vec<Measured>> {
    let mut results = Vec::with_capacity(groups);
    for _ in 0..groups {
        results.push(Measured::new(window.length, 3)?);
    }
    let mut random = Random::new(index as u64);
    let mut connection = Some(connection);
    loop {
        if Instant::now() >= window.end {
            break;
        }
        let Some(open) = connection.as_mut() else {
            match Connection::open(addr).await {
                Ok(open) => connection = Some(open),
                Err(_) => {
                    if Instant::now() >= window.start
                        && let Some(first) = results.first_mut()
                    {
                        first.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        let choice = lane.pick(&mut random);
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, open.exchange(&choice.request)).await;
        let done = Instant::now();
        let recorded = sent >= window.start;
        if done > window.end {
            if recorded
                && let Ok(Ok(answer)) = &answer
                && (200..300).contains(&answer.status)
                && let Some(result) = results.get_mut(choice.group)
            {
                result.finished_late += 1;
            }
            break;
        }
        let result = results
            .get_mut(choice.group)
            .context("a request of an unknown group")?;
        match answer {
            Ok(Ok(answer)) => {
                if !answer.keep_alive {
                    connection = None;
                }
                if !recorded {
                    continue;
                }
                if (200..300).contains(&answer.status) {
                    result.ok += 1;
                    measure::record(&mut result.latency, done - sent);
                } else {
                    result.errors += 1;
                    if (400..500).contains(&answer.status) {
                        result.refused += 1;
                    }
                }
            }
            Ok(Err(_)) | Err(_) => {
                connection = None;
                if recorded {
                    result.errors += 1;
                }
            }
        }
    }
    Ok(results)
}

/// A small, fast pseudo-random generator (xorshift64*): which request of a blend comes
/// next. Seeded per connection, so a run is repeatable.
pub struct Random(u64);

impl Random {
    /// A generator for stream `seed`.
    pub fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers every request with the next of `answers`, written in small
    /// pieces so that the client sees partial heads and bodies.
    async fn canned(answers: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            for answer in answers {
                let _ = stream.read(&mut buffer).await.unwrap();
                for piece in answer.as_bytes().chunks(7) {
                    stream.write_all(piece).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection_until_close() {
        let addr = canned(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"status\":\"ok\"}\n",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        ])
        .await;
        let mut connection = Connection::open(addr).await.unwrap();
        let request = get(addr, "/", None);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let answer =
                tokio::time::timeout(Duration::from_secs(5), connection.exchange(&request))
                    .await
                    .expect("an answer was not read in time")
                    .unwrap();
            statuses.push((answer.status, answer.keep_alive));
        }
        assert_eq!(
            statuses,
            [(200, true), (201, true), (204, true), (404, false)]
        );
    }

    #[tokio::test]
    async fn a_kept_body_is_the_whole_body_de_chunked() {
        let addr = canned(vec![
            "HTTP/1.1 201 Created\r\ncontent-length: 16\r\n\r\n{\"status\":\"ok\"}\n",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ])
        .await;
        let mut connection = Connection::open(addr).await.unwrap();
        let request = get(addr, "/", None);
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let mut body = b"left over".to_vec();
            tokio::time::timeout(
                Duration::from_secs(5),
                connection.exchange_keeping_body(&request, &mut body),
            )
            .await
            .expect("an answer was not read in time")
            .unwrap();
            bodies.push(String::from_utf8(body).unwrap());
        }
        assert_eq!(
            bodies,
            ["{\"status\":\"ok\"}\n", "helloabc", "until the end"]
        );
    }

    #[test]
    fn requests_are_complete_http_1_1() {
        let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let request = post_json(addr, "/api/x/", Some("T"), "{}");
        assert_eq!(
            std::str::from_utf8(&request).unwrap(),
            "POST /api/x/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer T\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn a_blend_picks_by_weight() {
        let lane = Lane {
            choices: vec![
                Choice {
                    group: 0,
                    weight: 3,
                    request: get("127.0.0.1:1".parse().unwrap(), "/a", None),
                },
                Choice {
                    group: 1,
                    weight: 1,
                    request: get("127.0.0.1:1".parse().unwrap(), "/b", None),
                },
            ],
        };
        let mut random = Random::new(7);
        let picks = (0..10_000)
            .filter(|_| lane.pick(&mut random).group == 0)
            .count();
        assert!((7_000..8_000).contains(&picks), "{picks}");
    }
}
