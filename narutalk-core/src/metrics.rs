//! The metrics the core emits, through the [`metrics`] facade.
//!
//! The core only emits: an embedder (the server) decides whether anything records them
//! by installing a recorder, such as a Prometheus exporter. With none installed, every
//! emission is a no-op that costs a relaxed atomic load, so the CLI and embedders pay
//! nothing. Names carry the `narutalk_` prefix and their unit; [`describe`] gives each
//! its help text once a recorder is installed.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Histogram: seconds from asking for the database to the answer of a write (the wait
/// behind other writes and the commit included).
pub const DB_WRITE_SECONDS: &str = "narutalk_db_write_duration_seconds";
/// Counter: writes answered `Unavailable` (locked, full or failing database, or queued
/// past their deadline).
pub const DB_WRITES_UNAVAILABLE: &str = "narutalk_db_writes_unavailable_total";
/// Histogram: the writes each commit carried (group commit).
pub const DB_COMMIT_BATCH_WRITES: &str = "narutalk_db_commit_batch_writes";
/// Gauge: password hashes waiting for a hashing thread.
pub const ARGON2_QUEUED: &str = "narutalk_argon2_queued_hashes";
/// Counter: password hashes refused because 64 were already waiting (the login and
/// registration 503s).
pub const ARGON2_REFUSED: &str = "narutalk_argon2_refused_total";
/// Histogram: seconds from asking for a password hash to its result (the wait for a
/// hashing thread included).
pub const ARGON2_SECONDS: &str = "narutalk_argon2_duration_seconds";

/// Gauge: AI calls running now (on the AI pool).
pub const AI_RUNNING: &str = "narutalk_ai_turns_running";
/// Gauge: AI turns waiting for a place in the AI pool.
pub const AI_POOL_QUEUED: &str = "narutalk_ai_pool_queued_turns";

/// Gives every metric of the core its help text (call once a recorder is installed).
pub fn describe() {
    describe_histogram!(
        DB_WRITE_SECONDS,
        Unit::Seconds,
        "Time from asking for the database to the answer of a write, the wait behind other writes and the commit included."
    );
    describe_counter!(
        DB_WRITES_UNAVAILABLE,
        Unit::Count,
        "Writes answered unavailable: the database was locked, full or failing, or the write waited past its 5 s deadline."
    );
    describe_histogram!(
        DB_COMMIT_BATCH_WRITES,
        Unit::Count,
        "Writes carried by each commit of the single writer (group commit)."
    );
    describe_gauge!(
        ARGON2_QUEUED,
        Unit::Count,
        "Password hashes waiting for one of the core's hashing threads."
    );
    describe_counter!(
        ARGON2_REFUSED,
        Unit::Count,
        "Password hashes refused (logins and registrations answered 503) because 64 were already waiting for a hashing thread."
    );
    describe_gauge!(AI_RUNNING, Unit::Count, "AI calls running now.");
    describe_gauge!(
        AI_POOL_QUEUED,
        Unit::Count,
        "AI turns waiting for a place in the AI pool (at most 1,024)."
    );
    describe_histogram!(
        ARGON2_SECONDS,
        Unit::Seconds,
        "Time from asking for a password hash or verification to its result, the wait for a hashing thread included."
    );
}

/// Records `elapsed` in the histogram `name`.
pub(crate) fn record_seconds(name: &'static str, elapsed: Duration) {
    metrics::histogram!(name).record(elapsed.as_secs_f64());
}

/// Records `value` in the histogram `name`.
pub(crate) fn record(name: &'static str, value: f64) {
    metrics::histogram!(name).record(value);
}

/// Adds one to the counter `name`.
pub(crate) fn count(name: &'static str) {
    metrics::counter!(name).increment(1);
}

/// Adds `delta` (negative to subtract) to the gauge `name`.
pub(crate) fn gauge_add(name: &'static str, delta: f64) {
    metrics::gauge!(name).increment(delta);
}
