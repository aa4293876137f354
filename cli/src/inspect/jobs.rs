//! `metered jobs`: waiting jobs and dead letters of the local queues.

use super::{open_db, scope, Common};
use crate::system::BoxError;
use metered::jobs::{JobEnvelope, JobKind};
use metered::store::RecordStore;
use metered::Tenant;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    common: Common,
    /// Only jobs of this kind (complete-transfer, pk-lookup, workflow,
    /// action-http, …).
    #[arg(long, value_parser = parse_kind)]
    kind: Option<JobKind>,
    /// Only jobs whose reason contains this text (e.g. "day limit").
    #[arg(long)]
    reason: Option<String>,
    /// Most jobs listed one per line after the counts (0: counts only).
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub fn parse_kind(s: &str) -> Result<JobKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        let kinds: Vec<&str> = JobKind::QUEUED.iter().map(|k| k.as_str()).collect();
        format!("unknown kind `{s}`; one of {}", kinds.join(", "))
    })
}

/// One waiting or dead-lettered job, as `metered jobs` shows it.
#[derive(Debug, serde::Serialize)]
struct JobLine {
    /// `waiting` or `dead`.
    state: &'static str,
    kind: String,
    org: Option<String>,
    id: Option<String>,
    /// What the job works on: its record type, or its action's workflow.
    detail: Option<String>,
    restarts: Option<u32>,
    /// When it may run next (waiting jobs).
    not_before: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<String>,
}

fn detail(job: &JobEnvelope) -> Option<String> {
    let p = &job.payload;
    ["record_type", "workflow", "datasource"]
        .iter()
        .find_map(|k| p.get(*k).and_then(|v| v.as_str()))
        .map(str::to_string)
}

/// Waiting jobs and dead letters of the local queues, filtered, counted by
/// kind and reason, then listed with org, id, restarts and when they run.
pub async fn jobs(args: JobsArgs) -> Result<(), BoxError> {
    let db = open_db(&args.common.db)?;
    let (out, connections) = collect(&db, &args).await?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        let filtered = args.kind.is_some() || args.reason.is_some() || args.common.org.is_some();
        println!(
            "no jobs waiting and no dead letters{}",
            if filtered { " that match" } else { "" }
        );
    }
    notices(&args, &db, &connections).await?;
    if out.is_empty() {
        return Ok(());
    }
    print_groups(&out);
    if args.limit == 0 {
        return Ok(());
    }
    print_lines(out, args.limit);
    Ok(())
}

/// The connections of waiting jobs, as (org, app).
type Connections = std::collections::BTreeSet<(String, String)>;

/// Every waiting job and dead letter the filters keep, and the connections
/// of the waiting ones.
async fn collect(
    db: &metered::adapters::sqlite::Db,
    args: &JobsArgs,
) -> Result<(Vec<JobLine>, Connections), BoxError> {
    let clock: metered::SharedClock = Arc::new(metered::SystemClock);
    let mut out = Vec::new();
    // The (org, app) of every waiting job: their connections' health.
    let mut connections = Connections::new();
    for (kind, q) in metered::edge::local::local_queues(db, &clock) {
        if args.kind.is_some_and(|k| k != kind) {
            continue;
        }
        for (visible, body) in q.pending().await? {
            let job = JobEnvelope::parse(&body).ok();
            if let Some(j) = &job {
                if args.common.org.as_ref().is_none_or(|o| *o == j.org) {
                    connections.insert((j.org.clone(), j.app.clone()));
                }
            }
            out.push(JobLine {
                state: "waiting",
                kind: kind.as_str().to_string(),
                org: job.as_ref().map(|j| j.org.clone()),
                id: job.as_ref().map(|j| j.id.clone()),
                detail: job.as_ref().and_then(detail),
                restarts: job.as_ref().map(|j| j.restarts),
                not_before: Some(
                    job.as_ref()
                        .and_then(|j| j.not_before)
                        .unwrap_or(visible)
                        .max(visible),
                ),
                reason: job.as_ref().and_then(|j| j.last_reason.clone()),
            });
        }
        for dead in metered::jobs::JobQueue::dead_letters(&*q, 10_000).await? {
            let job = JobEnvelope::parse(&dead.body).ok();
            out.push(JobLine {
                state: "dead",
                kind: kind.as_str().to_string(),
                org: job.as_ref().map(|j| j.org.clone()),
                id: Some(
                    job.as_ref()
                        .map_or(dead.message_id.clone(), |j| j.id.clone()),
                ),
                detail: job.as_ref().and_then(detail),
                restarts: job.as_ref().map(|j| j.restarts),
                not_before: None,
                reason: Some(dead.reason),
            });
        }
    }
    out.retain(|j| {
        args.common
            .org
            .as_ref()
            .is_none_or(|o| j.org.as_ref() == Some(o))
            && args.reason.as_ref().is_none_or(|r| {
                j.reason
                    .as_deref()
                    .is_some_and(|have| have.to_lowercase().contains(&r.to_lowercase()))
            })
    });
    Ok((out, connections))
}

