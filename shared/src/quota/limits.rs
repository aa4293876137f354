//! What a budget allows: the windows ([`WindowKind`]: fixed, aligned or
//! rolling, of any length), the concurrency cap, buckets, the app's own
//! level and the shares; validated when the config loads.

use super::bucket::{Bucket, BucketLimit};
use super::share::{self, Part, Share, SHARE_KINDS};
use super::window::{Span, WindowLimit};

use crate::core::clock::Timestamp;
use crate::core::error::{Error, Result};
use chrono::{Duration, DurationRound};
use serde::{Deserialize, Serialize};
use std::fmt;

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
    pub(crate) fn counted_ids(self, now: Timestamp) -> Vec<String> {
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
    pub(crate) fn counter_for(self, spent: u64, at: Timestamp) -> u64 {
        match self {
            WindowKind::Bucket(bucket) => bucket.counter_for(spent, at),
            _ => spent,
        }
    }

    /// Calls a counter difference of `delta` stands for (the inverse of
    /// [`Self::refund`]).
    pub(crate) fn calls_in(self, delta: u64) -> u64 {
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
    pub(crate) fn is_rolling(self) -> bool {
        matches!(self, WindowKind::Span(Span { rolling: true, .. }))
    }

    /// Whether the store can check the window with one condition on one
    /// counter: not for a rolling span (a sum of buckets) nor a token
    /// bucket (a `max` with the clock), which are judged on a read and
    /// written under a version check.
    pub(crate) fn needs_read(self) -> bool {
        self.is_rolling() || matches!(self, WindowKind::Bucket(_))
    }

    /// When the window with identifier `id` ([`WindowKind::id`]) ends;
    /// `None` for an identifier no kind writes.
    pub(crate) fn end_of(id: &str) -> Option<Timestamp> {
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
pub(crate) fn window_ended(id: &str, now: Timestamp) -> bool {
    WindowKind::end_of(id).is_some_and(|end| end + CLOCK_SKEW_ALLOWANCE <= now)
}

/// How far apart the clocks of the processes sharing a budget may be for
/// pruning to stay safe (see [`window_ended`]).
pub(crate) const CLOCK_SKEW_ALLOWANCE: Duration = Duration::seconds(60);

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
    /// How full background work (scheduled complete transfers, bulk runs
    /// and their actions) may fill each counting window and the
    /// concurrency slots of every level it takes, in percent; the rest is
    /// held for interactive work (see [`Limits::for_background`]). 100:
    /// first come, first served.
    #[serde(
        default = "default_background_percent",
        skip_serializing_if = "is_default_background_percent"
    )]
    pub background_percent: u8,
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

fn default_background_percent() -> u8 {
    100
}
fn is_default_background_percent(p: &u8) -> bool {
    *p == default_background_percent()
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
            background_percent: default_background_percent(),
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
        self.validate_shares()?;
        self.validate_background()
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
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) fn needs_read(&self) -> bool {
        self.windows().any(|(kind, _)| kind.needs_read())
    }

    /// When the first window that applies at `now` ends: the end of what a
    /// grant made at `now` may be spent in.
    pub(crate) fn windows_end(&self, now: Timestamp) -> Timestamp {
        self.windows()
            .map(|(kind, _)| kind.end(now))
            .min()
            .unwrap_or(now)
    }

    /// How long a concurrency lease lives unless renewed.
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::seconds(i64::from(self.lease_ttl_secs))
    }

    /// Rejects a cost that no window could ever hold: it would be denied
    /// forever and restart forever.
    pub(crate) fn check_cost(&self, cost: u32) -> Result<()> {
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

/// The budgets of shares (`[app.limits.shares]`; the rules are in
/// [`share`]): each part is these limits scaled.
impl Limits {
    /// Whether shares are configured (the org's budget alone otherwise).
    pub fn has_shares(&self) -> bool {
        !self.shares.is_empty()
    }

    /// The limits of `part` of `kind`'s share: each counting window scaled
    /// as the module says, no bucket, no concurrency cap of its own (the
    /// org's holds). None when the part does not exist (no reserve, no cap).
    pub(crate) fn share_part(&self, part: Part, kind: &str) -> Option<Limits> {
        let share = self.shares.get(kind).copied();
        let reserve = |l: u32, s: Option<Share>| {
            (u64::from(l) * u64::from(s.map_or(0, |s| s.reserve_percent)) / 100) as u32
        };
        let scale: Box<dyn Fn(u32) -> u32> = match part {
            Part::Reserve => {
                share.filter(|s| s.reserve_percent > 0)?;
                Box::new(move |l| reserve(l, share))
            }
            Part::Pool => {
                let shares: Vec<Share> = self.shares.values().copied().collect();
                Box::new(move |l| {
                    l - shares
                        .iter()
                        .map(|s| reserve(l, Some(*s)))
                        .sum::<u32>()
                        .min(l)
                })
            }
            Part::Cap => {
                share.filter(|s| s.cap_percent < 100)?;
                Box::new(move |l| {
                    let cap = (u64::from(l) * u64::from(share.map_or(100, |s| s.cap_percent)) / 100)
                        as u32;
                    cap.saturating_sub(reserve(l, share))
                })
            }
        };
        Some(Limits {
            per_day: self.per_day.map(&scale),
            per_hour: self.per_hour.map(&scale),
            per_minute: self.per_minute.map(&scale),
            windows: self
                .windows
                .iter()
                .map(|w| super::WindowLimit {
                    calls: scale(w.calls),
                    ..w.clone()
                })
                .collect(),
            buckets: Vec::new(),
            app_wide: None,
            shares: Default::default(),
            background_percent: default_background_percent(),
            max_concurrent: u32::MAX,
            lease_ttl_secs: self.lease_ttl_secs,
            concurrency_retry_secs: self.concurrency_retry_secs,
        })
    }

    /// Refuses shares that could not work: an unknown kind, a reserve above
    /// the cap, reserves that leave nothing to the others, and a part that
    /// rounds to nothing in some window (a reserve of 20% of a minute of 3).
    pub(crate) fn validate_shares(&self) -> Result<()> {
        if self.shares.is_empty() {
            return Ok(());
        }
        let bad = |m: String| Err(Error::Config(format!("limits.shares: {m}")));
        let mut total = 0u32;
        for (kind, s) in &self.shares {
            if !SHARE_KINDS.contains(&kind.as_str()) {
                return bad(format!(
                    "`{kind}` is not a source kind; give one of {}",
                    SHARE_KINDS.join(", ")
                ));
            }
            if s.cap_percent == 0 || s.cap_percent > 100 || s.reserve_percent > s.cap_percent {
                return bad(format!(
                    "{kind}: reserve_percent = {} and cap_percent = {}; the cap is 1..=100 and at least the reserve",
                    s.reserve_percent, s.cap_percent
                ));
            }
            total += u32::from(s.reserve_percent);
        }
        if total >= 100 {
            return bad(format!(
                "the reserves add up to {total}%, leaving nothing that is not reserved; keep them under 100%"
            ));
        }
        let counting: Vec<(super::WindowKind, u32)> = self
            .windows()
            .filter(|(k, _)| !matches!(k, super::WindowKind::Bucket(_)))
            .collect();
        if counting.is_empty() {
            return bad(
                "shares split counting windows (per_day, per_hour, per_minute, windows); these limits have only buckets".into(),
            );
        }
        for kind in self.shares.keys() {
            for part in [Part::Reserve, Part::Pool, Part::Cap] {
                let Some(limits) = self.share_part(part, kind) else {
                    continue;
                };
                for ((window, limit), (_, scaled)) in counting.iter().zip(limits.windows()) {
                    if scaled == 0 {
                        let what = match part {
                            Part::Reserve => "its reserve",
                            Part::Pool => "the part no kind reserved",
                            Part::Cap => "what its cap leaves beyond its reserve",
                        };
                        return bad(format!(
                            "{kind}: {what} is 0 calls of the {window} limit of {limit}; raise the percentages or drop this share"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
