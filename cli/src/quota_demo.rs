//! `metered quota-demo`: the quota library and restart queue at work, with nothing
//! to configure. Jobs that each need many calls share one organization's
//! budget; every call goes through the quota; a denied job is restarted from
//! its checkpoint at the moment capacity returns; a dispatcher jumps the
//! simulated clock to the next due job instead of waiting.

use async_trait::async_trait;
use chrono::{Duration, TimeZone, Utc};
use metered::adapters::sqlite::Db;
use metered::adapters::sqlite::SqliteQueue;
use metered::adapters::sqlite::SqliteQuota;
use metered::core::{ManualClock, SharedClock};
use metered::jobs::JobQueue;
use metered::jobs::{JobContext, JobHandler, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind, Outcome};
use metered::quota::{Admission, Call, Limits, Quota, QuotaKey};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of jobs sharing the budget.
    #[arg(long, default_value_t = 40)]
    jobs: u32,
    /// Calls each job must make.
    #[arg(long, default_value_t = 100)]
    calls_per_job: u32,
    /// Calls per UTC day of the organization's budget.
    #[arg(long, default_value_t = 2_500)]
    per_day: u32,
    /// Concurrent calls allowed.
    #[arg(long, default_value_t = 3)]
    max_concurrent: u32,
    /// SQLite file to use (default: a fresh in-memory database).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The stand-in for a third-party API: counts what it is asked, and the
