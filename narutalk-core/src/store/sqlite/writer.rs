//! The single writer connection, with group commit and a deadline on every write.
//!
//! Every write runs on one connection, one at a time, in a `BEGIN IMMEDIATE` transaction.
//! At `synchronous=FULL` the cost of a write is its commit (an fsync of the WAL), so
//! writes that arrive while another is running share a commit instead of queueing for one
//! each:
//!
//! - A write runs inside a savepoint of the open transaction (a `BEGIN IMMEDIATE` opens
//!   one when there is none). Its own failure, or panic, rolls back to its savepoint and
//!   touches nothing else of the batch.
//! - When it is done and other writers are already waiting for the connection, it leaves
//!   the transaction open and hands the connection on; the last write of the batch (no
//!   writer waiting, or [`MAX_BATCH`] writes in it) commits, and every write of the batch
//!   returns only then. Nothing is acknowledged before the commit that makes it durable,
//!   and a failed commit fails every write of its batch.
//! - A write that arrives alone commits alone: grouping never delays a write to wait for
//!   company, so a lone request costs exactly what it did without batching.
//!
//! Every write carries a deadline (the caller's; [`crate::store::WRITE_DEADLINE`] after it asked
//! for the database). A write still waiting for the connection at its deadline answers
//! [`Error::Unavailable`] and never runs, even if it is handed the connection later (it
//! then only passes the open batch on, or commits it for the writes already in it). The
//! busy handler, which waits for another process's lock, never waits past the earliest
//! deadline of the writes in the batch. A write that has run waits for its batch's commit
//! whatever the time: once its changes are in the transaction, only the commit can say
//! whether they are applied, and the commit of a batch already holding the lock does not
//! wait for anyone.
//!
//! The writer also remembers whether writes are failing for a database cause (busy or
//! locked past the deadline, full, I/O error, read-only: every [`Error::Unavailable`] that
//! SQLite reports), from such a failure until a batch that changed something commits.
//! A wait in this writer's own queue is not a database cause.
//!
//! Writes of one batch see each other's changes (they run one after another on one
//! connection); readers see none of them until the commit.

use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rusqlite::Connection;

use crate::error::Error;
use crate::metrics;

/// The most writes one commit carries. A bound keeps a batch's latency bounded under a
/// flood of writers: the writers beyond it form the next batch.
pub const MAX_BATCH: usize = 64;

/// What a write that waited past its deadline for the connection answers.
const QUEUED_PAST_DEADLINE: &str = "the write waited for the database past its deadline";

/// The write transaction a [`Writer::write`] closure runs in: the writer connection,
/// inside the write's savepoint. Only writes get one, so a function taking `&WriteTx` can
/// only be called where writing is allowed.
pub struct WriteTx<'c> {
    conn: &'c Connection,
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// The writer connection, the queue of writes waiting for it, and whether writes fail.
pub struct Writer {
    queue: Mutex<Queue>,
    /// Signalled whenever the connection goes back into the queue.
    returned: Condvar,
    /// Set by a write that failed for a database cause, cleared by a commit that changed
    /// something.
    failing: AtomicBool,
}

struct Queue {
    /// The connection and its open batch, while no writer holds them.
    free: Option<Held>,
    /// Writers waiting for `free`: the one holding it commits only when this is zero.
    waiting: usize,
}

/// The connection with the transaction it has open, moved to the writer whose turn it is.
struct Held {
    conn: Connection,
    batch: Option<Batch>,
}

/// The open transaction: how many writes it holds, where they wait for its commit, and
/// the earliest deadline among them.
struct Batch {
    writes: usize,
    commit: Arc<Commit>,
    deadline: Instant,
    /// Whether a kept write changed a row: only such a commit shows that writes work.
    changed: bool,
}

/// A writer's turn: the connection taken from the queue. Dropping it puts the
/// connection back and wakes a waiting writer.
struct Turn<'w> {
    writer: &'w Writer,
    held: Option<Held>,
}

