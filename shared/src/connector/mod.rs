//! Third-party APIs: a port ([`Connector`]) whose every method is exactly one
//! API call, a declarative REST implementation ([`http::HttpConnector`])
//! driven by [`crate::config::app::AppConfig`], and [`Metered`], which puts every call
//! through the quota (acquire → call → release) and turns the API's own
//! "slow down" into a shared block and a restart.

pub(crate) mod cost;
pub(crate) mod http;
pub(crate) mod ratelimit;
pub(crate) mod secrets;

// The face of the layer: what the functions, the CLI and the tests name.
pub use cost::report_cost;
pub use http::{extract_records, http_client, HttpConnector};
pub use secrets::{resolve as resolve_secret, Secret, SecretStores};

use crate::core::clock::Timestamp;
use crate::core::record::Record;
use crate::quota::{Admission, Call, Denied, Limits, Quota, QuotaKey};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Where the next page starts; travels in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "at", rename_all = "snake_case")]
pub enum PageCursor {
    /// An opaque cursor the API gave.
    Cursor(String),
    /// A page number.
    Page(u64),
    /// A record offset.
    Offset(u64),
    /// A full URL from a `Link: rel="next"` header.
    Url(String),
}

/// One list call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// The record type listed.
    pub record_type: String,
    /// `None` for the first page.
    pub cursor: Option<PageCursor>,
    /// Only records modified at or after this (recent lookups).
    pub modified_since: Option<Timestamp>,
    /// Only records modified before this.
    pub modified_until: Option<Timestamp>,
    /// The page size the API really serves, when it was found to cap below
    /// the configured one: a page of that many records is full, and a
    /// page/offset listing goes on after it.
    pub page_size: Option<u32>,
}

/// One page of records and where the next one starts (`None`: last page).
/// A lookup answers with one page and no `next`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The records of the page that could be read.
    pub records: Vec<Record>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
    /// Items of the response that are not records we can keep (no id):
    /// quarantined by the caller, never a reason to fail the page.
    pub unreadable: Vec<Unreadable>,
}

impl Page {
    /// Items the API served, readable or not (what page fullness counts).
    pub fn served(&self) -> usize {
        self.records.len() + self.unreadable.len()
    }
}

/// An item of a response that could not be read as a record, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// Why it could not be read (no id, not an object…).
    pub reason: String,
    /// The item as served.
    pub data: Value,
}

/// A write to the API (workflow actions).
#[derive(Debug, Clone, PartialEq)]
pub struct SendRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Relative to the app's base URL.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Value>,
    /// Sent as `Idempotency-Key`, so a retried action is not performed twice.
    pub idempotency_key: Option<String>,
}

/// How one API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 429, or 503 with `Retry-After`, or the configured reset header: the
    /// API's own counter says stop until `retry_at`.
    #[error("rate limited by the API (HTTP {status}) until {retry_at}")]
    RateLimited {
        /// The HTTP status that said so.
        status: u16,
        /// When the API says to come back (clamped to 7 days).
        retry_at: Timestamp,
    },
    /// 5xx, timeouts, connection resets: a later attempt may succeed.
    #[error("{0}")]
    Retryable(String),
    /// 401 or 403: the API refused the connection's credential. Not this
    /// request's fault: counted towards pausing the connection
    /// ([`crate::quota::Health`]).
    #[error("{0}")]
    Unauthorized(String),
    /// 400, 413 or 422: the API refused this request's content. Will fail
    /// again as it is; other content may pass (a refused Data Source chunk
    /// is split to find the row it refuses).
    #[error("{0}")]
    Rejected(String),
    /// Other 4xx, unreadable responses, bad records: will fail again.
    #[error("{0}")]
    Permanent(String),
}

