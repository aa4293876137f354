//! Shares of a budget per source kind (`[app.limits.shares]`): a reserved
//! part of every window that only that kind may spend, and a cap on what
//! the kind may spend in all, so a lookup storm or a bulk execution cannot
//! starve the workflow actions a customer is waiting for.
//!
//! A share is held as budgets of its own beside the org's, each the org's
//! windows scaled, acquired with the same atomic store operation as any
//! budget (the rule is the store's, written once):
//!
//! - **reserve** of kind k: `⌊L·r_k⌋` per window of limit L;
//! - **pool**, what no kind reserved: `L − Σ⌊L·r_j⌋`;
//! - **cap** of kind k, what k may take from the pool: `⌊L·c_k⌋ − ⌊L·r_k⌋`.
//!
//! A call of kind k takes the org's budget (total, concurrency, blocks)
//! and then its reserve, or else the pool and its cap. Every other kind's
//! spending is at most its reserve plus the pool, so k's reserve is always
//! there for k: `Σ_{j≠k}(⌊L·r_j⌋ + pool_j) ≤ L − ⌊L·r_k⌋`, while the org's
//! budget still holds the total. Near the end of a fixed window, when the
//! pool or the cap refuses, a kind borrows another kind's unspent reserve
//! (the reserve would lapse unused at the window's end otherwise).
//!
//! Token buckets are not shared (their level is not a count to split);
//! the org's bucket still holds every call.

use super::key::QuotaKey;
use super::limits::{Limits, WindowKind};
use super::port::{Denied, DenyReason};
use crate::core::clock::Timestamp;
use serde::{Deserialize, Serialize};

/// The source kinds a share can be given to: the part of a call's source
/// before `:` (`pk-lookup:customers` is of kind `pk-lookup`). Workflow
/// actions are `workflow`; ad-hoc and bulk runs spend as the kind they run.
pub(crate) const SHARE_KINDS: [&str; 5] = [
    "complete-transfer",
    "recent-records",
    "pk-lookup",
    "workflow",
    "datasource",
];

/// One kind's share, in percent of each counting window of the org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// Held for this kind alone (0: none).
    #[serde(default)]
    pub reserve_percent: u8,
    /// The most this kind may spend, reserve included (100: no cap).
    #[serde(default = "hundred")]
    pub cap_percent: u8,
}

fn hundred() -> u8 {
    100
}

/// The kind a call's source spends as.
pub fn kind_of(source: &str) -> &str {
    source.split(':').next().unwrap_or(source)
}

/// Reserves are lent in the last 1/`LEND_IN_LAST` of a fixed window (the
/// last 6 minutes of an hour, the last 2.4 hours of a day).
pub(crate) const LEND_IN_LAST: i64 = 10;

/// The part of the org name that marks a share's budget; connections may
/// not use it.
pub(crate) const SHARE_MARK: &str = "~share~";

/// Which of a kind's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Reserve,
    Pool,
    Cap,
}

/// The budget of `part` (of `kind`; the pool is every kind's) under `key`.
pub(crate) fn share_key(key: &QuotaKey, part: Part, kind: &str) -> QuotaKey {
    let org = match part {
        Part::Reserve => format!("{}{SHARE_MARK}reserve:{kind}", key.org),
        Part::Pool => format!("{}{SHARE_MARK}pool", key.org),
        Part::Cap => format!("{}{SHARE_MARK}cap:{kind}", key.org),
    };
    QuotaKey::new(org, &key.app)
}

/// A refusal by a kind's part, said as the share's: "the `pk-lookup`
/// share's cap of the day is spent", not "day limit reached" as if the
/// org's own day were spent. Other reasons pass unchanged.
pub(crate) fn named(d: Denied, kind: &str, part: &str) -> Denied {
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
}

/// Whether a refusal by the pool comes late enough in a fixed window that
/// another kind's unspent reserve, which would lapse at the window's end,
/// is lent: the window's last 1/[`LEND_IN_LAST`].
pub(crate) fn lends(d: &Denied, now: Timestamp) -> bool {
    match &d.reason {
        DenyReason::Window { window, .. } if !window.needs_read() => {
            let left = (d.retry_at - now).num_seconds();
            left <= i64::from(window.secs()) / LEND_IN_LAST
        }
        _ => false,
    }
}

