//! `metered usage`, `metered records`, `metered jobs`, `metered quarantine`:
//! what the local database (or DynamoDB) says happened.

use crate::system::{default_db, load_config, BoxError};
use metered::adapters::sqlite::Db;
use metered::jobs::envelope::{JobEnvelope, JobKind};
use metered::quota::{QuotaKey, QuotaStore};
use metered::store::RecordStore;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Common {
    /// The app config (default: the bundled example), for the app name and organizations.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The SQLite database a `metered run` or `metered demo --db` wrote.
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
    /// Organization (default: every connection in the config).
    #[arg(long)]
    org: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    common: Common,
    /// UTC day, YYYY-MM-DD (default: today).
    #[arg(long)]
    day: Option<chrono::NaiveDate>,
    /// Read usage from this DynamoDB table instead of SQLite (AWS credentials
    /// and region from the environment; AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RecordsArgs {
    /// Record type, e.g. invoices.
    record_type: String,
    #[command(flatten)]
    common: Common,
    /// Most records to list.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Read from this DynamoDB table instead of SQLite (AWS credentials and
    /// region from the environment; AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct QuarantineArgs {
    #[command(flatten)]
    common: Common,
    /// Most entries to list per organization (newest first).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Read from this DynamoDB table instead of SQLite (what the deployed
    /// functions write; AWS credentials and region from the environment,
    /// AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
}

/// The DynamoDB table named on the command line, with the environment's AWS config.
async fn dynamo_table(name: &str) -> metered::adapters::aws::Table {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    metered::adapters::aws::Table::new(aws_sdk_dynamodb::Client::new(&aws), name)
}

/// The record store a command reads: DynamoDB when a table is named, else
/// the SQLite file.
async fn record_store(
    dynamodb_table: Option<&str>,
    db: &PathBuf,
) -> Result<Arc<dyn RecordStore>, BoxError> {
    Ok(match dynamodb_table {
        Some(table) => Arc::new(metered::adapters::aws::store::DynamoStore::new(
            dynamo_table(table).await,
        )),
        None => Arc::new(metered::adapters::sqlite::store::SqliteStore::new(open_db(
            db,
        )?)),
    })
}

fn open_db(path: &PathBuf) -> Result<Db, BoxError> {
    if !path.exists() {
        return Err(format!(
            "{}: no database here; run `metered run` or `metered demo --db {}` first, or pass --db",
            path.display(),
            path.display()
        )
        .into());
    }
    Ok(Db::open(path)?)
}

fn orgs(common: &Common, config: &metered::config::app::AppConfig) -> Vec<String> {
    match &common.org {
        Some(o) => vec![o.clone()],
        None => config.connections.iter().map(|c| c.org.clone()).collect(),
    }
}