/// The port: each method makes exactly one API call, so the quota can count
/// calls by counting method calls. Code-defined connectors implement it where
/// config cannot describe an API.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The endpoint a list call hits, `METHOD /path`, for usage reports.
    fn list_endpoint(&self, record_type: &str) -> String;
    /// The endpoint a lookup of `ids` hits.
    fn lookup_endpoint(&self, record_type: &str) -> String;
    /// Most ids one lookup call takes (1 when the API has no bulk lookup).
    fn max_ids_per_call(&self, record_type: &str) -> usize;
    /// Lists one page.
    async fn list(&self, req: &ListRequest) -> Result<Page, ApiError>;
    /// Looks up at most [`Connector::max_ids_per_call`] ids in one call.
    async fn lookup(&self, record_type: &str, ids: &[String]) -> Result<Page, ApiError>;
    /// Makes one write (an action or a push).
    async fn send(&self, req: &SendRequest) -> Result<Value, ApiError>;
    /// Whether calls to `endpoint` are exempt from the budget.
    fn is_exempt(&self, _endpoint: &str) -> bool {
        false
    }
    /// What one call to `endpoint` costs the budget (`[app.endpoint_costs]`:
    /// a search or GraphQL endpoint the API counts as several). Required,
    /// not defaulted: a wrapper that forgot to forward it would silently
    /// charge 1.
    fn call_cost(&self, endpoint: &str) -> u32;
    /// The API's own count from the latest response, taken once (see
    /// [`ApiCount`]); `None` when the API reports none or it was taken.
    /// Required, not defaulted: a wrapper that forgot to forward it would
    /// silently stop pacing.
    fn take_api_count(&self) -> Option<ApiCount>;
}

/// What the API said about its own windows: from the headers
/// `[app.rate_limit]` names (one window, `remaining_window`), and from the
/// standard `RateLimit` / `RateLimit-Policy` fields (each policy with its
/// window). It counts every client of the org, not only metered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCount {
    /// Calls the API still allows in `remaining_window`, if it said.
    pub remaining: Option<u64>,
    /// The API's limit for that window, if it said.
    pub limit: Option<u64>,
    /// The standard fields' policies.
    pub policies: Vec<ratelimit::ApiPolicy>,
    /// The API's token bucket, `(used, capacity)`, from `bucket_header`.
    pub bucket: Option<(u64, u64)>,
    /// What `[[app.rate_limit.counts]]`' headers said, one per family.
    pub counts: Vec<HeaderCount>,
}

/// One window's count from a header family (`[[app.rate_limit.counts]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCount {
    /// The window's length.
    pub window_secs: u64,
    /// Calls it still allows.
    pub remaining: u64,
    /// Its limit, when the API said.
    pub limit: Option<u64>,
    /// The app-wide level's window, not the org's.
    pub app_level: bool,
}

/// Why a metered call did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Our quota refused before any call was made.
    #[error("quota denied: {}", .0.reason)]
    Denied(Denied),
    /// The API refused; every handler of the org is blocked until `retry_at`.
    #[error("rate limited by the API until {retry_at}")]
    RateLimited {
        /// When the block ends.
        retry_at: Timestamp,
    },
    /// A later attempt may succeed.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The API refused the connection's credential (401/403): the job
    /// waits until `retry_at` (the pause's end once the connection is
    /// paused), never dead-lettered for it.
    #[error("authentication refused: {reason}")]
    Unauthorized {
        /// What the API said, and the connection's health.
        reason: String,
        /// When to come back.
        retry_at: Timestamp,
    },
    /// The API refused the request's content (400, 413, 422): will fail
    /// the same way again as it is.
    #[error("refused: {0}")]
    Rejected(String),
    /// Will fail the same way again.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The windows a reservation was granted in ended before this call
    /// (they can end between the holder's look at what is left and the
    /// call): no call was made; reserve anew.
    #[error("the reservation's windows ended; no call was made")]
    ReservationEnded,
}

impl From<crate::Error> for CallError {
    fn from(e: crate::Error) -> Self {
        if e.is_retryable() {
            CallError::Retryable(e.to_string())
        } else {
            CallError::Permanent(e.to_string())
        }
    }
}

/// A connector whose every call goes through the quota of one org/app.
#[derive(Clone)]
pub struct Metered {
    connector: Arc<dyn Connector>,
    quota: Quota,
    key: QuotaKey,
    limits: Limits,
    /// The sync or workflow spending the calls, for usage reports.
    source: String,
    /// Which quota window the API's own count (if it reports one) is of.
    api_window: crate::quota::WindowKind,
    /// When repeated 401/403 pause the connection.
    pause: crate::quota::PausePolicy,
    /// Background work, held back for interactive work
    /// (`crate::quota::Call::in_background`).
    background: bool,
    /// Calls the job still needs, when it knows (`crate::quota::Call::work`).
    needing: u32,
}

