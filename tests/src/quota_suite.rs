//! The quota conformance suite: every [`QuotaStore`] adapter must pass it.
//! Time is a [`ManualClock`] passed in as `now`, so the suite runs the same
//! on DynamoDB Local as on SQLite.

use crate::afternoon;
use chrono::{Duration, TimeZone, Utc};
use metered::quota::{
    Acquire, DenyReason, Grant, Limits, QuotaKey, QuotaStore, UsageEntry, WindowKind,
};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// Every case of the suite, for one adapter: `quota_cases!(make())`. Both adapter
/// test files expand this one list, so no case can be missing from one.
#[macro_export]
macro_rules! quota_cases {
    ($make:expr) => {
        $crate::suite_tests!(
            $crate::quota_suite,
            $make,
            [
                day_window_fills_then_denies_until_midnight,
                every_window_must_fit,
                concurrency_cap_and_lease_expiry,
                release_is_idempotent,
                renew_extends_a_lease,
                block_until_denies_everyone,
                reservation_and_refund,
                usage_is_summed_per_source_and_hour,
                sixty_four_tasks_share_one_budget,
                the_apis_count_raises_a_window_never_lowers_it,
                a_grant_taken_a_moment_late_never_resets_the_window_that_began,
                connection_health_swaps_once_per_version_and_resume_lifts_the_block,
                a_ten_second_window_and_a_day_in_the_apis_time_zone,
                a_rolling_window_is_never_exceeded_in_any_trailing_interval,
                concurrent_tasks_never_overfill_a_rolling_window,
                an_app_wide_level_holds_every_org_together,
                a_token_bucket_takes_a_burst_then_its_refill_and_never_overflows,
                concurrent_tasks_never_overflow_a_token_bucket,
            ]
        );
    };
}

pub type Store = Arc<dyn QuotaStore>;

fn key() -> QuotaKey {
    QuotaKey::new(format!("org-{}", uuid::Uuid::new_v4().simple()), "crm#1")
}

fn granted(a: Acquire) -> Grant {
    match a {
        Acquire::Granted(g) => g,
        Acquire::Denied(d) => panic!("expected a grant, got {d:?}"),
    }
}

fn denied(a: Acquire) -> metered::quota::Denied {
    match a {
        Acquire::Denied(d) => d,
        Acquire::Granted(g) => panic!("expected a denial, got {g:?}"),
    }
}

/// An acquire's `now` is read before its round trip, so it can be a moment
/// old: one that still falls in the minute that ended must not drop the
/// counter of the minute that has begun (calls counted there would be
/// counted again: the seeded simulation saw 16 calls in a 15-a-minute
/// window). It may prune only windows that have ended at its `now`.
pub async fn a_grant_taken_a_moment_late_never_resets_the_window_that_began<
    F: Future<Output = Store>,
>(
    make: F,
) {
    let store = make.await;
    let k = key();
    let limits = Limits::new(Some(1_000), None, Some(2), 5).unwrap();
    let minute = Utc.with_ymd_and_hms(2026, 11, 22, 14, 31, 0).unwrap();
    let g = granted(
        store
            .acquire(&k, &limits, 1, minute + Duration::seconds(1))
            .await
            .unwrap(),
    );
    store.release(&g, 1).await.unwrap();
    // A moment late: its `now` still in 14:30.
    let late = granted(
        store
            .acquire(&k, &limits, 1, minute - Duration::seconds(1))
            .await
            .unwrap(),
    );
    store.release(&late, 0).await.unwrap();
    let g = granted(
        store
            .acquire(&k, &limits, 1, minute + Duration::seconds(2))
            .await
            .unwrap(),
    );
    store.release(&g, 1).await.unwrap();
    let d = denied(
        store
            .acquire(&k, &limits, 1, minute + Duration::seconds(3))
            .await
            .unwrap(),
    );
    assert_eq!(
        d.reason,
        DenyReason::Window {
            window: WindowKind::Minute,
            limit: 2,
            used: 2
        },
        "14:31 still counts both of its calls"
    );
}

