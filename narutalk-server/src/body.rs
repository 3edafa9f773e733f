//! A request body as the accept loop hands it to the handlers: read no slower than a
//! minimum rate (or answered 408), given up at shutdown (503), and read to its end after
//! an early answer so that the answer reaches a client, or a proxy, that is still sending
//! (RFC 9112 section 9.6).
//!
//! The accept loop wraps hyper's body in a [`RequestBody`] and puts it into the request's
//! extensions; the handler reads it through `http::Request`; once the answer is
//! ready, the accept loop calls [`RequestBody::after_answer`], which decides what becomes
//! of what was not read.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderValue, header};

use crate::response::Response;

/// At most this much of a body is read and thrown away after an early answer.
pub const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// An early answer's unread body is read and thrown away for at most this long.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// How slowly a request body may arrive: after `grace`, it must keep up with
/// `min_bytes_per_second` counted from its start.
#[derive(Clone, Copy, Debug)]
pub struct BodyPace {
    /// How long a body may send nothing at all.
    pub grace: Duration,
    /// The rate a body must keep up after the grace; 0 puts no limit on a body.
    pub min_bytes_per_second: u64,
}

impl BodyPace {
    /// When a body that started at `start` and has delivered `received` bytes falls
    /// behind: `start + grace + received / rate`; `None` when it never does.
    fn deadline(&self, start: Instant, received: u64) -> Option<Instant> {
        if self.min_bytes_per_second == 0 {
            return None;
        }
        // Exact for any body this server reads (below 2^53 bytes).
        #[allow(clippy::cast_precision_loss)]
        let earned =
            Duration::try_from_secs_f64(received as f64 / self.min_bytes_per_second as f64).ok()?;
        start.checked_add(self.grace)?.checked_add(earned)
    }
}

/// Why reading a body stopped before its end.
#[derive(Debug)]
pub enum BodyError {
    /// The body fell behind the minimum rate (408).
    TooSlow,
    /// The server is stopping and the body was still arriving (503).
    Stopping,
    /// The connection failed or the body's framing was broken.
    Failed(hyper::Error),
}

/// A request's body, shared by the handler that reads it and the accept loop that
/// deals with the rest after the answer. Cloning it clones the handle, not the body.
#[derive(Clone)]
pub struct RequestBody(Arc<Shared>);

struct Shared {
    pace: BodyPace,
    stopping: CancellationToken,
    /// The request sent `Expect: 100-continue`: its client waits for a go-ahead (which
    /// hyper sends when the body is first read) before it sends the body.
    expects_continue: bool,
    reading: Mutex<Reading>,
}

