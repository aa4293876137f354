//! `metered`: the system on one machine. Wiring only; each command lives in
//! its own module.

mod bench;
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "metered",
    version,
    about = "Spend a third-party API's call budget like money: quotas, restarts, syncs and workflows on one machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many jobs share the seeds' budget (2,500 calls a UTC day, 3 concurrent)
    /// on the embedded SQLite adapter; denied work restarts on a simulated
    /// clock until everything is done. Zero configuration.
    Demo(demo::Args),
    /// Measures the quota and restart paths on SQLite, or on DynamoDB + SQS
    /// endpoints (DynamoDB Local and ministack), and prints the figures.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METERED_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
