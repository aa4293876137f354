//! Forecasting the calls an app will drive, from its config and expected
//! data volumes — the seeds' "calculate the anticipated API volume your app
//! will drive". The model is the handlers' own arithmetic: pages of the
//! configured size, runs at the configured frequency, windows of interval +
//! overlap, bulk lookups of the configured size, decision-node pass rates.

use metered::config::ActionConfig;
use metered::config::{AppConfig, Pagination};
use metered::quota::WindowKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Expected volumes (TOML): per record type and per workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volumes {
    #[serde(default)]
    pub record_types: BTreeMap<String, TypeVolume>,
    #[serde(default)]
    pub workflows: BTreeMap<String, WorkflowVolume>,
}

impl Volumes {
    /// The volumes of record type `t`, all 0 when the file says nothing
    /// of it (the forecast warns about that once).
    fn of(&self, t: &str) -> TypeVolume {
        self.record_types.get(t).cloned().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeVolume {
    /// Records of the type today.
    pub records: u64,
    /// Records changed per day.
    #[serde(default)]
    pub changes_per_day: u64,
    /// Records created per day.
    #[serde(default)]
    pub new_per_day: u64,
    /// Referenced keys per day that no sync has seen (PK lookups).
    #[serde(default)]
    pub unseen_keys_per_day: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowVolume {
    /// Share of triggered records that pass the decision nodes (0..1).
    pub pass_rate: f64,
}

/// The forecast of one source (a sync or workflow).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceForecast {
    pub source: String,
    pub calls_per_day: f64,
    /// Calls in each hour of a UTC day.
    pub per_hour: Vec<f64>,
    pub how: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Remedy {
    pub remedy: String,
    /// Calls it saves on a steady day (negative: it costs).
    pub saves_per_day: f64,
    /// Calls it saves on day 1.
    pub saves_day1: f64,
}

/// A forecast of day 1 (the first load) and of a steady day. The steady
/// fields keep their names (`sources`, `calls_per_day`, `per_hour`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Forecast {
    pub sources: Vec<SourceForecast>,
    pub calls_per_day: f64,
    pub per_hour: Vec<f64>,
    pub day1_sources: Vec<SourceForecast>,
    pub day1_calls: f64,
    pub day1_per_hour: Vec<f64>,
    /// Days after day 1 its backlog takes to drain at the daily limit.
    pub backlog_days: Option<f64>,
    /// The most calls a day can hold under every window (`per_day`, or
    /// what a shorter window allows in a day).
    pub limit_per_day: Option<u32>,
    /// The same for an hour.
    pub limit_per_hour: Option<u32>,
    pub warnings: Vec<String>,
    /// Whether day 1 or a steady day exceeds a limit (a day or an hour):
    /// `metered plan` then exits non-zero unless told only to warn.
    pub over_limit: bool,
    /// Record types a sync reads that the volumes file does not give: the
    /// forecast counts them as empty.
    pub missing_volumes: Vec<String>,
    pub remedies: Vec<Remedy>,
    /// Each window's load on day 1, fullest first: the first binds first.
    pub day1_loads: Vec<WindowLoad>,
    /// The same on a steady day.
    pub steady_loads: Vec<WindowLoad>,
    /// Each share of `[app.limits.shares]` against its kind's calls.
    pub shares: Vec<ShareForecast>,
}

/// One kind's share of the day and the calls its sources forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareForecast {
    /// The source kind (`pk-lookup`, `workflow`…).
    pub kind: String,
    /// Calls a day held for it alone.
    pub reserved: u32,
    /// The most it may spend in a day (its cap, else its reserve plus what
    /// no kind reserved).
    pub most: u32,
    pub day1_calls: f64,
    pub steady_calls: f64,
}

/// The shares against the day's calls of each kind, with a warning for a
/// share that runs dry (its kind forecasts more than it may spend).
fn share_forecasts(
    limits: &metered::Limits,
    day_limit: Option<u32>,
    day1: &[SourceForecast],
    steady: &[SourceForecast],
) -> (Vec<ShareForecast>, Vec<String>) {
    let Some(day) = day_limit else {
        return (Vec::new(), Vec::new());
    };
    let of = |sources: &[SourceForecast], kind: &str| -> f64 {
        calls(
            sources
                .iter()
                .filter(|s| metered::quota::share::kind_of(&s.source) == kind)
                .map(|s| s.calls_per_day)
                .sum(),
        )
    };
    let pct = |p: u8| (u64::from(day) * u64::from(p) / 100) as u32;
    let reserved_all: u32 = limits.shares.values().map(|s| pct(s.reserve_percent)).sum();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (kind, share) in &limits.shares {
        let reserved = pct(share.reserve_percent);
        let most = if share.cap_percent < 100 {
            pct(share.cap_percent)
        } else {
            day - reserved_all + reserved
        };
        let f = ShareForecast {
            kind: kind.clone(),
            reserved,
            most,
            day1_calls: of(day1, kind),
            steady_calls: of(steady, kind),
        };
        for (label, c) in [("day 1", f.day1_calls), ("steady", f.steady_calls)] {
            if c > f64::from(most) {
                warnings.push(format!(
                    "{label}: share `{kind}` forecasts {c:.0} calls but may spend {most} a day; the rest waits for the next day (raise its cap_percent or spend less)"
                ));
            }
        }
        out.push(f);
    }
    (out, warnings)
}

/// How full one window of the limits runs in a forecast day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowLoad {
    /// The window as `metered usage` names it (`minute`, `rolling 24h
    /// window`, `bucket of 40 refilling 2/s`).
    pub window: String,
    pub limit: u32,
    /// Calls the day puts on it, over the span it is judged on.
    pub demand: f64,
    /// Calls it allows over that span.
    pub allows: f64,
    /// `demand / allows`: over 1 the window refuses part of the day.
    pub load: f64,
    /// The span: `the day`, `the busiest 3 hours`, `the busiest hour`.
    pub over: String,
}