pub async fn day_window_fills_then_denies_until_midnight<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(5), None, None, 3).unwrap();
    for _ in 0..5 {
        let g = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
        store.release(&g, 1).await.unwrap();
    }
    let d = denied(store.acquire(&k, &limits, 1, now).await.unwrap());
    assert_eq!(
        d.retry_at,
        Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
    );
    assert_eq!(
        d.reason,
        DenyReason::Window {
            window: WindowKind::Day,
            limit: 5,
            used: 5
        }
    );
    let state = store.state(&k, &limits, now).await.unwrap();
    assert_eq!(state.used.get("d2026-11-22"), Some(&5));
    assert_eq!(state.live_leases, 0);
    // The next UTC day has its own budget.
    let g = granted(store.acquire(&k, &limits, 1, d.retry_at).await.unwrap());
    store.release(&g, 1).await.unwrap();
    assert_eq!(
        store
            .state(&k, &limits, d.retry_at)
            .await
            .unwrap()
            .used
            .get("d2026-11-23"),
        Some(&1)
    );
}

pub async fn every_window_must_fit<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(100), Some(3), Some(2), 3).unwrap();
    for _ in 0..2 {
        let g = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
        store.release(&g, 1).await.unwrap();
    }
    let d = denied(store.acquire(&k, &limits, 1, now).await.unwrap());
    assert_eq!(d.retry_at, now + Duration::minutes(1));
    assert!(
        matches!(
            d.reason,
            DenyReason::Window {
                window: WindowKind::Minute,
                ..
            }
        ),
        "{d:?}"
    );
    let later = now + Duration::minutes(1);
    let g = granted(store.acquire(&k, &limits, 1, later).await.unwrap());
    store.release(&g, 1).await.unwrap();
    let d = denied(
        store
            .acquire(&k, &limits, 1, later + Duration::minutes(1))
            .await
            .unwrap(),
    );
    assert_eq!(
        d.retry_at,
        Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
    );
    assert!(
        matches!(
            d.reason,
            DenyReason::Window {
                window: WindowKind::Hour,
                limit: 3,
                used: 3
            }
        ),
        "{d:?}"
    );
}

pub async fn concurrency_cap_and_lease_expiry<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(100), None, None, 2)
        .unwrap()
        .with_lease_ttl(10)
        .unwrap();
    let _a = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
    let _b = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
    let d = denied(store.acquire(&k, &limits, 1, now).await.unwrap());
    assert_eq!(d.reason, DenyReason::Concurrency { max: 2 });
    assert!(
        d.retry_at > now && d.retry_at <= now + Duration::seconds(10),
        "{d:?}"
    );
    assert_eq!(store.state(&k, &limits, now).await.unwrap().live_leases, 2);
    // Both holders crashed: their leases expire and capacity returns.
    let later = now + Duration::seconds(11);
    assert_eq!(
        store.state(&k, &limits, later).await.unwrap().live_leases,
        0
    );
    let c = granted(store.acquire(&k, &limits, 1, later).await.unwrap());
    let d2 = granted(store.acquire(&k, &limits, 1, later).await.unwrap());
    denied(store.acquire(&k, &limits, 1, later).await.unwrap());
    store.release(&c, 1).await.unwrap();
    store.release(&d2, 1).await.unwrap();
    // Spent calls stay spent even when the holder crashed.
    assert_eq!(
        store
            .state(&k, &limits, later)
            .await
            .unwrap()
            .used
            .get("d2026-11-22"),
        Some(&4)
    );
}

pub async fn release_is_idempotent<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(100), None, None, 1).unwrap();
    let a = granted(store.acquire(&k, &limits, 2, now).await.unwrap());
    store.release(&a, 1).await.unwrap();
    store.release(&a, 0).await.unwrap();
    store.release(&a, 0).await.unwrap();
    let state = store.state(&k, &limits, now).await.unwrap();
    assert_eq!(
        state.used.get("d2026-11-22"),
        Some(&1),
        "refunded once only"
    );
    assert_eq!(state.live_leases, 0);
    // A second release must not have freed a slot it did not hold.
    let b = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
    denied(store.acquire(&k, &limits, 1, now).await.unwrap());
    store.release(&b, 1).await.unwrap();
}

