//! The quota and restart paths: acquire/release pairs, reservations,
//! concurrent tasks and the denied job (acquire + re-enqueue).

use super::{row, uuid_like, Args, Latencies};
use async_trait::async_trait;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use metered::adapters::aws::DynamoQuota;
use metered::adapters::aws::SqsQueue;
use metered::adapters::aws::Table;
use metered::adapters::sqlite::Db;
use metered::adapters::sqlite::SqliteQueue;
use metered::adapters::sqlite::SqliteQuota;
use metered::core::{SharedClock, SystemClock};
use metered::jobs::JobQueue;
use metered::jobs::{JobContext, JobHandler, JobRuntime, RestartPolicy};
use metered::jobs::{JobEnvelope, JobKind, Outcome};
use metered::quota::{Acquire, Admission, Call, Limits, Quota, QuotaKey, QuotaStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Default, Clone)]
pub(super) struct Counter(Arc<AtomicU64>);

impl Counter {
    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "metered-bench-counter"
    }
    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A handler whose only act is to ask the quota once: the denied path.
struct AskOnce {
    quota: Quota,
    limits: Limits,
}

#[async_trait]
impl JobHandler for AskOnce {
    fn name(&self) -> &str {
        "bench"
    }
    fn accepts(&self, kind: JobKind) -> bool {
        kind == JobKind::Spend
    }
    async fn handle(&self, job: &JobEnvelope, _ctx: &JobContext) -> Outcome {
        match self
            .quota
            .acquire(&job.tenant(), &self.limits, Call::new("bench", "GET /x"))
            .await
        {
            Ok(Admission::Denied(d)) => Outcome::denied(&d, None),
            Ok(Admission::Granted(p)) => match self.quota.release(p, 1).await {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::from_error(&e),
            },
            Err(e) => Outcome::from_error(&e),
        }
    }
}

async fn pairs(store: Arc<dyn QuotaStore>, n: u32, cost: u32) -> Result<Latencies, metered::Error> {
    let key = QuotaKey::new(format!("bench-{}", uuid_like()), "app");
    let limits = Limits::new(Some(u32::MAX / 2), None, None, 3)?;
    let now = chrono::Utc::now();
    let mut lat = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let a = store.acquire(&key, &limits, cost, now).await?;
        lat.push(t.elapsed());
        match a {
            Acquire::Granted(g) => store.release(&g, cost).await?,
            Acquire::Denied(d) => {
                return Err(metered::Error::Impossible(format!(
                    "bench budget denied: {d:?}"
                )))
            }
        }
    }
    Ok(Latencies(lat))
}

/// The limit shapes `[app.limits]` can declare, each with room to spare
/// (the figure is the cost of checking, not of waiting).
fn shapes() -> Vec<(&'static str, Limits)> {
    let with = |w: &str| -> Limits {
        let mut l: Limits =
            toml::from_str(&format!("max_concurrent = 8\nwindows = [{w}]")).expect("a bench shape");
        l.per_day = None;
        l
    };
    vec![
        (
            "UTC day (per_day)",
            Limits::new(Some(u32::MAX / 2), None, None, 8).expect("limits"),
        ),
        (
            "10-second window",
            with("{ calls = 2000000000, every = \"10s\" }"),
        ),
        (
            "day in America/Chicago",
            with("{ calls = 2000000000, every = \"1d\", align = \"America/Chicago\" }"),
        ),
        (
            "rolling minute",
            with("{ calls = 2000000000, every = \"1m\", rolling = true }"),
        ),
        (
            "rolling 24 h",
            with("{ calls = 2000000000, every = \"24h\", rolling = true }"),
        ),
        (
            "token bucket",
            toml::from_str(
                "max_concurrent = 8\nbuckets = [{ capacity = 2000000000, refill = 1000000 }]",
            )
            .expect("a bench bucket"),
        ),
    ]
}

