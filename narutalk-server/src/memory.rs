//! Giving freed memory back to the system once a burst of work is over.
//!
//! glibc's malloc returns freed memory to the system only from the top of each heap: after
//! a burst (10,000 sockets opened and closed, a spike of requests) the freed pages below
//! the last live allocation stay resident for as long as the process runs. Measured with
//! the load harness: 10,000 sockets took the server from 11 to 70 MiB, and it stayed at
//! 69 MiB after they closed; one `malloc_trim(0)` brought it to 21 MiB.
//!
//! So the server counts its work (requests served, sockets ended) and, when a second
//! passes with none after some, trims once, on a blocking thread. A busy server is never
//! trimmed (the trim locks each arena in turn), an idle one only once per burst.
//!
//! `malloc_trim` is the one `unsafe` call of the workspace: `unsafe_code` is `deny` in
//! the workspace's lints, and only this call is allowed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long the server must be quiet before it trims.
pub const QUIET: Duration = Duration::from_secs(1);

/// Trims whenever work stops: `activity` counts the work done (it only grows).
pub async fn trim_when_idle(activity: Arc<AtomicU64>) {
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = activity.load(Ordering::Relaxed);
    let mut trimmed_at = seen;
    loop {
        ticks.tick().await;
        let now = activity.load(Ordering::Relaxed);
        if burst_ended(seen, now, trimmed_at) {
            let _ = tokio::task::spawn_blocking(release).await;
            trimmed_at = now;
        }
        seen = now;
    }
}

/// Whether to trim now: nothing happened since the last look (`seen` is `now`), but
/// something did since the last trim.
fn burst_ended(seen: u64, now: u64, trimmed_at: u64) -> bool {
    now == seen && now != trimmed_at
}

/// Asks the allocator to return the free pages of every arena to the system; whether it
/// gave anything back. Only glibc needs it: elsewhere it does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc serializes it
    // with every other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the allocator to return free pages: other allocators do that themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_comes_once_per_burst_and_only_when_it_is_over() {
        // Busy: work since the last look.
        assert!(!burst_ended(10, 15, 0));
        // Quiet after work: trim.
        assert!(burst_ended(15, 15, 0));
        // Still quiet, already trimmed: nothing more.
        assert!(!burst_ended(15, 15, 15));
        // Never busy at all: nothing to give back.
        assert!(!burst_ended(0, 0, 0));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_is_given_back() {
        // Blocks of 64 KiB (below glibc's mapping threshold, so on its heap), every other
        // one kept: the freed half sits below live blocks, where glibc's own trimming
        // cannot reach it, in pieces large enough to hold whole pages.
        let mut blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 * 1024]).collect();
        let mut kept = 0;
        blocks.retain(|_| {
            kept += 1;
            kept % 2 == 0
        });
        assert!(release(), "the freed half was given back");
        drop(blocks);
    }
}
