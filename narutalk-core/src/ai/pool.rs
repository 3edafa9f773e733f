//! The AI pool: the threads that run responders, owned by whoever creates the pool (the
//! `Narutalk` handle), never a process global.
//!
//! A responder blocks for a whole model call (up to `NARUTALK_AI_TIMEOUT_SECONDS`), so it
//! runs on a thread of its own rather than on a thread that database work needs: at most
//! `NARUTALK_AI_CONCURRENCY` (default [`DEFAULT_CONCURRENCY`]) at once, up to [`QUEUE`]
//! more waiting, and beyond that a turn is refused at once with [`Busy`], whose stored
//! reason is [`super::ASSISTANT_BUSY`] (`From<Busy> for AiError`).
//!
//! - The threads (`narutalk-ai-N`) start lazily, one when a turn finds none idle, up to
//!   the bound, and are kept. Dropping the pool lets the running calls finish, tells the
//!   waiters of the queued ones [`JobLost::Cancelled`](crate::workers::JobLost::Cancelled),
//!   and joins the threads.
//! - A turn's answer comes back as a [`Completion`], a future that needs no particular
//!   runtime: an async server awaits it holding no thread; a blocking caller calls
//!   [`Completion::wait`].
//! - `NARUTALK_AI_TIMEOUT_SECONDS` covers the responder's call, not the wait in the
//!   queue: each responder bounds its own call from the moment a pool thread makes it.
//! - The gauge [`crate::metrics::AI_POOL_QUEUED`] follows the queued jobs, and
//!   [`crate::metrics::AI_RUNNING`] the responders running ([`AiPool::respond`]'s, and the
//!   turn engine's, which counts its own around each responder call).
//!
//! ```
//! use std::sync::Arc;
//! use narutalk_core::ai::pool::AiPool;
//! use narutalk_core::ai::{AiRequest, TemplateResponder};
//! use narutalk_core::chat::{Category, SessionId};
//!
//! let pool = AiPool::new(4);
//! let request = AiRequest {
//!     session_id: SessionId::new_random(),
//!     category: Category::General,
//!     history: Vec::new(),
//!     message: "hello".into(),
//! };
//! let turn = pool.respond(Arc::new(TemplateResponder), request, |_delta| {});
//! let reply = turn.expect("the pool is idle").wait().expect("the pool still runs");
//! assert!(reply.is_ok());
//! ```

use std::sync::Arc;

use super::{AiError, AiReply, AiRequest, Responder, run_responder};
use crate::config::Config;
use crate::metrics;
use crate::workers::{Busy, Completion, Shape, Workers};

/// Responders running at once by default (`NARUTALK_AI_CONCURRENCY`).
pub const DEFAULT_CONCURRENCY: u32 = 64;

/// Turns that may wait for a place beyond those running; one more is refused.
pub const QUEUE: usize = 1024;

/// Runs responders on a bounded set of threads. Dropping it finishes the running calls and
/// cancels the queued ones.
pub struct AiPool {
    workers: Workers<()>,
}

impl AiPool {
    /// A pool running `concurrency` responders at once (at least 1), with [`QUEUE`]
    /// waiting places. No thread starts before the first turn.
    pub fn new(concurrency: usize) -> AiPool {
        AiPool::with_queue(concurrency, QUEUE)
    }

    /// A pool running `concurrency` responders at once with `queue` waiting places.
    pub fn with_queue(concurrency: usize, queue: usize) -> AiPool {
        AiPool {
            workers: Workers::new(Shape {
                name: "narutalk-ai",
                threads: concurrency,
                queue,
                release_after: None,
                on_start: || {},
                queued_gauge: Some(metrics::AI_POOL_QUEUED),
                // Counted around the responder calls themselves: a job of the turn engine
                // also stores its reply.
                running_gauge: None,
            }),
        }
    }

    /// The pool `NARUTALK_AI_CONCURRENCY` describes.
    pub fn from_config(config: &Config) -> AiPool {
        AiPool::new(usize::try_from(config.ai_concurrency).unwrap_or(usize::MAX))
    }

