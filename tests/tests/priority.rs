//! Priority inside a budget (#30): background work (a scheduled complete
//! transfer, a bulk run and its actions) fills each window only to
//! `background_percent`; interactive work has the rest. Many tasks racing
//! through the `Quota` facade on both adapters, the grants counted per
//! priority; a second org with the same names is untouched.

use chrono::TimeZone;
use metered::quota::{Admission, Call, DenyReason, Limits, Quota, QuotaKey};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const LIMITS: &str = r#"
per_day = 100
max_concurrent = 64
background_percent = 80
[shares]
workflow = { reserve_percent = 30 }
"#;

fn limits() -> Limits {
    let l: Limits = toml::from_str(LIMITS).unwrap();
    l.validate().unwrap();
    l
}

fn call(source: &str, background: bool) -> Call {
    Call::new(source, "POST /notes").in_background(background)
}

/// `tasks` tasks each taking one call at a time until refused; the grants.
fn race(
    quota: &Quota,
    key: &QuotaKey,
    source: &'static str,
    background: bool,
    tasks: usize,
) -> Vec<tokio::task::JoinHandle<u32>> {
    let granted = Arc::new(AtomicU32::new(0));
    (0..tasks)
        .map(|_| {
            let (quota, key, granted) = (quota.clone(), key.clone(), granted.clone());
            tokio::spawn(async move {
                let mut mine = 0;
                while let Admission::Granted(p) = quota
                    .acquire(&key, &limits(), call(source, background))
                    .await
                    .unwrap()
                {
                    mine += 1;
                    granted.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    quota.release(p, 1).await.unwrap();
                }
                mine
            })
        })
        .collect()
}

async fn sum(handles: Vec<tokio::task::JoinHandle<u32>>) -> u32 {
    let mut n = 0;
    for h in handles {
        n += h.await.unwrap();
    }
    n
}

/// A bulk run (background actions of `workflow`) and a scheduled transfer
/// start first and want the whole day; the actions a changed record
/// triggered (interactive, the same share) race them. Background work
/// stops at 80 of the day, inside the actions' share too; the interactive
/// actions get the rest, and the day is spent whole, never over.
async fn a_bulk_run_leaves_triggered_actions_the_rest_of_the_day(adapter: Adapter) {
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
    let Budget { quota, a, b, .. } = Budget::on(adapter).at(t0).build().await;

    let bulk = race(&quota, &a, "workflow:thanks", true, 12);
    let transfer = race(&quota, &a, "complete-transfer:invoices", true, 6);
    let triggered = race(&quota, &a, "workflow:thanks", false, 6);
    let (bulk, transfer, triggered) = (sum(bulk).await, sum(transfer).await, sum(triggered).await);
    assert!(
        bulk + transfer <= 80,
        "background holds to 80%: bulk {bulk} + transfer {transfer}"
    );
    assert_eq!(
        bulk + transfer + triggered,
        100,
        "the day spent whole, never over: bulk {bulk}, transfer {transfer}, triggered {triggered}"
    );
    assert!(triggered >= 20, "interactive work's part: {triggered}");
    // Inside the share: the bulk run's background actions take at most 80%
    // of what the workflow kind may spend (its reserve 30 and the rest 70).
    assert!(bulk <= 80, "{bulk}");

    // Org B, same names, has its whole day for interactive work.
    assert_eq!(
        sum(race(&quota, &b, "workflow:thanks", false, 4)).await,
        100
    );
}

/// In numbers, one at a time: background is refused at 80 with the day's
/// unreserved part named at its held-back limit (80% of the 70 the
/// workflow reserve leaves), while interactive work is still
/// admitted (the background refusal, remembered by the process, does not
/// refuse it); in the day's last tenth the held part is lent.
async fn background_stops_at_its_ceiling_and_is_lent_the_rest_late(adapter: Adapter) {
    let noon = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
    let Budget {
        quota,
        clock,
        a: key,
        ..
    } = Budget::on(adapter).at(noon).build().await;
    let l = limits();
    let mut background = 0;
    let refused = loop {
        match quota
            .acquire(&key, &l, call("complete-transfer:invoices", true))
            .await
            .unwrap()
        {
            Admission::Granted(p) => {
                background += 1;
                quota.release(p, 1).await.unwrap();
            }
            Admission::Denied(d) => break d,
        }
    };
    assert_eq!(background, 56, "80% of the 70 no share reserves");
    assert!(
        matches!(refused.reason, DenyReason::Share { limit: 56, .. }),
        "the unreserved part held back to 80% of 70: {refused:?}"
    );
    // It wakes when the held part is lent, not at midnight.
    let lent_from = chrono::Utc
        .with_ymd_and_hms(2026, 12, 6, 21, 36, 0)
        .unwrap();
    assert!(
        refused.retry_at >= lent_from
            && refused.retry_at < chrono::Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap(),
        "{refused:?}"
    );
    // Interactive work right after, from the same process: admitted.
    for i in 0..10 {
        let Admission::Granted(p) = quota
            .acquire(&key, &l, call("workflow:thanks", false))
            .await
            .unwrap()
        else {
            panic!("interactive call {i} refused");
        };
        quota.release(p, 1).await.unwrap();
    }
    // 21:40, inside the day's last 2.4 hours: the held part is lent.
    clock.set(
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 6, 21, 40, 0)
            .unwrap(),
    );
    let mut lent = 0;
    while let Admission::Granted(p) = quota
        .acquire(&key, &l, call("complete-transfer:invoices", true))
        .await
        .unwrap()
    {
        lent += 1;
        quota.release(p, 1).await.unwrap();
    }
    // Late in the day the held part and the workflow reserve's unused rest
    // are both lent: the day is spent whole and never over.
    assert_eq!(
        background + 10 + lent,
        100,
        "background {background}, lent late {lent}"
    );
    assert_eq!(lent, 34);
}

/// Concurrency: of 3 slots, background work may hold 2; the third is
/// there for an interactive call.
async fn background_leaves_a_concurrency_slot(adapter: Adapter) {
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
    let Budget { quota, a: key, .. } = Budget::on(adapter).at(t0).build().await;
    let l: Limits =
        toml::from_str("per_day = 2500\nmax_concurrent = 3\nbackground_percent = 80\n").unwrap();
    l.validate().unwrap();
    let transfer = || call("complete-transfer:invoices", true);
    let mut held = Vec::new();
    for _ in 0..2 {
        let Admission::Granted(p) = quota.acquire(&key, &l, transfer()).await.unwrap() else {
            panic!("background may hold two slots");
        };
        held.push(p);
    }
    let Admission::Denied(d) = quota.acquire(&key, &l, transfer()).await.unwrap() else {
        panic!("a third background slot");
    };
    assert!(
        matches!(d.reason, DenyReason::Concurrency { max: 2 }),
        "{d:?}"
    );
    let Admission::Granted(p) = quota
        .acquire(&key, &l, call("workflow:thanks", false))
        .await
        .unwrap()
    else {
        panic!("the third slot is interactive work's");
    };
    held.push(p);
    for p in held {
        quota.release(p, 1).await.unwrap();
    }
}

metered_tests::on_both!(
    a_bulk_run_leaves_triggered_actions_the_rest_of_the_day,
    background_stops_at_its_ceiling_and_is_lent_the_rest_late,
    background_leaves_a_concurrency_slot,
);
