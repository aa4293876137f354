//! What an invocation did, counted per organization, and how it is told.
//!
//! The quota counts calls made and denials, the job runtime counts jobs
//! done, restarts and dead letters, the handlers count records synced,
//! quarantined and actions performed, all into one [`Metrics`] that the
//! edge drains once per invocation: the Lambda edge writes it as CloudWatch
//! Embedded Metric Format ([`Snapshot::to_emf`]), the local runner shows it
//! in `metered run`'s status.
//!
//! Counting is a map update under a mutex, no I/O: the hot path pays
//! nothing a test could measure, and nothing is sent until the edge says so.
//!
//! Cardinality: the per-function metrics have one dimension, `Function`;
//! the organization and app ride along as properties (searchable in Logs
//! Insights, no extra metric cost). Only the budget burn is per
//! organization, because that is what an operator alarms on.

use crate::core::clock::Timestamp;
use chrono::Timelike;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The namespace every metered metric is published in.
pub const NAMESPACE: &str = "metered";

/// The budget burn, published only before the cutoff hour and without a
/// dimension: what `template.yaml`'s `BudgetBurnAlarm` watches.
pub const EARLY_BURN: &str = "BudgetUsedPercentEarly";

/// A counted event. Names are the metric names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Counter {
    /// Calls the third-party API answered (counted or exempt).
    CallsMade,
    /// Refusals because a day window was full.
    DenialsDayLimit,
    /// Refusals because an hour window was full.
    DenialsHourLimit,
    /// Refusals because a minute window was full.
    DenialsMinuteLimit,
    /// Refusals because `max_concurrent` calls were in flight.
    DenialsConcurrency,
    /// Refusals because the API said stop (429 / `Retry-After`).
    DenialsBlocked,
    /// Jobs finished.
    JobsDone,
    /// Jobs re-sent to wait (quota, deadline, transient failure), not
    /// counting early arrivals re-sent for the rest of their wait.
    Restarts,
    /// Jobs sent to a dead-letter queue.
    DeadLetters,
    /// Records stored (new or changed) by syncs.
    RecordsSynced,
    /// Records set aside in the quarantine list.
    RecordsQuarantined,
    /// Workflow actions the API accepted (HTTP actions and legacy
    /// one-job pushes).
    ActionsPerformed,
    /// Data Source push calls the API accepted (one per outbox chunk).
    PushesSent,
    /// Rows (inserts and deletes) those pushes carried.
    RowsPushed,
    /// Data Source rows the API refused alone, set aside (`metered outbox`).
    RowsRefused,
    /// Connections paused after repeated authentication failures: an
    /// operator must look (the alarm in `template.yaml` watches it).
    ConnectionsPaused,
}

impl Counter {
    /// Every counter, in the order they are written.
    pub(crate) const ALL: [Counter; 16] = [
        Counter::CallsMade,
        Counter::DenialsDayLimit,
        Counter::DenialsHourLimit,
        Counter::DenialsMinuteLimit,
        Counter::DenialsConcurrency,
        Counter::DenialsBlocked,
        Counter::JobsDone,
        Counter::Restarts,
        Counter::DeadLetters,
        Counter::RecordsSynced,
        Counter::RecordsQuarantined,
        Counter::ActionsPerformed,
        Counter::PushesSent,
        Counter::RowsPushed,
        Counter::RowsRefused,
        Counter::ConnectionsPaused,
    ];

    /// The metric's name, e.g. `CallsMade`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::CallsMade => "CallsMade",
            Counter::DenialsDayLimit => "DenialsDayLimit",
            Counter::DenialsHourLimit => "DenialsHourLimit",
            Counter::DenialsMinuteLimit => "DenialsMinuteLimit",
            Counter::DenialsConcurrency => "DenialsConcurrency",
            Counter::DenialsBlocked => "DenialsBlocked",
            Counter::JobsDone => "JobsDone",
            Counter::Restarts => "Restarts",
            Counter::DeadLetters => "DeadLetters",
            Counter::RecordsSynced => "RecordsSynced",
            Counter::RecordsQuarantined => "RecordsQuarantined",
            Counter::ActionsPerformed => "ActionsPerformed",
            Counter::PushesSent => "PushesSent",
            Counter::RowsPushed => "RowsPushed",
            Counter::RowsRefused => "RowsRefused",
            Counter::ConnectionsPaused => "ConnectionsPaused",
        }
    }
}