impl fmt::Debug for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("key", &self.key)
            .field("source", &self.source)
            .finish()
    }
}

impl Metered {
    /// `connector`'s calls for org `key`, spent from `limits` as `source`.
    pub fn new(
        connector: Arc<dyn Connector>,
        quota: Quota,
        key: QuotaKey,
        limits: Limits,
        source: impl Into<String>,
    ) -> Self {
        Self {
            connector,
            quota,
            key,
            limits,
            source: source.into(),
            api_window: crate::quota::WindowKind::Day,
            pause: crate::quota::PausePolicy { after_failures: 3 },
            background: false,
            needing: 0,
        }
    }

    /// The job still needs about `calls` calls: a window's refusal then
    /// takes a wake turn that size (`crate::quota::Call::needing`), so a
    /// window wakes only the jobs it can finish.
    pub fn needing(mut self, calls: u32) -> Self {
        self.needing = calls;
        self
    }

    /// Spends as background work when `background` is true: a scheduled
    /// complete transfer, a bulk run's actions ([`crate::quota::Call::in_background`]).
    pub fn in_background(mut self, background: bool) -> Self {
        self.background = background;
        self
    }

    /// Pauses the connection after `policy.after_failures` 401/403
    /// (`[app] pause_after_auth_failures`).
    pub(crate) fn with_pause_policy(mut self, policy: crate::quota::PausePolicy) -> Self {
        self.pause = policy;
        self
    }

    /// Paces from the API's own count of `window` (`[app.rate_limit]
    /// remaining_window`).
    pub(crate) fn with_api_window(mut self, window: crate::quota::WindowKind) -> Self {
        self.api_window = window;
        self
    }

