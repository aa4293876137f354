//! Wake-ups in waves (#30): jobs refused by a window come back in turns
//! the window can take, not all at its end.
//!
//! Without this every job refused during a window restarts when it ends
//! (plus a few seconds of jitter); the window admits `L` of them and
//! refuses the rest again, so a backlog of `N` wakes about `N/L` times per
//! job, each wake-up a Lambda invocation and a store write. Here a refused
//! job takes a **wake slot** in the first window after the refusing one
//! that still has one: each window after `T` (the refusing window's end)
//! hands out `L` slots, counted per window in a budget of its own
//! (`{org}~share~wake#{n}`, [`turn_key`]) with the store's one atomic
//! acquire, asked for at the future window's time. A job takes as many
//! slots as the calls it says it still needs (`Call::needing`; one when
//! it does not say), at most `L`. Its turn's first slot `n` wakes it
//! `n × spacing` after that window starts, where `spacing` is the tightest
//! shorter window's pace (the first minute after a daily reset never wakes
//! more jobs than the minute holds); with no shorter window, all at its
//! start.
//!
//! A wave is a turn, not a grant: a woken job still acquires, and one that
//! needed more calls than it said can leave a later turn short, which then
//! waits again. Token buckets keep their exact `retry_at` (the moment one
//! call fits); repeat refusals answered from a process's memory are spread
//! locally, each repeat's turn after the ones before it ([`repeat_at`]).

use super::key::QuotaKey;
use super::limits::{Limits, WindowKind};
use super::window::WindowLimit;
use crate::core::clock::Timestamp;
use chrono::Duration;

/// Most windows past the refusing one a slot is looked for in (each full
/// one costs a store request; the process remembers where the last slot
/// was found).
pub(crate) const MAX_WAVES: u32 = 64;

/// The budget counting wake slots of the windows of `kind` (of limit
/// `limit`): the same length and alignment, fixed (a rolling window's
/// turns are counted per window of its length).
pub(crate) fn slot_limits(kind: WindowKind, limit: u32) -> Option<Limits> {
    let mut l = Limits {
        per_day: None,
        per_hour: None,
        per_minute: None,
        windows: Vec::new(),
        buckets: Vec::new(),
        app_wide: None,
        shares: Default::default(),
        background_percent: 100,
        max_concurrent: u32::MAX,
        lease_ttl_secs: 60,
        concurrency_retry_secs: 1,
    };
    match kind {
        WindowKind::Day => l.per_day = Some(limit),
        WindowKind::Hour => l.per_hour = Some(limit),
        WindowKind::Minute => l.per_minute = Some(limit),
        WindowKind::Span(span) => l.windows.push(WindowLimit {
            calls: limit,
            every: std::time::Duration::from_secs(u64::from(span.secs)),
            align: span.align,
            rolling: false,
        }),
        WindowKind::Bucket(_) => return None,
    }
    Some(l)
}

/// Where the wake slots of the window starting at `start` (`len_secs`
/// long) are counted: one budget per window, cycling through
/// `MAX_WAVES + 1` of them. Not one budget for every window: a store
/// drops the windows that ended before the `now` it is asked at, and slots
/// are asked at a future window's time, so taking a slot two windows
/// ahead would erase the count of the window before it (found by
/// `tests/tests/waves.rs`: the twelfth 100-call job of a 500-a-day backlog
/// was sent back to the first day). A budget is used again `MAX_WAVES + 1`
/// windows later, when the count it holds has ended.
pub(crate) fn turn_key(slots: &QuotaKey, start: Timestamp, len_secs: i64) -> QuotaKey {
    let ordinal = start.timestamp().div_euclid(len_secs.max(1)) % i64::from(MAX_WAVES + 1);
    QuotaKey::new(format!("{}#{ordinal}", slots.org), &slots.app)
}

/// Milliseconds between wake-ups in one wave: the pace of the tightest
/// window of `limits` shorter than `len_secs` (a bucket's refill counts),
/// None when there is none.
pub(crate) fn spacing_ms(limits: &Limits, len_secs: u32) -> Option<i64> {
    limits
        .windows()
        .filter(|(k, _)| k.secs() < len_secs)
        .map(|(k, limit)| i64::from(k.secs()) * 1_000 / i64::from(limit.max(1)))
        .max()
}

