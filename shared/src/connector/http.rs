//! The declarative REST connector: one [`HttpConnector`] per app
//! connection, on one pooled `reqwest` client per process (rustls, explicit
//! connect and request timeouts).
//!
//! Responses are classified here and nowhere else:
//! 2xx → records; 429, or 503 with `Retry-After` (seconds or HTTP date) or
//! the configured reset header → [`ApiError::RateLimited`]; other 5xx,
//! timeouts, broken connections and 2xx bodies that are not JSON →
//! retryable, as is a 2xx without the records array (naming the pointer
//! and record type); other 4xx → permanent, naming the status. An item without an id is handed back as
//! unreadable (the caller quarantines it) so it never fails its page. Error texts are bounded and scrubbed of
//! the credential.

use crate::config::app::{
    AppConfig, AuthScheme, BulkStyle, Pagination, RecordTypeConfig, ResetFormat, TimeFormat,
    Timeouts,
};
use crate::connector::secrets::Secret;
use crate::connector::{
    ApiCount, ApiError, Connector, ListRequest, Page, PageCursor, SendRequest, Unreadable,
};
use crate::core::clock::{SharedClock, Timestamp};
use crate::core::error::{Error, Result};
use crate::core::record::Record;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde_json::Value;
use std::sync::Arc;

