//! The whole system on this machine, as the commands build it: the app
//! config, the SQLite database, the clock (simulated or real), connectors
//! (to the app's API, or to the built-in simulator), and the local runner.

use metered::adapters::sqlite::Db;
use metered::connector::Connector;
use metered::connector::Secret;
use metered::core::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
use metered::edge::local::{LocalRunner, RunReport};
use metered::AppConfig;
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

/// Where `metered run --simulate` keeps its database unless told otherwise:
/// never the real-time one (a simulation's clock runs days ahead).
pub fn default_sim_db() -> PathBuf {
    PathBuf::from(".metered/simulated.sqlite")
}

/// The clock a database's work ran on: `real` or `simulated`.
const META_CLOCK: &str = "clock";
/// Where the last simulation in a database ended (RFC 3339).
const META_SIMULATED_UNTIL: &str = "simulated_until";
/// `demo` when `metered demo` wrote the database (and may replace it).
const META_MADE_BY: &str = "made_by";

/// The limits a database's last run ran under, per app: what `usage`
/// charts against when no `--config` is given.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RanUnder {
    /// The app's own `[app.limits]`.
    pub app: metered::Limits,
    /// Each organization's limits (its own, or the app's).
    pub orgs: BTreeMap<String, metered::Limits>,
}

impl RanUnder {
    fn key(app: &str) -> String {
        format!("limits:{app}")
    }

    fn of(config: &AppConfig) -> Self {
        Self {
            app: config.app.limits.clone(),
            orgs: config
                .connections
                .iter()
                .map(|c| (c.org.clone(), config.limits_for(&c.org)))
                .collect(),
        }
    }

    /// One organization's daily limit.
    pub fn per_day(&self, org: &str) -> Option<u32> {
        self.orgs.get(org).unwrap_or(&self.app).per_day
    }

    /// What `db` recorded for `app`, if anything.
    pub async fn read(db: &Db, app: &str) -> Result<Option<Self>, BoxError> {
        Ok(match db.meta(&Self::key(app)).await? {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        })
    }
}

/// Whether a database holds a simulation, and where it ended; `None` for
/// real-time work or a database that says nothing.
pub async fn simulated_until(db: &Db) -> Result<Option<Timestamp>, BoxError> {
    if db.meta(META_CLOCK).await?.as_deref() != Some("simulated") {
        return Ok(None);
    }
    Ok(match db.meta(META_SIMULATED_UNTIL).await? {
        Some(t) => Some(chrono::DateTime::parse_from_rfc3339(&t)?.with_timezone(&chrono::Utc)),
        None => None,
    })
}

/// Takes `path` for work on a simulated clock (`simulated`) or in real
/// time, refusing a database that holds the other kind: real-time work
/// would find a simulation's syncs done days ahead, and a simulation would
/// spend a real day's budget in its future. Returns where an earlier
/// simulation there ended.
async fn claim_clock(db: &Db, path: &Path, simulated: bool) -> Result<Option<Timestamp>, BoxError> {
    let p = path.display();
    match (db.meta(META_CLOCK).await?.as_deref(), simulated) {
        (Some("simulated"), false) => {
            return Err(format!(
                "{p} holds a simulation (simulated days ahead of now); real-time work there would find its syncs already done. Run in real time on another database (the default is {}), or delete {p}",
                default_db().display()
            )
            .into())
        }
        (Some("real"), true) => {
            return Err(format!(
                "{p} holds real-time work; a simulation there would spend its budget days ahead and spoil it. Simulate in another database (the default is {}): pass --db",
                default_sim_db().display()
            )
            .into())
        }
        _ => {}
    }
    db.set_meta(META_CLOCK, if simulated { "simulated" } else { "real" })
        .await?;
    simulated_until(db).await
}