/// When slot `slot` (0-based) of the window starting at `start`, `len_secs`
/// long, wakes: spaced by `spacing_ms`, never past the window's end.
pub(crate) fn wake_at(
    start: Timestamp,
    len_secs: u32,
    slot: u64,
    spacing_ms: Option<i64>,
) -> Timestamp {
    let len_ms = i64::from(len_secs) * 1_000;
    let offset = spacing_ms.map_or(0, |s| {
        (i64::try_from(slot).unwrap_or(i64::MAX).saturating_mul(s)).min(len_ms - 1)
    });
    start + Duration::milliseconds(offset.max(0))
}

/// When the `repeats`-th refusal answered from a process's memory wakes,
/// the remembered one waking at `at`: `repeats` turns later, a turn being
/// `spacing_ms` apart, or, with no shorter window, the next window after
/// each `limit` of them (bucket refusals keep `at`). Local to the process:
/// another process's slots are not seen, so waves can overlap there.
pub(crate) fn repeat_at(
    at: Timestamp,
    window: WindowKind,
    limit: u32,
    repeats: u64,
    spacing_ms: Option<i64>,
) -> Timestamp {
    if matches!(window, WindowKind::Bucket(_)) {
        return at;
    }
    let repeats = i64::try_from(repeats).unwrap_or(i64::MAX);
    let ms = match spacing_ms {
        Some(s) => repeats.saturating_mul(s),
        None => {
            (repeats / i64::from(limit.max(1))).saturating_mul(i64::from(window.secs()) * 1_000)
        }
    };
    at + Duration::milliseconds(ms.min(i64::from(MAX_WAVES) * i64::from(window.secs()) * 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn slots_of_a_wave_are_paced_by_the_tightest_shorter_window() {
        let l: Limits = toml::from_str(
            "per_day = 2500\nper_minute = 60\nwindows = [{ calls = 10, every = \"5s\" }]\nmax_concurrent = 3",
        )
        .unwrap();
        // A minute of 60 paces at 1 s, 5 s of 10 at 0.5 s: the minute binds.
        assert_eq!(spacing_ms(&l, 86_400), Some(1_000));
        assert_eq!(spacing_ms(&l, 60), Some(500));
        assert_eq!(spacing_ms(&l, 5), None);
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap();
        assert_eq!(wake_at(t, 86_400, 0, Some(1_000)), t);
        assert_eq!(
            wake_at(t, 86_400, 59, Some(1_000)),
            t + Duration::seconds(59)
        );
        assert_eq!(
            wake_at(t, 60, 500, Some(1_000)),
            t + Duration::milliseconds(59_999)
        );
        assert_eq!(wake_at(t, 60, 7, None), t);
    }

    #[test]
    fn repeats_from_memory_take_later_turns() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap();
        assert_eq!(
            repeat_at(t, WindowKind::Day, 40, 3, Some(1_000)),
            t + Duration::seconds(3)
        );
        assert_eq!(repeat_at(t, WindowKind::Minute, 40, 39, None), t);
        assert_eq!(
            repeat_at(t, WindowKind::Minute, 40, 40, None),
            t + Duration::minutes(1)
        );
        assert_eq!(
            repeat_at(t, WindowKind::Minute, 1, u64::MAX, None),
            t + Duration::minutes(i64::from(MAX_WAVES)),
            "never past the last wave"
        );
    }

    #[test]
    fn slot_budgets_mirror_the_window() {
        let day = slot_limits(WindowKind::Day, 40).unwrap();
        assert_eq!(
            day.windows().collect::<Vec<_>>(),
            vec![(WindowKind::Day, 40)]
        );
        let rolling = super::super::window::Span {
            secs: 60,
            align: Default::default(),
            rolling: true,
        };
        let fixed = slot_limits(WindowKind::Span(rolling), 30).unwrap();
        let (kind, limit) = fixed.windows().next().unwrap();
        assert_eq!((kind.secs(), kind.is_rolling(), limit), (60, false, 30));
    }
}