/// The outcome of one batch's commit, for the writes waiting on it.
#[derive(Default)]
struct Commit {
    outcome: Mutex<Option<Result<(), StorageFailure>>>,
    done: Condvar,
}

/// A commit failure, kept in a form every write of the batch can turn into its own
/// [`Error`].
#[derive(Clone)]
struct StorageFailure {
    retryable: bool,
    message: String,
}

impl StorageFailure {
    fn of(error: &Error) -> StorageFailure {
        match error {
            Error::Unavailable(cause) => StorageFailure {
                retryable: true,
                message: cause.clone(),
            },
            Error::Internal(cause) => StorageFailure {
                retryable: false,
                message: format!("{cause:#}"),
            },
            other => StorageFailure {
                retryable: false,
                message: other.to_string(),
            },
        }
    }

    fn into_error(self) -> Error {
        if self.retryable {
            Error::Unavailable(self.message)
        } else {
            Error::internal(self.message)
        }
    }
}

/// What a write's closure left behind, decided before its savepoint is released.
enum Ran<T> {
    /// Keep its changes (they are committed with the batch) and answer `T` after the commit.
    Keep(T),
    /// Its changes are rolled back; answer this error at once.
    Discard(Error),
    /// It panicked; its changes are rolled back and the panic resumes after the batch is
    /// settled.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// A write whose savepoint could not be released or rolled back: the whole batch must go.
/// Carries the panic to resume, if the write panicked.
struct Broken(Error, Option<Box<dyn std::any::Any + Send>>);

impl Writer {
    /// Takes over `conn` (configured and migrated) as the writer.
    pub fn new(conn: Connection) -> Writer {
        Writer {
            queue: Mutex::new(Queue {
                free: Some(Held { conn, batch: None }),
                waiting: 0,
            }),
            returned: Condvar::new(),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether writes are failing for a database cause: true from such a failure until a
    /// later batch that changed something commits.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Runs `f` in the write transaction, unless `deadline` passes before the connection
    /// is free. `Ok(Ok(value))` keeps its changes; `Ok(Err(e))` keeps them too and answers
    /// `e` (for rules that record something while refusing); `Err(e)` rolls them back. The
    /// answer comes once the changes are committed. [`Error::Unavailable`] when the
    /// deadline passes first (waiting for the connection, or for another process's lock):
    /// then `f` has not run, or its changes are rolled back.
    pub fn write<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&WriteTx<'_>) -> Result<Result<T, Error>, Error>,
    ) -> Result<T, Error> {
        let asked = Instant::now();
        let answer = self.write_untimed(deadline, f);
        metrics::record_seconds(metrics::DB_WRITE_SECONDS, asked.elapsed());
        if matches!(answer, Err(Error::Unavailable(_))) {
            metrics::count(metrics::DB_WRITES_UNAVAILABLE);
        }
        answer
    }

    /// [`Writer::write`] without its metrics.
    fn write_untimed<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&WriteTx<'_>) -> Result<Result<T, Error>, Error>,
    ) -> Result<T, Error> {
        let Some(mut turn) = self.take_turn(deadline) else {
            return Err(Error::Unavailable(QUEUED_PAST_DEADLINE.into()));
        };
        let held = turn.held();
        let ran = if Instant::now() >= deadline {
            // Handed the connection too late: the write does not run, but an open batch
            // it was handed still needs passing on or committing (below).
            if held.batch.is_none() {
                return Err(Error::Unavailable(QUEUED_PAST_DEADLINE.into()));
            }
            Ran::Discard(Error::Unavailable(QUEUED_PAST_DEADLINE.into()))
        } else {
            if held.batch.is_none() {
                self.begin(held, deadline)?;
            }
            let Some(batch) = held.batch.as_mut() else {
                unreachable!("a batch is open once begun")
            };
            batch.deadline = batch.deadline.min(deadline);
            // Whatever this write waits for inside the transaction, it waits no longer
            // than the earliest deadline of the batch.
            let patience = batch.deadline.saturating_duration_since(Instant::now());
            let changes_before = held.conn.total_changes();
            let ran = match held
                .conn
                .busy_timeout(patience)
                .and_then(|()| held.conn.execute_batch("SAVEPOINT write"))
            {
                Ok(()) => run_in_savepoint(&held.conn, f),
                Err(error) => Ok(Ran::Discard(error.into())),
            };
            let ran = match ran {
                Ok(ran) => ran,
                Err(Broken(error, panic)) => {
                    // The write's savepoint could not be settled, so the batch holds
                    // changes nobody can vouch for: all of it is rolled back and fails.
                    self.note(&error);
                    let batch = held.batch.take();
                    let _ = held.conn.execute_batch("ROLLBACK");
                    drop(turn);
                    if let Some(batch) = batch {
                        batch.commit.settle(Err(StorageFailure::of(&error)));
                    }
                    return match panic {
                        Some(payload) => resume_unwind(payload),
                        None => Err(error),
                    };
                }
            };
            match &ran {
                Ran::Keep(_) if held.conn.total_changes() != changes_before => {
                    batch_of(held).changed = true;
                }
                Ran::Discard(error) => self.note(error),
                _ => {}
            }
            ran
        };
        let batch = batch_of(turn.held());
        let commit = batch.commit.clone();
        if matches!(ran, Ran::Keep(_)) {
            batch.writes += 1;
        }
        if batch.writes < MAX_BATCH {
            let mut queue = self.lock();
            if queue.waiting > 0 {
                // Another writer is about to take the connection; the last one commits.
                queue.free = turn.held.take();
                drop(queue);
                self.returned.notify_one();
                return match ran {
                    Ran::Keep(answer) => commit.wait().and(answer),
                    Ran::Discard(error) => Err(error),
                    Ran::Panicked(payload) => resume_unwind(payload),
                };
            }
        }

        let outcome = self.commit(turn.held());
        drop(turn);
        commit.settle(outcome.clone());
        match ran {
            Ran::Keep(answer) => outcome.map_err(StorageFailure::into_error).and(answer),
            Ran::Discard(error) => Err(error),
            Ran::Panicked(payload) => resume_unwind(payload),
        }
    }

