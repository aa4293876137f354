//! The HTTP side of the simulator: routing, limits, faults, counters.
//!
//! `serve` wires the router: middleware in `middleware.rs` (auth, limits,
//! faults), one handler per route in `routes.rs`; the state, counters and
//! fault switches live here.

mod middleware;
mod routes;

use crate::data::{ts, Dataset, Rng};
use crate::{Sim, SimConfig};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use metered::SharedClock;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// How a 429 says when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryAfterStyle {
    #[default]
    Seconds,
    HttpDate,
}

/// Faults on demand. Counters are "the next N responses".
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every response (the simulator may sleep).
    pub latency_ms: u64,
    pub next_5xx: u32,
    /// 429s regardless of budget, with `Retry-After: burst_retry_after_secs`
    /// (0 is sent as `Retry-After: 0`; as an HTTP date, a negative value is
    /// a date in the past).
    pub next_429: u32,
    pub burst_retry_after_secs: i64,
    /// With the 429s of `next_429`, an `X-RateLimit-Reset` header (unix
    /// seconds) this many seconds from the API's clock (negative: a reset
    /// already past, as a clock behind ours says), and no `Retry-After`.
    pub burst_reset_offset_secs: Option<i64>,
    /// Cursor listings (customers) never end: after the last page, empty
    /// pages, each with a new cursor.
    pub endless_empty_pages: bool,
    /// Every call is answered 429 until this time (of the API's clock),
    /// with the hint of `burst_retry_after_secs` / `burst_reset_offset_secs`
    /// (e.g. `Retry-After: 0` all along).
    pub throttle_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Keys the platform no longer accepts (revoked, expired): every
    /// request with one is answered `401`, before any limit counts it.
    pub revoked_keys: std::collections::BTreeSet<String>,
    /// Keys revoked once they have made this many accepted calls (a user
    /// disconnects the app mid-day): from then on as in `revoked_keys`.
    pub revoke_after_calls: BTreeMap<String, u64>,
    /// Data Source rows the platform refuses: a push inserting one of
    /// these ids is answered `422`, naming it, and nothing is applied.
    pub refuse_row_ids: std::collections::BTreeSet<String>,
    /// The next N responses are `307 Temporary Redirect` to this URL (a
    /// moved API, or a hostile one fishing for the credential).
    pub next_redirect: u32,
    pub redirect_to: String,
    /// Like `next_redirect`, for the next N calls of one endpoint (route
    /// template, e.g. `POST /notes`) only.
    pub redirect_on: BTreeMap<String, u32>,
    pub retry_after_style: RetryAfterStyle,
    /// 503 with Retry-After.
    pub next_503_retry_after: u32,
    /// 200 with a JSON body that holds no records array (an error object).
    pub next_no_records: u32,
    /// 503 without Retry-After, plain text (a load balancer's page).
    pub next_503_plain: u32,
    pub next_malformed_json: u32,
    pub next_truncated_body: u32,
    pub next_dropped_connection: u32,
    /// 400s whose body echoes the request's Authorization header (a hostile
    /// API; the connector must not leak it).
    pub next_400_echo_auth: u32,
    /// Where in the 400's body the echoed header starts (0: in a JSON
    /// field); a plain-text body of that many characters precedes it.
    pub echo_auth_offset: usize,
    /// A list response whose records lack their id.
    pub next_missing_ids: u32,
    /// Modify one record of the listed type after every list page.
    pub change_between_pages: bool,
    /// Cursor and link-header lists hand out, from the second page on, the
    /// cursor or next link of the page just served (an endless loop).
    pub repeat_next: bool,
    /// The next response carries this many bytes of padding.
    pub next_huge_body: Option<usize>,
    /// Hostile mode: this percentage of counted calls fails, each with one
    /// of 500, 502 and 503 (no `Retry-After`), a body that is not JSON, a
    /// body cut short, or a dropped connection; chosen by a seeded
    /// generator, so a run is repeatable.
    pub fail_percent: u32,
    /// The next N responses send their headers at once, then drip the body
    /// a few bytes every 100 ms for 2 s (a stalled proxy).
    pub next_slow_drip: u32,
    /// Page-numbered lists (invoices) ignore the page parameter and serve
    /// page 1 every time.
    pub ignore_page_param: bool,
    /// Calls that failed by `fail_percent`, per failure kind.
    pub failed_by_kind: BTreeMap<&'static str, u64>,
    /// The next N calls to an endpoint (`GET /customers`, as in
    /// [`Stats::calls_by_endpoint`]) answer with a body that is not JSON.
    pub malformed_on: BTreeMap<String, u32>,
    /// Another client of the organization behind a key: after every Nth
    /// call of that key it spends one call of the same budget too (counted
    /// in `calls_by_key_day` and `shadow_calls`, never by metered), while
    /// the budget has room.
    pub shadow_every: BTreeMap<String, u64>,
    /// The shadow client's calls spend only the daily budget, not the
    /// shapes: another app of the same account, where the shapes are per
    /// app (HubSpot's 10 seconds) and the day is per account.
    pub shadow_spends_only_the_day: bool,
}

