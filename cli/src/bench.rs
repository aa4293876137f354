//! `metered bench`: figures for the quota and restart paths. Prints
//! latencies and store round trips measured here, not asserted anywhere.
//!
//! Round trips are counted where they happen: by the SQLite handle (one per
//! transaction) and by SDK interceptors on the DynamoDB and SQS clients (one
//! per HTTP request sent, retries included).

use async_trait::async_trait;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use metered::adapters::aws::queue::SqsQueue;
use metered::adapters::aws::quota::DynamoQuota;
use metered::adapters::aws::Table;
use metered::adapters::sqlite::queue::SqliteQueue;
use metered::adapters::sqlite::quota::SqliteQuota;
use metered::adapters::sqlite::Db;
use metered::core::clock::{SharedClock, SystemClock};
use metered::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use metered::jobs::queue::JobQueue;
use metered::jobs::runtime::{JobContext, JobHandler, JobRuntime, RestartPolicy};
use metered::quota::{Acquire, Admission, Call, Limits, Quota, QuotaKey, QuotaStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Acquire/release pairs per measurement on SQLite.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Also measure DynamoDB at this endpoint (e.g. DynamoDB Local, http://127.0.0.1:8000).
    #[arg(long, env = "METERED_BENCH_DYNAMODB_URL")]
    dynamodb_url: Option<String>,
    /// SQS endpoint for the denied-job figure on AWS (e.g. ministack, http://127.0.0.1:4566).
    #[arg(long, env = "METERED_BENCH_SQS_URL")]
    sqs_url: Option<String>,
    /// Calls per connector measurement (against the in-process simulator).
    #[arg(long, default_value_t = 6_000)]
    connector_calls: u32,
    /// Acquire/release pairs per measurement on DynamoDB.
    #[arg(long, default_value_t = 1_000)]
    aws_iterations: u32,
}

/// Counts requests an SDK client sends.
#[derive(Debug, Default, Clone)]
struct Counter(Arc<AtomicU64>);

impl Counter {
    fn get(&self) -> u64 {
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

struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&mut self, p: f64) -> f64 {
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
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
            .acquire(&job.quota_key(), &self.limits, Call::new("bench", "GET /x"))
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

fn uuid_like() -> String {
    format!(
        "{:x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

fn row(name: &str, value: String) {
    println!("  {name:<52} {value}");
}

/// Calls through the connector against the simulator on loopback: bare, and
/// through the SQLite quota, to show what the quota adds per call.
async fn connector_section(n: u32) -> Result<(), Box<dyn std::error::Error>> {
    use metered::connector::{Connector, ListRequest, Metered};
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            customers: 20,
            daily_budget: u64::MAX,
            ..Default::default()
        },
        clock.clone(),
    );
    let server = metered_sim::serve(sim, "127.0.0.1:0".parse()?).await?;
    let app = Arc::new(metered::config::app::AppConfig::parse(
        &metered_sim::app_config(&server.base_url()),
    )?);
    let client = metered::connector::http::http_client(&app.app.timeouts)?;
    let connector: Arc<dyn Connector> = Arc::new(metered::connector::http::HttpConnector::new(
        app.clone(),
        client,
        Some(metered::connector::secrets::Secret::new("bench-key")),
        clock.clone(),
    )?);
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    println!(
        "\nConnector against the simulator on loopback (20 records per call, no added latency)"
    );
    let mut bare = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        let c = Instant::now();
        connector.list(&req).await?;
        bare.push(c.elapsed());
    }
    let bare_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let db =
        Db::open(std::env::temp_dir().join(format!("metered-bench-conn-{}.sqlite", uuid_like())))?;
    let quota = Quota::new(Arc::new(SqliteQuota::new(db)), clock.clone());
    let limits = Limits::new(Some(u32::MAX / 2), None, None, 3)?;
    let metered = Metered::new(
        connector.clone(),
        quota.clone(),
        QuotaKey::new("bench", "sim"),
        limits,
        "bench",
    );
    let mut with_quota = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        let c = Instant::now();
        metered.list(&req).await?;
        with_quota.push(c.elapsed());
    }
    let quota_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (m, req) = (metered.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while done < n / 3 {
                match m.list(&req).await {
                    Ok(_) => done += 1,
                    Err(metered::connector::CallError::Denied(_)) => tokio::task::yield_now().await,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let concurrent_rate = f64::from(n / 3 * 3) / t.elapsed().as_secs_f64();
    quota.flush_usage().await?;
    let (mut bare, mut with_quota) = (Latencies(bare), Latencies(with_quota));
    row(
        "calls per second, connector alone (1 task)",
        format!("{bare_rate:.0}"),
    );
    row(
        "calls per second, connector + SQLite quota (1 task)",
        format!("{quota_rate:.0}"),
    );
    row(
        "calls per second, connector + SQLite quota (3 tasks)",
        format!("{concurrent_rate:.0}"),
    );
    row(
        "call latency median, alone / with quota",
        format!("{:.3} ms / {:.3} ms", bare.pct(0.5), with_quota.pct(0.5)),
    );
    row(
        "quota overhead per call (median difference)",
        format!("{:.3} ms", with_quota.pct(0.5) - bare.pct(0.5)),
    );
    Ok(())
}

fn manual_now(clock: &metered::core::clock::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use metered::core::clock::Clock;
    clock.now()
}

/// The reference run: 10,000 invoices referencing 2,000 customers,
/// pages of 200, bulk lookups of 50, on SQLite against the simulator.
async fn sync_section() -> Result<(), Box<dyn std::error::Error>> {
    use metered::config::app::AppConfig;
    use metered::config::sync::{
        CompleteTransferSettings, ConnectionConfig, LookupPolicy, PkLookupSettings, StormGuard,
        SyncConfig,
    };
    let manual = metered::core::clock::ManualClock::new(chrono::Utc::now());
    let clock: SharedClock = Arc::new(manual.clone());
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            customers: 2_000,
            invoices: 10_000,
            daily_budget: 100_000,
            ..Default::default()
        },
        clock.clone(),
    );
    let server = metered_sim::serve(sim.clone(), "127.0.0.1:0".parse()?).await?;
    let mut app = AppConfig::parse(&metered_sim::app_config(&server.base_url()))?;
    app.app.limits = Limits::new(Some(100_000), None, None, 3)?;
    app.connections = vec![ConnectionConfig {
        org: "bench".into(),
        secret: None,
        limits: None,
    }];
    app.syncs.insert(
        "invoices".into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: Duration::from_secs(86_400),
            }),
            ..Default::default()
        },
    );
    app.syncs.insert(
        "customers".into(),
        SyncConfig {
            pk_lookup: PkLookupSettings {
                enabled: true,
                policy: LookupPolicy::UnseenOnly,
                storm_guard: StormGuard::Off,
                max_keys_per_call: Some(50),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    app.validate()?;
    let app = Arc::new(app);
    let client = metered::connector::http::http_client(&app.app.timeouts)?;
    let connector: Arc<dyn metered::connector::Connector> =
        Arc::new(metered::connector::http::HttpConnector::new(
            app.clone(),
            client,
            Some(metered::connector::secrets::Secret::new("bench-key")),
            clock.clone(),
        )?);
    let dir = std::env::temp_dir().join(format!("metered-bench-sync-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let db = Db::open(dir.join("store.sqlite"))?;
    let quota_db = Db::open(dir.join("quota.sqlite"))?;
    let runner = metered::edge::local::LocalRunner::new(
        app,
        db.clone(),
        quota_db.clone(),
        clock.clone(),
        [("bench".to_string(), connector)].into(),
    )?;
    let referenced: std::collections::BTreeSet<String> = sim
        .records("invoices")
        .iter()
        .filter_map(|r| r["customer_id"].as_str().map(str::to_string))
        .collect();
    let t = Instant::now();
    metered::handlers::schedule::start_sync(
        &runner.svc,
        "bench",
        JobKind::CompleteTransfer,
        "invoices",
        false,
    )
    .await?;
    let report = runner
        .run_simulated(
            &manual,
            chrono::Utc::now() + chrono::Duration::days(2),
            None,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let stats = sim.stats();
    let list = stats.calls("GET /invoices");
    let bulk = stats.calls("GET /customers (by ids)");
    let min_list = 10_000u64.div_ceil(200);
    let min_bulk = (referenced.len() as u64).div_ceil(50);
    let records = 10_000 + referenced.len() as u64;
    println!("\nReference sync: 10,000 invoices → {} distinct customers, page 200, bulk 50 (SQLite, simulator on loopback)", referenced.len());
    row(
        "complete transfer list calls / minimum",
        format!("{list} / {min_list}"),
    );
    row(
        "pk lookup calls / minimum (unseen_only)",
        format!("{bulk} / {min_bulk}"),
    );
    row(
        "quota round trips per API call",
        format!(
            "{:.3}",
            quota_db.round_trips() as f64 / (list + bulk) as f64
        ),
    );
    row(
        "record-store + queue round trips per API call",
        format!("{:.2}", db.round_trips() as f64 / (list + bulk) as f64),
    );
    row(
        "records synced per second",
        format!(
            "{:.0} ({records} records in {secs:.2} s)",
            records as f64 / secs
        ),
    );
    row(
        "jobs done",
        format!("{:?}, dead-lettered {}", report.done, report.dead_lettered),
    );
    // A second transfer knows the page count from the first.
    manual.advance(chrono::Duration::hours(1));
    let (q0, s0, c0) = (
        quota_db.round_trips(),
        db.round_trips(),
        sim.stats().calls("GET /invoices"),
    );
    let t = Instant::now();
    metered::handlers::schedule::start_sync(
        &runner.svc,
        "bench",
        JobKind::CompleteTransfer,
        "invoices",
        true,
    )
    .await?;
    runner
        .run_simulated(
            &manual,
            manual_now(&manual) + chrono::Duration::days(1),
            None,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let calls = sim.stats().calls("GET /invoices") - c0;
    row(
        "second transfer (unchanged data): list calls",
        format!("{calls}"),
    );
    row(
        "second transfer: quota round trips per API call",
        format!("{:.3}", (quota_db.round_trips() - q0) as f64 / calls as f64),
    );
    row(
        "second transfer: store + queue round trips per API call",
        format!("{:.2}", (db.round_trips() - s0) as f64 / calls as f64),
    );
    row(
        "second transfer: records compared per second",
        format!("{:.0}", 10_000.0 / secs),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
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
    connector_section(args.connector_calls).await?;
    sync_section().await?;

    if let Some(url) = &args.dynamodb_url {
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
    }
    Ok(())
}