/// The one HTTP client of a process: pooled connections, rustls, timeouts.
pub fn http_client(timeouts: &Timeouts) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_millis(timeouts.connect_ms))
        .timeout(std::time::Duration::from_millis(timeouts.request_ms))
        .pool_max_idle_per_host(16)
        // A redirect is an error with its reason, never a second request
        // carrying the credential (see `execute`).
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("metered/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// The declarative REST connector: what `[app]` and `[record_types.*]` describe.
#[derive(Debug, Clone)]
pub struct HttpConnector {
    config: Arc<AppConfig>,
    base: Url,
    client: reqwest::Client,
    secret: Option<Secret>,
    clock: SharedClock,
    /// The API's count from the latest response that carried one.
    api_count: Arc<std::sync::Mutex<Option<ApiCount>>>,
}

impl HttpConnector {
    /// `secret` must be given when the config declares auth (resolve it
    /// with [`crate::connector::secrets::resolve`] at cold start).
    pub fn new(
        config: Arc<AppConfig>,
        client: reqwest::Client,
        secret: Option<Secret>,
        clock: SharedClock,
    ) -> Result<Self> {
        if config.app.auth.is_some() && secret.is_none() {
            return Err(Error::Config(
                "app.auth is configured but no credential was resolved".into(),
            ));
        }
        let base = Url::parse(&config.app.base_url)
            .map_err(|e| Error::Config(format!("app.base_url: {e}")))?;
        Ok(Self {
            config,
            base,
            client,
            secret,
            clock,
            api_count: Arc::default(),
        })
    }

    /// Reads the API's own count from `headers`, as `[app.rate_limit]`
    /// names it; a value that is not a number is ignored.
    fn observe(&self, headers: &HeaderMap) {
        let cfg = &self.config.app.rate_limit;
        let number = |name: Option<&str>| -> Option<u64> {
            headers.get(name?)?.to_str().ok()?.trim().parse().ok()
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let policies = if cfg.standard_headers {
            super::ratelimit::parse(
                text("ratelimit"),
                text("ratelimit-policy"),
                text("ratelimit-limit"),
                text("ratelimit-remaining"),
            )
        } else {
            Vec::new()
        };
        let remaining = number(cfg.remaining_header.as_deref());
        let bucket = cfg
            .bucket_header
            .as_deref()
            .and_then(text)
            .and_then(super::ratelimit::parse_used_of);
        let counts: Vec<super::HeaderCount> = cfg
            .counts
            .iter()
            .filter_map(|c| {
                Some(super::HeaderCount {
                    window_secs: c.every.as_secs(),
                    remaining: number(Some(&c.remaining))?,
                    limit: number(c.limit.as_deref()),
                    app_level: c.level == crate::config::app::CountLevel::App,
                })
            })
            .collect();
        if remaining.is_some() || !policies.is_empty() || bucket.is_some() || !counts.is_empty() {
            let count = ApiCount {
                remaining,
                limit: number(cfg.limit_header.as_deref()),
                policies,
                bucket,
                counts,
            };
            *self.api_count.lock().unwrap_or_else(|e| e.into_inner()) = Some(count);
        }
    }

    /// Reports what the call cost when the API said ([`reported_cost`]).
    fn observe_cost(&self, headers: &HeaderMap, body: Option<&Value>) {
        if let Some(cost) = reported_cost(&self.config.app.rate_limit, headers, body) {
            super::cost::report_cost(cost);
        }
    }

    /// The app config it was built from.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    fn url(&self, path: &str) -> std::result::Result<Url, ApiError> {
        let joined = format!("{}{}", self.config.app.base_url.trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| ApiError::Permanent(format!("bad URL for {path}: {e}")))
    }

    fn record_type(&self, name: &str) -> std::result::Result<&RecordTypeConfig, ApiError> {
        self.config
            .record_type(name)
            .map_err(|e| ApiError::Permanent(e.to_string()))
    }

    /// The URL of the page `req` asks for: the next link as given (only to
    /// the configured host), or the list path with the page size, the time
    /// window and the page's cursor, page number or offset.
    fn list_url(
        &self,
        rt: &RecordTypeConfig,
        req: &ListRequest,
        size: u32,
        what: &str,
    ) -> std::result::Result<Url, ApiError> {
        let mut url = match &req.cursor {
            Some(PageCursor::Url(next)) => {
                let u = Url::parse(next).map_err(|e| {
                    ApiError::Permanent(format!("{what}: bad next link {next:?}: {e}"))
                })?;
                // Never send the credential to a host the config did not name.
                if u.host_str() != self.base.host_str()
                    || u.port_or_known_default() != self.base.port_or_known_default()
                {
                    return Err(ApiError::Permanent(format!(
                        "{what}: next link points to another host ({})",
                        u.host_str().unwrap_or("?")
                    )));
                }
                u
            }
            _ => self.url(&rt.list_path)?,
        };
        if !matches!(req.cursor, Some(PageCursor::Url(_))) {
            let mut q = url.query_pairs_mut();
            if let Some(p) = &rt.page_size_param {
                q.append_pair(p, &size.to_string());
            }
            if let (Some(p), Some(t)) = (&rt.modified_since_param, req.modified_since) {
                q.append_pair(p, &format_time(t, rt.time_format));
            }
            if let (Some(p), Some(t)) = (&rt.modified_until_param, req.modified_until) {
                q.append_pair(p, &format_time(t, rt.time_format));
            }
            match (&rt.pagination, &req.cursor) {
                (Pagination::Cursor { param, .. }, Some(PageCursor::Cursor(c))) => {
                    q.append_pair(param, c);
                }
                (Pagination::Page { param, first }, cursor) => {
                    let page = match cursor {
                        Some(PageCursor::Page(p)) => *p,
                        _ => *first,
                    };
                    q.append_pair(param, &page.to_string());
                }
                (Pagination::Offset { param }, cursor) => {
                    let offset = match cursor {
                        Some(PageCursor::Offset(o)) => *o,
                        _ => 0,
                    };
                    q.append_pair(param, &offset.to_string());
                }
                _ => {}
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(s) => s.redact(text),
            None => text.to_string(),
        }
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.client.request(method, url);
        match (&self.config.app.auth, &self.secret) {
            (Some(auth), Some(secret)) => match auth.scheme {
                AuthScheme::Bearer => req.bearer_auth(secret.expose()),
                AuthScheme::Header => req.header(
                    auth.header.as_deref().unwrap_or("Authorization"),
                    secret.expose(),
                ),
            },
            _ => req,
        }
    }

    /// Reads a body up to `app.max_response_bytes`, refusing a larger one
    /// before it is all in memory (a declared length is checked first).
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        what: &str,
    ) -> std::result::Result<Vec<u8>, ApiError> {
        let max = self.config.app.max_response_bytes;
        // Retryable: a padded or runaway body is as often a one-off (a proxy,
        // a bug on one page) as a rule; the job's bounded attempts stop a
        // body that stays too large, naming the setting.
        let too_large = |n: u64| {
            ApiError::Retryable(format!(
                "{what}: the response body is larger than app.max_response_bytes ({max} bytes; at least {n} were sent)"
            ))
        };
        if let Some(n) = response.content_length().filter(|n| *n > max) {
            return Err(too_large(n));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > max {
                        return Err(too_large(body.len() as u64 + chunk.len() as u64));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(ApiError::Retryable(self.scrub(&format!(
                        "{what}: response body cut short ({})",
                        e.without_url()
                    ))))
                }
            }
        }
    }

    /// [`Self::execute`] for a write; with `keyed` (it carries an
    /// `Idempotency-Key`), a 409 is the API saying an earlier request with
    /// the same key is still being performed (Stripe answers a concurrent
    /// duplicate so): transient, tried again later under the same key,
    /// never a dead letter for an action that is being done.
    async fn execute_keyed(
        &self,
        req: RequestBuilder,
        what: &str,
        keyed: bool,
    ) -> std::result::Result<Option<(HeaderMap, Value)>, ApiError> {
        match self.execute(req, what, false).await {
            Err(ApiError::Permanent(msg))
                if keyed && msg.starts_with(&format!("{what}: HTTP 409 ")) =>
            {
                Err(ApiError::Retryable(format!(
                    "{msg} (a request with this Idempotency-Key is still in progress at the API)"
                )))
            }
            other => other,
        }
    }

    /// A 429, or a 503 with a hint of when to come back: the org waits
    /// until the hint (at least `min_retry_after_secs`), or a 429 without
    /// one the default backoff. `None` for any other answer.
    fn rate_limited(&self, status: StatusCode, headers: &HeaderMap) -> Option<ApiError> {
        let now = self.clock.now();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            let hinted = retry_at(headers, now, &self.config.app.rate_limit);
            if let Some(at) = hinted {
                // A hint at or before now (`Retry-After: 0`, a past date, a
                // reset behind our clock) still holds the org a little.
                let floor = now
                    + Duration::seconds(i64::from(self.config.app.rate_limit.min_retry_after_secs));
                return Some(ApiError::RateLimited {
                    status: status.as_u16(),
                    retry_at: at.max(floor),
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let at = now
                    + Duration::seconds(i64::from(self.config.app.rate_limit.default_backoff_secs));
                return Some(ApiError::RateLimited {
                    status: 429,
                    retry_at: at,
                });
            }
        }
        None
    }

    /// Any other answer that is not a success, classified: 5xx retryable,
    /// 401/403 unauthorized, 400/413/422 rejected, a redirect refused (never
    /// followed), the rest permanent; the message carries a scrubbed
    /// excerpt of the body.
    fn failure(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: &[u8],
        what: &str,
    ) -> ApiError {
        // Scrubbed whole, then cut: a secret that straddles the cut must
        // not leave its prefix in the excerpt.
        let body = self.scrub(&String::from_utf8_lossy(bytes));
        let excerpt: String = body
            .chars()
            .take(self.config.app.error_excerpt_chars)
            .collect();
        let msg = if excerpt.trim().is_empty() {
            format!("{what}: HTTP {}", status.as_u16())
        } else {
            format!("{what}: HTTP {} — {}", status.as_u16(), excerpt.trim())
        };
        if status.is_redirection() {
            // Never followed: a credential in a header would go to
            // another host, an action's body would be sent twice, and
            // one metered call would be several requests.
            let to = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| Url::parse(l).ok().or_else(|| self.base.join(l).ok()))
                .map(|u| format!("{}{}", u.host_str().unwrap_or_default(), u.path()))
                .unwrap_or_else(|| "an unnamed place".into());
            return ApiError::Permanent(format!(
                "{what}: HTTP {} redirect to {to}; redirects are not followed (the credential and the request would go there): point the config at where the API is",
                status.as_u16()
            ));
        }
        if status.is_server_error() {
            ApiError::Retryable(msg)
        } else if matches!(status.as_u16(), 401 | 403) {
            ApiError::Unauthorized(msg)
        } else if matches!(status.as_u16(), 400 | 413 | 422) {
            ApiError::Rejected(msg)
        } else {
            ApiError::Permanent(msg)
        }
    }

    /// Sends, reads the whole body, classifies. `Ok(None)` is a 404 when
    /// `not_found_ok`.
    async fn execute(
        &self,
        req: RequestBuilder,
        what: &str,
        not_found_ok: bool,
    ) -> std::result::Result<Option<(HeaderMap, Value)>, ApiError> {
        let response = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed in transit"
            };
            ApiError::Retryable(self.scrub(&format!("{what}: {kind} ({})", e.without_url())))
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        self.observe(&headers);
        let bytes = self.read_body(response, what).await?;
        if status == StatusCode::NOT_FOUND && not_found_ok {
            return Ok(None);
        }
        if let Some(limited) = self.rate_limited(status, &headers) {
            return Err(limited);
        }
        if !status.is_success() {
            return Err(self.failure(status, &headers, &bytes, what));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            self.observe_cost(&headers, None);
            return Ok(Some((headers, Value::Null)));
        }
        // A 2xx whose body is not JSON is as often a proxy, a cut connection
        // or a bad gzip as a broken API: retried, a bounded number of times.
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Retryable(format!("{what}: response is not valid JSON ({e})"))
        })?;
        self.observe_cost(&headers, Some(&body));
        Ok(Some((headers, body)))
    }
}

