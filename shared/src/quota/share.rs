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

use super::{Limits, QuotaKey};
use crate::core::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The source kinds a share can be given to: the part of a call's source
/// before `:` (`pk-lookup:customers` is of kind `pk-lookup`). Workflow
/// actions are `workflow`; ad-hoc and bulk runs spend as the kind they run.
pub const SHARE_KINDS: [&str; 5] = [
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
pub const LEND_IN_LAST: i64 = 10;

/// The part of the org name that marks a share's budget; connections may
/// not use it.
pub const SHARE_MARK: &str = "~share~";

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

#[cfg(test)]
mod tests {
    use super::*;

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
