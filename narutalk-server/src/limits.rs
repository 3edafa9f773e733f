//! What protects the server from being flooded: request throttles (contract sections 2
//! and 3) and the bounded password-hashing queue (section 2).

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use narutalk_core::config::Config;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ApiError;

/// One throttle: at most N requests a minute per key, as a token bucket of N that refills
/// one token every `60 / N` seconds. `None` when the setting is 0 (off).
pub struct Throttle<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    /// A throttle of `per_minute` requests a minute per key; 0 turns it off.
    pub fn per_minute(per_minute: u32) -> Self {
        Throttle {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    /// Counts one request for `key`; [`ApiError::Throttled`] with the whole seconds to
    /// wait when the key has used its quota.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::Throttled(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }

    /// Forgets keys whose buckets are full again, so the map stays as small as the set of
    /// recently active clients.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

/// Every throttle of the contract.
pub struct Throttles {
    /// Login attempts per client IP.
    pub login_ip: Throttle<IpAddr>,
    /// Login attempts per lower-cased email.
    pub login_email: Throttle<String>,
    /// Registrations per client IP.
    pub register_ip: Throttle<IpAddr>,
    /// Registrations per lower-cased email.
    pub register_email: Throttle<String>,
    /// Posted chat messages per user id.
    pub messages: Throttle<i64>,
}

impl Throttles {
    /// The throttles the settings ask for.
    pub fn new(config: &Config) -> Self {
        let auth = config.auth_throttle_per_minute;
        Throttles {
            login_ip: Throttle::per_minute(auth),
            login_email: Throttle::per_minute(auth),
            register_ip: Throttle::per_minute(auth),
            register_email: Throttle::per_minute(auth),
            messages: Throttle::per_minute(config.message_throttle_per_minute),
        }
    }

    /// [`Throttle::forget_idle`] on each.
    pub fn forget_idle(&self) {
        self.login_ip.forget_idle();
        self.login_email.forget_idle();
        self.register_ip.forget_idle();
        self.register_email.forget_idle();
        self.messages.forget_idle();
    }
}

/// How many password hashes may wait for a core beyond those running (contract section 2).
pub const HASH_QUEUE: usize = 64;

/// Runs at most one argon2 computation per core; up to [`HASH_QUEUE`] more wait, and any
/// beyond are refused with 503 rather than queued without bound.
pub struct HashGate {
    running: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

/// Counts a waiter for as long as it waits, even when its request is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashGate {
    /// A gate with `cores` computations at once and `queue` waiting places.
    pub fn new(cores: usize, queue: usize) -> Self {
        HashGate {
            running: Semaphore::new(cores.max(1)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// A place to hash in, waiting for one when all are taken; [`ApiError::Unavailable`]
    /// when the queue is full.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Unavailable);
        }
        let _waiting = Waiting(&self.waiting);
        self.running.acquire().await.map_err(|_| ApiError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_refuses_the_request_after_its_quota_with_the_wait() {
        let throttle = Throttle::per_minute(2);
        assert!(throttle.check(&1).is_ok());
        assert!(throttle.check(&1).is_ok());
        match throttle.check(&1) {
            Err(ApiError::Throttled(seconds)) => assert!((1..=30).contains(&seconds)),
            other => panic!("expected a throttle, got {other:?}"),
        }
        assert!(throttle.check(&2).is_ok(), "keys are counted apart");
    }

    #[test]
    fn a_zero_throttle_is_off() {
        let throttle = Throttle::per_minute(0);
        for _ in 0..1000 {
            assert!(throttle.check(&1).is_ok());
        }
    }

    #[tokio::test]
    async fn the_hash_gate_refuses_beyond_its_queue() {
        let gate = std::sync::Arc::new(HashGate::new(1, 1));
        let running = gate.enter().await.unwrap();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.map(drop) })
        };
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(gate.enter().await, Err(ApiError::Unavailable)));
        drop(running);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }
}