/// Every window's load under a day of `per_hour` calls, fullest first. A
/// window of a day or longer is judged on the day (days alike: a rolling
/// 24 h holds one day's calls); one of hours on the busiest run of that
/// many hours; a shorter one (a minute, 10 s, a bucket) on the busiest hour,
/// which it holds to `limit × 3600 / length`. The forecast counts hours, so
/// a short window meets the bursts inside an hour sooner than this says.
pub fn window_loads(limits: &metered::Limits, per_hour: &[f64]) -> Vec<WindowLoad> {
    let mut loads: Vec<WindowLoad> = limits
        .windows()
        .map(|(kind, limit)| {
            let len = f64::from(kind.secs());
            let limit_f = f64::from(limit);
            let (demand, allows, over) = if len >= 86_400.0 {
                let day: f64 = per_hour.iter().sum();
                (day * len / 86_400.0, limit_f, "the day".to_string())
            } else if len > 3_600.0 {
                let hours = (len / 3_600.0).ceil() as usize;
                let most = per_hour
                    .windows(hours.min(per_hour.len()).max(1))
                    .map(|w| w.iter().sum::<f64>())
                    .fold(0.0f64, f64::max);
                (most, limit_f, format!("the busiest {hours} hours"))
            } else {
                let busiest = per_hour.iter().copied().fold(0.0f64, f64::max);
                (
                    busiest,
                    limit_f * 3_600.0 / len,
                    "the busiest hour".to_string(),
                )
            };
            WindowLoad {
                window: kind.to_string(),
                limit,
                demand: calls(demand),
                allows,
                load: if allows > 0.0 { demand / allows } else { 0.0 },
                over,
            }
        })
        .collect();
    loads.sort_by(|a, b| b.load.total_cmp(&a.load));
    loads
}

/// A sum of calls, never `-0` (an empty `f64` sum is negative zero, which
/// prints as `-0 calls`).
fn calls(x: f64) -> f64 {
    x + 0.0
}

fn day_secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64().max(1.0) / 86_400.0
}

/// Calls of one full listing of `n` records at `page` per call.
fn listing_calls(n: f64, page: f64, pagination: &Pagination) -> f64 {
    let pages = (n / page).ceil().max(1.0);
    // Page and offset styles need an empty page after an exact multiple.
    let exact = n > 0.0 && (n % page) == 0.0;
    match pagination {
        Pagination::Page { .. } | Pagination::Offset { .. } if exact => pages + 1.0,
        _ => pages,
    }
}

/// The model: one day of calls per source, per hour.
pub fn sources(config: &AppConfig, volumes: &Volumes) -> Vec<SourceForecast> {
    let mut sources = Vec::new();
    for name in config.syncs.keys() {
        sources.extend(sync_sources(config, name, &volumes.of(name)));
    }
    let mut outboxes: BTreeMap<String, Outbox> = BTreeMap::new();
    for name in config.workflows.keys() {
        sources.extend(workflow_source(config, volumes, name, &mut outboxes));
    }
    for (ds_name, outbox) in outboxes {
        sources.extend(datasource_source(config, &ds_name, &outbox));
    }
    sources
}

