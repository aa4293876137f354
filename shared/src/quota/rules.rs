//! The quota's pure rules, shared by the adapters so both explain a
//! refusal the same way.

use super::limits::{Limits, WindowKind};
use super::port::{Denied, DenyReason};
use super::share::LEND_IN_LAST;

use crate::core::clock::Timestamp;
use chrono::Duration;

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

/// A window's refusal said as the level that made it (`say`), not "day
/// limit reached" as if the org's own day were spent. Other reasons pass
/// unchanged.
fn said_as(d: Denied, say: impl FnOnce(WindowKind, u32, u64) -> DenyReason) -> Denied {
    let reason = match d.reason {
        DenyReason::Window {
            window,
            limit,
            used,
        } => say(window, limit, used),
        other => other,
    };
    Denied {
        retry_at: d.retry_at,
        reason,
    }
}

/// A refusal by the app's own level: "the app's own day limit across all
/// its orgs is reached".
pub(crate) fn app_wide(d: Denied) -> Denied {
    said_as(d, |window, limit, used| DenyReason::AppWide {
        window,
        limit,
        used,
    })
}

/// A refusal by a kind's part (`part` of `kind`'s share): "the
/// `pk-lookup` share's cap of the day is spent".
pub(crate) fn named_for_share(d: Denied, kind: &str, part: &str) -> Denied {
    said_as(d, |window, limit, used| DenyReason::Share {
        source_kind: kind.to_string(),
        part: part.to_string(),
        window,
        limit,
        used,
    })
}

/// Whether a refusal by the pool comes late enough in a fixed window that
/// another kind's unspent reserve, which would lapse at the window's end,
/// is lent: the window's last 1/[`LEND_IN_LAST`].
pub(crate) fn lends_reserve(d: &Denied, now: Timestamp) -> bool {
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
pub(crate) fn beyond_part(part: &Limits, now: Timestamp) -> Denied {
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
    fn reserves_are_lent_only_in_a_fixed_windows_last_tenth() {
        let at = |hms: &str| {
            chrono::DateTime::parse_from_rfc3339(&format!("2026-12-05T{hms}Z"))
                .unwrap()
                .to_utc()
        };
        let midnight = at("00:00:00") + chrono::Duration::days(1);
        // A day's last tenth is its last 2 h 24 min: from 21:36.
        assert!(!lends_reserve(&day_refusal(midnight), at("21:35:59")));
        assert!(lends_reserve(&day_refusal(midnight), at("21:36:00")));
        let slot = Denied {
            retry_at: midnight,
            reason: DenyReason::Concurrency { max: 3 },
        };
        assert!(
            !lends_reserve(&slot, at("23:59:00")),
            "a slot is not a window"
        );
    }

    #[test]
    fn a_cost_beyond_a_part_is_refused_by_its_tightest_window() {
        let l: Limits =
            toml::from_str("per_day = 1000\nper_minute = 20\nmax_concurrent = 3").unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:30Z")
            .unwrap()
            .to_utc();
        let d = beyond_part(&l, now);
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
    fn a_refusal_is_said_as_the_level_that_made_it() {
        let midnight = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z")
            .unwrap()
            .to_utc();
        type Say = fn(Denied) -> Denied;
        let said: [(Say, &str); 2] = [
            (
                |d| named_for_share(d, "pk-lookup", "cap"),
                "`pk-lookup` share's cap of the day is spent (50 of 50)",
            ),
            (
                app_wide,
                "the app's own day limit across all its orgs is reached (50 of 50 used)",
            ),
        ];
        for (say, text) in said {
            let d = say(day_refusal(midnight));
            assert_eq!(d.retry_at, midnight);
            assert!(d.reason.to_string().contains(text), "{}", d.reason);
            let slot = Denied {
                retry_at: midnight,
                reason: DenyReason::Concurrency { max: 3 },
            };
            assert_eq!(say(slot.clone()), slot, "not a window's refusal: unchanged");
        }
    }
}