    /// Queues one turn: `responder` answers `request` on a pool thread through
    /// [`run_responder`] (so a panic or a blank reply is an [`AiError`]), calling
    /// `on_delta` on that thread with each piece of streamed text. [`Busy`] at once when
    /// the pool is full.
    pub fn respond(
        &self,
        responder: Arc<dyn Responder>,
        request: AiRequest,
        mut on_delta: impl FnMut(&str) + Send + 'static,
    ) -> Result<Completion<Result<AiReply, AiError>>, Busy> {
        self.submit(move || {
            let _running = metrics::GaugeHold::new(metrics::AI_RUNNING);
            run_responder(responder.as_ref(), &request, &mut on_delta)
        })
    }

    /// Queues any blocking job that belongs with the AI calls; [`Busy`] at once when the
    /// pool is full. A job that panics gives
    /// [`JobLost::Panicked`](crate::workers::JobLost::Panicked).
    pub fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Completion<T>, Busy> {
        self.workers.submit(move |_: &mut ()| job())
    }

    /// Turns running now.
    pub fn running(&self) -> usize {
        self.workers.running()
    }

    /// Turns waiting for a place now.
    pub fn queued(&self) -> usize {
        self.workers.queued()
    }

    /// Threads started so far (they are kept).
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// Turns that run at once.
    pub fn concurrency(&self) -> usize {
        self.workers.bounds().0
    }
}

impl std::fmt::Debug for AiPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (concurrency, queue) = self.workers.bounds();
        f.debug_struct("AiPool")
            .field("concurrency", &concurrency)
            .field("queue", &queue)
            .field("running", &self.running())
            .field("queued", &self.queued())
            .finish()
    }
}

