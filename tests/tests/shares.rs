//! Shares of a budget per source kind (#30): a lookup storm and a bulk
//! transfer racing workflow actions for one org's day. The actions' reserve
//! is theirs whatever the storm does, the lookups never pass their cap, the
//! day is never exceeded, and a second org with the same ids is untouched.
//! Many concurrent tasks through the `Quota` facade on both adapters; the
//! grants counted per kind.

use chrono::TimeZone;
use metered::core::Timestamp;
use metered::quota::{Admission, Call, DenyReason, Limits, Quota, QuotaKey};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const LIMITS: &str = r#"
per_day = 100
max_concurrent = 64
[shares]
workflow = { reserve_percent = 30 }
pk-lookup = { cap_percent = 50 }
"#;

fn ten_am() -> Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap()
}

/// `tasks` tasks of `source` each asking one call at a time until refused
/// (or `want` calls were granted between them); the grants.
fn storm(
    quota: &Quota,
    key: &QuotaKey,
    limits: &Limits,
    source: &'static str,
    tasks: usize,
    want: u32,
) -> Vec<tokio::task::JoinHandle<(u32, Vec<DenyReason>)>> {
    let granted = Arc::new(AtomicU32::new(0));
    (0..tasks)
        .map(|_| {
            let (quota, key, limits, granted) =
                (quota.clone(), key.clone(), limits.clone(), granted.clone());
            tokio::spawn(async move {
                let mut mine = 0;
                let mut refused = Vec::new();
                while granted.load(Ordering::SeqCst) < want {
                    match quota
                        .acquire(&key, &limits, Call::new(source, "GET /x"))
                        .await
                        .unwrap()
                    {
                        Admission::Granted(p) => {
                            if granted.fetch_add(1, Ordering::SeqCst) >= want {
                                // Over what this kind wanted: give it back.
                                granted.fetch_sub(1, Ordering::SeqCst);
                                quota.release(p, 0).await.unwrap();
                                break;
                            }
                            mine += 1;
                            tokio::task::yield_now().await;
                            quota.release(p, 1).await.unwrap();
                        }
                        Admission::Denied(d) => {
                            refused.push(d.reason);
                            break;
                        }
                    }
                }
                (mine, refused)
            })
        })
        .collect()
}

async fn total(
    handles: Vec<tokio::task::JoinHandle<(u32, Vec<DenyReason>)>>,
) -> (u32, Vec<DenyReason>) {
    let mut sum = 0;
    let mut reasons = Vec::new();
    for h in handles {
        let (n, r) = h.await.unwrap();
        sum += n;
        reasons.extend(r);
    }
    (sum, reasons)
}

async fn a_lookup_storm_leaves_the_actions_their_reserve(adapter: Adapter) {
    let Budget { quota, a, b, .. } = Budget::on(adapter).at(ten_am()).build().await;
    let limits: Limits = toml::from_str(LIMITS).unwrap();
    limits.validate().unwrap();

    // The storm and a transfer start first and want everything; the
    // actions want 40, all racing.
    let lookups = storm(&quota, &a, &limits, "pk-lookup:customers", 24, 1_000);
    let transfer = storm(&quota, &a, &limits, "complete-transfer:invoices", 8, 1_000);
    let actions = storm(&quota, &a, &limits, "workflow:thanks", 8, 40);
    let (lookups, lookup_refusals) = total(lookups).await;
    let (transfer, _) = total(transfer).await;
    let (actions, _) = total(actions).await;

    assert!(lookups <= 50, "the lookups' cap of 50%: {lookups}");
    assert!(
        actions >= 30,
        "the actions' reserve of 30 is theirs: {actions} (lookups {lookups}, transfer {transfer})"
    );
    assert!(
        lookups + transfer + actions <= 100,
        "the day: {lookups} + {transfer} + {actions}"
    );
    // What no kind reserved (70) is spent whole, and the day with it once
    // the actions are done (their 40 of which 30 reserved).
    assert_eq!(lookups + transfer + (actions - 30), 70);
    assert!(
        lookup_refusals.iter().all(|r| matches!(
            r,
            DenyReason::Share { source_kind, .. } if source_kind == "pk-lookup"
        ) || matches!(r, DenyReason::Window { .. })),
        "{lookup_refusals:?}"
    );

    // The other org with the same ids has its whole day.
    let alone = storm(&quota, &b, &limits, "workflow:thanks", 4, 1_000);
    assert_eq!(
        total(alone).await.0,
        100,
        "org B: reserve 30 + unreserved 70"
    );
}

