//! The quota's pure rules, shared by the adapters so both explain a
//! refusal the same way.

use super::limits::Limits;
use super::port::{Denied, DenyReason};

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

/// A refusal by the app's own level, said as the app's: "the app's own day
/// limit across all its orgs is reached", not "day limit reached" as if the
/// org's own day were spent. Other reasons pass unchanged.
pub(crate) fn app_wide(d: Denied) -> Denied {
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
    Denied {
        retry_at: d.retry_at,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::WindowKind;

    #[test]
    fn a_refusal_by_the_app_level_names_the_app() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z")
            .unwrap()
            .to_utc();
        let d = app_wide(Denied {
            retry_at: at,
            reason: DenyReason::Window {
                window: WindowKind::Day,
                limit: 3,
                used: 3,
            },
        });
        assert_eq!(d.retry_at, at);
        assert!(
            d.reason
                .to_string()
                .contains("the app's own day limit across all its orgs is reached (3 of 3 used)"),
            "{}",
            d.reason
        );
        let slot = Denied {
            retry_at: at,
            reason: DenyReason::Concurrency { max: 9 },
        };
        assert_eq!(app_wide(slot.clone()), slot);
    }
}
