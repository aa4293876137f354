//! `metered plan`: forecast calls per day and per hour for each sync and
//! workflow, flag what exceeds a limit, show what each remedy would save,
//! and draw the forecast per hour against the limit (SVG).

use crate::chart::forecast_svg;
use crate::forecast::{forecast, Volumes};
use crate::system::{load_config, BoxError};
use std::path::PathBuf;

/// Volumes of the bundled example.
const EXAMPLE_VOLUMES: &str = include_str!("../examples/booking-volumes.toml");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The app config (default: the bundled example).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Expected volumes (TOML: records, changes and new records per day per
    /// type, unseen keys per day, pass rates of workflows). Default: the
    /// bundled example's.
    #[arg(long)]
    volumes: Option<PathBuf>,
    /// Where to write the chart.
    #[arg(long, default_value = "plan.svg")]
    chart: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let config = load_config(args.config.as_deref())?;
    let volumes_text =
        match &args.volumes {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?,
            None if args.config.is_none() => EXAMPLE_VOLUMES.to_string(),
            None => return Err(
                "--volumes is needed with --config (records and changes per day per record type)"
                    .into(),
            ),
        };
    let volumes: Volumes = toml::from_str(&volumes_text).map_err(|e| match &args.volumes {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    })?;
    for t in volumes.record_types.keys() {
        config.record_type(t).map_err(|e| format!("volumes: {e}"))?;
    }
    let f = forecast(&config, &volumes);
    std::fs::write(&args.chart, forecast_svg(&f)?)
        .map_err(|e| format!("{}: cannot write: {e}", args.chart.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(());
    }
    let limit = f
        .limit_per_day
        .map_or("no daily limit".into(), |l| format!("limit {l}"));
    println!(
        "Forecast for app `{}`: {:.0} calls a day ({limit})",
        config.app.name, f.calls_per_day
    );
    for s in &f.sources {
        println!(
            "  {:<36} {:>8.1} a day   {}",
            s.source, s.calls_per_day, s.how
        );
    }
    let peak = f.per_hour.iter().copied().fold(0.0, f64::max);
    println!("  busiest hour: {peak:.0} calls");
    for w in &f.warnings {
        println!("! {w}");
    }
    if !f.remedies.is_empty() {
        println!("\nWhat each remedy would save (calls a day):");
        for r in &f.remedies {
            println!("  {:>8.1}  {}", r.saves_per_day, r.remedy);
        }
    }
    println!("\nChart: {}", args.chart.display());
    Ok(())
}
