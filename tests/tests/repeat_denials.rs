//! Repeat denials (#30): a process that was just refused answers the same
//! request again from memory for a second, without a store request (a
//! refused conditional write still costs DynamoDB a write unit). The memory
//! only ever refuses, is per budget (two orgs with the same ids never share
//! it), and forgets as soon as this process gives capacity back. Both
//! adapters; the store's requests counted at the port.

use chrono::TimeZone;
use metered::quota::{Admission, Call, DenyReason, Limits};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;

fn call() -> Call {
    Call::new("workflow:thanks", "POST /notes")
}

async fn repeat_denials_are_answered_without_the_store(adapter: Adapter) {
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    let w = Budget::on(adapter).at(t0).build().await;
    let (clock, store, quota, faults) = (&w.clock, &w.store, &w.quota, &w.faults);
    let (a, b) = (w.a.clone(), w.b.clone());
    let day = Limits::new(Some(3), None, None, 3).unwrap();
    let asked = || faults.hits("quota.acquire");

    for _ in 0..3 {
        let Admission::Granted(p) = quota.acquire(&a, &day, call()).await.unwrap() else {
            panic!("the day has room");
        };
        quota.release(p, 1).await.unwrap();
    }
    let Admission::Denied(first) = quota.acquire(&a, &day, call()).await.unwrap() else {
        panic!("the day is spent");
    };
    assert!(matches!(first.reason, DenyReason::Window { .. }));
    // Three grants, the refusal, and its wake slot in the next window
    // (`quota::wave`): a refusal the store makes asks twice.
    assert_eq!(asked(), 5);

    // Fifty repeats in the same second: refused, the same way, unasked,
    // each a turn later than the one before (waves, spread in memory).
    let mut last = first.retry_at;
    for _ in 0..50 {
        match quota.acquire(&a, &day, call()).await.unwrap() {
            Admission::Denied(d) => {
                assert_eq!(d.reason, first.reason);
                assert!(d.retry_at >= last, "{d:?} after {last}");
                last = d.retry_at;
            }
            Admission::Granted(_) => panic!("the memory never admits"),
        }
    }
    assert!(last > first.retry_at, "the repeats are spread over turns");
    assert_eq!(asked(), 5, "repeat denials asked the store");
    // A cheaper request than the one refused is not answered from it.
    let ten = Limits::new(Some(10), None, None, 3).unwrap();
    let c = w.org("c");
    let Admission::Granted(p) = quota.acquire(&c, &ten, call().reserve(10)).await.unwrap() else {
        panic!("ten fit");
    };
    quota.release(p, 10).await.unwrap();
    let before = asked();
    for cost in [5, 5, 1, 1, 5] {
        assert!(matches!(
            quota.acquire(&c, &ten, call().reserve(cost)).await.unwrap(),
            Admission::Denied(_)
        ));
    }
    assert_eq!(
        asked(),
        before + 4,
        "5 asked (and a wake slot), 5 repeated, 1 asked (cheaper, and a slot), then 1 and 5 repeated"
    );

    // Org B, same app, same ids: its own budget, asked.
    let before = asked();
    let Admission::Granted(p) = quota.acquire(&b, &day, call()).await.unwrap() else {
        panic!("org B has room");
    };
    quota.release(p, 1).await.unwrap();
    assert_eq!(asked(), before + 1);

    // Within the second: still from memory; after it: the store again.
    let before = asked();
    clock.advance(chrono::Duration::milliseconds(999));
    assert!(matches!(
        quota.acquire(&a, &day, call()).await.unwrap(),
        Admission::Denied(_)
    ));
    assert_eq!(asked(), before);
    clock.advance(chrono::Duration::milliseconds(1));
    assert!(matches!(
        quota.acquire(&a, &day, call()).await.unwrap(),
        Admission::Denied(_)
    ));
    assert_eq!(asked(), before + 2, "the refusal and its wake slot");

    // Repeats are still counted as refusals in the usage report.
    quota.flush_usage().await.unwrap();
    let usage = store.usage(&a, t0.date_naive()).await.unwrap();
    let refused: u64 = usage
        .iter()
        .flat_map(|u| u.hours.values())
        .map(|h| h.denied)
        .sum();
    assert_eq!(refused, 1 + 50 + 1 + 1);

    // A wait for a concurrency slot is not repeated from memory: a
    // holder in any process may release at any moment.
    let one = Limits::new(Some(100), None, None, 1).unwrap();
    let d = w.org("d");
    let Admission::Granted(held) = quota.acquire(&d, &one, call()).await.unwrap() else {
        panic!("a free slot");
    };
    let before = asked();
    for _ in 0..3 {
        let Admission::Denied(w) = quota.acquire(&d, &one, call()).await.unwrap() else {
            panic!("the only slot is held");
        };
        assert!(matches!(w.reason, DenyReason::Concurrency { .. }));
    }
    assert_eq!(asked(), before + 3, "each wait for a slot asks");
    quota.release(held, 1).await.unwrap();
    let Admission::Granted(p) = quota.acquire(&d, &one, call()).await.unwrap() else {
        panic!("the slot freed is taken at once");
    };
    quota.release(p, 1).await.unwrap();

    // A release here forgets the org's repeated denial at once.
    let e = w.org("e");
    let two = Limits::new(Some(2), None, None, 3).unwrap();
    let Admission::Granted(p) = quota.acquire(&e, &two, call().reserve(2)).await.unwrap() else {
        panic!("two fit");
    };
    assert!(matches!(
        quota.acquire(&e, &two, call()).await.unwrap(),
        Admission::Denied(_)
    ));
    quota.release(p, 1).await.unwrap();
    let Admission::Granted(p) = quota.acquire(&e, &two, call()).await.unwrap() else {
        panic!("the refunded call is taken at once, not refused from memory");
    };
    quota.release(p, 1).await.unwrap();
}

metered_tests::on_both!(repeat_denials_are_answered_without_the_store);
