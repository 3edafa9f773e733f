//! What every request shares: the core handle, the settings the server reads, the
//! throttles, the health caches and write probe, the AI turn lines, the
//! room hub and the open sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use narutalk_core::Narutalk;
use narutalk_core::accounts::User;
use narutalk_core::config::AiBackend;
use narutalk_core::error::Error as CoreError;
use tokio_util::task::TaskTracker;

use crate::api::{Caller, token_refused};
use crate::error::ApiError;
use crate::http::BodyRules;
use crate::limits::Throttles;
use crate::listener::ServeOptions;
use crate::settings::Settings;
use crate::turns::SessionLines;
use crate::ws::hub::{Hub, LocalHub};
use crate::ws::sockets::Sockets;

/// How long a database health check is reused.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// The server's shared state.
pub struct State {
    /// The core.
    pub core: Arc<Narutalk>,
    /// How request bodies are read.
    pub body: BodyRules,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Origins that get CORS headers, besides the server's own.
    pub cors_origins: Vec<String>,
    /// The address the server listens on.
    pub local_addr: SocketAddr,
    /// Request throttles.
    pub throttles: Throttles,
    /// Orders the AI turns of each session.
    pub lines: SessionLines,
    /// The search proxy, when a search URL is configured.
    pub search: Option<Search>,
    /// Whether the AI service answered its last probe (always true for `template`; false
    /// for the others until their first probe, which runs at start, has connected).
    pub ai_reachable: Arc<AtomicBool>,
    /// Whether the search service answered its last probe.
    pub search_reachable: Arc<AtomicBool>,
    /// Fans stored messages and reply deltas out to the sockets of each session.
    pub hub: Arc<dyn Hub>,
    /// The open sockets, for the revocation watch and shutdown.
    pub sockets: Sockets,
    /// How sockets behave.
    pub socket_rules: SocketRules,
    /// The AI turns running in their own tasks; a shutdown waits for them.
    pub tasks: TaskTracker,
    /// Work done: requests answered and sockets ended (it only grows); the memory trim
    /// waits for it to stop growing.
    pub activity: Arc<AtomicU64>,
    database_health: DatabaseHealth,
    write_probe: WriteProbe,
}

/// What health says about the database (contract sections 4 and 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseStatus {
    /// Reads and writes work.
    Connected,
    /// Reads work, but writes fail for a database cause (locked, full, failing) since a
    /// write failed, until one succeeds.
    ReadOnly,
    /// The database cannot answer a read.
    Unavailable,
}

/// The WebSocket settings (contract section 6).
#[derive(Clone, Copy, Debug)]
pub struct SocketRules {
    /// How often the server pings.
    pub ping: Duration,
    /// A peer silent this long is dropped.
    pub idle: Duration,
}

/// The search service the proxy posts to.
pub struct Search {
    /// Its URL.
    pub url: String,
    /// A client with the configured timeout.
    pub client: reqwest::Client,
}

/// The write probe health runs while writes fail: at most one at a time, and at most one
/// every `interval`.
struct WriteProbe {
    interval: Duration,
    started: Instant,
    /// Milliseconds after `started` when the last probe began, or health first saw writes
    /// failing, plus one (0: writes worked at the last look).
    last: AtomicU64,
    running: AtomicBool,
}

/// The last database check and when it ran, read without a lock.
struct DatabaseHealth {
    started: Instant,
    /// Milliseconds after `started` of the last check, plus one (0: never checked).
    checked_at: AtomicU64,
    healthy: AtomicBool,
    refreshing: tokio::sync::Mutex<()>,
}