/// What a call cost as the answer says (`cost_header`, else `cost_pointer`
/// into the body): a whole number, or a numeric string; a fraction is
/// rounded up. Anything else is `None`: the call keeps its estimate.
pub(crate) fn reported_cost(
    cfg: &crate::config::app::RateLimitConfig,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Option<u64> {
    let from_text = |t: &str| -> Option<u64> {
        let t = t.trim();
        t.parse::<u64>().ok().or_else(|| {
            let f = t.parse::<f64>().ok()?;
            (f.is_finite() && f >= 0.0).then(|| f.ceil() as u64)
        })
    };
    let from_header = cfg
        .cost_header
        .as_deref()
        .and_then(|h| headers.get(h)?.to_str().ok())
        .and_then(from_text);
    from_header.or_else(|| match body?.pointer(cfg.cost_pointer.as_deref()?)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.is_finite() && f >= 0.0).then(|| f.ceil() as u64)
        }),
        Value::String(s) => from_text(s),
        _ => None,
    })
}

/// When a rate-limited response says to come back: `Retry-After` in seconds
/// or as an HTTP date, else the configured reset header.
pub(crate) fn retry_at(
    headers: &HeaderMap,
    now: Timestamp,
    cfg: &crate::config::app::RateLimitConfig,
) -> Option<Timestamp> {
    let hinted = retry_hint(headers, now, cfg)?;
    // Every form is bounded alike: an API that says "come back in a year"
    // (or a broken clock behind an HTTP date) holds an org for 7 days at most.
    let latest = now + Duration::days(MAX_RETRY_AFTER_DAYS);
    if hinted > latest {
        tracing::warn!(said = %hinted, clamped_to = %latest, "the API's retry time is more than 7 days away; clamped");
        return Some(latest);
    }
    Some(hinted)
}