/// What one record type's syncs call in a day: its complete transfers,
/// its recent lookups and its PK lookups of unseen keys.
fn sync_sources(config: &AppConfig, name: &str, v: &TypeVolume) -> Vec<SourceForecast> {
    let mut sources = Vec::new();
    let (Some(sync), Some(rt)) = (config.syncs.get(name), config.record_types.get(name)) else {
        return sources;
    };
    let page = f64::from(rt.effective_page_size());
    // Transfers over the day see the records created so far, on average half.
    let grow = (v.new_per_day as f64) / 2.0;
    if let Some(t) = &sync.complete_transfer {
        let calls = listing_calls(v.records as f64 + grow, page, &rt.pagination);
        let mut per_hour = vec![0.0; 24];
        let every_h = (t.every.as_secs() / 3_600).max(1) as usize;
        for h in (0..24).step_by(every_h) {
            per_hour[h] += calls;
        }
        let total: f64 = per_hour.iter().sum();
        sources.push(SourceForecast {
            source: format!("complete-transfer:{name}"),
            calls_per_day: total,
            per_hour,
            how: format!(
                "{:.0} run(s) a day × {calls:.0} page(s) of {page}",
                total / calls
            ),
        });
    }
    if let Some(r) = &sync.recent {
        let runs = 1.0 / day_secs(r.every);
        let window = (r.every + r.overlap).as_secs_f64() / 86_400.0;
        let in_window = (v.changes_per_day + v.new_per_day) as f64 * window;
        let calls = (in_window / page).floor() + 1.0;
        let total = runs * calls;
        sources.push(SourceForecast {
            source: format!("recent-records:{name}"),
            calls_per_day: total,
            per_hour: vec![total / 24.0; 24],
            how: format!("{runs:.0} runs a day × {calls:.0} page(s) ({in_window:.0} records in each {:.0}-minute window)", (r.every + r.overlap).as_secs_f64() / 60.0),
        });
    }
    let pk = &sync.pk_lookup;
    if pk.active() && v.unseen_keys_per_day > 0 {
        let k = f64::from(
            pk.max_keys_per_call
                .unwrap_or_else(|| rt.bulk.as_ref().map_or(1, |b| b.max_ids)),
        );
        let calls = (v.unseen_keys_per_day as f64 / k).ceil();
        sources.push(SourceForecast {
            source: format!("pk-lookup:{name}"),
            calls_per_day: calls,
            per_hour: vec![calls / 24.0; 24],
            how: format!(
                "{} unseen keys a day in bulks of {k}",
                v.unseen_keys_per_day
            ),
        });
    }
    sources
}

/// Rows a day into one Data Source's outbox, from every workflow that
/// pushes to it.
#[derive(Default)]
struct Outbox {
    rows: f64,
    /// Trigger runs a day (the most frequent pushing workflow's).
    runs: f64,
    /// Chance that a run brings no row.
    miss: f64,
}

/// What one workflow's HTTP actions call in a day, if it has any; the rows
/// it pushes are added to their Data Sources' `outboxes`.
fn workflow_source(
    config: &AppConfig,
    volumes: &Volumes,
    name: &str,
    outboxes: &mut BTreeMap<String, Outbox>,
) -> Option<SourceForecast> {
    let wf = config.workflows.get(name)?;
    let v = volumes.of(&wf.trigger.record_type);
    let pass = volumes
        .workflows
        .get(name)
        .map_or(1.0, |w| w.pass_rate.clamp(0.0, 1.0));
    let triggered = (v.changes_per_day + v.new_per_day) as f64;
    let passing = triggered * pass;
    // Triggers arrive once per recent-lookup run.
    let runs = config
        .sync(&wf.trigger.record_type)
        .recent
        .as_ref()
        .map_or(24.0, |r| 1.0 / day_secs(r.every));
    let http = wf
        .actions
        .iter()
        .filter(|a| matches!(a, ActionConfig::Http { .. }))
        .count();
    for a in &wf.actions {
        if let ActionConfig::DatasourcePush { datasource, .. } = a {
            let e = outboxes.entry(datasource.clone()).or_default();
            e.rows += passing;
            e.runs = e.runs.max(runs);
            let miss = (1.0 - pass).powf(triggered / runs);
            e.miss = if e.miss == 0.0 { miss } else { e.miss * miss };
        }
    }
    (http > 0).then(|| {
        let calls = passing * http as f64;
        SourceForecast {
            source: format!("workflow:{name}"),
            calls_per_day: calls,
            per_hour: vec![calls / 24.0; 24],
            how: format!(
                "{triggered:.0} triggers a day × pass rate {pass} × {http} HTTP action(s)"
            ),
        }
    })
}

