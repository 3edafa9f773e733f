//! What every request shares, assembled from the parts each module owns: the core calls,
//! how requests are read, the throttles, health, the search proxy, the rooms, the AI
//! turns and the sockets.
//!
//! Only the top of the server (the endpoints, the envelope and the server's start and
//! stop) sees the whole; the modules below take the part they need, so none of them
//! depends on this one.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::accounts::User;
use narutalk_core::config::AiBackend;
use narutalk_core::error::Error as CoreError;

use crate::calls::{Caller, Calls};
use crate::error::ApiError;
use crate::health::Health;
use crate::http::{BodyRules, Site};
use crate::hub::{Hub, LocalHub};
use crate::limits::Throttles;
use crate::listener::ServeOptions;
use crate::settings::Settings;
use crate::turns::Turns;
use crate::ws::sockets::Sockets;
use crate::ws::{self, SocketRules};

/// The server's shared state.
pub struct State {
    /// The core, called on blocking threads.
    pub calls: Arc<Calls>,
    /// How request bodies are read.
    pub body: BodyRules,
    /// How the server is reached: its address, the trusted proxies, the CORS origins.
    pub site: Site,
    /// Request throttles.
    pub throttles: Arc<Throttles>,
    /// What health reports.
    pub health: Arc<Health>,
    /// The search proxy, when a search URL is configured.
    pub search: Option<Search>,
    /// Fans stored messages and reply deltas out to the sockets of each session.
    pub hub: Arc<dyn Hub>,
    /// The AI turns.
    pub turns: Arc<Turns>,
    /// What the WebSocket chat shares: the open sockets among it.
    pub ws: Arc<ws::Shared>,
    /// Work done: requests answered and sockets ended (it only grows); the memory trim
    /// waits for it to stop growing.
    pub activity: Arc<AtomicU64>,
}

/// The search service the proxy posts to.
pub struct Search {
    /// Its URL.
    pub url: String,
    /// A client with the configured timeout.
    pub client: reqwest::Client,
}

impl State {
    /// The state for serving `core` on `local_addr` with `config`.
    pub fn new(
        core: Arc<Narutalk>,
        config: &Settings,
        options: &ServeOptions,
        local_addr: std::net::SocketAddr,
    ) -> State {
        let calls = Arc::new(Calls::new(core));
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
        let throttles = Arc::new(Throttles::new(config, options.login_failure_refill));
        // The rooms read the messages their events missed from the core.
        let hub: Arc<dyn Hub> =
            Arc::new(LocalHub::new(options.ws_send_queue, calls.core().clone()));
        let turns = Arc::new(Turns::new(calls.clone(), hub.clone()));
        let activity = Arc::new(AtomicU64::new(0));
        let ws = Arc::new(ws::Shared {
            calls: calls.clone(),
            turns: turns.clone(),
            hub: hub.clone(),
            sockets: Sockets::default(),
            rules: SocketRules {
                ping: Duration::from_secs(u64::from(config.ws_ping_seconds)),
                idle: Duration::from_secs(u64::from(config.ws_idle_seconds)),
            },
            throttles: throttles.clone(),
            activity: activity.clone(),
        });
        State {
            health: Arc::new(Health::new(
                calls.clone(),
                config.core.ai_backend == AiBackend::Template,
                options.write_probe_interval,
            )),
            calls,
            body: BodyRules {
                limit: config.body_limit_bytes,
            },
            site: Site {
                trusted_proxies: config.trusted_proxies.clone(),
                cors_origins: config.cors_origins.clone(),
                local_addr,
            },
            throttles,
            search,
            hub,
            turns,
            ws,
            activity,
        }
    }

    /// [`Calls::run`]: blocking core work, off the async workers.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Narutalk) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.calls.run(work).await
    }

    /// [`Calls::run_as`]: blocking core work for `caller`, its token checked first.
    pub async fn run_as<T: Send + 'static>(
        &self,
        caller: Caller,
        work: impl FnOnce(&Narutalk, User) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.calls.run_as(caller, work).await
    }
}
