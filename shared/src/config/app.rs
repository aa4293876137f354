//! An app connection described in TOML: base URL, auth, limits, and per
//! record type how to list, page, filter by time, look up by id, and read
//! records. Validated once at load with errors that name the field and what
//! was expected. The schema is documented in `docs/connector.md`.

use crate::config::datasource::{DataSource, DEFAULT_MAX_ROWS_PER_CALL};
use crate::config::row_index::RowIndex;
use crate::config::secret::SecretRef;
use crate::config::workflow::ActionConfig;
use crate::core::error::{Error, Result};
use crate::quota::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One app's whole configuration, loaded and validated in one pass ([`AppConfig::load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The third-party app: where it is, its auth and limits.
    pub app: AppSection,
    /// Record types by name.
    #[serde(default)]
    pub record_types: BTreeMap<String, RecordTypeConfig>,
    /// Organizations connected to the app.
    #[serde(default)]
    pub connections: Vec<crate::config::sync::ConnectionConfig>,
    /// Sync controls per record type.
    #[serde(default)]
    pub syncs: BTreeMap<String, crate::config::sync::SyncConfig>,
    /// Workflows by name.
    #[serde(default)]
    pub workflows: BTreeMap<String, crate::config::workflow::WorkflowConfig>,
    /// Data Sources by name: how often their outbox is flushed.
    #[serde(default)]
    pub datasources: BTreeMap<String, crate::config::datasource::DataSourceConfig>,
}

/// The `[app]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    /// The app's name, part of every quota key.
    pub name: String,
    /// Base URL of the API (`https://…/`).
    pub base_url: String,
    /// How calls are authenticated, if at all.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// The app's default limits per organization connection.
    pub limits: Limits,
    /// Endpoints the platform does not count, as `METHOD /path` where the
    /// path may end in `*` (e.g. `POST /hooks/*`).
    #[serde(default)]
    pub exempt_endpoints: Vec<String>,
    /// What one call to an endpoint costs the budget, where the API counts
    /// it as more than one (`"GET /search/*" = 5`, a GraphQL endpoint's
    /// typical query cost). Patterns as in `exempt_endpoints`; the exact
    /// pattern wins over a `*` one, the longest `*` one over shorter.
    /// Every other endpoint costs 1.
    #[serde(default)]
    pub endpoint_costs: std::collections::BTreeMap<String, u32>,
    /// How the API signals its own limits.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Connect and request timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Largest response body read, in bytes (default 32 MiB): a larger one
    /// is refused before it can exhaust a 256 MB function.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// How the API takes a Data Source push (path, body field names).
    #[serde(default)]
    pub datasource_push: crate::config::datasource::PushShape,
    /// Characters of a refused response's body kept in the error (and so in
    /// dead-letter reasons and `metered jobs`): such bodies can carry
    /// personal data. `0` keeps none, only the status. Default 300.
    #[serde(default = "default_error_excerpt_chars")]
    pub error_excerpt_chars: usize,
    /// Authentication failures (401/403) within 10 minutes that pause a
    /// connection: its jobs wait instead of spending the budget and filling
    /// the dead-letter queue (`metered connections`). `0` never pauses: a
    /// 401/403 then fails its job for good. Default 3.
    #[serde(default = "default_pause_after_auth_failures")]
    pub pause_after_auth_failures: u32,
    /// Scheduled sync runs in a row that end in the dead-letter queue the
    /// same way (`GET /invoices: HTTP 404`, say) that pause the connection
    /// as refused credentials do: each further run would spend calls to
    /// fail again. A completed run resets the count. `0` never pauses.
    /// Default 3.
    #[serde(default = "default_pause_after_failed_runs")]
    pub pause_after_failed_runs: u32,
}

fn default_pause_after_auth_failures() -> u32 {
    3
}

fn default_pause_after_failed_runs() -> u32 {
    3
}

fn default_max_response_bytes() -> u64 {
    32 * 1024 * 1024
}

