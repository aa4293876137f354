//! Time as a port.
//!
//! Every decision that depends on time (window boundaries, lease expiry,
//! `not_before`, SQS delays) reads the time from a [`Clock`], so tests drive a
//! [`ManualClock`] forward instead of waiting, and the local runner can
//! simulate a month in seconds.

use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};

/// A point in time, always UTC: API limits reset on UTC boundaries.
pub type Timestamp = DateTime<Utc>;

/// Source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// Wall-clock time; what handlers use in production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock standing at `start` until moved.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves time forward (or backward, for a test that needs it).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Moves the clock to `to` (forwards or back).
    pub fn set(&self, to: Timestamp) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared handle to a clock, as the ports take it.
pub type SharedClock = Arc<dyn Clock>;

/// Milliseconds since the Unix epoch: the integer form stored in tables.
pub(crate) fn to_millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// Inverse of [`to_millis`]; out-of-range values clamp rather than panic,
/// because they come from stored data.
pub(crate) fn from_millis(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
