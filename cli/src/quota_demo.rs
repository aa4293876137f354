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
    /// Calls served on `day` (`YYYY-MM-DD`).
    fn calls_on(&self, day: &str) -> u64 {
        self.per_day
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(day)
            .copied()
            .unwrap_or(0)
    }

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

/// Queues the backlog: `args.jobs` jobs of `args.calls_per_job` calls.
async fn enqueue(
    queue: &SqliteQueue,
    key: &QuotaKey,
    args: &Args,
    now: metered::Timestamp,
) -> Result<(), Box<dyn std::error::Error>> {
    for i in 0..args.jobs {
        let job = JobEnvelope::new(
            JobKind::Spend,
            &key.org,
            &key.app,
            serde_json::json!({ "calls": args.calls_per_job, "name": format!("job-{i:02}") }),
            now,
        );
        queue.send(&job, 0).await?;
    }
    Ok(())
}

/// The calls the quota store recorded on the days the API served any.
async fn recorded(
    quota: &Quota,
    key: &QuotaKey,
    per_day: &BTreeMap<String, u64>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut total = 0;
    for day in per_day.keys() {
        let d: chrono::NaiveDate = day.parse()?;
        total += quota
            .store()
            .usage(key, d)
            .await?
            .iter()
            .map(|u| u.calls)
            .sum::<u64>();
    }
    Ok(total)
}

/// What the runtime settled, by outcome.
#[derive(Default)]
struct Tally {
    done: u64,
    /// Restarts by reason.
    restarts: BTreeMap<String, u64>,
    /// Early arrivals re-sent for the rest of a wait over 900 s.
    wait_hops: u64,
    retries: u64,
}

impl Tally {
    fn count(&mut self, settled: &[Settled]) {
        for s in settled {
            match s {
                Settled::Done => self.done += 1,
                Settled::Restarted { reason, .. } if reason == metered::jobs::NOT_BEFORE_REASON => {
                    self.wait_hops += 1
                }
                Settled::Restarted { reason, .. } => {
                    *self.restarts.entry(reason.clone()).or_default() += 1
                }
                Settled::DeadLettered { .. } | Settled::Skipped { .. } => {}
                Settled::Retry { .. } => self.retries += 1,
            }
        }
    }
}

/// Runs the backlog `args` describes to the end on a simulated clock,
/// telling `progress` each day's line; the report, and whether the
/// budget held with nothing lost.
pub(crate) async fn simulate(
    args: &Args,
    mut progress: impl FnMut(String),
) -> Result<(serde_json::Value, bool), Box<dyn std::error::Error>> {
    let wall = std::time::Instant::now();
    let b = Backlog::new(args)?;
    enqueue(&b.queue, &b.key, args, b.clock.now()).await?;
    let wanted = u64::from(args.jobs) * u64::from(args.calls_per_job);
    if !args.json {
        println!(
            "metered demo: {} jobs × {} calls = {wanted} calls against {} calls/day and {} concurrent (org {})",
            args.jobs, args.calls_per_job, args.per_day, args.max_concurrent, b.key
        );
    }
    let (tally, last_day) = b.run_to_end(args, &mut progress).await?;

    let api = &b.api;
    let per_day = api
        .per_day
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let usage_total = recorded(&b.quota, &b.key, &per_day).await?;
    let refused = b
        .handler
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let report = serde_json::json!({
        "jobs": args.jobs,
        "jobs_done": tally.done,
        "dead_lettered": b.queue.dead_letters(1000).await?.len(),
        "not_before_hops": tally.wait_hops,
        "retries": tally.retries,
        "calls_wanted": wanted,
        "api_calls_served": api.calls.load(Ordering::SeqCst),
        "api_calls_per_day": per_day,
        "usage_recorded": usage_total,
        "max_concurrent_seen_by_api": api.max_in_flight.load(Ordering::SeqCst),
        "restarts": tally.restarts,
        "jobs_ever_refused": refused,
        "simulated_until": b.clock.now().to_rfc3339(),
        "wall_ms": wall.elapsed().as_millis() as u64,
    });
    progress(format!(
        "  {last_day}: {} calls made",
        per_day.get(&last_day.to_string()).copied().unwrap_or(0)
    ));
    let ok = tally.done == u64::from(args.jobs)
        && report["dead_lettered"] == 0
        && api.calls.load(Ordering::SeqCst) == wanted
        && usage_total == wanted
        && api.max_in_flight.load(Ordering::SeqCst) <= args.max_concurrent as usize
        && per_day.values().all(|c| *c <= u64::from(args.per_day));
    Ok((report, ok))
}

/// One org's backlog of spend jobs on SQLite, a fake API and a manual
/// clock that jumps to the next due job.
struct Backlog {
    manual: ManualClock,
    clock: SharedClock,
    quota: Quota,
    queue: Arc<SqliteQueue>,
    api: Arc<FakeApi>,
    handler: SpendHandler,
    runtime: JobRuntime,
    key: QuotaKey,
}

impl Backlog {
    fn new(args: &Args) -> Result<Self, Box<dyn std::error::Error>> {
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
            limits,
            api: api.clone(),
            refused: Default::default(),
        };
        let runtime = JobRuntime::new(queue.clone(), clock.clone(), RestartPolicy::default());
        Ok(Self {
            manual,
            clock,
            quota,
            queue,
            api,
            handler,
            runtime,
            key: QuotaKey::new("acme", "booking-app"),
        })
    }

    /// Pumps the queue until no job is left, jumping the clock over idle
    /// time and telling `progress` each simulated day's line; what was
    /// settled, and the last day.
    async fn run_to_end(
        &self,
        args: &Args,
        progress: &mut impl FnMut(String),
    ) -> Result<(Tally, chrono::NaiveDate), Box<dyn std::error::Error>> {
        let mut tally = Tally::default();
        let mut last_day = self.clock.now().date_naive();
        loop {
            let settled = self.runtime.pump_once(&self.handler, 10, 60, 60).await?;
            self.quota.flush_usage().await?;
            tally.count(&settled);
            if settled.is_empty() {
                match self.queue.next_visible_at().await? {
                    None => return Ok((tally, last_day)),
                    // Nothing due: jump the simulated clock to the next job.
                    Some(at) if at > self.clock.now() => self.manual.set(at),
                    Some(_) => self.manual.advance(Duration::milliseconds(1)),
                }
            }
            let today = self.clock.now().date_naive();
            if today != last_day {
                progress(format!(
                    "  {last_day}: {} calls made, {} of {} jobs done, waiting jobs restart at {} UTC",
                    self.api.calls_on(&last_day.to_string()),
                    tally.done,
                    args.jobs,
                    self.clock.now().format("%Y-%m-%d %H:%M:%S"),
                ));
                last_day = today;
            }
        }
    }
}
