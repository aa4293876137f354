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

pub(crate) mod bucket;
mod facade;
pub(crate) mod health;
mod key;
mod limits;
mod port;
mod priority;
mod rules;
pub mod share;
mod usage;
pub(crate) mod wave;
pub(crate) mod window;

pub use bucket::{Bucket, BucketLimit};
pub use facade::{Admission, Call, Permit, Quota};
pub use health::{Health, PausePolicy};
pub use key::QuotaKey;
pub(crate) use key::APP_LEVEL_ORG;
pub(crate) use limits::window_ended;
pub use limits::{Limits, WindowKind};
pub(crate) use port::TakenWindow;
pub use port::{Acquire, Denied, DenyReason, Grant, QuotaStore};
pub(crate) use rules::explain_denial;
pub use usage::{HourUse, QuotaState, UsageEntry, WindowFill, SPENT_ELSEWHERE};
pub use window::WindowLimit;

#[cfg(test)]
mod tests {
    use super::limits::CLOCK_SKEW_ALLOWANCE;
    use super::window::{Align, Span};
    use super::*;
    use crate::core::clock::Timestamp;
    use crate::core::error::Error;
    use chrono::TimeZone;
    use chrono::{Duration, DurationRound};

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
