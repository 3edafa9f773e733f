//! What protects the server from being flooded: request throttles (contract sections 2
//! and 3) and the login failure budgets (section 9). The bound on password hashing
//! (section 2) is the core's (`narutalk_core::accounts::password::PasswordHashing`): a
//! full queue is the core's `Error::Unavailable`, answered 503.
//!
//! A [`Throttle`] counts every request. A [`FailureBudget`] counts only what its caller
//! keeps: a login reserves a token before it hashes, and the token is given back unless
//! the answer is a 401, so parallel wrong logins can never spend more than the bucket
//! holds. The token also comes back when the request is cancelled (the reservation is
//! dropped).
//!
//! Throttles are governor token buckets keyed by the client IP, the lower-cased email or
//! the user id; the failure budgets are keyed by the email's digest or the device token
//! ([`Throttles`] lists them all). Keys whose buckets are full again are forgotten every
//! minute, so the maps stay as small as the set of recently active clients.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use narutalk_core::accounts::EmailKey;
use narutalk_core::accounts::devices::Device;

use crate::error::ApiError;
use crate::metrics;
use crate::settings::Settings;

/// One throttle: at most N requests a minute per key, as a token bucket of N that refills
/// one token every `60 / N` seconds. `None` when the setting is 0 (off).
pub struct Throttle<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    /// The `bucket` label of its refusals.
    bucket: &'static str,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    /// A throttle of `per_minute` requests a minute per key; 0 turns it off.
    pub fn per_minute(per_minute: u32) -> Self {
        Throttle {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            bucket: "unnamed",
        }
    }

    /// The same throttle, its refusals counted under `bucket` in the metrics.
    pub fn named(self, bucket: &'static str) -> Self {
        Throttle { bucket, ..self }
    }

    /// Counts one request for `key`; [`ApiError::Throttled`] with the whole seconds to
    /// wait when the key has used its quota.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            metrics::throttled(self.bucket);
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

/// The size of a login failure budget (contract section 9): failures in a row.
pub const LOGIN_FAILURE_BUDGET: u32 = 10;

/// How often a login failure budget gets one token back (contract section 9).
pub const LOGIN_FAILURE_REFILL: Duration = Duration::from_secs(36);

/// A budget of failures per key: a token bucket of `capacity` that gets one token back
/// every `refill`. A caller reserves a token before the attempt ([`FailureBudget::reserve`])
/// and keeps it only if the attempt failed ([`Reservation::spend`]); otherwise the token
/// goes back when the reservation is dropped, also when the request is cancelled.
///
/// A key's state is one instant: when its bucket is full again. A key whose bucket is full
/// takes no room ([`FailureBudget::forget_idle`]).
pub struct FailureBudget<K: Hash + Eq + Clone> {
    /// `None` when the budget is off.
    rule: Option<(u32, Duration)>,
    /// The `bucket` label of its refusals.
    bucket: &'static str,
    full_at: Mutex<HashMap<K, Instant>>,
}