impl State {
    /// The state for serving `core` on `local_addr` with `config`.
    pub fn new(
        core: Arc<Narutalk>,
        config: &Settings,
        options: &ServeOptions,
        local_addr: SocketAddr,
    ) -> State {
        let search = (!config.search_url.is_empty()).then(|| Search {
            url: config.search_url.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(u64::from(
                    config.search_timeout_seconds,
                )))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        });
        // The rooms read the messages their events missed from the core.
        let hub = Arc::new(LocalHub::new(options.ws_send_queue, core.clone()));
        State {
            core,
            body: BodyRules {
                limit: config.body_limit_bytes,
            },
            trusted_proxies: config.trusted_proxies.clone(),
            cors_origins: config.cors_origins.clone(),
            local_addr,
            throttles: Throttles::new(config, options.login_failure_refill),
            lines: SessionLines::default(),
            search,
            ai_reachable: Arc::new(AtomicBool::new(
                config.core.ai_backend == AiBackend::Template,
            )),
            search_reachable: Arc::new(AtomicBool::new(false)),
            hub,
            sockets: Sockets::default(),
            socket_rules: SocketRules {
                ping: Duration::from_secs(u64::from(config.ws_ping_seconds)),
                idle: Duration::from_secs(u64::from(config.ws_idle_seconds)),
            },
            tasks: TaskTracker::new(),
            activity: Arc::default(),
            database_health: DatabaseHealth {
                started: Instant::now(),
                checked_at: AtomicU64::new(0),
                healthy: AtomicBool::new(false),
                refreshing: tokio::sync::Mutex::new(()),
            },
            write_probe: WriteProbe {
                interval: options.write_probe_interval,
                started: Instant::now(),
                last: AtomicU64::new(0),
                running: AtomicBool::new(false),
            },
        }
    }

    /// Runs blocking core work on tokio's blocking threads, never on the async workers.
    /// A panic in it answers 500, never a dropped connection.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Narutalk) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let core = self.core.clone();
        match tokio::task::spawn_blocking(move || work(&core)).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(error) => {
                tracing::error!(%error, "a blocking task failed");
                Err(ApiError::Internal)
            }
        }
    }

    /// [`State::run`] for work on behalf of `caller`: when the caller is an unchecked
    /// token, the same blocking call authenticates it first (a refused token answers 401
    /// and the work does not run).
    pub async fn run_as<T: Send + 'static>(
        &self,
        caller: Caller,
        work: impl FnOnce(&Narutalk, User) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let outcome = self
            .run(move |core| {
                let user = match caller {
                    Caller::User(user) => user,
                    Caller::Token(token) => match core.tokens().authenticate(&token) {
                        Ok(user) => user,
                        Err(refused) => return Ok(Err(refused)),
                    },
                };
                work(core, user).map(Ok)
            })
            .await?;
        outcome.map_err(token_refused)
    }

    /// Whether the database answers a real query; the answer is reused for a second, and
    /// of many requests that find it stale, one runs the query while the others wait.
    pub async fn database_healthy(&self) -> bool {
        let health = &self.database_health;
        if let Some(healthy) = self.fresh_health() {
            return healthy;
        }
        let _refreshing = health.refreshing.lock().await;
        if let Some(healthy) = self.fresh_health() {
            return healthy;
        }
        let healthy = self.run(|core| core.store().ping()).await.is_ok();
        health.healthy.store(healthy, Ordering::Release);
        let now = u64::try_from(health.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        health.checked_at.store(now + 1, Ordering::Release);
        healthy
    }

    /// What health reports about the database: [`DatabaseStatus::Unavailable`] when a
    /// read fails ([`State::database_healthy`]), [`DatabaseStatus::ReadOnly`] while the
    /// core says writes fail for a database cause. In that state it starts the core's
    /// write probe in the background, once per [`ServeOptions::write_probe_interval`]
    /// at most (the first one interval after health first saw the state: the failure that
    /// began it is that fresh), so that the state ends without any other write; the
    /// answer never waits for the probe.
    pub async fn database_status(self: &Arc<Self>) -> DatabaseStatus {
        if !self.database_healthy().await {
            return DatabaseStatus::Unavailable;
        }
        if !self.core.store().writes_failing() {
            let probe = &self.write_probe;
            if probe.last.load(Ordering::Relaxed) != 0 {
                probe.last.store(0, Ordering::Relaxed);
            }
            return DatabaseStatus::Connected;
        }
        self.probe_writes_when_due();
        DatabaseStatus::ReadOnly
    }

    /// Starts the write probe unless one is running or the last began (or health first
    /// saw writes failing) less than the interval ago.
    fn probe_writes_when_due(self: &Arc<Self>) {
        let probe = &self.write_probe;
        let now = u64::try_from(probe.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let interval = u64::try_from(probe.interval.as_millis()).unwrap_or(u64::MAX);
        let last = probe.last.load(Ordering::Acquire);
        if last == 0 {
            probe.last.store(now + 1, Ordering::Release);
            return;
        }
        if now + 1 - last < interval {
            return;
        }
        if probe.running.swap(true, Ordering::AcqRel) {
            return;
        }
        probe.last.store(now + 1, Ordering::Release);
        let state = self.clone();
        tokio::spawn(async move {
            let core = state.core.clone();
            let probed = tokio::task::spawn_blocking(move || core.store().probe_writes()).await;
            match probed {
                Ok(Ok(())) => tracing::info!("the write probe succeeded: writes work again"),
                Ok(Err(error)) => tracing::debug!(%error, "the write probe failed"),
                Err(error) => tracing::error!(%error, "the write probe did not finish"),
            }
            state.write_probe.running.store(false, Ordering::Release);
        });
    }

    fn fresh_health(&self) -> Option<bool> {
        let health = &self.database_health;
        let checked_at = health.checked_at.load(Ordering::Acquire);
        let now = u64::try_from(health.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cache = u64::try_from(HEALTH_CACHE.as_millis()).unwrap_or(u64::MAX);
        (checked_at != 0 && now + 1 - checked_at < cache)
            .then(|| health.healthy.load(Ordering::Acquire))
    }
}
