//! The single writer connection, with group commit.
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
//! Writes of one batch see each other's changes (they run one after another on one
//! connection); readers see none of them until the commit.

use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::error::Error;

/// The most writes one commit carries. A bound keeps a batch's latency bounded under a
/// flood of writers: the writers beyond it form the next batch.
pub const MAX_BATCH: usize = 64;

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

/// The writer connection and the batch it has open.
pub struct Writer {
    state: Mutex<State>,
    /// Writers waiting for `state`: the one holding it commits only when this is zero.
    waiting: AtomicUsize,
}

struct State {
    conn: Connection,
    batch: Option<Batch>,
}

/// The open transaction: how many writes it holds, and where they wait for its commit.
struct Batch {
    writes: usize,
    commit: Arc<Commit>,
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
        StorageFailure {
            retryable: matches!(error, Error::Unavailable(_)),
            message: error.to_string(),
        }
    }

    fn into_error(self) -> Error {
        if self.retryable {
            Error::Unavailable(self.message)
        } else {
            Error::Internal(self.message)
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
            state: Mutex::new(State { conn, batch: None }),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `f` in the write transaction. `Ok(Ok(value))` keeps its changes; `Ok(Err(e))`
    /// keeps them too and answers `e` (for rules that record something while refusing);
    /// `Err(e)` rolls them back. The answer comes once the changes are committed.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<Result<T, Error>, Error>,
    ) -> Result<T, Error> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);

        if state.batch.is_none() {
            state.conn.execute_batch("BEGIN IMMEDIATE")?;
            state.batch = Some(Batch {
                writes: 0,
                commit: Arc::default(),
            });
        }
        let ran = match state.conn.execute_batch("SAVEPOINT write") {
            Ok(()) => run_in_savepoint(&state.conn, f),
            Err(error) => Ok(Ran::Discard(error.into())),
        };
        let Some(batch) = state.batch.as_mut() else {
            unreachable!("a batch is open while its writes run")
        };
        let commit = batch.commit.clone();
        let ran = match ran {
            Ok(ran) => ran,
            Err(Broken(error, panic)) => {
                // The write's savepoint could not be settled, so the batch holds changes
                // nobody can vouch for: all of it is rolled back and fails.
                let failure = StorageFailure::of(&error);
                state.batch = None;
                let _ = state.conn.execute_batch("ROLLBACK");
                drop(state);
                commit.settle(Err(failure));
                return match panic {
                    Some(payload) => resume_unwind(payload),
                    None => Err(error),
                };
            }
        };
        if matches!(ran, Ran::Keep(_)) {
            batch.writes += 1;
        }
        let full = batch.writes >= MAX_BATCH;

        if !full && self.waiting.load(Ordering::SeqCst) > 0 {
            // Another writer is about to take the connection; the last one commits.
            drop(state);
            return match ran {
                Ran::Keep(answer) => commit.wait().and(answer),
                Ran::Discard(error) => Err(error),
                Ran::Panicked(payload) => resume_unwind(payload),
            };
        }

        let outcome = Self::commit(&mut state);
        drop(state);
        commit.settle(outcome.clone());
        match ran {
            Ran::Keep(answer) => outcome.map_err(StorageFailure::into_error).and(answer),
            Ran::Discard(error) => Err(error),
            Ran::Panicked(payload) => resume_unwind(payload),
        }
    }

    /// Commits the open batch (rolling it back when the commit fails) and closes it.
    fn commit(state: &mut MutexGuard<'_, State>) -> Result<(), StorageFailure> {
        state.batch = None;
        match state.conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(error) => {
                let failure = StorageFailure::of(&error.into());
                if !state.conn.is_autocommit() {
                    // Nothing of the batch may linger in a transaction that a later write
                    // would commit; if even the rollback fails, the connection is unusable
                    // and the next BEGIN reports it.
                    let _ = state.conn.execute_batch("ROLLBACK");
                }
                Err(failure)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave a half-done write behind: each
        // write's panic is caught and rolled back to its savepoint before the lock is let
        // go, so a poisoned lock still guards a sound connection.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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

    /// Waits until `writer` has `n` writers queued for its connection.
    fn until_waiting(writer: &Writer, n: usize) {
        while writer.waiting.load(Ordering::SeqCst) < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_lone_write_is_committed_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = open(&dir);
        writer.write(|tx| insert(tx, 1).map(Ok)).unwrap();
        assert_eq!(rows(&reader, "t"), [1]);
        assert!(writer.lock().batch.is_none(), "no transaction is left open");
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
                writer.write(|tx| {
                    started.send(()).unwrap();
                    // The second write is queued before this one finishes.
                    until_waiting(writer, 1);
                    first(tx)
                })
            });
            first_running.recv().unwrap();
            let two = scope.spawn(move || writer.write(second));
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
        assert!(writer.lock().batch.is_none());
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
        writer.write(|tx| insert(tx, 3).map(Ok)).unwrap();
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
        writer.write(|tx| insert(tx, 2).map(Ok)).unwrap();
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
                        writer.write(|tx| insert(tx, t * 1000 + i).map(Ok)).unwrap();
                    }
                });
            }
        });
        assert_eq!(rows(&reader, "t").len(), 16 * 50);
        assert!(writer.lock().batch.is_none());
    }
}