/// What will not happen by itself: quarantined records, and paused
/// connections whose jobs wait for them.
async fn notices(
    args: &JobsArgs,
    db: &metered::adapters::sqlite::Db,
    connections: &Connections,
) -> Result<(), BoxError> {
    // Quarantined records are work that will not happen by itself: say so.
    if let Ok(scope) = scope(&args.common, Some((db, &args.common.db))).await {
        let store = metered::adapters::sqlite::SqliteStore::new(db.clone());
        let mut n = 0;
        for org in &scope.orgs {
            n += store
                .quarantined(&Tenant::new(org, &scope.app), 1_000)
                .await?
                .len();
        }
        if n > 0 {
            println!("{n} record(s) quarantined; see `metered quarantine`");
        }
    }
    // A paused connection's jobs wait for it: say which and why.
    let now = chrono::Utc::now();
    let quota = metered::adapters::sqlite::SqliteQuota::new(db.clone());
    for (org, app) in connections {
        let health = metered::quota::QuotaStore::health(&quota, &Tenant::new(org, app)).await?;
        if health.paused_at(now) {
            println!(
                "connection of {org} {}; its jobs wait for it (`metered connections --resume` after fixing the credential)",
                health.describe(now)
            );
        }
    }
    Ok(())
}

/// Counts first: with thousands waiting, the groups are what one reads.
fn print_groups(out: &[JobLine]) {
    let mut groups: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for j in out {
        *groups
            .entry((j.state, j.kind.as_str(), j.reason.as_deref().unwrap_or("-")))
            .or_default() += 1;
    }
    println!("  {:<8} {:<24} {:>6}  reason", "state", "kind", "jobs");
    for ((state, kind, reason), n) in &groups {
        println!("  {state:<8} {kind:<24} {n:>6}  {reason}");
    }
}

/// The first `limit` jobs, dead letters first, each by when it runs.
fn print_lines(mut out: Vec<JobLine>, limit: usize) {
    out.sort_by(|a, b| (a.state, a.not_before).cmp(&(b.state, b.not_before)));
    println!();
    println!(
        "  {:<7} {:<22} {:<10} {:<36} {:<14} {:>3} {:<17} reason",
        "state", "kind", "org", "id", "on", "rst", "not before"
    );
    for j in out.iter().take(limit) {
        let id = j.id.as_deref().unwrap_or("(unreadable)");
        println!(
            "  {:<7} {:<22} {:<10} {:<36} {:<14} {:>3} {:<17} {}",
            j.state,
            j.kind,
            j.org.as_deref().unwrap_or("-"),
            // Whole: `metered dlq show ID` takes it as printed.
            id,
            j.detail.as_deref().unwrap_or("-"),
            j.restarts.map_or("-".to_string(), |r| r.to_string()),
            j.not_before
                .map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
            j.reason.as_deref().unwrap_or("")
        );
    }
    if out.len() > limit {
        println!(
            "  … and {} more (--limit, --kind, --org, --reason to narrow; --json for all)",
            out.len() - limit
        );
    }
}