    /// The connector behind the meter.
    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    /// The quota it spends from.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// acquire → call → release, with 429s turned into a shared block.
    async fn metered<T, F>(&self, endpoint: String, call: F) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        let cost = self.connector.call_cost(&endpoint).max(1);
        let mut spec = Call::new(self.source.clone(), endpoint.clone())
            .reserve(cost)
            .needing(self.needing)
            .in_background(self.background);
        if self.connector.is_exempt(&endpoint) {
            spec = spec.exempt();
        }
        let mut permit = None;
        for _ in 0..2 {
            let granted = match self
                .quota
                .acquire(&self.key, &self.limits, spec.clone())
                .await?
            {
                Admission::Granted(p) => p,
                Admission::Denied(d) => return Err(CallError::Denied(d)),
            };
            // The window the call was granted in ended while the grant was
            // on its way (the store took `now` before its round trip): a
            // call made now would land in the next window uncounted there.
            // Give it back and take it from the window it will land in.
            let ended = granted
                .grant()
                .is_some_and(|g| g.valid_until <= self.quota.clock().now());
            if !ended {
                permit = Some(granted);
                break;
            }
            self.quota.release(granted, 0).await?;
        }
        let Some(permit) = permit else {
            return Err(CallError::ReservationEnded);
        };
        let (result, reported) = cost::measured(call).await;
        let granted_at = permit.granted_at();
        // The API's answer settles the estimate: what it says it charged is
        // kept, the rest refunded, an excess taken below.
        let settled = cost::settle(cost, reported);
        // A call that reached the API counts even when it failed. Its count
        // was taken at acquire; a release that fails only leaves the lease
        // to expire, so it must never discard what the call returned (an
        // action would be repeated; a 429's block would be skipped).
        if let Err(e) = self.quota.release(permit, settled.kept).await {
            tracing::warn!(quota = %self.key, error = %e, "could not release the call's lease; it frees when it expires, and the call's result is kept");
        }
        self.take_excess(&endpoint, settled.excess, granted_at)
            .await;
        self.pace_from_api(granted_at).await;
        self.settle(result).await
    }

    /// The API said a call cost `excess` units more than its estimate: the
    /// budget takes them now, as the API already has, so later calls are
    /// paced on what was really spent. Taken like a call that needs no
    /// concurrency slot; when a window cannot hold them all, that window is
    /// filled to its limit (it is at least that full in the API's count).
    /// Like pacing, a store error here is logged and the call's result kept.
    async fn take_excess(&self, endpoint: &str, excess: u32, granted_at: Timestamp) {
        if excess == 0 {
            return;
        }
        tracing::warn!(quota = %self.key, endpoint, excess, "the API charged more than the call's estimate; the excess is taken from the budget now (raise [app.endpoint_costs] for this endpoint so the budget holds a call before it is made)");
        let mut limits = self.limits.clone();
        limits.max_concurrent = u32::MAX;
        // The org's total and the app's take the excess; a share's parts do
        // not (a kind's cap must not refuse what the API already charged).
        limits.shares.clear();
        if let Some(app) = limits.app_wide.as_deref_mut() {
            app.max_concurrent = u32::MAX;
        }
        let spec = Call::new(self.source.clone(), endpoint).reserve(excess);
        let refused = match self.quota.acquire(&self.key, &limits, spec).await {
            Ok(Admission::Granted(p)) => {
                if let Err(e) = self.quota.release(p, excess).await {
                    tracing::warn!(quota = %self.key, error = %e, "could not release the excess's lease; it frees when it expires");
                }
                return;
            }
            Ok(Admission::Denied(d)) => d.reason,
            Err(e) => {
                tracing::warn!(quota = %self.key, error = %e, "could not take the excess into the quota");
                return;
            }
        };
        let (key, window, limit) = match refused {
            crate::quota::DenyReason::Window { window, limit, .. } => {
                (self.key.clone(), window, limit)
            }
            crate::quota::DenyReason::AppWide { window, limit, .. } => {
                (self.key.app_level(), window, limit)
            }
            // Blocked or paused: nothing is spent until that ends anyway.
            _ => return,
        };
        if let Err(e) = self
            .quota
            .raise_from_api(&key, window, u64::from(limit), granted_at)
            .await
        {
            tracing::warn!(quota = %self.key, error = %e, "could not fill the window the excess overran");
        }
    }

    /// When the API's own count says more of the window is spent than
    /// metered counted (other tools of the org spend the same budget), the
    /// quota takes the difference: one conditional write, never lowering
    /// the count, never above the limit. Returns the calls the API still
    /// allows, when it said. Pacing is a refinement: a quota-store error
    /// here is logged, not returned, so it never discards the call's result
    /// (the next response carries the count again).
    ///
    /// The count is of the windows the call was granted in (`granted_at`),
    /// not of the time its answer came back: an answer that arrives just
    /// after midnight saying "0 left" is about yesterday, and must not fill
    /// the new day.
    async fn pace_from_api(&self, granted_at: Timestamp) -> Option<u64> {
        let count = self.connector.take_api_count()?;
        let Spent { org, app, left } =
            spent_by_api(&count, &self.limits, self.api_window, &self.key);
        let app_key = self.key.app_level();
        let raises = org
            .into_iter()
            .map(|r| (&self.key, r))
            .chain(app.into_iter().map(|r| (&app_key, r)));
        for (key, (kind, spent)) in raises {
            if let Err(e) = self
                .quota
                .raise_from_api(key, kind, spent, granted_at)
                .await
            {
                tracing::warn!(quota = %self.key, error = %e, "could not take the API's count into the quota; the next response will carry it again");
            }
        }
        left
    }

    /// Maps a call's result; a rate limit blocks every handler of the org
    /// until the API's `retry_at`.
    async fn settle<T>(&self, result: Result<T, ApiError>) -> Result<T, CallError> {
        match result {
            Ok(v) => Ok(v),
            Err(ApiError::RateLimited { retry_at, .. }) => {
                // The job waits until `retry_at` either way; a block that
                // could not be written only leaves the org's other jobs to
                // meet the API's 429 themselves.
                if let Err(e) = self.quota.block_until(&self.key, retry_at).await {
                    tracing::warn!(quota = %self.key, error = %e, "could not record the API's block for the org; this job waits anyway");
                }
                Err(CallError::RateLimited { retry_at })
            }
            Err(ApiError::Retryable(m)) => Err(CallError::Retryable(m)),
            Err(ApiError::Rejected(m)) => Err(CallError::Rejected(m)),
            Err(ApiError::Unauthorized(m)) if self.pause.after_failures == 0 => {
                Err(CallError::Permanent(m))
            }
            Err(ApiError::Unauthorized(m)) => {
                let now = self.quota.clock().now();
                match self.quota.auth_failed(&self.key, &m, self.pause).await {
                    Ok(health) => Err(CallError::Unauthorized {
                        reason: format!("{m} (connection {})", health.describe(now)),
                        retry_at: health.retry_at(now),
                    }),
                    // Not recorded: this job waits anyway; the next
                    // refusal counts.
                    Err(e) => {
                        tracing::warn!(quota = %self.key, error = %e, "could not record the authentication failure");
                        Err(CallError::Unauthorized {
                            reason: m,
                            retry_at: crate::quota::Health::default().retry_at(now),
                        })
                    }
                }
            }
            Err(ApiError::Permanent(m)) => Err(CallError::Permanent(m)),
        }
    }

    /// One list call, through the quota.
    pub async fn list(&self, req: &ListRequest) -> Result<Page, CallError> {
        let endpoint = self.connector.list_endpoint(&req.record_type);
        self.metered(endpoint, self.connector.list(req)).await
    }

    /// One lookup call; `ids` must fit [`Connector::max_ids_per_call`].
    pub async fn lookup(&self, record_type: &str, ids: &[String]) -> Result<Page, CallError> {
        let max = self.connector.max_ids_per_call(record_type);
        if ids.len() > max {
            return Err(CallError::Permanent(format!(
                "{} ids in one lookup of `{record_type}`; the API takes at most {max}",
                ids.len()
            )));
        }
        let endpoint = self.connector.lookup_endpoint(record_type);
        self.metered(endpoint, self.connector.lookup(record_type, ids))
            .await
    }

    /// One write, through the quota.
    pub async fn send(&self, req: &SendRequest) -> Result<Value, CallError> {
        let endpoint = format!("{} {}", req.method, req.path);
        self.metered(endpoint, self.connector.send(req)).await
    }

    /// Reserves up to `calls` calls to `endpoint` in one quota round trip
    /// (a transfer with a known page count). When a window has less room,
    /// takes what is left; when it has none, says when it frees. Give the
    /// unused part back with [`Reservation::finish`].
    pub async fn reserve(&self, endpoint: &str, calls: u32) -> Result<Reservation<'_>, CallError> {
        // Counted in the endpoint's cost: `calls` calls of `unit` each.
        let unit = self.connector.call_cost(endpoint).max(1);
        // A block of costly calls never asks for more than a window holds
        // (it would be refused as impossible, forever); the config checks
        // one call fits.
        let levels = std::iter::once(&self.limits).chain(self.limits.app_wide.as_deref());
        let tightest = levels
            .flat_map(|l| l.windows().map(|(_, limit)| limit))
            .min()
            .unwrap_or(u32::MAX);
        let calls = calls.min((tightest / unit).max(1));
        let mut spec = Call::new(self.source.clone(), endpoint)
            .reserve(calls.max(1).saturating_mul(unit))
            .needing(self.needing)
            .in_background(self.background);
        if self.connector.is_exempt(endpoint) {
            spec = spec.exempt();
        }
        let mut admission = self
            .quota
            .acquire(&self.key, &self.limits, spec.clone())
            .await?;
        if let Admission::Denied(Denied {
            reason:
                crate::quota::DenyReason::Window { limit, used, .. }
                | crate::quota::DenyReason::Share { limit, used, .. }
                | crate::quota::DenyReason::AppWide { limit, used, .. },
            ..
        }) = &admission
        {
            let room = u64::from(*limit).saturating_sub(*used);
            // Whole calls only.
            let room = room - room % u64::from(unit);
            if room >= u64::from(unit) && room < u64::from(spec.cost) {
                admission = self
                    .quota
                    .acquire(&self.key, &self.limits, spec.reserve(room as u32))
                    .await?;
            }
        }
        match admission {
            Admission::Granted(permit) => Ok(Reservation {
                metered: self,
                granted: permit.cost(),
                lease_until: permit.grant().map(|g| g.expires_at),
                permit: Some(permit),
                used: 0,
                forfeited: 0,
                unit,
            }),
            Admission::Denied(d) => Err(CallError::Denied(d)),
        }
    }
}

