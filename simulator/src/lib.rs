//! # metered-sim
//!
//! A real HTTP server standing in for a limited third-party app, as the seeds
//! describe one: record types with foreign keys (customers; classes;
//! invoices → customers; check-ins → customers and classes) generated
//! deterministically from a seed and a size; list endpoints in four
//! pagination styles (cursor, link header, page number, offset) with
//! modified-since filters; get-by-id; bulk-by-ids; create with
//! `Idempotency-Key`; a Data Source rows endpoint taking inserts and deletes
//! in one call.
//!
//! Limits: a daily call budget per organization key (2,500 by default,
//! resetting at UTC midnight on the injected clock) and a soft limit of 3
//! concurrent requests per key, both answered with 429 and `Retry-After`.
//!
//! [`Sim`] is the handle tests hold: counters ([`Sim::stats`]), faults on
//! demand ([`Sim::faults`]), and changes to the data over time
//! ([`Sim::modify`], [`Sim::insert`]). This is a simulator: it may sleep to
//! add latency.

mod data;
mod server;

pub use data::Dataset;
pub use server::{serve, Faults, RetryAfterStyle, SimServer, Stats};

use metered::SharedClock;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The connector config for this API (`app.toml`), pointed at `base_url`.
pub fn app_config(base_url: &str) -> String {
    include_str!("../app.toml").replace("http://127.0.0.1:9/", base_url)
}

/// Shape and limits of a simulated app.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub customers: usize,
    pub classes: usize,
    pub invoices: usize,
    pub checkins: usize,
    /// Calls a key may make per UTC day.
    pub daily_budget: u64,
    /// Soft limit on concurrent requests per key.
    pub max_concurrent: usize,
    /// Larger page-size requests are clamped to this.
    pub max_page_size: usize,
    /// Most ids a bulk lookup takes.
    pub max_bulk_ids: usize,
    /// Further limits the API enforces per key, each answered with 429
    /// and the `Retry-After` of its shape (see [`Shape`]).
    pub shapes: Vec<Shape>,
    /// Also report the daily budget in the IETF `RateLimit` /
    /// `RateLimit-Policy` fields (`"day";q=…;w=86400`).
    pub standard_headers: bool,
    /// What a call to an endpoint (`GET /customers`, as the stats name
    /// it) costs in the shapes: GraphQL-style points. Others cost 1.
    pub costs: BTreeMap<String, u64>,
    /// Charge a costly call (`costs`) its cost up front, then settle it
    /// to its actual cost, half of it rounded up, giving the rest back and
    /// reporting the actual cost in `x-query-cost` (as GraphQL APIs charge a
    /// query's requested cost and refund what it did not use).
    pub settle_costs: bool,
}

/// A limit shape an API publishes, enforced per organization key on the
/// calls it accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `calls` per fixed window of `secs` (reported in
    /// `x-limit-{secs}s-remaining` and `-limit`), the windows starting
    /// `offset_secs` after the UTC-aligned boundaries (an API whose day
    /// starts at 06:00 UTC: `secs` 86,400, `offset_secs` 21,600).
    Fixed {
        calls: u64,
        secs: i64,
        offset_secs: i64,
    },
    /// At most `calls` in any trailing `secs` (Salesforce's rolling 24
    /// hours, a rolling minute).
    Rolling { calls: u64, secs: i64 },
    /// At most `calls` in any trailing `secs` across every key: the app's
    /// own limit (Xero's 10,000 a minute across tenants).
    AppRolling { calls: u64, secs: i64 },
    /// A leaky bucket of `capacity` calls draining `per_sec` a second
    /// (Shopify's 40 and 2); the level is reported as Shopify does, in
    /// `X-Shopify-Shop-Api-Call-Limit: used/capacity`.
    Bucket { capacity: u64, per_sec: f64 },
    /// `calls` per UTC-aligned fixed window of `secs` across every key
    /// (Xero's app-wide minute); reported in `x-app-limit-{secs}s-*`.
    AppFixed { calls: u64, secs: i64 },
}