/// The refusal of a call costing more than `part` could ever hold (a block
/// reserved for the org's windows): as by the part's tightest window, so a
/// reservation asks again for what the part holds.
pub(crate) fn beyond(part: &Limits, now: Timestamp) -> Denied {
    let (window, limit) = part
        .windows()
        .min_by_key(|(_, limit)| *limit)
        .unwrap_or((WindowKind::Day, 0));
    Denied {
        retry_at: window.end(now),
        reason: DenyReason::Window {
            window,
            limit,
            used: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Limits;

    fn limits(toml_text: &str) -> Limits {
        let l: Limits = toml::from_str(toml_text).unwrap();
        l
    }

    fn day_refusal(retry_at: Timestamp) -> Denied {
        Denied {
            retry_at,
            reason: DenyReason::Window {
                window: WindowKind::Day,
                limit: 50,
                used: 50,
            },
        }
    }

    #[test]
    fn a_refusal_by_a_part_is_named_for_its_share() {
        let midnight = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z")
            .unwrap()
            .to_utc();
        let d = named(day_refusal(midnight), "pk-lookup", "cap");
        assert_eq!(d.retry_at, midnight);
        assert!(
            d.reason
                .to_string()
                .contains("`pk-lookup` share's cap of the day is spent (50 of 50)"),
            "{}",
            d.reason
        );
        let other = Denied {
            retry_at: midnight,
            reason: DenyReason::Concurrency { max: 3 },
        };
        assert_eq!(named(other.clone(), "workflow", "cap"), other);
    }

    #[test]
    fn reserves_are_lent_only_in_a_fixed_windows_last_tenth() {
        let at = |hms: &str| {
            chrono::DateTime::parse_from_rfc3339(&format!("2026-12-05T{hms}Z"))
                .unwrap()
                .to_utc()
        };
        let midnight = at("00:00:00") + chrono::Duration::days(1);
        // A day's last tenth is its last 2 h 24 min: from 21:36.
        assert!(!lends(&day_refusal(midnight), at("21:35:59")));
        assert!(lends(&day_refusal(midnight), at("21:36:00")));
        let slot = Denied {
            retry_at: midnight,
            reason: DenyReason::Concurrency { max: 3 },
        };
        assert!(!lends(&slot, at("23:59:00")), "a slot is not a window");
    }

    #[test]
    fn a_cost_beyond_a_part_is_refused_by_its_tightest_window() {
        let l = limits("per_day = 1000\nper_minute = 20\nmax_concurrent = 3");
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:30Z")
            .unwrap()
            .to_utc();
        let d = beyond(&l, now);
        assert!(
            matches!(
                d.reason,
                DenyReason::Window {
                    window: WindowKind::Minute,
                    limit: 20,
                    used: 0
                }
            ),
            "{d:?}"
        );
        assert_eq!(d.retry_at, now + chrono::Duration::seconds(30));
    }

    #[test]
    fn each_part_scales_every_counting_window() {
        let l = limits(
            r#"
per_day = 1000
per_minute = 20
max_concurrent = 3
[shares]
workflow = { reserve_percent = 30 }
pk-lookup = { reserve_percent = 10, cap_percent = 40 }
"#,
        );
        l.validate().unwrap();
        let get = |p: Part, k: &str| {
            l.share_part(p, k)
                .map(|l| l.windows().map(|(_, n)| n).collect::<Vec<_>>())
        };
        assert_eq!(get(Part::Reserve, "workflow"), Some(vec![300, 6]));
        assert_eq!(get(Part::Reserve, "pk-lookup"), Some(vec![100, 2]));
        assert_eq!(get(Part::Reserve, "complete-transfer"), None);
        assert_eq!(get(Part::Pool, "anything"), Some(vec![600, 12]));
        assert_eq!(get(Part::Cap, "pk-lookup"), Some(vec![300, 6]));
        assert_eq!(get(Part::Cap, "workflow"), None, "no cap");
        // Every kind but k spends at most its reserve plus the pool, so k's
        // reserve stays: 100 + 600 ≤ 1000 − 300 (the storm test proves it
        // under racing tasks).
    }

    #[test]
    fn shares_that_could_not_work_are_refused() {
        let err = |shares: &str| {
            limits(&format!(
                "per_day = 1000\nper_minute = 3\nmax_concurrent = 3\n[shares]\n{shares}"
            ))
            .validate()
            .unwrap_err()
            .to_string()
        };
        assert!(err("lookups = { reserve_percent = 10 }").contains("not a source kind"));
        assert!(err("workflow = { reserve_percent = 50, cap_percent = 40 }")
            .contains("at least the reserve"));
        assert!(
            err("workflow = { reserve_percent = 60 }\npk-lookup = { reserve_percent = 40 }")
                .contains("add up to 100%")
        );
        let e = err("workflow = { reserve_percent = 20 }");
        assert!(
            e.contains("its reserve is 0 calls of the minute limit of 3"),
            "{e}"
        );
        let only_buckets = "max_concurrent = 3\nbuckets = [{ capacity = 40, refill = 2 }]\n";
        limits(only_buckets).validate().unwrap();
        let e = limits(&format!(
            "{only_buckets}[shares]\nworkflow = {{ reserve_percent = 10 }}"
        ))
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("only buckets"), "{e}");
        assert_eq!(kind_of("pk-lookup:customers"), "pk-lookup");
        assert_eq!(kind_of("workflow"), "workflow");
    }
}