fn default_error_excerpt_chars() -> usize {
    300
}

/// The `[app.auth]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How the credential is sent.
    pub scheme: AuthScheme,
    /// Header name for `scheme = "header"`.
    #[serde(default)]
    pub header: Option<String>,
    /// Where the credential is read from.
    pub secret: SecretRef,
}

/// How a credential is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    Header,
}

/// How the API says "slow down", beyond `Retry-After` on 429 and 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// A header holding when the limit resets (e.g. `X-RateLimit-Reset`).
    #[serde(default)]
    pub reset_header: Option<String>,
    /// How the reset header's value is written.
    #[serde(default)]
    pub reset_format: ResetFormat,
    /// Wait when a 429 says nothing about when to come back.
    #[serde(default = "default_backoff")]
    pub default_backoff_secs: u32,
    /// The least wait after a 429 or 503, whatever its hint says: a
    /// `Retry-After: 0`, an HTTP date in the past or a reset header at or
    /// before our clock (skew) would otherwise send every job of the org
    /// straight back, each spending a call on another 429. Jitter is added
    /// on top, and the whole org is held that long.
    #[serde(default = "default_min_retry")]
    pub min_retry_after_secs: u32,
    /// A header holding how many calls the API still allows in its window
    /// (e.g. `X-RateLimit-Remaining`): other tools of the org spend the
    /// same budget, and metered's own counters only see metered's calls.
    #[serde(default)]
    pub remaining_header: Option<String>,
    /// A header holding the API's limit for that window (e.g.
    /// `X-RateLimit-Limit`); without it, the configured limit of
    /// `remaining_window` is taken.
    #[serde(default)]
    pub limit_header: Option<String>,
    /// Which of `[app.limits]`' windows the API's count is of (it must be
    /// configured there): `day` (default), `hour` or `minute`.
    #[serde(default = "default_remaining_window")]
    pub remaining_window: crate::quota::WindowKind,
    /// Read the standard `RateLimit` / `RateLimit-Policy` fields (IETF
    /// draft) when the API sends them: each policy raises the configured
    /// window of its length to the API's count (default on; they are only
    /// ever sent by APIs that mean them).
    #[serde(default = "yes")]
    pub standard_headers: bool,
    /// A header holding the API's token bucket as `used/capacity`
    /// (Shopify's `X-Shopify-Shop-Api-Call-Limit: 32/40`): raises the
    /// level of `[[app.limits.buckets]]`' first bucket to it.
    #[serde(default)]
    pub bucket_header: Option<String>,
    /// Header families that each count one window (Xero's
    /// `X-MinLimit-Remaining` and `X-DayLimit-Remaining`, HubSpot's
    /// 10-second and daily `X-HubSpot-RateLimit-*`, GitHub's hourly
    /// `X-RateLimit-*`): each raises the configured fixed window of its
    /// length, at the org's level or, with `level = "app"`, the app-wide
    /// one (Xero's `X-AppMinLimit-Remaining`).
    #[serde(default)]
    pub counts: Vec<CountHeaders>,
    /// A header holding what the call cost in the budget's units (points),
    /// when the API says so in every answer: the estimate taken before the
    /// call (`[app.endpoint_costs]`, else 1) is settled against it, the
    /// difference refunded or the excess taken.
    #[serde(default)]
    pub cost_header: Option<String>,
    /// The same read from the JSON body by a JSON pointer (Shopify's
    /// GraphQL `/extensions/cost/actualQueryCost`). The header wins when
    /// both are given and present.
    #[serde(default)]
    pub cost_pointer: Option<String>,
}

/// `[[app.rate_limit.counts]]`: the headers an API counts one window in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountHeaders {
    /// The header with the calls the window still allows.
    pub remaining: String,
    /// The header with the window's limit (else the configured one).
    #[serde(default)]
    pub limit: Option<String>,
    /// The window's length (`10s`, `1m`, `1h`, `1d`): a fixed window of
    /// that length must be configured at `level`.
    #[serde(with = "humantime_serde")]
    pub every: std::time::Duration,
    /// Whose window: the org's (default) or the app's (`"app"`, in
    /// `[app.limits.app_wide]`).
    #[serde(default)]
    pub level: CountLevel,
}

