//! `narutalk-server`: starts Narutalk on the settings of contract section 8.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use narutalk_core::Narutalk;
use narutalk_core::config::{self, AiBackend};
use narutalk_core::store::OpenMode;
use narutalk_server::metrics::MetricsListener;
use narutalk_server::settings::{Overrides, Settings};

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
        core: config::Overrides {
            database: flags.database,
            config: flags.config,
        },
    };
    let (config, settings_file) = Settings::load(&overrides)?;
    narutalk_server::logging::init(&config)?;
    // Both ports are taken before anything is created on disk: a start that cannot listen
    // leaves no database and no secret behind.
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding NARUTALK_BIND {}", config.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let metrics = match config.metrics_bind {
        Some(metrics_bind) => Some(
            MetricsListener::bind(metrics_bind)
                .await
                .with_context(|| format!("binding NARUTALK_METRICS_BIND {metrics_bind}"))?,
        ),
        None => None,
    };
    let metrics_url = match &metrics {
        Some(metrics) => Some(format!(
            "http://{}/metrics",
            metrics
                .local_addr()
                .context("reading the bound metrics address")?
        )),
        None => None,
    };
    let start = StartLine::new(&config, address, metrics_url);
    tracing::info!(
        target: "narutalk::start",
        listen = start.listen.as_str(),
        page = start.page.as_str(),
        docs = start.docs.as_str(),
        database = start.database.as_str(),
        ai_backend = start.ai_backend,
        ai_model = start.ai_model.as_str(),
        metrics = start.metrics.as_deref().unwrap_or("off"),
        settings_file = %settings_file,
        "Narutalk is starting"
    );
    let open_config = config.core.clone();
    let core = tokio::task::spawn_blocking(move || {
        Narutalk::open(&open_config, OpenMode::CreateIfMissing)
    })
    .await
    .context("starting the core")??;
    println!("{start}");
    let serving = narutalk_server::serve(Arc::new(core), &config, listener, shutdown_signal());
    match metrics {
        // The metrics are served until the server has stopped, its drain included.
        Some(metrics) => metrics.serve_while(serving).await,
        None => serving.await,
    }
    println!("Narutalk stopped.");
    Ok(())
}

/// What the start line says: where the server listens and what it runs on.
struct StartLine {
    listen: String,
    page: String,
    docs: String,
    database: String,
    ai_backend: &'static str,
    ai_model: String,
    metrics: Option<String>,
}

impl StartLine {
    fn new(config: &Settings, address: SocketAddr, metrics: Option<String>) -> StartLine {
        let listen = format!("http://{address}/");
        StartLine {
            page: listen.clone(),
            docs: format!("{listen}api/docs/"),
            listen,
            database: std::path::absolute(&config.core.database)
                .unwrap_or_else(|_| config.core.database.clone())
                .display()
                .to_string(),
            ai_backend: match config.core.ai_backend {
                AiBackend::Template => "template",
                AiBackend::Http => "http",
                AiBackend::Openai => "openai",
            },
            ai_model: match config.core.ai_backend {
                AiBackend::Openai => config.core.ai_model.clone(),
                AiBackend::Template | AiBackend::Http => String::new(),
            },
            metrics,
        }
    }
}

impl std::fmt::Display for StartLine {
    /// `Narutalk is listening on URL (chat page: URL, API docs: URL, database: PATH, AI:
    /// BACKEND[ model MODEL], metrics: URL|off)`: the listen address is the first URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Narutalk is listening on {} (chat page: {}, API docs: {}, database: {}, AI: {}",
            self.listen, self.page, self.docs, self.database, self.ai_backend
        )?;
        if !self.ai_model.is_empty() {
            write!(f, " model {}", self.ai_model)?;
        }
        write!(
            f,
            ", metrics: {})",
            self.metrics.as_deref().unwrap_or("off")
        )
    }
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
