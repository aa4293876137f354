//! `metered usage`: spend, refusals and windows per organization and share,
//! the Data Sources' pushes, and the day's burn as a chart.

use super::{dynamo_table, open_db, scope, Common, Scope};
use crate::chart::{burn_svg, OrgDay};
use crate::system::BoxError;
use chrono::Timelike;
use metered::quota::{QuotaKey, QuotaStore};
use metered::store::RecordStore;
use std::sync::Arc;

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
    /// Also draw the day's burn to this SVG: cumulative calls per org
    /// against its daily limit, stacked by source, restarts marked.
    #[arg(long, value_name = "SVG")]
    chart: Option<std::path::PathBuf>,
}

pub async fn usage(args: UsageArgs) -> Result<(), BoxError> {
    let mut day = args.day.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let (store, records, scope) = open_stores(&args, &mut day).await?;
    let mut rows = Vec::new();
    for org in &scope.orgs {
        rows.extend(store.usage(&QuotaKey::new(org, &scope.app), day).await?);
    }
    // The windows as they stand at the end of the day shown (or now).
    let windows_at = {
        let now = chrono::Utc::now();
        let end = day
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(now, |t| t.and_utc() - chrono::Duration::seconds(1));
        end.min(now)
    };
    let pushes = if args.common.json {
        Vec::new()
    } else {
        datasource_pushes(records.as_ref(), &scope, &rows).await?
    };
    if let Some(path) = &args.chart {
        write_chart(path, day, &scope, &rows)?;
    }
    if args.common.json {
        // The usage rows, as before (scripts read this array); pushes per
        // call are in it under the source `datasource:NAME`.
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_rows(&scope, day, &rows);
    print_pushes(&pushes);
    shares_spent(&scope, &rows);
    windows_now(store.as_ref(), &scope, windows_at).await?;
    let now = chrono::Utc::now();
    for org in &scope.orgs {
        let health = store.health(&QuotaKey::new(org, &scope.app)).await?;
        if health.failures > 0 {
            println!("\nconnection of {org}: {}", health.describe(now));
        }
    }
    Ok(())
}

/// The quota and record stores the usage is read from (DynamoDB with
/// `--dynamodb-table`, else the SQLite file), one client or handle for
/// both, and the scope; a simulation's file moves `day` to its last day.
async fn open_stores(
    args: &UsageArgs,
    day: &mut chrono::NaiveDate,
) -> Result<(Arc<dyn QuotaStore>, Arc<dyn RecordStore>, Scope), BoxError> {
    let opened: (Arc<dyn QuotaStore>, Arc<dyn RecordStore>, Scope) = match &args.dynamodb_table {
        Some(table) => {
            let table = dynamo_table(table).await;
            (
                Arc::new(metered::adapters::aws::DynamoQuota::new(table.clone())),
                Arc::new(metered::adapters::aws::DynamoStore::new(table)),
                scope(&args.common, None).await?,
            )
        }
        None => {
            let db = open_db(&args.common.db)?;
            let scope = scope(&args.common, Some((&db, &args.common.db))).await?;
            // A simulation's "today" is its last simulated day.
            if let (None, Some(until)) = (args.day, crate::system::simulated_until(&db).await?) {
                *day = (until - chrono::Duration::seconds(1)).date_naive();
                eprintln!(
                    "{}: a simulation; its last day is {day} (--day to choose)",
                    args.common.db.display()
                );
            }
            (
                Arc::new(metered::adapters::sqlite::SqliteQuota::new(db.clone())),
                Arc::new(metered::adapters::sqlite::SqliteStore::new(db)),
                scope,
            )
        }
    };
    Ok(opened)
}

/// Each org's burn on `day`, drawn to `path`.
fn write_chart(
    path: &std::path::Path,
    day: chrono::NaiveDate,
    scope: &Scope,
    rows: &[metered::quota::UsageEntry],
) -> Result<(), BoxError> {
    let now = chrono::Utc::now();
    let until = if day == now.date_naive() {
        now.hour()
    } else {
        23
    };
    let orgs: Vec<OrgDay> = scope
        .orgs
        .iter()
        .map(|org| OrgDay::from_usage(org, day, scope.per_day(org), rows, until))
        .collect();
    std::fs::write(path, burn_svg(&orgs)?)
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    eprintln!("chart: {}", path.display());
    Ok(())
}

/// The day's calls and refusals per org, source and endpoint.
fn print_rows(scope: &Scope, day: chrono::NaiveDate, rows: &[metered::quota::UsageEntry]) {
    let budget = match scope.app_per_day() {
        Some(per_day) => per_day.map_or("no daily limit".to_string(), |l| format!("{l} a day")),
        None => "unknown without --config".to_string(),
    };
    let spent: u64 = rows.iter().filter(|u| !u.exempt).map(|u| u.calls).sum();
    println!(
        "Usage of app `{}` on {day} (budget {budget}): {spent} calls",
        scope.app
    );
    println!(
        "  {:<10} {:<36} {:<32} {:>7} {:>8}",
        "org", "source", "endpoint", "calls", "refused"
    );
    for u in rows {
        let exempt = if u.exempt { " (exempt)" } else { "" };
        let refused: u64 = u.hours.values().map(|h| h.denied).sum();
        println!(
            "  {:<10} {:<36} {:<32} {:>7} {:>8}{exempt}",
            u.key.org, u.source, u.endpoint, u.calls, refused
        );
    }
}

/// Each Data Source's pushes, today and ever, and the rows waiting.
fn print_pushes(pushes: &[PushUsage]) {
    if !pushes.is_empty() {
        println!("\nData Source pushes (inserts and deletes together, flushed on an interval)");
        println!(
            "  {:<10} {:<20} {:>10} {:>12} {:>13} {:>13} {:>8}",
            "org", "data source", "pushes", "rows/push", "pushes ever", "rows/push ever", "waiting"
        );
        for p in pushes {
            println!(
                "  {:<10} {:<20} {:>10} {:>12} {:>13} {:>13.1} {:>8}",
                p.org,
                p.datasource,
                p.pushes_today,
                p.rows_per_push_today
                    .map_or("-".to_string(), |r| format!("{r:.1}")),
                p.pushes_ever,
                p.rows_per_push_ever,
                p.waiting
            );
        }
    }
}

/// With `[app.limits.shares]`, each org's calls and refusals per share
/// (a source's kind is the part of its name before `:`).
fn shares_spent(scope: &Scope, rows: &[metered::quota::UsageEntry]) {
    let mut header = false;
    for org in &scope.orgs {
        let Some(limits) = scope.limits(org).filter(|l| l.has_shares()) else {
            continue;
        };
        if !header {
            println!("\nShares ([app.limits.shares]; % of every window)");
            println!(
                "  {:<10} {:<20} {:>8} {:>5} {:>7} {:>8}",
                "org", "kind", "reserve", "cap", "calls", "refused"
            );
            header = true;
        }
        for (kind, share) in &limits.shares {
            let mine = rows.iter().filter(|u| {
                u.key.org == *org && !u.exempt && metered::quota::share::kind_of(&u.source) == kind
            });
            let (calls, refused) = mine.fold((0u64, 0u64), |(c, r), u| {
                (
                    c + u.calls,
                    r + u.hours.values().map(|h| h.denied).sum::<u64>(),
                )
            });
            println!(
                "  {:<10} {:<20} {:>7}% {:>4}% {:>7} {:>8}",
                org, kind, share.reserve_percent, share.cap_percent, calls, refused
            );
        }
    }
}

/// Each org's windows at `at`, the fullest named: which policy binds (and,
/// with `[app.limits.app_wide]`, the app's level shared by every org).
async fn windows_now(
    store: &dyn QuotaStore,
    scope: &Scope,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), BoxError> {
    let mut lines = Vec::new();
    let mut app_level = None;
    for org in &scope.orgs {
        let Some(limits) = scope.limits(org) else {
            return Ok(());
        };
        let key = QuotaKey::new(org, &scope.app);
        let state = store.state(&key, &limits, at).await?;
        lines.push((org.clone(), limits.fill(&state, at)));
        if let (None, Some(app)) = (&app_level, &limits.app_wide) {
            let state = store.state(&key.app_level(), app, at).await?;
            app_level = Some(app.fill(&state, at));
        }
    }
    println!(
        "\nWindows at {} (the fullest binds first)",
        at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let show = |who: &str, fills: &[metered::quota::WindowFill]| {
        let parts: Vec<String> = fills
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mark = if i == 0 && f.used > 0 {
                    " <- tightest"
                } else {
                    ""
                };
                format!(
                    "{} {} of {} ({:.0}%){mark}",
                    f.kind,
                    f.used,
                    f.limit,
                    f.share() * 100.0
                )
            })
            .collect();
        println!("  {who:<10} {}", parts.join(", "));
    };
    for (org, fills) in &lines {
        show(org, fills);
    }
    if let Some(fills) = &app_level {
        show("app-wide", fills);
    }
    Ok(())
}

