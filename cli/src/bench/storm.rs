//! A lookup storm against waiting actions (#30): 5,000 primary-key
//! lookups, each one call, all due at once, and 100 workflow actions that
//! arrive 30 s into the storm, on one org's budget of 300 calls a minute.
//! Every job runs through the real `Quota` facade on a simulated clock and,
//! when refused, comes back at its denial's `retry_at` plus the runtime's
//! own jitter (`RestartPolicy::jitter_secs`), as a queued job would.
//!
//! Printed, without and with `[app.limits.shares]` (actions reserve 40%,
//! lookups capped at 60%): the actions' admission delay (p50, p95, max),
//! when the storm finished, the wake-ups per job that was ever refused
//! (restarts ÷ refused jobs), and the store requests per admitted call.
//! Then 100 actions queued at once under a concurrency cap of 3, polling
//! and with freed slots handed to a line of waiters: when the last was
//! done, the wake-ups per refused job and the queued copies dropped.

use super::uuid_like;
use metered::core::{ManualClock, Timestamp};
use metered::jobs::{JobEnvelope, JobKind};
use metered::jobs::{RestartPolicy, SlotWaiters, SLOT_BACKSTOP_GRACE_SECS};
use metered::quota::{Admission, Call, Limits, Quota, QuotaKey, QuotaStore};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::Requests;

const LOOKUPS: usize = 5_000;
const ACTIONS: usize = 100;

