//! Token (leaky) buckets, held as one number: the GCRA's theoretical
//! arrival time.
//!
//! Why: Shopify's REST API allows a bucket of 40 requests that leaks 2 a
//! second; its GraphQL API a bucket of 1,000 cost points restoring 50 a
//! second. No fixed or rolling window says that: a window of 40 per 20 s
//! refuses the bucket's steady 2 a second after a burst, and a minute of
//! 120 overflows it at the minute's edge.
//!
//! **The rule** (the generic cell rate algorithm): a bucket of capacity
//! `C` that refills one call every `T` ms is one counter holding `tat`,
//! the time (epoch ms) at which the bucket would be empty again. A call
//! of cost `n` at `now` fits when `max(tat, now) + n·T − now ≤ C·T`, and
//! taking it sets `tat = max(tat, now) + n·T`. The level the bucket holds
//! is `⌈(tat − now) / T⌉` calls, so the shared rule (`level + n ≤ C`) is
//! exact. A refund of `k` calls moves `tat` back by `k·T`.
//!
//! The counter lives beside the window counters under an id that has no
//! end (`g{capacity}~{interval}`), so pruning never drops it. Taking is
//! not a plain add (the `max` with `now`), so the DynamoDB adapter reads
//! the item first, as it does for rolling windows, and writes the
//! difference under a version check.

use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::{Error, Result};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A token bucket: `capacity` calls, one call refilled every `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    /// Calls a full bucket holds (a burst).
    pub capacity: u32,
    /// Milliseconds to refill one call (`T`; 500 for 2 a second).
    pub interval_ms: u32,
}

impl Bucket {
    fn t(self) -> i64 {
        i64::from(self.interval_ms.max(1))
    }

    /// Its counter's id: one per bucket spec, never ending.
    pub fn id(self) -> String {
        format!("g{}~{}", self.capacity, self.interval_ms)
    }

    /// Calls the bucket holds at `now`, from its counter (`tat`).
    pub fn level(self, tat: u64, now: Timestamp) -> u64 {
        let ahead = i64::try_from(tat).unwrap_or(i64::MAX) - to_millis(now);
        if ahead <= 0 {
            0
        } else {
            // ⌈ahead / T⌉
            ((ahead + self.t() - 1) / self.t()) as u64
        }
    }

    /// What taking `cost` calls at `now` adds to the counter: the new
    /// `tat` less the old (added, not set, so a refund written meanwhile
    /// is kept).
    pub fn take(self, tat: u64, now: Timestamp, cost: u32) -> u64 {
        let tat = i64::try_from(tat).unwrap_or(i64::MAX);
        let new = tat.max(to_millis(now)) + i64::from(cost) * self.t();
        (new - tat).max(0) as u64
    }

    /// The counter value that says the bucket holds `level` calls at `at`
    /// (the API's own count, raised into ours).
    pub(crate) fn counter_for(self, level: u64, at: Timestamp) -> u64 {
        let level = i64::try_from(level.min(u64::from(self.capacity))).unwrap_or(0);
        (to_millis(at) + level * self.t()).max(0) as u64
    }

    /// What a refund of `calls` subtracts from the counter.
    pub fn refund(self, calls: u32) -> u64 {
        u64::from(calls) * self.t() as u64
    }

    /// When a call of `cost` fits: when `tat` has come within
    /// `(capacity − cost)·T` of the clock.
    pub fn retry_at(self, tat: u64, now: Timestamp, cost: u32) -> Timestamp {
        let tat = i64::try_from(tat).unwrap_or(i64::MAX);
        let room = i64::from(self.capacity.saturating_sub(cost)) * self.t();
        from_millis((tat - room).max(to_millis(now)))
    }

    /// How long a grant's calls stay valid: a call made later than the
    /// bucket counted it can meet a bucket that emptied meanwhile and
    /// starts from later than ours did. One refill interval (at least a
    /// second, so a store round trip never outlives it) bounds that.
    pub fn end(self, now: Timestamp) -> Timestamp {
        now + Duration::milliseconds(self.t().max(1_000))
    }

    /// Seconds a full bucket takes to drain (its span for the plan: `C`
    /// per `C·T`, the steady rate).
    pub fn secs(self) -> u32 {
        let ms = u64::from(self.capacity) * self.t() as u64;
        u32::try_from(ms.div_ceil(1_000).max(1)).unwrap_or(u32::MAX)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.t();
        write!(f, "bucket of {} refilling ", self.capacity)?;
        if 1_000 % t == 0 {
            write!(f, "{}/s", 1_000 / t)
        } else if t % 1_000 == 0 {
            write!(f, "1 every {}s", t / 1_000)
        } else {
            write!(f, "1 every {t}ms")
        }
    }
}

/// `[[app.limits.buckets]]`: a token bucket, as Shopify publishes one
/// (`capacity = 40, refill = 2` a second; GraphQL `capacity = 1000,
/// refill = 50` points a second; `refill = 1, every = "2s"` for half a
/// call a second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketLimit {
    /// Calls (or cost points) a full bucket holds.
    pub capacity: u32,
    /// Calls refilled every `every`.
    pub refill: u32,
    /// How often `refill` calls come back (default a second).
    #[serde(with = "humantime_serde", default = "one_second")]
    pub every: std::time::Duration,
}