/// Per shape: acquire median / p99 over `n` pairs (1 task, the clock
/// moving on a second per pair, so rolling buckets fill as they would),
/// round trips per pair (`trips` reads the adapter's counter), and pairs a
/// second from 8 tasks at once.
async fn shape_rows(
    store: Arc<dyn QuotaStore>,
    n: u32,
    trips: &dyn Fn() -> u64,
    unit: &str,
) -> Result<(), metered::Error> {
    for (name, limits) in shapes() {
        let key = QuotaKey::new(format!("bench-{}", uuid_like()), "app");
        let start = chrono::Utc::now();
        let t0 = trips();
        let mut lat = Vec::with_capacity(n as usize);
        for i in 0..n {
            let now = start + chrono::Duration::seconds(i64::from(i));
            let t = Instant::now();
            let a = store.acquire(&key, &limits, 1, now).await?;
            lat.push(t.elapsed());
            if let Acquire::Granted(g) = a {
                store.release(&g, 1).await?;
            }
        }
        let per_pair = (trips() - t0) as f64 / f64::from(n);
        let mut lat = Latencies(lat);
        let rate = {
            let key = QuotaKey::new(format!("bench-{}", uuid_like()), "app");
            let t = Instant::now();
            let mut handles = Vec::new();
            for _ in 0..8 {
                let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
                handles.push(tokio::spawn(async move {
                    for _ in 0..n / 8 {
                        if let Acquire::Granted(g) =
                            store.acquire(&key, &limits, 1, chrono::Utc::now()).await?
                        {
                            store.release(&g, 1).await?;
                        }
                    }
                    Ok::<_, metered::Error>(())
                }));
            }
            for h in handles {
                h.await
                    .map_err(|e| metered::Error::Impossible(e.to_string()))??;
            }
            f64::from(n / 8 * 8) / t.elapsed().as_secs_f64()
        };
        row(
            &format!("shape: {name}"),
            format!(
                "acquire {:.3} / {:.3} ms (median / p99)   {per_pair:.2} {unit} per pair   {rate:.0} pairs/s (8 tasks)",
                lat.pct(0.5),
                lat.pct(0.99)
            ),
        );
    }
    Ok(())
}

async fn concurrent_pairs(
    store: Arc<dyn QuotaStore>,
    tasks: u32,
    per_task: u32,
) -> Result<f64, metered::Error> {
    let key = QuotaKey::new(format!("bench-{}", uuid_like()), "app");
    let limits = Limits::new(Some(u32::MAX / 2), None, None, tasks)?;
    let now = chrono::Utc::now();
    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                if let Acquire::Granted(g) = store.acquire(&key, &limits, 1, now).await? {
                    store.release(&g, 1).await?;
                }
            }
            Ok::<_, metered::Error>(())
        }));
    }
    for h in handles {
        h.await
            .map_err(|e| metered::Error::Impossible(e.to_string()))??;
    }
    Ok(f64::from(tasks * per_task) / t.elapsed().as_secs_f64())
}

async fn denied_jobs(
    queue: Arc<dyn JobQueue>,
    store: Arc<dyn QuotaStore>,
    n: u32,
) -> Result<Latencies, Box<dyn std::error::Error>> {
    let clock: SharedClock = Arc::new(SystemClock);
    let quota = Quota::new(store.clone(), clock.clone());
    let key = QuotaKey::new(format!("bench-{}", uuid_like()), "app");
    let limits = Limits::seed_example();
    store
        .block_until(&key, chrono::Utc::now() + chrono::Duration::hours(1))
        .await?;
    let handler = AskOnce { quota, limits };
    let runtime = JobRuntime::new(queue, clock.clone(), RestartPolicy::default());
    let body = JobEnvelope::new(
        JobKind::Spend,
        &key.org,
        &key.app,
        serde_json::Value::Null,
        clock.now(),
    )
    .to_body();
    let mut lat = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let s = runtime
            .process(&body, &handler, &JobContext::default())
            .await;
        lat.push(t.elapsed());
        if !s.ack() {
            return Err(format!("denied job was not re-sent: {s:?}").into());
        }
    }
    Ok(Latencies(lat))
}