/// What one pushed Data Source's flushes call in a day (a hosted one
/// never calls: Hosted GET serves its rows).
fn datasource_source(config: &AppConfig, ds_name: &str, o: &Outbox) -> Option<SourceForecast> {
    let ds = config.datasource(ds_name).ok()?;
    if ds.hosted() {
        return None;
    }
    // The outbox flushes at most once per `every`, and no more often
    // than rows arrive; a flush sends ceil(rows / max) calls.
    let flushes = o.runs.min(1.0 / day_secs(ds.every));
    let runs_per_flush = o.runs / flushes;
    let rows_per_flush = o.rows / flushes;
    let max = f64::from(ds.max_rows_per_call);
    let calls = if rows_per_flush >= 1.0 {
        flushes * (rows_per_flush / max).ceil()
    } else {
        // Sparse rows: the flushes whose period saw any row.
        flushes * (1.0 - o.miss.powf(runs_per_flush))
    };
    Some(SourceForecast {
        source: format!("datasource:{ds_name}"),
        calls_per_day: calls,
        per_hour: vec![calls / 24.0; 24],
        how: format!(
            "{:.0} rows a day, flushed at most every {:?} ({flushes:.0} flushes) in calls of {max}",
            o.rows, ds.every
        ),
    })
}

/// What the first day adds to a steady day, per source: the seeds' "huge
/// spike". The first complete transfer of a type creates every record, so
/// workflows listening to `created` run on all of them (and their Data
/// Source rows leave in one big flush); PK lookups of a type no complete
/// transfer fills look up every key the first transfers reference. Lands in
/// hour 0, when the first runs start. A type the store already holds
/// (`known`) has had its first load.
pub fn first_load(
    config: &AppConfig,
    volumes: &Volumes,
    known: &BTreeMap<String, u64>,
) -> (Vec<SourceForecast>, Vec<String>) {
    let day = FirstDay {
        config,
        volumes,
        known,
    };
    let mut extras = Vec::new();
    let mut notes = Vec::new();
    // PK lookups of types no complete transfer fills.
    for (target, sync) in &config.syncs {
        if !sync.pk_lookup.active() || sync.complete_transfer.is_some() {
            continue;
        }
        match day.pk_lookups(target) {
            Ok(extra) => extras.extend(extra),
            Err(note) => notes.push(note),
        }
    }
    // Workflows on the first transfer's `created` records, and their rows.
    let mut rows: BTreeMap<String, f64> = BTreeMap::new();
    for name in config.workflows.keys() {
        extras.extend(day.workflow(name, &mut rows));
    }
    for (ds_name, n) in rows {
        extras.extend(day.flush(&ds_name, n));
    }
    (extras, notes)
}

/// What the first day knows: the config, the volumes and the records the
/// store already holds per type.
struct FirstDay<'a> {
    config: &'a AppConfig,
    volumes: &'a Volumes,
    known: &'a BTreeMap<String, u64>,
}