pub async fn renew_extends_a_lease<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(100), None, None, 1)
        .unwrap()
        .with_lease_ttl(10)
        .unwrap();
    let a = granted(store.acquire(&k, &limits, 1, now).await.unwrap());
    store.renew(&a, now + Duration::seconds(30)).await.unwrap();
    // Past the original expiry the renewed lease still holds the slot.
    let d = denied(
        store
            .acquire(&k, &limits, 1, now + Duration::seconds(15))
            .await
            .unwrap(),
    );
    assert_eq!(d.reason, DenyReason::Concurrency { max: 1 });
    store.release(&a, 1).await.unwrap();
    let err = store
        .renew(&a, now + Duration::seconds(60))
        .await
        .unwrap_err();
    assert!(matches!(err, metered::Error::LeaseLost(_)), "{err}");
}

pub async fn block_until_denies_everyone<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::seed_example();
    let until = now + Duration::seconds(120);
    store.block_until(&k, until).await.unwrap();
    store
        .block_until(&k, now + Duration::seconds(5))
        .await
        .unwrap(); // never shortens
    let d = denied(
        store
            .acquire(&k, &limits, 1, now + Duration::seconds(60))
            .await
            .unwrap(),
    );
    assert_eq!(
        d,
        metered::quota::Denied {
            retry_at: until,
            reason: DenyReason::Blocked
        }
    );
    assert_eq!(
        store.state(&k, &limits, now).await.unwrap().blocked_until,
        Some(until)
    );
    assert!(
        store.state(&k, &limits, now).await.unwrap().used.is_empty(),
        "a blocked call spends nothing"
    );
    let g = granted(store.acquire(&k, &limits, 1, until).await.unwrap());
    store.release(&g, 1).await.unwrap();
    // Another budget is not blocked.
    let g = granted(store.acquire(&key(), &limits, 1, now).await.unwrap());
    store.release(&g, 1).await.unwrap();
}

pub async fn reservation_and_refund<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(10), Some(10), None, 3).unwrap();
    let r = granted(store.acquire(&k, &limits, 8, now).await.unwrap());
    denied(store.acquire(&k, &limits, 3, now).await.unwrap());
    store.release(&r, 3).await.unwrap(); // used 3 of 8: 5 come back
    let state = store.state(&k, &limits, now).await.unwrap();
    assert_eq!(state.used.get("d2026-11-22"), Some(&3));
    assert_eq!(state.used.get("h2026-11-22T14"), Some(&3));
    let r = granted(store.acquire(&k, &limits, 7, now).await.unwrap());
    store.release(&r, 7).await.unwrap();
    let d = denied(store.acquire(&k, &limits, 1, now).await.unwrap());
    assert!(
        matches!(d.reason, DenyReason::Window { used: 10, .. }),
        "{d:?}"
    );
}

pub async fn usage_is_summed_per_source_and_hour<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let k = key();
    let day = afternoon().date_naive();
    // (hour, calls, denied) per hour; a third of the denials (rounded
    // down) were waits for a concurrency slot.
    let entry =
        |source: &str, endpoint: &str, exempt, calls, hours: &[(u8, u64, u64)]| UsageEntry {
            key: k.clone(),
            day,
            source: source.into(),
            endpoint: endpoint.into(),
            exempt,
            calls,
            hours: hours
                .iter()
                .map(|(h, calls, denied)| {
                    (
                        *h,
                        metered::quota::HourUse {
                            calls: *calls,
                            denied: *denied,
                            waited: *denied / 3,
                        },
                    )
                })
                .collect(),
        };
    store
        .record_usage(&[entry(
            "complete-transfer:invoices",
            "GET /invoices",
            false,
            3,
            &[(9, 3, 0), (14, 0, 3)],
        )])
        .await
        .unwrap();
    store
        .record_usage(&[
            entry(
                "complete-transfer:invoices",
                "GET /invoices",
                false,
                4,
                &[(9, 1, 0), (14, 3, 3)],
            ),
            entry(
                "workflow:welcome",
                "POST /datasource",
                true,
                2,
                &[(23, 2, 0)],
            ),
            // Only refused: no call, one restart in hour 0.
            entry("workflow:welcome", "POST /notes", false, 0, &[(0, 0, 1)]),
        ])
        .await
        .unwrap();
    let usage = store.usage(&k, day).await.unwrap();
    assert_eq!(
        usage,
        vec![
            entry(
                "complete-transfer:invoices",
                "GET /invoices",
                false,
                7,
                &[(9, 4, 0), (14, 3, 6)]
            ),
            entry(
                "workflow:welcome",
                "POST /datasource",
                true,
                2,
                &[(23, 2, 0)]
            ),
            entry("workflow:welcome", "POST /notes", false, 0, &[(0, 0, 1)]),
        ]
    );
    assert!(store
        .usage(&k, day.succ_opt().unwrap())
        .await
        .unwrap()
        .is_empty());
}