/// The longest the API's own retry hint may hold an org.
pub(crate) const MAX_RETRY_AFTER_DAYS: i64 = 7;

fn retry_hint(
    headers: &HeaderMap,
    now: Timestamp,
    cfg: &crate::config::app::RateLimitConfig,
) -> Option<Timestamp> {
    if let Some(v) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(now + Duration::seconds(secs.min(86_400 * 8) as i64));
        }
        if let Ok(at) = DateTime::parse_from_rfc2822(v) {
            return Some(at.with_timezone(&Utc));
        }
    }
    let name = cfg.reset_header.as_deref()?;
    let v: i64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    match cfg.reset_format {
        ResetFormat::UnixSeconds => DateTime::from_timestamp(v, 0),
        ResetFormat::Seconds => Some(now + Duration::seconds(v.clamp(0, 86_400 * 8))),
    }
}

/// Where the page after this one is, by the record type's pagination: the
/// cursor in the body or a header, the next page number or offset when
/// this page was full, or the `Link` header's `next` (resolved against the
/// request, RFC 8288). `None`: this was the last page.
fn next_cursor(
    pagination: &Pagination,
    req: &ListRequest,
    body: &Value,
    headers: &HeaderMap,
    served: u64,
    full: bool,
    request_url: &Url,
) -> Option<PageCursor> {
    match pagination {
        Pagination::Cursor {
            next_pointer: Some(p),
            ..
        } => body.pointer(p).and_then(id_string).map(PageCursor::Cursor),
        Pagination::Cursor {
            next_header: Some(h),
            ..
        } => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| PageCursor::Cursor(v.to_string())),
        Pagination::Cursor { .. } => None,
        Pagination::Page { first, .. } => full.then(|| {
            let current = match &req.cursor {
                Some(PageCursor::Page(p)) => *p,
                _ => *first,
            };
            PageCursor::Page(current + 1)
        }),
        Pagination::Offset { .. } => full.then(|| {
            let current = match &req.cursor {
                Some(PageCursor::Offset(o)) => *o,
                _ => 0,
            };
            PageCursor::Offset(current + served)
        }),
        Pagination::LinkHeader => headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(link_next)
            .and_then(|target| request_url.join(&target).ok())
            .map(|u| PageCursor::Url(u.to_string())),
        Pagination::None => None,
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
pub(crate) fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let target = &after[..end];
        let params_end = after[end..].find('<').map_or(after.len(), |i| end + i);
        let params = &after[end + 1..params_end];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.strip_prefix("rel=")
                .map(|v| {
                    v.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
                })
                .unwrap_or(false)
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &after[params_end..];
    }
    None
}