/// Which level a counted window belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountLevel {
    /// The org's own limits.
    #[default]
    Org,
    /// `[app.limits.app_wide]`, shared by every org of the app.
    App,
}

fn yes() -> bool {
    true
}

fn default_remaining_window() -> crate::quota::WindowKind {
    crate::quota::WindowKind::Day
}

fn default_backoff() -> u32 {
    60
}

fn default_min_retry() -> u32 {
    5
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            reset_header: None,
            reset_format: ResetFormat::default(),
            default_backoff_secs: default_backoff(),
            min_retry_after_secs: default_min_retry(),
            remaining_header: None,
            limit_header: None,
            remaining_window: default_remaining_window(),
            standard_headers: true,
            bucket_header: None,
            counts: Vec::new(),
            cost_header: None,
            cost_pointer: None,
        }
    }
}

/// How a reset header's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Unix seconds at which the limit resets.
    #[default]
    UnixSeconds,
    /// Seconds from now.
    Seconds,
}

/// HTTP timeouts for every call to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Connect timeout, in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Whole-request timeout, in milliseconds.
    #[serde(default = "default_request_ms")]
    pub request_ms: u64,
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_request_ms() -> u64 {
    30_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            request_ms: default_request_ms(),
        }
    }
}

/// One record type of the API: where it lists, how it pages, how it is looked up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordTypeConfig {
    /// e.g. `/invoices`, relative to `base_url`.
    pub list_path: String,
    /// How the API pages a listing.
    pub pagination: Pagination,
    /// Query parameter carrying the page size, if the API takes one.
    #[serde(default)]
    pub page_size_param: Option<String>,
    /// The largest page the API serves; used unless `page_size` is lower.
    pub max_page_size: u32,
    /// A smaller page than `max_page_size`, if wanted.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Query parameter for the start of a recent lookup's window.
    #[serde(default)]
    pub modified_since_param: Option<String>,
    /// Query parameter for the end of a recent lookup's window.
    #[serde(default)]
    pub modified_until_param: Option<String>,
    /// How those times are written.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// e.g. `/customers/{id}`.
    #[serde(default)]
    pub get_path: Option<String>,
    /// JSON pointer to the record in a get-by-id response; defaults to
    /// `records_pointer` (many APIs wrap single records differently).
    #[serde(default)]
    pub get_pointer: Option<String>,
    /// Bulk lookups: many ids in one call.
    #[serde(default)]
    pub bulk: Option<BulkConfig>,
    /// JSON pointer to the records array; `""` when the body is the array.
    #[serde(default = "default_records_pointer")]
    pub records_pointer: String,
    /// JSON pointer to a record's id, within the record.
    #[serde(default = "default_id_pointer")]
    pub id_pointer: String,
    /// JSON pointer to a record's last-modified time, within the record.
    #[serde(default)]
    pub updated_at_pointer: Option<String>,
    /// Pointer within a record → record type it references.
    #[serde(default)]
    pub foreign_keys: BTreeMap<String, String>,
}

fn default_records_pointer() -> String {
    "/data".into()
}
fn default_id_pointer() -> String {
    "/id".into()
}

/// How an API pages a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// An opaque cursor, read from the body (`next_pointer`) or a header
    /// (`next_header`) and sent back as `param`.
    Cursor {
        /// Query parameter carrying the cursor.
        param: String,
        /// JSON pointer to the next cursor in the body.
        #[serde(default)]
        next_pointer: Option<String>,
        /// Header holding the next cursor.
        #[serde(default)]
        next_header: Option<String>,
    },
    /// Page numbers from `first`; a short page is the last.
    Page {
        /// Query parameter carrying the page number.
        param: String,
        /// The first page's number.
        #[serde(default = "one")]
        first: u64,
    },
    /// Record offsets; a short page is the last.
    Offset {
        /// Query parameter carrying the offset.
        param: String,
    },
    /// RFC 8288 `Link: <…>; rel="next"`.
    LinkHeader,
    /// One page holds everything.
    None,
}

