//! The shared throttles on PostgreSQL (`store::Throttle`): the table `throttle_buckets`
//! keeps, per throttle and key, the instant its bucket is full again (GCRA). Taking a
//! token is one upsert, which locks the bucket's row, so that servers taking from one
//! bucket at once are counted one after the other.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::store::{BucketRule, Throttle};
use crate::time;

use super::{PostgresStore, Tx};

/// One take in about this many (by the microseconds of its time) also prunes full buckets.
const PRUNE_EVERY: i64 = 64;

/// The most full buckets one prune forgets.
const PRUNED_AT_ONCE: i64 = 256;

/// Takes a token: the bucket owes `max(full_at - now, 0) + refill` once the token is
/// taken, which must not exceed the whole bucket. A refusal leaves `full_at` as it was
/// and says so in `taken`.
const TAKE: &str = "INSERT INTO throttle_buckets AS b (bucket, key, full_at, taken) \
     VALUES ($1, $2, $3::BIGINT + $4::BIGINT, TRUE) \
     ON CONFLICT (bucket, key) DO UPDATE SET \
     taken = GREATEST(b.full_at, $3::BIGINT) + $4::BIGINT <= $3::BIGINT + $5::BIGINT, \
     full_at = CASE WHEN GREATEST(b.full_at, $3) + $4 <= $3 + $5 \
     THEN GREATEST(b.full_at, $3) + $4 ELSE b.full_at END \
     RETURNING full_at, taken";