/// A token taken from a [`FailureBudget`] for one attempt: given back when dropped, unless
/// spent.
#[must_use = "a reservation is given back at once when dropped"]
pub struct Reservation<'a, K: Hash + Eq + Clone> {
    /// `None` when the budget is off (nothing to give back).
    budget: Option<&'a FailureBudget<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> FailureBudget<K> {
    /// A budget of `capacity` failures per key, one back every `refill`.
    pub fn new(capacity: u32, refill: Duration) -> Self {
        FailureBudget {
            rule: (capacity > 0 && !refill.is_zero()).then_some((capacity, refill)),
            bucket: "unnamed",
            full_at: Mutex::default(),
        }
    }

    /// The same budget, its refusals counted under `bucket` in the metrics.
    pub fn named(self, bucket: &'static str) -> Self {
        FailureBudget { bucket, ..self }
    }

    /// A budget that never refuses.
    pub fn off() -> Self {
        FailureBudget {
            rule: None,
            bucket: "unnamed",
            full_at: Mutex::default(),
        }
    }

    /// Takes a token for one attempt of `key`; [`ApiError::Throttled`] with the whole
    /// seconds until a token is back when none is left.
    pub fn reserve(&self, key: K) -> Result<Reservation<'_, K>, ApiError> {
        self.reserve_at(key, Instant::now()).map_err(|wait| {
            metrics::throttled(self.bucket);
            ApiError::Throttled(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }

    /// [`FailureBudget::reserve`], but `None` when no token is left.
    pub fn try_reserve(&self, key: K) -> Option<Reservation<'_, K>> {
        self.reserve_at(key, Instant::now()).ok()
    }

    /// Forgets keys whose buckets are full again.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.lock().retain(|_, full_at| *full_at > now);
    }

    /// Takes a token of `key` at `now`, or answers how long until one is back.
    fn reserve_at(&self, key: K, now: Instant) -> Result<Reservation<'_, K>, Duration> {
        let Some((capacity, refill)) = self.rule else {
            return Ok(Reservation { budget: None, key });
        };
        let mut full_at = self.lock();
        // The time the spent tokens take to come back, with one more spent.
        let owed = full_at
            .get(&key)
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
            + refill;
        let whole = refill.saturating_mul(capacity);
        if owed > whole {
            return Err(owed - whole);
        }
        full_at.insert(key.clone(), now + owed);
        Ok(Reservation {
            budget: Some(self),
            key,
        })
    }

    /// Gives back one token of `key`; a bucket full again is forgotten.
    fn give_back(&self, key: &K) {
        let Some((_, refill)) = self.rule else {
            return;
        };
        let mut full_at = self.lock();
        let Some(at) = full_at.get_mut(key) else {
            return;
        };
        match at.checked_sub(refill) {
            Some(earlier) if earlier > Instant::now() => *at = earlier,
            _ => {
                full_at.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Instant>> {
        self.full_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: Hash + Eq + Clone> Reservation<'_, K> {
    /// Keeps the token: the attempt failed.
    pub fn spend(mut self) {
        self.budget = None;
    }

    /// The key the token was taken from.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq + Clone> Drop for Reservation<'_, K> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.give_back(&self.key);
        }
    }
}

/// Every throttle of the contract.
pub struct Throttles {
    /// Login attempts per client IP.
    pub login_ip: Throttle<IpAddr>,
    /// Failed logins (401) per lower-cased email, whether or not an account has it.
    pub login_failures: FailureBudget<EmailKey>,
    /// Failed logins (401) per device token, when a valid one stands in for the email's
    /// budget.
    pub device_failures: FailureBudget<Device>,
    /// Registrations per client IP.
    pub register_ip: Throttle<IpAddr>,
    /// Registrations per lower-cased email.
    pub register_email: Throttle<String>,
    /// Posted chat messages per user id.
    pub messages: Throttle<i64>,
}

impl Throttles {
    /// The throttles the settings ask for, the login failure budgets getting a token back
    /// every `login_failure_refill` ([`LOGIN_FAILURE_REFILL`] but in tests).
    /// `auth_throttle_per_minute` = 0 turns off every auth limit, the budgets included.
    pub fn new(config: &Settings, login_failure_refill: Duration) -> Self {
        let auth = config.auth_throttle_per_minute;
        Throttles {
            login_ip: Throttle::per_minute(auth).named("login_ip"),
            login_failures: login_failure_budget(auth, login_failure_refill)
                .named("login_failures"),
            device_failures: login_failure_budget(auth, login_failure_refill)
                .named("device_failures"),
            register_ip: Throttle::per_minute(auth).named("register_ip"),
            register_email: Throttle::per_minute(auth).named("register_email"),
            messages: Throttle::per_minute(config.message_throttle_per_minute).named("messages"),
        }
    }

    /// [`Throttle::forget_idle`] and [`FailureBudget::forget_idle`] on each.
    pub fn forget_idle(&self) {
        self.login_ip.forget_idle();
        self.login_failures.forget_idle();
        self.device_failures.forget_idle();
        self.register_ip.forget_idle();
        self.register_email.forget_idle();
        self.messages.forget_idle();
    }
}

/// The contract's login failure budget, or none when the auth throttles are off.
fn login_failure_budget<K: Hash + Eq + Clone>(
    auth_throttle_per_minute: u32,
    refill: Duration,
) -> FailureBudget<K> {
    if auth_throttle_per_minute == 0 {
        FailureBudget::off()
    } else {
        FailureBudget::new(LOGIN_FAILURE_BUDGET, refill)
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

    const REFILL: Duration = Duration::from_secs(36);

    /// A budget of 3 failures, one back every 36 s.
    fn small_budget() -> FailureBudget<u8> {
        FailureBudget::new(3, REFILL)
    }

    #[test]
    fn a_budget_refuses_after_its_capacity_with_the_wait_for_the_next_token() {
        let budget = small_budget();
        let start = Instant::now();
        for _ in 0..3 {
            budget.reserve_at(1, start).unwrap().spend();
        }
        assert_eq!(budget.reserve_at(1, start).err(), Some(REFILL));
        let later = start + Duration::from_secs(10);
        assert_eq!(
            budget.reserve_at(1, later).err(),
            Some(Duration::from_secs(26))
        );
        assert!(
            budget.reserve_at(2, start).is_ok(),
            "keys are counted apart"
        );
    }

    #[test]
    fn a_budget_gets_one_token_back_every_refill_up_to_its_capacity() {
        let budget = small_budget();
        let start = Instant::now();
        for _ in 0..3 {
            budget.reserve_at(1, start).unwrap().spend();
        }
        let one_back = start + REFILL;
        budget.reserve_at(1, one_back).unwrap().spend();
        assert_eq!(budget.reserve_at(1, one_back).err(), Some(REFILL));
        // Long idle: full again, never more than full.
        let idle = one_back + REFILL * 100;
        for _ in 0..3 {
            budget.reserve_at(1, idle).unwrap().spend();
        }
        assert_eq!(budget.reserve_at(1, idle).err(), Some(REFILL));
        // 36 s x 10 = 6 minutes to refill the contract's bucket of 10.
        let contract = FailureBudget::new(LOGIN_FAILURE_BUDGET, LOGIN_FAILURE_REFILL);
        for _ in 0..10 {
            contract.reserve_at(1, start).unwrap().spend();
        }
        assert!(contract.reserve_at(1, start).is_err());
        let six_minutes = start + Duration::from_secs(360);
        for _ in 0..10 {
            contract.reserve_at(1, six_minutes).unwrap().spend();
        }
        assert!(contract.reserve_at(1, six_minutes).is_err());
    }

    #[test]
    fn a_reservation_not_spent_is_given_back() {
        let budget = small_budget();
        let start = Instant::now();
        budget.reserve_at(1, start).unwrap().spend();
        budget.reserve_at(1, start).unwrap().spend();
        let held = budget.reserve_at(1, start).unwrap();
        assert_eq!(budget.reserve_at(1, start).err(), Some(REFILL));
        assert_eq!(held.key(), &1);
        drop(held);
        budget.reserve_at(1, start).unwrap().spend();
        assert!(budget.reserve_at(1, start).is_err());
        // A key left full by give-backs takes no room.
        let fresh = small_budget();
        drop(fresh.reserve_at(7, start).unwrap());
        assert!(fresh.lock().is_empty());
    }

    #[test]
    fn reservations_held_at_once_never_exceed_the_budget() {
        let budget = small_budget();
        let start = Instant::now();
        budget.reserve_at(1, start).unwrap().spend();
        budget.reserve_at(1, start).unwrap().spend();
        let last = budget.reserve_at(1, start).unwrap();
        let refused: Vec<_> = (0..5).map(|_| budget.reserve_at(1, start).err()).collect();
        assert_eq!(refused, [Some(REFILL); 5]);
        last.spend();
    }

    #[test]
    fn forget_idle_drops_only_full_buckets() {
        let budget = small_budget();
        budget.reserve(1).unwrap().spend();
        drop(budget.reserve(2).unwrap());
        budget
            .lock()
            .insert(3, Instant::now() - Duration::from_secs(1));
        budget.forget_idle();
        let keys: Vec<u8> = budget.lock().keys().copied().collect();
        assert_eq!(keys, [1]);
    }

    #[test]
    fn a_budget_that_is_off_never_refuses() {
        for budget in [FailureBudget::off(), FailureBudget::new(0, REFILL)] {
            for _ in 0..1000 {
                budget.reserve(1).unwrap().spend();
            }
            assert!(budget.try_reserve(1).is_some());
            assert!(budget.lock().is_empty());
        }
    }

    #[test]
    fn reserve_answers_the_wait_in_whole_seconds_rounded_up() {
        let budget = FailureBudget::new(1, Duration::from_millis(36_400));
        budget.reserve(1).unwrap().spend();
        match budget.reserve(1) {
            Err(ApiError::Throttled(seconds)) => assert!((1..=37).contains(&seconds)),
            Err(other) => panic!("expected a throttle, got {other:?}"),
            Ok(_) => panic!("expected a throttle"),
        }
        assert!(budget.try_reserve(1).is_none());
    }
}