/// The failures hostile mode picks from.
const HOSTILE_KINDS: [&str; 6] = ["500", "502", "503", "malformed", "truncated", "dropped"];

fn take(n: &mut u32) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// What the simulator saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Served calls (not 429s) per `METHOD /route`.
    pub calls_by_endpoint: BTreeMap<String, u64>,
    /// Served calls per organization key and `METHOD /route`.
    pub calls_by_key_endpoint: BTreeMap<(String, String), u64>,
    /// Served calls per organization key.
    pub calls_by_key: BTreeMap<String, u64>,
    /// Served calls per key and UTC day.
    pub calls_by_key_day: BTreeMap<(String, String), u64>,
    /// Served calls per key and UTC minute (`2026-11-22T14:30`): what a
    /// per-minute window is checked against.
    pub calls_by_key_minute: BTreeMap<(String, String), u64>,
    pub rejected_429: u64,
    /// 429s a [`crate::Shape`] answered (also in `rejected_429`).
    pub rejected_by_shape: u64,
    /// Requests refused `401` for a revoked key, per key.
    pub rejected_401_by_key: BTreeMap<String, u64>,
    /// Most requests of one key in flight at once (counted at arrival).
    pub max_concurrent: usize,
    /// Create requests received per Idempotency-Key (retries included).
    pub create_requests_by_idempotency_key: BTreeMap<String, u64>,
    /// Records actually created per Idempotency-Key (the API dedupes by key).
    pub creates_by_idempotency_key: BTreeMap<String, u64>,
    /// Data Source push requests received per Idempotency-Key (retries
    /// included).
    pub push_requests_by_idempotency_key: BTreeMap<String, u64>,
    /// Data Source pushes applied per Idempotency-Key: a repeat of a key
    /// the organization already used is answered but not applied again.
    pub pushes_by_idempotency_key: BTreeMap<String, u64>,
    /// Data Source pushes (each with its inserts and deletes).
    pub datasource_pushes: u64,
    /// Calls the shadow client (`Faults::shadow_every`) made, per key.
    pub shadow_calls: BTreeMap<String, u64>,
    /// Points the shapes charged per key (`SimConfig::costs`), after
    /// settlement (`SimConfig::settle_costs`).
    pub points_by_key: BTreeMap<String, u64>,
    /// Data Source pushes per organization key.
    pub pushes_by_key: BTreeMap<String, u64>,
    /// Records created per organization key (each once: the API dedupes
    /// `Idempotency-Key`s within an organization, as real APIs scope them
    /// to the account). What "performed" means for an HTTP action.
    pub created_by_key: BTreeMap<String, Vec<Value>>,
    /// Requests per list page-size seen (size → count).
    pub page_sizes: BTreeMap<usize, u64>,
}