/// Caps and reserves in numbers: the lookups stop at their cap with the
/// reason naming their share; the actions still get their reserve after.
async fn a_cap_refuses_naming_the_share(adapter: Adapter) {
    let Budget { quota, a: key, .. } = Budget::on(adapter).at(ten_am()).build().await;
    let limits: Limits = toml::from_str(LIMITS).unwrap();
    let call = |source: &str| Call::new(source, "GET /x");
    let mut lookups = 0;
    let refused = loop {
        match quota
            .acquire(&key, &limits, call("pk-lookup:c"))
            .await
            .unwrap()
        {
            Admission::Granted(p) => {
                lookups += 1;
                quota.release(p, 1).await.unwrap();
            }
            Admission::Denied(d) => break d,
        }
    };
    assert_eq!(lookups, 50);
    let text = refused.reason.to_string();
    assert!(
        text.contains("`pk-lookup` share's cap of the day is spent (50 of 50)"),
        "{text}"
    );
    assert_eq!(
        refused.retry_at,
        chrono::Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap()
    );
    // Another kind is not refused from the lookups' denial.
    for _ in 0..50 {
        let Admission::Granted(p) = quota
            .acquire(&key, &limits, call("workflow:t"))
            .await
            .unwrap()
        else {
            panic!("the actions' reserve and the rest of the unreserved part are there");
        };
        quota.release(p, 1).await.unwrap();
    }
    let Admission::Denied(d) = quota
        .acquire(&key, &limits, call("workflow:t"))
        .await
        .unwrap()
    else {
        panic!("the day is spent");
    };
    // Its reserve and the unreserved part are spent (and with them the
    // day): the share, asked first, says so.
    assert!(
        matches!(&d.reason, DenyReason::Share { part, used: 70, .. } if part == "unreserved part"),
        "{d:?}"
    );
}

/// A reserve left unspent near the window's end is lent: the transfer,
/// refused at noon once the unreserved part is spent, borrows the actions'
/// reserve in the day's last tenth (it would lapse unused at midnight).
async fn an_unspent_reserve_is_lent_near_the_windows_end(adapter: Adapter) {
    let noon = chrono::Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    let Budget {
        quota,
        clock,
        a: key,
        ..
    } = Budget::on(adapter).at(noon).build().await;
    let limits: Limits = toml::from_str(LIMITS).unwrap();
    let transfer = || Call::new("complete-transfer:invoices", "GET /invoices");
    for _ in 0..70 {
        let Admission::Granted(p) = quota.acquire(&key, &limits, transfer()).await.unwrap() else {
            panic!("the unreserved part holds 70");
        };
        quota.release(p, 1).await.unwrap();
    }
    let Admission::Denied(d) = quota.acquire(&key, &limits, transfer()).await.unwrap() else {
        panic!("the actions' reserve is not lent at noon");
    };
    assert!(matches!(d.reason, DenyReason::Share { .. }), "{d:?}");
    // 21:40: within the day's last 2.4 hours.
    clock.set(
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 5, 21, 40, 0)
            .unwrap(),
    );
    let mut lent = 0;
    while let Admission::Granted(p) = quota.acquire(&key, &limits, transfer()).await.unwrap() {
        lent += 1;
        quota.release(p, 1).await.unwrap();
    }
    assert_eq!(
        lent, 30,
        "the whole unspent reserve, and no more than the day"
    );
}

/// A refusal by the app's own level says so (not "day limit reached" as
/// if the org's own day were spent), and org B, whose day is untouched,
/// is refused by it too.
async fn the_app_levels_refusal_names_the_app(adapter: Adapter) {
    let Budget { quota, a, b, .. } = Budget::on(adapter).at(ten_am()).build().await;
    let limits: Limits = toml::from_str(
        "per_day = 10\nmax_concurrent = 3\n[app_wide]\nper_day = 3\nmax_concurrent = 9",
    )
    .unwrap();
    limits.validate().unwrap();
    let call = || Call::new("workflow:t", "POST /notes");
    for _ in 0..3 {
        let Admission::Granted(p) = quota.acquire(&a, &limits, call()).await.unwrap() else {
            panic!("the app's day holds 3");
        };
        quota.release(p, 1).await.unwrap();
    }
    let Admission::Denied(d) = quota.acquire(&b, &limits, call()).await.unwrap() else {
        panic!("the app's day is spent");
    };
    assert!(
        matches!(
            d.reason,
            DenyReason::AppWide {
                limit: 3,
                used: 3,
                ..
            }
        ),
        "{d:?}"
    );
    assert!(
        d.reason
            .to_string()
            .contains("the app's own day limit across all its orgs is reached (3 of 3 used)"),
        "{}",
        d.reason
    );
}

metered_tests::on_both!(
    the_app_levels_refusal_names_the_app,
    an_unspent_reserve_is_lent_near_the_windows_end,
    a_lookup_storm_leaves_the_actions_their_reserve,
    a_cap_refuses_naming_the_share,
);