impl From<Busy> for AiError {
    /// The stored failure of a turn the pool refused: [`super::ASSISTANT_BUSY`].
    fn from(_: Busy) -> AiError {
        AiError::new(super::ASSISTANT_BUSY)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::ai::fake_service::{Answer, FakeService};
    use crate::ai::http::HttpResponder;
    use crate::ai::{AiRequest, TemplateResponder};
    use crate::chat::{Category, SessionId};
    use crate::workers::JobLost;
    use crate::workers::tests::{Latch, block_on};

    fn request(message: &str) -> AiRequest {
        AiRequest {
            session_id: SessionId::new_random(),
            category: Category::Medical,
            history: Vec::new(),
            message: message.into(),
        }
    }

    /// A responder that streams two pieces, after waiting for its latch.
    struct Held(Latch);

    impl Responder for Held {
        fn name(&self) -> &str {
            "held"
        }

        fn respond(
            &self,
            request: &AiRequest,
            on_delta: &mut dyn FnMut(&str),
        ) -> Result<AiReply, AiError> {
            self.0.wait();
            on_delta("re: ");
            on_delta(&request.message);
            Ok(AiReply {
                content: format!("re: {}", request.message),
                ..AiReply::default()
            })
        }
    }

    #[test]
    fn the_default_pool_runs_64_turns_and_queues_1024_more() {
        let pool = AiPool::from_config(&Config::default());
        assert_eq!(pool.concurrency(), 64);
        assert_eq!(pool.workers.bounds(), (64, QUEUE));
        assert_eq!(QUEUE, 1024);
        assert_eq!(pool.threads(), 0, "threads start with the first turn");
    }

    #[test]
    fn a_turn_runs_on_an_ai_thread_and_its_deltas_come_from_there() {
        let pool = AiPool::new(2);
        let deltas = Arc::new(Mutex::new(Vec::new()));
        let latch = Latch::default();
        latch.open();
        let turn = pool
            .respond(Arc::new(Held(latch)), request("hi"), {
                let deltas = deltas.clone();
                move |delta| {
                    let thread = std::thread::current().name().map(str::to_owned);
                    deltas.lock().unwrap().push((delta.to_owned(), thread));
                }
            })
            .unwrap();
        assert_eq!(turn.wait().unwrap().unwrap().content, "re: hi");
        let thread = Some("narutalk-ai-0".to_owned());
        assert_eq!(
            *deltas.lock().unwrap(),
            [
                ("re: ".to_owned(), thread.clone()),
                ("hi".to_owned(), thread)
            ]
        );
    }

    #[test]
    fn beyond_the_concurrency_and_the_queue_a_turn_is_refused_as_assistant_busy() {
        let pool = AiPool::with_queue(2, 3);
        let latch = Latch::default();
        let responder: Arc<dyn Responder> = Arc::new(Held(latch.clone()));
        let held: Vec<_> = (0..5)
            .map(|n| {
                pool.respond(responder.clone(), request(&n.to_string()), |_| {})
                    .unwrap()
            })
            .collect();
        let refused = pool
            .respond(responder.clone(), request("one too many"), |_| {})
            .unwrap_err();
        assert_eq!(AiError::from(refused).reason(), "assistant busy");
        while pool.running() < 2 {
            std::thread::yield_now();
        }
        assert_eq!((pool.running(), pool.queued()), (2, 3));
        latch.open();
        let replies: Vec<String> = held
            .into_iter()
            .map(|turn| turn.wait().unwrap().unwrap().content)
            .collect();
        assert_eq!(replies, ["re: 0", "re: 1", "re: 2", "re: 3", "re: 4"]);
    }

    #[test]
    fn a_turn_is_awaited_as_a_future_with_no_runtime() {
        let pool = AiPool::new(1);
        let turn = pool
            .respond(Arc::new(TemplateResponder), request("두통"), |_| {})
            .unwrap();
        let reply = block_on(turn).unwrap().unwrap();
        assert_eq!(reply.content, TemplateResponder::reply_for("두통"));
    }

    #[test]
    fn a_panicking_responder_is_a_failed_turn_not_a_lost_thread() {
        struct Panicking;
        impl Responder for Panicking {
            fn name(&self) -> &str {
                "panicking"
            }
            fn respond(&self, _: &AiRequest, _: &mut dyn FnMut(&str)) -> Result<AiReply, AiError> {
                panic!("a bug in a responder")
            }
        }
        let pool = AiPool::new(1);
        let failed = pool
            .respond(Arc::new(Panicking), request("x"), |_| {})
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(failed.unwrap_err().reason(), "responder failed");
        let after = pool
            .respond(Arc::new(TemplateResponder), request("y"), |_| {})
            .unwrap()
            .wait()
            .unwrap();
        assert!(after.is_ok());
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn dropping_the_pool_cancels_the_queued_turns_after_finishing_the_running_one() {
        let pool = AiPool::new(1);
        let latch = Latch::default();
        let running = pool
            .respond(Arc::new(Held(latch.clone())), request("first"), |_| {})
            .unwrap();
        while pool.running() == 0 {
            std::thread::yield_now();
        }
        let queued = pool
            .respond(Arc::new(TemplateResponder), request("second"), |_| {})
            .unwrap();
        let dropping = std::thread::spawn(move || drop(pool));
        assert_eq!(queued.wait().unwrap_err(), JobLost::Cancelled);
        latch.open();
        assert_eq!(running.wait().unwrap().unwrap().content, "re: first");
        dropping.join().unwrap();
    }

    #[test]
    fn the_ai_timeout_covers_the_call_not_the_wait_in_the_queue() {
        // A service that answers at once, asked with a 1 s timeout by a turn that waits
        // in the queue for longer than that behind a turn holding the only thread.
        let service = FakeService::start(|_| Answer::json(200, &json!({"reply": "prompt"})));
        let responder = Arc::new(HttpResponder::new(service.url("/"), Duration::from_secs(1)));
        let pool = AiPool::new(1);
        let latch = Latch::default();
        let blocker = pool
            .respond(Arc::new(Held(latch.clone())), request("first"), |_| {})
            .unwrap();
        let queued = pool.respond(responder, request("second"), |_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        latch.open();
        blocker.wait().unwrap().unwrap();
        assert_eq!(queued.wait().unwrap().unwrap().content, "prompt");
    }
}
