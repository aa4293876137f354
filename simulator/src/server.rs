//! The HTTP side of the simulator: routing, limits, faults, counters.

use crate::data::{ts, Dataset, Rng};
use crate::{Sim, SimConfig};
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use metered::core::clock::SharedClock;
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
    /// 429s regardless of budget, with `Retry-After: burst_retry_after_secs`.
    pub next_429: u32,
    pub burst_retry_after_secs: u64,
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
    pub rejected_429: u64,
    /// Most requests of one key in flight at once (counted at arrival).
    pub max_concurrent: usize,
    /// Create requests received per Idempotency-Key (retries included).
    pub create_requests_by_idempotency_key: BTreeMap<String, u64>,
    /// Records actually created per Idempotency-Key (the API dedupes by key).
    pub creates_by_idempotency_key: BTreeMap<String, u64>,
    /// Data Source pushes received per Idempotency-Key.
    pub pushes_by_idempotency_key: BTreeMap<String, u64>,
    /// Data Source pushes (each with its inserts and deletes).
    pub datasource_pushes: u64,
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
    /// Created records per (organization key, Idempotency-Key).
    created: Mutex<BTreeMap<(String, String), Value>>,
    stats: Mutex<Stats>,
    in_flight: Mutex<BTreeMap<String, usize>>,
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
            created: Mutex::default(),
            stats: Mutex::default(),
            in_flight: Mutex::default(),
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
    let app = Router::new().fallback(handle).with_state(sim.clone());
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