struct Reading {
    /// hyper's body; `None` once it ended, failed, or was given up.
    incoming: Option<Incoming>,
    /// Body bytes delivered so far.
    received: u64,
    /// When the server first asked for the body: the rate's clock. It is right after the
    /// headers, unless the server took its time to get there (a slow token check), which
    /// is not held against the client.
    clock: Option<Instant>,
    /// Reading stopped for a reason that closes the connection without draining.
    refused: bool,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl RequestBody {
    /// Wraps hyper's body of a request; `stopping` is cancelled when the server stops.
    pub fn new(
        incoming: Incoming,
        pace: BodyPace,
        stopping: CancellationToken,
        expects_continue: bool,
    ) -> RequestBody {
        RequestBody(Arc::new(Shared {
            pace,
            stopping,
            expects_continue,
            reading: Mutex::new(Reading {
                incoming: Some(incoming),
                received: 0,
                clock: None,
                refused: false,
            }),
        }))
    }

    /// The next chunk of the body; `None` at its end. Fails with [`BodyError::TooSlow`]
    /// when the body falls behind its pace and with [`BodyError::Stopping`] when the
    /// server stops while the body is still arriving; data that has arrived is always
    /// taken first.
    pub async fn next_chunk(&self) -> Option<Result<Bytes, BodyError>> {
        let start = *self.reading().clock.get_or_insert_with(Instant::now);
        loop {
            let deadline = self.0.pace.deadline(start, self.reading().received);
            let frame = tokio::select! {
                biased;
                frame = poll_fn(|cx| self.poll_frame(cx)) => frame,
                () = sleep_until(deadline) => return Some(Err(self.refuse(BodyError::TooSlow))),
                () = self.0.stopping.cancelled() => {
                    return Some(Err(self.refuse(BodyError::Stopping)));
                }
            };
            match frame {
                None => return None,
                Some(Err(error)) => return Some(Err(BodyError::Failed(error))),
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => return Some(Ok(data)),
            }
        }
    }

    /// Called by the accept loop with the answer to the request: when the body was not
    /// read to its end, the answer closes the connection (`Connection: close`), and the
    /// rest of the body is read and thrown away first ([`DRAIN_BYTES`], [`DRAIN_TIME`]),
    /// so that a client still sending receives the answer instead of a reset. Not after
    /// a refusal for slowness or shutdown, nor when the client awaits a `100 Continue`
    /// that was never sent (it sends no body): then the connection just closes.
    pub fn after_answer(&self, response: &mut Response) {
        let mut reading = self.reading();
        let unread = reading
            .incoming
            .as_ref()
            .is_some_and(|incoming| !incoming.is_end_stream());
        if !unread {
            return;
        }
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let never_asked = self.0.expects_continue && reading.clock.is_none();
        if reading.refused || never_asked || self.0.stopping.is_cancelled() {
            // Dropping hyper's body makes it stop reading; the connection closes after
            // the answer.
            reading.incoming = None;
            return;
        }
        drop(reading);
        tokio::spawn(self.clone().drain());
    }

    /// Reads the rest of the body and throws it away, within the drain limits and until
    /// the server stops.
    async fn drain(self) {
        let deadline = Instant::now() + DRAIN_TIME;
        let mut discarded: u64 = 0;
        while discarded <= DRAIN_BYTES {
            tokio::select! {
                biased;
                frame = poll_fn(|cx| self.poll_frame(cx)) => match frame {
                    Some(Ok(data)) => discarded += data.len() as u64,
                    None | Some(Err(_)) => return,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = self.0.stopping.cancelled() => break,
            }
        }
        tracing::debug!(discarded, "gave up draining a request body");
        self.reading().incoming = None;
    }

    /// Polls hyper's body for its next data, counting it; trailers are skipped.
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, hyper::Error>>> {
        let mut reading = self.reading();
        loop {
            let Some(incoming) = reading.incoming.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(incoming).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    reading.incoming = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    reading.incoming = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = Frame::into_data(frame) {
                        reading.received += data.len() as u64;
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
            }
        }
    }

    /// Marks the body as given up (no drain after the answer) and answers `error`.
    fn refuse(&self, error: BodyError) -> BodyError {
        self.reading().refused = true;
        error
    }

    fn reading(&self) -> MutexGuard<'_, Reading> {
        self.0
            .reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Completes at `deadline`, or never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_moves_by_one_second_per_rate_of_bytes_after_the_grace() {
        let pace = BodyPace {
            grace: Duration::from_secs(10),
            min_bytes_per_second: 500,
        };
        let start = Instant::now();
        assert_eq!(
            pace.deadline(start, 0),
            Some(start + Duration::from_secs(10))
        );
        assert_eq!(
            pace.deadline(start, 250),
            Some(start + Duration::from_millis(10_500))
        );
        assert_eq!(
            pace.deadline(start, 5_000),
            Some(start + Duration::from_secs(20))
        );
    }

    #[test]
    fn a_zero_rate_sets_no_deadline() {
        let pace = BodyPace {
            grace: Duration::from_secs(10),
            min_bytes_per_second: 0,
        };
        assert_eq!(pace.deadline(Instant::now(), 0), None);
    }
}