fn format_time(t: Timestamp, f: TimeFormat) -> String {
    match f {
        TimeFormat::Rfc3339 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        TimeFormat::UnixSeconds => t.timestamp().to_string(),
        TimeFormat::UnixMillis => t.timestamp_millis().to_string(),
    }
}

/// A JSON scalar id as a string (numbers are common ids).
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the records of a response, naming the pointer and record type
/// when the response does not hold what the config says. An item without
/// an id is returned as unreadable (to be quarantined), not an error: one
/// bad record must not fail its page.
pub fn extract_records(
    name: &str,
    rt: &RecordTypeConfig,
    body: &Value,
) -> std::result::Result<Page, ApiError> {
    extract_at(name, rt, &rt.records_pointer, body)
}

fn extract_at(
    name: &str,
    rt: &RecordTypeConfig,
    pointer: &str,
    body: &Value,
) -> std::result::Result<Page, ApiError> {
    let found = if pointer.is_empty() {
        Some(body)
    } else {
        body.pointer(pointer)
    };
    let items: Vec<&Value> = match found {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(obj @ Value::Object(_)) => vec![obj],
        // Retryable: an error page or a half-written body behind a 200 is
        // as often a glitch as a wrong pointer; a config that points at
        // nothing fails after the job's bounded attempts, naming it.
        _ => {
            return Err(ApiError::Retryable(format!(
                "record type `{name}`: no records array at {pointer:?} in the response"
            )))
        }
    };
    let mut page = Page::default();
    for (i, item) in items.into_iter().enumerate() {
        let Some(id) = item.pointer(&rt.id_pointer).and_then(id_string) else {
            page.unreadable.push(Unreadable {
                reason: format!(
                    "record type `{name}`: record #{i} of the response has no id at {:?}",
                    rt.id_pointer
                ),
                data: item.clone(),
            });
            continue;
        };
        let updated_at = rt
            .updated_at_pointer
            .as_deref()
            .and_then(|p| item.pointer(p))
            .and_then(|v| crate::config::app::parse_time(v, rt.time_format));
        page.records.push(Record {
            id,
            updated_at,
            data: item.clone(),
        });
    }
    Ok(page)
}