/// 64 tasks share 100 calls a day and 3 concurrent: exactly 100 are granted,
/// the test itself never sees more than 3 calls in flight, and every later
/// acquire is denied until the next UTC midnight.
pub async fn sixty_four_tasks_share_one_budget<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (k, now) = (key(), afternoon());
    let limits = Limits::new(Some(100), None, None, 3).unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let granted_total = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, k, limits) = (store.clone(), k.clone(), limits.clone());
        let (in_flight, max_seen, granted_total) =
            (in_flight.clone(), max_seen.clone(), granted_total.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match store.acquire(&k, &limits, 1, now).await.unwrap() {
                    Acquire::Granted(g) => {
                        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(n, Ordering::SeqCst);
                        granted_total.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await; // the "call"
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        store.release(&g, 1).await.unwrap();
                    }
                    Acquire::Denied(d) => match d.reason {
                        DenyReason::Concurrency { .. } => tokio::task::yield_now().await,
                        DenyReason::Window { .. } => return d,
                        DenyReason::Blocked | DenyReason::Paused { .. } => {
                            panic!("nobody blocked this budget")
                        }
                        DenyReason::Share { .. } | DenyReason::AppWide { .. } => {
                            panic!("a store knows no shares nor levels")
                        }
                    },
                }
            }
        }));
    }
    let midnight = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
    for t in tasks {
        let d = t.await.unwrap();
        assert_eq!(d.retry_at, midnight);
    }
    assert_eq!(granted_total.load(Ordering::SeqCst), 100);
    let max = max_seen.load(Ordering::SeqCst);
    assert!((1..=3).contains(&max), "saw {max} calls in flight at once");
    let state = store.state(&k, &limits, now).await.unwrap();
    assert_eq!(state.used.get("d2026-11-22"), Some(&100));
    assert_eq!(state.live_leases, 0);
}

/// The API's own count raises a window to it and says by how much; a lower
/// count changes nothing (metered's count never goes down); another org's
/// window and another day are untouched; raising to the limit refuses.
pub async fn the_apis_count_raises_a_window_never_lowers_it<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (a, b, now) = (key(), key(), afternoon());
    let limits = Limits::new(Some(10), None, None, 3).unwrap();
    let g = granted(store.acquire(&a, &limits, 2, now).await.unwrap());
    store.release(&g, 2).await.unwrap();
    assert_eq!(store.raise_window(&a, "d2026-11-22", 6).await.unwrap(), 4);
    assert_eq!(store.raise_window(&a, "d2026-11-22", 5).await.unwrap(), 0);
    assert_eq!(store.raise_window(&a, "d2026-11-22", 6).await.unwrap(), 0);
    let used = |st: metered::quota::QuotaState| st.used.get("d2026-11-22").copied();
    assert_eq!(used(store.state(&a, &limits, now).await.unwrap()), Some(6));
    assert_eq!(
        used(store.state(&b, &limits, now).await.unwrap()).unwrap_or(0),
        0
    );
    // A window never written is created at the count.
    assert_eq!(store.raise_window(&b, "d2026-11-22", 3).await.unwrap(), 3);
    assert_eq!(used(store.state(&b, &limits, now).await.unwrap()), Some(3));
    assert_eq!(store.raise_window(&a, "d2026-11-22", 10).await.unwrap(), 4);
    let d = denied(store.acquire(&a, &limits, 1, now).await.unwrap());
    assert!(
        matches!(d.reason, DenyReason::Window { used: 10, .. }),
        "{d:?}"
    );
    let tomorrow = now + Duration::days(1);
    granted(store.acquire(&a, &limits, 1, tomorrow).await.unwrap());
}

