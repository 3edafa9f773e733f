//! The process's logger: `tracing` lines on standard error, as text or JSON, filtered by
//! `NARUTALK_LOG`, with the `log` records of third-party crates (refinery, ureq, ...)
//! forwarded into the same lines without their source file and line: those name the
//! machine that built the binary (its registry paths), never anything about this server.
//!
//! What the server logs, wherever it is logged from:
//!
//! - the first event is `narutalk::start`, with what the start line says;
//! - every line logged on a request's behalf is inside its `request` span (`request_id`;
//!   the span is at ERROR level so that it exists whenever anything is logged);
//! - one `narutalk::access` line per request (method, path without the query string,
//!   which may hold a socket's token, status, duration, request id); one `narutalk::ws`
//!   line per closed socket (session, user, close code, reason, duration, the handshake's
//!   request id); one `narutalk::ai` warning per failed AI turn (session, responder,
//!   reason, detail);
//! - durations are milliseconds rounded to the microsecond, and every warning names its
//!   cause;
//! - never a request body, a message's text, a header's value, a token, a password or a
//!   secret.

use std::fmt;
use std::io::IsTerminal;
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing_log::{AsLog, LogTracer};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

use crate::settings::{LogFormat, Settings};

/// Why the logger could not be installed, in one line.
#[derive(Debug)]
pub struct LoggerError(String);

impl fmt::Display for LoggerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoggerError {}

/// Installs the process's logger; an error when `NARUTALK_LOG` is not a valid filter or
/// a logger is installed already.
pub fn init(config: &Settings) -> Result<(), LoggerError> {
    // A static filter by target and level: every request's span is entered and left at
    // each poll, and `EnvFilter` takes a shared read lock on both (for span-scoped
    // directives, which the server has no use for); `Targets` decides once per call site.
    let filter: Targets = config
        .log
        .parse()
        .map_err(|error| LoggerError(format!("invalid setting NARUTALK_LOG: {error}")))?;
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.log_format {
        LogFormat::Json => tracing::subscriber::set_global_default(registry.with(lines.json())),
        LogFormat::Text => tracing::subscriber::set_global_default(registry.with(lines)),
    };
    installed.map_err(|error| LoggerError(format!("installing the logger: {error}")))?;
    log::set_boxed_logger(Box::new(WithoutPaths(LogTracer::new()))).map_err(|error| {
        LoggerError(format!(
            "installing the logger of third-party crates: {error}"
        ))
    })?;
    log::set_max_level(LevelFilter::current().as_log());
    Ok(())
}

/// A duration in milliseconds, rounded to the microsecond (as logs show durations).
pub fn millis(duration: Duration) -> f64 {
    // Exact below 2^53 µs (285 years).
    #[allow(clippy::cast_precision_loss)]
    let micros = duration.as_micros() as f64;
    micros / 1000.0
}

/// Forwards `log` records to `tracing` as [`LogTracer`] does, minus their file and line.
struct WithoutPaths(LogTracer);

impl log::Log for WithoutPaths {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.log(
            &log::Record::builder()
                .metadata(record.metadata().clone())
                .args(*record.args())
                .module_path(record.module_path())
                .build(),
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_durations_are_milliseconds_rounded_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(777_938)), 0.777);
        assert_eq!(millis(Duration::from_nanos(1_500)), 0.001);
        assert_eq!(millis(Duration::from_secs(30)), 30_000.0);
        assert_eq!(
            serde_json::json!(millis(Duration::from_nanos(777_938))).to_string(),
            "0.777"
        );
    }
}
