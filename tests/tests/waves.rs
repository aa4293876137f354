//! Wake turns sized by the work a job still needs (#30): a job that says
//! it needs 100 more calls takes 100 of a window's wake slots when a
//! window refuses it, so a day of 500 wakes five such jobs, not every
//! waiting job to refuse most of them again. Each refusal comes from a
//! process of its own (a repeat in one process is answered from memory).
//! Both adapters; two orgs whose keys coincide but for the org.

use chrono::TimeZone;
use metered::quota::{Admission, Call, Limits};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;

async fn turns_fit_the_window(adapter: Adapter) {
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
    let w = Budget::on(adapter).at(t0).build().await;
    let (clock, a, b, spend) = (&w.clock, &w.a, &w.b, &w.quota);
    let day = Limits::new(Some(500), None, None, 3).unwrap();
    for key in [a, b] {
        let Admission::Granted(p) = spend
            .acquire(key, &day, Call::new("sync", "GET /x").reserve(500))
            .await
            .unwrap()
        else {
            panic!("the day has room");
        };
        spend.release(p, 500).await.unwrap();
    }
    // Twelve jobs of org A, each needing 100 more calls; twelve of org B
    // that do not say (one call each).
    let mut days_a = Vec::new();
    let mut days_b = Vec::new();
    for i in 0..12 {
        clock.set(t0 + chrono::Duration::seconds(i));
        let process = w.process();
        let call = Call::new("workflow:w", "POST /x");
        for (key, call, days) in [
            (a, call.clone().needing(100), &mut days_a),
            (b, call, &mut days_b),
        ] {
            match process.acquire(key, &day, call).await.unwrap() {
                Admission::Denied(d) => {
                    days.push((d.retry_at.date_naive() - t0.date_naive()).num_days())
                }
                Admission::Granted(_) => panic!("the day is spent"),
            }
        }
    }
    assert_eq!(
        days_a,
        vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],
        "five turns of 100 in each day of 500"
    );
    assert_eq!(days_b, vec![1; 12], "one-call turns all fit the next day");
}

#[tokio::test]
async fn turns_fit_the_window_on_sqlite() {
    turns_fit_the_window(Adapter::Sqlite).await;
}

#[tokio::test]
async fn turns_fit_the_window_on_dynamodb_local() {
    turns_fit_the_window(Adapter::Aws).await;
}