/// most calls it saw at once.
#[derive(Default)]
struct FakeApi {
    calls: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    per_day: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl FakeApi {
    async fn call(&self, day: String) {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self
            .per_day
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(day)
            .or_default() += 1;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spends `payload.calls` calls, one at a time, checkpointing how many are
/// done so a restart resumes where the denial stopped it.
struct SpendHandler {
    quota: Quota,
    limits: Limits,
    api: Arc<FakeApi>,
    /// Jobs the quota ever refused, for the wake-ups per refused job.
    refused: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

#[async_trait]
impl JobHandler for SpendHandler {
    fn name(&self) -> &str {
        "demo-spend"
    }
    fn accepts(&self, kind: JobKind) -> bool {
        kind == JobKind::Spend
    }
    async fn handle(&self, job: &JobEnvelope, _ctx: &JobContext) -> Outcome {
        let total = job.payload["calls"].as_u64().unwrap_or(0);
        let mut done = job
            .checkpoint
            .as_ref()
            .and_then(|c| c["done"].as_u64())
            .unwrap_or(0);
        let key = job.tenant();
        while done < total {
            // It knows what is left: a refusal takes a wake turn that size.
            let call = Call::new(
                format!("demo:{}", job.payload["name"].as_str().unwrap_or("job")),
                "GET /records",
            )
            .needing(u32::try_from(total - done).unwrap_or(u32::MAX));
            match self.quota.acquire(&key, &self.limits, call).await {
                Ok(Admission::Granted(permit)) => {
                    self.api
                        .call(self.quota.clock().now().format("%Y-%m-%d").to_string())
                        .await;
                    done += 1;
                    if let Err(e) = self.quota.release(permit, 1).await {
                        return Outcome::from_error(&e);
                    }
                }
                Ok(Admission::Denied(denied)) => {
                    self.refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(job.id.clone());
                    return Outcome::denied(&denied, Some(serde_json::json!({ "done": done })));
                }
                Err(e) => return Outcome::from_error(&e),
            }
        }
        Outcome::Done
    }
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let json = args.json;
    let wall = std::time::Instant::now();
    let (report, ok) = simulate(&args, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&args, &report);
        println!("wall time            {} ms", wall.elapsed().as_millis());
    }
    if !ok {
        return Err("the demo's invariants did not hold (see the report above)".into());
    }
    Ok(())
}

impl Args {
    /// A backlog of `jobs` × `calls_per_job` calls on `per_day` a day and
    /// 3 concurrent, in memory (what `metered bench --storm` runs).
    pub(crate) fn backlog(jobs: u32, calls_per_job: u32, per_day: u32) -> Self {
        Self {
            jobs,
            calls_per_job,
            per_day,
            max_concurrent: 3,
            db: None,
            json: true,
        }
    }
}

/// Wake-ups per refused job in a report: restarts ÷ jobs ever refused.
pub(crate) fn wakeups_per_refused(report: &serde_json::Value) -> (u64, u64) {
    let restarts = report["restarts"]
        .as_object()
        .map_or(0, |r| r.values().filter_map(|n| n.as_u64()).sum());
    (restarts, report["jobs_ever_refused"].as_u64().unwrap_or(0))
}

fn print_summary(args: &Args, report: &serde_json::Value) {
    println!();
    println!(
        "jobs done            {} of {}",
        report["jobs_done"], args.jobs
    );
    println!(
        "calls made           {} (wanted {}; usage recorded {})",
        report["api_calls_served"], report["calls_wanted"], report["usage_recorded"]
    );
    for (day, calls) in report["api_calls_per_day"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let calls = calls.as_u64().unwrap_or(0);
        println!("  {day}         {calls:>5} of {} allowed", args.per_day);
    }
    println!(
        "most calls at once   {} (limit {})",
        report["max_concurrent_seen_by_api"], args.max_concurrent
    );
    let (total, refused) = wakeups_per_refused(report);
    println!(
        "restarts             {total} ({:.2} wake-ups per refused job: {refused} jobs were ever refused)",
        total as f64 / refused.max(1) as f64
    );
    for (reason, n) in report["restarts"].as_object().into_iter().flatten() {
        println!("  {:>6}  {reason}", n.as_u64().unwrap_or(0));
    }
    println!(
        "not_before hops      {} (early arrivals re-sent without work: SQS delays stop at 900 s)",
        report["not_before_hops"]
    );
    println!("dead-lettered        {}", report["dead_lettered"]);
}

/// Runs the backlog `args` describes to the end on a simulated clock,
/// telling `progress` each day's line; the report, and whether the
/// budget held with nothing lost.
pub(crate) async fn simulate(
    args: &Args,
    mut progress: impl FnMut(String),
) -> Result<(serde_json::Value, bool), Box<dyn std::error::Error>> {
    let wall = std::time::Instant::now();
    let start = Utc
        .with_ymd_and_hms(2026, 11, 22, 9, 0, 0)
        .single()
        .ok_or("bad start time")?;
    let manual = ManualClock::new(start);
    let clock: SharedClock = Arc::new(manual.clone());
    let db = match &args.db {
        Some(path) => Db::open(path)?,
        None => Db::in_memory()?,
    };
    let limits = Limits::new(Some(args.per_day), None, None, args.max_concurrent)?;
    let quota = Quota::new(Arc::new(SqliteQuota::new(db.clone())), clock.clone());
    let queue = Arc::new(SqliteQueue::new(db, "demo-jobs", clock.clone(), 5));
    let api = Arc::new(FakeApi::default());
    let handler = SpendHandler {
        quota: quota.clone(),
        limits: limits.clone(),
        api: api.clone(),
        refused: Default::default(),
    };
    let runtime = JobRuntime::new(queue.clone(), clock.clone(), RestartPolicy::default());
    let key = QuotaKey::new("acme", "booking-app");

    for i in 0..args.jobs {
        let job = JobEnvelope::new(
            JobKind::Spend,
            &key.org,
            &key.app,
            serde_json::json!({ "calls": args.calls_per_job, "name": format!("job-{i:02}") }),
            clock.now(),
        );
        queue.send(&job, 0).await?;
    }
    let wanted = u64::from(args.jobs) * u64::from(args.calls_per_job);
    if !args.json {
        println!(
            "metered demo: {} jobs × {} calls = {wanted} calls against {} calls/day and {} concurrent (org {key})",
            args.jobs, args.calls_per_job, args.per_day, args.max_concurrent
        );
    }

    let mut restarts: BTreeMap<String, u64> = BTreeMap::new();
    let mut wait_hops = 0u64;
    let mut done = 0u64;
    let mut retries = 0u64;
    let mut last_day = clock.now().date_naive();
    loop {
        let settled = runtime.pump_once(&handler, 10, 60, 60).await?;
        quota.flush_usage().await?;
        for s in &settled {
            match s {
                Settled::Done => done += 1,
                // Early arrivals re-sent for the rest of a wait over 900 s.
                Settled::Restarted { reason, .. } if reason == metered::jobs::NOT_BEFORE_REASON => {
                    wait_hops += 1
                }
                Settled::Restarted { reason, .. } => {
                    *restarts.entry(reason.clone()).or_default() += 1
                }
                Settled::DeadLettered { .. } | Settled::Skipped { .. } => {}
                Settled::Retry { .. } => retries += 1,
            }
        }
        if settled.is_empty() {
            match queue.next_visible_at().await? {
                None => break,
                Some(at) => {
                    // Nothing due: jump the simulated clock to the next job.
                    if at > clock.now() {
                        manual.set(at);
                    } else {
                        manual.advance(Duration::milliseconds(1));
                    }
                }
            }
        }
        let today = clock.now().date_naive();
        if today != last_day {
            progress(format!(
                "  {last_day}: {} calls made, {done} of {} jobs done, waiting jobs restart at {} UTC",
                api.per_day.lock().unwrap_or_else(|e| e.into_inner()).get(&last_day.to_string()).copied().unwrap_or(0),
                args.jobs,
                clock.now().format("%Y-%m-%d %H:%M:%S"),
            ));
            last_day = today;
        }
    }

    let per_day = api
        .per_day
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut usage = Vec::new();
    for day in per_day.keys() {
        let d: chrono::NaiveDate = day.parse()?;
        usage.extend(quota.store().usage(&key, d).await?);
    }
    let usage_total: u64 = usage.iter().map(|u| u.calls).sum();
    let refused = handler
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let report = serde_json::json!({
        "jobs": args.jobs,
        "jobs_done": done,
        "dead_lettered": queue.dead_letters(1000).await?.len(),
        "not_before_hops": wait_hops,
        "retries": retries,
        "calls_wanted": wanted,
        "api_calls_served": api.calls.load(Ordering::SeqCst),
        "api_calls_per_day": per_day,
        "usage_recorded": usage_total,
        "max_concurrent_seen_by_api": api.max_in_flight.load(Ordering::SeqCst),
        "restarts": restarts,
        "jobs_ever_refused": refused,
        "simulated_until": clock.now().to_rfc3339(),
        "wall_ms": wall.elapsed().as_millis() as u64,
    });
    progress(format!(
        "  {last_day}: {} calls made",
        per_day.get(&last_day.to_string()).copied().unwrap_or(0)
    ));
    let ok = done == u64::from(args.jobs)
        && report["dead_lettered"] == 0
        && api.calls.load(Ordering::SeqCst) == wanted
        && usage_total == wanted
        && api.max_in_flight.load(Ordering::SeqCst) <= args.max_concurrent as usize
        && per_day.values().all(|c| *c <= u64::from(args.per_day));
    Ok((report, ok))
}