impl Stats {
    pub fn served(&self) -> u64 {
        self.calls_by_key.values().sum()
    }
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.calls_by_endpoint.get(endpoint).copied().unwrap_or(0)
    }
    /// Served calls of one organization key to `endpoint`.
    pub fn calls_of(&self, key: &str, endpoint: &str) -> u64 {
        self.calls_by_key_endpoint
            .get(&(key.to_string(), endpoint.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

pub(crate) struct State {
    config: SimConfig,
    clock: SharedClock,
    data: Mutex<Dataset>,
    /// Rows per (organization key, data source).
    datasources: Mutex<BTreeMap<(String, String), BTreeMap<String, Value>>>,
    /// (organization key, Idempotency-Key) of pushes already applied.
    applied_pushes: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Created records per (organization key, Idempotency-Key).
    created: Mutex<BTreeMap<(String, String), Value>>,
    stats: Mutex<Stats>,
    in_flight: Mutex<BTreeMap<String, usize>>,
    /// When each key's accepted calls arrived (for [`crate::Shape`]s).
    pub(crate) arrivals: Mutex<BTreeMap<String, Vec<DateTime<Utc>>>>,
    pub(crate) faults: Mutex<Faults>,
    rng: Mutex<Rng>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub(crate) fn new(config: SimConfig, clock: SharedClock) -> Self {
        let data = Dataset::generate(&config, clock.now());
        Self {
            rng: Mutex::new(Rng::new(config.seed ^ 0xABCD)),
            config,
            clock,
            data: Mutex::new(data),
            datasources: Mutex::default(),
            applied_pushes: Mutex::default(),
            created: Mutex::default(),
            stats: Mutex::default(),
            in_flight: Mutex::default(),
            arrivals: Mutex::default(),
            faults: Mutex::default(),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    pub(crate) fn reset_stats(&self) {
        *lock(&self.stats) = Stats::default();
    }

    fn touch(&self, record: &mut Value) {
        let now = self.clock.now();
        let v = record["version"].as_u64().unwrap_or(1) + 1;
        record["version"] = json!(v);
        record["updated_at"] = if record["updated_at"].is_number() {
            json!(now.timestamp())
        } else {
            json!(ts(now))
        };
    }

    pub(crate) fn modify(&self, record_type: &str, n: usize) -> Vec<String> {
        let mut data = lock(&self.data);
        let Some(records) = data.types.get_mut(record_type) else {
            return Vec::new();
        };
        let mut order: Vec<usize> = (0..records.len()).collect();
        // Cached: the key parses a timestamp, once per record rather than
        // once per comparison (this sort was a tenth of a 30-day simulation).
        order.sort_by_cached_key(|i| updated_at(&records[*i]));
        let mut ids = Vec::new();
        for i in order.into_iter().take(n) {
            self.touch(&mut records[i]);
            ids.push(records[i]["id"].as_str().unwrap_or_default().to_string());
        }
        ids
    }

    pub(crate) fn modify_ids(&self, record_type: &str, ids: &[String]) {
        let mut data = lock(&self.data);
        if let Some(records) = data.types.get_mut(record_type) {
            for r in records
                .iter_mut()
                .filter(|r| ids.iter().any(|id| r["id"] == id.as_str()))
            {
                self.touch(r);
            }
        }
    }

    pub(crate) fn insert(&self, record_type: &str, n: usize) -> Vec<String> {
        let mut data = lock(&self.data);
        let mut rng = lock(&self.rng);
        let now = self.clock.now();
        let Some(records) = data.types.get_mut(record_type) else {
            return Vec::new();
        };
        let start = records.len();
        let mut ids = Vec::new();
        for i in start..start + n {
            let mut r = match record_type {
                "customers" => crate::data::customer(i, &mut rng, now),
                _ => {
                    let mut r = records.first().cloned().unwrap_or_else(|| json!({}));
                    let prefix = &record_type[..3];
                    r["id"] = json!(format!("{prefix}_n{i:06}"));
                    r
                }
            };
            self.touch(&mut r);
            ids.push(r["id"].as_str().unwrap_or_default().to_string());
            records.push(r);
        }
        records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        ids
    }

    /// Removes `field` from record `id` (hostile data: a field a template
    /// needs goes missing).
    pub(crate) fn remove_field(&self, record_type: &str, id: &str, field: &str) {
        let mut data = lock(&self.data);
        if let Some(r) = data
            .types
            .get_mut(record_type)
            .and_then(|rs| rs.iter_mut().find(|r| r["id"] == id))
        {
            r.as_object_mut().map(|o| o.remove(field));
        }
    }

    /// Sets `field` of record `id` of `record_type` to `value` (e.g. `null`).
    pub(crate) fn set_field(&self, record_type: &str, id: &str, field: &str, value: Value) {
        let mut data = lock(&self.data);
        if let Some(r) = data
            .types
            .get_mut(record_type)
            .and_then(|rs| rs.iter_mut().find(|r| r["id"] == id))
        {
            r[field] = value;
        }
    }

    /// Adds a record exactly as given (no id, huge, …): hostile data.
    pub(crate) fn insert_raw(&self, record_type: &str, record: Value) {
        let mut data = lock(&self.data);
        if let Some(records) = data.types.get_mut(record_type) {
            records.push(record);
            records.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        }
    }

    pub(crate) fn records(&self, record_type: &str) -> Vec<Value> {
        lock(&self.data)
            .types
            .get(record_type)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn datasource_rows(&self, name: &str) -> Vec<Value> {
        lock(&self.datasources)
            .iter()
            .filter(|((_, n), _)| n == name)
            .flat_map(|(_, rows)| rows.values().cloned())
            .collect()
    }

    pub(crate) fn datasource_rows_of(&self, key: &str, name: &str) -> Vec<Value> {
        lock(&self.datasources)
            .get(&(key.to_string(), name.to_string()))
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn updated_at(r: &Value) -> i64 {
    match &r["updated_at"] {
        Value::Number(n) => n.as_i64().unwrap_or(0) * 1000,
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .unwrap_or(0),
        _ => 0,
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n * 1000);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A running simulator.
pub struct SimServer {
    pub addr: SocketAddr,
    pub sim: Sim,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `sim` on `addr` (use `127.0.0.1:0` in tests).
pub async fn serve(sim: Sim, addr: SocketAddr) -> std::io::Result<SimServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/datasources/{name}/rows",
            post(routes::push_rows).get(routes::datasource_rows),
        )
        .route("/hooks/{name}", post(routes::hook))
        .route(
            "/{record_type}",
            get(routes::list_records).post(routes::create),
        )
        .route(
            "/{record_type}/{id}",
            get(routes::get_one).post(routes::create_under),
        )
        .fallback(routes::no_route)
        // Outermost last: auth, then limits, then faults, then the route.
        .layer(from_fn_with_state(sim.clone(), middleware::faults))
        .layer(from_fn_with_state(sim.clone(), middleware::limits))
        .layer(from_fn_with_state(sim.clone(), middleware::auth))
        .with_state(sim.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimServer { addr, sim, task })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn too_many(retry_after: HeaderValue) -> Response {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"error": "rate limit exceeded"}),
    );
    r.headers_mut().insert("retry-after", retry_after);
    r
}

fn retry_after_value(style: RetryAfterStyle, now: DateTime<Utc>, secs: i64) -> HeaderValue {
    let text = match style {
        RetryAfterStyle::Seconds => secs.max(0).to_string(),
        RetryAfterStyle::HttpDate => (now + Duration::seconds(secs))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("1"))
}

/// Leaves the in-flight count when the request ends, however it ends.
struct InFlight<'a> {
    state: &'a State,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.state.in_flight).get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The route template of a request, for counters.
fn route(method: &Method, segments: &[&str]) -> String {
    let path = match segments {
        [t] => format!("/{t}"),
        ["datasources", _, "rows"] => "/datasources/{name}/rows".to_string(),
        ["hooks", _] => "/hooks/{name}".to_string(),
        [t, _] => format!("/{t}/{{id}}"),
        _ => format!("/{}", segments.join("/")),
    };
    format!("{method} {path}")
}
