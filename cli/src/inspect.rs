//! `metered usage`, `metered records`, `metered jobs`, `metered quarantine`:
//! what the local database (or DynamoDB) says happened.

use crate::chart::{burn_svg, OrgDay};
use crate::system::{default_db, load_config, BoxError};
use chrono::Timelike;
use metered::adapters::sqlite::Db;
use metered::jobs::envelope::{JobEnvelope, JobKind};
use metered::quota::{QuotaKey, QuotaStore};
use metered::store::RecordStore;
use metered::AppConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Common {
    /// The app config, for the app name, organizations and budget. Without
    /// it the app and its organizations are read from the database (the one
    /// app it holds, or the one --app names).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The app to read when the database holds several (default: the only
    /// one it holds; with a DynamoDB table, the bundled example's).
    #[arg(long)]
    app: Option<String>,
    /// The SQLite database a `metered run` or `metered demo --db` wrote.
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
    /// Organization (default: every organization of the app).
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
    /// Also draw the day's burn to this SVG: cumulative calls per org
    /// against its daily limit, stacked by source, restarts marked.
    #[arg(long, value_name = "SVG")]
    chart: Option<std::path::PathBuf>,
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

/// The record store a command reads (DynamoDB when a table is named, else
/// the SQLite file) and the app and orgs to read in it.
async fn store_and_scope(
    common: &Common,
    dynamodb_table: Option<&str>,
) -> Result<(Arc<dyn RecordStore>, Scope), BoxError> {
    Ok(match dynamodb_table {
        Some(table) => (
            Arc::new(metered::adapters::aws::store::DynamoStore::new(
                dynamo_table(table).await,
            )),
            scope(common, None).await?,
        ),
        None => {
            let db = open_db(&common.db)?;
            let scope = scope(common, Some((&db, &common.db))).await?;
            (
                Arc::new(metered::adapters::sqlite::store::SqliteStore::new(db)),
                scope,
            )
        }
    })
}

fn open_db(path: &Path) -> Result<Db, BoxError> {
    if !path.exists() {
        return Err(format!(
            "{}: no database here; run `metered run` or `metered demo --db {}` first, or pass --db",
            path.display(),
            path.display()
        )
        .into());
    }
    // Inspecting only reads: a database this user may not write (another
    // user's, a read-only disk, a copy from a server) is opened read-only.
    match Db::open(path) {
        Ok(db) => Ok(db),
        Err(write_error) => Db::open_read_only(path).map_err(|_| write_error.into()),
    }
}

/// Which app and organizations a command reads, and its config when known.
struct Scope {
    app: String,
    orgs: Vec<String>,
    /// From --config, or the bundled example when its app is the one read.
    config: Option<AppConfig>,
    /// The limits the database's last run of the app ran under (read when
    /// no --config is given): they win over the bundled example's.
    ran_under: Option<crate::system::RanUnder>,
}

impl Scope {
    /// An organization's daily limit: from --config, else from what the
    /// database recorded, else from the bundled example.
    fn per_day(&self, org: &str) -> Option<u32> {
        match &self.ran_under {
            Some(r) => r.per_day(org),
            None => self.config.as_ref().and_then(|c| c.limits_for(org).per_day),
        }
    }

    /// An organization's limits, the same way (None without a config or a
    /// recorded run).
    fn limits(&self, org: &str) -> Option<metered::Limits> {
        match (&self.ran_under, &self.config) {
            (Some(r), _) => Some(r.orgs.get(org).unwrap_or(&r.app).clone()),
            (None, Some(c)) => Some(c.limits_for(org)),
            (None, None) => None,
        }
    }

    /// The app's daily limit, the same way.
    fn app_per_day(&self) -> Option<Option<u32>> {
        match (&self.ran_under, &self.config) {
            (Some(r), _) => Some(r.app.per_day),
            (None, Some(c)) => Some(c.app.limits.per_day),
            (None, None) => None,
        }
    }
}

fn listed(apps: &BTreeMap<String, BTreeSet<String>>) -> String {
    apps.keys()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn empty(db_path: &Path) -> BoxError {
    let p = db_path.display();
    format!("{p}: holds no app's data yet; run `metered run --db {p}` (or `metered demo --db {p}`) first").into()
}

/// The app and organizations to read: from `--config` when given (noting
/// when the database holds nothing of that app); else from the SQLite
/// database itself, which knows the apps and orgs it holds — so a
/// database written with `--config my-app.toml` is read as `my-app`
/// without repeating the flag. `db` is `None` for a DynamoDB table, whose
/// apps cannot be listed without a scan: there `--app` (default: the
/// bundled example's) and `--org` or the example's orgs name them.
async fn scope(common: &Common, db: Option<(&Db, &Path)>) -> Result<Scope, BoxError> {
    let pick_orgs = |all: Vec<String>| match &common.org {
        Some(o) => vec![o.clone()],
        None => all,
    };
    if let Some(path) = &common.config {
        let config = load_config(Some(path))?;
        let app = config.app.name.clone();
        if let Some(other) = common.app.as_ref().filter(|a| **a != app) {
            return Err(format!(
                "--app `{other}` is not the app of {} (`{app}`); pass one or the other",
                path.display()
            )
            .into());
        }
        if let Some((db, db_path)) = db {
            let apps = db.apps().await?;
            if !apps.is_empty() && !apps.contains_key(&app) {
                eprintln!(
                    "note: {} holds no data of app `{app}` (from {}); it holds {}",
                    db_path.display(),
                    path.display(),
                    listed(&apps)
                );
            }
        }
        let orgs = pick_orgs(config.connections.iter().map(|c| c.org.clone()).collect());
        return Ok(Scope {
            app,
            orgs,
            config: Some(config),
            ran_under: None,
        });
    }
    let example = load_config(None)?;
    let Some((db, db_path)) = db else {
        let app = common.app.clone().unwrap_or(example.app.name.clone());
        let is_example = app == example.app.name;
        if !is_example && common.org.is_none() {
            return Err(format!(
                "app `{app}`: pass --org (or --config): a DynamoDB table does not list its organizations without a scan"
            )
            .into());
        }
        let orgs = pick_orgs(example.connections.iter().map(|c| c.org.clone()).collect());
        return Ok(Scope {
            app,
            orgs,
            config: is_example.then_some(example),
            ran_under: None,
        });
    };
    let apps = db.apps().await?;
    let (app, orgs) = match &common.app {
        Some(app) => match apps.get(app) {
            Some(orgs) => (app.clone(), orgs.clone()),
            None if apps.is_empty() => return Err(empty(db_path)),
            None => {
                return Err(format!(
                    "{}: holds no data of app `{app}`; it holds {}",
                    db_path.display(),
                    listed(&apps)
                )
                .into())
            }
        },
        None => {
            let mut it = apps.iter();
            match (it.next(), it.next()) {
                (None, _) => return Err(empty(db_path)),
                (Some((app, orgs)), None) => (app.clone(), orgs.clone()),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{}: holds data of several apps ({}); pass --app NAME or --config FILE",
                        db_path.display(),
                        listed(&apps)
                    )
                    .into())
                }
            }
        }
    };
    eprintln!(
        "app `{app}`, orgs {} (as {} holds them; --app, --org or --config to choose)",
        orgs.iter().cloned().collect::<Vec<_>>().join(", "),
        db_path.display()
    );
    let config = (app == example.app.name).then_some(example);
    let ran_under = crate::system::RanUnder::read(db, &app).await?;
    Ok(Scope {
        app,
        orgs: pick_orgs(orgs.into_iter().collect()),
        config,
        ran_under,
    })
}