/// One org's Data Source as `metered usage` shows it.
#[derive(Debug)]
struct PushUsage {
    org: String,
    datasource: String,
    /// Push calls on the day asked for.
    pushes_today: u64,
    /// Rows per push that day, when every push of the day is still
    /// counted by the outbox (its totals are all-time).
    rows_per_push_today: Option<f64>,
    pushes_ever: u64,
    rows_per_push_ever: f64,
    /// Rows in the outbox waiting for the next flush.
    waiting: u64,
}

/// Pushes per org and Data Source: the day's calls (usage, source
/// `datasource:NAME`) beside the outbox's all-time counts. Data Sources are
/// those the config names (`--config`), else those usage shows.
async fn datasource_pushes(
    store: &dyn RecordStore,
    scope: &Scope,
    usage: &[metered::quota::UsageEntry],
) -> Result<Vec<PushUsage>, BoxError> {
    let mut names: std::collections::BTreeSet<String> = usage
        .iter()
        .filter_map(|u| u.source.strip_prefix("datasource:").map(str::to_string))
        .collect();
    if let Some(c) = &scope.config {
        names.extend(c.datasource_names());
        // Hosted Data Sources are never pushed: their rows are served, not waiting.
        names.retain(|n| c.datasource(n).map_or(true, |d| !d.hosted()));
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
        for ds in &names {
            let state = store.outbox_state(&key, ds).await?;
            let waiting = store.pending_count(&key, ds).await?;
            let today: u64 = usage
                .iter()
                .filter(|u| u.key.org == *org && u.source == format!("datasource:{ds}"))
                .map(|u| u.calls)
                .sum();
            if today == 0 && state.pushes == 0 && waiting == 0 {
                continue;
            }
            let ratio = |rows: u64, pushes: u64| {
                if pushes == 0 {
                    0.0
                } else {
                    rows as f64 / pushes as f64
                }
            };
            out.push(PushUsage {
                org: org.clone(),
                datasource: ds.clone(),
                pushes_today: today,
                rows_per_push_today: (today > 0 && today == state.pushes)
                    .then(|| ratio(state.rows_pushed, state.pushes)),
                pushes_ever: state.pushes,
                rows_per_push_ever: ratio(state.rows_pushed, state.pushes),
                waiting,
            });
        }
    }
    Ok(out)
}