/// Calls paid for in advance by [`Metered::reserve`].
#[derive(Debug)]
pub struct Reservation<'a> {
    metered: &'a Metered,
    permit: Option<crate::quota::Permit>,
    /// Budget units granted and used (calls × `unit`).
    granted: u32,
    used: u32,
    /// Reserved calls the API's own count said are gone (another client
    /// spent them): kept in the window at `finish`, not refunded.
    forfeited: u32,
    /// When the lease ends as last granted or renewed.
    lease_until: Option<Timestamp>,
    /// What one call of the reservation's endpoint costs.
    unit: u32,
}

impl Reservation<'_> {
    /// Calls left to make. None once the windows the calls were granted in
    /// have ended: a call made after midnight from yesterday's reservation
    /// would be charged to yesterday while the API counts it today, so the
    /// holder finishes this one and reserves anew.
    pub fn remaining(&self) -> u32 {
        let expired = self
            .permit
            .as_ref()
            .and_then(|p| p.grant())
            .is_some_and(|g| self.metered.quota.clock().now() >= g.valid_until);
        if expired {
            0
        } else {
            (self.granted - self.used) / self.unit
        }
    }

    /// Spends one reserved call. Renews the lease when it runs short, so a
    /// long run of calls never loses its concurrency slot.
    async fn spend<T, F>(&mut self, call: F) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        if let (Some(until), Some(p)) = (self.lease_until, &self.permit) {
            let now = self.metered.quota.clock().now();
            if until - now < chrono::Duration::seconds(30) {
                let ttl = self.metered.limits.lease_ttl();
                self.metered.quota.renew(p, ttl).await?;
                self.lease_until = Some(now + ttl);
            }
        }
        // Looked at after the renewal's round trip, right before the call:
        // a window that ended meanwhile must not get a call it never counted.
        if self.remaining() == 0 {
            return Err(CallError::ReservationEnded);
        }
        self.used += self.unit;
        let (result, reported) = cost::measured(call).await;
        let granted_at = self
            .permit
            .as_ref()
            .map_or_else(|| self.metered.quota.clock().now(), |p| p.granted_at());
        // Settled against the unit: a cheaper call leaves the difference in
        // the reservation (for another call, or refunded at `finish`).
        let settled = cost::settle(self.unit, reported);
        self.used -= self.unit - settled.kept;
        if settled.excess > 0 {
            let endpoint = self.permit.as_ref().map_or("", |p| p.endpoint());
            self.metered
                .take_excess(endpoint, settled.excess, granted_at)
                .await;
        }
        // Another client spent part of the window: the reserved calls the
        // API no longer allows are not made, nor refunded at `finish`.
        if let Some(left) = self.metered.pace_from_api(granted_at).await {
            let left = u32::try_from(left).unwrap_or(u32::MAX);
            let unspent = self.granted - self.used;
            if left < unspent {
                self.forfeited += unspent - left;
                self.granted = self.used + left;
            }
        }
        self.metered.settle(result).await
    }

    /// One list call from the reservation.
    pub async fn list(&mut self, req: &ListRequest) -> Result<Page, CallError> {
        let connector = self.metered.connector.clone();
        self.spend(connector.list(req)).await
    }

    /// One lookup call from the reservation.
    pub async fn lookup(&mut self, record_type: &str, ids: &[String]) -> Result<Page, CallError> {
        let connector = self.metered.connector.clone();
        self.spend(connector.lookup(record_type, ids)).await
    }

    /// Releases the lease and refunds the calls not made.
    pub async fn finish(mut self) -> Result<(), CallError> {
        if let Some(permit) = self.permit.take() {
            self.metered
                .quota
                .release_forfeiting(permit, self.used, self.forfeited)
                .await?;
        }
        Ok(())
    }
}