fn one() -> u64 {
    1
}

/// How times are written in query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-11-22T12:00:00Z`.
    #[default]
    Rfc3339,
    /// Unix seconds.
    UnixSeconds,
    /// Unix milliseconds.
    UnixMillis,
}

/// A bulk lookup endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    /// Path of the bulk endpoint; defaults to `list_path`.
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameter carrying the ids.
    pub param: String,
    /// `comma` joins ids with `separator` (default `,`); `repeated` sends
    /// `param=a&param=b`.
    #[serde(default)]
    pub style: BulkStyle,
    /// What joins the ids (default `,`).
    #[serde(default)]
    pub separator: Option<String>,
    /// Most ids one call takes.
    pub max_ids: u32,
}

/// How ids are sent in a bulk lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkStyle {
    /// `param=a,b,c`.
    #[default]
    Joined,
    /// `param=a&param=b`.
    Repeated,
}

impl RecordTypeConfig {
    /// When a record of this type was last modified, read from its data at
    /// `updated_at_pointer` in `time_format` (an RFC 3339 string, or unix
    /// seconds or milliseconds); `None` when the type has no pointer or the
    /// value is not a time.
    pub(crate) fn updated_at_of(
        &self,
        data: &serde_json::Value,
    ) -> Option<crate::core::clock::Timestamp> {
        let v = data.pointer(self.updated_at_pointer.as_deref()?)?;
        parse_time(v, self.time_format)
    }

    /// The page size to ask for: the API's maximum unless configured lower.
    pub fn effective_page_size(&self) -> u32 {
        self.page_size
            .unwrap_or(self.max_page_size)
            .min(self.max_page_size)
    }
}

impl AppConfig {
    /// An org's limits: its connection's override, else the app's.
    pub fn limits_for(&self, org: &str) -> crate::quota::Limits {
        self.connections
            .iter()
            .find(|c| c.org == org)
            .and_then(|c| c.limits.clone())
            .unwrap_or_else(|| self.app.limits.clone())
    }

