//! The quota port: what an adapter must do ([`QuotaStore`]) and the words
//! it answers in ([`Grant`], [`Denied`] and its [`DenyReason`],
//! [`QuotaState`]). Time is passed in, never read.

use super::health::Health;
use super::key::QuotaKey;
use super::limits::{Limits, WindowKind};
use super::usage::{QuotaState, UsageEntry};

use crate::core::clock::Timestamp;
use crate::core::error::Result;
use async_trait::async_trait;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The window counters one grant took from, so a refund goes back to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenWindow {
    /// Which window (day, hour, minute).
    pub kind: WindowKind,
    /// The window's id, e.g. `d2026-11-22`.
    pub id: String,
    /// Calls counted in the window once this grant was taken (what the
    /// budget-burn metric reports; 0 in grants stored before it existed).
    #[serde(default)]
    pub used: u64,
}

/// Capacity taken: `cost` calls in every window, plus one concurrency lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The budget it was taken from.
    pub key: QuotaKey,
    /// The concurrency lease it holds until released or expired.
    pub lease_id: String,
    /// Calls taken in every window.
    pub cost: u32,
    /// The windows the calls were counted in.
    pub windows: Vec<TakenWindow>,
    /// When the lease expires unless renewed.
    pub expires_at: Timestamp,
    /// When the first of the granted windows ends. Calls of a reservation
    /// must be made before it: a call made later would be charged to a
    /// window that has already reset (the API sees more than its limit).
    pub valid_until: Timestamp,
    /// Window counters of past windows seen while granting; the release
    /// removes them so the stored item stays small.
    #[serde(default)]
    pub stale_windows: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason {
    /// A counting window is full until it ends.
    Window {
        /// The full window.
        window: WindowKind,
        /// Its limit.
        limit: u32,
        /// Calls counted in it.
        used: u64,
    },
    /// `max_concurrent` leases are held.
    Concurrency {
        /// The limit.
        max: u32,
    },
    /// The call's share of the org's budget ([`share`]) is spent in a
    /// window: its cap, or the part no kind reserved (with no reserve of its
    /// own left); what is left is held for other kinds.
    Share {
        /// The source kind.
        source_kind: String,
        /// `cap` or `unreserved part`.
        part: String,
        /// The window that refused.
        window: WindowKind,
        /// Its limit in that part.
        limit: u32,
        /// Calls counted in that part.
        used: u64,
    },
    /// The app's own level (`[app.limits.app_wide]`, shared by every org
    /// of the app) is full in a window.
    AppWide {
        /// The full window.
        window: WindowKind,
        /// Its limit across the app's orgs.
        limit: u32,
        /// Calls counted in it by every org.
        used: u64,
    },
    /// The API itself said stop (429 / Retry-After).
    Blocked,
    /// The connection is paused: the API kept refusing its credential
    /// (`metered connections`).
    Paused {
        /// What `Health::describe` said when the job was denied.
        health: String,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::Window {
                window,
                limit,
                used,
            } => write!(f, "{window} limit reached ({used} of {limit} used)"),
            DenyReason::Concurrency { max } => write!(
                f,
                "all {max} concurrency slots taken (a slot is held from before a call until after it)"
            ),
            DenyReason::Share {
                source_kind: kind,
                part,
                window,
                limit,
                used,
            } => write!(
                f,
                "the `{kind}` share's {part} of the {window} is spent ({used} of {limit}); the rest is held for other kinds"
            ),
            DenyReason::AppWide {
                window,
                limit,
                used,
            } => write!(
                f,
                "the app's own {window} limit across all its orgs is reached ({used} of {limit} used)"
            ),
            DenyReason::Blocked => f.write_str("blocked by the API's Retry-After"),
            DenyReason::Paused { health } => write!(f, "connection {health}"),
        }
    }
}

/// A refusal that says when to try again; that time becomes the SQS delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    /// When to try again; the restart's delay.
    pub retry_at: Timestamp,
    /// What refused.
    pub reason: DenyReason,
}

/// The outcome of [`QuotaStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Taken; the grant says what.
    Granted(Grant),
    /// Refused; the denial says until when and why.
    Denied(Denied),
}

/// The storage contract every adapter passes (see the conformance suite in
/// `tests/`). Time is passed in, never read, so the [`Quota`] facade's clock
/// is the only source of time.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Takes `cost` in every window of `limits` and one lease, atomically, or
    /// nothing. One store round trip when granted or denied; a second only to
    /// reclaim expired leases of crashed holders.
    async fn acquire(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        cost: u32,
        now: Timestamp,
    ) -> Result<Acquire>;

    /// Frees the lease and refunds `cost - used` calls to the windows the
    /// grant took from. Idempotent: releasing twice changes nothing. A
    /// reservation's refund survives its lease: released after the lease
    /// lapsed (and was reclaimed), it still refunds, once.
    async fn release(&self, grant: &Grant, used: u32) -> Result<()>;

    /// Extends a held lease to `until`; [`Error::LeaseLost`] if it was reclaimed.
    async fn renew(&self, grant: &Grant, until: Timestamp) -> Result<()>;

    /// Denies every acquire on `key` until `until` (never shortens a block).
    async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> Result<()>;

    /// The API reported its own count: raises the window `window` (an id
    /// like `d2026-11-22`) to at least `at_least`, in one conditional write
    /// that never lowers it. Returns the calls added (0 when the count was
    /// already there). The caller clamps `at_least` to the window's limit.
    async fn raise_window(&self, key: &QuotaKey, window: &str, at_least: u64) -> Result<u64>;

    /// Adds calls to the usage report (summed per key, day, source, endpoint).
    async fn record_usage(&self, entries: &[UsageEntry]) -> Result<()>;

    /// The usage report of one budget for one UTC day.
    async fn usage(&self, key: &QuotaKey, day: NaiveDate) -> Result<Vec<UsageEntry>>;

    /// What the store holds for `key` at `now`.
    async fn state(&self, key: &QuotaKey, limits: &Limits, now: Timestamp) -> Result<QuotaState>;

    /// The connection's health (default when nothing was recorded).
    async fn health(&self, key: &QuotaKey) -> Result<Health>;

    /// Replaces the health with `new` if it is still `expected`; false when
    /// another writer came first (read again and retry).
    async fn swap_health(&self, key: &QuotaKey, expected: &Health, new: &Health) -> Result<bool>;

    /// Lifts a pause at once: forgets the health and the org's block (a
    /// block the API asked for goes too; the API will say so again).
    async fn resume(&self, key: &QuotaKey) -> Result<()>;
}