impl Throttle for PostgresStore {
    fn take_token(
        &self,
        bucket: &str,
        key: &str,
        rule: BucketRule,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, Error> {
        let now = time::to_micros(&now);
        let refill = micros(rule.refill());
        let whole = micros(rule.whole());
        self.write(Instant::now(), |tx| {
            let row = tx.query_one(TAKE, &[&bucket, &key, &now, &refill, &whole])?;
            let (full_at, taken): (i64, bool) = (row.get(0), row.get(1));
            if now % PRUNE_EVERY == 0 {
                prune(tx, now)?;
            }
            Ok(if taken {
                None
            } else {
                // What a token more would owe beyond the whole bucket.
                let wait = full_at.saturating_add(refill) - now - whole;
                Some(Duration::from_micros(
                    u64::try_from(wait).unwrap_or(0).max(1),
                ))
            })
        })
    }

    fn give_token_back(&self, bucket: &str, key: &str, rule: BucketRule) -> Result<(), Error> {
        let refill = micros(rule.refill());
        self.write(Instant::now(), |tx| {
            tx.execute(
                "UPDATE throttle_buckets SET full_at = full_at - $3 \
                 WHERE bucket = $1 AND key = $2",
                &[&bucket, &key, &refill],
            )
            .map(drop)
        })
    }
}

/// Forgets up to [`PRUNED_AT_ONCE`] buckets full at `now` (the same as no row), skipping
/// those another transaction holds.
fn prune(tx: &mut Tx<'_>, now: i64) -> Result<u64, Error> {
    tx.execute(
        "DELETE FROM throttle_buckets WHERE (bucket, key) IN \
         (SELECT bucket, key FROM throttle_buckets WHERE full_at <= $1 \
          LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND full_at <= $1",
        &[&now, &PRUNED_AT_ONCE],
    )
}

/// The longest duration the table counts (about 36,000 years), so that adding two of
/// them to a time never leaves a `BIGINT`.
const LONGEST: i64 = 1 << 60;

/// A duration in whole microseconds, as the table counts, at most [`LONGEST`].
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).map_or(LONGEST, |micros| micros.min(LONGEST))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::OpenMode;
    use crate::store::postgres::testing;

    const REFILL: Duration = Duration::from_secs(36);

    /// A bucket of 3, one back every 36 s.
    fn rule() -> BucketRule {
        BucketRule::new(3, REFILL).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        time::from_micros(1_800_000_000_000_000 + seconds * 1_000_000 + 1)
    }

    fn take(store: &PostgresStore, key: &str, seconds: i64) -> Option<Duration> {
        store.take_token("test", key, rule(), at(seconds)).unwrap()
    }

    #[test]
    fn a_bucket_refuses_past_its_capacity_with_the_wait_for_the_next_token() {
        let Some((store, _)) = testing::store("pg_throttle_capacity") else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(take(&store, "a", 0), None);
        }
        assert_eq!(take(&store, "a", 0), Some(REFILL));
        assert_eq!(take(&store, "a", 10), Some(Duration::from_secs(26)));
        assert_eq!(take(&store, "b", 0), None, "keys are counted apart");
        let other = store.take_token("other", "a", rule(), at(0)).unwrap();
        assert_eq!(other, None, "buckets are counted apart");
    }

    #[test]
    fn a_bucket_gets_one_token_back_every_refill_up_to_its_capacity() {
        let Some((store, _)) = testing::store("pg_throttle_refill") else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(take(&store, "a", 0), None);
        }
        assert_eq!(take(&store, "a", 36), None);
        assert_eq!(take(&store, "a", 36), Some(REFILL));
        // Long idle: full again, never more than full.
        for _ in 0..3 {
            assert_eq!(take(&store, "a", 3600), None);
        }
        assert_eq!(take(&store, "a", 3600), Some(REFILL));
        // Per minute: 2 a minute is a bucket of 2 with one back every 30 s.
        let per_minute = BucketRule::per_minute(2).unwrap();
        let take = |seconds| store.take_token("minute", "a", per_minute, at(seconds));
        assert_eq!(take(0).unwrap(), None);
        assert_eq!(take(0).unwrap(), None);
        assert_eq!(take(0).unwrap(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_and_never_overfills_the_bucket() {
        let Some((store, _)) = testing::store("pg_throttle_give_back") else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(take(&store, "a", 0), None);
        }
        store.give_token_back("test", "a", rule()).unwrap();
        assert_eq!(take(&store, "a", 0), None);
        assert_eq!(take(&store, "a", 0), Some(REFILL));
        // Giving back more than was taken leaves a full bucket: 3 tokens, not more.
        for _ in 0..10 {
            store.give_token_back("test", "a", rule()).unwrap();
        }
        store
            .give_token_back("test", "never-taken", rule())
            .unwrap();
        for _ in 0..3 {
            assert_eq!(take(&store, "a", 0), None);
        }
        assert_eq!(take(&store, "a", 0), Some(REFILL));
    }

    #[test]
    fn two_stores_on_one_database_count_one_bucket_also_when_taking_at_once() {
        let Some((first, url)) = testing::store("pg_throttle_shared") else {
            return;
        };
        let second = PostgresStore::open(&url, OpenMode::MustExist).unwrap();
        assert_eq!(take(&first, "a", 0), None);
        assert_eq!(take(&second, "a", 0), None);
        assert_eq!(take(&first, "a", 0), None);
        assert_eq!(take(&second, "a", 0), Some(REFILL));
        first.give_token_back("test", "a", rule()).unwrap();
        assert_eq!(take(&second, "a", 0), None);
        assert_eq!(take(&first, "a", 0), Some(REFILL));

        // Many takes at once from both stores: exactly the capacity is granted.
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for n in 0..12 {
                let store = if n % 2 == 0 { &first } else { &second };
                let granted = &granted;
                scope.spawn(move || {
                    if take(store, "race", 0).is_none() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 3);
    }

    #[test]
    fn full_buckets_are_pruned_and_others_kept() {
        let Some((store, _)) = testing::store("pg_throttle_prune") else {
            return;
        };
        assert_eq!(take(&store, "old", 0), None);
        assert_eq!(take(&store, "recent", 100), None);
        let pruned = store.write(Instant::now(), |tx| prune(tx, time::to_micros(&at(100))));
        assert_eq!(pruned.unwrap(), 1);
        let keys: Vec<String> = store
            .read(|tx| {
                Ok(tx
                    .query("SELECT key FROM throttle_buckets", &[])?
                    .iter()
                    .map(|row| row.get(0))
                    .collect())
            })
            .unwrap();
        assert_eq!(keys, ["recent"]);
        // A take whose time is a multiple of the prune period prunes.
        let prunes = time::from_micros(time::to_micros(&at(10_000)) / PRUNE_EVERY * PRUNE_EVERY);
        store.take_token("test", "new", rule(), prunes).unwrap();
        let left: i64 = store
            .read(|tx| {
                Ok(tx
                    .query_one("SELECT count(*) FROM throttle_buckets", &[])?
                    .get(0))
            })
            .unwrap();
        assert_eq!(left, 1, "only the new bucket is left");
    }
}
