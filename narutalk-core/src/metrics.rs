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

/// Gauge: AI turns whose message is stored, waiting for an earlier turn of the same
/// session (the turn engine's).
pub const AI_QUEUED: &str = "narutalk_ai_turns_queued";
/// Counter: AI turns finished, by responder, outcome and failure reason.
pub const AI_TURNS: &str = "narutalk_ai_turns_total";
/// Histogram: the time each AI call took, by responder.
pub const AI_SECONDS: &str = "narutalk_ai_turn_duration_seconds";
/// Histogram: the time from an AI call's start to its first streamed text.
pub const AI_FIRST_DELTA_SECONDS: &str = "narutalk_ai_first_delta_seconds";

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
    describe_gauge!(
        AI_QUEUED,
        Unit::Count,
        "AI turns whose message is stored, waiting for an earlier turn of the same session."
    );
    describe_counter!(
        AI_TURNS,
        Unit::Count,
        "AI turns finished, by responder, outcome (replied or failed) and failure reason."
    );
    describe_histogram!(
        AI_SECONDS,
        Unit::Seconds,
        "Time each AI call took, success or failure, by responder."
    );
    describe_histogram!(
        AI_FIRST_DELTA_SECONDS,
        Unit::Seconds,
        "Time from an AI call's start to its first streamed text, by responder (streaming responders only)."
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

/// A responder's name as a label: the three built-in ones, `other` for an embedder's.
pub fn responder_label(name: &str) -> &'static str {
    match name {
        "template" => "template",
        "http" => "http",
        "openai" => "openai",
        _ => "other",
    }
}

/// Records the time an AI call took to stream its first text.
pub(crate) fn ai_first_delta(responder: &'static str, elapsed: Duration) {
    metrics::histogram!(AI_FIRST_DELTA_SECONDS, "responder" => responder)
        .record(elapsed.as_secs_f64());
}

/// Counts one finished AI turn (`failure`: its stored reason, one of a few fixed phrases)
/// and records how long its call took.
pub(crate) fn ai_turn(responder: &'static str, failure: Option<&str>, elapsed: Duration) {
    let (outcome, reason) = match failure {
        None => ("replied", String::new()),
        Some(reason) => ("failed", reason.to_owned()),
    };
    metrics::counter!(
        AI_TURNS,
        "responder" => responder,
        "outcome" => outcome,
        "reason" => reason
    )
    .increment(1);
    metrics::histogram!(AI_SECONDS, "responder" => responder).record(elapsed.as_secs_f64());
}

/// Holds one unit of a gauge while it lives: added when made, taken away when dropped
/// (also when the code holding it panics).
pub(crate) struct GaugeHold(&'static str);

impl GaugeHold {
    /// Adds one to the gauge `name` until the hold is dropped.
    pub(crate) fn new(name: &'static str) -> GaugeHold {
        gauge_add(name, 1.0);
        GaugeHold(name)
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        gauge_add(self.0, -1.0);
    }
}