impl FirstDay<'_> {
    /// Whether `t`'s first complete transfer happens today (it has one,
    /// and the store holds none of its records).
    fn loaded_today(&self, t: &str) -> bool {
        self.config.sync(t).complete_transfer.is_some()
            && self.known.get(t).copied().unwrap_or(0) == 0
    }

    /// Lookups of the `target` keys that today's first transfers
    /// reference (keys drawn at random from its records: the distinct
    /// ones not seen yet), or a note when its record count is not given.
    fn pk_lookups(&self, target: &str) -> Result<Option<SourceForecast>, String> {
        let (Some(sync), Some(rt)) = (
            self.config.syncs.get(target),
            self.config.record_types.get(target),
        ) else {
            return Ok(None);
        };
        let n = self.volumes.of(target).records as f64;
        if n <= 0.0 {
            return Err(format!("day 1: PK lookups of `{target}` are not forecast; give volumes.record_types.{target}.records"));
        }
        let k = f64::from(
            sync.pk_lookup
                .max_keys_per_call
                .unwrap_or_else(|| rt.bulk.as_ref().map_or(1, |b| b.max_ids)),
        );
        let mut seen = self.known.get(target).copied().unwrap_or(0) as f64;
        let mut calls = 0.0;
        let mut keys = 0.0;
        for (referrer, rrt) in &self.config.record_types {
            if !rrt.foreign_keys.values().any(|t| t == target) || !self.loaded_today(referrer) {
                continue;
            }
            let refs = self.volumes.of(referrer).records as f64;
            let new = (n - seen).max(0.0) * (1.0 - (-refs / n).exp());
            calls += (new / k).ceil();
            keys += new;
            seen += new;
        }
        Ok((calls > 0.0).then(|| {
            at_first_hour(
                format!("pk-lookup:{target}"),
                calls,
                format!("first load: {keys:.0} keys of `{target}` referenced, never transferred, in bulks of {k}"),
            )
        }))
    }

    /// A workflow on the `created` records of a type loaded today: its
    /// HTTP actions, and the rows it adds to its Data Sources' `rows`.
    fn workflow(&self, name: &str, rows: &mut BTreeMap<String, f64>) -> Option<SourceForecast> {
        let wf = self.config.workflows.get(name)?;
        let t = &wf.trigger.record_type;
        if !self.loaded_today(t) || !wf.trigger.on.contains(&metered::core::ChangeKind::Created) {
            return None;
        }
        let pass = self
            .volumes
            .workflows
            .get(name)
            .map_or(1.0, |w| w.pass_rate.clamp(0.0, 1.0));
        let passing = self.volumes.of(t).records as f64 * pass;
        for a in &wf.actions {
            if let ActionConfig::DatasourcePush { datasource, .. } = a {
                *rows.entry(datasource.clone()).or_default() += passing;
            }
        }
        let http = wf
            .actions
            .iter()
            .filter(|a| matches!(a, ActionConfig::Http { .. }))
            .count() as f64;
        (http > 0.0 && passing > 0.0).then(|| {
            at_first_hour(
                format!("workflow:{name}"),
                passing * http,
                format!(
                    "first load: {} `{t}` created × pass rate {pass}",
                    self.volumes.of(t).records
                ),
            )
        })
    }

    /// The one big flush of a pushed Data Source's first-load rows.
    fn flush(&self, ds_name: &str, n: f64) -> Option<SourceForecast> {
        let ds = self.config.datasource(ds_name).ok()?;
        if ds.hosted() {
            return None;
        }
        let calls = (n / f64::from(ds.max_rows_per_call)).ceil();
        (calls > 0.0).then(|| {
            at_first_hour(
                format!("datasource:{ds_name}"),
                calls,
                format!(
                    "first load: {n:.0} rows in one flush, {} a call",
                    ds.max_rows_per_call
                ),
            )
        })
    }
}

/// A first-load extra: all of its calls in the day's first hour.
fn at_first_hour(source: String, calls: f64, how: String) -> SourceForecast {
    let mut per_hour = vec![0.0; 24];
    per_hour[0] = calls;
    SourceForecast {
        source,
        calls_per_day: calls,
        per_hour,
        how,
    }
}

/// A steady day's sources plus the first load's extras.
fn day_one(steady: &[SourceForecast], extras: &[SourceForecast]) -> Vec<SourceForecast> {
    let mut out = steady.to_vec();
    for e in extras {
        match out.iter_mut().find(|s| s.source == e.source) {
            Some(s) => {
                s.calls_per_day += e.calls_per_day;
                for (h, c) in e.per_hour.iter().enumerate() {
                    s.per_hour[h] += c;
                }
                s.how = format!("{}; {}", s.how, e.how);
            }
            None => out.push(e.clone()),
        }
    }
    out
}

/// Calls of a steady day and of day 1.
fn totals(config: &AppConfig, volumes: &Volumes, known: &BTreeMap<String, u64>) -> (f64, f64) {
    let steady = calls(
        sources(config, volumes)
            .iter()
            .map(|s| s.calls_per_day)
            .sum(),
    );
    let extra = calls(
        first_load(config, volumes, known)
            .0
            .iter()
            .map(|s| s.calls_per_day)
            .sum(),
    );
    (steady, steady + extra)
}

