//! The server: [`serve`] builds the shared state, starts the background work (service
//! probes, the throttles' sweep, the memory trim, the revocation watch), serves the one
//! warp filter that hands every request to the envelope, and stops in the contract's
//! order.
//!
//! A stop ([`serve_with`] gives the order) cuts nobody off half-way: a request still
//! sending its body is answered 503 at once; a socket answers a message it can no longer
//! take with an `error` frame that says why; the listener's drain and the sockets' close
//! both run to their end, so every socket gets its 1001 even when the AI turns outlast
//! [`ServeOptions::drain_timeout`](crate::listener::ServeOptions::drain_timeout) (60 s).
//! Every wait is bounded, and the binary then exits 0.

use std::sync::Arc;
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::config::AiBackend;
use tokio::net::TcpListener;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::path::FullPath;

use crate::body::RequestBody;
use crate::envelope;
use crate::http::Request;
use crate::listener::{self, PeerAddr, PeerLimit, ServeOptions, Takeover, TargetWithoutPath};
use crate::memory;
use crate::probe;
use crate::response::Response;
use crate::settings::Settings;
use crate::state::State;
use crate::turns;
use crate::ws;

/// How often idle throttle keys are forgotten.
const THROTTLE_SWEEP: Duration = Duration::from_secs(60);

/// How long sockets get to send what is queued for them at shutdown before they are
/// closed regardless.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a shutdown waits for sockets to finish their close handshake once they are
/// closed regardless (a handshake takes at most 10 s).
const SOCKET_CLOSE_WAIT: Duration = Duration::from_secs(11);

/// Serves the API on `listener` with the default [`ServeOptions`] until `shutdown`
/// completes, then finishes in-flight requests and returns.
pub async fn serve(
    core: Arc<Narutalk>,
    config: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(core, config, listener, ServeOptions::default(), shutdown).await;
}

/// [`serve`] with explicit limits.
///
/// A stop goes in this order: the listener stops accepting and open HTTP connections
/// finish their request; sockets stop taking new messages; the AI turns in flight finish
/// and their frames are delivered; then every socket sends what is queued for it and
/// closes with 1001. The waits for requests and turns are bounded by
/// [`ServeOptions::drain_timeout`]; sockets get 5 s to close, then are closed regardless.
pub async fn serve_with(
    core: Arc<Narutalk>,
    config: &Settings,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = Arc::new(State::new(core.clone(), config, &options, local_addr));
    // After the rooms subscribed to the core's events: the turns a crash left pending are
    // answered from here on, and their replies reach the sockets that resume.
    let starting = core.clone();
    match tokio::task::spawn_blocking(move || starting.start_turns()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "the turn engine could not look for the turns left pending: each is answered with its session's next message")
        }
        Err(error) => tracing::error!(%error, "the turn engine's start failed"),
    }
    let mut background = Vec::new();
    if let Some(search) = &state.search {
        background.push(probe::spawn(
            &search.url,
            state.health.search_reachable.clone(),
        ));
    }
    if config.core.ai_backend != AiBackend::Template {
        background.push(probe::spawn(
            &config.core.ai_url,
            state.health.ai_reachable.clone(),
        ));
    }
    let sweeper = state.clone();
    background.push(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(THROTTLE_SWEEP);
        loop {
            ticks.tick().await;
            sweeper.throttles.forget_idle();
        }
    }));
    background.push(tokio::spawn(memory::trim_when_idle(state.activity.clone())));
    background.push(tokio::spawn(ws::sockets::watch_revocations(
        state.ws.clone(),
        options.revocation_check,
    )));

    let stop_accepting = tokio_util::sync::CancellationToken::new();
    let stop = async {
        shutdown.await;
        stop_accepting.cancel();
        let sockets = &state.ws.sockets;
        sockets.stop_taking_messages();
        turns::drain(&core, options.drain_timeout).await;
        tracing::info!(sockets = sockets.open(), "closing the open sockets");
        sockets.close_all();
        // Sockets stuck writing to peers that do not read get a little longer, then go;
        // each close handshake is itself bounded.
        if !sockets.all_closed(SOCKET_CLOSE_GRACE).await {
            sockets.close_now();
            if !sockets.all_closed(SOCKET_CLOSE_WAIT).await {
                tracing::warn!(
                    sockets = sockets.open(),
                    "stopped before every socket finished closing: their close handshakes were still running after the grace time"
                );
            }
        }
    };
    let peers = PeerLimit {
        per_ip: usize::try_from(config.max_connections_per_ip).unwrap_or(usize::MAX),
        exempt: config.trusted_proxies.clone(),
    };
    let serving = listener::serve(
        listener,
        routes(state.clone()),
        options,
        peers,
        stop_accepting.cancelled(),
    );
    // Both run to the end: the listener's own drain may give up on connections before
    // the sockets are told to close, and they must still be closed with 1001.
    tokio::join!(serving, stop);
    // Every connection is closed, but a turn whose socket went away may still be running:
    // its reply is stored before the server returns.
    turns::drain(&core, options.drain_timeout).await;
    for task in background {
        task.abort();
    }
}

/// The whole server as one warp filter: every request goes to [`envelope::respond`].
fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<Takeover>())
        .and(warp::ext::optional::<TargetWithoutPath>())
        .and(warp::ext::optional::<RequestBody>())
        .then(
            move |method,
                  path: FullPath,
                  query,
                  headers,
                  peer: Option<PeerAddr>,
                  takeover: Option<Takeover>,
                  target_without_path: Option<TargetWithoutPath>,
                  body: Option<RequestBody>| {
                let mut request = Request::new(
                    method,
                    path.as_str().to_owned(),
                    query,
                    headers,
                    peer.map(|peer| peer.0),
                    String::new(),
                    body,
                );
                request.takeover = takeover;
                request.target_without_path = target_without_path.map(|target| target.0);
                envelope::respond(state.clone(), request)
            },
        )
        .boxed()
}