/// Connection health is a compare-and-swap per org: a writer with a stale
/// view loses; another org of the same app is untouched; `resume` forgets
/// the health and lifts the org's block.
pub async fn connection_health_swaps_once_per_version_and_resume_lifts_the_block<
    F: Future<Output = Store>,
>(
    make: F,
) {
    use metered::quota::{Health, PausePolicy};
    let store = make.await;
    let a = key();
    let b = QuotaKey::new(a.org.clone(), "crm#2");
    let now = afternoon();
    let policy = PausePolicy { after_failures: 1 };
    assert_eq!(store.health(&a).await.unwrap(), Health::default());
    let paused = Health::default().after_auth_failure("HTTP 401", now, policy);
    assert!(paused.paused_at(now));
    assert!(store
        .swap_health(&a, &Health::default(), &paused)
        .await
        .unwrap());
    assert!(
        !store
            .swap_health(&a, &Health::default(), &paused)
            .await
            .unwrap(),
        "a stale writer loses"
    );
    assert_eq!(store.health(&a).await.unwrap(), paused);
    assert_eq!(
        store.health(&b).await.unwrap(),
        Health::default(),
        "per app"
    );
    let again = paused.after_auth_failure("HTTP 401", now, policy);
    assert!(store.swap_health(&a, &paused, &again).await.unwrap());
    store
        .block_until(&a, paused.paused_until.unwrap())
        .await
        .unwrap();
    let limits = Limits::seed_example();
    denied(store.acquire(&a, &limits, 1, now).await.unwrap());
    store.resume(&a).await.unwrap();
    assert_eq!(store.health(&a).await.unwrap(), Health::default());
    granted(store.acquire(&a, &limits, 1, now).await.unwrap());
}

fn window(calls: u32, every: &str, align: &str, rolling: bool) -> metered::quota::WindowLimit {
    toml::from_str(&format!(
        "calls = {calls}\nevery = \"{every}\"\nalign = \"{align}\"\nrolling = {rolling}"
    ))
    .unwrap()
}

fn only(w: metered::quota::WindowLimit) -> Limits {
    let mut l = Limits::new(Some(1_000_000), None, None, 3).unwrap();
    l.per_day = None;
    l.with_window(w).unwrap()
}

/// A 10-second window (HubSpot) fills, is denied until its end, and the
/// next one has room; a day aligned to America/Chicago (Marketo) is
/// denied until 06:00 UTC in December, not UTC midnight.
pub async fn a_ten_second_window_and_a_day_in_the_apis_time_zone<F: Future<Output = Store>>(
    make: F,
) {
    let store = make.await;
    let k = key();
    let ten = only(window(3, "10s", "UTC", false));
    let t0 = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 4).unwrap();
    for i in 0..3 {
        let g = granted(
            store
                .acquire(&k, &ten, 1, t0 + Duration::seconds(i))
                .await
                .unwrap(),
        );
        store.release(&g, 1).await.unwrap();
    }
    let d = denied(
        store
            .acquire(&k, &ten, 1, t0 + Duration::seconds(3))
            .await
            .unwrap(),
    );
    assert_eq!(
        d.retry_at,
        Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 10).unwrap()
    );
    assert!(d.reason.to_string().contains("10s window"), "{}", d.reason);
    let g = granted(store.acquire(&k, &ten, 1, d.retry_at).await.unwrap());
    store.release(&g, 1).await.unwrap();

    let k = key();
    let chicago = only(window(2, "1d", "America/Chicago", false));
    let before = Utc.with_ymd_and_hms(2026, 12, 5, 5, 0, 0).unwrap();
    for _ in 0..2 {
        let g = granted(store.acquire(&k, &chicago, 1, before).await.unwrap());
        store.release(&g, 1).await.unwrap();
    }
    let d = denied(store.acquire(&k, &chicago, 1, before).await.unwrap());
    let six = Utc.with_ymd_and_hms(2026, 12, 5, 6, 0, 0).unwrap();
    assert_eq!(d.retry_at, six, "the API's midnight, not UTC's");
    assert!(
        matches!(
            store
                .acquire(&k, &chicago, 1, six - Duration::milliseconds(1))
                .await
                .unwrap(),
            Acquire::Denied(_)
        ),
        "still the API's old day"
    );
    let g = granted(store.acquire(&k, &chicago, 1, six).await.unwrap());
    store.release(&g, 1).await.unwrap();
    let state = store.state(&k, &chicago, six).await.unwrap();
    assert_eq!(state.used.values().copied().collect::<Vec<_>>(), vec![1]);
}

