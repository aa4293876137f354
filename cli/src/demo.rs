//! `metered demo`: the whole system with zero configuration. The simulated
//! booking app (2,500 calls a day per organization, 3 concurrent) serves the
//! bundled example config's syncs and workflow for one or more simulated
//! days on the embedded SQLite adapter, in seconds; the report says where
//! the budget went, and checks its figures against the API's own counters.

use crate::system::{load_config, BoxError, Options, System};
use chrono::{TimeZone, Utc};
use metered::JobKind;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated days to run.
    #[arg(long, default_value_t = 2)]
    days: u32,
    /// SQLite file to keep (default: in memory). Inspect it afterwards with
    /// `metered usage`, `metered records` and `metered jobs`.
    #[arg(long)]
    db: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Hostile mode: this percentage of API calls fails (500, 502 and 503
    /// without Retry-After, bodies that are not JSON, cut short, dropped
    /// connections). Every record must still arrive; nothing dead-letters.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=50))]
    fail_percent: u32,
    /// Also draw each simulated day's burn to this SVG (cumulative calls
    /// against the daily limit, stacked by source, restarts marked).
    #[arg(long, value_name = "SVG")]
    chart: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let wall = std::time::Instant::now();
    let config = load_config(None)?;
    let start = Utc
        .with_ymd_and_hms(2026, 11, 22, 0, 0, 0)
        .single()
        .ok_or("bad start")?;
    if let Some(path) = &args.db {
        crate::system::fresh_demo_db(path).await?;
    }
    let system = System::build(
        config,
        Options {
            db: args.db.clone(),
            simulated_start: Some(start),
            sim: Some(metered_sim::SimConfig::default()),
            resume: false,
        },
    )
    .await?;
    crate::system::mark_demo_db(&system.runner.db).await?;
    let org = system.config.connections[0].org.clone();
    let budget = system.config.app.limits.per_day.unwrap_or(0);
    let bar = progress_bar(&args, &system, &org, budget);
    let sim = system
        .sim
        .as_ref()
        .ok_or("the demo needs the simulator")?
        .sim
        .clone();
    sim.faults().fail_percent = args.fail_percent;
    let run = system
        .simulate(args.days, |_, r| {
            bar.inc(1);
            bar.set_message(format!(
                "{} API calls, {} jobs done",
                sim.stats().served(),
                r.done.values().sum::<u64>()
            ));
        })
        .await?;
    bar.finish_and_clear();
    let report = Report::gather(&system, &sim, &org, run, args.chart.as_deref()).await?;
    let out = report.json(wall);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        report.print(&org, budget, args.chart.as_deref(), &out);
        println!("Wall time {} ms", wall.elapsed().as_millis());
    }
    // A report that cannot be right is an error, not a printout.
    let wrong = report.wrong(system.config.app.limits.max_concurrent);
    if !wrong.is_empty() {
        return Err(format!("the demo's report does not add up: {}", wrong.join("; ")).into());
    }
    Ok(())
}

/// The simulated hours' progress on stderr (hidden for `--json`).
fn progress_bar(args: &Args, system: &System, org: &str, budget: u32) -> indicatif::ProgressBar {
    if args.json {
        return indicatif::ProgressBar::hidden();
    }
    eprintln!(
        "metered demo: app `{}` for org `{org}`, {} calls/day and {} concurrent, {} simulated day(s)",
        system.config.app.name, budget, system.config.app.limits.max_concurrent, args.days
    );
    let bar = indicatif::ProgressBar::new(u64::from(args.days) * 24);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} simulated hours  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// What the demo found, from metered's records and the API's own counters.
struct Report {
    run: metered::edge::local::RunReport,
    stats: metered_sim::Stats,
    /// Per day: the API's count, metered's, the budget.
    days: BTreeMap<String, serde_json::Value>,
    calls_by_source: BTreeMap<String, u64>,
    usage_total: u64,
    served: u64,
    records: BTreeMap<String, serde_json::Value>,
    datasources: BTreeMap<String, serde_json::Value>,
    hosted: serde_json::Value,
    notes_created: usize,
    gold_invoices_rows: usize,
    failures_injected: serde_json::Value,
    dead: usize,
    waiting: u64,
}

