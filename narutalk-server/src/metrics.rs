//! Prometheus metrics: what the server emits, and the exporter that serves them.
//!
//! Emission goes through the [`metrics`] facade, here and in the core
//! ([`narutalk_core::metrics`]). Nothing records unless the process installed the
//! exporter ([`MetricsListener::bind`], when `NARUTALK_METRICS_BIND` is set): until then
//! each emission is a no-op. The exporter is served on a listener of its own, never on the
//! API's port, and answers `GET /metrics` in Prometheus's text format (404 otherwise).
//!
//! Labels are bounded sets: route templates (never a raw path or an id), status codes,
//! a few methods, fixed reasons. Histograms are in seconds, with buckets fit for each.
//! While no exporter is installed, the helpers below do not even build labels.
//!
//! The recorder is installed once per process; a thread of its own folds histogram
//! samples into their buckets every second, so they never pile up between scrapes, and a
//! scrape renders on a blocking thread. [`MetricsListener::serve_while`] serves for as
//! long as the server runs, its drain included.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{HeaderValue, Method, StatusCode, header};

/// Counter: requests answered, by method, route template and status.
pub const HTTP_REQUESTS: &str = "narutalk_http_requests_total";
/// Histogram: seconds from a request's arrival to its answer, by method and route.
pub const HTTP_SECONDS: &str = "narutalk_http_request_duration_seconds";
/// Gauge: open WebSockets.
pub const WS_OPEN: &str = "narutalk_ws_sockets_open";
/// Counter: WebSockets closed, by close code.
pub const WS_CLOSED: &str = "narutalk_ws_sockets_closed_total";
/// Counter: frames sent to WebSockets, by kind.
pub const WS_FRAMES: &str = "narutalk_ws_frames_sent_total";
/// Gauge: AI calls running (the core's name: its AI pool reports the same gauge).
pub const AI_RUNNING: &str = narutalk_core::metrics::AI_RUNNING;
/// Gauge: AI turns waiting for an earlier turn of the session (the core's turn engine).
pub const AI_QUEUED: &str = narutalk_core::metrics::AI_QUEUED;
/// Counter: AI turns finished, by responder, outcome and reason (the core's).
pub const AI_TURNS: &str = narutalk_core::metrics::AI_TURNS;
/// Histogram: seconds of each AI call, by responder (the core's).
pub const AI_SECONDS: &str = narutalk_core::metrics::AI_SECONDS;
/// Histogram: seconds from an AI call's start to its first streamed text (the core's).
pub const AI_FIRST_DELTA_SECONDS: &str = narutalk_core::metrics::AI_FIRST_DELTA_SECONDS;
/// Counter: requests and socket messages refused by a throttle (429), by bucket.
pub const THROTTLED: &str = "narutalk_throttled_total";

/// The route label of a path that matches no route.
pub const UNMATCHED: &str = "unmatched";

/// Buckets of request latency, in seconds: 0.5 ms to 30 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of AI call times, in seconds: 10 ms to 2 min.
const AI_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Buckets of commit batch sizes (1 to 64 writes).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// How often histogram samples are folded into their buckets when nobody scrapes, so
/// that they never pile up (at 60,000 requests a second, a second's samples take about
/// 0.5 MiB).
const UPKEEP: Duration = Duration::from_secs(1);