#[async_trait]
impl Connector for HttpConnector {
    fn list_endpoint(&self, record_type: &str) -> String {
        self.config.record_types.get(record_type).map_or_else(
            || format!("GET ?{record_type}"),
            |rt| format!("GET {}", rt.list_path),
        )
    }

    fn lookup_endpoint(&self, record_type: &str) -> String {
        match self.config.record_types.get(record_type) {
            Some(rt) => match (&rt.bulk, &rt.get_path) {
                (Some(b), _) => format!("GET {}", b.path.as_deref().unwrap_or(&rt.list_path)),
                (None, Some(get)) => format!("GET {get}"),
                (None, None) => format!("GET ?{record_type}"),
            },
            None => format!("GET ?{record_type}"),
        }
    }

    fn max_ids_per_call(&self, record_type: &str) -> usize {
        match self.config.record_types.get(record_type) {
            Some(RecordTypeConfig { bulk: Some(b), .. }) => b.max_ids as usize,
            _ => 1,
        }
    }

    fn is_exempt(&self, endpoint: &str) -> bool {
        self.config.is_exempt(endpoint)
    }

    fn call_cost(&self, endpoint: &str) -> u32 {
        self.config.endpoint_cost(endpoint)
    }

    fn take_api_count(&self) -> Option<ApiCount> {
        self.api_count
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn list(&self, req: &ListRequest) -> std::result::Result<Page, ApiError> {
        let rt = self.record_type(&req.record_type)?;
        let size = rt.effective_page_size();
        let what = format!("list `{}`", req.record_type);
        let url = self.list_url(rt, req, size, &what)?;
        let request_url = url.clone();
        let (headers, body) = self
            .execute(self.request(Method::GET, url), &what, false)
            .await?
            .unwrap_or_else(|| (HeaderMap::new(), Value::Null));
        let mut page = extract_records(&req.record_type, rt, &body)?;
        let served = page.served() as u64;
        let full = served >= u64::from(req.page_size.unwrap_or(size).max(1));
        page.next = next_cursor(
            &rt.pagination,
            req,
            &body,
            &headers,
            served,
            full,
            &request_url,
        );
        Ok(page)
    }

    async fn lookup(
        &self,
        record_type: &str,
        ids: &[String],
    ) -> std::result::Result<Page, ApiError> {
        let rt = self.record_type(record_type)?;
        let what = format!("lookup `{record_type}`");
        if ids.is_empty() {
            return Ok(Page::default());
        }
        if let Some(bulk) = &rt.bulk {
            let mut url = self.url(bulk.path.as_deref().unwrap_or(&rt.list_path))?;
            {
                let mut q = url.query_pairs_mut();
                match bulk.style {
                    BulkStyle::Joined => {
                        q.append_pair(
                            &bulk.param,
                            &ids.join(bulk.separator.as_deref().unwrap_or(",")),
                        );
                    }
                    BulkStyle::Repeated => {
                        for id in ids {
                            q.append_pair(&bulk.param, id);
                        }
                    }
                }
                if let Some(p) = &rt.page_size_param {
                    q.append_pair(p, &rt.max_page_size.max(ids.len() as u32).to_string());
                }
            }
            let (_, body) = self
                .execute(self.request(Method::GET, url), &what, false)
                .await?
                .unwrap_or_else(|| (HeaderMap::new(), Value::Null));
            return extract_records(record_type, rt, &body);
        }
        let Some(get) = &rt.get_path else {
            return Err(ApiError::Permanent(format!(
                "record type `{record_type}` has neither get_path nor bulk lookup configured"
            )));
        };
        if ids.len() > 1 {
            return Err(ApiError::Permanent(format!(
                "record type `{record_type}` looks up one id per call; got {}",
                ids.len()
            )));
        }
        let encoded: String = url_encode(&ids[0]);
        let url = self.url(&get.replace("{id}", &encoded))?;
        match self
            .execute(self.request(Method::GET, url), &what, true)
            .await?
        {
            None => Ok(Page::default()),
            Some((_, body)) => extract_at(
                record_type,
                rt,
                rt.get_pointer.as_deref().unwrap_or(&rt.records_pointer),
                &body,
            ),
        }
    }

    async fn send(&self, req: &SendRequest) -> std::result::Result<Value, ApiError> {
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| ApiError::Permanent(format!("bad HTTP method {:?}", req.method)))?;
        let what = format!("{} {}", req.method, req.path);
        let mut builder = self.request(method, self.url(&req.path)?);
        if let Some(key) = &req.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        Ok(self
            .execute_keyed(builder, &what, req.idempotency_key.is_some())
            .await?
            .map(|(_, b)| b)
            .unwrap_or(Value::Null))
    }
}