pub async fn usage(args: UsageArgs) -> Result<(), BoxError> {
    let config = load_config(args.common.config.as_deref())?;
    let day = args.day.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let store: Arc<dyn QuotaStore> = match &args.dynamodb_table {
        Some(table) => Arc::new(metered::adapters::aws::quota::DynamoQuota::new(
            dynamo_table(table).await,
        )),
        None => Arc::new(metered::adapters::sqlite::quota::SqliteQuota::new(open_db(
            &args.common.db,
        )?)),
    };
    let mut rows = Vec::new();
    for org in orgs(&args.common, &config) {
        rows.extend(
            store
                .usage(&QuotaKey::new(&org, &config.app.name), day)
                .await?,
        );
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let budget = config
        .app
        .limits
        .per_day
        .map_or("no daily limit".to_string(), |l| format!("{l} a day"));
    let spent: u64 = rows.iter().filter(|u| !u.exempt).map(|u| u.calls).sum();
    println!(
        "Usage of app `{}` on {day} (budget {budget}): {spent} calls",
        config.app.name
    );
    println!(
        "  {:<10} {:<36} {:<32} {:>7}",
        "org", "source", "endpoint", "calls"
    );
    for u in &rows {
        let exempt = if u.exempt { " (exempt)" } else { "" };
        println!(
            "  {:<10} {:<36} {:<32} {:>7}{exempt}",
            u.key.org, u.source, u.endpoint, u.calls
        );
    }
    Ok(())
}

pub async fn records(args: RecordsArgs) -> Result<(), BoxError> {
    let config = load_config(args.common.config.as_deref())?;
    config.record_type(&args.record_type)?;
    let store = record_store(args.dynamodb_table.as_deref(), &args.common.db).await?;
    let mut all = Vec::new();
    for org in orgs(&args.common, &config) {
        let key = QuotaKey::new(&org, &config.app.name);
        for r in store
            .list(&key, &args.record_type, None, args.limit)
            .await?
        {
            all.push((org.clone(), r));
        }
    }
    if args.common.json {
        let out: Vec<_> = all
            .iter()
            .map(|(org, r)| serde_json::json!({"org": org, "record": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let t = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    println!(
        "  {:<10} {:<14} {:<17} {:<17} {:<17} seen",
        "org", "id", "first seen", "last synced", "last looked up"
    );
    for (org, r) in &all {
        println!(
            "  {:<10} {:<14} {:<17} {:<17} {:<17} {}",
            org,
            r.id,
            t(Some(r.first_seen)),
            t(r.last_synced),
            t(r.last_looked_up),
            if r.seen() { "yes" } else { "no (looked for)" }
        );
    }
    Ok(())
}

/// Records set aside (no id, too large, missing a field an action needs),
/// with the reason, per organization.
pub async fn quarantine(args: QuarantineArgs) -> Result<(), BoxError> {
    let config = load_config(args.common.config.as_deref())?;
    let store = record_store(args.dynamodb_table.as_deref(), &args.common.db).await?;
    let mut all = Vec::new();
    for org in orgs(&args.common, &config) {
        let key = QuotaKey::new(&org, &config.app.name);
        for q in store.quarantined(&key, args.limit).await? {
            all.push((org.clone(), q));
        }
    }
    if args.common.json {
        let out: Vec<_> = all
            .iter()
            .map(|(org, q)| serde_json::json!({"org": org, "quarantined": q}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no quarantined records");
    }
    for (org, q) in &all {
        println!(
            "  {org:<10} {} {:<28} {:<16} {}\n             {}\n             record: {}",
            q.at.format("%Y-%m-%d %H:%M"),
            q.source,
            q.record_id.as_deref().unwrap_or("(no id)"),
            q.record_type,
            q.reason,
            q.excerpt
        );
    }
    Ok(())
}

pub async fn jobs(args: Common) -> Result<(), BoxError> {
    let db = open_db(&args.db)?;
    let clock: metered::core::clock::SharedClock = Arc::new(metered::core::clock::SystemClock);
    let mut out = Vec::new();
    for kind in JobKind::QUEUED {
        let q = metered::adapters::sqlite::queue::SqliteQueue::new(
            db.clone(),
            kind.as_str(),
            clock.clone(),
            5,
        );
        for (visible, body) in q.pending().await? {
            let job = JobEnvelope::parse(&body).ok();
            out.push(serde_json::json!({
                "queue": kind.as_str(),
                "visible_at": visible,
                "not_before": job.as_ref().and_then(|j| j.not_before),
                "restarts": job.as_ref().map(|j| j.restarts),
                "reason": job.as_ref().and_then(|j| j.last_reason.clone()),
                "id": job.as_ref().map(|j| j.id.clone()),
            }));
        }
        for dead in metered::jobs::queue::JobQueue::dead_letters(&q, 1000).await? {
            out.push(serde_json::json!({"queue": format!("{}-dlq", kind.as_str()), "reason": dead.reason, "id": dead.message_id}));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no jobs waiting and no dead letters");
    }
    // Quarantined records are work that will not happen by itself: say so.
    if let Ok(config) = load_config(args.config.as_deref()) {
        let store = metered::adapters::sqlite::store::SqliteStore::new(db.clone());
        let mut n = 0;
        for org in orgs(&args, &config) {
            n += store
                .quarantined(&QuotaKey::new(&org, &config.app.name), 1_000)
                .await?
                .len();
        }
        if n > 0 {
            println!("{n} record(s) quarantined; see `metered quarantine`");
        }
    }
    for j in &out {
        println!(
            "  {:<24} not before {:<26} restarts {:<4} {}",
            j["queue"].as_str().unwrap_or_default(),
            j["not_before"]
                .as_str()
                .or(j["visible_at"].as_str())
                .unwrap_or("-"),
            j["restarts"],
            j["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