/// `30/1m` → (30, 60): calls and a length in `s`, `m`, `h` or `d`.
fn calls_per(spec: &str) -> Result<(u64, i64), String> {
    let (calls, every) = spec
        .split_once('/')
        .ok_or_else(|| format!("{spec:?}: expected CALLS/LENGTH, e.g. 30/1m"))?;
    let calls: u64 = calls
        .trim()
        .parse()
        .map_err(|_| format!("{calls:?} is not a number of calls"))?;
    Ok((calls, secs(every)?))
}

/// `10s`, `1m`, `24h`, `1d` (a bare number is seconds) in seconds, > 0.
fn secs(spec: &str) -> Result<i64, String> {
    let spec = spec.trim();
    let (n, unit) = match spec.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => spec.split_at(i),
        None => (spec, "s"),
    };
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{spec:?}: expected a length like 10s, 1m, 24h or 1d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => return Err(format!("{spec:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    (n > 0)
        .then_some(n * unit)
        .ok_or_else(|| format!("{spec:?}: a length must be more than zero"))
}

impl std::str::FromStr for Shape {
    type Err = String;

    /// `rolling:30/1m`, `fixed:10/10s`, `fixed:40/1d@6h` (windows starting
    /// 6 h after the UTC boundaries), `bucket:40@2/s` (capacity 40 leaking
    /// 2 a second), `app-rolling:30/1m`, `app-fixed:30/1m`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            format!("{spec:?}: expected KIND:SPEC (rolling:30/1m, fixed:10/10s, fixed:40/1d@6h, bucket:40@2/s, app-rolling:30/1m, app-fixed:30/1m)")
        })?;
        let shape = match kind {
            "rolling" => {
                let (calls, secs) = calls_per(rest)?;
                Shape::Rolling { calls, secs }
            }
            "app-rolling" => {
                let (calls, secs) = calls_per(rest)?;
                Shape::AppRolling { calls, secs }
            }
            "app-fixed" => {
                let (calls, secs) = calls_per(rest)?;
                Shape::AppFixed { calls, secs }
            }
            "fixed" => {
                let (window, offset) = match rest.split_once('@') {
                    Some((w, o)) => (w, secs(o)?),
                    None => (rest, 0),
                };
                let (calls, secs) = calls_per(window)?;
                Shape::Fixed {
                    calls,
                    secs,
                    offset_secs: offset % secs,
                }
            }
            "bucket" => {
                let (capacity, rate) = rest
                    .split_once('@')
                    .ok_or_else(|| format!("{spec:?}: expected bucket:CAPACITY@RATE/s"))?;
                let capacity: u64 = capacity
                    .parse()
                    .map_err(|_| format!("{capacity:?} is not a capacity"))?;
                let per_sec: f64 = rate
                    .strip_suffix("/s")
                    .and_then(|r| r.parse().ok())
                    .filter(|r: &f64| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| format!("{rate:?}: expected a rate like 2/s"))?;
                Shape::Bucket { capacity, per_sec }
            }
            other => {
                return Err(format!(
                    "{other:?} is not a shape: rolling, fixed, bucket, app-rolling or app-fixed"
                ))
            }
        };
        match shape {
            Shape::Rolling { calls: 0, .. }
            | Shape::AppRolling { calls: 0, .. }
            | Shape::AppFixed { calls: 0, .. }
            | Shape::Fixed { calls: 0, .. }
            | Shape::Bucket { capacity: 0, .. } => {
                Err(format!("{spec:?}: a limit of 0 admits nothing"))
            }
            shape => Ok(shape),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            customers: 500,
            classes: 20,
            invoices: 2_000,
            checkins: 1_000,
            daily_budget: 2_500,
            max_concurrent: 3,
            max_page_size: 200,
            max_bulk_ids: 50,
            shapes: Vec::new(),
            standard_headers: false,
            costs: BTreeMap::new(),
            settle_costs: false,
        }
    }
}

