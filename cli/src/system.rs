//! The whole system on this machine, as the commands build it: the app
//! config, the SQLite database, the clock (simulated or real), connectors
//! (to the app's API, or to the built-in simulator), and the local runner.

use metered::adapters::sqlite::Db;
use metered::config::app::AppConfig;
use metered::connector::secrets::Secret;
use metered::connector::Connector;
use metered::core::clock::{ManualClock, SharedClock, SystemClock, Timestamp};
use metered::edge::local::{LocalRunner, RunReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error>;

/// The bundled example app (the README's `metered demo` runs it).
pub const EXAMPLE: &str = include_str!("../examples/booking.toml");
/// The key each organization uses against the built-in simulator.
const SIM_KEY_PREFIX: &str = "sim-key-";

/// Where commands keep their database unless told otherwise.
pub fn default_db() -> PathBuf {
    PathBuf::from(".metered/metered.sqlite")
}

/// Reads an app config file, or the bundled example when `None`.
pub fn load_config(path: Option<&Path>) -> Result<AppConfig, metered::Error> {
    match path {
        Some(p) => AppConfig::load(p),
        None => AppConfig::parse(EXAMPLE),
    }
}

pub struct System {
    pub runner: LocalRunner,
    pub manual: Option<ManualClock>,
    pub clock: SharedClock,
    pub config: Arc<AppConfig>,
    pub sim: Option<metered_sim::SimServer>,
}

pub struct Options {
    pub db: Option<PathBuf>,
    /// Start of a simulated clock; `None` runs on the system clock.
    pub simulated_start: Option<Timestamp>,
    /// Run against the built-in simulator instead of the app's API.
    pub sim: Option<metered_sim::SimConfig>,
}

impl System {
    pub async fn build(mut config: AppConfig, opts: Options) -> Result<Self, BoxError> {
        let manual = opts.simulated_start.map(ManualClock::new);
        let clock: SharedClock = match &manual {
            Some(m) => Arc::new(m.clone()),
            None => Arc::new(SystemClock),
        };
        let mut sim = None;
        let connectors: BTreeMap<String, Arc<dyn Connector>> = match opts.sim {
            Some(sim_config) => {
                let server = metered_sim::serve(
                    metered_sim::Sim::new(sim_config, clock.clone()),
                    "127.0.0.1:0".parse()?,
                )
                .await?;
                config.app.base_url = server.base_url();
                config.validate()?;
                let connectors = metered::handlers::context::http_connectors_with(
                    &Arc::new(config.clone()),
                    clock.clone(),
                    |c| Some(Secret::new(format!("{SIM_KEY_PREFIX}{}", c.org))),
                )?;
                sim = Some(server);
                connectors
            }
            None => {
                metered::handlers::context::http_connectors(
                    &Arc::new(config.clone()),
                    None,
                    clock.clone(),
                )
                .await?
            }
        };
        if config.connections.is_empty() {
            return Err("the config has no [[connections]]: add one per organization (e.g. [[connections]] org = \"acme\")".into());
        }
        let db = match &opts.db {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Db::open(path)?
            }
            None => Db::in_memory()?,
        };
        let config = Arc::new(config);
        let runner = LocalRunner::new(config.clone(), db.clone(), db, clock.clone(), connectors)?;
        Ok(Self {
            runner,
            manual,
            clock,
            config,
            sim,
        })
    }

    /// The simulator's org key for `org`, to read its counters.
    pub fn sim_key(org: &str) -> String {
        format!("{SIM_KEY_PREFIX}{org}")
    }

    /// Runs `days` simulated days hour by hour: the scheduler ticks at the
    /// shortest sync interval (syncs fall due at multiples of their interval
    /// from the start, so each starts exactly when due), and (against the
    /// simulator) records change every hour so recent lookups have something
    /// to find. `progress` is told each hour.
    pub async fn simulate(
        &self,
        days: u32,
        mut progress: impl FnMut(u32, &RunReport),
    ) -> Result<RunReport, BoxError> {
        let manual = self
            .manual
            .as_ref()
            .ok_or("simulate needs a simulated clock")?;
        let shortest = self
            .config
            .syncs
            .values()
            .flat_map(|s| {
                [
                    s.complete_transfer.as_ref().map(|t| t.every),
                    s.recent.as_ref().map(|r| r.every),
                ]
            })
            .flatten()
            .min()
            .unwrap_or(std::time::Duration::from_secs(60))
            .clamp(
                std::time::Duration::from_secs(60),
                std::time::Duration::from_secs(3_600),
            );
        // Each hour's slice restarts the tick grid: exact only for intervals
        // that divide an hour; otherwise tick every minute.
        let tick_secs = if 3_600 % shortest.as_secs() == 0 {
            shortest.as_secs()
        } else {
            60
        };
        let tick = chrono::Duration::seconds(tick_secs as i64);
        let start = self.clock.now();
        let mut total = RunReport::default();
        for hour in 0..days * 24 {
            if let Some(sim) = &self.sim {
                sim.sim.modify("invoices", 8);
                sim.sim.modify("checkins", 6);
                sim.sim.insert("invoices", 2);
                sim.sim.insert("checkins", 4);
            }
            let until = start + chrono::Duration::hours(i64::from(hour) + 1);
            let report = self.runner.run_simulated(manual, until, Some(tick)).await?;
            total.merge(report);
            manual.set(until);
            progress(hour + 1, &total);
        }
        Ok(total)
    }
}
