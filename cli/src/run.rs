//! `metered run`: the whole system on one machine against the app's API,
//! in real time or over simulated days; and `metered invoke`: one handler,
//! once, with a Lambda event.

use crate::status::RunStatus;
use crate::system::{default_db, default_sim_db, load_config, BoxError, Options, System};
use metered::jobs::{JobRuntime, RestartPolicy};
use metered::JobKind;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The app config (TOML; see docs/connector.md).
    #[arg(long)]
    config: PathBuf,
    /// Run this many simulated days on a simulated clock instead of real time.
    #[arg(long)]
    simulate: Option<u32>,
    /// Start the simulated clock here (UTC, e.g. 2026-11-22T00:00:00Z)
    /// instead of now (or, in a database that holds a simulation, where it
    /// ended): a start at midnight makes each reported day one simulated
    /// day (day 1, the first load, then the steady days).
    #[arg(long, requires = "simulate", value_name = "RFC3339")]
    start: Option<chrono::DateTime<chrono::Utc>>,
    /// Serve the app from the built-in simulator instead of its real API.
    #[arg(long)]
    sim: bool,
    /// With --sim, a limit the simulated API enforces per org (repeatable),
    /// answered with 429 and Retry-After: `rolling:30/1m`, `fixed:10/10s`,
    /// `fixed:40/1d@6h` (days starting 06:00 UTC), `bucket:40@2/s`, or
    /// across every org `app-rolling:600/1m`, `app-fixed:600/1m`. Try a
    /// config's `[app.limits]` against the shape the API really has.
    #[arg(long = "sim-limit", value_name = "SHAPE", requires = "sim")]
    sim_limits: Vec<metered_sim::Shape>,
    /// With --sim, the calls a day the simulated API allows each org
    /// (default 2,500, the seeds' example).
    #[arg(long, value_name = "CALLS", requires = "sim")]
    sim_daily: Option<u64>,
    /// The SQLite database (queues, records, quota); inspect it with
    /// `metered usage`, `metered jobs`, `metered dlq`. Default:
    /// .metered/metered.sqlite in real time, .metered/simulated.sqlite with
    /// --simulate. A database holds one or the other, never both; a second
    /// simulation in the same database continues where the first ended.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Machine-readable output: the summary of a simulated run, or, in real
    /// time, one JSON status event per change instead of the status line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RunArgs) -> Result<(), BoxError> {
    let config = load_config(Some(&args.config))?;
    let db = args.db.clone().unwrap_or_else(|| match args.simulate {
        Some(_) => default_sim_db(),
        None => default_db(),
    });
    let system = System::build(config, options(&args, &db)).await?;
    match args.simulate {
        None => {
            eprintln!("metered run: app `{}` in real time; Ctrl-C to stop. Inspect with `metered usage`, `metered jobs`.", system.config.app.name);
            real_time(&system, args.json).await
        }
        Some(days) => simulated(&system, &db, days, args.json).await,
    }
}

/// How the system is built for this run: the database, the simulated
/// clock's start and the simulated API's limits.
fn options(args: &RunArgs, db: &Path) -> Options {
    Options {
        db: Some(db.to_path_buf()),
        simulated_start: args
            .simulate
            .map(|_| args.start.unwrap_or_else(chrono::Utc::now)),
        sim: args.sim.then(|| {
            let mut sim = metered_sim::SimConfig {
                shapes: args.sim_limits.clone(),
                ..Default::default()
            };
            if let Some(daily) = args.sim_daily {
                sim.daily_budget = daily;
            }
            sim
        }),
        resume: args.start.is_none(),
    }
}

