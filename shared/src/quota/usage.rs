//! Who spent the budget: usage rows per source, endpoint and UTC hour,
//! and how full each window is (`metered usage`).

use super::key::QuotaKey;
use super::limits::{Limits, WindowKind};

use crate::core::clock::Timestamp;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a store holds for one budget right now (for reports and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaState {
    /// Calls each window holds, by its current id ([`WindowKind::id`]; a
    /// rolling window's is the sum of its buckets).
    pub used: BTreeMap<String, u64>,
    /// Leases that have not expired at `now`.
    pub live_leases: u32,
    /// Until when the API's `Retry-After` blocks the budget.
    pub blocked_until: Option<Timestamp>,
}

/// How full one window of a budget is (`metered usage` names the fullest:
/// the policy that binds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowFill {
    /// The window.
    pub kind: WindowKind,
    /// Its limit.
    pub limit: u32,
    /// Calls it holds.
    pub used: u64,
}

impl WindowFill {
    /// The share of the limit held, 0.0–1.0 (more when the API's own count
    /// was over).
    pub fn share(&self) -> f64 {
        self.used as f64 / f64::from(self.limit.max(1))
    }
}

impl Limits {
    /// Each window's fill in `state` (read at `now`), fullest first: the
    /// first is the tightest policy right now.
    pub fn fill(&self, state: &QuotaState, now: Timestamp) -> Vec<WindowFill> {
        let mut fills: Vec<WindowFill> = self
            .windows()
            .map(|(kind, limit)| WindowFill {
                kind,
                limit,
                used: state.used.get(&kind.id(now)).copied().unwrap_or(0),
            })
            .collect();
        fills.sort_by(|a, b| b.share().total_cmp(&a.share()));
        fills
    }
}

/// The usage source of calls the API counted and metered did not make
/// (other tools of the org spending the same budget).
pub const SPENT_ELSEWHERE: &str = "spent elsewhere";

/// One row of the usage report: who spent how much of the budget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UsageEntry {
    /// Whose budget.
    pub key: QuotaKey,
    /// The UTC day.
    pub day: NaiveDate,
    /// Which sync or workflow spent the calls.
    pub source: String,
    /// The endpoint, `METHOD /path`.
    pub endpoint: String,
    /// Exempt calls are counted apart: they did not spend the budget.
    pub exempt: bool,
    /// Calls made.
    pub calls: u64,
    /// Calls and quota denials per UTC hour of the day (0–23): when the
    /// budget went, and when jobs were sent away to restart later (the burn
    /// chart). Empty for usage recorded before hours were kept.
    #[serde(default)]
    pub hours: BTreeMap<u8, HourUse>,
}

/// Calls and quota denials of one source in one UTC hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HourUse {
    /// Calls made.
    pub calls: u64,
    /// Requests the quota refused (each one a restart of its job).
    pub denied: u64,
    /// Of those, the ones refused only because every concurrency slot was
    /// taken: a short wait for a slot, not a spent budget (the charts tell
    /// the two apart).
    #[serde(default)]
    pub waited: u64,
}

impl HourUse {
    /// Adds another count of the same hour.
    pub fn add(&mut self, other: HourUse) {
        self.calls += other.calls;
        self.denied += other.denied;
        self.waited += other.waited;
    }
}