pub async fn section(dynamodb_url: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("metered-bench-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let stores = super::quota_stores(&dir, dynamodb_url).await?;
    for (name, store, requests) in &stores {
        println!("\nA lookup storm ({LOOKUPS} lookups) while {ACTIONS} actions wait, 300 calls a minute, on {name}");
        for (label, shares) in [
            ("no shares", ""),
            (
                "actions reserve 40%, lookups cap 60%",
                "[shares]\nworkflow = { reserve_percent = 40 }\npk-lookup = { cap_percent = 60 }\n",
            ),
        ] {
            storm(store.clone(), requests.clone(), label, shares).await?;
        }
    }
    for (name, store, requests) in &stores {
        println!("\n{ACTIONS} actions queued at once under a concurrency cap of 3 (each call holds its slot 2 s), on {name}");
        slots(store.clone(), requests.clone(), None).await?;
        let line = metered::adapters::sqlite::SqliteStore::new(
            metered::adapters::sqlite::Db::in_memory()?,
        );
        slots(store.clone(), requests.clone(), Some(Arc::new(line))).await?;
    }
    println!("\nA tight budget: 40 jobs × 100 calls, each job saying what it still needs (`metered quota-demo`, SQLite)");
    for per_day in [2_500, 500] {
        let args = crate::quota_demo::Args::backlog(40, 100, per_day);
        let (report, ok) = crate::quota_demo::simulate(&args, |_| {}).await?;
        let (restarts, refused) = crate::quota_demo::wakeups_per_refused(&report);
        println!(
            "  {per_day} calls a day: {} days; {restarts} restarts for {refused} refused jobs = {:.2} wake-ups per refused job; {} not_before hops; invariants held: {ok}",
            report["api_calls_per_day"].as_object().map_or(0, |d| d.len()),
            restarts as f64 / refused.max(1) as f64,
            report["not_before_hops"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// 100 actions due at once, 3 slots, each call 2 s. Without the line, a
/// refused action comes back at its denial's paced `retry_at` plus the
/// runtime's jitter, as a queued job would. With it (what the runtime does
/// when it has `SlotWaiters`), the refused action's queued copy moves to
/// its backstop (`slot_backstop`, 60 s later) and the action is parked in
/// a real line (SQLite, in memory: its requests are not in the figure);
/// each action that ends pops the oldest waiter and runs it at once; a
/// copy of a generation that already ran is dropped, as the ledger drops
/// it. Printed: when the last one was done (the floor is 100 × 2 s / 3 =
/// 67 s), the wake-ups per refused job, the queued copies dropped per
/// refused job, and the quota store's requests per call.
async fn slots(
    store: Arc<dyn QuotaStore>,
    requests: Requests,
    line: Option<Arc<dyn SlotWaiters>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let start: Timestamp = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let clock = ManualClock::new(start);
    let quota = Quota::new(store, Arc::new(clock.clone()));
    let limits: Limits = toml::from_str("per_day = 2500\nmax_concurrent = 3")?;
    let key = QuotaKey::new("org-a", format!("bench-slots-{}", uuid_like()));
    let policy = RestartPolicy::default();
    let mut envelopes: Vec<JobEnvelope> = (0..ACTIONS)
        .map(|_| {
            JobEnvelope::new(
                JobKind::ActionHttp,
                &key.org,
                &key.app,
                serde_json::Value::Null,
                start,
            )
        })
        .collect();
    let index: std::collections::HashMap<String, usize> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.clone(), i))
        .collect();
    // (when, job, generation to run; `None`: release its held permit)
    let mut due: BinaryHeap<Reverse<(Timestamp, usize, Option<u32>)>> =
        (0..ACTIONS).map(|i| Reverse((start, i, Some(0)))).collect();
    let mut held: Vec<Option<metered::quota::Permit>> = (0..ACTIONS).map(|_| None).collect();
    let mut ran: Vec<Option<u32>> = vec![None; ACTIONS];
    let (mut wakeups, mut dropped, mut refused, mut last) =
        (0u64, 0u64, std::collections::BTreeSet::new(), start);
    let before = requests();
    while let Some(Reverse((at, i, run))) = due.pop() {
        clock.set(at);
        let Some(generation) = run else {
            if let Some(p) = held[i].take() {
                quota.release(p, 1).await?;
            }
            last = last.max(at);
            // The job ended having given its slot back: the runtime hands
            // it to the longest waiter.
            if let Some(line) = &line {
                if let Some(next) = line.pop_oldest(&key, at).await? {
                    due.push(Reverse((at, index[&next.id], Some(next.generation))));
                }
            }
            continue;
        };
        if ran[i].is_some_and(|g| g >= generation) {
            dropped += 1; // the ledger's answer: done, or stale
            continue;
        }
        ran[i] = Some(generation);
        if refused.contains(&i) {
            wakeups += 1;
        }
        match quota
            .acquire(&key, &limits, Call::new("workflow:thanks", "POST /notes"))
            .await?
        {
            Admission::Granted(p) => {
                held[i] = Some(p);
                due.push(Reverse((at + chrono::Duration::seconds(2), i, None)));
            }
            Admission::Denied(d) => {
                refused.insert(i);
                let next = &mut envelopes[i];
                next.generation += 1;
                let jitter = chrono::Duration::seconds(i64::from(policy.jitter_secs(next)));
                let mut copy_at = d.retry_at.max(at) + jitter;
                if let Some(line) = &line {
                    copy_at = (copy_at
                        + chrono::Duration::seconds(i64::from(SLOT_BACKSTOP_GRACE_SECS)))
                    .min(at + chrono::Duration::seconds(900));
                    line.park(&key, next, at, copy_at).await?;
                }
                due.push(Reverse((copy_at, i, Some(next.generation))));
            }
        }
    }
    let per_refused = |n: u64| n as f64 / refused.len().max(1) as f64;
    println!(
        "  {}: the last action done after {:.0} s (the floor: 67 s); {:.2} wake-ups per refused job; {:.2} queued copies dropped by the ledger per refused job; {:.2} quota store requests per call",
        if line.is_some() { "freed slots handed to the line" } else { "polling (no line)" },
        (last - start).num_seconds(),
        per_refused(wakeups),
        per_refused(dropped),
        (requests() - before) as f64 / ACTIONS as f64
    );
    Ok(())
}

struct Job {
    arrived: Timestamp,
    action: bool,
    /// The envelope the runtime would restart (its id and generation pick
    /// the jitter).
    envelope: JobEnvelope,
    refused: bool,
}

async fn storm(
    store: Arc<dyn QuotaStore>,
    requests: Requests,
    label: &str,
    shares: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let start: Timestamp = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let clock = ManualClock::new(start);
    let quota = Quota::new(store, Arc::new(clock.clone()));
    let limits: Limits =
        toml::from_str(&format!("per_minute = 300\nmax_concurrent = 64\n{shares}"))?;
    limits.validate()?;
    let key = QuotaKey::new("org-a", format!("bench-storm-{}", uuid_like()));
    let policy = RestartPolicy::default();
    let mut jobs: Vec<Job> = (0..LOOKUPS + ACTIONS)
        .map(|i| {
            let action = i >= LOOKUPS;
            let arrived = if action {
                start + chrono::Duration::seconds(30)
            } else {
                start
            };
            let kind = if action {
                JobKind::ActionHttp
            } else {
                JobKind::PkLookup
            };
            Job {
                arrived,
                action,
                envelope: JobEnvelope::new(kind, "org-a", "bench", serde_json::Value::Null, start),
                refused: false,
            }
        })
        .collect();
    let mut due: BinaryHeap<Reverse<(Timestamp, usize)>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| Reverse((j.arrived, i)))
        .collect();
    let (mut wakeups, mut action_delays, mut storm_done) = (0u64, Vec::new(), start);
    let before = requests();
    while let Some(Reverse((at, i))) = due.pop() {
        clock.set(at);
        let job = &mut jobs[i];
        let source = if job.action {
            "workflow:thanks"
        } else {
            "pk-lookup:customers"
        };
        match quota
            .acquire(&key, &limits, Call::new(source, "GET /x"))
            .await?
        {
            Admission::Granted(p) => {
                quota.release(p, 1).await?;
                if job.action {
                    action_delays.push((at - job.arrived).num_milliseconds() as f64 / 1000.0);
                } else {
                    storm_done = storm_done.max(at);
                }
            }
            Admission::Denied(d) => {
                job.refused = true;
                wakeups += 1;
                job.envelope.generation += 1;
                let jitter =
                    chrono::Duration::seconds(i64::from(policy.jitter_secs(&job.envelope)));
                due.push(Reverse((
                    d.retry_at.max(at + chrono::Duration::milliseconds(1)) + jitter,
                    i,
                )));
            }
        }
    }
    action_delays.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((action_delays.len() as f64 - 1.0) * p).round() as usize;
        action_delays.get(i).copied().unwrap_or(0.0)
    };
    let refused = jobs.iter().filter(|j| j.refused).count().max(1);
    let admitted = (LOOKUPS + ACTIONS) as f64;
    println!(
        "  {label:<38} actions admitted after p50 {:>5.0} s, p95 {:>5.0} s, max {:>5.0} s; storm done at {:>5.1} min; {:.2} wake-ups per refused job; {:.2} store requests per call",
        pct(0.5),
        pct(0.95),
        pct(1.0),
        (storm_done - start).num_seconds() as f64 / 60.0,
        wakeups as f64 / refused as f64,
        (requests() - before) as f64 / admitted
    );
    Ok(())
}