/// The forecast: day 1 and a steady day, each per source and hour, limit
/// warnings, how long a first-day backlog takes to drain, and what each of
/// the seeds' remedies would save on each. `known`: records per type the
/// store already holds (their first load is done).
pub fn forecast_with(
    config: &AppConfig,
    volumes: &Volumes,
    known: &BTreeMap<String, u64>,
) -> Forecast {
    let sources = sources(config, volumes);
    let (extras, notes) = first_load(config, volumes, known);
    let day1_sources = day_one(&sources, &extras);
    let hours = |s: &[SourceForecast]| -> Vec<f64> {
        (0..24)
            .map(|h| calls(s.iter().map(|x| x.per_hour[h]).sum()))
            .collect()
    };
    let per_hour = hours(&sources);
    let day1_per_hour = hours(&day1_sources);
    let calls_per_day = calls(sources.iter().map(|s| s.calls_per_day).sum());
    let day1_calls = calls(day1_sources.iter().map(|s| s.calls_per_day).sum());
    let limits = &config.app.limits;
    let mut warnings = notes;
    let missing_volumes = missing_volumes(config, volumes);
    warnings.extend(input_warnings(config, &missing_volumes));
    // Every window bounds a day and an hour (a minute of 5 holds an hour
    // to 300), not only `per_day` and `per_hour`.
    let day_cap = limits.capacity_per(86_400);
    let hour_cap = limits.capacity_per(3_600);
    let mut over_limit = false;
    let mut backlog_days = None;
    if let Some(binding) = day_cap {
        let (over, backlog, said) = day_warnings(binding, calls_per_day, day1_calls);
        over_limit |= over;
        backlog_days = backlog;
        warnings.extend(said);
    }
    if let Some(binding) = hour_cap {
        let said = hour_warnings(binding, &day1_per_hour, &per_hour);
        over_limit |= !said.is_empty();
        warnings.extend(said);
    }
    let (shares, share_warnings) = share_forecasts(
        limits,
        day_cap.map(|(c, ..)| c.floor() as u32),
        &day1_sources,
        &sources,
    );
    if !share_warnings.is_empty() {
        over_limit = true;
        warnings.extend(share_warnings);
    }
    Forecast {
        shares,
        day1_loads: window_loads(limits, &day1_per_hour),
        steady_loads: window_loads(limits, &per_hour),
        remedies: remedies(config, volumes, known, (calls_per_day, day1_calls)),
        sources,
        calls_per_day,
        per_hour,
        day1_sources,
        day1_calls,
        day1_per_hour,
        backlog_days,
        limit_per_day: day_cap.map(|(c, ..)| c.floor() as u32),
        limit_per_hour: hour_cap.map(|(c, ..)| c.floor() as u32),
        warnings,
        over_limit,
        missing_volumes,
    }
}

/// Synced record types the volumes file says nothing of.
fn missing_volumes(config: &AppConfig, volumes: &Volumes) -> Vec<String> {
    config
        .syncs
        .keys()
        .filter(|t| config.record_types.contains_key(*t))
        .filter(|t| !volumes.record_types.contains_key(*t))
        .cloned()
        .collect()
}

/// What the forecast could not count: a type with no volumes, a config
/// with no syncs.
fn input_warnings(config: &AppConfig, missing_volumes: &[String]) -> Vec<String> {
    let mut warnings: Vec<String> = missing_volumes
        .iter()
        .map(|t| format!(
            "volumes: no entry for record type `{t}` (synced by syncs.{t}): counted as 0 records and 0 changes; add [record_types.{t}] records = N to the volumes file"
        ))
        .collect();
    if config.syncs.is_empty() {
        warnings.push(
            "the config has no [syncs]: nothing is synced, so nothing is forecast".to_string(),
        );
    }
    warnings
}

/// A day's or an hour's binding capacity in words: "the daily limit of
/// 2500", or what a shorter window allows, "300 (the minute limit of 5)".
fn named_limit((cap, kind, limit): (f64, WindowKind, u32), period: WindowKind) -> String {
    if kind == period {
        let adjective = if period == WindowKind::Day {
            "daily"
        } else {
            "hourly"
        };
        format!("the {adjective} limit of {limit}")
    } else {
        format!("{cap:.0} (the {kind} limit of {limit})")
    }
}

/// A steady day or day 1 over the day's capacity: whether either is, the
/// days day 1's backlog takes to drain, and what to say.
fn day_warnings(
    binding: (f64, WindowKind, u32),
    calls_per_day: f64,
    day1_calls: f64,
) -> (bool, Option<f64>, Vec<String>) {
    let d = binding.0;
    let limit = named_limit(binding, WindowKind::Day);
    let over = calls_per_day > d || day1_calls > d;
    if calls_per_day > d {
        let said = format!("{calls_per_day:.0} calls a steady day exceed {limit}: work will spill into the next days and never catch up");
        return (over, None, vec![said]);
    }
    if day1_calls > d {
        // The first load queues what does not fit; each later day has
        // the limit minus a steady day's calls to drain it.
        let days = ((day1_calls - d) / (d - calls_per_day)).ceil();
        let said = format!(
            "day 1: {day1_calls:.0} calls exceed {limit}: the first load's backlog of {:.0} calls drains in {days:.0} more day(s) at the limit",
            day1_calls - d
        );
        return (over, Some(days), vec![said]);
    }
    (over, None, Vec::new())
}

