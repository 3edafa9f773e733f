//! Starting Narutalk as a process, the way the `narutalk-server` binary does: the logger;
//! the API's and the metrics' listeners bound before anything is created on disk (a start
//! that cannot listen leaves no database and no secret behind); the `narutalk::start`
//! event; the core opened on a blocking thread; the start line; then the server until
//! SIGINT or SIGTERM, with the metrics served beside it for as long as it runs, its drain
//! included. The load harness starts its servers through the same [`Launch`], with a
//! start line and a stop of its own.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use narutalk_core::config::{AiBackend, SettingsFile};
use narutalk_core::store::OpenMode;
use narutalk_core::{Narutalk, StartError};

use crate::listener::ServeOptions;
use crate::logging::{self, LoggerError};
use crate::metrics::MetricsListener;
use crate::server;
use crate::settings::Settings;

/// What prints that the server started.
type Announce = Box<dyn FnOnce(&Started)>;

/// What tells the server to stop, given the core.
type Until = Box<dyn FnOnce(Arc<Narutalk>) -> Pin<Box<dyn Future<Output = ()>>>>;

/// A start of Narutalk on its settings: [`Launch::new`], then what differs from the
/// binary's start, then [`Launch::run`].
pub struct Launch {
    config: Settings,
    settings_file: SettingsFile,
    options: ServeOptions,
    announce: Announce,
    until: Until,
}

/// A server that has started: where it listens and what it runs on. It displays as the
/// start line: `Narutalk is listening on URL (chat page: URL, API docs: URL, database:
/// PATH, AI: BACKEND[ model MODEL], metrics: URL|off)`, the listen address first.
#[derive(Clone, Debug)]
pub struct Started {
    /// Where the API listens.
    pub address: SocketAddr,
    /// The API's URL.
    pub listen: String,
    /// The chat page's URL.
    pub page: String,
    /// The API docs' URL.
    pub docs: String,
    /// The database file, as an absolute path.
    pub database: String,
    /// The AI backend: `template`, `http` or `openai`.
    pub ai_backend: &'static str,
    /// The model, for `openai`; empty otherwise.
    pub ai_model: String,
    /// The metrics' URL, when they are served.
    pub metrics: Option<String>,
}

/// Why a start failed, in one line (with its cause beneath it).
#[derive(Debug)]
pub enum LaunchError {
    /// `doing` (binding a listener, reading its address, opening the core's thread)
    /// failed because of `cause`.
    Failed {
        /// What was being done, naming the setting when there is one.
        doing: String,
        /// Why it failed.
        cause: Box<dyn StdError + Send + Sync>,
    },
    /// The logger could not be installed.
    Logger(LoggerError),
    /// The core would not open (a bad setting, an unusable database).
    Core(StartError),
}

impl Launch {
    /// Narutalk on `config`, read from `settings_file` (which the start event names),
    /// started as the binary starts it: default [`ServeOptions`], the start line on
    /// standard output, and a stop on SIGINT or SIGTERM.
    pub fn new(config: Settings, settings_file: SettingsFile) -> Launch {
        Launch {
            config,
            settings_file,
            options: ServeOptions::default(),
            announce: Box::new(|started| println!("{started}")),
            until: Box::new(|_| Box::pin(signals())),
        }
    }

    /// Serves with `options` instead of the defaults.
    pub fn options(self, options: ServeOptions) -> Launch {
        Launch { options, ..self }
    }

    /// Says that the server started with `announce` instead of the start line; it runs
    /// once the core is open, before the first request is served.
    pub fn announce(self, announce: impl FnOnce(&Started) + 'static) -> Launch {
        Launch {
            announce: Box::new(announce),
            ..self
        }
    }

