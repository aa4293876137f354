//! Reservations (calls paid for in one quota round trip) on both adapters:
//! they stop at the end of the windows they were granted in, renew their
//! lease only when it runs short, and refund after their lease lapsed.

use chrono::TimeZone;
use metered::connector::{ListRequest, Metered};
use metered::core::ManualClock;
use metered::quota::Limits;
use metered_sim::SimConfig;
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;

fn list() -> ListRequest {
    ListRequest {
        record_type: "invoices".into(),
        ..Default::default()
    }
}

/// A reservation taken at 23:59:30 is not spent after midnight: a call made
/// then would be charged to the day that ended while the API counts it in
/// the new one (where restarted jobs take the full budget).
async fn a_reservation_stops_at_the_end_of_its_windows(adapter: Adapter) {
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 22, 23, 59, 30)
        .unwrap();
    let w = Budget::on(adapter)
        .at(start)
        .app("sim-booking")
        .build()
        .await;
    let (clock, store, key) = (&w.clock, &w.store, &w.a);
    let fx = metered_tests::sim_fixture(SimConfig::default(), w.shared.clone()).await;
    let limits = Limits::new(Some(100), None, None, 3).unwrap();
    let m = Metered::new(
        fx.connector.clone(),
        w.quota.clone(),
        key.clone(),
        limits.clone(),
        "complete-transfer:invoices",
    );
    let endpoint = metered::connector::Connector::list_endpoint(&*fx.connector, "invoices");
    let mut r = m.reserve(&endpoint, 10).await.unwrap();
    assert_eq!(r.remaining(), 10);
    r.list(&list()).await.unwrap();
    assert_eq!(r.remaining(), 9);
    clock.set(start + chrono::Duration::seconds(40)); // 00:00:10
    assert_eq!(r.remaining(), 0, "yesterday's reservation ends at midnight");
    r.finish().await.unwrap();
    let mut r = m.reserve(&endpoint, 10).await.unwrap();
    r.list(&list()).await.unwrap();
    r.finish().await.unwrap();
    let today = store.state(key, &limits, clock_now(clock)).await.unwrap();
    assert_eq!(
        today.used.get("d2026-11-23"),
        Some(&1),
        "today's call charged today"
    );
    let days = fx.sim().stats().calls_by_key_day;
    assert_eq!(days.values().sum::<u64>(), 2);
    assert_eq!(days.len(), 2, "one call each side of midnight: {days:?}");
}

fn clock_now(c: &ManualClock) -> metered::Timestamp {
    metered::core::Clock::now(c)
}

/// Twenty calls of 10 s on a 60 s lease: the lease is renewed when less
/// than 30 s of it is left (at 40 s, 80 s, 140 s, 180 s), not on every call
/// once the original lease is 30 s old (17 renewals).
async fn a_reservation_renews_only_when_its_lease_runs_short(adapter: Adapter) {
    let w = Budget::on(adapter).app("sim-booking").build().await;
    let (clock, faults) = (&w.clock, &w.faults);
    let fx = metered_tests::sim_fixture(SimConfig::default(), w.shared.clone()).await;
    let limits = Limits::new(Some(1_000), None, None, 3).unwrap();
    let m = Metered::new(
        fx.connector.clone(),
        w.quota.clone(),
        w.a.clone(),
        limits,
        "complete-transfer:invoices",
    );
    let mut r = m
        .reserve(
            &metered::connector::Connector::list_endpoint(&*fx.connector, "invoices"),
            20,
        )
        .await
        .unwrap();
    for _ in 0..20 {
        r.list(&list()).await.unwrap();
        clock.advance(chrono::Duration::seconds(10));
    }
    r.finish().await.unwrap();
    let renewals = faults.hits("quota.renew");
    assert_eq!(renewals, 4, "renewals in 200 s");
}

/// A reservation whose lease lapsed (and was reclaimed by another acquire)
/// still refunds what it did not use, once.
async fn a_reservation_refunds_after_its_lease_lapsed(adapter: Adapter) {
    let Budget { store, a: key, .. } = Budget::on(adapter).build().await;
    let limits = Limits::new(Some(100), None, None, 1).unwrap();
    let now = metered_tests::afternoon();
    let metered::quota::Acquire::Granted(big) =
        store.acquire(&key, &limits, 10, now).await.unwrap()
    else {
        panic!("granted")
    };
    let later = now + chrono::Duration::seconds(61);
    let metered::quota::Acquire::Granted(small) =
        store.acquire(&key, &limits, 1, later).await.unwrap()
    else {
        panic!("the lapsed lease is reclaimed")
    };
    store.release(&big, 2).await.unwrap();
    store.release(&big, 2).await.unwrap();
    store.release(&small, 1).await.unwrap();
    let state = store.state(&key, &limits, later).await.unwrap();
    assert_eq!(
        state.used.get("d2026-11-22"),
        Some(&3),
        "2 + 1 used; 8 refunded once"
    );
    assert_eq!(state.live_leases, 0);
}

/// A reservation of calls that cost 300 each (`[app.endpoint_costs]`)
/// under a day of 2,500: 50 calls asked, the 8 the day can hold granted
/// (not refused as impossible forever); each call takes 300; the unspent
/// calls come back at the end, and the day holds exactly what was spent.
async fn a_reservation_counts_each_call_at_its_endpoints_cost(adapter: Adapter) {
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
        .unwrap();
    let w = Budget::on(adapter)
        .at(start)
        .app("sim-booking")
        .build()
        .await;
    let (store, key) = (&w.store, &w.a);
    let endpoint = "GET /invoices".to_string();
    let fx = metered_tests::sim_fixture_with(SimConfig::default(), w.shared.clone(), |c| {
        c.app.limits = Limits::new(Some(2_500), None, None, 3).unwrap();
        c.app.endpoint_costs.insert(endpoint.clone(), 300);
    })
    .await;
    let limits = fx.config.app.limits.clone();
    let m = Metered::new(
        fx.connector.clone(),
        w.quota.clone(),
        key.clone(),
        limits.clone(),
        "complete-transfer:invoices",
    );
    assert_eq!(
        metered::connector::Connector::list_endpoint(&*fx.connector, "invoices"),
        endpoint
    );
    let mut r = m.reserve(&endpoint, 50).await.unwrap();
    assert_eq!(r.remaining(), 8, "2,500 / 300 whole calls");
    r.list(&list()).await.unwrap();
    r.list(&list()).await.unwrap();
    assert_eq!(r.remaining(), 6);
    r.finish().await.unwrap();
    let state = store.state(key, &limits, start).await.unwrap();
    assert_eq!(
        state.used.get("d2026-11-22"),
        Some(&600),
        "two calls of 300"
    );
    // A single call is charged its cost too.
    m.list(&list()).await.unwrap();
    let state = store.state(key, &limits, start).await.unwrap();
    assert_eq!(state.used.get("d2026-11-22"), Some(&900));
    assert_eq!(fx.sim().stats().calls_by_key_day.values().sum::<u64>(), 3);
}

metered_tests::on_both!(
    a_reservation_counts_each_call_at_its_endpoints_cost,
    a_reservation_stops_at_the_end_of_its_windows,
    a_reservation_renews_only_when_its_lease_runs_short,
    a_reservation_refunds_after_its_lease_lapsed,
);
