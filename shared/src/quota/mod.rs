//! The quota port: spend a third-party API's call budget like money.
//!
//! A budget belongs to an organization *and* its app connection
//! ([`QuotaKey`]). [`Limits`] declare calls per UTC day, optionally per hour
//! and per minute, and a cap on concurrent calls. A call must fit every
//! window at once.
//!
//! [`QuotaStore::acquire`] is one atomic step in the store: it takes `cost`
//! from every window **and** a concurrency lease, or takes nothing and says
//! when to come back ([`Denied::retry_at`]). Adapters:
//! [`crate::adapters::aws::quota::DynamoQuota`] (one conditional `UpdateItem`) and
//! [`crate::adapters::sqlite::quota::SqliteQuota`] (one `BEGIN IMMEDIATE` transaction).
//!
//! Handlers do not call the store directly; they go through [`Quota`], which
//! reads the injected clock, lets exempt calls through without touching the
//! store, and tallies usage per source and endpoint so it can be written once
//! per invocation instead of once per call.

use crate::core::clock::{SharedClock, Timestamp};
use crate::core::error::{Error, Result};
use crate::core::metrics::{Counter, Metrics};
use async_trait::async_trait;
use chrono::{Duration, DurationRound, NaiveDate, Timelike};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

pub mod bucket;
pub mod health;
pub mod share;
pub mod wave;
pub use health::{Health, PausePolicy};
pub mod window;
pub use bucket::{Bucket, BucketLimit};
pub use window::{Align, Span, WindowLimit};

/// Whose budget: an organization's connection to one third-party app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuotaKey {
    /// The organization.
    pub org: String,
    /// The third-party app.
    pub app: String,
}

/// The org name of an app's own level ([`QuotaKey::app_level`]): not a
/// name a connection may take.
pub const APP_LEVEL_ORG: &str = "*app*";

impl QuotaKey {
    /// The budget every org of this key's app shares (`[app.limits.app_wide]`).
    pub fn app_level(&self) -> QuotaKey {
        QuotaKey::new(APP_LEVEL_ORG, &self.app)
    }

    /// The budget of `org` on `app`.
    pub fn new(org: impl Into<String>, app: impl Into<String>) -> Self {
        Self {
            org: org.into(),
            app: app.into(),
        }
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.app)
    }
}

/// A counting window: the UTC day, hour and minute of `per_day`,
/// `per_hour` and `per_minute`, or a [`Span`] of `[[app.limits.windows]]`
/// (any length; fixed and aligned, or rolling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// A UTC day.
    Day,
    /// A UTC hour.
    Hour,
    /// A UTC minute.
    Minute,
    /// Any other window.
    Span(Span),
    /// A token bucket (`[[app.limits.buckets]]`); its limit is the
    /// capacity and its counter the GCRA's arrival time ([`bucket`]).
    Bucket(Bucket),
}

impl WindowKind {
    /// The identifier of the counter `now` is counted in, e.g.
    /// `d2026-11-22`. Identifiers of different kinds never collide.
    pub fn id(self, now: Timestamp) -> String {
        match self {
            WindowKind::Day => now.format("d%Y-%m-%d").to_string(),
            WindowKind::Hour => now.format("h%Y-%m-%dT%H").to_string(),
            WindowKind::Minute => now.format("m%Y-%m-%dT%H:%M").to_string(),
            WindowKind::Span(span) => span.id(now),
            WindowKind::Bucket(bucket) => bucket.id(),
        }
    }

    /// The counters whose sum the window holds at `now` (one, but for a
    /// rolling span: its buckets).
    pub fn counted_ids(self, now: Timestamp) -> Vec<String> {
        match self {
            WindowKind::Span(span) => span.counted_ids(now),
            _ => vec![self.id(now)],
        }
    }

    /// Calls the window holds at `now`, from the counters' values.
    pub fn held(self, now: Timestamp, used: impl Fn(&str) -> u64) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => bucket.level(used(&bucket.id()), now),
            _ => self.counted_ids(now).iter().map(|id| used(id)).sum(),
        }
    }

    /// What taking `cost` calls at `now` adds to the counter [`Self::id`]
    /// holding `current`: the cost, or for a bucket the move of its
    /// arrival time.
    pub fn take(self, current: u64, now: Timestamp, cost: u32) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => bucket.take(current, now, cost),
            _ => u64::from(cost),
        }
    }

    /// What refunding `calls` subtracts from the counter.
    pub fn refund(self, calls: u32) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => bucket.refund(calls),
            _ => u64::from(calls),
        }
    }

    /// The counter value that says `spent` calls are held at `at` (the
    /// API's own count).
    pub fn counter_for(self, spent: u64, at: Timestamp) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => bucket.counter_for(spent, at),
            _ => spent,
        }
    }

    /// Calls a counter difference of `delta` stands for (the inverse of
    /// [`Self::refund`]).
    pub fn calls_in(self, delta: u64) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => delta / u64::from(bucket.interval_ms.max(1)),
            _ => delta,
        }
    }

    /// When a call of `cost` fits the window again (its end, for a fixed
    /// window; for a rolling span, when enough of its oldest calls have
    /// left it).
    pub fn retry_at(
        self,
        now: Timestamp,
        limit: u32,
        cost: u32,
        used: impl Fn(&str) -> u64,
    ) -> Timestamp {
        match self {
            WindowKind::Span(span) => span.retry_at(now, limit, cost, used),
            WindowKind::Bucket(bucket) => bucket.retry_at(used(&bucket.id()), now, cost),
            _ => self.end(now),
        }
    }

    /// Its length in seconds (a day is 86,400 here even on the days a
    /// time zone's clocks move).
    pub fn secs(self) -> u32 {
        match self {
            WindowKind::Day => 86_400,
            WindowKind::Hour => 3_600,
            WindowKind::Minute => 60,
            WindowKind::Span(span) => span.secs,
            WindowKind::Bucket(bucket) => bucket.secs(),
        }
    }

    /// Whether the window is a rolling span.
    pub fn is_rolling(self) -> bool {
        matches!(self, WindowKind::Span(Span { rolling: true, .. }))
    }

    /// Whether the store can check the window with one condition on one
    /// counter: not for a rolling span (a sum of buckets) nor a token
    /// bucket (a `max` with the clock), which are judged on a read and
    /// written under a version check.
    pub fn needs_read(self) -> bool {
        self.is_rolling() || matches!(self, WindowKind::Bucket(_))
    }

    /// When the window with identifier `id` ([`WindowKind::id`]) ends;
    /// `None` for an identifier no kind writes.
    pub fn end_of(id: &str) -> Option<Timestamp> {
        if let Some(end) = Span::end_of(id) {
            return Some(end);
        }
        let (kind, rest) = id.split_at_checked(1)?;
        let start = match kind {
            "d" => chrono::NaiveDate::parse_from_str(rest, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)?,
            "h" => chrono::NaiveDateTime::parse_from_str(&format!("{rest}:00"), "%Y-%m-%dT%H:%M")
                .ok()?,
            "m" => chrono::NaiveDateTime::parse_from_str(rest, "%Y-%m-%dT%H:%M").ok()?,
            _ => return None,
        };
        let kind = match kind {
            "d" => WindowKind::Day,
            "h" => WindowKind::Hour,
            _ => WindowKind::Minute,
        };
        Some(kind.end(start.and_utc()))
    }

    /// When the window `now` falls in ends, i.e. when its capacity returns
    /// (for a rolling span: when its current bucket ends).
    pub fn end(self, now: Timestamp) -> Timestamp {
        let unit = match self {
            WindowKind::Day => Duration::days(1),
            WindowKind::Hour => Duration::hours(1),
            WindowKind::Minute => Duration::minutes(1),
            WindowKind::Span(span) => return span.end(now),
            WindowKind::Bucket(bucket) => return bucket.end(now),
        };
        // Truncating a valid UTC timestamp to a whole day/hour/minute cannot
        // fail; fall back to `now` rather than panic if chrono ever disagrees.
        now.duration_trunc(unit).unwrap_or(now) + unit
    }
}

