//! `metered bench`: figures for the quota and restart paths, the connector
//! and a reference sync. Prints latencies and store round trips measured
//! here, not asserted anywhere.
//!
//! Round trips are counted where they happen: by the SQLite handle (one per
//! transaction) and by SDK interceptors on the DynamoDB and SQS clients (one
//! per HTTP request sent, retries included).
//!
//! - [`quota`]: acquire/release pairs, reservations, concurrency and the
//!   denied-job path, on SQLite and (with `--dynamodb-url`) DynamoDB + SQS;
//! - [`connector`]: what the quota adds to a call against the simulator;
//! - [`sync`]: the reference transfer with bulk lookups;
//! - [`hosted`]: Hosted GET's requests per second and latency per size;
//! - [`levels`]: the app-wide level's hot item and fifty orgs sharing it;
//! - [`storm`]: actions' admission delay under a lookup storm, without and
//!   with shares, and the wake-ups per refused job.

mod connector;
mod hosted;
mod levels;
mod quota;
mod storm;
mod sync;

use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Acquire/release pairs per measurement on SQLite.
    #[arg(long, default_value_t = 20_000)]
    pub(super) iterations: u32,
    /// Also measure DynamoDB at this endpoint (e.g. DynamoDB Local, http://127.0.0.1:8000).
    #[arg(long, env = "METERED_BENCH_DYNAMODB_URL")]
    pub(super) dynamodb_url: Option<String>,
    /// SQS endpoint for the denied-job figure on AWS (e.g. ministack, http://127.0.0.1:4566).
    #[arg(long, env = "METERED_BENCH_SQS_URL")]
    pub(super) sqs_url: Option<String>,
    /// Calls per connector measurement (against the in-process simulator).
    #[arg(long, default_value_t = 6_000)]
    pub(super) connector_calls: u32,
    /// Acquire/release pairs per measurement on DynamoDB.
    #[arg(long, default_value_t = 1_000)]
    pub(super) aws_iterations: u32,
    /// Only the Hosted GET figures (HTTP on SQLite; the handler on DynamoDB
    /// with --dynamodb-url).
    #[arg(long)]
    pub(super) hosted: bool,
    /// Only the figures per limit shape (fixed, time zone, rolling):
    /// acquire latency and round trips, on SQLite and, with
    /// --dynamodb-url, DynamoDB.
    #[arg(long)]
    pub(super) shapes: bool,
    /// Only the app-wide level's figures: how far one hot app item goes,
    /// and fifty orgs sharing an app's rolling minute.
    #[arg(long)]
    pub(super) levels: bool,
    /// Only the lookup storm: 100 actions' admission delay while 5,000
    /// lookups contend for 300 calls a minute, without and with shares,
    /// and the wake-ups per refused job.
    #[arg(long)]
    pub(super) storm: bool,
}

/// Latencies of one measurement.
pub(super) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(super) fn pct(&mut self, p: f64) -> f64 {
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

pub(super) fn uuid_like() -> String {
    format!(
        "{:x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

/// Counts the store requests made so far.
pub(super) type Requests = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// The quota stores a section measures: SQLite in `dir`, and DynamoDB at
/// `dynamodb_url` when given; each with its name and request counter.
pub(super) async fn quota_stores(
    dir: &std::path::Path,
    dynamodb_url: Option<&str>,
) -> Result<
    Vec<(
        String,
        std::sync::Arc<dyn metered::quota::QuotaStore>,
        Requests,
    )>,
    Box<dyn std::error::Error>,
> {
    use metered::quota::QuotaStore;
    use std::sync::Arc;
    let db = metered::adapters::sqlite::Db::open(dir.join("bench.sqlite"))?;
    let counted = db.clone();
    let mut stores: Vec<(String, Arc<dyn QuotaStore>, Requests)> = vec![(
        "SQLite".to_string(),
        Arc::new(metered::adapters::sqlite::SqliteQuota::new(db)),
        Arc::new(move || counted.round_trips()),
    )];
    if let Some(url) = dynamodb_url {
        let (table, count) = quota::counted_table(url).await?;
        stores.push((
            format!("DynamoDB at {url}"),
            Arc::new(metered::adapters::aws::DynamoQuota::new(table)),
            Arc::new(move || count.get()),
        ));
    }
    Ok(stores)
}

pub(super) fn row(name: &str, value: String) {
    println!("  {name:<52} {value}");
}

pub async fn run(mut args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // An endpoint must be a URL: an empty one (an unset variable expanded
    // on the command line) would make the SDK panic, not say what is wrong.
    for (flag, url) in [
        ("--dynamodb-url", &mut args.dynamodb_url),
        ("--sqs-url", &mut args.sqs_url),
    ] {
        if let Some(u) = url.as_deref() {
            if u.trim().is_empty() {
                *url = None;
                eprintln!("note: {flag} is empty; measuring without it");
            } else if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("{flag}: expected an http(s) URL, got {u:?}").into());
            }
        }
    }
    if args.hosted {
        return hosted::section(args.dynamodb_url.as_deref()).await;
    }
    if args.shapes {
        return quota::shapes_only(args.dynamodb_url.as_deref()).await;
    }
    if args.levels {
        return levels::section(args.dynamodb_url.as_deref()).await;
    }
    if args.storm {
        return storm::section(args.dynamodb_url.as_deref()).await;
    }
    quota::sqlite(&args).await?;
    connector::section(args.connector_calls).await?;
    sync::section().await?;
    if let Some(url) = &args.dynamodb_url {
        quota::aws(&args, url).await?;
    }
    hosted::section(args.dynamodb_url.as_deref()).await?;
    levels::section(args.dynamodb_url.as_deref()).await?;
    storm::section(args.dynamodb_url.as_deref()).await?;
    Ok(())
}