/// Each hour of day 1 and of a steady day over the hour's capacity.
fn hour_warnings(
    binding: (f64, WindowKind, u32),
    day1_per_hour: &[f64],
    per_hour: &[f64],
) -> Vec<String> {
    let limit = named_limit(binding, WindowKind::Hour);
    let mut said = Vec::new();
    for (label, hours) in [("day 1", day1_per_hour), ("steady", per_hour)] {
        for (h, c) in hours.iter().enumerate().filter(|(_, c)| **c > binding.0) {
            said.push(format!("{label}, hour {h:02}: {c:.0} calls exceed {limit}"));
        }
    }
    said
}

/// Each remedy from the seeds, forecast again with it applied.
fn remedies(
    config: &AppConfig,
    volumes: &Volumes,
    known: &BTreeMap<String, u64>,
    base: (f64, f64),
) -> Vec<Remedy> {
    let saving = |remedy: String, config: &AppConfig, volumes: &Volumes| {
        let (steady, day1) = totals(config, volumes, known);
        let (saves, saves_day1) = (base.0 - steady, base.1 - day1);
        (saves > 0.5 || saves_day1 > 0.5).then(|| Remedy {
            remedy,
            saves_per_day: calls(saves),
            saves_day1: calls(saves_day1),
        })
    };
    let mut tries = transfers_first(config);
    for (name, sync) in &config.syncs {
        tries.extend(sync_remedies(config, name, sync));
    }
    tries.extend(datasource_remedies(config));
    let mut out: Vec<Remedy> = tries
        .into_iter()
        .filter_map(|(remedy, c)| saving(remedy, &c, volumes))
        .collect();
    for name in config.workflows.keys() {
        let mut v = volumes.clone();
        let p = v.workflows.get(name).map_or(1.0, |w| w.pass_rate);
        v.workflows
            .insert(name.clone(), WorkflowVolume { pass_rate: p / 2.0 });
        out.extend(saving(
            format!(
                "decision nodes before actions: workflows.{name} filtering half of what passes now"
            ),
            config,
            &v,
        ));
    }
    out.sort_by(|a, b| {
        (b.saves_per_day + b.saves_day1).total_cmp(&(a.saves_per_day + a.saves_day1))
    });
    out
}

/// A remedy to try: what it says, and the config with it applied.
type Try = (String, AppConfig);

/// The seeds' advice: turn on complete transfers before PK lookups.
fn transfers_first(config: &AppConfig) -> Vec<Try> {
    let mut tries = Vec::new();
    for (name, sync) in &config.syncs {
        if sync.pk_lookup.active() && sync.complete_transfer.is_none() {
            let mut c = config.clone();
            if let Some(s) = c.syncs.get_mut(name) {
                s.complete_transfer = Some(metered::config::CompleteTransferSettings {
                    every: std::time::Duration::from_secs(86_400),
                });
            }
            tries.push((format!("complete transfer before PK lookups: syncs.{name}.complete_transfer = {{ every = \"24h\" }}"), c));
        }
    }
    tries
}