/// Only the per-shape figures (`bench --shapes`).
pub async fn shapes_only(dynamodb_url: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    println!("Limit shapes on SQLite (embedded, WAL, one process)");
    let dir = std::env::temp_dir().join(format!("metered-bench-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let db = Db::open(dir.join("bench.sqlite"))?;
    let store: Arc<dyn QuotaStore> = Arc::new(SqliteQuota::new(db.clone()));
    {
        let db = db.clone();
        shape_rows(
            store.clone(),
            2_000,
            &move || db.round_trips(),
            "round trips",
        )
        .await?;
    }
    {
        let db = db.clone();
        repeat_denials(store, &move || db.round_trips(), "round trips").await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(url) = dynamodb_url {
        println!("\nLimit shapes on DynamoDB at {url}");
        let (table, count) = counted_table(url).await?;
        let store: Arc<dyn QuotaStore> = Arc::new(DynamoQuota::new(table));
        {
            let count = count.clone();
            shape_rows(store.clone(), 400, &move || count.get(), "requests").await?;
        }
        repeat_denials(store, &move || count.get(), "requests").await?;
    }
    Ok(())
}

/// A fresh bench table at `url`, its client counting every request sent.
pub(super) async fn counted_table(
    url: &str,
) -> Result<(Table, Counter), Box<dyn std::error::Error>> {
    let cfg = metered::adapters::aws::local_sdk_config(url);
    let count = Counter::default();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&cfg)
            .interceptor(count.clone())
            .build(),
    );
    let table = Table::new(ddb, format!("metered-bench-{}", uuid_like()));
    table.create_if_missing().await?;
    Ok((table, count))
}

/// Store requests for ten requests refused within a second by one
/// process (a spent day): the first is asked, the repeats answered from
/// the process's memory of it.
async fn repeat_denials(
    store: Arc<dyn QuotaStore>,
    requests: &(dyn Fn() -> u64 + Send + Sync),
    unit: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let clock: SharedClock = Arc::new(SystemClock);
    let quota = Quota::new(store, clock);
    let key = QuotaKey::new(format!("bench-repeat-{}", uuid_like()), "bench");
    let limits = Limits::new(Some(1), None, None, 3)?;
    let call = || Call::new("bench", "GET /x");
    if let Admission::Granted(p) = quota.acquire(&key, &limits, call()).await? {
        quota.release(p, 1).await?;
    }
    let before = requests();
    let started = Instant::now();
    let mut refused: u32 = 0;
    for _ in 0..10 {
        if let Admission::Denied(_) = quota.acquire(&key, &limits, call()).await? {
            refused += 1;
        }
    }
    let spent = started.elapsed();
    let asked = requests() - before;
    println!(
        "  repeat denials: {refused} refused in {:.2} ms, {asked} store {unit} (the first asked, {} from memory)",
        spent.as_secs_f64() * 1e3,
        refused.saturating_sub(1)
    );
    Ok(())
}

/// The SQLite figures.
pub async fn sqlite(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    println!("SQLite (embedded, WAL, one process)");
    let dir = std::env::temp_dir().join(format!("metered-bench-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let db = Db::open(dir.join("bench.sqlite"))?;
    let store: Arc<dyn QuotaStore> = Arc::new(SqliteQuota::new(db.clone()));
    let rt0 = db.round_trips();
    let t = Instant::now();
    let mut lat = pairs(store.clone(), args.iterations, 1).await?;
    let secs = t.elapsed().as_secs_f64();
    let trips = db.round_trips() - rt0;
    row(
        "acquire latency median / p99",
        format!("{:.3} ms / {:.3} ms", lat.pct(0.5), lat.pct(0.99)),
    );
    row(
        "acquire+release pairs per second (1 task)",
        format!("{:.0}", f64::from(args.iterations) / secs),
    );
    row(
        "store round trips per acquire+release pair",
        format!("{:.2}", trips as f64 / f64::from(args.iterations)),
    );
    let rt0 = db.round_trips();
    let mut lat = pairs(store.clone(), 1_000, 50).await?;
    row(
        "reservation of 50 calls: round trips to acquire",
        format!(
            "{:.2} (median {:.3} ms)",
            (db.round_trips() - rt0) as f64 / 2_000.0,
            lat.pct(0.5)
        ),
    );
    let rate = concurrent_pairs(store.clone(), 8, args.iterations / 8).await?;
    row(
        "acquire+release pairs per second (8 tasks)",
        format!("{rate:.0}"),
    );
    {
        let db = db.clone();
        shape_rows(
            store.clone(),
            2_000,
            &move || db.round_trips(),
            "round trips",
        )
        .await?;
    }
    let queue: Arc<dyn JobQueue> = Arc::new(SqliteQueue::new(
        db.clone(),
        "bench",
        Arc::new(SystemClock),
        5,
    ));
    let rt0 = db.round_trips();
    let mut lat = denied_jobs(queue, store, 2_000).await?;
    row(
        "denied job (acquire + re-enqueue) median / p99",
        format!("{:.3} ms / {:.3} ms", lat.pct(0.5), lat.pct(0.99)),
    );
    row(
        "round trips per denied job (store + queue)",
        format!("{:.2}", (db.round_trips() - rt0) as f64 / 2_000.0),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The DynamoDB (and, with `--sqs-url`, SQS) figures.
pub async fn aws(args: &Args, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!("\nDynamoDB at {url}");
    let cfg = metered::adapters::aws::local_sdk_config(url);
    let ddb_count = Counter::default();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&cfg)
            .interceptor(ddb_count.clone())
            .build(),
    );
    let table = Table::new(ddb, format!("metered-bench-{}", uuid_like()));
    table.create_if_missing().await?;
    let store: Arc<dyn QuotaStore> = Arc::new(DynamoQuota::new(table));
    let c0 = ddb_count.get();
    let t = Instant::now();
    let mut lat = pairs(store.clone(), args.aws_iterations, 1).await?;
    let secs = t.elapsed().as_secs_f64();
    row(
        "acquire latency median / p99",
        format!("{:.3} ms / {:.3} ms", lat.pct(0.5), lat.pct(0.99)),
    );
    row(
        "acquire+release pairs per second (1 task)",
        format!("{:.0}", f64::from(args.aws_iterations) / secs),
    );
    row(
        "requests per acquire+release pair",
        format!(
            "{:.2}",
            (ddb_count.get() - c0) as f64 / f64::from(args.aws_iterations)
        ),
    );
    let c0 = ddb_count.get();
    let _ = pairs(store.clone(), 200, 50).await?;
    row(
        "reservation of 50 calls: requests per acquire+release",
        format!("{:.2}", (ddb_count.get() - c0) as f64 / 200.0),
    );
    let rate = concurrent_pairs(store.clone(), 8, args.aws_iterations / 8).await?;
    row(
        "acquire+release pairs per second (8 tasks)",
        format!("{rate:.0}"),
    );
    {
        let count = ddb_count.clone();
        shape_rows(store.clone(), 400, &move || count.get(), "requests").await?;
    }
    if let Some(sqs_url) = &args.sqs_url {
        let sqs_count = Counter::default();
        // `Intercept` is one trait, re-exported by every SDK crate.
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&cfg)
                .endpoint_url(sqs_url)
                .interceptor(sqs_count.clone())
                .build(),
        );
        let name = format!("metered-bench-{}", uuid_like());
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        let queue: Arc<dyn JobQueue> =
            Arc::new(SqsQueue::new(sqs.clone(), url.clone(), dlq.clone()));
        let (d0, s0) = (ddb_count.get(), sqs_count.get());
        let n = 300;
        let mut lat = denied_jobs(queue, store, n).await?;
        println!("\nDenied job on DynamoDB + SQS at {sqs_url}");
        row(
            "denied job (acquire + re-enqueue) median / p99",
            format!("{:.3} ms / {:.3} ms", lat.pct(0.5), lat.pct(0.99)),
        );
        row(
            "DynamoDB requests / SQS sends per denied job",
            format!(
                "{:.2} / {:.2}",
                (ddb_count.get() - d0) as f64 / f64::from(n),
                (sqs_count.get() - s0) as f64 / f64::from(n)
            ),
        );
        let _ = sqs.delete_queue().queue_url(url).send().await;
        let _ = sqs.delete_queue().queue_url(dlq).send().await;
    }
    Ok(())
}