/// `--simulate DAYS`: runs the days on the simulated clock with a progress
/// bar, then says what each organization spent per day, what the jobs did
/// and what the simulated API saw.
async fn simulated(system: &System, db: &Path, days: u32, json: bool) -> Result<(), BoxError> {
    let start = system.clock.now();
    match system.resumed_from {
        Some(from) => eprintln!(
            "metered run: continuing the simulation in {} from {from}, where the last one there ended ({days} more day(s)); a new --db starts afresh",
            db.display()
        ),
        None => eprintln!(
            "metered run: simulating {days} day(s) from {start} in {}",
            db.display()
        ),
    }
    let bar = indicatif::ProgressBar::new(u64::from(days) * 24);
    let report = system.simulate(days, |_, _| bar.inc(1)).await?;
    bar.finish_and_clear();
    let usage = calls_per_day(system, start, days).await?;
    // What the simulated API saw: the calls it served and refused.
    let api = system.sim.as_ref().map(|s| {
        let stats = s.sim.stats();
        serde_json::json!({
            "served": stats.calls_by_key.values().sum::<u64>(),
            "rejected_429": stats.rejected_429,
            "rejected_by_shape": stats.rejected_by_shape,
        })
    });
    if json {
        let out = serde_json::json!({"calls_per_day": usage, "report": report, "api": api});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Simulated {days} day(s). Calls per organization and day:");
    for (k, v) in &usage {
        println!("  {k}  {v}");
    }
    println!(
        "Jobs done {:?}; dead-lettered {}",
        report.done, report.dead_lettered
    );
    for (reason, n) in crate::demo::grouped_reasons(&report.restarts) {
        println!("  restarted {n:>5}×  {reason}");
    }
    if let Some(api) = &api {
        println!(
            "The simulated API served {} calls and answered {} with 429 ({} for its limits' shapes)",
            api["served"], api["rejected_429"], api["rejected_by_shape"]
        );
    }
    Ok(())
}

/// Budgeted calls per "org day" with any, over the simulated days (calls
/// the budget exempts left out).
async fn calls_per_day(
    system: &System,
    start: metered::Timestamp,
    days: u32,
) -> Result<serde_json::Map<String, serde_json::Value>, BoxError> {
    let mut usage = serde_json::Map::new();
    for org in system.config.connections.iter().map(|c| c.org.clone()) {
        let key = system.runner.svc.key(&org);
        for d in 0..=days {
            let day = (start + chrono::Duration::days(i64::from(d))).date_naive();
            let calls: u64 = system
                .runner
                .svc
                .quota
                .store()
                .usage(&key, day)
                .await?
                .iter()
                .filter(|u| !u.exempt)
                .map(|u| u.calls)
                .sum();
            if calls > 0 {
                usage.insert(format!("{org} {day}"), calls.into());
            }
        }
    }
    Ok(usage)
}

/// Real time: the dispatcher ticks the scheduler and runs what is due,
/// once a second, and shows the status (`crate::status`). Waiting here is
/// waiting for the next due job, not out a limit.
async fn real_time(system: &System, json: bool) -> Result<(), BoxError> {
    use std::io::IsTerminal;
    let orgs: Vec<String> = system
        .config
        .connections
        .iter()
        .map(|c| c.org.clone())
        .collect();
    let manual = metered::ManualClock::new(chrono::Utc::now());
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {wide_msg}")
                .expect("a valid template"),
        );
        // The spinner turns on its own: it shows the run is alive between
        // changes of the line.
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let mut shown: Option<RunStatus> = None;
    loop {
        manual.set(chrono::Utc::now());
        let until = chrono::Utc::now();
        // Runs only what is due now (the manual clock is pinned to now).
        system.runner.run_simulated(&manual, until, None).await?;
        metered::handlers::schedule::tick(&system.runner.svc).await;
        let status = RunStatus::read(&system.runner, &orgs, chrono::Utc::now()).await?;
        let text = match &bar {
            Some(bar) => {
                // The terminal's width less the spinner's: every org and
                // the next job stay in view (the terminal cut them before).
                let width = console::Term::stderr()
                    .size_checked()
                    .map_or(120, |(_, cols)| usize::from(cols));
                bar.set_message(status.fit(width.saturating_sub(3)));
                None
            }
            None if shown.as_ref().is_some_and(|s| s.same_as(&status)) => None,
            None if json => Some(serde_json::to_string(&status)?),
            None => Some(status.line()),
        };
        if let Some(text) = text {
            use std::io::Write;
            // A reader that went away (`| head`) ends the run, quietly.
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
        shown = Some(status);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[derive(clap::Args, Debug)]
pub struct InvokeArgs {
    /// scheduler, complete-transfer, recent-records, pk-lookup, workflow,
    /// action-http or action-datasource-push.
    function: String,
    /// A Lambda event: an EventBridge schedule event for the scheduler, an
    /// SQS event (`sam local generate-event sqs receive-message`) otherwise.
    #[arg(long)]
    event: PathBuf,
    /// The app config (default: the bundled example, served by the simulator).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
}

pub async fn invoke(args: InvokeArgs) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(&args.event)
        .map_err(|e| format!("{}: cannot read: {e}", args.event.display()))?;
    let event: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON: {e}", args.event.display()))?;
    let config = load_config(args.config.as_deref())?;
    let system = System::build(
        config,
        Options {
            db: Some(args.db.clone()),
            simulated_start: None,
            sim: args.config.is_none().then(metered_sim::SimConfig::default),
            resume: false,
        },
    )
    .await?;
    let svc = system.runner.svc.clone();
    if args.function == "scheduler" {
        let out = metered::handlers::schedule::handle(&svc, &event).await?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let kind: JobKind = serde_json::from_value(serde_json::Value::String(args.function.clone()))
        .map_err(|_| format!("unknown function `{}`; expected scheduler, complete-transfer, recent-records, pk-lookup, workflow, action-http or action-datasource-push", args.function))?;
    let sqs: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(event)
        .map_err(|e| format!("{}: not an SQS event: {e}", args.event.display()))?;
    let queue = system
        .runner
        .queue(kind)
        .ok_or("no queue for that function")?
        .clone();
    let runtime = JobRuntime::new(queue, system.clock.clone(), RestartPolicy::default());
    let ledger: std::sync::Arc<dyn metered::jobs::ActionLedger> = std::sync::Arc::new(
        metered::adapters::sqlite::SqliteStore::new(system.runner.db.clone()),
    );
    let router = metered::Router::only(svc, ledger, kind)?;
    let response = metered::edge::lambda::handle_sqs_event(&runtime, sqs, &router, None).await;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(())
}