/// The pruning rule both quota adapters apply: a stored window counter may
/// be dropped only when its window has ended at `now`. Not merely "not one
/// of the windows of `now`": `now` is read before the store round trip, so
/// an acquire whose `now` is a moment old would otherwise drop the counter
/// of the window that has just begun, and calls counted there would be
/// counted again (the seeded simulation saw 16 calls in a 15-a-minute
/// window that way). Identifiers no kind writes are kept.
///
/// And not the moment it ends either: the processes sharing a budget do
/// not share a clock. One whose clock runs ahead would drop a rolling
/// window's oldest bucket while another, a few seconds behind, still
/// counts it, and admit a call over the limit (the racing-tasks case saw
/// 9 in a rolling minute of 8, clocks 4.5 s apart). A counter is kept
/// [`CLOCK_SKEW_ALLOWANCE`] past its end.
pub fn window_ended(id: &str, now: Timestamp) -> bool {
    WindowKind::end_of(id).is_some_and(|end| end + CLOCK_SKEW_ALLOWANCE <= now)
}

/// How far apart the clocks of the processes sharing a budget may be for
/// pruning to stay safe (see [`window_ended`]).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::seconds(60);

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowKind::Day => "day",
            WindowKind::Hour => "hour",
            WindowKind::Minute => "minute",
            WindowKind::Span(span) => return write!(f, "{span} window"),
            WindowKind::Bucket(bucket) => return write!(f, "{bucket}"),
        })
    }
}

/// The limits of one budget. Build with [`Limits::new`] or deserialize and
/// then [`Limits::validate`]: a zero limit is a configuration error, not a
/// budget that denies everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Calls per UTC day (the seeds' example: 2,500).
    pub per_day: Option<u32>,
    /// Calls per UTC hour, if the API limits them.
    #[serde(default)]
    pub per_hour: Option<u32>,
    /// Calls per UTC minute, if the API limits them.
    #[serde(default)]
    pub per_minute: Option<u32>,
    /// Windows of any length, alignment or rolling
    /// (`[[app.limits.windows]]`), on top of the three above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowLimit>,
    /// Token buckets (`[[app.limits.buckets]]`: Shopify's 40 leaking 2 a
    /// second), on top of the windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketLimit>,
    /// The app's own limits, shared by every org of the app (Xero's 10,000
    /// a minute across tenants, a Google project's quota): a call must fit
    /// both its org's limits and these (`[app.limits.app_wide]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_wide: Option<Box<Limits>>,
    /// Shares per source kind (`[app.limits.shares]`, see [`share`]): a
    /// reserved part of every window and a cap, so one kind of work cannot
    /// starve another. Empty: every source spends first come, first served.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub shares: std::collections::BTreeMap<String, share::Share>,
    /// Calls in flight at once (the seeds' example: 3).
    pub max_concurrent: u32,
    /// How long a lease lives unless renewed: a crashed holder strands a
    /// concurrency slot at most this long.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u32,
    /// When refused only for concurrency, come back after at most this long:
    /// holders release far sooner than their lease expires.
    #[serde(default = "default_concurrency_retry_secs")]
    pub concurrency_retry_secs: u32,
}

fn default_lease_ttl_secs() -> u32 {
    60
}
fn default_concurrency_retry_secs() -> u32 {
    1
}

impl Limits {
    /// The seeds' example budget: 2,500 calls a UTC day, 3 concurrent.
    pub fn seed_example() -> Self {
        Self::new(Some(2_500), None, None, 3).expect("static limits are valid")
    }

    /// Limits that must be valid (a zero window limit would deny everything).
    pub fn new(
        per_day: Option<u32>,
        per_hour: Option<u32>,
        per_minute: Option<u32>,
        max_concurrent: u32,
    ) -> Result<Self> {
        let limits = Self {
            per_day,
            per_hour,
            per_minute,
            windows: Vec::new(),
            buckets: Vec::new(),
            app_wide: None,
            shares: Default::default(),
            max_concurrent,
            lease_ttl_secs: default_lease_ttl_secs(),
            concurrency_retry_secs: default_concurrency_retry_secs(),
        };
        limits.validate()?;
        Ok(limits)
    }

    /// The same limits with leases of `secs` seconds.
    pub fn with_lease_ttl(mut self, secs: u32) -> Result<Self> {
        self.lease_ttl_secs = secs;
        self.validate()?;
        Ok(self)
    }