/// The one recorder of the process, installed on first use.
static EXPORTER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The metrics listener: its socket, bound, and the process's exporter.
pub struct MetricsListener {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsListener {
    /// Binds `address` and installs the process's Prometheus recorder (once per process:
    /// later calls share it), with every metric described. From then on the core and the
    /// server record.
    pub async fn bind(address: SocketAddr) -> anyhow::Result<MetricsListener> {
        let listener = TcpListener::bind(address).await?;
        let handle = install()?;
        Ok(MetricsListener { listener, handle })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` (and nothing else: 404) until `work` completes, and answers
    /// its output.
    pub async fn serve_while<T>(self, work: impl Future<Output = T>) -> T {
        let serving = async {
            self.serve().await;
            // The listener does not stop by itself; if it ever did, `work` still finishes.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            output = work => output,
            () = serving => unreachable!("serving never completes"),
        }
    }

    /// Serves `GET /metrics` (and nothing else: 404) until dropped.
    async fn serve(self) {
        let handle = self.handle;
        let scrape = warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .then(move || {
                let handle = handle.clone();
                async move {
                    // Rendering folds every histogram's samples: work for a blocking thread.
                    let text = tokio::task::spawn_blocking(move || handle.render())
                        .await
                        .unwrap_or_default();
                    warp::reply::with_header(
                        text,
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )
                }
            });
        warp::serve(scrape).incoming(self.listener).run().await;
    }
}

/// Installs the recorder, or answers the one installed.
fn install() -> anyhow::Result<PrometheusHandle> {
    let installed = EXPORTER.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_SECONDS.into()), REQUEST_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(narutalk_core::metrics::DB_WRITE_SECONDS.into()),
                    REQUEST_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(narutalk_core::metrics::ARGON2_SECONDS.into()),
                    REQUEST_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Prefix("narutalk_ai_".into()), AI_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(narutalk_core::metrics::DB_COMMIT_BATCH_WRITES.into()),
                    BATCH_BUCKETS,
                )
            })
            .map_err(|error| error.to_string())?;
        let handle = built
            .install_recorder()
            .map_err(|error| error.to_string())?;
        describe();
        narutalk_core::metrics::describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("narutalk-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|error| format!("starting the metrics upkeep thread: {error}"))?;
        Ok(handle)
    });
    installed
        .clone()
        .map_err(|error| anyhow::anyhow!("installing the Prometheus exporter: {error}"))
}

/// The server's help texts.
fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by method, route template and status code."
    );
    describe_histogram!(
        HTTP_SECONDS,
        Unit::Seconds,
        "Time from a request's arrival to its answer, by method and route template."
    );
    describe_gauge!(WS_OPEN, Unit::Count, "WebSockets open now.");
    describe_counter!(WS_CLOSED, Unit::Count, "WebSockets closed, by close code.");
    describe_counter!(
        WS_FRAMES,
        Unit::Count,
        "Frames sent to WebSockets, by kind (chat_message, ai_delta, error, pong, ping)."
    );
    describe_counter!(
        THROTTLED,
        Unit::Count,
        "Requests and socket messages refused with 429, by throttle bucket."
    );
}

/// Whether this process records metrics (the exporter is installed): callers skip the
/// work of building labels when it does not.
pub fn enabled() -> bool {
    EXPORTER.get().is_some_and(Result::is_ok)
}

/// The handles of one method, route and status: looked up once, then reused, so that a
/// request costs a map read and two atomic updates rather than building its labels.
type RequestHandles = HashMap<(&'static str, &'static str, u16), (Counter, Histogram)>;

thread_local! {
    /// The request handles this thread has met (a bounded set: methods × routes ×
    /// statuses). Each thread keeps its own, so counting a request touches no lock or
    /// cache line that another thread's requests touch, beyond the metric's own atomics.
    static REQUEST_HANDLES: RefCell<RequestHandles> = RefCell::new(HashMap::new());
}

/// Counts one answered request and its latency (nothing while no exporter is installed).
pub fn request(method: &Method, route: &'static str, status: StatusCode, started: Instant) {
    if !enabled() {
        return;
    }
    let key = (method_label(method), route, status.as_u16());
    let seconds = started.elapsed().as_secs_f64();
    REQUEST_HANDLES.with_borrow_mut(|handles| {
        let (requests, duration) = handles.entry(key).or_insert_with(|| {
            let (method, route, status) = key;
            (
                metrics::counter!(
                    HTTP_REQUESTS,
                    "method" => method,
                    "route" => route,
                    "status" => status.to_string()
                ),
                metrics::histogram!(HTTP_SECONDS, "method" => method, "route" => route),
            )
        });
        requests.increment(1);
        duration.record(seconds);
    });
}

/// The method as a label: the methods the API knows, `other` for any other.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one frame of `kind` sent to a socket.
pub fn frame_sent(kind: &'static str) {
    if enabled() {
        metrics::counter!(WS_FRAMES, "kind" => kind).increment(1);
    }
}

/// Counts one socket closed with `code`.
pub fn socket_closed(code: u16) {
    if enabled() {
        metrics::counter!(WS_CLOSED, "code" => code.to_string()).increment(1);
    }
}

/// Counts one request refused by the throttle `bucket`.
pub fn throttled(bucket: &'static str) {
    if enabled() {
        metrics::counter!(THROTTLED, "bucket" => bucket).increment(1);
    }
}

/// Adds `delta` to the gauge `name` (negative to subtract).
pub fn gauge_add(name: &'static str, delta: f64) {
    metrics::gauge!(name).increment(delta);
}

/// Holds one unit of a gauge while it lives: incremented when made, decremented when
/// dropped (also when its task is cancelled or a call panics).
pub struct GaugeHold(&'static str);

impl GaugeHold {
    /// Adds one to the gauge `name` until the hold is dropped.
    pub fn new(name: &'static str) -> GaugeHold {
        gauge_add(name, 1.0);
        GaugeHold(name)
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        gauge_add(self.0, -1.0);
    }
}
