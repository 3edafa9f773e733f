//! Bounded pools of named worker threads, each owned by whoever creates it (never a
//! process global): the AI pool ([`crate::ai::pool::AiPool`]) and the password hashing
//! ([`crate::accounts::password::PasswordHashing`]) are built on one.
//!
//! A pool runs at most `threads` jobs at once and keeps at most `queue` more waiting;
//! beyond that a submission is refused at once ([`Busy`]), so a flood never grows a queue
//! without bound. Threads start lazily, one when a job finds no idle thread, up to the
//! bound, and are kept. Dropping the pool lets the running jobs finish, tells the waiter
//! of each queued job that it was cancelled ([`JobLost::Cancelled`]) and joins the
//! threads.
//!
//! A job's result comes back through a [`Completion`]: a future that needs no particular
//! runtime (it is woken through the standard [`Waker`]), so an async server awaits it
//! holding no thread, while a blocking caller calls [`Completion::wait`]. It is a small
//! one-shot of its own rather than `futures-channel`'s: the blocking wait is a condition
//! variable on the same slot, so blocking on it needs no executor, and the core gains no
//! dependency.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics;

/// A submission refused because every worker is busy and the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("busy: every worker is running a job and the queue is full")]
pub struct Busy;

/// Why a job gave no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobLost {
    /// The pool was dropped while the job was still queued: it never ran.
    #[error("the job was cancelled: its pool stopped before running it")]
    Cancelled,
    /// The job panicked (its worker thread goes on).
    #[error("the job panicked")]
    Panicked,
}

/// The result of a submitted job, once it has run: await it (any runtime), or block on
/// it with [`Completion::wait`].
///
/// Polling it again after it gave its result is a misuse: it then stays pending.
#[must_use = "a completion does nothing unless awaited or waited for"]
pub struct Completion<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Completion<T> {
    /// Blocks the calling thread until the job has run (or is lost).
    pub fn wait(self) -> Result<T, JobLost> {
        let mut state = self.slot.lock();
        loop {
            if let Some(outcome) = state.outcome.take() {
                return outcome;
            }
            state = self
                .slot
                .done
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Like [`Completion::wait`], but gives up after `timeout`: `None` if the job has
    /// not finished by then (the completion can still be waited for again).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<T, JobLost>> {
        let state = self.slot.lock();
        let (mut state, _) = self
            .slot
            .done
            .wait_timeout_while(state, timeout, |state| state.outcome.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.outcome.take()
    }

    /// Whether the job's result is ready (it has run, or is lost).
    pub fn is_finished(&self) -> bool {
        self.slot.lock().outcome.is_some()
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T, JobLost>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.lock();
        if let Some(outcome) = state.outcome.take() {
            return Poll::Ready(outcome);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(context.waker()) => {}
            waker => *waker = Some(context.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> std::fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The producing end of a [`Completion`]: it gives the outcome once; dropped without
/// giving one (a queued job dropped unrun, a waiter nobody answers), it gives
/// [`JobLost::Cancelled`].
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> Completer<T> {
    /// Gives the outcome to the completion.
    pub(crate) fn finish(mut self, outcome: Result<T, JobLost>) {
        if let Some(slot) = self.slot.take() {
            slot.fill(outcome);
        }
    }

    /// True when the completion was dropped: nobody waits for the outcome any more.
    pub(crate) fn abandoned(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|slot| Arc::strong_count(slot) == 1)
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.fill(Err(JobLost::Cancelled));
        }
    }
}

/// The one-shot slot a [`Completer`] fills and a [`Completion`] reads.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    done: Condvar,
}

struct SlotState<T> {
    outcome: Option<Result<T, JobLost>>,
    /// The task that awaits the completion, if one polled it.
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fill(&self, outcome: Result<T, JobLost>) {
        let waker = {
            let mut state = self.lock();
            state.outcome = Some(outcome);
            state.waker.take()
        };
        self.done.notify_all();
        // Woken outside the lock: the woken task may poll at once, on another thread.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A new completion and the completer that fills it.
pub(crate) fn completion<T>() -> (Completer<T>, Completion<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            outcome: None,
            waker: None,
        }),
        done: Condvar::new(),
    });
    (
        Completer {
            slot: Some(slot.clone()),
        },
        Completion { slot },
    )
}

/// What a pool is: its bounds, its threads' name and habits, and its gauges.
pub(crate) struct Shape {
    /// The threads' name prefix: the threads are `{name}-0`, `{name}-1`, ...
    pub(crate) name: &'static str,
    /// Jobs that run at once: the most threads the pool starts (at least 1).
    pub(crate) threads: usize,
    /// Jobs that may wait beyond those running.
    pub(crate) queue: usize,
    /// How long a thread keeps its state (its `S`) without a job before resetting it to
    /// `S::default()`, so that an idle pool gives back what its jobs left there; `None`
    /// keeps it for the thread's life.
    pub(crate) release_after: Option<Duration>,
    /// Run by each thread as it starts (such as lowering its priority).
    pub(crate) on_start: fn(),
    /// The gauge of queued jobs, if any.
    pub(crate) queued_gauge: Option<&'static str>,
    /// The gauge of running jobs, if any.
    pub(crate) running_gauge: Option<&'static str>,
}

/// A job, given its thread's state.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A bounded pool of worker threads, each with its own state `S` (working memory that
/// jobs reuse, or `()`).
pub(crate) struct Workers<S: Default + 'static> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    shape: Shape,
    inner: Mutex<Inner<S>>,
    /// Signalled when a job is queued for an idle thread, and when the pool closes.
    posted: Condvar,
}

