//! `narutalk-server`: starts Narutalk on the settings of contract section 8.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use narutalk_core::Narutalk;
use narutalk_core::config::{Config, LogFormat, Overrides};
use narutalk_core::db::OpenMode;

/// Narutalk's API server. Settings: defaults < TOML file < NARUTALK_* variables < flags.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Listen address, such as 127.0.0.1:8000 (NARUTALK_BIND).
    #[arg(long)]
    bind: Option<String>,
    /// SQLite database file (NARUTALK_DATABASE).
    #[arg(long)]
    database: Option<PathBuf>,
    /// TOML settings file (NARUTALK_CONFIG); without either, /etc/narutalk/narutalk.toml
    /// when it exists (an empty NARUTALK_CONFIG: no file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the OpenAPI document (what GET /api/schema/ serves) and exit.
    #[arg(long)]
    openapi: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Flags::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk-server: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.openapi {
        println!("{}", narutalk_server::openapi_json());
        return Ok(());
    }
    let overrides = Overrides {
        bind: flags.bind,
        database: flags.database,
        config: flags.config,
    };
    let (config, settings_file) = Config::load_reporting(&overrides)?;
    init_logging(&config)?;
    tracing::info!(target: "narutalk::start", file = %settings_file, "settings file");
    let open_config = config.clone();
    let core = tokio::task::spawn_blocking(move || {
        Narutalk::open(&open_config, OpenMode::CreateIfMissing)
    })
    .await
    .context("starting the core")??;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding NARUTALK_BIND {}", config.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    println!("Narutalk is listening on http://{address}/ (API docs: http://{address}/api/docs/)");
    narutalk_server::serve(Arc::new(core), &config, listener, shutdown_signal()).await;
    println!("Narutalk stopped.");
    Ok(())
}

/// Sends log lines to standard error, filtered by `NARUTALK_LOG`, as text or JSON lines
/// (`NARUTALK_LOG_FORMAT`).
fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|error| anyhow::anyhow!("invalid setting NARUTALK_LOG: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("installing the logger: {error}"))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