/// Seeded attempts at uneven moments over ten minutes against "5 in any
/// rolling minute": no trailing minute ever holds more than 5 grants
/// (where a fixed minute would allow 10 across its edge), a denial's
/// `retry_at` is late enough (a call then would fit the trailing minute)
/// and not needlessly late (at most one bucket later than exact), and
/// a call of cost 2 is counted twice.
pub async fn a_rolling_window_is_never_exceeded_in_any_trailing_interval<
    F: Future<Output = Store>,
>(
    make: F,
) {
    let store = make.await;
    let k = key();
    let rolling = only(window(5, "1m", "UTC", true));
    let start = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut t = start;
    let mut grants: Vec<(chrono::DateTime<Utc>, u32)> = Vec::new();
    let held = |grants: &[(chrono::DateTime<Utc>, u32)], at: chrono::DateTime<Utc>| -> u32 {
        grants
            .iter()
            .filter(|(g, _)| *g > at - Duration::minutes(1) && *g <= at)
            .map(|(_, c)| c)
            .sum()
    };
    while t < start + Duration::minutes(10) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        t += Duration::milliseconds((seed % 9_000) as i64);
        let cost = if seed % 7 == 0 { 2 } else { 1 };
        match store.acquire(&k, &rolling, cost, t).await.unwrap() {
            Acquire::Granted(g) => {
                grants.push((t, cost));
                assert!(
                    held(&grants, t) <= 5,
                    "{} in the minute before {t}",
                    held(&grants, t)
                );
                store.release(&g, cost).await.unwrap();
            }
            Acquire::Denied(d) => {
                // Late enough: at retry_at the trailing minute has room.
                assert!(
                    held(&grants, d.retry_at) + cost <= 5,
                    "retry_at {} too early: {} held",
                    d.retry_at,
                    held(&grants, d.retry_at)
                );
                // Not needlessly late: one bucket (1 s) past the exact
                // moment, plus the second it rounds to.
                let exact = grants
                    .iter()
                    .map(|(g, _)| *g + Duration::minutes(1))
                    .filter(|free| *free > t && held(&grants, *free) + cost <= 5)
                    .min()
                    .unwrap_or(t);
                assert!(
                    d.retry_at <= exact + Duration::seconds(2),
                    "retry_at {} but room at {exact}",
                    d.retry_at
                );
            }
        }
    }
    assert!(
        grants.len() > 40,
        "only {} grants in ten minutes",
        grants.len()
    );
}

