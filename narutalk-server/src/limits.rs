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
//! Every throttle is a token bucket per key: the client IP, the email's digest, the device
//! token's digest or the user id ([`Throttles`] lists them all). Where they are counted:
//!
//! - **One server** (a SQLite store, which one server owns): governor buckets in this
//!   process's memory. Keys whose buckets are full again are forgotten every minute, so
//!   the maps stay as small as the set of recently active clients.
//! - **Several servers** (a shared store, PostgreSQL): every check takes its token from the
//!   store's bucket ([`narutalk_core::store::Throttle`]) on a blocking thread, so that N
//!   servers give the limits of one (contract section 10). When the store fails to answer
//!   (unreachable, busy past its deadline), the failure is logged and the request counted
//!   by this server's own bucket instead: a database failure of a throttle locks nobody
//!   out, and a flood still meets the limit of one server (a request that needs the
//!   database then fails with its own 503 anyway).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use narutalk_core::Narutalk;
use narutalk_core::accounts::EmailKey;
use narutalk_core::accounts::devices::Device;
use narutalk_core::error::Error as CoreError;
use narutalk_core::store::BucketRule;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::metrics;
use crate::settings::Settings;

/// What a throttle counts by, and the text its shared bucket is kept under: never an
/// email in clear.
pub trait BucketKey: Hash + Eq + Clone + Send + Sync + 'static {
    /// The key as the shared bucket names it.
    fn text(&self) -> String;
}

impl BucketKey for IpAddr {
    fn text(&self) -> String {
        self.to_string()
    }
}

/// A user id.
impl BucketKey for i64 {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl BucketKey for EmailKey {
    fn text(&self) -> String {
        hex(&self.digest())
    }
}

impl BucketKey for Device {
    fn text(&self) -> String {
        hex(&self.digest())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The buckets every server on the store shares: the core's store, called on blocking
/// threads.
#[derive(Clone)]
pub struct SharedBuckets {
    core: Arc<Narutalk>,
}

/// What a take of a shared bucket answers on its blocking thread.
type Taken = Result<Option<Duration>, CoreError>;

/// A take of a shared bucket under way: when the request is cancelled before it is
/// answered, a token it took is given back (if asked for).
struct Pending {
    handle: Option<JoinHandle<Taken>>,
    give_back: Option<(SharedBuckets, &'static str, String, BucketRule)>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (Some(handle), Some((shared, bucket, key, rule))) =
            (self.handle.take(), self.give_back.take())
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Ok(None)) = handle.await {
                    shared.give_back(bucket, key, rule);
                }
            });
        }
    }
}

impl SharedBuckets {
    /// The buckets of `core`'s store, when it is shared by several servers
    /// ([`narutalk_core::store::Feed::shared`]); `None` for a store one server owns.
    pub fn of(core: &Arc<Narutalk>) -> Option<SharedBuckets> {
        core.store()
            .shared()
            .then(|| SharedBuckets { core: core.clone() })
    }

    /// Takes a token of `key` in `bucket`: `Some(None)` when taken, `Some(Some(wait))` when
    /// none is left, `None` (logged) when the store failed to answer. A token taken for a
    /// request cancelled meanwhile is given back when `give_back_if_abandoned`.
    async fn take(
        &self,
        bucket: &'static str,
        key: String,
        rule: BucketRule,
        give_back_if_abandoned: bool,
    ) -> Option<Option<Duration>> {
        let core = self.core.clone();
        let span = tracing::Span::current();
        let asked = key.clone();
        let handle = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                core.store()
                    .take_token(bucket, &asked, rule, narutalk_core::time::now())
            })
        });
        let mut pending = Pending {
            handle: Some(handle),
            give_back: give_back_if_abandoned.then(|| (self.clone(), bucket, key, rule)),
        };
        let outcome = match pending.handle.as_mut() {
            Some(handle) => handle.await,
            None => return None,
        };
        // Answered: nothing is left to give back on the request's behalf.
        pending.handle = None;
        let failure = match outcome {
            Ok(Ok(answer)) => return Some(answer),
            Ok(Err(error)) => error.detail(),
            Err(error) => error.to_string(),
        };
        tracing::warn!(
            bucket,
            error = %failure,
            "the shared throttle failed: this server counts the request alone"
        );
        None
    }

    /// The work of giving back a token of `key` in `bucket`; a failure is logged.
    fn give_back_work(
        &self,
        bucket: &'static str,
        key: String,
        rule: BucketRule,
    ) -> impl FnOnce() + Send + 'static {
        let core = self.core.clone();
        let span = tracing::Span::current();
        move || {
            let given = span.in_scope(|| core.store().give_token_back(bucket, &key, rule));
            if let Err(error) = given {
                tracing::warn!(
                    bucket,
                    error = %error.detail(),
                    "a token of the shared throttle could not be given back"
                );
            }
        }
    }

    /// Gives back a token of `key` in `bucket` on a blocking thread, without waiting (a
    /// reservation dropped: a cancelled request).
    fn give_back(&self, bucket: &'static str, key: String, rule: BucketRule) {
        let give_back = self.give_back_work(bucket, key, rule);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(give_back)),
            Err(_) => give_back(),
        }
    }

    /// Gives back a token of `key` in `bucket` on a blocking thread, and waits for it.
    async fn give_back_now(&self, bucket: &'static str, key: String, rule: BucketRule) {
        let given = tokio::task::spawn_blocking(self.give_back_work(bucket, key, rule)).await;
        if let Err(error) = given {
            tracing::warn!(bucket, %error, "a token of the shared throttle could not be given back");
        }
    }
}