    /// Reads and validates a TOML file; errors name the file and the field.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: AppConfig = toml::from_str(text)
            .map_err(|e| Error::Config(e.to_string().trim_end().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The record type `name`, or an error listing the declared ones.
    pub fn record_type(&self, name: &str) -> Result<&RecordTypeConfig> {
        self.record_types.get(name).ok_or_else(|| {
            Error::Config(format!(
                "unknown record type `{name}`; the app `{}` declares: {}",
                self.app.name,
                self.record_types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The sync controls of a record type (defaults when none are set).
    pub fn sync(&self, record_type: &str) -> crate::config::sync::SyncConfig {
        self.syncs.get(record_type).cloned().unwrap_or_default()
    }

    /// Whether calls to `endpoint` (`METHOD /path`) are exempt. The path is
    /// normalised first (query dropped, `.` and `..` resolved, repeated
    /// slashes folded), so `POST /hooks/../notes` is `POST /notes` and never
    /// matches `POST /hooks/*`.
    pub fn is_exempt(&self, endpoint: &str) -> bool {
        let endpoint = normalise_endpoint(endpoint);
        self.app
            .exempt_endpoints
            .iter()
            .any(|pattern| endpoint_matches(pattern, &endpoint))
    }

    /// What one call to `endpoint` costs (`[app.endpoint_costs]`; 1 when
    /// none matches). The path is normalised as for [`Self::is_exempt`];
    /// an exact pattern wins, then the longest `*` pattern.
    pub(crate) fn endpoint_cost(&self, endpoint: &str) -> u32 {
        let endpoint = normalise_endpoint(endpoint);
        if let Some(cost) = self.app.endpoint_costs.get(&endpoint) {
            return (*cost).max(1);
        }
        self.app
            .endpoint_costs
            .iter()
            .filter(|(pattern, _)| pattern.ends_with('*') && endpoint_matches(pattern, &endpoint))
            .max_by_key(|(pattern, _)| pattern.len())
            .map_or(1, |(_, cost)| (*cost).max(1))
    }
}

/// Whether `pattern` (`METHOD /path`, or a prefix ending in `*`) matches a
/// normalised endpoint.
fn endpoint_matches(pattern: &str, endpoint: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => endpoint.starts_with(prefix),
        None => endpoint == pattern,
    }
}

/// `METHOD /path` with the path's query dropped, `.` and `..` segments
/// resolved and empty segments folded.
pub(crate) fn normalise_endpoint(endpoint: &str) -> String {
    let (method, path) = endpoint.split_once(' ').unwrap_or(("", endpoint));
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        // As the URL standard (and so the request) reads them: `%2e` is a dot.
        let dots = segment.eq_ignore_ascii_case("%2e")
            || segment.eq_ignore_ascii_case("%2e%2e")
            || segment.eq_ignore_ascii_case(".%2e")
            || segment.eq_ignore_ascii_case("%2e.");
        let segment = if dots {
            if segment.len() > 3 {
                ".."
            } else {
                "."
            }
        } else {
            segment
        };
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = if path.ends_with('/') && !segments.is_empty() {
        "/"
    } else {
        ""
    };
    format!("{method} /{}{trailing}", segments.join("/"))
}

/// A time as an API writes it: an RFC 3339 string, or a number (or numeric
/// string) of seconds, or of milliseconds for [`TimeFormat::UnixMillis`].
pub(crate) fn parse_time(
    v: &serde_json::Value,
    f: TimeFormat,
) -> Option<crate::core::clock::Timestamp> {
    use chrono::{DateTime, Utc};
    use serde_json::Value;
    match (v, f) {
        (Value::String(s), _) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                s.parse::<i64>()
                    .ok()
                    .and_then(|n| parse_time(&Value::from(n), f))
            }),
        (Value::Number(n), TimeFormat::UnixMillis) => {
            n.as_i64().and_then(DateTime::from_timestamp_millis)
        }
        (Value::Number(n), _) => n.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)),
        _ => None,
    }
}

/// The Data Sources as the flushes and Hosted GET see them.
impl AppConfig {
    /// The Data Sources some action pushes to or `[datasources]` declares.
    pub fn datasource_names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.datasources.keys().cloned().collect();
        for wf in self.workflows.values() {
            for a in &wf.actions {
                if let ActionConfig::DatasourcePush { datasource, .. } = a {
                    names.insert(datasource.clone());
                }
            }
        }
        names
    }

    /// The Data Source `name`: its `[datasources]` entry, else what its
    /// push actions say (`max_rows_per_call`), else the defaults.
    pub fn datasource(&self, name: &str) -> Result<DataSource> {
        if !self.datasource_names().contains(name) {
            return Err(Error::Config(format!(
                "unknown Data Source `{name}`; this app pushes to: {}",
                self.datasource_names()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let declared = self.datasources.get(name).cloned().unwrap_or_default();
        let from_actions =
            self.workflows
                .values()
                .flat_map(|wf| &wf.actions)
                .find_map(|a| match a {
                    ActionConfig::DatasourcePush {
                        datasource,
                        max_rows_per_call,
                        ..
                    } if datasource == name => *max_rows_per_call,
                    _ => None,
                });
        Ok(DataSource {
            name: name.to_string(),
            every: declared.every,
            max_rows_per_call: declared
                .max_rows_per_call
                .or(from_actions)
                .unwrap_or(DEFAULT_MAX_ROWS_PER_CALL),
            mode: declared.mode,
            index: declared.filter.as_deref().and_then(RowIndex::of_filter),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_endpoints_match_normalised_paths() {
        let mut cfg = AppConfig::parse(GOOD).unwrap();
        cfg.app.exempt_endpoints = vec!["POST /hooks/*".into(), "GET /ping".into()];
        assert!(cfg.is_exempt("POST /hooks/inbound"));
        assert!(cfg.is_exempt("POST /hooks//./inbound?x=1"));
        assert!(cfg.is_exempt("GET /ping?verbose=1"));
        assert!(
            !cfg.is_exempt("POST /hooks/../notes"),
            "a way out of /hooks is not exempt"
        );
        assert!(!cfg.is_exempt("POST /hooks/a/../../notes"));
        assert!(!cfg.is_exempt("GET /ping/../admin"));
        assert_eq!(normalise_endpoint("POST /a/./b/../c//d/"), "POST /a/c/d/");
        // Dots written as `%2e` are dots to the URL the request goes to.
        assert!(!cfg.is_exempt("POST /hooks/%2e%2e/notes"));
        assert!(!cfg.is_exempt("POST /hooks/%2E%2e/%2e/notes"));
        assert_eq!(normalise_endpoint("GET /a/%2e/b/.%2E/c"), "GET /a/c");
    }

    #[test]
    fn endpoint_costs_match_the_most_specific_pattern() {
        let text = GOOD.replace(
            "[record_types.customers]",
            "[app.endpoint_costs]\n\"GET /search/*\" = 5\n\"GET /search/deep/*\" = 20\n\"POST /graphql\" = 10\n\"GET /search/cheap\" = 2\n[record_types.customers]",
        );
        let cfg = AppConfig::parse(&text).unwrap();
        assert_eq!(cfg.endpoint_cost("GET /customers"), 1, "unlisted");
        assert_eq!(cfg.endpoint_cost("POST /graphql"), 10);
        assert_eq!(cfg.endpoint_cost("POST /graphql?x=1"), 10, "query dropped");
        assert_eq!(cfg.endpoint_cost("GET /search/people"), 5);
        assert_eq!(
            cfg.endpoint_cost("GET /search/deep/x"),
            20,
            "the longest prefix"
        );
        assert_eq!(cfg.endpoint_cost("GET /search/cheap"), 2, "exact wins");
        assert_eq!(
            cfg.endpoint_cost("GET /search/x/../deep/y"),
            20,
            "normalised"
        );
        assert_eq!(
            cfg.endpoint_cost("POST /search/people"),
            1,
            "another method"
        );

        let bad = GOOD.replace(
            "[record_types.customers]",
            "[app.endpoint_costs]\n\"search\" = 5\n[record_types.customers]",
        );
        let e = err_of(&bad);
        assert!(
            e.contains("app.endpoint_costs") && e.contains("METHOD /path"),
            "{e}"
        );
        let not_a_pointer = GOOD.replace(
            "[record_types.customers]",
            "[app.rate_limit]\ncost_pointer = \"extensions.cost\"\n[record_types.customers]",
        );
        let e = err_of(&not_a_pointer);
        assert!(
            e.contains("app.rate_limit.cost_pointer") && e.contains("not a JSON pointer"),
            "{e}"
        );
        let over_an_override = GOOD.replace(
            "[record_types.customers]",
            "[app.endpoint_costs]\n\"POST /graphql\" = 50\n[[connections]]\norg = \"small\"\nlimits = { per_day = 40, max_concurrent = 1 }\n[record_types.customers]",
        );
        let e = err_of(&over_an_override);
        assert!(
            e.contains("connections[0].limits") && e.contains("\"POST /graphql\" = 50"),
            "{e}"
        );
        let too_big = GOOD.replace(
            "[record_types.customers]",
            "[app.endpoint_costs]\n\"POST /graphql\" = 3000\n[record_types.customers]",
        );
        let e = err_of(&too_big);
        assert!(
            e.contains("app.endpoint_costs") && e.contains("can never fit the day limit of 2500"),
            "{e}"
        );
    }

    #[test]
    fn a_counted_header_family_needs_its_window() {
        let with = |counts: &str| {
            GOOD.replace(
                "[record_types.customers]",
                &format!("[app.rate_limit]\ncounts = [{counts}]\n[record_types.customers]"),
            )
        };
        AppConfig::parse(&with(
            r#"{ remaining = "X-DayLimit-Remaining", every = "1d" }"#,
        ))
        .unwrap();
        let e = err_of(&with(
            r#"{ remaining = "X-MinLimit-Remaining", every = "1m" }"#,
        ));
        assert!(
            e.contains("app.rate_limit.counts[0]") && e.contains("no fixed window of that length"),
            "{e}"
        );
        let e = err_of(&with(
            r#"{ remaining = "X-AppMinLimit-Remaining", every = "1d", level = "app" }"#,
        ));
        assert!(e.contains("no [app.limits.app_wide]"), "{e}");
    }

    const GOOD: &str = r#"
[app]
name = "crm"
base_url = "https://api.example.com/v1"
[app.auth]
scheme = "header"
header = "X-Api-Key"
secret = { env = "CRM_KEY" }
[app.limits]
per_day = 2500
max_concurrent = 3
[record_types.customers]
list_path = "/customers"
pagination = { style = "cursor", param = "cursor", next_pointer = "/next" }
max_page_size = 100
[record_types.invoices]
list_path = "/invoices"
pagination = { style = "page", param = "page" }
max_page_size = 200
page_size = 50
foreign_keys = { "/customer_id" = "customers" }
"#;

    fn err_of(text: &str) -> String {
        AppConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_loads() {
        let c = AppConfig::parse(GOOD).unwrap();
        assert_eq!(c.record_type("invoices").unwrap().effective_page_size(), 50);
        assert_eq!(
            c.record_type("customers").unwrap().effective_page_size(),
            100
        );
        assert!(c
            .record_type("orders")
            .unwrap_err()
            .to_string()
            .contains("declares: customers, invoices"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("https://api.example.com/v1", "not a url"),
                "app.base_url",
            ),
            (
                GOOD.replace("page_size = 50", "page_size = 500"),
                "record_types.invoices.page_size: 500 must be between 1 and max_page_size (200)",
            ),
            (
                GOOD.replace("= \"customers\" }", "= \"people\" }"),
                "references unknown record type `people`",
            ),
            (
                GOOD.replace("next_pointer = \"/next\"", ""),
                "record_types.customers.pagination: cursor pagination needs exactly one",
            ),
            (
                GOOD.replace("header = \"X-Api-Key\"", ""),
                "app.auth.header: required",
            ),
            (
                GOOD.replace("per_day = 2500", "per_day = 0"),
                "app.limits.per_day is 0",
            ),
            (
                GOOD.replace("max_page_size = 100", "max_page_size = 100\npage_sise = 10"),
                "unknown field `page_sise`",
            ),
            (
                GOOD.replace("style = \"page\"", "style = \"pages\""),
                "unknown variant `pages`",
            ),
            (
                GOOD.replace("list_path = \"/invoices\"", ""),
                "missing field `list_path`",
            ),
        ];
        for (text, expected) in cases {
            let err = err_of(&text);
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
    }

    #[test]
    fn toml_errors_say_where() {
        let err = err_of(&GOOD.replace("max_page_size = 100", "max_page_size = \"many\""));
        assert!(
            err.contains("line") && err.contains("max_page_size"),
            "{err}"
        );
    }

    #[test]
    fn exempt_patterns() {
        let mut c = AppConfig::parse(GOOD).unwrap();
        c.app.exempt_endpoints = vec!["POST /hooks/*".into(), "GET /ping".into()];
        c.validate().unwrap();
        assert!(c.is_exempt("POST /hooks/abc"));
        assert!(c.is_exempt("GET /ping"));
        assert!(!c.is_exempt("GET /pings"));
        assert!(!c.is_exempt("GET /hooks/abc"));
        c.app.exempt_endpoints = vec!["hooks".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("app.exempt_endpoints[0]"));
    }
}
