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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Limits;

    fn limits(toml_text: &str) -> Limits {
        let l: Limits = toml::from_str(toml_text).unwrap();
        l
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