struct Inner<S> {
    queue: VecDeque<Job<S>>,
    /// Jobs being run.
    running: usize,
    /// Threads started.
    started: usize,
    /// Threads waiting for a job (some perhaps already signalled): each queued job up to
    /// this many has a thread that will take it.
    idle: usize,
    closing: bool,
    handles: Vec<JoinHandle<()>>,
}

impl<S: Default + 'static> Workers<S> {
    /// A pool of `shape`; no thread starts before the first job.
    pub(crate) fn new(mut shape: Shape) -> Self {
        shape.threads = shape.threads.max(1);
        Workers {
            shared: Arc::new(Shared {
                shape,
                inner: Mutex::new(Inner {
                    queue: VecDeque::new(),
                    running: 0,
                    started: 0,
                    idle: 0,
                    closing: false,
                    handles: Vec::new(),
                }),
                posted: Condvar::new(),
            }),
        }
    }

    /// Queues `job` to run on one of the threads, given that thread's state; [`Busy`] at
    /// once when the pool already holds as many jobs as it runs and queues (or when it
    /// has no thread and cannot start one). A job that panics gives
    /// [`JobLost::Panicked`], and its thread goes on.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut S) -> T + Send + 'static,
    ) -> Result<Completion<T>, Busy> {
        let (completer, completion) = completion();
        let job: Job<S> = Box::new(move |state: &mut S| {
            let outcome =
                catch_unwind(AssertUnwindSafe(|| job(state))).map_err(|_| JobLost::Panicked);
            completer.finish(outcome);
        });
        let shape = &self.shared.shape;
        let mut inner = self.shared.lock();
        if inner.running + inner.queue.len() >= shape.threads + shape.queue {
            // Dropped outside the lock: dropping a job runs its captures' destructors.
            drop(inner);
            drop(job);
            return Err(Busy);
        }
        inner.queue.push_back(job);
        gauge_add(shape.queued_gauge, 1.0);
        if inner.idle >= inner.queue.len() {
            self.shared.posted.notify_one();
        } else if inner.started < shape.threads {
            let worker = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{}", shape.name, inner.started))
                .spawn(move || worker.work());
            match spawned {
                Ok(handle) => {
                    inner.started += 1;
                    inner.handles.push(handle);
                }
                // No thread could start and none runs: nothing would ever take the job.
                Err(_) if inner.started == 0 => {
                    let job = inner.queue.pop_back();
                    gauge_add(shape.queued_gauge, -1.0);
                    drop(inner);
                    drop(job);
                    return Err(Busy);
                }
                // A running thread takes it when done.
                Err(_) => {}
            }
        }
        Ok(completion)
    }

    /// Jobs running now.
    pub(crate) fn running(&self) -> usize {
        self.shared.lock().running
    }

    /// Jobs waiting for a thread now.
    pub(crate) fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Threads started so far.
    pub(crate) fn threads(&self) -> usize {
        self.shared.lock().started
    }

    /// The pool's bounds: (jobs at once, jobs queued beyond them).
    pub(crate) fn bounds(&self) -> (usize, usize) {
        (self.shared.shape.threads, self.shared.shape.queue)
    }
}