async fn handle(
    AxState(sim): AxState<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &*sim.inner;
    let key = match headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "missing bearer token"}),
            )
        }
    };
    let now = state.clock.now();
    // Concurrency: counted at arrival, so a fourth request is seen even if
    // it is then refused.
    let arrived = {
        let mut in_flight = lock(&state.in_flight);
        let n = in_flight.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let _guard = InFlight {
        state,
        key: key.clone(),
    };
    {
        let mut stats = lock(&state.stats);
        stats.max_concurrent = stats.max_concurrent.max(arrived);
    }
    let faults = lock(&state.faults).clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
    }
    if arrived > state.config.max_concurrent {
        lock(&state.stats).rejected_429 += 1;
        return too_many(retry_after_value(faults.retry_after_style, now, 1));
    }
    {
        let mut f = lock(&state.faults);
        if take(&mut f.next_429) {
            drop(f);
            lock(&state.stats).rejected_429 += 1;
            return too_many(retry_after_value(
                faults.retry_after_style,
                now,
                faults.burst_retry_after_secs.max(1) as i64,
            ));
        }
    }
    let day = now.format("%Y-%m-%d").to_string();
    {
        let mut stats = lock(&state.stats);
        let used = stats
            .calls_by_key_day
            .get(&(key.clone(), day.clone()))
            .copied()
            .unwrap_or(0);
        if used >= state.config.daily_budget {
            stats.rejected_429 += 1;
            let midnight = (now + Duration::days(1))
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
                .unwrap_or(now);
            return too_many(retry_after_value(
                faults.retry_after_style,
                now,
                (midnight - now).num_seconds().max(1),
            ));
        }
    }
    let path = uri.path().trim_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut endpoint = route(&method, &segments);
    let by_ids = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("ids=") || p.starts_with("id="))
    });
    if method == Method::GET && segments.len() == 1 && by_ids {
        endpoint.push_str(" (by ids)");
    }
    {
        let mut stats = lock(&state.stats);
        *stats.calls_by_endpoint.entry(endpoint.clone()).or_default() += 1;
        *stats
            .calls_by_key_endpoint
            .entry((key.clone(), endpoint.clone()))
            .or_default() += 1;
        *stats.calls_by_key.entry(key.clone()).or_default() += 1;
        *stats
            .calls_by_key_day
            .entry((key.clone(), day))
            .or_default() += 1;
    }
    // Faults that replace a served response (the call still counted).
    {
        let mut f = lock(&state.faults);
        let hostile = if f.fail_percent > 0 {
            let mut rng = lock(&state.rng);
            (rng.below(100) < f.fail_percent as usize)
                .then(|| HOSTILE_KINDS[rng.below(HOSTILE_KINDS.len())])
        } else {
            None
        };
        if let Some(kind) = hostile {
            *f.failed_by_kind.entry(kind).or_default() += 1;
            match kind {
                "500" => f.next_5xx += 1,
                "502" => {
                    return (StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>").into_response()
                }
                "503" => f.next_503_plain += 1,
                "malformed" => f.next_malformed_json += 1,
                "truncated" => f.next_truncated_body += 1,
                _ => f.next_dropped_connection += 1,
            }
        }
        if let Some(n) = f.malformed_on.get_mut(&endpoint) {
            if take(n) {
                f.next_malformed_json += 1;
            }
        }
        if take(&mut f.next_5xx) {
            return json_response(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "upstream exploded"}),
            );
        }
        if take(&mut f.next_no_records) {
            return json_response(StatusCode::OK, &json!({"error": "temporarily unavailable"}));
        }
        if take(&mut f.next_503_plain) {
            return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
        }
        if take(&mut f.next_503_retry_after) {
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "maintenance"}),
            );
            r.headers_mut().insert(
                "retry-after",
                retry_after_value(
                    faults.retry_after_style,
                    now,
                    faults.burst_retry_after_secs.max(1) as i64,
                ),
            );
            return r;
        }
        if take(&mut f.next_400_echo_auth) {
            let echoed = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if f.echo_auth_offset > 0 {
                let body = format!(
                    "{}{echoed} and more text after it",
                    "x".repeat(f.echo_auth_offset)
                );
                return (StatusCode::BAD_REQUEST, body).into_response();
            }
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad request", "you_sent": echoed}),
            );
        }
        if let Some(n) = f.next_huge_body.take() {
            let body = format!("{{\"data\": [], \"padding\": \"{}\"}}", "x".repeat(n));
            return (StatusCode::OK, [("content-type", "application/json")], body).into_response();
        }
        if take(&mut f.next_malformed_json) {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"data\": [{\"id\": \"x\", ",
            )
                .into_response();
        }
        if take(&mut f.next_truncated_body) {
            let stream = futures::stream::iter(vec![
                Ok::<_, std::io::Error>(Bytes::from_static(b"{\"data\": [")),
                Err(std::io::Error::other("connection reset mid-body")),
            ]);
            return Response::builder()
                .status(200)
                .body(Body::from_stream(stream))
                .unwrap_or_default();
        }
        if take(&mut f.next_slow_drip) {
            let stream = futures::stream::unfold(0u32, |i| async move {
                if i >= 20 {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let chunk = if i == 0 { "{\"data\": [" } else { " " };
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
            });
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_default();
        }
        if take(&mut f.next_dropped_connection) {
            let stream =
                futures::stream::iter(vec![Err::<Bytes, _>(std::io::Error::other("dropped"))]);
            return Response::builder()
                .status(200)
                .body(Body::from_stream(stream))
                .unwrap_or_default();
        }
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            reqwest::Url::parse(&format!("http://x/?{q}"))
                .map(|u| u.query_pairs().into_owned().collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let params = |name: &str| {
        query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };

    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["datasources", name, "rows"]) => {
            let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "body must be JSON"}),
                );
            };
            let mut ds = lock(&state.datasources);
            let rows = ds.entry((key.clone(), name.to_string())).or_default();
            let mut deleted = 0;
            for id in payload["deletes"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    deleted += usize::from(rows.remove(id).is_some());
                }
            }
            let mut inserted = 0;
            for row in payload["inserts"].as_array().into_iter().flatten() {
                if let Some(id) = row["id"].as_str() {
                    rows.insert(id.to_string(), row.clone());
                    inserted += 1;
                }
            }
            {
                let mut stats = lock(&state.stats);
                stats.datasource_pushes += 1;
                *stats.pushes_by_key.entry(key.clone()).or_default() += 1;
                if let Some(k) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
                    *stats
                        .pushes_by_idempotency_key
                        .entry(k.to_string())
                        .or_default() += 1;
                }
            }
            json_response(
                StatusCode::OK,
                &json!({"inserted": inserted, "deleted": deleted}),
            )
        }
        (Method::GET, ["datasources", name, "rows"]) => json_response(
            StatusCode::OK,
            &json!({"data": state.datasource_rows_of(&key, name)}),
        ),
        (Method::POST, ["hooks", _]) => json_response(StatusCode::OK, &json!({"ok": true})),
        (Method::POST, [record_type]) => {
            let idem = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(k) = &idem {
                *lock(&state.stats)
                    .create_requests_by_idempotency_key
                    .entry(k.clone())
                    .or_default() += 1;
                if let Some(existing) = lock(&state.created).get(&(key.clone(), k.clone())) {
                    return json_response(StatusCode::OK, existing);
                }
                // Counted once per key: the API dedupes by Idempotency-Key.
                *lock(&state.stats)
                    .creates_by_idempotency_key
                    .entry(k.clone())
                    .or_default() += 1;
            }
            let Ok(mut record) = serde_json::from_slice::<Value>(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "body must be JSON"}),
                );
            };
            let id = format!(
                "{}_c{:06}",
                &record_type[..record_type.len().min(3)],
                lock(&state.created).len()
            );
            record["id"] = json!(id);
            record["created_at"] = json!(ts(now));
            if let Some(k) = idem {
                lock(&state.created).insert((key.clone(), k), record.clone());
            }
            lock(&state.stats)
                .created_by_key
                .entry(key.clone())
                .or_default()
                .push(record.clone());
            json_response(StatusCode::CREATED, &record)
        }
        (Method::GET, [record_type, id]) => {
            let data = lock(&state.data);
            match data
                .types
                .get(*record_type)
                .and_then(|rs| rs.iter().find(|r| r["id"] == *id))
            {
                Some(r) => json_response(StatusCode::OK, &json!({"data": r})),
                None => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
            }
        }
        (Method::GET, [record_type]) => list(
            state,
            record_type,
            &param,
            &params,
            faults.change_between_pages,
            faults.repeat_next,
            faults.ignore_page_param,
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no route {endpoint}")}),
        ),
    }
}

