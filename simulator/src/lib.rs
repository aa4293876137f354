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

use metered::core::clock::SharedClock;
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
