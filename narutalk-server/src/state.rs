//! What every request shares, assembled from the parts each module owns: the core calls,
//! how requests are read, the throttles, health, the search proxy, the rooms and the
//! sockets; and the one subscription to the core's event bus, which feeds the rooms and
//! the revocation watch (no handler publishes anything).
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
use narutalk_core::events::{Event, EventSubscription};

use crate::frames;
use crate::hub::{Hub, LocalHub, RoomEvent};
use crate::limits::{SharedBuckets, Throttles};
use crate::listener::ServeOptions;
use crate::settings::Settings;
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
    /// The rooms' and the revocation watch's subscription to the core's events (the
    /// rooms fan stored messages and reply deltas out to the sockets of each session);
    /// dropping the state ends it.
    _events: EventSubscription,
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
        // On a store several servers share, every throttle counts in the store's buckets.
        let throttles = Arc::new(Throttles::new(
            config,
            options.login_failure_refill,
            SharedBuckets::of(calls.core()),
        ));
        // The rooms read the messages their events missed from the core.
        let hub: Arc<dyn Hub> =
            Arc::new(LocalHub::new(options.ws_send_queue, calls.core().clone()));
        let activity = Arc::new(AtomicU64::new(0));
        let ws = Arc::new(ws::Shared {
            calls: calls.clone(),
            hub: hub.clone(),
            sockets: Sockets::default(),
            rules: SocketRules {
                ping: Duration::from_secs(u64::from(config.ws_ping_seconds)),
                idle: Duration::from_secs(u64::from(config.ws_idle_seconds)),
            },
            throttles: throttles.clone(),
            activity: activity.clone(),
        });
        let events = listen(calls.core(), hub.clone(), ws.clone());
        State {
            _events: events,
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

/// Subscribes the rooms and the sockets to the core's events: stored messages and reply
/// deltas go to their session's room, a deleted session's room closes, and a revocation
/// makes the revocation watch look at once. The callback runs on the core's publishing
/// thread and only hands events on (the hub never waits).
fn listen(core: &Narutalk, hub: Arc<dyn Hub>, ws: Arc<ws::Shared>) -> EventSubscription {
    core.events()
        .subscribe(Arc::new(move |event: &Event| match event {
            Event::MessageStored {
                message: Some(message),
                ..
            } => hub.publish(message.session_id, RoomEvent::stored(message)),
            Event::ReplyDelta {
                session,
                reply,
                answers_seq,
                text,
                ..
            } => hub.publish(
                *session,
                RoomEvent::Delta {
                    reply: *reply,
                    after: *answers_seq,
                    frame: frames::ai_delta(*reply, text),
                },
            ),
            // A message another server stored (its body is in the store): the room reads it.
            Event::MessageStored {
                session,
                seq,
                message: None,
                ..
            } => hub.publish(*session, RoomEvent::Reached { seq: *seq }),
            Event::SessionDeleted { session, .. } => hub.publish(*session, RoomEvent::Deleted),
            Event::UserRevoked { .. } | Event::LoginEnded { .. } => ws.sockets.check_soon(),
            // Other servers' changes may have been missed: every room reads what it has
            // not delivered, and the revocation watch looks now.
            Event::MayHaveMissed => {
                hub.resync();
                ws.sockets.check_soon();
            }
            _ => {}
        }))
}
