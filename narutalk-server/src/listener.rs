//! The accept loop: warp's filter served over hyper with what warp 0.4's own `serve`
//! lacks: a time limit for request headers and a minimum pace for bodies (slow clients),
//! a connection cap and a per-IP share of it (greedy clients), the peer address carried
//! into every request, targets brought to origin form, early answers that still reach a
//! client that is sending its body, and a graceful stop that finishes in-flight requests.
//!
//! - Request headers must arrive within [`ServeOptions::header_read_timeout`] (10 s).
//! - The connection cap is a semaphore: at the cap, new connections wait in the listen
//!   backlog rather than being accepted and starved. Each peer IP has a share of the cap
//!   (`NARUTALK_MAX_CONNECTIONS_PER_IP`; trusted proxies are exempt), and a connection
//!   over its peer's share is closed before any HTTP is read. A connection upgraded to a
//!   WebSocket keeps its places in both (the [`Takeover`] carries them) until it closes.
//! - Every connection has `TCP_NODELAY`; every request carries its peer ([`PeerAddr`])
//!   and its body as a `body::RequestBody` in its extensions.
//! - A target in absolute form becomes its path, its authority the `Host`; a target
//!   with no path becomes `/`, marked [`TargetWithoutPath`] (answered 400 by the
//!   envelope), because warp's path filters panic on it.
//! - The graceful stop waits until every connection has finished its request, that is
//!   until every permit of the cap is back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;

use crate::body::{BodyPace, RequestBody};
use crate::response::Response;

/// The TCP peer of a request, put into its extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// A request's hold on its connection, put into the extensions of every request that
/// asks for an upgrade: hyper's upgrade future and the connection's place under the
/// connection cap and in its peer's share. Whoever takes it over (the WebSocket
/// handshake) keeps the place until the upgraded connection closes, so open sockets count
/// against the caps like any other connection, and a graceful stop waits for them too.
#[derive(Clone)]
pub struct Takeover(Arc<Mutex<Option<Upgrade>>>);

/// What [`Takeover::take`] hands over.
pub struct Upgrade {
    /// Resolves to the raw connection once the `101 Switching Protocols` answer is sent.
    pub on_upgrade: OnUpgrade,
    /// The connection's place under the caps; dropping it frees the place.
    pub place: Arc<Place>,
}

impl Takeover {
    /// The upgrade, the first time it is asked for.
    pub fn take(&self) -> Option<Upgrade> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Takeover")
    }
}

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Connections open at once; beyond it, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this time is dropped.
    pub header_read_timeout: Duration,
    /// How long a request body may send nothing at all; after it, the body must keep up
    /// with [`ServeOptions::body_min_bytes_per_second`] or be answered 408 and its
    /// connection closed.
    pub body_grace: Duration,
    /// The rate a request body must keep up after [`ServeOptions::body_grace`]: bytes
    /// received ≥ this × (seconds since the body started − the grace); 0 = no minimum.
    pub body_min_bytes_per_second: u64,
    /// How long a stop waits for in-flight requests before giving up on them.
    pub drain_timeout: Duration,
    /// Frames a WebSocket may be behind before it is closed with 1013 as too slow.
    pub ws_send_queue: usize,
    /// How often open WebSockets are checked for revoked tokens and deleted sessions
    /// (contract section 6: closed within 5 s).
    pub revocation_check: Duration,
    /// How often a login failure budget gets a token back (contract section 9: 36 s);
    /// tests lengthen it so that no token comes back while they run.
    pub login_failure_refill: Duration,
    /// While writes fail, how often health at most tries the small write that shows they
    /// work again (contract section 9: every 10 s).
    pub write_probe_interval: Duration,
}

impl Default for ServeOptions {
    /// Contract sections 4 and 9: 10 s for headers, 10,000 connections, bodies at
    /// 500 bytes a second after 10 s of grace. Sockets: 256 frames of queue, revocation
    /// checked every 2 s. A write probe at most every 10 s.
    fn default() -> Self {
        ServeOptions {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_grace: Duration::from_secs(10),
            body_min_bytes_per_second: 500,
            drain_timeout: Duration::from_secs(60),
            ws_send_queue: 256,
            revocation_check: Duration::from_secs(2),
            login_failure_refill: crate::limits::LOGIN_FAILURE_REFILL,
            write_probe_interval: Duration::from_secs(10),
        }
    }
}

/// How many connections one client may hold at once.
#[derive(Clone, Debug, Default)]
pub struct PeerLimit {
    /// Connections one peer IP may hold at once (open WebSockets included); 0 = no
    /// limit. A connection over its peer's share is closed at once, before any HTTP is
    /// read.
    pub per_ip: usize,
    /// Peers without a share (the trusted proxies, which carry many clients each).
    pub exempt: Vec<IpAddr>,
}

impl PeerLimit {
    /// Whether connections from `ip` are counted.
    fn applies_to(&self, ip: IpAddr) -> bool {
        self.per_ip > 0 && !self.exempt.iter().any(|exempt| exempt.to_canonical() == ip)
    }
}

