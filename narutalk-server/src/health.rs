//! What health reports (contract sections 4 and 9): whether the database answers a real
//! query (reused for a second, so a flood of health checks costs one query a second),
//! whether writes work (with the small write that shows they work again), and the last
//! background probes of the AI and search services.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::calls::Calls;

/// How long a database health check is reused.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// The server's view of its own health.
pub struct Health {
    calls: Arc<Calls>,
    /// Whether the AI service answered its last probe (always true for `template`; false
    /// for the others until their first probe, which runs at start, has connected).
    pub ai_reachable: Arc<AtomicBool>,
    /// Whether the search service answered its last probe.
    pub search_reachable: Arc<AtomicBool>,
    database: DatabaseHealth,
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

impl Health {
    /// Health of the core behind `calls`: the AI service counts as reachable from the
    /// start when `ai_reachable` (the template needs no service); a write probe runs at
    /// most every `write_probe_interval`.
    pub fn new(calls: Arc<Calls>, ai_reachable: bool, write_probe_interval: Duration) -> Health {
        Health {
            calls,
            ai_reachable: Arc::new(AtomicBool::new(ai_reachable)),
            search_reachable: Arc::new(AtomicBool::new(false)),
            database: DatabaseHealth {
                started: Instant::now(),
                checked_at: AtomicU64::new(0),
                healthy: AtomicBool::new(false),
                refreshing: tokio::sync::Mutex::new(()),
            },
            write_probe: WriteProbe {
                interval: write_probe_interval,
                started: Instant::now(),
                last: AtomicU64::new(0),
                running: AtomicBool::new(false),
            },
        }
    }

    /// Whether the database answers a real query; the answer is reused for a second, and
    /// of many requests that find it stale, one runs the query while the others wait.
    pub async fn database_healthy(&self) -> bool {
        let health = &self.database;
        if let Some(healthy) = self.fresh_health() {
            return healthy;
        }
        let _refreshing = health.refreshing.lock().await;
        if let Some(healthy) = self.fresh_health() {
            return healthy;
        }
        let healthy = self.calls.run(|core| core.store().ping()).await.is_ok();
        health.healthy.store(healthy, Ordering::Release);
        let now = u64::try_from(health.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        health.checked_at.store(now + 1, Ordering::Release);
        healthy
    }

    /// What health reports about the database: [`DatabaseStatus::Unavailable`] when a
    /// read fails ([`Health::database_healthy`]), [`DatabaseStatus::ReadOnly`] while the
    /// core says writes fail for a database cause. In that state it starts the core's
    /// write probe in the background, once per
    /// [`crate::listener::ServeOptions::write_probe_interval`] at most (the first one
    /// interval after health first saw the state: the failure that began it is that
    /// fresh), so that the state ends without any other write; the answer never waits for
    /// the probe.
    pub async fn database_status(self: &Arc<Self>) -> DatabaseStatus {
        if !self.database_healthy().await {
            return DatabaseStatus::Unavailable;
        }
        if !self.calls.core().store().writes_failing() {
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
        let health = self.clone();
        tokio::spawn(async move {
            let core = health.calls.core().clone();
            let probed = tokio::task::spawn_blocking(move || core.store().probe_writes()).await;
            match probed {
                Ok(Ok(())) => tracing::info!("the write probe succeeded: writes work again"),
                Ok(Err(error)) => tracing::debug!(%error, "the write probe failed"),
                Err(error) => tracing::error!(%error, "the write probe did not finish"),
            }
            health.write_probe.running.store(false, Ordering::Release);
        });
    }

    fn fresh_health(&self) -> Option<bool> {
        let health = &self.database;
        let checked_at = health.checked_at.load(Ordering::Acquire);
        let now = u64::try_from(health.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cache = u64::try_from(HEALTH_CACHE.as_millis()).unwrap_or(u64::MAX);
        (checked_at != 0 && now + 1 - checked_at < cache)
            .then(|| health.healthy.load(Ordering::Acquire))
    }
}