fn one_second() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

impl BucketLimit {
    /// Its bucket, checked. The refill interval is rounded up to a whole
    /// millisecond: a bucket refilled a little slower than the API's never
    /// overflows it.
    pub fn bucket(&self) -> Result<Bucket> {
        let bad = |why: &str| Error::Config(format!("limits.buckets: {why}"));
        if self.capacity == 0 {
            return Err(bad(
                "capacity is 0; omit the bucket for no limit or give a positive number",
            ));
        }
        if self.refill == 0 {
            return Err(bad(
                "refill is 0; a bucket that never refills would deny forever",
            ));
        }
        let every_ms = self.every.as_millis();
        if every_ms == 0 {
            return Err(bad("every is 0; give at least 1ms"));
        }
        let interval = every_ms.div_ceil(u128::from(self.refill));
        let interval_ms = u32::try_from(interval)
            .map_err(|_| bad(&format!("every = {:?} is too long", self.every)))?;
        Ok(Bucket {
            capacity: self.capacity,
            interval_ms: interval_ms.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(ms: i64) -> Timestamp {
        from_millis(1_800_000_000_000 + ms)
    }

    /// Shopify's REST bucket: 40, leaking 2 a second.
    fn shopify() -> Bucket {
        BucketLimit {
            capacity: 40,
            refill: 2,
            every: one_second(),
        }
        .bucket()
        .unwrap()
    }

    #[test]
    fn a_burst_fills_the_bucket_then_it_admits_the_refill_rate() {
        let b = shopify();
        assert_eq!(b.interval_ms, 500);
        let mut tat = 0u64;
        let now = at_ms(0);
        for i in 0..40 {
            assert_eq!(b.level(tat, now), i);
            tat += b.take(tat, now, 1);
        }
        assert_eq!(b.level(tat, now), 40, "full");
        // The next call fits once one call has leaked: 500 ms later.
        assert_eq!(b.retry_at(tat, now, 1), at_ms(500));
        assert_eq!(b.level(tat, at_ms(499)), 40);
        assert_eq!(b.level(tat, at_ms(500)), 39);
        // A call of cost 5 waits for five to leak.
        assert_eq!(b.retry_at(tat, now, 5), at_ms(2_500));
        // Idle for 20 s: empty again, and a take starts from the clock.
        assert_eq!(b.level(tat, at_ms(20_000)), 0);
        let add = b.take(tat, at_ms(60_000), 1);
        assert_eq!(b.level(tat + add, at_ms(60_000)), 1);
    }

    #[test]
    fn a_refund_gives_the_calls_back() {
        let b = shopify();
        let now = at_ms(0);
        let tat = b.take(0, now, 10);
        assert_eq!(b.level(tat, now), 10);
        assert_eq!(b.level(tat - b.refund(4), now), 6);
    }

    #[test]
    fn the_apis_count_becomes_a_level() {
        let b = shopify();
        let now = at_ms(0);
        assert_eq!(b.level(b.counter_for(32, now), now), 32);
        assert_eq!(
            b.level(b.counter_for(99, now), now),
            40,
            "clamped to the capacity"
        );
    }

    #[test]
    fn slow_refills_round_the_interval_up() {
        let third = BucketLimit {
            capacity: 5,
            refill: 3,
            every: one_second(),
        }
        .bucket()
        .unwrap();
        assert_eq!(third.interval_ms, 334);
        let half = BucketLimit {
            capacity: 10,
            refill: 1,
            every: std::time::Duration::from_secs(2),
        }
        .bucket()
        .unwrap();
        assert_eq!(half.interval_ms, 2_000);
        assert_eq!(half.secs(), 20);
    }

    #[test]
    fn bad_buckets_are_named() {
        for (limit, needle) in [
            (
                BucketLimit {
                    capacity: 0,
                    refill: 1,
                    every: one_second(),
                },
                "capacity is 0",
            ),
            (
                BucketLimit {
                    capacity: 1,
                    refill: 0,
                    every: one_second(),
                },
                "refill is 0",
            ),
            (
                BucketLimit {
                    capacity: 1,
                    refill: 1,
                    every: std::time::Duration::ZERO,
                },
                "every is 0",
            ),
        ] {
            let e = limit.bucket().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