/// Serves `filter` on `listener` until `shutdown` completes; then stops accepting, lets
/// every open connection finish the request it is on (a request still sending its body
/// is answered 503 at once), and returns.
pub async fn serve(
    listener: TcpListener,
    filter: BoxedFilter<(Response,)>,
    options: ServeOptions,
    peers: PeerLimit,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let connections = Arc::new(Semaphore::new(max_connections));
    let shares = Arc::new(Shares::default());
    let stopping = CancellationToken::new();
    let pace = BodyPace {
        grace: options.body_grace,
        min_bytes_per_second: options.body_min_bytes_per_second,
    };
    let service = warp::service(filter);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ip = peer.ip().to_canonical();
        let share = if peers.applies_to(ip) {
            let Some(share) = shares.take(ip, peers.per_ip) else {
                tracing::debug!(%peer, "closed a connection over its peer's share");
                continue;
            };
            Some(share)
        } else {
            None
        };
        // Without it, a small frame written right after another waits for the peer's
        // delayed ACK (about 40 ms): a WebSocket reply after its echo, for one.
        let _ = stream.set_nodelay(true);
        let place = Arc::new(Place {
            _connection: permit,
            _share: share,
        });
        let hyper_service =
            connection_service(service.clone(), peer, place.clone(), pace, stopping.clone());
        let stopped = stopping.clone();
        let header_read_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let mut connection = pin!(
                builder
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .with_upgrades()
            );
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    stopping.cancel();
    // Every connection holds a permit until it has finished: all permits back means drained.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.drain_timeout, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            connections = max_connections.saturating_sub(connections.available_permits()),
            drain_seconds = options.drain_timeout.as_secs(),
            "stopped before every in-flight request finished: connections were still open when the drain time ran out"
        );
    }
}

/// A request target that has no path (`GET host:443`, `CONNECT host:443`), put into the
/// request's extensions by the accept loop, which hands warp the path `/` instead: the
/// answer is `400 Bad request.`. Holds the target as sent, for the access log.
#[derive(Clone, Debug)]
pub struct TargetWithoutPath(pub String);

/// The hyper service of one connection: warp's service, given each request's peer, its
/// body as a [`RequestBody`], its hold on the connection when it asks for an upgrade,
/// and an origin-form target.
fn connection_service<S>(
    warp_service: S,
    peer: SocketAddr,
    place: Arc<Place>,
    pace: BodyPace,
    stopping: CancellationToken,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone
where
    S: Service<hyper::Request<String>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        if request.headers().contains_key(hyper::header::UPGRADE) {
            let on_upgrade = hyper::upgrade::on(&mut request);
            request
                .extensions_mut()
                .insert(Takeover(Arc::new(Mutex::new(Some(Upgrade {
                    on_upgrade,
                    place: place.clone(),
                })))));
        }
        to_origin_form(&mut request);
        let expects_continue = request
            .headers()
            .get(hyper::header::EXPECT)
            .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (mut parts, incoming) = request.into_parts();
        let body = RequestBody::new(incoming, pace, stopping.clone(), expects_continue);
        parts.extensions.insert(body.clone());
        // warp reads nothing of the body: handlers read the `RequestBody`.
        let request = hyper::Request::from_parts(parts, String::new());
        let mut warp_service = warp_service.clone();
        async move {
            let Ok(mut response) = warp_service.call(request).await;
            body.after_answer(&mut response);
            Ok::<_, Infallible>(response)
        }
    })
}

/// Rewrites an absolute-form target (`GET http://host/path`) to its path and query, with
/// its authority as the `Host` (RFC 9112 section 3.2.2), and a target without a path to
/// `/` with a [`TargetWithoutPath`] in the extensions.
fn to_origin_form<B>(request: &mut hyper::Request<B>) {
    let uri = request.uri();
    if !uri.path().starts_with('/') {
        let target = uri.to_string();
        request.extensions_mut().insert(TargetWithoutPath(target));
        *request.uri_mut() = hyper::Uri::from_static("/");
        return;
    }
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    // The host and port only: an absolute URI may carry user information too.
    let authority = uri.authority().and_then(|authority| {
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        HeaderValue::from_str(&host).ok()
    });
    let origin_form = uri
        .path_and_query()
        .and_then(|path| hyper::Uri::try_from(path.as_str()).ok())
        .unwrap_or_else(|| hyper::Uri::from_static("/"));
    *request.uri_mut() = origin_form;
    if let Some(authority) = authority {
        request.headers_mut().insert(hyper::header::HOST, authority);
    }
}

/// A connection's places under the connection caps: among all connections, and in its
/// peer's share. Dropping it frees both.
pub struct Place {
    _connection: OwnedSemaphorePermit,
    _share: Option<Share>,
}

/// How many connections each counted peer IP holds.
#[derive(Default)]
struct Shares(Mutex<HashMap<IpAddr, usize>>);

impl Shares {
    /// One more connection for `ip`, unless it already holds `limit`.
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Share> {
        let mut held = self.lock();
        let count = held.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection in its peer's share; given back when dropped.
struct Share {
    shares: Arc<Shares>,
    ip: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        if let Some(count) = held.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}
