//! Priority inside a budget: interactive work before background work
//! (`background_percent` in `[app.limits]`).
//!
//! Background work is what nobody waits for at the moment: a scheduled
//! complete transfer, a bulk run over every stored record and the actions
//! it fans out. Everything else (recent-record syncs, lookups, the
//! actions a changed record triggered, Data Source pushes, ad-hoc syncs a
//! user asked for, a manual run on named records) is interactive.
//!
//! The rule is a lower ceiling on the same counters: a background call
//! sees each counting window of every level it takes (the org's, the
//! app's, and through them its share's parts) at `background_percent` of
//! its limit, and the concurrency cap likewise (at least one slot). An
//! interactive call sees the whole. So background work can fill a window
//! only so far, and what is left above is there for the interactive work
//! that arrives later: no queue to order, no store request more, and a
//! share's reserve keeps its meaning (priority acts inside it).
//!
//! The held part is lent back in the last tenth of a fixed window
//! ([`share::LEND_IN_LAST`]), when interactive work that has not come
//! would leave it unspent at the window's end. A rolling window never
//! ends, so it is never lent. A call costing more than the ceiling (a
//! reservation in a tight window) may still fill the window to its cost:
//! it must fit some time, or it would wait for ever.
//!
//! Token buckets are not scaled: a bucket's counter is named by its
//! capacity, and it refills within seconds.

use super::limits::{Limits, WindowKind};
use super::port::{Denied, DenyReason};
use super::share;
use crate::core::clock::Timestamp;
use crate::core::error::{Error, Result};

/// When capacity returns for a background call refused by a held-back
/// fixed window: the moment the held part is lent (the window's last
/// tenth), not the window's end, unless the window is full at its written
/// limit too (the limit as written is estimated from the held one, so a
/// misjudged case costs one early wake-up, never a call over).
pub(crate) fn lent_at(percent: u8, denied: &mut Denied, cost: u32, now: Timestamp) {
    let (window, limit, used) = match &denied.reason {
        DenyReason::Window {
            window,
            limit,
            used,
        }
        | DenyReason::Share {
            window,
            limit,
            used,
            ..
        }
        | DenyReason::AppWide {
            window,
            limit,
            used,
        } => (*window, *limit, *used),
        _ => return,
    };
    if percent >= 100 || window.needs_read() {
        return;
    }
    let written = u64::from(limit) * 100 / u64::from(percent.max(1));
    if used + u64::from(cost) > written {
        return;
    }
    let lent_from =
        denied.retry_at - chrono::Duration::seconds(i64::from(window.secs()) / share::LEND_IN_LAST);
    if lent_from > now {
        denied.retry_at = lent_from;
    }
}

impl Limits {
    /// The limits a background call of `cost` is held to at `now` (the
    /// same limits when `background_percent` is 100).
    pub(crate) fn for_background(&self, now: Timestamp, cost: u32) -> Limits {
        self.held_back(self.background_percent, Some(now), cost)
    }

    fn held_back(&self, percent: u8, now: Option<Timestamp>, cost: u32) -> Limits {
        let mut l = self.clone();
        if percent >= 100 {
            return l;
        }
        let scale = |kind: WindowKind, limit: u32| -> u32 {
            let lent = now.is_some_and(|now| {
                !kind.needs_read()
                    && (kind.end(now) - now).num_seconds()
                        <= i64::from(kind.secs()) / share::LEND_IN_LAST
            });
            if lent {
                return limit;
            }
            let held = (u64::from(limit) * u64::from(percent) / 100) as u32;
            held.max(cost.min(limit)).max(1)
        };
        l.per_day = l.per_day.map(|n| scale(WindowKind::Day, n));
        l.per_hour = l.per_hour.map(|n| scale(WindowKind::Hour, n));
        l.per_minute = l.per_minute.map(|n| scale(WindowKind::Minute, n));
        for w in &mut l.windows {
            if let Ok(span) = w.span() {
                w.calls = scale(WindowKind::Span(span), w.calls);
            }
        }
        l.max_concurrent = ((u64::from(l.max_concurrent) * u64::from(percent) / 100) as u32).max(1);
        l.app_wide = l
            .app_wide
            .take()
            .map(|app| Box::new(app.held_back(percent, now, cost)));
        l
    }

