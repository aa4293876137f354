//! `metered plan`: forecast calls of day 1 (the first load) and of a steady
//! day, per hour for each sync, workflow and Data Source; flag what exceeds
//! a limit and how long a first-day backlog takes to drain; show what each
//! remedy would save on each; draw day 1 and a steady day against the
//! limits (SVG); exit 3 when a forecast exceeds a limit (`--warn-only` not).

use crate::chart::forecast_svg;
use crate::forecast::{forecast_with, Volumes};
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
    /// A database `metered run` wrote: record types it already holds have
    /// had their first load (no day-1 burst), and keys it holds need no
    /// lookup.
    #[arg(long)]
    db: Option<PathBuf>,
    /// The organization whose store `--db` reads (default: the config's
    /// first connection).
    #[arg(long, requires = "db")]
    org: Option<String>,
    /// Also draw day 1 and a steady day to this SVG: calls so far in the
    /// UTC day against the daily limit, and calls per hour by source.
    #[arg(long, value_name = "SVG")]
    chart: Option<PathBuf>,
    /// Print the forecast as JSON.
    #[arg(long)]
    json: bool,
    /// Exit 0 even when the forecast exceeds a limit (by default it exits
    /// 3, so a CI step can gate a config change on its plan).
    #[arg(long)]
    warn_only: bool,
}

/// The forecast exceeds a limit: `metered` exits 3.
#[derive(Debug)]
pub struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the forecast exceeds a limit (see the warnings); change the config (the remedies say what each saves) or pass --warn-only")
    }
}

impl std::error::Error for OverLimit {}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let config = load_config(args.config.as_deref())?;
    let volumes = volumes(&args, &config)?;
    let known = known_records(&args, &config).await?;
    let f = forecast_with(&config, &volumes, &known);
    if let Some(chart) = &args.chart {
        std::fs::write(chart, forecast_svg(&f)?)
            .map_err(|e| format!("{}: cannot write: {e}", chart.display()))?;
    }
    let verdict = if f.over_limit && !args.warn_only {
        Err(OverLimit.into())
    } else {
        Ok(())
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return verdict;
    }
    print_forecast(&config, &f);
    match &args.chart {
        Some(chart) => println!("\nChart: {}", chart.display()),
        None => println!("\nChart: add --chart plan.svg to draw day 1 and a steady day"),
    }
    verdict
}

/// The records and changes a day per record type: `--volumes`, or the
/// example's with the bundled config; each of a type the config declares.
fn volumes(args: &Args, config: &metered::AppConfig) -> Result<Volumes, BoxError> {
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
    Ok(volumes)
}

/// With `--db`, how many records of each type an org already has (its
/// first load is then partly done).
async fn known_records(
    args: &Args,
    config: &metered::AppConfig,
) -> Result<std::collections::BTreeMap<String, u64>, BoxError> {
    let mut known = std::collections::BTreeMap::new();
    if let Some(path) = &args.db {
        if !path.exists() {
            return Err(format!("{}: no database here (--db)", path.display()).into());
        }
        let db = metered::adapters::sqlite::Db::open(path)?;
        let store = metered::adapters::sqlite::SqliteStore::new(db);
        let org = match &args.org {
            Some(o) => o.clone(),
            None => config.connections.first().map(|c| c.org.clone()).ok_or(
                "--db needs an organization: the config has no [[connections]]; pass --org",
            )?,
        };
        let key = metered::QuotaKey::new(&org, &config.app.name);
        for t in config.record_types.keys() {
            use metered::store::RecordStore;
            known.insert(t.clone(), store.count(&key, t).await?);
        }
    }
    Ok(known)
}

/// The forecast for a person: day 1 and a steady day by source, the
/// busiest hour, the window that binds first, shares, warnings, remedies.
fn print_forecast(config: &metered::AppConfig, f: &crate::forecast::Forecast) {
    let limit = f
        .limit_per_day
        .map_or("no daily limit".into(), |l| format!("limit {l} a day"));
    println!(
        "Forecast for app `{}` ({limit}): day 1 (first load) {:.0} calls, then {:.0} a steady day",
        config.app.name, f.day1_calls, f.calls_per_day
    );
    println!("  {:<36} {:>8} {:>8}   how", "source", "day 1", "steady");
    for d1 in &f.day1_sources {
        let steady = f.sources.iter().find(|s| s.source == d1.source);
        println!(
            "  {:<36} {:>8.1} {:>8.1}   {}",
            d1.source,
            d1.calls_per_day,
            steady.map_or(0.0, |s| s.calls_per_day),
            d1.how
        );
    }
    let peak = |h: &[f64]| {
        h.iter().enumerate().fold(
            (0, 0.0f64),
            |best, (i, c)| if *c > best.1 { (i, *c) } else { best },
        )
    };
    let (h1, c1) = peak(&f.day1_per_hour);
    let (hs, cs) = peak(&f.per_hour);
    println!("  busiest hour: day 1 {c1:.0} calls (hour {h1:02}), steady {cs:.0} (hour {hs:02})");
    for (label, loads) in [("day 1", &f.day1_loads), ("steady", &f.steady_loads)] {
        if let Some(first) = loads.first() {
            println!(
                "  binds first, {label}: the {} (limit {}): {:.0} calls in {} of the {:.0} it allows ({:.0}%)",
                first.window,
                first.limit,
                first.demand,
                first.over,
                first.allows,
                first.load * 100.0
            );
        }
    }
    if !f.shares.is_empty() {
        println!("  shares of the day ([app.limits.shares]):");
        for s in &f.shares {
            println!(
                "    {:<20} reserved {:>6}, at most {:>6}; day 1 {:>7.0}, steady {:>7.0}",
                s.kind, s.reserved, s.most, s.day1_calls, s.steady_calls
            );
        }
    }
    for w in &f.warnings {
        println!("! {w}");
    }
    if !f.remedies.is_empty() {
        println!("\nWhat each remedy would save (calls; negative costs):");
        println!("  {:>8} {:>8}", "day 1", "steady");
        for r in &f.remedies {
            println!(
                "  {:>8.1} {:>8.1}  {}",
                r.saves_day1, r.saves_per_day, r.remedy
            );
        }
    }
}