    /// Refuses limits that could never grant a call.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("per_day", self.per_day),
            ("per_hour", self.per_hour),
            ("per_minute", self.per_minute),
        ] {
            if value == Some(0) {
                return Err(Error::Config(format!(
                    "limits.{name} is 0; omit it for no limit or give a positive number"
                )));
            }
        }
        if self.max_concurrent == 0 {
            return Err(Error::Config(
                "limits.max_concurrent is 0; it must be at least 1".into(),
            ));
        }
        if self.lease_ttl_secs == 0 {
            return Err(Error::Config(
                "limits.lease_ttl_secs is 0; it must be at least 1".into(),
            ));
        }
        if self.per_day.is_none()
            && self.per_hour.is_none()
            && self.per_minute.is_none()
            && self.windows.is_empty()
            && self.buckets.is_empty()
        {
            return Err(Error::Config(
                "limits: give at least one of per_day, per_hour, per_minute, windows, buckets"
                    .into(),
            ));
        }
        if let Some(app) = &self.app_wide {
            if app.app_wide.is_some() {
                return Err(Error::Config(
                    "limits.app_wide.app_wide: an app has one level above its orgs".into(),
                ));
            }
            app.validate().map_err(|e| {
                Error::Config(format!(
                    "limits.app_wide: {}",
                    e.to_string().trim_start_matches("configuration error: ")
                ))
            })?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.windows {
            if !seen.insert(w.span()?) {
                return Err(Error::Config(format!(
                    "limits.windows: two windows of {}; give one, with the smaller limit",
                    w.span()?
                )));
            }
        }
        let mut buckets = std::collections::BTreeSet::new();
        for b in &self.buckets {
            if !buckets.insert(b.bucket()?) {
                return Err(Error::Config(format!(
                    "limits.buckets: two buckets of {}; give one",
                    b.bucket()?
                )));
            }
        }
        self.validate_shares()
    }

    /// The same limits with one more token bucket.
    pub fn with_bucket(mut self, bucket: BucketLimit) -> Result<Self> {
        self.buckets.push(bucket);
        self.validate()?;
        Ok(self)
    }

    /// The same limits with one more window.
    pub fn with_window(mut self, window: WindowLimit) -> Result<Self> {
        self.windows.push(window);
        self.validate()?;
        Ok(self)
    }

    /// The windows that apply, with their limits, largest first (then the
    /// `windows` entries in their order).
    pub fn windows(&self) -> impl Iterator<Item = (WindowKind, u32)> + '_ {
        [
            (WindowKind::Day, self.per_day),
            (WindowKind::Hour, self.per_hour),
            (WindowKind::Minute, self.per_minute),
        ]
        .into_iter()
        .filter_map(|(kind, limit)| limit.map(|l| (kind, l)))
        .chain(self.windows.iter().filter_map(|w| {
            // Validated limits have spans; an unvalidated bad one is left
            // out rather than panicking.
            w.span().ok().map(|span| (WindowKind::Span(span), w.calls))
        }))
        .chain(
            self.buckets
                .iter()
                .filter_map(|b| b.bucket().ok().map(|b| (WindowKind::Bucket(b), b.capacity))),
        )
    }

    /// The most calls any `secs` seconds can hold under these limits, and
    /// the window that binds: each window of length L ≤ `secs` holding N
    /// allows at most N per L, so N × `secs` / L over `secs` (a minute of
    /// 5 holds an hour to 300). None when no window is that short.
    pub fn capacity_per(&self, secs: u32) -> Option<(f64, WindowKind, u32)> {
        self.windows()
            .filter_map(|(kind, limit)| {
                let len = kind.secs();
                (len <= secs).then(|| {
                    (
                        f64::from(limit) * f64::from(secs) / f64::from(len),
                        kind,
                        limit,
                    )
                })
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Whether some window is rolling or a bucket (the DynamoDB adapter
    /// reads before it writes then).
    pub fn needs_read(&self) -> bool {
        self.windows().any(|(kind, _)| kind.needs_read())
    }

    /// When the first window that applies at `now` ends: the end of what a
    /// grant made at `now` may be spent in.
    pub fn windows_end(&self, now: Timestamp) -> Timestamp {
        self.windows()
            .map(|(kind, _)| kind.end(now))
            .min()
            .unwrap_or(now)
    }

    /// How long a concurrency lease lives unless renewed.
    pub fn lease_ttl(&self) -> Duration {
        Duration::seconds(i64::from(self.lease_ttl_secs))
    }

    /// Rejects a cost that no window could ever hold: it would be denied
    /// forever and restart forever.
    pub fn check_cost(&self, cost: u32) -> Result<()> {
        if cost == 0 {
            return Err(Error::Impossible("a call must cost at least 1".into()));
        }
        if let Some((kind, limit)) = self.windows().find(|(_, limit)| cost > *limit) {
            return Err(Error::Impossible(format!(
                "a reservation of {cost} calls can never fit the {kind} limit of {limit}"
            )));
        }
        Ok(())
    }
}

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

/// What [`Quota::acquire_levels`] took: the org's grant and the app's,
/// or the refusal of either.
enum Levels {
    /// The org's grant, the app's, and the share's.
    Granted(Box<(Grant, Option<Grant>, Vec<Grant>)>),
    Denied(Denied),
    /// Refused again from this process's recent denial.
    Repeated(Denied),
}

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

/// Evaluates a refusal from the state the store saw. Shared by the adapters
/// so both explain refusals the same way. Returns `None` when nothing
/// refuses (the caller lost a race and should try again).
#[cfg_attr(not(any(feature = "sqlite", feature = "aws")), allow(dead_code))]
pub(crate) fn explain_denial(
    limits: &Limits,
    cost: u32,
    now: Timestamp,
    used: impl Fn(&str) -> u64,
    lease_expiries: &[Timestamp],
    blocked_until: Option<Timestamp>,
) -> Option<Denied> {
    let mut worst: Option<Denied> = None;
    let mut consider = |d: Denied| {
        if worst.as_ref().is_none_or(|w| d.retry_at > w.retry_at) {
            worst = Some(d);
        }
    };
    if let Some(until) = blocked_until.filter(|u| *u > now) {
        consider(Denied {
            retry_at: until,
            reason: DenyReason::Blocked,
        });
    }
    for (kind, limit) in limits.windows() {
        let u = kind.held(now, &used);
        if u + u64::from(cost) > u64::from(limit) {
            consider(Denied {
                retry_at: kind.retry_at(now, limit, cost, &used),
                reason: DenyReason::Window {
                    window: kind,
                    limit,
                    used: u,
                },
            });
        }
    }
    let live: Vec<_> = lease_expiries.iter().filter(|e| **e > now).collect();
    if live.len() >= limits.max_concurrent as usize {
        let earliest = live.iter().map(|e| **e).min().unwrap_or(now);
        let hint = now + Duration::seconds(i64::from(limits.concurrency_retry_secs));
        consider(Denied {
            retry_at: earliest.min(hint),
            reason: DenyReason::Concurrency {
                max: limits.max_concurrent,
            },
        });
    }
    worst
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

/// One call (or reservation of several) a handler wants to make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Call {
    /// Calls it takes (1, or a reservation's page count).
    pub cost: u32,
    /// The sync or workflow spending it, for the usage report.
    pub source: String,
    /// The endpoint, `METHOD /path`, for the usage report.
    pub endpoint: String,
    /// Calls the platform does not count (e.g. pushes from the app to us).
    pub exempt: bool,
}

impl Call {
    /// One call of `source` to `endpoint`.
    pub fn new(source: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            cost: 1,
            source: source.into(),
            endpoint: endpoint.into(),
            exempt: false,
        }
    }

    /// Reserve `cost` calls at once (a transfer with a known page count).
    pub fn reserve(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Marks the call exempt: counted in usage, not in the budget.
    pub fn exempt(mut self) -> Self {
        self.exempt = true;
        self
    }
}

/// Permission to make calls, returned by [`Quota::acquire`]. Give it back
/// with [`Quota::release`], saying how many calls were really made.
#[derive(Debug)]
#[must_use = "a permit holds a concurrency lease until released"]
pub struct Permit {
    grant: Option<Grant>,
    /// The app-wide level's grant, when the limits have one.
    app_grant: Option<Grant>,
    /// The grants of the call's share ([`share`]), when shares are set.
    share_grants: Vec<Grant>,
    key: QuotaKey,
    call: Call,
    day: NaiveDate,
    hour: u8,
    granted_at: Timestamp,
}

impl Permit {
    /// When it was granted: the windows its calls count in are the ones of
    /// this time, however late the calls' answers come back.
    pub fn granted_at(&self) -> Timestamp {
        self.granted_at
    }
    /// The store's grant; `None` for exempt calls, which took nothing.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }
    /// Calls the permit allows.
    pub fn cost(&self) -> u32 {
        self.call.cost
    }
    /// The endpoint its calls go to.
    pub fn endpoint(&self) -> &str {
        &self.call.endpoint
    }
}

/// Outcome of [`Quota::acquire`].
// A permit is returned once per call and moved, never stored in bulk: boxing
// it would add an allocation to the hot path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; release the permit after the calls.
    Granted(Permit),
    /// Restart at `retry_at`; never sleep.
    Denied(Denied),
}

type UsageKey = (QuotaKey, NaiveDate, String, String, bool);

/// Calls and denials of one usage key, per hour (the total is their sum).
type UsageTally = BTreeMap<u8, HourUse>;

/// What handlers use: a store, the clock, and a usage tally flushed once per
/// invocation.
#[derive(Clone)]
pub struct Quota {
    store: Arc<dyn QuotaStore>,
    clock: SharedClock,
    tally: Arc<Mutex<BTreeMap<UsageKey, UsageTally>>>,
    metrics: Metrics,
    /// Recent denials of this process, per budget (see [`RecentDenial`]).
    denials: Arc<Mutex<std::collections::HashMap<QuotaKey, RecentDenial>>>,
    /// Per wake-slot budget and first window after a refusal, how many
    /// windows this process found full of wake slots ([`wave`]).
    full_waves: Arc<Mutex<std::collections::HashMap<(QuotaKey, Timestamp), u32>>>,
    /// Per budget, how long this process's calls hold a slot and when the
    /// next slot is expected to free for a waiter (see [`Quota::queue_for_slot`]).
    slot_queues: Arc<Mutex<std::collections::HashMap<QuotaKey, SlotQueue>>>,
}

/// The slots of one budget as this process sees them.
#[derive(Debug, Clone, Copy)]
struct SlotQueue {
    /// A moving average of how long a permit was held, in ms.
    hold_ms: f64,
    /// When the next waiter is sent back.
    next_at: Timestamp,
}

/// How long a denial is repeated from memory: short, so another process's
/// release is noticed within it.
pub const REPEAT_DENIAL_FOR: Duration = Duration::seconds(1);

/// A denial this process received, answered again from memory for a
/// moment instead of asking the store.
///
/// Why: a refused conditional write still costs DynamoDB a write unit, and
/// the messages of one batch, or jobs woken together, ask for the same
/// full budget one after another. A repeat within [`REPEAT_DENIAL_FOR`]
/// (and before its `retry_at`) of a call costing at least as much is
/// refused from here. It only ever refuses, never admits; a release in
/// this process forgets it, and another process's refund is seen within
/// the second. Waits for a concurrency slot are not repeated: any
/// holder's release ends them.
#[derive(Debug, Clone)]
struct RecentDenial {
    cost: u32,
    denied: Denied,
    until: Timestamp,
    /// Requests answered from it so far: the n-th is sent n turns later
    /// ([`wave::repeat_at`]), so repeats do not all wake at once.
    repeats: u64,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota").field("clock", &self.clock).finish()
    }
}

impl Quota {
    /// A quota kept in `store`, on `clock`.
    pub fn new(store: Arc<dyn QuotaStore>, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            tally: Arc::default(),
            metrics: Metrics::new(),
            denials: Arc::default(),
            full_waves: Arc::default(),
            slot_queues: Arc::default(),
        }
    }

    /// The denial to repeat for `cost` calls of `key` at `now`, if a recent
    /// one still stands.
    fn recent_denial(&self, key: &QuotaKey, cost: u32, now: Timestamp) -> Option<(Denied, u64)> {
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        match denials.get_mut(key) {
            Some(d) if now < d.until && cost >= d.cost => {
                d.repeats += 1;
                Some((d.denied.clone(), d.repeats))
            }
            Some(d) if now >= d.until => {
                denials.remove(key);
                None
            }
            _ => None,
        }
    }

    fn remember_denial(&self, key: &QuotaKey, cost: u32, denied: &Denied, now: Timestamp) {
        // A wait for a slot is over when any holder, in any process,
        // releases (or when a contended store lets go): not repeated.
        // (A share's refusal is remembered under its kind's key, see
        // `memory_key`: another kind of the org may still be admitted.)
        if matches!(denied.reason, DenyReason::Concurrency { .. }) {
            return;
        }
        let until = denied.retry_at.min(now + REPEAT_DENIAL_FOR);
        if until <= now {
            return;
        }
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the cheapest denial: it answers the most requests.
        let keep = denials
            .get(key)
            .is_some_and(|d| now < d.until && d.cost <= cost);
        if !keep {
            denials.insert(
                key.clone(),
                RecentDenial {
                    cost,
                    denied: denied.clone(),
                    until,
                    repeats: 0,
                },
            );
        }
    }

    /// Capacity of `key` came back in this process: ask the store again.
    /// With `app_level`, the app's level got capacity back too, which
    /// every org of the app may have been refused for.
    fn forget_denials(&self, key: &QuotaKey, app_level: bool) {
        let mut denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        if app_level {
            denials.retain(|k, _| k.app != key.app);
        } else {
            // The org's own denial and its kinds' (share refusals).
            let kinds = format!("{}{}", key.org, share::SHARE_MARK);
            denials.retain(|k, _| {
                k.app != key.app || (k.org != key.org && !k.org.starts_with(&kinds))
            });
        }
    }

    /// Where a refusal of `call` is remembered: a share's refusal under its
    /// kind (the org's other kinds may still be admitted), any other under
    /// the org.
    fn memory_key(key: &QuotaKey, call: &Call) -> QuotaKey {
        QuotaKey::new(
            format!(
                "{}{}denied:{}",
                key.org,
                share::SHARE_MARK,
                share::kind_of(&call.source)
            ),
            &key.app,
        )
    }

    /// Counts calls, denials and the day's burn into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where calls, denials and the burn are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    /// The clock it reads.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Moves a window's refusal on `level` (of `limits`) to a wake slot in
    /// the first window after it that has one ([`wave`]); the slots are
    /// counted under `slots_key`. A bucket's or any other refusal, and any
    /// store error here, leave the refusal as it was.
    async fn wave(
        &self,
        slots_key: QuotaKey,
        limits: &Limits,
        denied: Denied,
        now: Timestamp,
    ) -> Denied {
        let DenyReason::Window { window, limit, .. } = &denied.reason else {
            return denied;
        };
        let Some(slots) = wave::slot_limits(*window, *limit) else {
            return denied;
        };
        let len = i64::from(window.secs());
        let spacing = wave::spacing_ms(limits, window.secs());
        let first = denied.retry_at.max(now);
        let memo = (slots_key.clone(), first);
        let mut k = {
            let mut full = self.full_waves.lock().unwrap_or_else(|e| e.into_inner());
            full.retain(|(_, at), _| *at >= now);
            full.get(&memo).copied().unwrap_or(0)
        };
        while k < wave::MAX_WAVES {
            let start = first + Duration::seconds(len * i64::from(k));
            match self.store.acquire(&slots_key, &slots, 1, start).await {
                Ok(Acquire::Granted(g)) => {
                    let slot = g.windows.first().map_or(1, |w| w.used).saturating_sub(1);
                    if let Err(e) = self.store.release(&g, 1).await {
                        tracing::debug!(quota = %slots_key, error = %e, "could not release a wake slot's lease; it expires");
                    }
                    self.full_waves
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(memo, k);
                    return Denied {
                        retry_at: wave::wake_at(start, window.secs(), slot, spacing),
                        reason: denied.reason,
                    };
                }
                Ok(Acquire::Denied(_)) => k += 1,
                Err(e) => {
                    tracing::warn!(quota = %slots_key, error = %e, "could not take a wake slot; the job comes back when the window ends");
                    return denied;
                }
            }
        }
        Denied {
            retry_at: first + Duration::seconds(len * i64::from(wave::MAX_WAVES)),
            reason: denied.reason,
        }
    }

    /// Queues a wait for a concurrency slot behind the others this process
    /// sent back: the n-th waiter returns about n × (hold time / slots)
    /// after now, the pace at which slots free, instead of every waiter
    /// polling at the store's hint (a second) and most being refused again.
    /// Before this process has seen a permit held, the hint stands for the
    /// hold time.
    fn queue_for_slot(&self, key: &QuotaKey, max: u32, denied: Denied, now: Timestamp) -> Denied {
        let mut queues = self.slot_queues.lock().unwrap_or_else(|e| e.into_inner());
        // Before any permit was seen held, the store's hint stands for the
        // hold time.
        let hint_ms = (denied.retry_at - now).num_milliseconds().max(1) as f64;
        let q = queues.entry(key.clone()).or_insert(SlotQueue {
            hold_ms: hint_ms,
            next_at: now,
        });
        let spacing = Duration::milliseconds((q.hold_ms / f64::from(max.max(1))).ceil() as i64);
        let at = denied.retry_at.max(q.next_at).max(now + spacing);
        q.next_at = at + spacing;
        Denied {
            retry_at: at,
            reason: denied.reason,
        }
    }

    /// A permit of `key` held since `granted_at` was released at `now`.
    fn note_hold(&self, key: &QuotaKey, granted_at: Timestamp, now: Timestamp) {
        let held = (now - granted_at).num_milliseconds().max(0) as f64;
        let mut queues = self.slot_queues.lock().unwrap_or_else(|e| e.into_inner());
        let q = queues.entry(key.clone()).or_insert(SlotQueue {
            hold_ms: held,
            next_at: now,
        });
        q.hold_ms = 0.8 * q.hold_ms + 0.2 * held;
    }

    /// Gives back whole the grants a refused or failed acquire took on the
    /// way. Logged, not returned: the refusal or error it follows is the
    /// answer, and a grant not given back frees when its lease expires.
    async fn give_back(&self, grants: &[Grant], why: &str) {
        for g in grants {
            if let Err(undo) = self.store.release(g, 0).await {
                tracing::warn!(quota = %g.key, error = %undo, why, "could not give a grant back; its lease expires");
            }
        }
    }

    /// The wake slots of `key`'s refusals (of `part`, for a share).
    fn slots_key(key: &QuotaKey, part: &str) -> QuotaKey {
        QuotaKey::new(
            format!("{}{}wake{part}", key.org, share::SHARE_MARK),
            &key.app,
        )
    }

    /// The share's budgets for `call` ([`share`]): its reserve, else the
    /// unreserved part and its cap; near the end of a fixed window whose
    /// unreserved part refused, another kind's unspent reserve. The grants,
    /// or the refusal naming the share (nothing held then).
    async fn acquire_share(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        call: &Call,
        now: Timestamp,
    ) -> Result<std::result::Result<Vec<Grant>, Denied>> {
        use share::{share_key, Part};
        let kind = share::kind_of(&call.source);
        let cost = call.cost;
        let take = |part: Part, of: &str| {
            let level = limits.share_part(part, of);
            let level_key = share_key(key, part, of);
            async move {
                match level {
                    None => Ok(None),
                    Some(l) => {
                        if l.check_cost(cost).is_err() {
                            // More than this part could ever hold (a block
                            // reserved for the org's windows): refused as by
                            // its tightest window, so a reservation asks
                            // again for what the part holds.
                            let (window, limit) = l
                                .windows()
                                .min_by_key(|(_, limit)| *limit)
                                .unwrap_or((WindowKind::Day, 0));
                            return Ok(Some(Acquire::Denied(Denied {
                                retry_at: window.end(now),
                                reason: DenyReason::Window {
                                    window,
                                    limit,
                                    used: 0,
                                },
                            })));
                        }
                        self.store
                            .acquire(&level_key, &l, cost, now)
                            .await
                            .map(Some)
                    }
                }
            }
        };
        if let Some(Acquire::Granted(g)) = take(Part::Reserve, kind).await? {
            return Ok(Ok(vec![g]));
        }
        let named = |d: Denied, part: &'static str| {
            let reason = match d.reason {
                DenyReason::Window {
                    window,
                    limit,
                    used,
                } => DenyReason::Share {
                    source_kind: kind.to_string(),
                    part: part.to_string(),
                    window,
                    limit,
                    used,
                },
                other => other,
            };
            Denied {
                retry_at: d.retry_at,
                reason,
            }
        };
        let pool = match take(Part::Pool, kind).await? {
            Some(Acquire::Granted(g)) => Some(g),
            None => None,
            Some(Acquire::Denied(d)) => {
                // Near a fixed window's end, another kind's reserve that
                // would lapse unspent is lent.
                let lend = match &d.reason {
                    DenyReason::Window { window, .. } if !window.needs_read() => {
                        let left = (d.retry_at - now).num_seconds();
                        left <= i64::from(window.secs()) / share::LEND_IN_LAST
                    }
                    _ => false,
                };
                if lend {
                    for other in limits.shares.keys().filter(|k| k.as_str() != kind) {
                        if let Some(Acquire::Granted(g)) = take(Part::Reserve, other).await? {
                            tracing::info!(quota = %key, kind, lender = %other, "near the window's end: another kind's unspent reserve is lent");
                            return Ok(Ok(vec![g]));
                        }
                    }
                }
                let part = limits.share_part(Part::Pool, kind);
                let d = match &part {
                    Some(part) => self.wave(Self::slots_key(key, ":pool"), part, d, now).await,
                    None => d,
                };
                return Ok(Err(named(d, "unreserved part")));
            }
        };
        let pool: Vec<Grant> = pool.into_iter().collect();
        match take(Part::Cap, kind).await {
            Ok(None) => Ok(Ok(pool)),
            Ok(Some(Acquire::Granted(cap))) => Ok(Ok(pool.into_iter().chain([cap]).collect())),
            Ok(Some(Acquire::Denied(d))) => {
                for g in &pool {
                    self.store.release(g, 0).await?;
                }
                let d = match limits.share_part(Part::Cap, kind) {
                    Some(part) => {
                        let slots = Self::slots_key(key, &format!(":cap:{kind}"));
                        self.wave(slots, &part, d, now).await
                    }
                    None => d,
                };
                Ok(Err(named(d, "cap")))
            }
            Err(e) => {
                self.give_back(&pool, "the share's cap could not be asked")
                    .await;
                Err(e)
            }
        }
    }

    /// The org's level, then the app's: both granted, or nothing held.
    /// Two atomic steps, not one: while the second is asked, the first
    /// holds its calls (a moment of over-counting the org, never of
    /// over-admitting either level), and a refusal by the app's level
    /// gives the org's grant back whole.
    async fn acquire_levels(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        call: &Call,
        now: Timestamp,
    ) -> Result<Levels> {
        let cost = call.cost;
        // The share first, then the org: a call the org's budget holds has
        // passed its share, so the org's count is never raised, even for a
        // moment, by a call its share then refuses (that would refuse
        // another kind's call against its reserve). A share's budget may be
        // held a moment by a call the org then refuses (a concurrency
        // slot): only calls of the same kind or the unreserved part see it.
        let shared = if limits.has_shares() {
            match self.acquire_share(key, limits, call, now).await? {
                Ok(grants) => grants,
                Err(d) => return Ok(Levels::Denied(d)),
            }
        } else {
            Vec::new()
        };
        let mut grant = match self.store.acquire(key, limits, cost, now).await {
            Ok(Acquire::Granted(g)) => g,
            Ok(Acquire::Denied(d)) => {
                self.give_back(&shared, "the org refused").await;
                let d = match d.reason {
                    DenyReason::Concurrency { max } => self.queue_for_slot(key, max, d, now),
                    _ => self.wave(Self::slots_key(key, ""), limits, d, now).await,
                };
                return Ok(Levels::Denied(d));
            }
            Err(e) => {
                self.give_back(&shared, "the org's acquire failed").await;
                return Err(e);
            }
        };
        for g in &shared {
            grant.valid_until = grant.valid_until.min(g.valid_until);
        }
        let Some(app) = &limits.app_wide else {
            return Ok(Levels::Granted(Box::new((grant, None, shared))));
        };
        let app_grant = match app.check_cost(cost) {
            Ok(()) => self.store.acquire(&key.app_level(), app, cost, now).await,
            Err(e) => Err(e),
        };
        match app_grant {
            Ok(Acquire::Granted(mut app_grant)) => {
                // Calls must be made before either level's window ends.
                let until = grant.valid_until.min(app_grant.valid_until);
                let mut grant = grant;
                grant.valid_until = until;
                app_grant.valid_until = until;
                Ok(Levels::Granted(Box::new((grant, Some(app_grant), shared))))
            }
            Ok(Acquire::Denied(d)) => {
                tracing::info!(quota = %key, reason = %d.reason, "the app-wide level refused (every org of the app shares it)");
                for g in std::iter::once(&grant).chain(&shared) {
                    self.store.release(g, 0).await?;
                }
                let d = self
                    .wave(Self::slots_key(&key.app_level(), ""), app, d, now)
                    .await;
                let reason = match d.reason {
                    DenyReason::Window {
                        window,
                        limit,
                        used,
                    } => DenyReason::AppWide {
                        window,
                        limit,
                        used,
                    },
                    other => other,
                };
                Ok(Levels::Denied(Denied {
                    retry_at: d.retry_at,
                    reason,
                }))
            }
            Err(e) => {
                self.give_back(std::slice::from_ref(&grant), "the app level failed")
                    .await;
                self.give_back(&shared, "the app level failed").await;
                Err(e)
            }
        }
    }

    /// Asks for `call.cost` calls, of the org's limits and, when they have
    /// one, the app's level. Exempt calls are granted without a store
    /// round trip.
    pub async fn acquire(&self, key: &QuotaKey, limits: &Limits, call: Call) -> Result<Admission> {
        let now = self.clock.now();
        let day = now.date_naive();
        let hour = now.hour() as u8;
        if call.exempt {
            return Ok(Admission::Granted(Permit {
                grant: None,
                app_grant: None,
                share_grants: Vec::new(),
                key: key.clone(),
                call,
                day,
                hour,
                granted_at: now,
            }));
        }
        limits.check_cost(call.cost)?;
        let kind_key = limits.has_shares().then(|| Self::memory_key(key, &call));
        let remembered = self.recent_denial(key, call.cost, now).or_else(|| {
            kind_key
                .as_ref()
                .and_then(|k| self.recent_denial(k, call.cost, now))
        });
        let levels = match remembered {
            Some((mut denied, repeats)) => {
                tracing::debug!(quota = %key, cost = call.cost, "denied again from this process's recent denial; no store request");
                if let DenyReason::Window { window, limit, .. }
                | DenyReason::Share { window, limit, .. }
                | DenyReason::AppWide { window, limit, .. } = &denied.reason
                {
                    denied.retry_at = wave::repeat_at(
                        denied.retry_at,
                        *window,
                        *limit,
                        repeats,
                        wave::spacing_ms(limits, window.secs()),
                    );
                }
                Levels::Repeated(denied)
            }
            None => self.acquire_levels(key, limits, &call, now).await?,
        };
        match levels {
            Levels::Granted(granted) => {
                let (grant, app_grant, share_grants) = *granted;
                tracing::debug!(quota = %key, cost = call.cost, lease = %grant.lease_id, "quota granted");
                let day_limit = limits.windows().find(|(w, _)| *w == WindowKind::Day);
                let day_used = grant.windows.iter().find(|w| w.kind == WindowKind::Day);
                if let (Some((_, limit)), Some(taken)) = (day_limit, day_used) {
                    self.metrics
                        .burn(&key.app, &key.org, &taken.id, taken.used, limit);
                }
                Ok(Admission::Granted(Permit {
                    grant: Some(grant),
                    app_grant,
                    share_grants,
                    key: key.clone(),
                    call,
                    day,
                    hour,
                    granted_at: now,
                }))
            }
            Levels::Repeated(denied) => Ok(self.refuse(key, call, day, hour, denied)),
            Levels::Denied(mut denied) => {
                if denied.reason == DenyReason::Blocked {
                    // Paused, or the API's Retry-After? One read, on a
                    // denial only, so the job's wait names the right cause.
                    if let Ok(health) = self.store.health(key).await {
                        if health.paused_at(now) {
                            denied.reason = DenyReason::Paused {
                                health: health.describe(now),
                            };
                        }
                    }
                }
                let memory = match (&denied.reason, &kind_key) {
                    (DenyReason::Share { .. }, Some(k)) => k,
                    _ => key,
                };
                self.remember_denial(memory, call.cost, &denied, now);
                Ok(self.refuse(key, call, day, hour, denied))
            }
        }
    }

    /// Counts and reports a refusal (from the store or repeated).
    fn refuse(
        &self,
        key: &QuotaKey,
        call: Call,
        day: NaiveDate,
        hour: u8,
        denied: Denied,
    ) -> Admission {
        tracing::info!(quota = %key, cost = call.cost, reason = %denied.reason, retry_at = %denied.retry_at, "quota denied");
        let counter = match &denied.reason {
            DenyReason::Window {
                window: WindowKind::Day,
                ..
            } => Counter::DenialsDayLimit,
            DenyReason::Window {
                window: WindowKind::Hour,
                ..
            } => Counter::DenialsHourLimit,
            DenyReason::Window {
                window: WindowKind::Minute,
                ..
            } => Counter::DenialsMinuteLimit,
            // Other windows by their length: the metric's three
            // names are what the alarms know.
            DenyReason::Window {
                window: WindowKind::Span(span),
                ..
            } => match span.secs {
                86_400.. => Counter::DenialsDayLimit,
                3_600.. => Counter::DenialsHourLimit,
                _ => Counter::DenialsMinuteLimit,
            },
            // A bucket refills in seconds: a short wait, like a
            // minute's.
            DenyReason::Window {
                window: WindowKind::Bucket(_),
                ..
            } => Counter::DenialsMinuteLimit,
            DenyReason::Concurrency { .. } => Counter::DenialsConcurrency,
            DenyReason::Blocked | DenyReason::Paused { .. } => Counter::DenialsBlocked,
            DenyReason::Share { window, .. } | DenyReason::AppWide { window, .. } => {
                match window.secs() {
                    86_400.. => Counter::DenialsDayLimit,
                    3_600.. => Counter::DenialsHourLimit,
                    _ => Counter::DenialsMinuteLimit,
                }
            }
        };
        self.metrics.add(&key.app, &key.org, counter, 1);
        self.tally(
            (key.clone(), day, call.source, call.endpoint, false),
            hour,
            HourUse {
                calls: 0,
                denied: 1,
                waited: u64::from(matches!(denied.reason, DenyReason::Concurrency { .. })),
            },
        );
        Admission::Denied(denied)
    }

    /// Returns the permit: `used` calls were made (at most its cost); the
    /// rest is refunded. Usage is tallied, not written: call
    /// [`Quota::flush_usage`] once per invocation.
    pub async fn release(&self, permit: Permit, used: u32) -> Result<()> {
        self.release_forfeiting(permit, used, 0).await
    }

    /// Like [`Quota::release`], when the API's own count said `forfeited`
    /// of the reserved calls are gone (another client of the org spent
    /// them): those are kept in the window, not refunded, and reported as
    /// `spent elsewhere`. Without this a reservation that masked the API's
    /// count while it was out would refund calls the API no longer allows.
    pub async fn release_forfeiting(
        &self,
        permit: Permit,
        used: u32,
        forfeited: u32,
    ) -> Result<()> {
        let used = used.min(permit.call.cost);
        let forfeited = forfeited.min(permit.call.cost - used);
        if permit.grant.is_some() && used + forfeited < permit.call.cost {
            // Calls come back: the next request asks. (A release that
            // refunds nothing frees only a concurrency slot, and waits for
            // a slot are never remembered.)
            self.forget_denials(&permit.key, permit.app_grant.is_some());
        }
        if let Some(grant) = &permit.grant {
            self.note_hold(&permit.key, permit.granted_at, self.clock.now());
            self.store.release(grant, used + forfeited).await?;
        }
        if let Some(grant) = &permit.app_grant {
            self.store.release(grant, used + forfeited).await?;
        }
        for grant in &permit.share_grants {
            self.store.release(grant, used + forfeited).await?;
        }
        if forfeited > 0 {
            self.tally_elsewhere(&permit.key, permit.day, permit.hour, u64::from(forfeited));
        }
        if used > 0 {
            self.metrics.add(
                &permit.key.app,
                &permit.key.org,
                Counter::CallsMade,
                u64::from(used),
            );
            self.tally(
                (
                    permit.key.clone(),
                    permit.day,
                    permit.call.source.clone(),
                    permit.call.endpoint.clone(),
                    permit.call.exempt,
                ),
                permit.hour,
                HourUse {
                    calls: u64::from(used),
                    ..HourUse::default()
                },
            );
        }
        Ok(())
    }

    /// Calls the API counted that metered did not make, as usage source
    /// [`SPENT_ELSEWHERE`].
    fn tally_elsewhere(&self, key: &QuotaKey, day: NaiveDate, hour: u8, calls: u64) {
        self.tally(
            (
                key.clone(),
                day,
                SPENT_ELSEWHERE.to_string(),
                "-".to_string(),
                false,
            ),
            hour,
            HourUse {
                calls,
                ..HourUse::default()
            },
        );
    }

    fn tally(&self, key: UsageKey, hour: u8, add: HourUse) {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally
            .entry(key)
            .or_default()
            .entry(hour)
            .or_default()
            .add(add);
    }

    /// The API reported `spent` calls in the current `kind` window, counting
    /// every client of the org: raises metered's count to it (never lower;
    /// the caller clamps to the limit) and reports the difference as
    /// `spent elsewhere` in the usage.
    pub async fn raise_from_api(
        &self,
        key: &QuotaKey,
        kind: WindowKind,
        spent: u64,
        at: Timestamp,
    ) -> Result<u64> {
        let target = kind.counter_for(spent, at);
        let raised = self.store.raise_window(key, &kind.id(at), target).await?;
        // A bucket's counter is a time: what was below the clock counted
        // nothing, so at most `spent` calls are added.
        let added = kind.calls_in(raised.min(target.saturating_sub(kind.counter_for(0, at))));
        if added > 0 {
            tracing::info!(quota = %key, window = %kind, added, api_count = spent, "the API counts calls metered did not make (another client of the org); the quota takes them");
            self.tally_elsewhere(key, at.date_naive(), at.hour() as u8, added);
        }
        Ok(added)
    }

    /// Extends a permit's lease for a long call.
    pub async fn renew(&self, permit: &Permit, by: Duration) -> Result<()> {
        for grant in permit
            .grant
            .iter()
            .chain(&permit.app_grant)
            .chain(&permit.share_grants)
        {
            self.store.renew(grant, self.clock.now() + by).await?;
        }
        Ok(())
    }

    /// The API refused the connection's credential (401/403): counts it
    /// ([`Health::after_auth_failure`], one compare-and-swap, retried) and,
    /// when that pauses the connection, blocks the org until the pause
    /// ends. Returns the health after it.
    pub async fn auth_failed(
        &self,
        key: &QuotaKey,
        reason: &str,
        policy: PausePolicy,
    ) -> Result<Health> {
        let now = self.clock.now();
        self.update_health(key, |old| Some(old.after_auth_failure(reason, now, policy)))
            .await
    }

    /// A sync run ended in the dead-letter queue: counts it
    /// ([`Health::after_run_failure`]); the same failure `after_runs` runs
    /// in a row pauses the connection.
    pub async fn run_failed(
        &self,
        key: &QuotaKey,
        reason: &str,
        after_runs: u32,
    ) -> Result<Health> {
        let now = self.clock.now();
        self.update_health(key, |old| {
            Some(old.after_run_failure(reason, now, after_runs))
        })
        .await
    }

    /// A sync run completed: forgets runs that failed before it (one read;
    /// a write only when there was something to forget).
    pub async fn run_succeeded(&self, key: &QuotaKey) -> Result<Health> {
        self.update_health(key, Health::after_run_success).await
    }

    /// Applies `change` to the connection's health (compare-and-swap,
    /// retried); a new pause blocks the org until it ends and is counted.
    async fn update_health(
        &self,
        key: &QuotaKey,
        change: impl Fn(&Health) -> Option<Health>,
    ) -> Result<Health> {
        let now = self.clock.now();
        for _ in 0..8 {
            let old = self.store.health(key).await?;
            let Some(new) = change(&old) else {
                return Ok(old);
            };
            if !self.store.swap_health(key, &old, &new).await? {
                continue;
            }
            if new.paused_at(now) && new.paused_until != old.paused_until {
                tracing::error!(quota = %key, until = ?new.paused_until, failures = new.failures, failed_runs = new.failed_runs, reason = new.reason.as_deref().unwrap_or(""), "connection paused");
                self.metrics
                    .add(&key.app, &key.org, Counter::ConnectionsPaused, 1);
            }
            if let Some(until) = new.paused_until.filter(|u| *u > now) {
                self.store.block_until(key, until).await?;
            }
            return Ok(new);
        }
        Err(Error::store(
            "connection health",
            "too many writers at once",
            crate::core::error::Disposition::Retryable,
        ))
    }

    /// The API said 429 / Retry-After: nobody of this org/app calls before `until`.
    pub async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> Result<()> {
        tracing::warn!(quota = %key, until = %until, "API asked us to back off");
        self.store.block_until(key, until).await
    }

    /// Writes the tallied usage in one store call. On failure the tally is
    /// kept for the next flush, so usage is not lost.
    pub async fn flush_usage(&self) -> Result<()> {
        let entries: Vec<UsageEntry> = {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *tally)
                .into_iter()
                .map(|((key, day, source, endpoint, exempt), hours)| UsageEntry {
                    key,
                    day,
                    source,
                    endpoint,
                    exempt,
                    calls: hours.values().map(|h| h.calls).sum(),
                    hours,
                })
                .collect()
        };
        if entries.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.record_usage(&entries).await {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            for u in entries {
                let hours = tally
                    .entry((u.key, u.day, u.source, u.endpoint, u.exempt))
                    .or_default();
                for (h, n) in u.hours {
                    hours.entry(h).or_default().add(n);
                }
            }
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_time() -> impl Strategy<Value = Timestamp> {
            // 2000-01-01 to 2100-01-01, millisecond resolution.
            (946_684_800_000i64..4_102_444_800_000).prop_map(crate::core::clock::from_millis)
        }

        fn any_kind() -> impl Strategy<Value = WindowKind> {
            prop_oneof![
                Just(WindowKind::Day),
                Just(WindowKind::Hour),
                Just(WindowKind::Minute)
            ]
        }

        proptest! {
            /// A fixed span of any length and alignment: `now` is in it,
            /// its id names its end, the last instant before the end is in
            /// it and the end is not; a zone's day is 23 to 25 hours.
            #[test]
            fn fixed_spans_hold_now_and_name_their_end(
                now in any_time(),
                secs in prop_oneof![1u32..100_000, Just(86_400u32), Just(3_600u32), Just(10u32)],
                align in prop_oneof![
                    Just("UTC"), Just("-06:00"), Just("+05:30"), Just("+00:01:30"),
                    Just("America/Chicago"), Just("Asia/Kolkata"), Just("Europe/London"),
                ],
            ) {
                let align = Align::parse(align).unwrap();
                let span = Span { secs, align, rolling: false };
                prop_assume!(span.validate().is_ok());
                let kind = WindowKind::Span(span);
                let end = kind.end(now);
                let len = i64::from(secs);
                prop_assert!(end > now);
                prop_assert!(end - now <= Duration::seconds(len + 3_600), "{} {}", end, now);
                prop_assert_eq!(WindowKind::end_of(&kind.id(now)), Some(end));
                prop_assert_eq!(kind.id(end - Duration::milliseconds(1)), kind.id(now));
                prop_assert_ne!(kind.id(end), kind.id(now));
            }

            /// A window ends after `now`, within one unit, on a boundary:
            /// the last instant before the end is in the same window, the
            /// end is in the next one.
            #[test]
            fn windows_end_on_the_next_boundary(now in any_time(), kind in any_kind()) {
                let end = kind.end(now);
                let unit = match kind {
                    WindowKind::Day => Duration::days(1),
                    WindowKind::Hour => Duration::hours(1),
                    WindowKind::Minute => Duration::minutes(1),
                    WindowKind::Span(_) | WindowKind::Bucket(_) => unreachable!("not generated"),
                };
                prop_assert!(end > now && end - now <= unit);
                prop_assert_eq!(end.duration_trunc(unit).unwrap(), end);
                prop_assert_eq!(kind.id(end - Duration::milliseconds(1)), kind.id(now));
                prop_assert_ne!(kind.id(end), kind.id(now));
            }

            /// A grant made at `now` may be spent until the first of its
            /// windows ends, and never past `now` + one day.
            #[test]
            fn grants_are_valid_until_their_first_window_ends(
                now in any_time(),
                hour in proptest::option::of(1u32..1000),
                minute in proptest::option::of(1u32..100),
            ) {
                let limits = Limits::new(Some(2_500), hour, minute, 3).unwrap();
                let until = limits.windows_end(now);
                prop_assert!(until > now && until <= WindowKind::Day.end(now));
                for (kind, _) in limits.windows() {
                    prop_assert!(until <= kind.end(now));
                }
            }

            /// `explain_denial` refuses exactly when something refuses: a
            /// block not yet passed, a window without room for `cost`, or
            /// `max_concurrent` live leases; and it always says to come back
            /// later than now.
            #[test]
            fn denials_are_explained_exactly(
                now in any_time(),
                per_day in 1u32..200,
                per_hour in proptest::option::of(1u32..50),
                max_concurrent in 1u32..5,
                cost in 1u32..10,
                used_day in 0u64..250,
                used_hour in 0u64..60,
                lease_offsets in proptest::collection::vec(-120i64..120, 0..6),
                blocked_offset in proptest::option::of(-600i64..600),
            ) {
                let limits = Limits::new(Some(per_day), per_hour, None, max_concurrent).unwrap();
                let (day, hourw) = (WindowKind::Day.id(now), WindowKind::Hour.id(now));
                let used = |id: &str| if id == day { used_day } else if id == hourw { used_hour } else { 0 };
                let leases: Vec<Timestamp> =
                    lease_offsets.iter().map(|s| now + Duration::seconds(*s)).collect();
                let blocked = blocked_offset.map(|s| now + Duration::seconds(s));
                let denial = explain_denial(&limits, cost, now, used, &leases, blocked);
                let live = leases.iter().filter(|e| **e > now).count();
                let refuses = blocked.is_some_and(|b| b > now)
                    || used_day + u64::from(cost) > u64::from(per_day)
                    || per_hour.is_some_and(|h| used_hour + u64::from(cost) > u64::from(h))
                    || live >= max_concurrent as usize;
                prop_assert_eq!(denial.is_some(), refuses);
                if let Some(d) = denial {
                    prop_assert!(d.retry_at > now, "{:?}", d);
                    if let DenyReason::Window { window, .. } = d.reason {
                        prop_assert_eq!(d.retry_at, window.end(now));
                    }
                }
            }
        }
    }

    #[test]
    fn the_fullest_window_comes_first() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 14, 30, 0)
            .unwrap();
        let limits = Limits::new(Some(2_500), Some(500), Some(30), 3).unwrap();
        let mut state = QuotaState::default();
        state.used.insert(WindowKind::Day.id(t), 2_000);
        state.used.insert(WindowKind::Minute.id(t), 12);
        let fill = limits.fill(&state, t);
        let order: Vec<_> = fill.iter().map(|f| (f.kind, f.used)).collect();
        assert_eq!(
            order,
            vec![
                (WindowKind::Day, 2_000),
                (WindowKind::Minute, 12),
                (WindowKind::Hour, 0)
            ]
        );
        assert!((fill[0].share() - 0.8).abs() < 1e-9);
    }

    #[test]
    fn a_window_ends_as_its_id_says() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 14, 30, 59)
            .unwrap();
        for kind in [WindowKind::Day, WindowKind::Hour, WindowKind::Minute] {
            assert_eq!(WindowKind::end_of(&kind.id(t)), Some(kind.end(t)), "{kind}");
            assert!(!window_ended(&kind.id(t), t));
            // Kept a clock skew past its end, then dropped.
            assert!(!window_ended(&kind.id(t), kind.end(t)));
            assert!(window_ended(
                &kind.id(t),
                kind.end(t) + CLOCK_SKEW_ALLOWANCE
            ));
        }
        assert_eq!(WindowKind::end_of("x2026"), None);
        assert!(!window_ended("unknown", t), "ids no kind writes are kept");
        // A window that begins after `now` (a stale now) has not ended.
        let next = WindowKind::Minute.id(t + Duration::seconds(2));
        assert!(!window_ended(&next, t));
    }

    #[test]
    fn window_ids_and_ends() {
        let now = at(14, 23, 5);
        assert_eq!(WindowKind::Day.id(now), "d2026-11-22");
        assert_eq!(WindowKind::Hour.id(now), "h2026-11-22T14");
        assert_eq!(WindowKind::Minute.id(now), "m2026-11-22T14:23");
        assert_eq!(
            WindowKind::Day.end(now),
            chrono::Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
        );
        assert_eq!(WindowKind::Hour.end(now), at(15, 0, 0));
        assert_eq!(WindowKind::Minute.end(now), at(14, 24, 0));
    }

    #[test]
    fn zero_limits_are_config_errors() {
        assert!(Limits::new(Some(0), None, None, 3).is_err());
        assert!(Limits::new(Some(10), None, None, 0).is_err());
        assert!(Limits::new(None, None, None, 3).is_err());
        let l = Limits::new(Some(10), Some(5), None, 3).unwrap();
        assert!(matches!(l.check_cost(6), Err(Error::Impossible(_))));
        assert!(l.check_cost(5).is_ok());
    }

    #[test]
    fn denial_names_the_latest_constraint() {
        let limits = Limits::new(Some(100), Some(10), None, 3).unwrap();
        let now = at(14, 23, 5);
        let day = WindowKind::Day.id(now);
        let used = |id: &str| if id == day { 100 } else { 10 };
        let d = explain_denial(&limits, 1, now, used, &[], None).unwrap();
        assert_eq!(d.retry_at, WindowKind::Day.end(now));
        assert!(matches!(
            d.reason,
            DenyReason::Window {
                window: WindowKind::Day,
                ..
            }
        ));
        // Concurrency only: come back at the earliest expiry or the hint.
        let leases = [now + Duration::seconds(30); 3];
        let d = explain_denial(&limits, 1, now, |_| 0, &leases, None).unwrap();
        assert_eq!(d.retry_at, now + Duration::seconds(1));
        // Expired leases do not count.
        let expired = [now - Duration::seconds(1); 3];
        assert!(explain_denial(&limits, 1, now, |_| 0, &expired, None).is_none());
    }
}