impl Report {
    /// Reads the store, the queues and the simulator after the run; draws
    /// the burn chart to `chart` when asked.
    async fn gather(
        system: &System,
        sim: &metered_sim::Sim,
        org: &str,
        run: metered::edge::local::RunReport,
        chart: Option<&std::path::Path>,
    ) -> Result<Self, BoxError> {
        let svc = &system.runner.svc;
        let quota_key = svc.key(org);
        let key = System::sim_key(org);
        let budget = system.config.app.limits.per_day.unwrap_or(0);
        let stats = sim.stats();
        let mut days = BTreeMap::new();
        let mut calls_by_source: BTreeMap<String, u64> = BTreeMap::new();
        let mut usage_total = 0u64;
        let mut panels = Vec::new();
        for ((k, day), served) in &stats.calls_by_key_day {
            if *k != key {
                continue;
            }
            let d: chrono::NaiveDate = day.parse()?;
            let usage = svc.quota.store().usage(&quota_key, d).await?;
            panels.push(crate::chart::OrgDay::from_usage(
                org,
                d,
                svc.limits(org).per_day,
                &usage,
                23,
            ));
            let recorded: u64 = usage.iter().filter(|u| !u.exempt).map(|u| u.calls).sum();
            usage_total += recorded;
            for u in usage {
                *calls_by_source.entry(u.source).or_default() += u.calls;
            }
            days.insert(
                day.clone(),
                json!({"api_served": served, "usage_recorded": recorded, "budget": budget}),
            );
        }
        if let Some(path) = chart {
            std::fs::write(path, crate::chart::burn_svg(&panels)?)
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
        let mut records = BTreeMap::new();
        for t in system.config.record_types.keys() {
            records.insert(t.clone(), json!({"stored": svc.store.count(&quota_key, t).await?, "in_api": sim.records(t).len()}));
        }
        let (mut dead, mut waiting) = (0, 0);
        for kind in JobKind::QUEUED {
            if let Some(q) = system.runner.queue(kind) {
                dead += metered::jobs::JobQueue::dead_letters(q.as_ref(), 1000)
                    .await?
                    .len();
                waiting += q.len().await?;
            }
        }
        Ok(Self {
            served: stats.calls_by_key.get(&key).copied().unwrap_or(0),
            datasources: outboxes(system, &quota_key).await?,
            hosted: hosted_request(system, &quota_key, sim).await?,
            notes_created: stats.creates_by_idempotency_key.len(),
            gold_invoices_rows: sim.datasource_rows("gold_invoices").len(),
            failures_injected: json!(sim.faults().failed_by_kind.clone()),
            run,
            stats,
            days,
            calls_by_source,
            usage_total,
            records,
            dead,
            waiting,
        })
    }

    /// The report as `--json` prints it.
    fn json(&self, wall: std::time::Instant) -> serde_json::Value {
        json!({
            "days": self.days,
            "calls_by_source": self.calls_by_source,
            "api_calls_served": self.served,
            "usage_recorded": self.usage_total,
            "api_429s": self.stats.rejected_429,
            "max_concurrent_seen_by_api": self.stats.max_concurrent,
            "restarts": self.run.restarts,
            "not_before_hops": self.run.not_before_hops,
            "duplicates_dropped": self.run.duplicates_dropped,
            "jobs_done": self.run.done,
            "records": self.records,
            "actions": {"notes_created": self.notes_created, "datasource_pushes": self.stats.datasource_pushes, "gold_invoices_rows": self.gold_invoices_rows},
            "datasources": self.datasources,
            "hosted": self.hosted,
            "dead_lettered": self.dead,
            "jobs_waiting": self.waiting,
            "api_failures_injected": self.failures_injected,
            "wall_ms": wall.elapsed().as_millis() as u64,
        })
    }

    /// The report for a person.
    fn print(
        &self,
        org: &str,
        budget: u32,
        chart: Option<&std::path::Path>,
        out: &serde_json::Value,
    ) {
        println!("API budget (org {org}, {budget} calls a UTC day)");
        for (day, d) in &self.days {
            println!(
                "  {day}   {:>5} calls served by the API, {:>5} recorded by metered",
                d["api_served"], d["usage_recorded"]
            );
        }
        println!("\nCalls by sync and workflow");
        for (source, calls) in &self.calls_by_source {
            println!("  {source:<40} {calls:>6}");
        }
        println!("\nRecords synced");
        for (t, r) in &self.records {
            println!(
                "  {t:<12} {:>6} stored of {:>6} in the app",
                r["stored"], r["in_api"]
            );
        }
        println!(
            "\nWorkflow `gold_thanks`: {} notes created",
            out["actions"]["notes_created"],
        );
        for (name, d) in &self.datasources {
            println!(
                "Data Source `{name}`: {} pushes carrying {} rows ({:.1} a push; inserts and deletes together, flushed at most every {}s, {} rows a call); {} rows waiting",
                d["pushes"], d["rows_pushed"], d["rows_per_push"].as_f64().unwrap_or(0.0), d["every_secs"], d["max_rows_per_call"], d["rows_waiting"]
            );
        }
        for (name, h) in self.hosted.as_object().into_iter().flatten() {
            println!(
                "Data Source `{name}` (hosted, never pushed): {} rows in the store; Hosted GET as customer {} of {org} → {} with {} row(s), {} API calls",
                h["rows_hosted"], h["customer_id"].as_str().unwrap_or("?"), h["status"], h["rows_served"], h["api_calls_during"]
            );
        }
        println!("\nRestarts (instead of sleeping)");
        if self.run.restarts.is_empty() {
            println!("  none");
        }
        for (reason, n) in grouped_reasons(&self.run.restarts) {
            println!("  {n:>6}  {reason}");
        }
        println!("\nJobs done {:?}; {} waiting for their next run; {} dead-lettered; API 429s: {}; most concurrent requests the API saw: {}", self.run.done, self.waiting, self.dead, self.stats.rejected_429, self.stats.max_concurrent);
        match chart {
            Some(path) => println!("Burn chart: {}", path.display()),
            None => println!(
                "Burn chart: add --chart burn.svg to draw each day's calls against the limit"
            ),
        }
    }

    /// What cannot be right: metered's count and the API's disagree, the
    /// API served nothing, work was dead-lettered, the API saw more calls
    /// at once than the limit, more records stored than the app has.
    fn wrong(&self, max_concurrent: u32) -> Vec<String> {
        let (usage_total, served) = (self.usage_total, self.served);
        let mut wrong = Vec::new();
        if usage_total != served {
            wrong.push(format!(
                "usage recorded {usage_total} calls, the API served {served}"
            ));
        }
        if served == 0 {
            wrong.push("the API served no calls".to_string());
        }
        if self.dead > 0 {
            wrong.push(format!("{} dead letter(s)", self.dead));
        }
        if self.stats.max_concurrent > max_concurrent as usize {
            wrong.push(format!(
                "the API saw {} calls at once, over the limit of {}",
                self.stats.max_concurrent, max_concurrent
            ));
        }
        for (t, r) in &self.records {
            if r["stored"].as_u64() > r["in_api"].as_u64() {
                wrong.push(format!(
                    "{t}: {} stored, more than the {} in the app",
                    r["stored"], r["in_api"]
                ));
            }
        }
        wrong
    }
}

/// Each pushed Data Source's outbox: pushes, rows, and how it flushes.
async fn outboxes(
    system: &System,
    quota_key: &metered::QuotaKey,
) -> Result<BTreeMap<String, serde_json::Value>, BoxError> {
    let store = &system.runner.svc.store;
    let mut datasources = BTreeMap::new();
    for name in system.config.datasource_names() {
        let ds = system.config.datasource(&name)?;
        if ds.hosted() {
            continue; // reported with its Hosted GET request
        }
        let state = store.outbox_state(quota_key, &name).await?;
        datasources.insert(
            name.clone(),
            json!({
                "pushes": state.pushes,
                "rows_pushed": state.rows_pushed,
                "rows_per_push": if state.pushes == 0 { 0.0 } else { state.rows_pushed as f64 / state.pushes as f64 },
                "rows_waiting": store.pending_count(quota_key, &name).await?,
                "every_secs": ds.every.as_secs(),
                "max_rows_per_call": ds.max_rows_per_call,
            }),
        );
    }
    Ok(datasources)
}

/// Each hosted Data Source answers one Hosted GET, as the platform's app
/// would ask it: a user's JWT naming a customer who has rows; the API's
/// own counter is read before and after.
async fn hosted_request(
    system: &crate::system::System,
    key: &metered::QuotaKey,
    sim: &metered_sim::Sim,
) -> Result<serde_json::Value, BoxError> {
    use metered::store::HostedRows;
    use metered::store::RowChange;
    let svc = &system.runner.svc;
    let secret = uuid::Uuid::new_v4().to_string();
    let store = std::sync::Arc::new(metered::adapters::sqlite::SqliteStore::new(
        system.runner.db.clone(),
    ));
    let names: Vec<String> = system
        .config
        .datasources
        .iter()
        .filter(|(_, d)| d.mode == metered::config::DataSourceMode::Hosted)
        .map(|(n, _)| n.clone())
        .collect();
    let secrets = names
        .iter()
        .map(|n| (n.clone(), metered::connector::Secret::new(secret.clone())))
        .collect();
    let service = metered::handlers::HostedService::new(
        &system.config,
        secrets,
        store.clone(),
        svc.clock.clone(),
    )?;
    let mut out = serde_json::Map::new();
    for name in names {
        let rows = store.rows_after(key, &name, None, u32::MAX).await?;
        let hosted = rows
            .iter()
            .filter(|r| matches!(r.change, RowChange::Insert(_)))
            .count();
        let customer = rows.iter().find_map(|r| match &r.change {
            RowChange::Insert(v) => v.get("customer_id").cloned(),
            RowChange::Delete => None,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"org": key.org, "sub": "demo-user", "customer_id": customer, "exp": svc.clock.now().timestamp() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?;
        let before = sim.stats().served() + sim.stats().rejected_429;
        let r = service
            .handle(&metered::handlers::HostedRequest {
                method: "GET".into(),
                path: format!("/datasources/{name}/rows"),
                query: Some("page_size=1000".into()),
                authorization: Some(format!("Bearer {token}")),
                if_none_match: None,
            })
            .await;
        let after = sim.stats().served() + sim.stats().rejected_429;
        let served = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|b| b["rows"].as_array().map(Vec::len))
            .unwrap_or(0);
        out.insert(
            name,
            json!({"rows_hosted": hosted, "customer_id": customer, "status": r.status, "rows_served": served, "api_calls_during": after - before}),
        );
    }
    Ok(out.into())
}

/// Restart reasons that differ only in their numbers ("1 record(s) not
/// stored yet", "200 record(s) not stored yet") counted as one line, the
/// numbers written `N`: most frequent first, then by text. A reader wants
/// to know why jobs waited, not a line per batch size.
pub(crate) fn grouped_reasons(restarts: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, n) in restarts {
        let mut shape = String::with_capacity(reason.len());
        let mut in_number = false;
        for c in reason.chars() {
            if c.is_ascii_digit() {
                if !in_number {
                    shape.push('N');
                }
                in_number = true;
            } else {
                shape.push(c);
                in_number = false;
            }
        }
        *groups.entry(shape).or_default() += n;
    }
    let mut out: Vec<(String, u64)> = groups.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::grouped_reasons;
    use std::collections::BTreeMap;

    #[test]
    fn reasons_that_differ_in_numbers_are_one_line_most_frequent_first() {
        let restarts: BTreeMap<String, u64> = [
            ("1 record(s) not stored yet; 0 waiting", 2),
            ("200 record(s) not stored yet; 0 waiting", 15),
            ("waiting for the first complete transfer of `classes`", 6),
            ("day limit of 2500 reached", 1),
        ]
        .into_iter()
        .map(|(r, n)| (r.to_string(), n))
        .collect();
        assert_eq!(
            grouped_reasons(&restarts),
            vec![
                ("N record(s) not stored yet; N waiting".to_string(), 17),
                (
                    "waiting for the first complete transfer of `classes`".to_string(),
                    6
                ),
                ("day limit of N reached".to_string(), 1),
            ]
        );
    }
}