/// What an API's count says each configured window has spent: the org's
/// windows, the app's level's, and the fewest calls any count says are left.
struct Spent {
    org: Vec<(crate::quota::WindowKind, u64)>,
    app: Vec<(crate::quota::WindowKind, u64)>,
    left: Option<u64>,
}

/// The API's count read against our windows (a pure rule): a remaining
/// count raises the API's own window; each standard policy the configured
/// window of its length (a rolling window's count is spread over its
/// buckets and is not raised from one number); a bucket's level the first
/// configured bucket, scaled when the API's capacity differs from ours;
/// each counting header its window, the org's or the app's level's. Never
/// more than a window's limit.
fn spent_by_api(
    count: &ApiCount,
    limits: &Limits,
    api_window: crate::quota::WindowKind,
    key: &QuotaKey,
) -> Spent {
    let mut raises = Vec::new();
    let mut left: Option<u64> = None;
    let mut fewer = |n: u64| left = Some(left.map_or(n, |l: u64| l.min(n)));
    if let Some(remaining) = count.remaining {
        if let Some((_, limit)) = limits.windows().find(|(w, _)| *w == api_window) {
            let limit = u64::from(limit);
            let spent = count.limit.unwrap_or(limit).saturating_sub(remaining);
            raises.push((api_window, spent.min(limit)));
        }
        fewer(remaining);
    }
    for policy in &count.policies {
        let Some((kind, limit)) = limits
            .windows()
            .find(|(k, _)| !k.needs_read() && u64::from(k.secs()) == policy.window_secs)
        else {
            tracing::debug!(quota = %key, policy = %policy.name, window_secs = policy.window_secs, "the API's policy has no configured window of its length; not paced from it");
            continue;
        };
        let spent = policy.quota.saturating_sub(policy.remaining);
        raises.push((kind, spent.min(u64::from(limit))));
        fewer(policy.remaining);
    }
    if let Some((used, capacity)) = count.bucket {
        if let Some((kind, ours)) = limits
            .windows()
            .find(|(k, _)| matches!(k, crate::quota::WindowKind::Bucket(_)))
        {
            let ours = u64::from(ours);
            let level = if capacity == 0 || capacity == ours {
                used
            } else {
                (used * ours).div_ceil(capacity)
            };
            raises.push((kind, level.min(ours)));
            fewer(capacity.saturating_sub(used));
        }
    }
    let mut app_raises = Vec::new();
    for count in &count.counts {
        let level = if count.app_level {
            limits.app_wide.as_deref()
        } else {
            Some(limits)
        };
        let Some((kind, limit)) = level.and_then(|l| {
            l.windows()
                .find(|(k, _)| !k.needs_read() && u64::from(k.secs()) == count.window_secs)
        }) else {
            continue;
        };
        let limit = u64::from(limit);
        let spent = count.limit.unwrap_or(limit).saturating_sub(count.remaining);
        if count.app_level {
            app_raises.push((kind, spent.min(limit)));
        } else {
            raises.push((kind, spent.min(limit)));
        }
        fewer(count.remaining);
    }
    Spent {
        org: raises,
        app: app_raises,
        left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::WindowKind;

    #[test]
    fn the_apis_count_raises_the_windows_of_its_length_never_past_their_limit() {
        let limits: Limits = toml::from_str(
            "per_day = 100\nper_minute = 10\nmax_concurrent = 3\n\
             [app_wide]\nper_minute = 15\nmax_concurrent = 6",
        )
        .unwrap();
        let policy = |window_secs, quota, remaining| ratelimit::ApiPolicy {
            name: String::new(),
            window_secs,
            quota,
            remaining,
        };
        let count = ApiCount {
            remaining: Some(40),
            limit: Some(100),
            policies: vec![
                policy(60, 10, 3),
                // No configured window of an hour: not read.
                policy(3_600, 500, 1),
                // Spent more than our minute holds: raised to the limit.
                policy(60, 50, 0),
            ],
            counts: vec![HeaderCount {
                window_secs: 60,
                remaining: 5,
                limit: None,
                app_level: true,
            }],
            ..Default::default()
        };
        let key = QuotaKey::new("acme", "crm");
        let spent = spent_by_api(&count, &limits, WindowKind::Day, &key);
        assert_eq!(
            spent.org,
            vec![
                (WindowKind::Day, 60),
                (WindowKind::Minute, 7),
                (WindowKind::Minute, 10)
            ]
        );
        assert_eq!(spent.app, vec![(WindowKind::Minute, 10)], "15 − 5");
        assert_eq!(spent.left, Some(0), "the fewest any count says are left");
    }
}
