//! `metered`: the system on one machine. Wiring only; each command lives in
//! its own module.

mod bench;
mod chart;
mod demo;
mod dlq;
mod forecast;
mod infra;
mod inspect;
mod plan;
mod quota_demo;
mod run;
mod serve;
mod status;
mod system;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "metered",
    version,
    about = "Spend a third-party API's call budget like money: quotas, restarts, syncs and workflows on one machine.",
    after_help = "Start with `metered demo`. Logs go to stderr at `warn`; set RUST_LOG as for the \
Lambdas (`RUST_LOG=info metered run …`, `RUST_LOG=metered=debug`). Colour only on a terminal, \
never with NO_COLOR set. Each command's --help has examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Zero configuration: the bundled booking app against the simulated API
    /// (2,500 calls a day, 3 concurrent) for simulated days, then a report.
    #[command(after_help = "Examples:
  metered demo                               # two simulated days, a report
  metered demo --days 1 --fail-percent 10    # a hostile API: nothing may be lost
  metered demo --db demo.sqlite --chart burn.svg   # keep the database, draw the burn
  metered usage --db demo.sqlite --day 2026-11-22  # then inspect it")]
    Demo(demo::Args),
    /// The quota library alone: many jobs share one budget on SQLite and
    /// restart on a simulated clock until everything is done.
    QuotaDemo(quota_demo::Args),
    /// The whole system on this machine for an app config: real time (a
    /// status line per org: calls of the budget, in flight, jobs done,
    /// waiting, dead, the next due job; `--json` for events), or
    /// `--simulate DAYS` on a simulated clock (`--sim` serves the app from
    /// the built-in simulator).
    #[command(after_help = "Examples:
  metered run --config my-app.toml                      # real time, against the API
  metered run --config my-app.toml --sim --simulate 3   # three simulated days against the simulator
  metered run --config my-app.toml --sim --simulate 1   # again: continues a day further
  RUST_LOG=info metered run --config my-app.toml 2> run.log")]
    Run(run::RunArgs),
    /// Forecasts calls per day and hour for each sync and workflow from the
    /// config and expected volumes, flags limits, shows remedies, draws a chart.
    #[command(after_help = "Examples:
  metered plan                                          # the bundled example
  metered plan --config my-app.toml --volumes my-volumes.toml --chart plan.svg
  metered plan --config my-app.toml --volumes v.toml --db .metered/metered.sqlite
  metered plan --config my-app.toml --volumes v.toml --warn-only --json | jq .warnings
Exit status: 0 within the limits, 3 when a forecast exceeds one (unless --warn-only), 2 for a bad config.")]
    Plan(plan::Args),
    /// Who spent the budget: calls by organization, source and endpoint.
    #[command(after_help = "Examples:
  metered usage                                  # today, in .metered/metered.sqlite
  metered usage --db .metered/simulated.sqlite   # a simulation's last day
  metered usage --day 2026-11-22 --chart burn.svg
  metered usage --dynamodb-table metered --org acme --json")]
    Usage(inspect::UsageArgs),
    /// What got synced: records of a type with first seen, last synced, last looked up.
    Records(inspect::RecordsArgs),
    /// Jobs waiting (with not_before and why they restarted) and dead
    /// letters: counts by kind and reason, then one line per job.
    Jobs(inspect::JobsArgs),
    /// Records set aside instead of failing their page or workflow (no id,
    /// over 400 KB, missing a field an action needs), with the reason.
    Quarantine(inspect::QuarantineArgs),
    /// Data Source outboxes: rows waiting to be pushed, the chunk in flight,
    /// rows the API refused (with its reason); `retry` or `drop` those.
    Outbox(inspect::OutboxArgs),
    /// Connection health per organization: ok, failing, or paused after
    /// repeated 401/403 (its jobs wait, nothing is dead-lettered);
    /// `--resume` lifts a pause after the credential was fixed.
    Connections(inspect::ConnectionsArgs),
    /// Dead letters: list, show one, redrive them to their queue after a fix
    /// (SQLite, or the deployed SQS queues with --sqs).
    Dlq(dlq::Args),
    /// Runs one handler once with a Lambda event JSON (schedule or SQS).
    Invoke(run::InvokeArgs),
    /// Measures the quota, restart, connector and sync paths and prints figures.
    Bench(bench::Args),
    /// Hosted GET on this machine: serves hosted Data Sources' rows per user
    /// (Bearer JWT) from the SQLite store `metered run` writes; no API call.
    Serve(serve::Args),
    /// Creates template.yaml's table and queues on DynamoDB Local and
    /// ministack (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_SQS) and prints
    /// the functions' environment.
    LocalInfra(infra::Args),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    quiet_on_broken_pipe();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `metered records … | head`: the reader went away. Like any Unix tool,
    // stop quietly (a panic with a backtrace and exit 101 before).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Demo(args) => demo::run(args).await,
                Command::QuotaDemo(args) => quota_demo::run(args).await,
                Command::Run(args) => run::run(args).await,
                Command::Plan(args) => plan::run(args).await,
                Command::Usage(args) => inspect::usage(args).await,
                Command::Records(args) => inspect::records(args).await,
                Command::Jobs(args) => inspect::jobs(args).await,
                Command::Quarantine(args) => inspect::quarantine(args).await,
                Command::Outbox(args) => inspect::outbox(args).await,
                Command::Connections(args) => inspect::connections(args).await,
                Command::Dlq(args) => dlq::run(args).await,
                Command::Invoke(args) => run::invoke(args).await,
                Command::Bench(args) => bench::run(args).await,
                Command::LocalInfra(args) => infra::run(args).await,
                Command::Serve(args) => serve::run(args).await,
            }
        })
    }));
    let result = match result {
        Ok(r) => r,
        Err(panic) if is_broken_pipe(panic.as_ref()) => return ExitCode::SUCCESS,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            // Configuration mistakes are the caller's to fix: exit 2, like
            // usage errors; a plan over a limit exits 3 (a CI gate).
            if e.downcast_ref::<plan::OverLimit>().is_some() {
                ExitCode::from(3)
            } else if e
                .downcast_ref::<metered::Error>()
                .is_some_and(|e| matches!(e, metered::Error::Config(_)))
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs to stderr: the level from `RUST_LOG`, as the Lambdas read it
/// (`METERED_LOG`, the old name, still works), `warn` without either;
/// ANSI colour only when stderr is a terminal and `NO_COLOR` is unset, so a
/// log written to a file or a pipe stays plain text.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = ["RUST_LOG", "METERED_LOG"]
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok())
        .unwrap_or_else(|| "warn".into());
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}

/// The message `println!` panics with when stdout is a closed pipe.
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    text.contains("Broken pipe") || text.contains("os error 32")
}

/// A panic hook that keeps a closed stdout quiet and leaves every other
/// panic to the default hook (message and backtrace).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info);
        }
    }));
}