/// Sixteen tasks racing for "8 in any rolling minute", round after round
/// over three minutes: no trailing minute holds more than 8 grants.
pub async fn concurrent_tasks_never_overfill_a_rolling_window<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let k = key();
    let limits = Limits {
        max_concurrent: 16,
        ..only(window(8, "1m", "UTC", true))
    };
    let start = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Each round, sixteen tasks at once whose clocks disagree by up to
    // 4.5 s (as Lambdas' may), arriving in any order.
    for step in 0..12i64 {
        let mut tasks = Vec::new();
        for task in 0..16i64 {
            let (store, k, limits, grants) =
                (store.clone(), k.clone(), limits.clone(), grants.clone());
            tasks.push(tokio::spawn(async move {
                let at = start + Duration::milliseconds(step * 15_000 + ((task * 7) % 16) * 300);
                if let Acquire::Granted(g) = store.acquire(&k, &limits, 1, at).await.unwrap() {
                    grants.lock().unwrap().push(at);
                    store.release(&g, 1).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let grants = grants.lock().unwrap().clone();
    for at in &grants {
        let n = grants
            .iter()
            .filter(|g| **g > *at - Duration::minutes(1) && **g <= *at)
            .count();
        assert!(n <= 8, "{n} grants in the minute before {at}");
    }
    assert!(grants.len() >= 16, "only {} granted", grants.len());
}

/// Four orgs, sixteen tasks each, one app-wide day of 50 over org days of
/// 40: exactly 50 calls granted in all, no org over 40, each org's count
/// equal to its grants (a grant the app's level refused was given back
/// whole), and no lease left at either level.
pub async fn an_app_wide_level_holds_every_org_together<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let (_clock, shared) = crate::manual_clock();
    let quota = metered::Quota::new(store.clone(), shared);
    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    let mut limits = Limits::new(Some(40), None, None, 4).unwrap();
    limits.app_wide = Some(Box::new(Limits::new(Some(50), None, None, 8).unwrap()));
    limits.validate().unwrap();
    let orgs: Vec<QuotaKey> = (0..4)
        .map(|i| QuotaKey::new(format!("org{i}"), &app))
        .collect();
    let granted: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, key) in orgs.iter().enumerate() {
        for _ in 0..16 {
            let (quota, key, limits, granted) =
                (quota.clone(), key.clone(), limits.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    match quota
                        .acquire(&key, &limits, metered::quota::Call::new("t", "GET /x"))
                        .await
                        .unwrap()
                    {
                        metered::quota::Admission::Granted(p) => {
                            granted.lock().unwrap().push(i);
                            tokio::task::yield_now().await;
                            quota.release(p, 1).await.unwrap();
                        }
                        metered::quota::Admission::Denied(d) => match d.reason {
                            DenyReason::Concurrency { .. } => tokio::task::yield_now().await,
                            _ => return,
                        },
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    assert_eq!(granted.len(), 50, "the app's day");
    let now = quota.clock().now();
    for (i, key) in orgs.iter().enumerate() {
        let mine = granted.iter().filter(|g| **g == i).count() as u64;
        assert!(mine <= 40, "org{i}: {mine}");
        let state = store.state(key, &limits, now).await.unwrap();
        assert_eq!(
            state.used.values().sum::<u64>(),
            mine,
            "org{i}: refunded grants left counted"
        );
        assert_eq!(state.live_leases, 0);
    }
    let app_state = store
        .state(&orgs[0].app_level(), limits.app_wide.as_ref().unwrap(), now)
        .await
        .unwrap();
    assert_eq!(app_state.used.values().sum::<u64>(), 50);
    assert_eq!(app_state.live_leases, 0);
}

fn bucket(capacity: u32, refill: u32, every: &str) -> Limits {
    let b: metered::quota::BucketLimit = toml::from_str(&format!(
        "capacity = {capacity}\nrefill = {refill}\nevery = \"{every}\""
    ))
    .unwrap();
    let mut l = Limits::new(Some(1_000_000), None, None, 64).unwrap();
    l.per_day = None;
    l.with_bucket(b).unwrap()
}

/// A leaky bucket, kept exactly (continuous level, in calls), to check
/// the adapters' buckets against.
struct ExactBucket {
    capacity: f64,
    interval_ms: f64,
    level: f64,
    at: chrono::DateTime<Utc>,
}

impl ExactBucket {
    fn level_at(&self, t: chrono::DateTime<Utc>) -> f64 {
        let leaked = (t - self.at).num_milliseconds().max(0) as f64 / self.interval_ms;
        (self.level - leaked).max(0.0)
    }
    fn add(&mut self, t: chrono::DateTime<Utc>, calls: f64) {
        self.level = (self.level_at(t) + calls).max(0.0);
        self.at = self.at.max(t);
    }
}

/// Shopify's shape, slowed down: a bucket of 10 refilling one call every
/// 2 s. Ten calls at once fit, the eleventh waits exactly 2 s; then
/// seeded attempts of cost 1–3 at uneven moments over ten minutes, each
/// released with some of its reservation refunded, checked against an
/// exact leaky bucket: no grant ever overflows it, every denial is one it
/// would make too, and `retry_at` is the moment it has room (to the
/// millisecond).
pub async fn a_token_bucket_takes_a_burst_then_its_refill_and_never_overflows<
    F: Future<Output = Store>,
>(
    make: F,
) {
    let store = make.await;
    let k = key();
    let limits = bucket(10, 1, "2s");
    let t0 = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    for _ in 0..10 {
        let g = granted(store.acquire(&k, &limits, 1, t0).await.unwrap());
        store.release(&g, 1).await.unwrap();
    }
    let d = denied(store.acquire(&k, &limits, 1, t0).await.unwrap());
    assert_eq!(d.retry_at, t0 + Duration::seconds(2));
    assert!(
        d.reason.to_string().contains("bucket of 10"),
        "{}",
        d.reason
    );
    let state = store.state(&k, &limits, t0).await.unwrap();
    assert_eq!(state.used.values().copied().collect::<Vec<_>>(), vec![10]);
    let g = granted(store.acquire(&k, &limits, 1, d.retry_at).await.unwrap());
    store.release(&g, 1).await.unwrap();

    let k = key();
    let start = t0 + Duration::hours(1);
    let mut exact = ExactBucket {
        capacity: 10.0,
        interval_ms: 2_000.0,
        level: 0.0,
        at: start,
    };
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut t = start;
    let (mut grants, mut denials) = (0, 0);
    while t < start + Duration::minutes(10) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        t += Duration::milliseconds((seed % 2_500) as i64);
        let cost = 1 + (seed % 3) as u32;
        let level = exact.level_at(t);
        match store.acquire(&k, &limits, cost, t).await.unwrap() {
            Acquire::Granted(g) => {
                grants += 1;
                exact.add(t, f64::from(cost));
                assert!(
                    exact.level <= exact.capacity + 1e-9,
                    "the bucket holds {} at {t}",
                    exact.level
                );
                let used = if seed % 5 == 0 { cost - 1 } else { cost };
                store.release(&g, used).await.unwrap();
                exact.add(t, -f64::from(cost - used));
            }
            Acquire::Denied(d) => {
                denials += 1;
                assert!(
                    level + f64::from(cost) > exact.capacity,
                    "denied at {t} with {level} of 10 held and cost {cost}"
                );
                let room_at = exact.level_at(d.retry_at) + f64::from(cost);
                assert!(
                    room_at <= exact.capacity + 1e-9,
                    "retry_at {} too early",
                    d.retry_at
                );
                let a_ms_before = exact.level_at(d.retry_at - Duration::milliseconds(1));
                assert!(
                    a_ms_before + f64::from(cost) > exact.capacity,
                    "retry_at {} later than needed",
                    d.retry_at
                );
            }
        }
    }
    assert!(
        grants > 100 && denials > 20,
        "{grants} grants, {denials} denials"
    );
}

/// Sixteen tasks race for a bucket of 8 refilling one a second, every
/// 3 s for a minute: the first round takes the burst of 8, each later
/// one the 3 that refilled; replayed in time order through an exact
/// bucket, no grant overflows it.
pub async fn concurrent_tasks_never_overflow_a_token_bucket<F: Future<Output = Store>>(make: F) {
    let store = make.await;
    let k = key();
    let limits = bucket(8, 1, "1s");
    let start = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
    for step in 0..20i64 {
        let mut tasks = Vec::new();
        for task in 0..16i64 {
            let (store, k, limits, grants) =
                (store.clone(), k.clone(), limits.clone(), grants.clone());
            tasks.push(tokio::spawn(async move {
                let at = start + Duration::milliseconds(step * 3_000 + task * 10);
                if let Acquire::Granted(g) = store.acquire(&k, &limits, 1, at).await.unwrap() {
                    grants.lock().unwrap().push(at);
                    store.release(&g, 1).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let mut grants = grants.lock().unwrap().clone();
    grants.sort();
    let mut exact = ExactBucket {
        capacity: 8.0,
        interval_ms: 1_000.0,
        level: 0.0,
        at: start,
    };
    for at in &grants {
        exact.add(*at, 1.0);
        assert!(
            exact.level <= exact.capacity + 1e-9,
            "{} held at {at}",
            exact.level
        );
    }
    // 8, then 3 refilled in each of the 19 later rounds (less for the
    // order the tasks arrive in, never more).
    assert!(
        (8 + 19 * 2..=8 + 19 * 3).contains(&grants.len()),
        "{} granted",
        grants.len()
    );
}