fn list(
    state: &State,
    record_type: &str,
    param: &dyn Fn(&str) -> Option<String>,
    params: &dyn Fn(&str) -> Vec<String>,
    change_between_pages: bool,
    repeat_next: bool,
    ignore_page_param: bool,
) -> Response {
    let data = lock(&state.data);
    let Some(all) = data.types.get(record_type) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no record type {record_type}")}),
        );
    };
    let max = state.config.max_page_size;
    let (size_param, since_param, until_param, records_key) = match record_type {
        "customers" => ("limit", "updated_since", "updated_until", "data"),
        "classes" => ("per_page", "", "", ""),
        "invoices" => ("per_page", "modified_since", "modified_until", "data"),
        _ => ("limit", "since", "until", "items"),
    };
    let size = param(size_param)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, max);
    // Bulk lookups by ids.
    let ids: Vec<String> = match record_type {
        "customers" => param("ids")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        "invoices" => params("id"),
        _ => Vec::new(),
    };
    if !ids.is_empty() {
        if ids.len() > state.config.max_bulk_ids {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("at most {} ids per call", state.config.max_bulk_ids)}),
            );
        }
        let found: Vec<Value> = all
            .iter()
            .filter(|r| ids.iter().any(|id| r["id"] == id.as_str()))
            .cloned()
            .collect();
        return json_response(StatusCode::OK, &json!({ "data": found }));
    }
    let since = param(since_param).and_then(|s| parse_time(&s));
    let until = param(until_param).and_then(|s| parse_time(&s));
    let matching: Vec<&Value> = all
        .iter()
        .filter(|r| {
            if since.is_none() && until.is_none() {
                return true;
            }
            let t = updated_at(r);
            since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
        })
        .collect();
    lock(&state.stats)
        .page_sizes
        .entry(size)
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let (page, mut response_headers, next_cursor): (
        Vec<Value>,
        Vec<(&str, String)>,
        Option<String>,
    ) = match record_type {
        "customers" => {
            // Keyset cursor: the last id served; stable while records change.
            let after = param("cursor");
            let rest: Vec<&Value> = matching
                .into_iter()
                .filter(|r| {
                    after
                        .as_deref()
                        .is_none_or(|a| r["id"].as_str().unwrap_or_default() > a)
                })
                .collect();
            let page: Vec<Value> = rest.iter().take(size).map(|r| (*r).clone()).collect();
            let next = (rest.len() > size).then(|| {
                page.last()
                    .and_then(|r| r["id"].as_str())
                    .unwrap_or_default()
                    .to_string()
            });
            // Hostile: from the second page on, the cursor just used again.
            let next = match (&after, repeat_next) {
                (Some(a), true) => Some(a.clone()),
                _ => next,
            };
            (page, Vec::new(), next)
        }
        "classes" => {
            let p = param("page")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let page: Vec<Value> = matching
                .iter()
                .skip((p - 1) * size)
                .take(size)
                .map(|r| (*r).clone())
                .collect();
            let mut headers = Vec::new();
            if p * size < matching.len() {
                // Hostile: from the second page on, a link to this page.
                let to = if repeat_next && p > 1 { p } else { p + 1 };
                headers.push((
                    "link",
                    format!("</classes?page={to}&per_page={size}>; rel=\"next\""),
                ));
            }
            (page, headers, None)
        }
        "invoices" => {
            let p = param("page")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            // Hostile: the page parameter is ignored; page 1 every time.
            let p = if ignore_page_param { 1 } else { p };
            (
                matching
                    .iter()
                    .skip((p - 1) * size)
                    .take(size)
                    .map(|r| (*r).clone())
                    .collect(),
                Vec::new(),
                None,
            )
        }
        _ => {
            let o = param("offset")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            (
                matching
                    .iter()
                    .skip(o)
                    .take(size)
                    .map(|r| (*r).clone())
                    .collect(),
                Vec::new(),
                None,
            )
        }
    };
    drop(data);
    let missing_ids = take(&mut lock(&state.faults).next_missing_ids);
    let page: Vec<Value> = if missing_ids {
        page.into_iter()
            .map(|mut r| {
                r.as_object_mut().map(|o| o.remove("id"));
                r
            })
            .collect()
    } else {
        page
    };
    if change_between_pages {
        state.modify(record_type, 1);
    }
    let body = match (record_type, records_key) {
        (_, "") => Value::Array(page),
        ("customers", _) => json!({ "data": page, "next_cursor": next_cursor }),
        (_, key) => json!({ key: page }),
    };
    let mut r = json_response(StatusCode::OK, &body);
    for (name, value) in response_headers.drain(..) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}
