//! The app-wide level (#30): how far one hot budget item goes, and how
//! much of an app's shared minute fifty orgs use without going over.
//!
//! - **Hot item.** Every org of an app acquires on the app's one item.
//!   A fixed window is one conditional `UpdateItem` that DynamoDB
//!   serialises on the item (no retries, however many writers); a
//!   rolling window is read first and written under a version check, so
//!   concurrent writers refuse each other and retry. Printed: pairs a
//!   second and requests per pair at 1, 8 and 32 tasks.
//! - **Sharing.** 50 orgs (30 a minute each, together 1,500) share an app
//!   limit of 600 in any rolling minute for five simulated minutes, each
//!   org's worker coming back at its denial's `retry_at`: calls over the
//!   limit in any trailing minute, and the share of the allowance used.

use super::uuid_like;
use metered::core::{ManualClock, SharedClock, SystemClock, Timestamp};
use metered::quota::{Admission, Call, Limits, Quota, QuotaKey, QuotaStore};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Requests;

/// Org limits under an app-wide level of `app` (TOML of its windows).
fn limits(org: &str, app: &str) -> Limits {
    let text = format!("max_concurrent = 64\n{org}\n[app_wide]\nmax_concurrent = 1000\n{app}");
    let limits: Limits = toml::from_str(&text).expect("bench limits");
    limits.validate().expect("valid bench limits");
    limits
}

pub async fn section(dynamodb_url: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("metered-bench-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let stores = super::quota_stores(&dir, dynamodb_url).await?;
    for (name, store, requests) in &stores {
        println!("\nThe app-wide level on {name}");
        for (shape, app) in [
            ("fixed minute", "per_minute = 2000000000"),
            (
                "rolling minute",
                "windows = [{ calls = 2000000000, every = \"1m\", rolling = true }]",
            ),
        ] {
            for tasks in [1usize, 8, 32] {
                hot_item(store.clone(), requests.clone(), shape, app, tasks).await?;
            }
        }
        sharing(store.clone(), requests.clone()).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `tasks` tasks, each for its own org of one app, acquiring and
/// releasing for a second on the app's item.
async fn hot_item(
    store: Arc<dyn QuotaStore>,
    requests: Requests,
    shape: &str,
    app: &str,
    tasks: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let clock: SharedClock = Arc::new(SystemClock);
    let quota = Quota::new(store, clock);
    let limits = limits("per_day = 2000000000", app);
    let app_name = format!("bench-hot-{}", uuid_like());
    let before = requests();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (quota, limits) = (quota.clone(), limits.clone());
        let key = QuotaKey::new(format!("org-{t}"), &app_name);
        handles.push(tokio::spawn(async move {
            let mut pairs = 0u64;
            while started.elapsed() < Duration::from_secs(1) {
                if let Admission::Granted(p) = quota
                    .acquire(&key, &limits, Call::new("bench", "GET /x"))
                    .await?
                {
                    quota.release(p, 1).await?;
                    pairs += 1;
                }
            }
            Ok::<u64, metered::Error>(pairs)
        }));
    }
    let mut pairs = 0;
    for h in handles {
        pairs += h.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_pair = (requests() - before) as f64 / pairs.max(1) as f64;
    println!(
        "  hot app item, {shape:<14} {tasks:>2} tasks: {:>6.0} pairs/s, {per_pair:.2} store requests per pair",
        pairs as f64 / secs
    );
    Ok(())
}

/// 50 orgs share an app's 600 in any rolling minute for five simulated
/// minutes; each org's worker calls as soon as it may (a call holds its
/// slot 200 ms) and comes back at its denial's `retry_at`.
async fn sharing(
    store: Arc<dyn QuotaStore>,
    requests: Requests,
) -> Result<(), Box<dyn std::error::Error>> {
    const ORGS: usize = 50;
    const LIMIT: usize = 600;
    let start: Timestamp = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let clock = ManualClock::new(start);
    let quota = Quota::new(store, Arc::new(clock.clone()));
    let limits = limits(
        "per_minute = 30",
        "windows = [{ calls = 600, every = \"1m\", rolling = true }]",
    );
    let app_name = format!("bench-share-{}", uuid_like());
    let end = start + chrono::Duration::minutes(5);
    let mut due: BinaryHeap<Reverse<(Timestamp, usize)>> =
        (0..ORGS).map(|o| Reverse((start, o))).collect();
    let mut calls: VecDeque<Timestamp> = VecDeque::new();
    let (mut total, mut worst, mut denials) = (0usize, 0usize, 0u64);
    let before = requests();
    while let Some(Reverse((at, org))) = due.pop() {
        if at >= end {
            break;
        }
        clock.set(at);
        let key = QuotaKey::new(format!("org-{org}"), &app_name);
        match quota
            .acquire(&key, &limits, Call::new("bench", "GET /x"))
            .await?
        {
            Admission::Granted(p) => {
                calls.push_back(at);
                while calls
                    .front()
                    .is_some_and(|c| *c <= at - chrono::Duration::minutes(1))
                {
                    calls.pop_front();
                }
                worst = worst.max(calls.len());
                total += 1;
                clock.set(at + chrono::Duration::milliseconds(200));
                quota.release(p, 1).await?;
                due.push(Reverse((at + chrono::Duration::milliseconds(200), org)));
            }
            Admission::Denied(d) => {
                denials += 1;
                due.push(Reverse((
                    d.retry_at.max(at + chrono::Duration::milliseconds(1)),
                    org,
                )));
            }
        }
    }
    let allowance = LIMIT * 5;
    println!(
        "  50 orgs sharing 600 a rolling minute, 5 simulated minutes: {total} calls of {allowance} allowed ({:.1}% used), at most {worst} in any trailing minute ({} over), {denials} denials, {:.1} store requests per call",
        total as f64 * 100.0 / allowance as f64,
        worst.saturating_sub(LIMIT),
        (requests() - before) as f64 / total.max(1) as f64
    );
    Ok(())
}
