//! What a load phase measured: counts, errors and a latency histogram.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency a histogram holds, in microseconds (60 s); longer ones are
/// recorded as this value.
const HIGHEST_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, with `precision` significant figures (3 for the
/// HTTP connections, 2 for the thousands of fan-out sockets, to keep them small).
pub fn histogram(precision: u8) -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, precision)
        .map_err(|error| anyhow::anyhow!("creating a latency histogram: {error}"))
}

/// Records `latency` in `histogram`, in microseconds.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(HIGHEST_MICROS);
    histogram.saturating_record(micros.max(1));
}

/// The results of one group of operations (one scenario, or one kind of request within
/// one) over one measured window.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Operations that succeeded within the window (2xx answers, delivered frames).
    pub ok: u64,
    /// Operations that failed: non-2xx answers, transport errors, timeouts, missing or
    /// out-of-order frames. Includes `refused`.
    pub errors: u64,
    /// Of `errors`, the answers that refused the harness's own request (4xx, WebSocket
    /// `error` frames, refused handshakes): they mean the harness no longer speaks the
    /// API, not that the server is slow.
    pub refused: u64,
    /// Operations started within the window that succeeded after its end: not in the
    /// rate or the latencies, but they show the scenario works (a `--smoke` window may be
    /// shorter than one slow operation, such as a login's hash on a busy machine).
    pub finished_late: u64,
    /// The measured window.
    pub window: Duration,
    /// Latency of the successful operations.
    pub latency: Histogram<u64>,
}

impl Measured {
    /// Nothing measured yet over `window`.
    pub fn new(window: Duration, precision: u8) -> anyhow::Result<Measured> {
        Ok(Measured {
            ok: 0,
            errors: 0,
            refused: 0,
            finished_late: 0,
            window,
            latency: histogram(precision)?,
        })
    }

    /// Adds `other`'s counts and latencies (same window) to these.
    pub fn merge(&mut self, other: &Measured) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.errors += other.errors;
        self.refused += other.refused;
        self.finished_late += other.finished_late;
        self.latency
            .add(&other.latency)
            .map_err(|error| anyhow::anyhow!("merging latency histograms: {error}"))
    }

    /// Successful operations per second of the window.
    pub fn rate(&self) -> f64 {
        per_second(self.ok, self.window)
    }

    /// The latency at `quantile` (0.5 for p50) in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        micros_to_ms(self.latency.value_at_quantile(quantile))
    }

    /// The highest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        micros_to_ms(self.latency.max())
    }
}

/// `count` per second of `window` (0 for an empty window).
pub fn per_second(count: u64, window: Duration) -> f64 {
    let seconds = window.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}