    /// Stops when the future `stop` makes of the core completes, instead of on SIGINT or
    /// SIGTERM. `stop` is called before the announcement.
    pub fn until<F>(self, stop: impl FnOnce(Arc<Narutalk>) -> F + 'static) -> Launch
    where
        F: Future<Output = ()> + 'static,
    {
        Launch {
            until: Box::new(move |core| Box::pin(stop(core))),
            ..self
        }
    }

    /// Starts, serves until told to stop, then finishes what is in flight and returns.
    pub async fn run(self) -> Result<(), LaunchError> {
        let Launch {
            config,
            settings_file,
            options,
            announce,
            until,
        } = self;
        logging::init(&config).map_err(LaunchError::Logger)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(failed(format!("binding NARUTALK_BIND {}", config.bind)))?;
        let address = listener
            .local_addr()
            .map_err(failed("reading the bound address"))?;
        let metrics = match config.metrics_bind {
            Some(metrics_bind) => Some(MetricsListener::bind(metrics_bind).await.map_err(
                failed(format!("binding NARUTALK_METRICS_BIND {metrics_bind}")),
            )?),
            None => None,
        };
        let metrics_url = match &metrics {
            Some(metrics) => Some(format!(
                "http://{}/metrics",
                metrics
                    .local_addr()
                    .map_err(failed("reading the bound metrics address"))?
            )),
            None => None,
        };
        let started = Started::new(&config, address, metrics_url);
        tracing::info!(
            target: "narutalk::start",
            listen = started.listen.as_str(),
            page = started.page.as_str(),
            docs = started.docs.as_str(),
            database = started.database.as_str(),
            ai_backend = started.ai_backend,
            ai_model = started.ai_model.as_str(),
            metrics = started.metrics.as_deref().unwrap_or("off"),
            settings_file = %settings_file,
            "Narutalk is starting"
        );
        let open_config = config.core.clone();
        let core = tokio::task::spawn_blocking(move || {
            Narutalk::open(&open_config, OpenMode::CreateIfMissing)
        })
        .await
        .map_err(failed("starting the core"))?
        .map_err(LaunchError::Core)?;
        let core = Arc::new(core);
        // Made before the announcement: a stop that listens for signals listens from now.
        let stop = until(core.clone());
        announce(&started);
        let serving = server::serve_with(core, &config, listener, options, stop);
        match metrics {
            Some(metrics) => metrics.serve_while(serving).await,
            None => serving.await,
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when it is called, not
/// when it is first awaited, so a signal sent once the start line is out is never the
/// default action's (which would end the process at once, without the drain).
pub fn signals() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            // A handler that could not be installed does not wait (as `ctrl_c` does not).
            let interrupt = async {
                if let Ok(mut interrupt) = interrupt {
                    interrupt.recv().await;
                }
            };
            match terminate {
                Ok(mut terminate) => {
                    tokio::select! {
                        () = interrupt => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => interrupt.await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A [`LaunchError::Failed`] maker for `map_err`.
fn failed<E: Into<Box<dyn StdError + Send + Sync>>>(
    doing: impl Into<String>,
) -> impl FnOnce(E) -> LaunchError {
    let doing = doing.into();
    move |cause| LaunchError::Failed {
        doing,
        cause: cause.into(),
    }
}

impl Started {
    fn new(config: &Settings, address: SocketAddr, metrics: Option<String>) -> Started {
        let listen = format!("http://{address}/");
        Started {
            address,
            page: listen.clone(),
            docs: format!("{listen}api/docs/"),
            listen,
            // A PostgreSQL URL without its password; a SQLite file as an absolute path.
            database: if config.core.is_postgres() {
                config.core.database_shown()
            } else {
                std::path::absolute(&config.core.database)
                    .unwrap_or_else(|_| config.core.database.clone())
                    .display()
                    .to_string()
            },
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

impl fmt::Display for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Failed { doing, .. } => f.write_str(doing),
            LaunchError::Logger(error) => error.fmt(f),
            LaunchError::Core(error) => error.fmt(f),
        }
    }
}

impl StdError for LaunchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            LaunchError::Failed { cause, .. } => Some(cause.as_ref()),
            LaunchError::Logger(_) => None,
            LaunchError::Core(error) => error.source(),
        }
    }
}