    /// Refuses a percentage outside 1..=100, and shares that the held-back
    /// windows would round to nothing for background work.
    pub(crate) fn validate_background(&self) -> Result<()> {
        let p = self.background_percent;
        if p == 0 || p > 100 {
            return Err(Error::Config(format!(
                "limits.background_percent = {p}; give 1..=100 (100: no priority)"
            )));
        }
        if p == 100 {
            return Ok(());
        }
        self.held_back(p, None, 1).validate_shares().map_err(|e| {
            Error::Config(format!(
                "with limits.background_percent = {p}, background work's {}",
                e.to_string().trim_start_matches("configuration error: ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn limits(text: &str) -> Limits {
        let l: Limits = toml::from_str(text).unwrap();
        l.validate().unwrap();
        l
    }

    fn counting(l: &Limits) -> Vec<u32> {
        l.windows().map(|(_, n)| n).collect()
    }

    /// A day, a minute and a rolling hour, 3 slots, background at 80%.
    const WINDOWS: &str = r#"
per_day = 1000
per_minute = 20
max_concurrent = 3
background_percent = 80
windows = [{ calls = 100, every = "1h", rolling = true }]
"#;

    #[test]
    fn background_sees_every_window_and_level_held_back() {
        let l = limits(&format!(
            "{WINDOWS}app_wide = {{ per_minute = 50, max_concurrent = 10 }}\n"
        ));
        let mid_day = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 10).unwrap();
        let b = l.for_background(mid_day, 1);
        assert_eq!(counting(&b), vec![800, 16, 80]);
        assert_eq!(b.max_concurrent, 2);
        let app = b.app_wide.as_deref().unwrap();
        assert_eq!(counting(app), vec![40]);
        assert_eq!(app.max_concurrent, 8);
        // Interactive work is held to the limits as written.
        assert_eq!(counting(&l), vec![1000, 20, 100]);
    }

    /// A background refusal mid-day wakes when the held part is lent;
    /// one from a day full at its written limit waits for the day's end.
    #[test]
    fn a_held_back_refusal_wakes_when_the_held_part_is_lent() {
        let noon = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let midnight = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
        let refused = |used| Denied {
            retry_at: midnight,
            reason: DenyReason::Window {
                window: WindowKind::Day,
                limit: 80,
                used,
            },
        };
        let mut held = refused(80);
        lent_at(80, &mut held, 1, noon);
        assert_eq!(
            held.retry_at,
            Utc.with_ymd_and_hms(2026, 12, 6, 21, 36, 0).unwrap()
        );
        let mut full = refused(100);
        lent_at(80, &mut full, 1, noon);
        assert_eq!(full.retry_at, midnight, "nothing will be lent");
        let mut late = refused(80);
        lent_at(
            80,
            &mut late,
            1,
            Utc.with_ymd_and_hms(2026, 12, 6, 22, 0, 0).unwrap(),
        );
        assert_eq!(late.retry_at, midnight, "already lent, and spent");
        let mut interactive = refused(80);
        lent_at(100, &mut interactive, 1, noon);
        assert_eq!(interactive.retry_at, midnight);
    }

    #[test]
    fn the_held_part_is_lent_in_a_fixed_windows_last_tenth_only() {
        let l = limits(WINDOWS);
        // 55 s into a minute: the minute's last tenth (6 s), not the day's.
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 55).unwrap();
        assert_eq!(counting(&l.for_background(t, 1)), vec![800, 20, 80]);
        // 22:00 is inside the day's last 2.4 hours; a rolling hour is never lent.
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 22, 0, 10).unwrap();
        assert_eq!(counting(&l.for_background(t, 1)), vec![1000, 16, 80]);
    }

    #[test]
    fn a_call_dearer_than_the_ceiling_still_fits_some_time() {
        let l = limits("per_minute = 3\nmax_concurrent = 1\nbackground_percent = 50\n");
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 10).unwrap();
        assert_eq!(counting(&l.for_background(t, 1)), vec![1]);
        assert_eq!(counting(&l.for_background(t, 3)), vec![3]);
        assert_eq!(l.for_background(t, 1).max_concurrent, 1);
        let same = limits("per_minute = 3\nmax_concurrent = 3\n");
        assert_eq!(same.for_background(t, 1), same, "100%: no priority");
    }

    #[test]
    fn percentages_that_could_not_work_are_refused() {
        let err = |text: &str| {
            toml::from_str::<Limits>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = err("per_minute = 10\nmax_concurrent = 1\nbackground_percent = 0\n");
        assert!(e.contains("background_percent = 0; give 1..=100"), "{e}");
        let e = err("per_minute = 10\nmax_concurrent = 1\nbackground_percent = 101\n");
        assert!(e.contains("give 1..=100"), "{e}");
        // A reserve of 10% of 10 is 1 call; of the 5 background work sees, 0.
        let e = err(
            "per_minute = 10\nmax_concurrent = 1\nbackground_percent = 50\n[shares]\nworkflow = { reserve_percent = 10 }\n",
        );
        assert!(
            e.contains("background_percent = 50, background work's"),
            "{e}"
        );
        assert!(e.contains("workflow: its reserve is 0 calls"), "{e}");
    }
}