impl<S: Default + 'static> Drop for Workers<S> {
    /// Cancels the queued jobs, lets the running ones finish and joins the threads.
    fn drop(&mut self) {
        let (cancelled, handles) = {
            let mut inner = self.shared.lock();
            inner.closing = true;
            (
                std::mem::take(&mut inner.queue),
                std::mem::take(&mut inner.handles),
            )
        };
        gauge_add(self.shared.shape.queued_gauge, -(cancelled.len() as f64));
        self.shared.posted.notify_all();
        // Each one's waiter hears `Cancelled`.
        drop(cancelled);
        // A job may hold the last owner of the pool, so the pool may be dropped on one of
        // its own threads: that thread cannot wait for itself, and ends after the job.
        let current = std::thread::current().id();
        for handle in handles {
            if handle.thread().id() != current {
                let _ = handle.join();
            }
        }
    }
}

impl<S: Default> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A thread's life: its start hook, then the jobs as they come, until the pool closes.
    fn work(&self) {
        (self.shape.on_start)();
        let mut state = S::default();
        // Whether a job has run since the state was last reset.
        let mut used = false;
        let mut inner = self.lock();
        loop {
            if let Some(job) = inner.queue.pop_front() {
                inner.running += 1;
                drop(inner);
                gauge_add(self.shape.queued_gauge, -1.0);
                gauge_add(self.shape.running_gauge, 1.0);
                // Never unwinds: the job catches its own panic.
                job(&mut state);
                used = true;
                gauge_add(self.shape.running_gauge, -1.0);
                inner = self.lock();
                inner.running -= 1;
                continue;
            }
            if inner.closing {
                return;
            }
            inner.idle += 1;
            match self.shape.release_after.filter(|_| used) {
                Some(patience) => {
                    let (next, waited) = self
                        .posted
                        .wait_timeout(inner, patience)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    inner = next;
                    inner.idle -= 1;
                    if waited.timed_out() && inner.queue.is_empty() {
                        // Reset outside the lock: the old state may take a while to free.
                        drop(inner);
                        state = S::default();
                        used = false;
                        inner = self.lock();
                    }
                }
                None => {
                    inner = self
                        .posted
                        .wait(inner)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    inner.idle -= 1;
                }
            }
        }
    }
}