/// Whose budget: `(app, org)`. A job that could not be read has neither;
/// its dead letter is counted under empty names.
pub(crate) type Scope = (String, String);

/// How much of a day's budget was used, as last seen by a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Burn {
    /// The day window's id (`d2026-11-23`): a newer day replaces the count.
    pub window: String,
    /// Calls counted in the day window.
    pub used: u64,
    /// The day's limit.
    pub limit: u32,
}

impl Burn {
    /// Used as a share of the limit, in percent.
    pub fn percent(&self) -> f64 {
        if self.limit == 0 {
            return 0.0;
        }
        self.used as f64 * 100.0 / f64::from(self.limit)
    }
}

/// What was counted since the last drain.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Counts per scope and counter (only those that happened).
    pub counts: BTreeMap<Scope, BTreeMap<Counter, u64>>,
    /// The highest day-window use a grant saw, per scope.
    pub burn: BTreeMap<Scope, Burn>,
    /// The latest problem per scope (a transient failure, a dead letter, a
    /// send that failed): what a running status shows beside the counts,
    /// so an unreachable API is not only a growing restart count.
    #[serde(skip)]
    pub problems: BTreeMap<Scope, String>,
}

/// Shared counters; clones count into the same tally.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    tally: Arc<Mutex<Snapshot>>,
}

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain counts; keep them.
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tally)
    }

    /// Adds `n` to `counter` of `org` in `app`.
    pub fn add(&self, app: &str, org: &str, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        self.with(|t| {
            *t.counts
                .entry((app.to_string(), org.to_string()))
                .or_default()
                .entry(counter)
                .or_default() += n
        });
    }

    /// Notes `problem` as the latest of `org` in `app`.
    pub fn note(&self, app: &str, org: &str, problem: &str) {
        self.with(|t| {
            t.problems
                .insert((app.to_string(), org.to_string()), problem.to_string())
        });
    }

    /// Records that `used` of `limit` calls of the day `window` are
    /// counted. Grants of concurrent invocations finish in any order, so
    /// within a day the highest count seen is the truth; a later day
    /// starts over (window ids sort by date).
    pub fn burn(&self, app: &str, org: &str, window: &str, used: u64, limit: u32) {
        self.with(|t| {
            let fresh = Burn {
                window: window.to_string(),
                used,
                limit,
            };
            let b = t
                .burn
                .entry((app.to_string(), org.to_string()))
                .or_insert_with(|| fresh.clone());
            if fresh.window > b.window {
                *b = fresh;
            } else if fresh.window == b.window {
                b.used = b.used.max(used);
                b.limit = limit;
            }
        });
    }

    /// Everything counted so far, leaving the counters at zero (once per
    /// invocation, so each count is published once).
    pub fn take(&self) -> Snapshot {
        self.with(std::mem::take)
    }

    /// Everything counted so far, counters kept (a running status).
    pub fn peek(&self) -> Snapshot {
        self.with(|t| t.clone())
    }
}