/// Percent-encodes an id for a path segment.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let h = r#"<https://api.example.com/items?page=2>; rel="next", <https://api.example.com/items?page=9>; rel="last""#;
        assert_eq!(
            link_next(h).as_deref(),
            Some("https://api.example.com/items?page=2")
        );
        let h = r#"<https://a/x?p=1>; rel="prev", <https://a/x?p=3,4>; rel="next""#;
        assert_eq!(link_next(h).as_deref(), Some("https://a/x?p=3,4"));
        assert_eq!(link_next(r#"<https://a/x>; rel="last""#), None);
        assert_eq!(link_next("garbage"), None);
    }

    #[test]
    fn a_calls_cost_is_read_from_a_header_or_the_body() {
        let cfg = crate::config::app::RateLimitConfig {
            cost_header: Some("X-Query-Cost".into()),
            cost_pointer: Some("/extensions/cost/actualQueryCost".into()),
            ..Default::default()
        };
        let body = |v: Value| serde_json::json!({"extensions": {"cost": {"actualQueryCost": v}}});
        let none = HeaderMap::new();
        assert_eq!(reported_cost(&cfg, &none, Some(&body(12.into()))), Some(12));
        assert_eq!(reported_cost(&cfg, &none, Some(&body(2.5.into()))), Some(3));
        assert_eq!(reported_cost(&cfg, &none, Some(&body("7".into()))), Some(7));
        assert_eq!(reported_cost(&cfg, &none, Some(&body((-1).into()))), None);
        assert_eq!(reported_cost(&cfg, &none, Some(&body("many".into()))), None);
        assert_eq!(
            reported_cost(&cfg, &none, Some(&serde_json::json!([]))),
            None
        );
        assert_eq!(reported_cost(&cfg, &none, None), None);
        let mut h = HeaderMap::new();
        h.insert("x-query-cost", " 4 ".parse().unwrap());
        assert_eq!(
            reported_cost(&cfg, &h, Some(&body(12.into()))),
            Some(4),
            "the header wins"
        );
        h.insert("x-query-cost", "NaN".parse().unwrap());
        assert_eq!(
            reported_cost(&cfg, &h, Some(&body(12.into()))),
            Some(12),
            "a bad header falls back"
        );
        let unset = crate::config::app::RateLimitConfig::default();
        assert_eq!(reported_cost(&unset, &h, Some(&body(12.into()))), None);
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cfg = crate::config::app::RateLimitConfig::default();
        let mut h = HeaderMap::new();
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_at(&h, now, &cfg), Some(now + Duration::seconds(120)));
        h.insert(
            "retry-after",
            "Sun, 22 Nov 2026 14:05:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_at(&h, now, &cfg), Some(now + Duration::minutes(5)));
        let cfg = crate::config::app::RateLimitConfig {
            reset_header: Some("X-RateLimit-Reset".into()),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset",
            (now.timestamp() + 30).to_string().parse().unwrap(),
        );
        assert_eq!(retry_at(&h, now, &cfg), Some(now + Duration::seconds(30)));
    }

    #[test]
    fn encodes_ids() {
        assert_eq!(url_encode("a b/c"), "a%20b%2Fc");
    }
}