/// One sync's remedies: a longer interval or smaller overlap, rarer
/// transfers, larger pages, bulk lookups, looking up unseen keys only.
fn sync_remedies(config: &AppConfig, name: &str, sync: &metered::config::SyncConfig) -> Vec<Try> {
    let mut tries = Vec::new();
    if let Some(r) = &sync.recent {
        let mut c = config.clone();
        if let Some(x) = c.syncs.get_mut(name).and_then(|s| s.recent.as_mut()) {
            x.every *= 2;
        }
        tries.push((
            format!(
                "longer interval: syncs.{name}.recent.every {:?} → {:?}",
                r.every,
                r.every * 2
            ),
            c,
        ));
        let mut c = config.clone();
        if let Some(x) = c.syncs.get_mut(name).and_then(|s| s.recent.as_mut()) {
            x.overlap /= 2;
        }
        tries.push((
            format!(
                "smaller overlap: syncs.{name}.recent.overlap {:?} → {:?}",
                r.overlap,
                r.overlap / 2
            ),
            c,
        ));
    }
    if let Some(t) = &sync.complete_transfer {
        let mut c = config.clone();
        if let Some(x) = c
            .syncs
            .get_mut(name)
            .and_then(|s| s.complete_transfer.as_mut())
        {
            x.every *= 2;
        }
        tries.push((
            format!(
                "rarer transfers: syncs.{name}.complete_transfer.every {:?} → {:?}",
                t.every,
                t.every * 2
            ),
            c,
        ));
    }
    let Some(rt) = config.record_types.get(name) else {
        return tries;
    };
    if rt.effective_page_size() < rt.max_page_size {
        let mut c = config.clone();
        if let Some(x) = c.record_types.get_mut(name) {
            x.page_size = None;
        }
        tries.push((
            format!(
                "larger pages: record_types.{name}.page_size → {}",
                rt.max_page_size
            ),
            c,
        ));
    }
    if sync.pk_lookup.active() {
        if let Some(b) = &rt.bulk {
            if sync.pk_lookup.max_keys_per_call.unwrap_or(b.max_ids) < b.max_ids {
                let mut c = config.clone();
                if let Some(s) = c.syncs.get_mut(name) {
                    s.pk_lookup.max_keys_per_call = None;
                }
                tries.push((
                    format!(
                        "bulk lookups: syncs.{name}.pk_lookup.max_keys_per_call → {}",
                        b.max_ids
                    ),
                    c,
                ));
            }
        }
        if sync.pk_lookup.policy == metered::config::LookupPolicy::SeenAndUnseen {
            let mut c = config.clone();
            if let Some(s) = c.syncs.get_mut(name) {
                s.pk_lookup.policy = metered::config::LookupPolicy::UnseenOnly;
            }
            tries.push((format!("syncs.{name}.pk_lookup.policy → unseen_only"), c));
        }
    }
    tries
}

/// Each pushed Data Source's remedies: hosting it, pushing less often.
fn datasource_remedies(config: &AppConfig) -> Vec<Try> {
    let mut tries = Vec::new();
    for ds_name in config.datasource_names() {
        let Ok(ds) = config.datasource(&ds_name) else {
            continue;
        };
        if ds.hosted() {
            continue;
        }
        // The seeds' Hosted GET: the platform pulls the rows; every push
        // call of this Data Source is saved.
        let mut c = config.clone();
        c.datasources.entry(ds_name.clone()).or_default().mode =
            metered::config::DataSourceMode::Hosted;
        tries.push((format!(
                "host data source {ds_name}: datasources.{ds_name}.mode = \"hosted\" (Hosted GET; the platform pulls its rows, no push call)"
            ), c));
        let mut c = config.clone();
        c.datasources.entry(ds_name.clone()).or_default().every = ds.every * 2;
        tries.push((
            format!(
                "push less often: datasources.{ds_name}.every {:?} → {:?}",
                ds.every,
                ds.every * 2
            ),
            c,
        ));
    }
    tries
}

#[cfg(test)]
mod tests {
    use super::window_loads;
    use metered::Limits;

    #[test]
    fn the_fullest_window_binds_first_each_judged_on_its_span() {
        let limits: Limits = toml::from_str(
            r#"
per_day = 1000
per_minute = 2
max_concurrent = 3
windows = [{ calls = 100, every = "3h", rolling = true }]
"#,
        )
        .unwrap();
        // 300 calls: 60 an hour in hours 1..=3, 20 in each of hours 4..=9.
        let mut hours = vec![0.0; 24];
        hours[1..=3].fill(60.0);
        hours[4..=9].fill(20.0);
        let loads = window_loads(&limits, &hours);
        let by = |w: &str| loads.iter().find(|l| l.window.contains(w)).unwrap();
        assert_eq!(by("day").demand, 300.0);
        assert_eq!(by("day").allows, 1000.0);
        assert_eq!(by("3h").demand, 180.0, "the busiest three hours");
        assert_eq!(by("3h").over, "the busiest 3 hours");
        assert_eq!(by("minute").demand, 60.0);
        assert_eq!(
            by("minute").allows,
            120.0,
            "2 a minute holds an hour to 120"
        );
        let order: Vec<&str> = loads.iter().map(|l| l.window.as_str()).collect();
        assert!(order[0].contains("3h"), "180 of 100 binds first: {order:?}");
        assert_eq!(order[1], "minute", "{order:?}");
        assert_eq!(order[2], "day", "{order:?}");
        // An even day of 10 an hour: 30 of 100 in three hours (30%) binds
        // before 240 of 1,000 in the day (24%) and 10 of 120 in an hour.
        let even = window_loads(&limits, &[10.0; 24]);
        let order: Vec<&str> = even.iter().map(|l| l.window.as_str()).collect();
        assert_eq!(order, ["rolling 3h window", "day", "minute"]);
    }
}