impl Snapshot {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.burn.is_empty()
    }

    /// One count, 0 when it did not happen.
    pub fn count(&self, app: &str, org: &str, counter: Counter) -> u64 {
        self.counts
            .get(&(app.to_string(), org.to_string()))
            .and_then(|c| c.get(&counter))
            .copied()
            .unwrap_or(0)
    }

    /// The latest problem noted for `org` in `app`.
    pub fn problem(&self, app: &str, org: &str) -> Option<&str> {
        self.problems
            .get(&(app.to_string(), org.to_string()))
            .map(String::as_str)
    }

    /// One counter summed over every scope.
    pub fn total(&self, counter: Counter) -> u64 {
        self.counts.values().filter_map(|c| c.get(&counter)).sum()
    }

    /// CloudWatch Embedded Metric Format documents, one per scope (the
    /// org is a property, so each document names exactly one), each one
    /// line of JSON for the function's log. `function` is the `Function`
    /// dimension; the budget burn (`BudgetUsedPercent`) is published per
    /// `App, Org` (the dashboard's lines) and per `App`, and, before
    /// `burn_cutoff_hour` UTC, also as [`EARLY_BURN`] without dimensions:
    /// an alarm on its Maximum fires when too much of any org's day is gone
    /// too early. (A metric-math `IF(HOUR(m) < 18, ...)`
    /// would do that in CloudWatch alone, but ministack, where the stack is
    /// tested, does not take metric-math alarms.)
    pub fn to_emf(
        &self,
        function: &str,
        now: Timestamp,
        burn_cutoff_hour: u32,
    ) -> Vec<serde_json::Value> {
        use serde_json::{json, Map, Value};
        let scopes: std::collections::BTreeSet<&Scope> =
            self.counts.keys().chain(self.burn.keys()).collect();
        let mut docs = Vec::new();
        for scope in scopes {
            let (app, org) = scope;
            let mut directives = Vec::new();
            let mut doc = Map::new();
            doc.insert("Function".into(), json!(function));
            doc.insert("App".into(), json!(app));
            doc.insert("Org".into(), json!(org));
            if let Some(counts) = self.counts.get(scope) {
                let metrics: Vec<Value> = Counter::ALL
                    .iter()
                    .filter(|c| counts.contains_key(c))
                    .map(|c| json!({"Name": c.name(), "Unit": "Count"}))
                    .collect();
                for (c, n) in counts {
                    doc.insert(c.name().into(), json!(n));
                }
                directives.push(json!({
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Function"]],
                    "Metrics": metrics,
                }));
                if counts.contains_key(&Counter::ConnectionsPaused) {
                    // Also without a dimension: the template's alarm
                    // watches one metric for every function of the stack.
                    directives.push(json!({
                        "Namespace": NAMESPACE,
                        "Dimensions": [[]],
                        "Metrics": [{"Name": Counter::ConnectionsPaused.name(), "Unit": "Count"}],
                    }));
                }
            }
            if let Some(burn) = self.burn.get(scope) {
                let percent = (burn.percent() * 100.0).round() / 100.0;
                doc.insert("BudgetUsedPercent".into(), json!(percent));
                doc.insert("BudgetUsed".into(), json!(burn.used));
                doc.insert("BudgetLimit".into(), json!(burn.limit));
                directives.push(json!({
                    "Namespace": NAMESPACE,
                    "Dimensions": [["App", "Org"], ["App"]],
                    "Metrics": [{"Name": "BudgetUsedPercent", "Unit": "Percent"}],
                }));
                if now.hour() < burn_cutoff_hour {
                    // No dimension: the template's alarm watches its
                    // Maximum, the busiest org of the stack.
                    doc.insert(EARLY_BURN.into(), json!(percent));
                    directives.push(json!({
                        "Namespace": NAMESPACE,
                        "Dimensions": [[]],
                        "Metrics": [{"Name": EARLY_BURN, "Unit": "Percent"}],
                    }));
                }
            }
            doc.insert(
                "_aws".into(),
                json!({
                    "Timestamp": now.timestamp_millis(),
                    "CloudWatchMetrics": directives,
                }),
            );
            docs.push(Value::Object(doc));
        }
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn counts_are_kept_per_org_and_drained_once() {
        let m = Metrics::new();
        let other = m.clone();
        m.add("crm", "acme", Counter::CallsMade, 2);
        other.add("crm", "acme", Counter::CallsMade, 3);
        m.add("crm", "globex", Counter::CallsMade, 1);
        m.add("crm", "globex", Counter::Restarts, 0);
        let s = m.take();
        assert_eq!(s.count("crm", "acme", Counter::CallsMade), 5);
        assert_eq!(s.count("crm", "globex", Counter::CallsMade), 1);
        assert_eq!(s.total(Counter::CallsMade), 6);
        assert!(
            !s.counts[&("crm".into(), "globex".into())].contains_key(&Counter::Restarts),
            "a zero is not a count"
        );
        assert!(m.take().is_empty(), "drained");
    }

    #[test]
    fn burn_keeps_the_highest_count_seen() {
        let m = Metrics::new();
        m.burn("crm", "acme", "d2026-11-22", 90, 100);
        m.burn("crm", "acme", "d2026-11-23", 40, 100);
        m.burn("crm", "acme", "d2026-11-23", 39, 100);
        m.burn("crm", "acme", "d2026-11-22", 95, 100);
        assert_eq!(
            m.peek().burn[&("crm".into(), "acme".into())],
            Burn {
                window: "d2026-11-23".into(),
                used: 40,
                limit: 100
            },
            "the newest day, its highest count"
        );
        assert_eq!(m.peek().burn.len(), 1, "peek keeps it");
    }

    /// The shape CloudWatch requires: every metric a directive names is a
    /// number at the root, every dimension a string at the root.
    #[test]
    fn emf_documents_are_what_cloudwatch_extracts() {
        let m = Metrics::new();
        m.add("crm", "acme", Counter::CallsMade, 7);
        m.add("crm", "acme", Counter::DenialsDayLimit, 1);
        m.burn("crm", "acme", "d2026-11-23", 2000, 2500);
        m.add("crm", "globex", Counter::DeadLetters, 1);
        m.add("crm", "globex", Counter::ConnectionsPaused, 1);
        let morning = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        let docs = m.take().to_emf("complete-transfer", morning, 18);
        assert_eq!(docs.len(), 2, "one document per org");
        for doc in &docs {
            let aws = &doc["_aws"];
            assert_eq!(aws["Timestamp"], morning.timestamp_millis());
            for d in aws["CloudWatchMetrics"].as_array().unwrap() {
                assert_eq!(d["Namespace"], NAMESPACE);
                for set in d["Dimensions"].as_array().unwrap() {
                    for dim in set.as_array().unwrap() {
                        assert!(doc[dim.as_str().unwrap()].is_string(), "{dim} in {doc}");
                    }
                }
                for metric in d["Metrics"].as_array().unwrap() {
                    let name = metric["Name"].as_str().unwrap();
                    assert!(doc[name].is_number(), "{name} in {doc}");
                }
            }
        }
        let acme = docs.iter().find(|d| d["Org"] == "acme").unwrap();
        assert_eq!(acme["CallsMade"], 7);
        assert_eq!(acme["DenialsDayLimit"], 1);
        assert_eq!(acme["BudgetUsedPercent"], 80.0);
        assert_eq!(acme["BudgetUsedPercentEarly"], 80.0);
        let per_function = &acme["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(
            per_function["Dimensions"],
            serde_json::json!([["Function"]]),
            "org is a property of the per-function metrics, not a dimension"
        );
        // The template's alarm watches ConnectionsPaused without a dimension.
        let globex = docs.iter().find(|d| d["Org"] == "globex").unwrap();
        assert!(globex["_aws"]["CloudWatchMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["Dimensions"] == serde_json::json!([[]])
                && d["Metrics"][0]["Name"] == "ConnectionsPaused"));
        let evening = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 19, 0, 0)
            .unwrap();
        m.burn("crm", "acme", "d2026-11-23", 2000, 2500);
        let late = m.take().to_emf("complete-transfer", evening, 18);
        assert!(late[0].get("BudgetUsedPercentEarly").is_none());
        assert_eq!(late[0]["BudgetUsedPercent"], 80.0);
    }
}
