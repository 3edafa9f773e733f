//! A request body as the accept loop hands it to the handlers: read no slower than a
//! minimum rate (or answered 408), and given up at shutdown (503).
//!
//! The accept loop wraps hyper's body in a [`RequestBody`] and puts it into the request's
//! extensions; the handler reads it through [`crate::http::Request`].

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// A request's body. Cloning it clones the handle, not the body.
#[derive(Clone)]
pub struct RequestBody(Arc<Shared>);

struct Shared {
    pace: BodyPace,
    stopping: CancellationToken,
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
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl RequestBody {
    /// Wraps hyper's body of a request; `stopping` is cancelled when the server stops.
    pub fn new(incoming: Incoming, pace: BodyPace, stopping: CancellationToken) -> RequestBody {
        RequestBody(Arc::new(Shared {
            pace,
            stopping,
            reading: Mutex::new(Reading {
                incoming: Some(incoming),
                received: 0,
                clock: None,
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
                () = sleep_until(deadline) => return Some(Err(BodyError::TooSlow)),
                () = self.0.stopping.cancelled() => {
                    return Some(Err(BodyError::Stopping));
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
