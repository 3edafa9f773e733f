//! `--servers N`: several Narutalk servers on one PostgreSQL database behind a round-robin
//! TCP forwarder of the harness's own, so that every scenario runs unchanged against the
//! group: each new connection (HTTP or WebSocket) goes to the next server, with no sticky
//! sessions, as behind a load balancer. A socket and the posts it hears from therefore
//! usually meet on different servers (`ws-fanout` counts what the group loses).
//!
//! The forwarder copies bytes both ways on the harness's runtime; it costs some of the
//! machine the servers run on, which the report says. It holds two descriptors per
//! forwarded socket in the harness's process (`budget` sizes the scenarios for them).
//! When `accept` fails for want of descriptors or memory it waits a moment before the next
//! (the listener's backlog keeps the connections meanwhile), so that it recovers once
//! sockets close instead of spinning on a core.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};

/// How long the forwarder waits after a failed `accept` that is not the one connection's
/// fault: out of descriptors (EMFILE, ENFILE) or memory, the next would fail the same way
/// until some sockets close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Starts the forwarder on a free loopback port in front of `servers`, and answers its
/// address. It runs until the harness exits.
pub async fn start(servers: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if servers.is_empty() {
        bail!("the forwarder needs at least one server");
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the forwarder")?;
    let addr = listener.local_addr().context("the forwarder's address")?;
    tokio::spawn(forward(listener, servers));
    Ok(addr)
}

/// Where the forwarder takes its connections from: its listener (a test's fake fails on
/// purpose first).
trait Incoming: Send + 'static {
    /// The next connection.
    fn next(&mut self) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl Incoming for TcpListener {
    async fn next(&mut self) -> io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts for ever, handing each connection to the next of `servers` in turn.
async fn forward(mut incoming: impl Incoming, servers: Vec<SocketAddr>) {
    let mut next = 0usize;
    let mut failures = Failures::default();
    loop {
        match incoming.next().await {
            Ok(client) => {
                let Some(&server) = servers.get(next % servers.len().max(1)) else {
                    continue;
                };
                next = next.wrapping_add(1);
                tokio::spawn(pipe(client, server));
            }
            Err(error) => {
                let step = failures.after(&error);
                if step.log {
                    eprintln!(
                        "\nforwarder: accepting a connection failed ({error}); it retries every {} ms while that lasts (logged once)",
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                if let Some(pause) = step.pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Copies bytes both ways between `client` and a new connection to `server` until both
/// are done (a connection it cannot open closes the client's).
async fn pipe(mut client: TcpStream, server: SocketAddr) {
    let _ = client.set_nodelay(true);
    if let Ok(mut upstream) = TcpStream::connect(server).await {
        let _ = upstream.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// What the forwarder does after a failed `accept`.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    /// Wait this long before the next `accept` (`None`: at once).
    pause: Option<Duration>,
    /// Print the failure (only the first that makes it wait, so that a long shortage of
    /// descriptors does not flood the report).
    log: bool,
}

/// The failed accepts so far.
#[derive(Debug, Default)]
struct Failures {
    logged: bool,
}

impl Failures {
    /// The step after `error`. A connection reset or aborted before it was taken is that
    /// connection's failure alone: the next `accept` goes at once. Any other (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM) is the process's and lasts until something is freed: wait
    /// [`ACCEPT_BACKOFF`], then try again.
    fn after(&mut self, error: &io::Error) -> Step {
        let connection_only = matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
        );
        if connection_only {
            return Step {
                pause: None,
                log: false,
            };
        }
        let log = !self.logged;
        self.logged = true;
        Step {
            pause: Some(ACCEPT_BACKOFF),
            log,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// EMFILE ("too many open files") on Linux and the BSDs alike.
    const EMFILE: i32 = 24;

    #[test]
    fn out_of_descriptors_waits_and_is_logged_once() {
        let mut failures = Failures::default();
        let emfile = io::Error::from_raw_os_error(EMFILE);
        assert_eq!(
            failures.after(&emfile),
            Step {
                pause: Some(ACCEPT_BACKOFF),
                log: true
            }
        );
        for _ in 0..3 {
            assert_eq!(
                failures.after(&emfile),
                Step {
                    pause: Some(ACCEPT_BACKOFF),
                    log: false
                }
            );
        }
        assert_eq!(
            failures.after(&io::Error::other("out of memory")).pause,
            Some(ACCEPT_BACKOFF)
        );
    }

    #[test]
    fn a_connection_failing_alone_retries_at_once() {
        let mut failures = Failures::default();
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert_eq!(
                failures.after(&io::Error::from(kind)),
                Step {
                    pause: None,
                    log: false
                }
            );
        }
        // It did not use up the one log line.
        assert!(failures.after(&io::Error::from_raw_os_error(EMFILE)).log);
    }

    /// A listener whose first accepts fail as a process out of descriptors does.
    struct Failing {
        listener: TcpListener,
        failures_left: usize,
    }

    impl Incoming for Failing {
        async fn next(&mut self) -> io::Result<TcpStream> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(io::Error::from_raw_os_error(EMFILE));
            }
            self.listener.accept().await.map(|(stream, _)| stream)
        }
    }

    /// A server that answers each connection with its name, then closes it.
    async fn named_server(name: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name).await;
            }
        });
        addr
    }

    async fn read_all(addr: SocketAddr) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn after_failed_accepts_it_forwards_again_round_robin() {
        let servers = vec![named_server(b"one").await, named_server(b"two").await];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(forward(
            Failing {
                listener,
                failures_left: 3,
            },
            servers,
        ));
        // The connections wait in the backlog through the failures, then go in turn.
        assert_eq!(read_all(addr).await, b"one");
        assert_eq!(read_all(addr).await, b"two");
        assert_eq!(read_all(addr).await, b"one");
    }

    #[tokio::test]
    async fn it_needs_a_server() {
        assert!(start(Vec::new()).await.is_err());
    }
}