/// Readies `path` for `metered demo`: a database an earlier demo wrote is
/// replaced (the demo's report is about one run from its fixed start); any
/// other database that holds work is refused, never overwritten.
pub async fn fresh_demo_db(path: &Path) -> Result<(), BoxError> {
    if !path.exists() {
        return Ok(());
    }
    let db = Db::open(path)?;
    let made_by = db.meta(META_MADE_BY).await?;
    let holds_work = !db.apps().await?.is_empty() || db.meta(META_CLOCK).await?.is_some();
    drop(db);
    match made_by.as_deref() {
        Some("demo") => {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{}: cannot replace: {e}", path.display()).into()),
                }
            }
            eprintln!(
                "note: replacing {} (an earlier `metered demo` wrote it)",
                path.display()
            );
            Ok(())
        }
        _ if holds_work => Err(format!(
            "{} holds other work; the demo writes a database of its own: pass a new --db",
            path.display()
        )
        .into()),
        _ => Ok(()),
    }
}

/// Marks the database as the demo's (see [`fresh_demo_db`]).
pub async fn mark_demo_db(db: &Db) -> Result<(), BoxError> {
    Ok(db.set_meta(META_MADE_BY, "demo").await?)
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
    /// Where an earlier simulation in this database ended, when this run
    /// continues it.
    pub resumed_from: Option<Timestamp>,
}

pub struct Options {
    pub db: Option<PathBuf>,
    /// Start of a simulated clock; `None` runs on the system clock.
    pub simulated_start: Option<Timestamp>,
    /// Run against the built-in simulator instead of the app's API.
    pub sim: Option<metered_sim::SimConfig>,
    /// Continue an earlier simulation in the same database from where it
    /// ended (instead of `simulated_start`); without it a start before that
    /// end is refused (it would go back in the database's time).
    pub resume: bool,
}

/// The database at `path` (its folder made only when it is one of the
/// default ones: a typo in --db should not leave a tree of folders
/// behind), or an in-memory one.
fn open_db(path: Option<&Path>) -> Result<Db, BoxError> {
    let Some(path) = path else {
        return Ok(Db::in_memory()?);
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let ours = [default_db(), default_sim_db()]
            .iter()
            .any(|d| d.parent() == Some(dir));
        if ours {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        } else if !dir.is_dir() {
            return Err(format!(
                "{}: no such folder (for --db {}); create it first",
                dir.display(),
                path.display()
            )
            .into());
        }
    }
    Ok(Db::open(path)?)
}

impl System {
    pub async fn build(mut config: AppConfig, opts: Options) -> Result<Self, BoxError> {
        let db = open_db(opts.db.as_deref())?;
        let mut simulated_start = opts.simulated_start;
        let mut resumed_from = None;
        if let Some(path) = &opts.db {
            let ended = claim_clock(&db, path, simulated_start.is_some()).await?;
            if let (Some(start), Some(ended)) = (simulated_start, ended) {
                if opts.resume {
                    simulated_start = Some(ended);
                    resumed_from = Some(ended);
                } else if start < ended {
                    return Err(format!(
                        "{}: its simulation already ran to {ended}; start at or after it, or simulate in a new --db",
                        path.display()
                    )
                    .into());
                }
            }
            db.set_meta(
                &RanUnder::key(&config.app.name),
                &serde_json::to_string(&RanUnder::of(&config))?,
            )
            .await?;
        }
        let manual = simulated_start.map(ManualClock::new);
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
                let connectors = metered::handlers::http_connectors_with(
                    &Arc::new(config.clone()),
                    clock.clone(),
                    |c| Some(Secret::new(format!("{SIM_KEY_PREFIX}{}", c.org))),
                )?;
                sim = Some(server);
                connectors
            }
            None => {
                metered::handlers::http_connectors(&Arc::new(config.clone()), None, clock.clone())
                    .await?
            }
        };
        if config.connections.is_empty() {
            return Err("the config has no [[connections]]: add one per organization (e.g. [[connections]] org = \"acme\")".into());
        }
        let config = Arc::new(config);
        let runner = LocalRunner::new(config.clone(), db.clone(), db, clock.clone(), connectors)?;
        Ok(Self {
            runner,
            manual,
            clock,
            config,
            sim,
            resumed_from,
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
        // The next simulation in this database starts here.
        self.runner
            .db
            .set_meta(META_SIMULATED_UNTIL, &manual.now().to_rfc3339())
            .await?;
        Ok(total)
    }
}
