//! The process's logger: `tracing` lines on standard error, as text or JSON, filtered by
//! `NARUTALK_LOG`, with the `log` records of third-party crates (refinery, ureq, ...)
//! forwarded into the same lines without their source file and line: those name the
//! machine that built the binary (its registry paths), never anything about this server.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_log::{AsLog, LogTracer};

use crate::settings::{LogFormat, Settings};

/// Installs the process's logger; an error when `NARUTALK_LOG` is not a valid filter or
/// a logger is installed already.
pub fn init(config: &Settings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|error| anyhow::anyhow!("invalid setting NARUTALK_LOG: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.log_format {
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
    };
    installed.map_err(|error| anyhow::anyhow!("installing the logger: {error}"))?;
    log::set_boxed_logger(Box::new(WithoutPaths(LogTracer::new())))
        .map_err(|error| anyhow::anyhow!("installing the logger of third-party crates: {error}"))?;
    log::set_max_level(LevelFilter::current().as_log());
    Ok(())
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