/// The simulated app's state, shared by the server and the tests.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<server::State>,
}

impl Sim {
    pub fn new(config: SimConfig, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(server::State::new(config, clock)),
        }
    }

    /// Counters since start (or the last [`Sim::reset_stats`]).
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    pub fn reset_stats(&self) {
        self.inner.reset_stats();
    }

    /// Faults to inject into the next responses.
    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.inner.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes `n` records of `record_type` now (bumps `updated_at` and a
    /// `version` field), the oldest-updated first; returns their ids.
    pub fn modify(&self, record_type: &str, n: usize) -> Vec<String> {
        self.inner.modify(record_type, n)
    }

    /// Changes the given records now.
    pub fn modify_ids(&self, record_type: &str, ids: &[String]) {
        self.inner.modify_ids(record_type, ids)
    }

    /// Adds `n` new records of `record_type` now; returns their ids.
    pub fn insert(&self, record_type: &str, n: usize) -> Vec<String> {
        self.inner.insert(record_type, n)
    }

    /// Removes `field` from record `id` of `record_type`.
    pub fn remove_field(&self, record_type: &str, id: &str, field: &str) {
        self.inner.remove_field(record_type, id, field)
    }

    /// Sets `field` of record `id` of `record_type` to `value` (`null`, a
    /// hostile string, …).
    pub fn set_field(&self, record_type: &str, id: &str, field: &str, value: serde_json::Value) {
        self.inner.set_field(record_type, id, field, value)
    }

    /// Adds a record exactly as given (no id, over 400 KB, …): hostile data.
    pub fn insert_raw(&self, record_type: &str, record: serde_json::Value) {
        self.inner.insert_raw(record_type, record)
    }

    /// The current records of a type (what a complete transfer should find).
    pub fn records(&self, record_type: &str) -> Vec<serde_json::Value> {
        self.inner.records(record_type)
    }

    /// Rows of a Data Source, as pushed by actions (every organization's).
    pub fn datasource_rows(&self, name: &str) -> Vec<serde_json::Value> {
        self.inner.datasource_rows(name)
    }

    /// Rows of a Data Source pushed with organization key `key`.
    pub fn datasource_rows_of(&self, key: &str, name: &str) -> Vec<serde_json::Value> {
        self.inner.datasource_rows_of(key, name)
    }
}

#[cfg(test)]
mod shape_specs {
    use super::Shape;

    #[test]
    fn every_shape_reads_from_its_spec() {
        let p = |s: &str| s.parse::<Shape>();
        assert_eq!(
            p("rolling:30/1m"),
            Ok(Shape::Rolling {
                calls: 30,
                secs: 60
            })
        );
        assert_eq!(
            p("app-rolling:30/60"),
            Ok(Shape::AppRolling {
                calls: 30,
                secs: 60
            })
        );
        assert_eq!(
            p("app-fixed:5/1h"),
            Ok(Shape::AppFixed {
                calls: 5,
                secs: 3_600
            })
        );
        assert_eq!(
            p("fixed:40/1d@6h"),
            Ok(Shape::Fixed {
                calls: 40,
                secs: 86_400,
                offset_secs: 21_600
            })
        );
        assert_eq!(
            p("bucket:40@2/s"),
            Ok(Shape::Bucket {
                capacity: 40,
                per_sec: 2.0
            })
        );
        for (bad, says) in [
            ("rolling", "expected KIND:SPEC"),
            ("rolling:30", "expected CALLS/LENGTH"),
            ("rolling:x/1m", "not a number of calls"),
            ("rolling:30/1w", "unknown unit"),
            ("rolling:0/1m", "admits nothing"),
            ("bucket:40", "CAPACITY@RATE"),
            ("bucket:40@0/s", "a rate like 2/s"),
            ("leaky:1/1s", "is not a shape"),
            ("fixed:1/0s", "more than zero"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