/// Adds `delta` to the gauge `name`, if the pool has one.
fn gauge_add(name: Option<&'static str>, delta: f64) {
    if let Some(name) = name {
        metrics::gauge_add(name, delta);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::task::Wake;

    use super::*;

    /// Runs `future` to its end on this thread: a minimal executor, to show that a
    /// [`Completion`] needs no particular runtime.
    pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::park();
        }
    }

    /// A latch that jobs wait on until the test opens it.
    #[derive(Clone, Default)]
    pub(crate) struct Latch(Arc<(Mutex<bool>, Condvar)>);

    impl Latch {
        pub(crate) fn open(&self) {
            *self.0.0.lock().unwrap() = true;
            self.0.1.notify_all();
        }

        pub(crate) fn wait(&self) {
            let open = self.0.0.lock().unwrap();
            let _open = self.0.1.wait_while(open, |open| !*open).unwrap();
        }
    }

    fn shape(threads: usize, queue: usize) -> Shape {
        Shape {
            name: "narutalk-test",
            threads,
            queue,
            release_after: None,
            on_start: || {},
            queued_gauge: None,
            running_gauge: None,
        }
    }

    /// Waits (yielding) until `condition` holds: for counters a worker updates just after
    /// its job's result was given.
    fn until(condition: impl Fn() -> bool) {
        while !condition() {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_job_runs_on_a_named_thread_of_the_pool_and_gives_its_result() {
        let workers = Workers::<()>::new(shape(2, 4));
        let name = workers
            .submit(|_| std::thread::current().name().map(str::to_owned))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(name.as_deref(), Some("narutalk-test-0"));
    }

    #[test]
    fn threads_start_lazily_up_to_the_bound_and_are_kept() {
        let workers = Workers::<()>::new(shape(3, 8));
        assert_eq!(workers.threads(), 0, "no thread before the first job");
        workers.submit(|_| ()).unwrap().wait().unwrap();
        until(|| workers.running() == 0);
        workers.submit(|_| ()).unwrap().wait().unwrap();
        assert_eq!(workers.threads(), 1, "an idle thread takes the next job");
        let latch = Latch::default();
        let held: Vec<_> = (0..6)
            .map(|_| {
                let latch = latch.clone();
                workers.submit(move |_| latch.wait()).unwrap()
            })
            .collect();
        until(|| workers.running() == 3);
        assert_eq!(workers.threads(), 3, "never more threads than the bound");
        assert_eq!(workers.queued(), 3);
        latch.open();
        for completion in held {
            completion.wait().unwrap();
        }
        assert_eq!(workers.threads(), 3, "threads are kept");
    }

    #[test]
    fn beyond_the_running_and_the_queued_a_job_is_refused_at_once() {
        let workers = Workers::<()>::new(shape(2, 3));
        let latch = Latch::default();
        let held: Vec<_> = (0..5)
            .map(|_| {
                let latch = latch.clone();
                workers.submit(move |_| latch.wait()).unwrap()
            })
            .collect();
        assert_eq!(workers.submit(|_| ()).err(), Some(Busy));
        until(|| workers.running() == 2);
        assert_eq!(workers.submit(|_| ()).err(), Some(Busy));
        latch.open();
        for completion in held {
            completion.wait().unwrap();
        }
        until(|| workers.running() == 0);
        assert_eq!(workers.submit(|_| 7).unwrap().wait(), Ok(7));
    }

    #[test]
    fn no_more_jobs_run_at_once_than_the_bound() {
        let workers = Workers::<()>::new(shape(3, 1000));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let completions: Vec<_> = (0..200)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                workers
                    .submit(move |_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .unwrap()
            })
            .collect();
        for completion in completions {
            completion.wait().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn a_panicking_job_is_lost_and_its_thread_goes_on() {
        let workers = Workers::<()>::new(shape(1, 1));
        let lost = workers
            .submit(|_| -> u8 { panic!("a bug in a job") })
            .unwrap();
        assert_eq!(lost.wait(), Err(JobLost::Panicked));
        assert_eq!(workers.submit(|_| 1).unwrap().wait(), Ok(1));
        assert_eq!(workers.threads(), 1);
    }

    #[test]
    fn a_completion_is_awaited_without_a_runtime_and_without_blocking_a_thread_on_it() {
        let workers = Workers::<()>::new(shape(1, 1));
        let latch = Latch::default();
        let completion = {
            let latch = latch.clone();
            workers
                .submit(move |_| {
                    latch.wait();
                    "done"
                })
                .unwrap()
        };
        let opener = std::thread::spawn(move || latch.open());
        assert_eq!(block_on(completion), Ok("done"));
        opener.join().unwrap();
    }

    #[test]
    fn a_completion_polled_before_the_job_ran_is_woken_when_it_has() {
        let workers = Workers::<()>::new(shape(1, 1));
        let latch = Latch::default();
        let mut completion = {
            let latch = latch.clone();
            workers.submit(move |_| latch.wait()).unwrap()
        };
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut context = Context::from_waker(&waker);
        assert!(Pin::new(&mut completion).poll(&mut context).is_pending());
        assert!(completion.wait_timeout(Duration::ZERO).is_none());
        latch.open();
        until(|| woken.0.load(Ordering::SeqCst) == 1);
        assert_eq!(
            Pin::new(&mut completion).poll(&mut context),
            Poll::Ready(Ok(()))
        );
    }

    #[test]
    fn dropping_the_pool_finishes_the_running_jobs_and_cancels_the_queued_ones() {
        let workers = Workers::<()>::new(shape(1, 4));
        let (started, running) = mpsc::channel();
        let latch = Latch::default();
        let first = {
            let latch = latch.clone();
            workers
                .submit(move |_| {
                    started.send(()).unwrap();
                    latch.wait();
                    "finished"
                })
                .unwrap()
        };
        let queued: Vec<_> = (0..3)
            .map(|n| workers.submit(move |_| n).unwrap())
            .collect();
        running.recv().unwrap();
        let dropping = std::thread::spawn(move || drop(workers));
        // The queued jobs are cancelled before the pool waits for the running one.
        for completion in queued {
            assert_eq!(completion.wait(), Err(JobLost::Cancelled));
        }
        assert!(
            !dropping.is_finished(),
            "the drop waits for the running job"
        );
        latch.open();
        assert_eq!(first.wait(), Ok("finished"));
        dropping.join().unwrap();
    }

    #[test]
    fn a_pool_dropped_on_its_own_thread_does_not_wait_for_itself() {
        let workers = Arc::new(Workers::<()>::new(shape(1, 1)));
        let (sender, receiver) = mpsc::channel::<Arc<Workers<()>>>();
        let last_owner = workers
            .submit(move |_| {
                // The job ends up holding the last owner and drops it on the pool's thread.
                let workers = receiver.recv().unwrap();
                drop(workers);
                "dropped"
            })
            .unwrap();
        sender.send(workers).unwrap();
        assert_eq!(last_owner.wait(), Ok("dropped"));
    }

    #[test]
    fn a_thread_keeps_its_state_between_jobs_and_resets_it_once_idle() {
        let mut shape = shape(1, 1);
        shape.release_after = Some(Duration::from_millis(20));
        let workers = Workers::<Vec<u8>>::new(shape);
        let latch = Latch::default();
        let grown = {
            let latch = latch.clone();
            workers
                .submit(move |memory| {
                    memory.resize(16, 1);
                    latch.wait();
                    memory.len()
                })
                .unwrap()
        };
        // Queued while the first runs, so the thread takes it without idling in between.
        let next = workers.submit(|memory| memory.len()).unwrap();
        latch.open();
        assert_eq!(grown.wait(), Ok(16));
        assert_eq!(
            next.wait(),
            Ok(16),
            "the next job finds the state as it was left"
        );
        // Left idle for longer than `release_after`, the thread resets its state.
        let mut length = 16;
        while length != 0 {
            std::thread::sleep(Duration::from_millis(30));
            length = workers
                .submit(|memory| memory.len())
                .unwrap()
                .wait()
                .unwrap();
        }
    }

    #[test]
    fn every_thread_runs_the_start_hook() {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let mut shape = shape(2, 2);
        shape.on_start = || {
            STARTED.fetch_add(1, Ordering::SeqCst);
        };
        let workers = Workers::<()>::new(shape);
        let latch = Latch::default();
        let held: Vec<_> = (0..2)
            .map(|_| {
                let latch = latch.clone();
                workers.submit(move |_| latch.wait()).unwrap()
            })
            .collect();
        until(|| workers.running() == 2);
        latch.open();
        for completion in held {
            completion.wait().unwrap();
        }
        drop(workers);
        assert_eq!(STARTED.load(Ordering::SeqCst), 2);
    }
}