    /// Waits for the connection until `deadline`; `None` when the deadline passes first.
    fn take_turn(&self, deadline: Instant) -> Option<Turn<'_>> {
        let mut queue = self.lock();
        queue.waiting += 1;
        loop {
            // The connection is taken whenever it is free, even past the deadline: a batch
            // handed on to the waiters must reach one of them.
            if let Some(held) = queue.free.take() {
                queue.waiting -= 1;
                return Some(Turn {
                    writer: self,
                    held: Some(held),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                queue.waiting -= 1;
                return None;
            }
            queue = self
                .returned
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Opens a batch with `BEGIN IMMEDIATE`, waiting for another process's lock until
    /// `deadline` at most.
    fn begin(&self, held: &mut Held, deadline: Instant) -> Result<(), Error> {
        let patience = deadline.saturating_duration_since(Instant::now());
        let begun = held
            .conn
            .busy_timeout(patience)
            .and_then(|()| held.conn.execute_batch("BEGIN IMMEDIATE"));
        if let Err(error) = begun {
            let error = Error::from(error);
            self.note(&error);
            return Err(error);
        }
        held.batch = Some(Batch {
            writes: 0,
            commit: Arc::default(),
            deadline,
            changed: false,
        });
        Ok(())
    }

    /// Commits the open batch (rolling it back when the commit fails) and closes it.
    fn commit(&self, held: &mut Held) -> Result<(), StorageFailure> {
        let batch = held.batch.take();
        let changed = batch.as_ref().is_some_and(|batch| batch.changed);
        if let Some(batch) = &batch {
            // At most MAX_BATCH: exact as a float.
            #[allow(clippy::cast_precision_loss)]
            metrics::record(metrics::DB_COMMIT_BATCH_WRITES, batch.writes as f64);
        }
        match held.conn.execute_batch("COMMIT") {
            Ok(()) => {
                if changed {
                    self.failing.store(false, Ordering::Release);
                }
                Ok(())
            }
            Err(error) => {
                let error = Error::from(error);
                self.note(&error);
                if !held.conn.is_autocommit() {
                    // Nothing of the batch may linger in a transaction that a later write
                    // would commit; if even the rollback fails, the connection is unusable
                    // and the next BEGIN reports it.
                    let _ = held.conn.execute_batch("ROLLBACK");
                }
                Err(StorageFailure::of(&error))
            }
        }
    }

    /// Remembers a failure for a database cause (every [`Error::Unavailable`] SQLite
    /// reports; the writer's own queue never gets here).
    fn note(&self, error: &Error) {
        if matches!(error, Error::Unavailable(_)) {
            self.failing.store(true, Ordering::Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is only counted and swapped under this lock, never left half-changed.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Turn<'_> {
    fn held(&mut self) -> &mut Held {
        // Only `write`'s hand-on and `Drop` take the connection out, each at its end.
        self.held
            .as_mut()
            .unwrap_or_else(|| unreachable!("a turn holds the connection until it ends"))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.writer.lock().free = Some(held);
            self.writer.returned.notify_one();
        }
    }
}

/// The open batch of `held`, which the caller knows is there.
fn batch_of(held: &mut Held) -> &mut Batch {
    held.batch
        .as_mut()
        .unwrap_or_else(|| unreachable!("a batch is open while its writes run"))
}

/// Runs `f` inside the savepoint `write` that the caller opened, then releases the
/// savepoint, after rolling back to it when `f`'s changes are not kept.
fn run_in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&WriteTx<'_>) -> Result<Result<T, Error>, Error>,
) -> Result<Ran<Result<T, Error>>, Broken> {
    let tx = WriteTx { conn };
    let ran = match catch_unwind(AssertUnwindSafe(|| f(&tx))) {
        Ok(Ok(answer)) => Ran::Keep(answer),
        Ok(Err(error)) => Ran::Discard(error),
        Err(payload) => Ran::Panicked(payload),
    };
    let settled = match ran {
        Ran::Keep(_) => conn.execute_batch("RELEASE write"),
        _ => conn.execute_batch("ROLLBACK TO write; RELEASE write"),
    };
    match (settled, ran) {
        (Ok(()), ran) => Ok(ran),
        (Err(error), Ran::Panicked(payload)) => Err(Broken(error.into(), Some(payload))),
        // SQLite rolls the whole transaction back itself after some failures (a full
        // disk, an I/O error), which takes the savepoint with it: the write's own error
        // says why.
        (Err(_), Ran::Discard(cause @ Error::Unavailable(_))) => Err(Broken(cause, None)),
        (Err(error), _) => Err(Broken(error.into(), None)),
    }
}

impl Commit {
    /// Waits until the batch's commit is settled; its outcome.
    fn wait(&self) -> Result<(), Error> {
        let mut outcome = self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone().map_err(StorageFailure::into_error);
            }
            outcome = self
                .done
                .wait(outcome)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn settle(&self, result: Result<(), StorageFailure>) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;

    /// A writer and a separate reader connection on a fresh WAL file with a table `t`, and
    /// a table `r` whose rows must name a row of `t` by the time their transaction commits.
    fn open(dir: &tempfile::TempDir) -> (Writer, Connection) {
        let path = dir.path().join("db.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;
             CREATE TABLE t (x INTEGER PRIMARY KEY);
             CREATE TABLE r (x INTEGER REFERENCES t (x) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let reader = Connection::open(&path).unwrap();
        (Writer::new(conn), reader)
    }

    fn rows(conn: &Connection, table: &str) -> Vec<i64> {
        let mut statement = conn
            .prepare(&format!("SELECT x FROM {table} ORDER BY x"))
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn insert(tx: &WriteTx<'_>, x: i64) -> Result<(), Error> {
        tx.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
        Ok(())
    }

    /// A deadline no test reaches.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    /// True when the connection is back in the queue with no transaction open.
    fn no_batch_open(writer: &Writer) -> bool {
        writer
            .lock()
            .free
            .as_ref()
            .is_some_and(|held| held.batch.is_none() && held.conn.is_autocommit())
    }

    /// Waits until `writer` has `n` writers queued for its connection.
    fn until_waiting(writer: &Writer, n: usize) {
        while writer.lock().waiting < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_lone_write_is_committed_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        writer.write(later(), |tx| insert(tx, 1).map(Ok)).unwrap();
        assert_eq!(rows(&reader, "t"), [1]);
        assert!(no_batch_open(&writer), "no transaction is left open");
    }

    /// What a write answered, or its panic.
    type Answer<T> = thread::Result<Result<T, Error>>;

    /// Runs `first` on the writer while a second write, `second`, queues behind it, so
    /// that the two form one batch; answers both results.
    fn batch_of_two<A: Send, B: Send>(
        writer: &Writer,
        first: impl FnOnce(&WriteTx<'_>) -> Result<Result<A, Error>, Error> + Send,
        second: impl FnOnce(&WriteTx<'_>) -> Result<Result<B, Error>, Error> + Send,
    ) -> (Answer<A>, Answer<B>) {
        thread::scope(|scope| {
            let (started, first_running) = mpsc::channel();
            let one = scope.spawn(move || {
                writer.write(later(), |tx| {
                    started.send(()).unwrap();
                    // The second write is queued before this one finishes.
                    until_waiting(writer, 1);
                    first(tx)
                })
            });
            first_running.recv().unwrap();
            let two = scope.spawn(move || writer.write(later(), second));
            (one.join(), two.join())
        })
    }

    #[test]
    fn writes_that_queue_behind_each_other_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let reader = Mutex::new(reader);
        let (one, two) = batch_of_two(
            &writer,
            |tx| insert(tx, 1).map(Ok),
            |tx| {
                // The first write is done but not committed: the batch sees it, a reader
                // does not, and the first write has not returned yet.
                assert_eq!(rows(tx, "t"), [1]);
                assert_eq!(rows(&reader.lock().unwrap(), "t"), Vec::<i64>::new());
                insert(tx, 2).map(Ok)
            },
        );
        one.unwrap().unwrap();
        two.unwrap().unwrap();
        assert_eq!(rows(&reader.lock().unwrap(), "t"), [1, 2]);
        assert!(no_batch_open(&writer));
    }

    #[test]
    fn a_failed_write_in_a_batch_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let (one, two) = batch_of_two(
            &writer,
            |tx| insert(tx, 1).map(Ok),
            |tx| {
                insert(tx, 2)?;
                Err::<Result<(), Error>, _>(Error::NotFound)
            },
        );
        one.unwrap().unwrap();
        assert!(matches!(two.unwrap(), Err(Error::NotFound)));
        assert_eq!(rows(&reader, "t"), [1]);
    }

    #[test]
    fn a_refusal_that_records_keeps_its_changes_and_answers_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let (one, two) = batch_of_two(
            &writer,
            |tx| {
                insert(tx, 1)?;
                Ok(Err::<(), _>(Error::BadCredentials))
            },
            |tx| insert(tx, 2).map(Ok),
        );
        assert!(matches!(one.unwrap(), Err(Error::BadCredentials)));
        two.unwrap().unwrap();
        assert_eq!(rows(&reader, "t"), [1, 2]);
    }

    #[test]
    fn a_panicking_write_loses_nothing_of_its_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let (one, two) = batch_of_two(
            &writer,
            |tx| insert(tx, 1).map(Ok),
            |tx| -> Result<Result<(), Error>, Error> {
                insert(tx, 2)?;
                panic!("a bug in a write")
            },
        );
        one.unwrap().unwrap();
        assert!(two.is_err(), "the panic reaches the write's caller");
        assert_eq!(rows(&reader, "t"), [1]);
        writer.write(later(), |tx| insert(tx, 3).map(Ok)).unwrap();
        assert_eq!(rows(&reader, "t"), [1, 3]);
    }

    #[test]
    fn a_failed_commit_fails_every_write_of_its_batch_and_stores_none() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        // The second write breaks a deferred foreign key: only the commit notices.
        let (one, two) = batch_of_two(
            &writer,
            |tx| insert(tx, 1).map(Ok),
            |tx| {
                tx.execute("INSERT INTO r (x) VALUES (99)", [])?;
                Ok(Ok(()))
            },
        );
        assert!(matches!(one.unwrap(), Err(Error::Internal(_))));
        assert!(matches!(two.unwrap(), Err(Error::Internal(_))));
        assert_eq!(rows(&reader, "t"), Vec::<i64>::new());
        assert_eq!(rows(&reader, "r"), Vec::<i64>::new());
        // The writer is usable again.
        writer.write(later(), |tx| insert(tx, 2).map(Ok)).unwrap();
        assert_eq!(rows(&reader, "t"), [2]);
    }

    #[test]
    fn a_write_still_queued_at_its_deadline_answers_unavailable_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let late_ran = AtomicBool::new(false);
        let late = thread::scope(|scope| {
            let (started, first_running) = mpsc::channel();
            let (release, released) = mpsc::channel::<()>();
            let writer = &writer;
            let first = scope.spawn(move || {
                writer.write(later(), |tx| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    insert(tx, 1).map(Ok)
                })
            });
            first_running.recv().unwrap();
            // Queued behind a write that goes on past this one's deadline.
            let late = writer.write(Instant::now() + Duration::from_millis(50), |tx| {
                late_ran.store(true, Ordering::SeqCst);
                insert(tx, 2).map(Ok)
            });
            release.send(()).unwrap();
            first.join().unwrap().unwrap();
            late
        });
        assert!(matches!(late, Err(Error::Unavailable(_))), "{late:?}");
        assert!(
            !late_ran.load(Ordering::SeqCst),
            "the late write never runs"
        );
        assert_eq!(rows(&reader, "t"), [1]);
        assert!(
            !writer.failing(),
            "a wait in the queue is not a database cause"
        );
        assert!(no_batch_open(&writer));
    }

    #[test]
    fn a_lock_held_by_another_connection_fails_writes_at_their_deadline_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        let other = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t (x) VALUES (100);")
            .unwrap();
        let ran = AtomicBool::new(false);

        let refused = writer.write(Instant::now() + Duration::from_millis(200), |tx| {
            ran.store(true, Ordering::SeqCst);
            insert(tx, 1).map(Ok)
        });

        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        assert!(!ran.load(Ordering::SeqCst));
        assert!(writer.failing());
        assert!(no_batch_open(&writer));
        other.execute_batch("ROLLBACK").unwrap();
        // A write that changes nothing says nothing about writes working.
        writer.write(later(), |tx| Ok(Ok(rows(tx, "t")))).unwrap();
        assert!(writer.failing());
        writer.write(later(), |tx| insert(tx, 2).map(Ok)).unwrap();
        assert!(!writer.failing());
        assert_eq!(rows(&reader, "t"), [2]);
    }

    #[test]
    fn many_writers_at_once_all_land_and_leave_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        thread::scope(|scope| {
            for t in 0..16 {
                let writer = &writer;
                scope.spawn(move || {
                    for i in 0..50 {
                        writer
                            .write(later(), |tx| insert(tx, t * 1000 + i).map(Ok))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(rows(&reader, "t").len(), 16 * 50);
        assert!(no_batch_open(&writer));
    }
}