pub async fn usage(args: UsageArgs) -> Result<(), BoxError> {
    let mut day = args.day.unwrap_or_else(|| chrono::Utc::now().date_naive());
    // One client (or one database handle) for both: usage and the outboxes.
    let (store, records, scope): (Arc<dyn QuotaStore>, Arc<dyn RecordStore>, Scope) = match &args
        .dynamodb_table
    {
        Some(table) => {
            let table = dynamo_table(table).await;
            (
                Arc::new(metered::adapters::aws::quota::DynamoQuota::new(
                    table.clone(),
                )),
                Arc::new(metered::adapters::aws::store::DynamoStore::new(table)),
                scope(&args.common, None).await?,
            )
        }
        None => {
            let db = open_db(&args.common.db)?;
            let scope = scope(&args.common, Some((&db, &args.common.db))).await?;
            // A simulation's "today" is its last simulated day.
            if let (None, Some(until)) = (args.day, crate::system::simulated_until(&db).await?) {
                day = (until - chrono::Duration::seconds(1)).date_naive();
                eprintln!(
                    "{}: a simulation; its last day is {day} (--day to choose)",
                    args.common.db.display()
                );
            }
            (
                Arc::new(metered::adapters::sqlite::quota::SqliteQuota::new(
                    db.clone(),
                )),
                Arc::new(metered::adapters::sqlite::store::SqliteStore::new(db)),
                scope,
            )
        }
    };
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
        let now = chrono::Utc::now();
        let until = if day == now.date_naive() {
            now.hour()
        } else {
            23
        };
        let orgs: Vec<OrgDay> = scope
            .orgs
            .iter()
            .map(|org| OrgDay::from_usage(org, day, scope.per_day(org), &rows, until))
            .collect();
        std::fs::write(path, burn_svg(&orgs)?)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        eprintln!("chart: {}", path.display());
    }
    if args.common.json {
        // The usage rows, as before (scripts read this array); pushes per
        // call are in it under the source `datasource:NAME`.
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
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
    for u in &rows {
        let exempt = if u.exempt { " (exempt)" } else { "" };
        let refused: u64 = u.hours.values().map(|h| h.denied).sum();
        println!(
            "  {:<10} {:<36} {:<32} {:>7} {:>8}{exempt}",
            u.key.org, u.source, u.endpoint, u.calls, refused
        );
    }
    if !pushes.is_empty() {
        println!("\nData Source pushes (inserts and deletes together, flushed on an interval)");
        println!(
            "  {:<10} {:<20} {:>10} {:>12} {:>13} {:>13} {:>8}",
            "org", "data source", "pushes", "rows/push", "pushes ever", "rows/push ever", "waiting"
        );
        for p in &pushes {
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

pub async fn records(args: RecordsArgs) -> Result<(), BoxError> {
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    if let Some(config) = &scope.config {
        config.record_type(&args.record_type)?;
    }
    let mut all = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
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
    if all.is_empty() {
        println!(
            "no `{}` records of app `{}` ({})",
            args.record_type,
            scope.app,
            scope.orgs.join(", ")
        );
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
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    let mut all = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
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
    let clock: metered::SharedClock = Arc::new(metered::SystemClock);
    let mut out = Vec::new();
    // The (org, app) of every waiting job: their connections' health.
    let mut connections = std::collections::BTreeSet::new();
    for (kind, q) in metered::edge::local::local_queues(&db, &clock) {
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
        for dead in metered::jobs::queue::JobQueue::dead_letters(&*q, 10_000).await? {
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
    // Quarantined records are work that will not happen by itself: say so.
    if let Ok(scope) = scope(&args.common, Some((&db, &args.common.db))).await {
        let store = metered::adapters::sqlite::store::SqliteStore::new(db.clone());
        let mut n = 0;
        for org in &scope.orgs {
            n += store
                .quarantined(&QuotaKey::new(org, &scope.app), 1_000)
                .await?
                .len();
        }
        if n > 0 {
            println!("{n} record(s) quarantined; see `metered quarantine`");
        }
    }
    // A paused connection's jobs wait for it: say which and why.
    let now = chrono::Utc::now();
    let quota = metered::adapters::sqlite::quota::SqliteQuota::new(db.clone());
    for (org, app) in &connections {
        let health = metered::quota::QuotaStore::health(&quota, &QuotaKey::new(org, app)).await?;
        if health.paused_at(now) {
            println!(
                "connection of {org} {}; its jobs wait for it (`metered connections --resume` after fixing the credential)",
                health.describe(now)
            );
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    // Counts first: with thousands waiting, the groups are what one reads.
    let mut groups: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for j in &out {
        *groups
            .entry((j.state, j.kind.as_str(), j.reason.as_deref().unwrap_or("-")))
            .or_default() += 1;
    }
    println!("  {:<8} {:<24} {:>6}  reason", "state", "kind", "jobs");
    for ((state, kind, reason), n) in &groups {
        println!("  {state:<8} {kind:<24} {n:>6}  {reason}");
    }
    if args.limit == 0 {
        return Ok(());
    }
    out.sort_by(|a, b| (a.state, a.not_before).cmp(&(b.state, b.not_before)));
    println!();
    println!(
        "  {:<7} {:<22} {:<10} {:<36} {:<14} {:>3} {:<17} reason",
        "state", "kind", "org", "id", "on", "rst", "not before"
    );
    for j in out.iter().take(args.limit) {
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
    if out.len() > args.limit {
        println!(
            "  … and {} more (--limit, --kind, --org, --reason to narrow; --json for all)",
            out.len() - args.limit
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct OutboxArgs {
    #[command(flatten)]
    common: Common,
    /// Only this Data Source (default: every pushed Data Source of the config).
    #[arg(long)]
    datasource: Option<String>,
    /// Read from this DynamoDB table instead of SQLite (what the deployed
    /// functions write; AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
    /// Most refused rows listed per Data Source and organization.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Puts this refused row back to wait for the next flush, after the
    /// data or the platform was fixed (repeat for several); a row written
    /// again since keeps its newer version.
    #[arg(long, value_name = "ID", conflicts_with_all = ["retry_all", "drop", "drop_all"])]
    retry: Vec<String>,
    /// Every refused row of the Data Source(s) and organization(s) back to waiting.
    #[arg(long, conflicts_with_all = ["drop", "drop_all"])]
    retry_all: bool,
    /// Forgets this refused row: it is never sent (repeat for several).
    #[arg(long, value_name = "ID", conflicts_with = "drop_all")]
    drop: Vec<String>,
    /// Forgets every refused row of the Data Source(s) and organization(s).
    #[arg(long)]
    drop_all: bool,
}

/// `metered outbox`: what waits to be pushed, what is in flight, what the
/// API refused; retry or drop refused rows.
pub async fn outbox(args: OutboxArgs) -> Result<(), BoxError> {
    let (store, scope) = store_and_scope(&args.common, args.dynamodb_table.as_deref()).await?;
    let datasources: Vec<String> = match (&args.datasource, &scope.config) {
        (Some(ds), _) => vec![ds.clone()],
        (None, Some(config)) => config
            .datasource_names()
            .into_iter()
            .filter(|n| config.datasource(n).is_ok_and(|d| !d.hosted()))
            .collect(),
        (None, None) => {
            return Err("pass --datasource NAME (or --config): the database alone does not say which Data Sources the app pushes to".into())
        }
    };
    let now = chrono::Utc::now();
    let mut report = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
        for ds in &datasources {
            let touched = if args.retry_all || !args.retry.is_empty() {
                let ids = (!args.retry_all).then_some(&args.retry[..]);
                Some((
                    "back to waiting",
                    store.retry_refused(&key, ds, ids, now).await?,
                ))
            } else if args.drop_all || !args.drop.is_empty() {
                let ids = (!args.drop_all).then_some(&args.drop[..]);
                Some(("dropped", store.drop_refused(&key, ds, ids).await?))
            } else {
                None
            };
            let state = store.outbox_state(&key, ds).await?;
            let pending = store.pending_count(&key, ds).await?;
            let refused = store.refused_rows(&key, ds, args.limit).await?;
            report.push((org.clone(), ds.clone(), touched, state, pending, refused));
        }
    }
    if args.common.json {
        let out: Vec<_> = report
            .iter()
            .map(|(org, ds, touched, state, pending, refused)| {
                serde_json::json!({
                    "org": org,
                    "datasource": ds,
                    "changed": touched.map(|(what, n)| serde_json::json!({"what": what, "rows": n})),
                    "waiting": pending,
                    "in_flight": state.inflight.as_ref().map(|c| serde_json::json!({"seq": c.seq, "rows": c.rows.len()})),
                    "searching_for_refused_row": state.probe,
                    "pushes": state.pushes,
                    "rows_pushed": state.rows_pushed,
                    "last_flush": state.last_flush,
                    "refused": refused,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (org, ds, touched, state, pending, refused) in &report {
        if let Some((what, n)) = touched {
            println!("{org} {ds}: {n} refused row(s) {what}");
        }
        let inflight = state.inflight.as_ref().map_or("none".to_string(), |c| {
            format!("chunk {} of {} rows", c.seq, c.rows.len())
        });
        println!(
            "{org:<10} {ds:<16} waiting {pending:>6}  in flight: {inflight}  pushed {} rows in {} calls{}",
            state.rows_pushed,
            state.pushes,
            match &state.probe {
                Some(p) => format!("  (finding a refused row: chunks of {})", p.rows),
                None => String::new(),
            }
        );
        for r in refused {
            println!(
                "    refused {}  {}  {}",
                r.refused_at.format("%Y-%m-%d %H:%M"),
                r.id,
                r.reason
            );
        }
        if !refused.is_empty() && touched.is_none() {
            println!("    (metered outbox --datasource {ds} --org {org} --retry ID | --retry-all | --drop ID | --drop-all)");
        }
    }
    if report.is_empty() {
        println!("no Data Sources to show");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    common: Common,
    /// Read from (and resume on) this DynamoDB table instead of SQLite
    /// (AWS_ENDPOINT_URL for DynamoDB Local).
    #[arg(long)]
    dynamodb_table: Option<String>,
    /// Lifts the pause of the organization(s) at once (after the credential
    /// was fixed): forgets the failures and the org's block. Jobs waiting
    /// for the pause come back at the time they were given; scheduled
    /// syncs start at once.
    #[arg(long)]
    resume: bool,
}

/// `metered connections`: each organization's connection health (ok,
/// failing, or paused with the API's reason), and `--resume`.
pub async fn connections(args: ConnectionsArgs) -> Result<(), BoxError> {
    let (store, scope): (Arc<dyn QuotaStore>, Scope) = match &args.dynamodb_table {
        Some(table) => (
            Arc::new(metered::adapters::aws::quota::DynamoQuota::new(
                dynamo_table(table).await,
            )),
            scope(&args.common, None).await?,
        ),
        None => {
            let db = open_db(&args.common.db)?;
            let scope = scope(&args.common, Some((&db, &args.common.db))).await?;
            (
                Arc::new(metered::adapters::sqlite::quota::SqliteQuota::new(db)),
                scope,
            )
        }
    };
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for org in &scope.orgs {
        let key = QuotaKey::new(org, &scope.app);
        let before = store.health(&key).await?;
        if args.resume {
            store.resume(&key).await?;
        }
        let health = store.health(&key).await?;
        out.push((org.clone(), before, health));
    }
    if args.common.json {
        let rows: Vec<_> = out
            .iter()
            .map(|(org, before, h)| {
                serde_json::json!({
                    "org": org,
                    "paused": h.paused_at(now),
                    "health": h,
                    "state": h.describe(now),
                    "resumed": args.resume && before.failures > 0,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (org, before, h) in &out {
        if args.resume && before.failures > 0 {
            println!("{org:<10} resumed (was: {})", before.describe(now));
        } else {
            println!("{org:<10} {}", h.describe(now));
        }
    }
    if out.is_empty() {
        println!("no organizations to show");
    }
    Ok(())
}