/// The refusal of `bucket`, with the whole seconds to wait, rounded up.
fn throttled(bucket: &'static str, wait: Duration) -> ApiError {
    metrics::throttled(bucket);
    ApiError::Throttled(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// One throttle: at most N requests a minute per key, as a token bucket of N that refills
/// one token every `60 / N` seconds. Off when the setting is 0.
pub struct Throttle<K: BucketKey> {
    /// `None` when off.
    rule: Option<BucketRule>,
    /// This server's buckets: all of them on one server, the fallback of shared ones.
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    /// The `bucket` label of its refusals, and its shared buckets' name.
    bucket: &'static str,
    /// The buckets every server shares, when the store is shared.
    shared: Option<SharedBuckets>,
}

impl<K: BucketKey> Throttle<K> {
    /// A throttle of `per_minute` requests a minute per key; 0 turns it off.
    pub fn per_minute(per_minute: u32) -> Self {
        Throttle {
            rule: BucketRule::per_minute(per_minute),
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            bucket: "unnamed",
            shared: None,
        }
    }

    /// The same throttle, its refusals counted under `bucket` in the metrics (and its
    /// shared buckets named so).
    pub fn named(self, bucket: &'static str) -> Self {
        Throttle { bucket, ..self }
    }

    /// The same throttle, counted in `shared` buckets when given.
    pub fn shared(self, shared: Option<SharedBuckets>) -> Self {
        Throttle { shared, ..self }
    }

    /// Counts one request for `key`; [`ApiError::Throttled`] with the whole seconds to
    /// wait when the key has used its quota.
    pub async fn check(&self, key: &K) -> Result<(), ApiError> {
        let (Some(rule), Some(limiter)) = (self.rule, &self.limiter) else {
            return Ok(());
        };
        if let Some(shared) = &self.shared {
            match shared.take(self.bucket, key.text(), rule, false).await {
                Some(None) => return Ok(()),
                Some(Some(wait)) => return Err(throttled(self.bucket, wait)),
                None => {}
            }
        }
        limiter.check_key(key).map_err(|not_until| {
            throttled(
                self.bucket,
                not_until.wait_time_from(DefaultClock::default().now()),
            )
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
/// and keeps it only if the attempt failed ([`Reservation::spend`]); otherwise it gives it
/// back ([`Reservation::release`]), or the token goes back when the reservation is
/// dropped, also when the request is cancelled.
///
/// A key's state here is one instant: when its bucket is full again. A key whose bucket
/// is full takes no room ([`FailureBudget::forget_idle`]). With shared buckets the store
/// keeps the same instant, and this server's map is only the fallback.
pub struct FailureBudget<K: BucketKey> {
    /// `None` when the budget is off.
    rule: Option<BucketRule>,
    /// The `bucket` label of its refusals, and its shared buckets' name.
    bucket: &'static str,
    full_at: Mutex<HashMap<K, Instant>>,
    /// The buckets every server shares, when the store is shared.
    shared: Option<SharedBuckets>,
}

/// A token taken from a [`FailureBudget`] for one attempt: given back when dropped, unless
/// spent.
#[must_use = "a reservation is given back at once when dropped"]
pub struct Reservation<'a, K: BucketKey> {
    /// `None` when the budget is off (nothing to give back).
    budget: Option<&'a FailureBudget<K>>,
    /// Whether the token came from the shared bucket (else from this server's).
    shared: bool,
    key: K,
}

impl<K: BucketKey> FailureBudget<K> {
    /// A budget of `capacity` failures per key, one back every `refill`.
    pub fn new(capacity: u32, refill: Duration) -> Self {
        FailureBudget {
            rule: BucketRule::new(capacity, refill),
            bucket: "unnamed",
            full_at: Mutex::default(),
            shared: None,
        }
    }

    /// The same budget, its refusals counted under `bucket` in the metrics (and its
    /// shared buckets named so).
    pub fn named(self, bucket: &'static str) -> Self {
        FailureBudget { bucket, ..self }
    }

    /// The same budget, counted in `shared` buckets when given.
    pub fn shared(self, shared: Option<SharedBuckets>) -> Self {
        FailureBudget { shared, ..self }
    }

    /// A budget that never refuses.
    pub fn off() -> Self {
        FailureBudget::new(0, Duration::ZERO)
    }

    /// Takes a token for one attempt of `key`; [`ApiError::Throttled`] with the whole
    /// seconds until a token is back when none is left.
    pub async fn reserve(&self, key: K) -> Result<Reservation<'_, K>, ApiError> {
        self.take(key)
            .await
            .map_err(|wait| throttled(self.bucket, wait))
    }

    /// [`FailureBudget::reserve`], but `None` when no token is left.
    pub async fn try_reserve(&self, key: K) -> Option<Reservation<'_, K>> {
        self.take(key).await.ok()
    }

    /// Forgets keys whose buckets are full again.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.lock().retain(|_, full_at| *full_at > now);
    }

    /// Takes a token of `key` from the shared bucket, or from this server's when there is
    /// none or it failed; or answers how long until one is back.
    async fn take(&self, key: K) -> Result<Reservation<'_, K>, Duration> {
        if let (Some(shared), Some(rule)) = (&self.shared, self.rule) {
            match shared.take(self.bucket, key.text(), rule, true).await {
                Some(None) => {
                    return Ok(Reservation {
                        budget: Some(self),
                        shared: true,
                        key,
                    });
                }
                Some(Some(wait)) => return Err(wait),
                None => {}
            }
        }
        self.reserve_at(key, Instant::now())
    }

    /// Takes a token of `key` at `now` from this server's bucket, or answers how long
    /// until one is back.
    fn reserve_at(&self, key: K, now: Instant) -> Result<Reservation<'_, K>, Duration> {
        let Some(rule) = self.rule else {
            return Ok(Reservation {
                budget: None,
                shared: false,
                key,
            });
        };
        let mut full_at = self.lock();
        // The time the spent tokens take to come back, with one more spent.
        let owed = full_at
            .get(&key)
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
            + rule.refill();
        if owed > rule.whole() {
            return Err(owed - rule.whole());
        }
        full_at.insert(key.clone(), now + owed);
        Ok(Reservation {
            budget: Some(self),
            shared: false,
            key,
        })
    }

    /// Gives back one token of `key` to this server's bucket; a bucket full again is
    /// forgotten.
    fn give_back(&self, key: &K) {
        let Some(rule) = self.rule else {
            return;
        };
        let mut full_at = self.lock();
        let Some(at) = full_at.get_mut(key) else {
            return;
        };
        match at.checked_sub(rule.refill()) {
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

impl<K: BucketKey> Reservation<'_, K> {
    /// Keeps the token: the attempt failed.
    pub fn spend(mut self) {
        self.budget = None;
    }

    /// Gives the token back (the attempt did not fail), and waits until a shared bucket
    /// has it, so that the next attempt, on any server, finds it there.
    pub async fn release(mut self) {
        let Some(budget) = self.budget.take() else {
            return;
        };
        match (&budget.shared, budget.rule) {
            (Some(shared), Some(rule)) if self.shared => {
                shared
                    .give_back_now(budget.bucket, self.key.text(), rule)
                    .await;
            }
            _ => budget.give_back(&self.key),
        }
    }

    /// The key the token was taken from.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: BucketKey> Drop for Reservation<'_, K> {
    fn drop(&mut self) {
        let Some(budget) = self.budget else {
            return;
        };
        match (&budget.shared, budget.rule) {
            (Some(shared), Some(rule)) if self.shared => {
                shared.give_back(budget.bucket, self.key.text(), rule);
            }
            _ => budget.give_back(&self.key),
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
    /// Registrations per lower-cased email (by its digest).
    pub register_email: Throttle<EmailKey>,
    /// Posted chat messages per user id.
    pub messages: Throttle<i64>,
}

impl Throttles {
    /// The throttles the settings ask for, the login failure budgets getting a token back
    /// every `login_failure_refill` ([`LOGIN_FAILURE_REFILL`] but in tests), counted in
    /// `shared` buckets when the store is shared ([`SharedBuckets::of`]).
    /// `auth_throttle_per_minute` = 0 turns off every auth limit, the budgets included.
    pub fn new(
        config: &Settings,
        login_failure_refill: Duration,
        shared: Option<SharedBuckets>,
    ) -> Self {
        let auth = config.auth_throttle_per_minute;
        Throttles {
            login_ip: throttle(auth, "login_ip", &shared),
            login_failures: login_failure_budget(auth, login_failure_refill)
                .named("login_failures")
                .shared(shared.clone()),
            device_failures: login_failure_budget(auth, login_failure_refill)
                .named("device_failures")
                .shared(shared.clone()),
            register_ip: throttle(auth, "register_ip", &shared),
            register_email: throttle(auth, "register_email", &shared),
            messages: throttle(config.message_throttle_per_minute, "messages", &shared),
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

/// A throttle of `per_minute` named `bucket`, counted in `shared` buckets when given.
fn throttle<K: BucketKey>(
    per_minute: u32,
    bucket: &'static str,
    shared: &Option<SharedBuckets>,
) -> Throttle<K> {
    Throttle::per_minute(per_minute)
        .named(bucket)
        .shared(shared.clone())
}

/// The contract's login failure budget, or none when the auth throttles are off.
fn login_failure_budget<K: BucketKey>(
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

    impl BucketKey for u8 {
        fn text(&self) -> String {
            self.to_string()
        }
    }

    #[tokio::test]
    async fn a_throttle_refuses_the_request_after_its_quota_with_the_wait() {
        let throttle = Throttle::per_minute(2);
        assert!(throttle.check(&1_u8).await.is_ok());
        assert!(throttle.check(&1).await.is_ok());
        match throttle.check(&1).await {
            Err(ApiError::Throttled(seconds)) => assert!((1..=30).contains(&seconds)),
            other => panic!("expected a throttle, got {other:?}"),
        }
        assert!(throttle.check(&2).await.is_ok(), "keys are counted apart");
    }

    #[tokio::test]
    async fn a_zero_throttle_is_off() {
        let throttle = Throttle::per_minute(0);
        for _ in 0..1000 {
            assert!(throttle.check(&1_u8).await.is_ok());
        }
    }

    #[test]
    fn shared_keys_name_digests_never_an_email() {
        let email = EmailKey::of(" Kim@Example.com ");
        assert_eq!(email, EmailKey::of("kim@example.com"));
        assert_eq!(email.text().len(), 64);
        assert!(email.text().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!email.text().contains("kim"));
        assert_eq!(IpAddr::from([10, 0, 0, 1]).text(), "10.0.0.1");
        assert_eq!(42_i64.text(), "42");
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
        let contract: FailureBudget<u8> =
            FailureBudget::new(LOGIN_FAILURE_BUDGET, LOGIN_FAILURE_REFILL);
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

    #[tokio::test]
    async fn forget_idle_drops_only_full_buckets() {
        let budget = small_budget();
        budget.reserve(1).await.unwrap().spend();
        drop(budget.reserve(2).await.unwrap());
        budget
            .lock()
            .insert(3, Instant::now() - Duration::from_secs(1));
        budget.forget_idle();
        let keys: Vec<u8> = budget.lock().keys().copied().collect();
        assert_eq!(keys, [1]);
    }

    #[tokio::test]
    async fn a_budget_that_is_off_never_refuses() {
        for budget in [FailureBudget::off(), FailureBudget::new(0, REFILL)] {
            for _ in 0..1000 {
                budget.reserve(1_u8).await.unwrap().spend();
            }
            assert!(budget.try_reserve(1).await.is_some());
            assert!(budget.lock().is_empty());
        }
    }

    #[tokio::test]
    async fn reserve_answers_the_wait_in_whole_seconds_rounded_up() {
        let budget = FailureBudget::new(1, Duration::from_millis(36_400));
        budget.reserve(1_u8).await.unwrap().spend();
        match budget.reserve(1).await {
            Err(ApiError::Throttled(seconds)) => assert!((1..=37).contains(&seconds)),
            Err(other) => panic!("expected a throttle, got {other:?}"),
            Ok(_) => panic!("expected a throttle"),
        }
        assert!(budget.try_reserve(1).await.is_none());
    }

    #[tokio::test]
    async fn a_released_reservation_is_back_at_once() {
        let budget = small_budget();
        for _ in 0..2 {
            budget.reserve(1).await.unwrap().spend();
        }
        budget.reserve(1).await.unwrap().release().await;
        budget.reserve(1).await.unwrap().spend();
        assert!(budget.try_reserve(1).await.is_none());
    }
}
