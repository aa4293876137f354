//! What every request meets before its route, as axum middleware, outermost
//! first: [`auth`] (who is calling), [`limits`] (concurrency, bursts, the
//! daily budget, and the call counted), [`faults`] (scripted and random
//! failures that replace the served response). Each passes what it learned
//! to the next in the request's extensions.

use super::{
    json_response, lock, retry_after_value, route, take, too_many, Faults, InFlight, HOSTILE_KINDS,
};
use crate::Sim;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

/// The caller's API key: one per organization.
#[derive(Debug, Clone)]
pub(super) struct ApiKey(pub(super) String);

/// What [`limits`] settled for a call the API accepted: when it arrived,
/// the faults as they stood, and the endpoint it was counted under.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) now: DateTime<Utc>,
    pub(super) faults: Faults,
    pub(super) endpoint: String,
}

/// The caller's key: `Authorization: Bearer KEY`, else `X-Api-Key: KEY`.
fn api_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| header("x-api-key"))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// 401 without a key (`Authorization: Bearer KEY`, or `X-Api-Key: KEY` as
/// many APIs take it), or with a revoked one; otherwise the key travels on
/// as [`ApiKey`].
pub(super) async fn auth(State(sim): State<Sim>, mut req: Request, next: Next) -> Response {
    let key = api_key(req.headers());
    if let Some(k) = &key {
        let made = lock(&sim.inner.stats)
            .calls_by_key
            .get(k)
            .copied()
            .unwrap_or(0);
        let mut f = sim.faults();
        if f.revoke_after_calls.get(k).is_some_and(|n| made >= *n) {
            f.revoke_after_calls.remove(k);
            f.revoked_keys.insert(k.clone());
        }
    }
    let revoked = key
        .as_ref()
        .filter(|k| sim.faults().revoked_keys.contains(*k));
    if let Some(k) = revoked {
        *lock(&sim.inner.stats)
            .rejected_401_by_key
            .entry(k.clone())
            .or_default() += 1;
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_token: the access token was revoked"}),
        );
    }
    match key {
        Some(key) => {
            req.extensions_mut().insert(ApiKey(key));
            next.run(req).await
        }
        None => json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing bearer token"}),
        ),
    }
}

/// The API's own limits, per key: concurrent requests (counted at arrival,
/// so a fourth request is seen even if refused), scripted 429 bursts, and
/// the daily budget (429 until UTC midnight). An accepted call is counted
/// by endpoint, key and day before its route runs.
pub(super) async fn limits(
    State(sim): State<Sim>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    mut req: Request,
    next: Next,
) -> Response {
    let state = &*sim.inner;
    let now = state.clock.now();
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
    let burst = take(&mut lock(&state.faults).next_429)
        || faults.throttle_until.is_some_and(|until| now < until);
    if burst {
        lock(&state.stats).rejected_429 += 1;
        if let Some(offset) = faults.burst_reset_offset_secs {
            // A reset time, no Retry-After (as GitHub's API answers).
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": "rate limit exceeded"}),
            );
            if let Ok(v) =
                axum::http::HeaderValue::from_str(&(now.timestamp() + offset).to_string())
            {
                r.headers_mut().insert("x-ratelimit-reset", v);
            }
            return r;
        }
        return too_many(retry_after_value(
            faults.retry_after_style,
            now,
            faults.burst_retry_after_secs,
        ));
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
    // What the call costs in the shapes (GraphQL-style points).
    let cost = state
        .config
        .costs
        .get(&endpoint_of(req.method(), req.uri()))
        .copied()
        .unwrap_or(1)
        .max(1);
    if let Some(wait) = shape_refusal(state, &key, now, cost) {
        let mut stats = lock(&state.stats);
        stats.rejected_429 += 1;
        stats.rejected_by_shape += 1;
        return too_many(retry_after_value(faults.retry_after_style, now, wait));
    }
    let endpoint = endpoint_of(req.method(), req.uri());
    let mut shadow = false;
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
            .entry((key.clone(), day.clone()))
            .or_default() += 1;
        *stats
            .calls_by_key_minute
            .entry((key.clone(), now.format("%Y-%m-%dT%H:%M").to_string()))
            .or_default() += 1;
        // Another client of the same organization spends too.
        if let Some(n) = faults.shadow_every.get(&key).copied().filter(|n| *n > 0) {
            let mine = stats.calls_by_key.get(&key).copied().unwrap_or(0);
            let today = stats
                .calls_by_key_day
                .entry((key.clone(), day.clone()))
                .or_default();
            if mine % n == 0 && *today < state.config.daily_budget {
                *today += 1;
                *stats.shadow_calls.entry(key.clone()).or_default() += 1;
                shadow = true;
            }
        }
    }
    // The other client's call fills the shapes too, when they admit it
    // (a real API would refuse it otherwise).
    if shadow && !faults.shadow_spends_only_the_day {
        let _ = shape_refusal(state, &key, now, 1);
    }
    let remaining = state.config.daily_budget.saturating_sub(
        lock(&state.stats)
            .calls_by_key_day
            .get(&(key.clone(), day))
            .copied()
            .unwrap_or(0),
    );
    req.extensions_mut().insert(Call {
        now,
        faults,
        endpoint,
    });
    // The guard leaves the in-flight count when the route's response is done.
    let mut response = next.run(req).await;
    let actual = if state.config.settle_costs && response.status().is_success() {
        let actual = cost.div_ceil(2);
        give_back(state, &key, now, cost - actual);
        if let Ok(v) = axum::http::HeaderValue::from_str(&actual.to_string()) {
            response.headers_mut().insert("x-query-cost", v);
        }
        actual
    } else {
        cost
    };
    *lock(&state.stats)
        .points_by_key
        .entry(key.clone())
        .or_default() += actual;
    // The API's own count of the key's day, as many APIs report it: what
    // metered paces from when other clients spend the same budget.
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", state.config.daily_budget.into());
    headers.insert("x-ratelimit-remaining", remaining.into());
    for (name, value) in window_headers(state, &key, now) {
        if let Ok(name) = axum::http::HeaderName::try_from(name) {
            headers.insert(name, value.into());
        }
    }
    if let Some(level) = bucket_header(state, &key, now) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&level) {
            headers.insert("x-shopify-shop-api-call-limit", v);
        }
    }
    if state.config.standard_headers {
        let reset = (now + Duration::days(1))
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| (t.and_utc() - now).num_seconds());
        let policy = format!("\"day\";q={};w=86400", state.config.daily_budget);
        let count = format!("\"day\";r={remaining};t={reset}");
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", count)] {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
    response
}

/// The arrivals entry holding every key's calls.
const APP_WIDE: &str = " every key";

/// Seconds until every [`crate::Shape`] has room for `key`'s call at
/// `now`, or None when they all have (the call is then recorded).
fn shape_refusal(state: &super::State, key: &str, now: DateTime<Utc>, cost: u64) -> Option<i64> {
    if state.config.shapes.is_empty() {
        return None;
    }
    let mut arrivals = lock(&state.arrivals);
    // Every key's calls, under a name no key has, for app-wide shapes.
    let everyone: Vec<DateTime<Utc>> = arrivals.get(APP_WIDE).cloned().unwrap_or_default();
    let calls = arrivals.entry(key.to_string()).or_default();
    let mut wait = 0i64;
    let rolling = |calls: &[DateTime<Utc>], limit: u64, secs: i64| -> Option<i64> {
        let since = now - Duration::seconds(secs);
        let inside: Vec<&DateTime<Utc>> = calls.iter().filter(|c| **c > since).collect();
        (inside.len() as u64 + cost > limit).then(|| {
            // Room when the oldest call that keeps it full leaves.
            let keep = (limit + 1).saturating_sub(cost).max(1) as usize;
            let oldest = inside[inside.len().saturating_sub(keep)];
            let leaves = *oldest + Duration::seconds(secs);
            (leaves - now).num_milliseconds().div_euclid(1000) + 1
        })
    };
    for shape in &state.config.shapes {
        match *shape {
            crate::Shape::Fixed {
                calls: limit,
                secs,
                offset_secs,
            } => {
                let (held, end) = fixed_held(calls, secs, offset_secs, now);
                if held + cost > limit {
                    wait = wait.max(end - now.timestamp());
                }
            }
            crate::Shape::AppFixed { calls: limit, secs } => {
                let (held, end) = fixed_held(&everyone, secs, 0, now);
                if held + cost > limit {
                    wait = wait.max(end - now.timestamp());
                }
            }
            crate::Shape::Rolling { calls: limit, secs } => {
                if let Some(w) = rolling(calls, limit, secs) {
                    wait = wait.max(w);
                }
            }
            crate::Shape::AppRolling { calls: limit, secs } => {
                if let Some(w) = rolling(&everyone, limit, secs) {
                    wait = wait.max(w);
                }
            }
            crate::Shape::Bucket { capacity, per_sec } => {
                let level = bucket_level(calls, per_sec, now);
                let over = level + cost as f64 - capacity as f64;
                if over > 1e-9 {
                    wait = wait.max((over / per_sec).ceil() as i64);
                }
            }
        }
    }
    if wait > 0 {
        return Some(wait);
    }
    // Keep what any shape can still see.
    let keep = state
        .config
        .shapes
        .iter()
        .map(|s| match s {
            crate::Shape::Fixed { secs, .. }
            | crate::Shape::AppFixed { secs, .. }
            | crate::Shape::Rolling { secs, .. }
            | crate::Shape::AppRolling { secs, .. } => *secs,
            crate::Shape::Bucket { capacity, per_sec } => {
                (*capacity as f64 / per_sec).ceil() as i64 + 1
            }
        })
        .max()
        .unwrap_or(0);
    for who in [key, APP_WIDE] {
        let calls = arrivals.entry(who.to_string()).or_default();
        calls.extend(std::iter::repeat_n(now, cost as usize));
        calls.retain(|c| *c > now - Duration::seconds(keep));
    }
    None
}

/// Gives `points` of a call `key` made at `now` back to the shapes.
fn give_back(state: &super::State, key: &str, now: DateTime<Utc>, points: u64) {
    let mut arrivals = lock(&state.arrivals);
    for who in [key, APP_WIDE] {
        if let Some(calls) = arrivals.get_mut(who) {
            for _ in 0..points {
                match calls.iter().rposition(|c| *c == now) {
                    Some(i) => {
                        calls.remove(i);
                    }
                    None => break,
                }
            }
        }
    }
}

/// The level of a leaky bucket draining `per_sec` that took `calls` (in
/// time order), at `now`: exact, continuous.
fn bucket_level(calls: &[DateTime<Utc>], per_sec: f64, now: DateTime<Utc>) -> f64 {
    let leak = |level: f64, from: DateTime<Utc>, to: DateTime<Utc>| {
        let secs = (to - from).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        (level - secs * per_sec).max(0.0)
    };
    let mut level = 0.0f64;
    let mut at: Option<DateTime<Utc>> = None;
    for t in calls {
        if let Some(prev) = at {
            level = leak(level, prev, *t);
        }
        level += 1.0;
        at = Some(*t);
    }
    at.map_or(0.0, |prev| leak(level, prev, now))
}

/// Calls held in the fixed window of `secs` (starting `offset_secs` after
/// the UTC-aligned boundaries) that `now` falls in, and the window's end
/// (epoch seconds).
fn fixed_held(
    calls: &[DateTime<Utc>],
    secs: i64,
    offset_secs: i64,
    now: DateTime<Utc>,
) -> (u64, i64) {
    let t = now.timestamp() - offset_secs;
    let start = t.div_euclid(secs) * secs + offset_secs;
    let held = calls.iter().filter(|c| c.timestamp() >= start).count() as u64;
    (held, start + secs)
}

/// The fixed shapes' counts as Xero-style header families:
/// `x-limit-{secs}s-remaining` / `-limit` for the key's windows,
/// `x-app-limit-{secs}s-remaining` / `-limit` for the app's.
pub(super) fn window_headers(
    state: &super::State,
    key: &str,
    now: DateTime<Utc>,
) -> Vec<(String, u64)> {
    let arrivals = lock(&state.arrivals);
    let mine = arrivals.get(key).map(Vec::as_slice).unwrap_or(&[]);
    let everyone = arrivals.get(APP_WIDE).map(Vec::as_slice).unwrap_or(&[]);
    let mut out = Vec::new();
    for shape in &state.config.shapes {
        let (prefix, calls, limit, secs, offset) = match *shape {
            crate::Shape::Fixed {
                calls,
                secs,
                offset_secs,
            } => ("x-limit", mine, calls, secs, offset_secs),
            crate::Shape::AppFixed { calls, secs } => ("x-app-limit", everyone, calls, secs, 0),
            _ => continue,
        };
        let (held, _) = fixed_held(calls, secs, offset, now);
        out.push((
            format!("{prefix}-{secs}s-remaining"),
            limit.saturating_sub(held),
        ));
        out.push((format!("{prefix}-{secs}s-limit"), limit));
    }
    out
}

/// `used/capacity` of the key's bucket at `now`, when the API has one.
pub(super) fn bucket_header(state: &super::State, key: &str, now: DateTime<Utc>) -> Option<String> {
    let (capacity, per_sec) = state.config.shapes.iter().find_map(|s| match s {
        crate::Shape::Bucket { capacity, per_sec } => Some((*capacity, *per_sec)),
        _ => None,
    })?;
    let arrivals = lock(&state.arrivals);
    let calls = arrivals.get(key).map(Vec::as_slice).unwrap_or(&[]);
    let level = bucket_level(calls, per_sec, now).ceil() as u64;
    Some(format!("{}/{capacity}", level.min(capacity)))
}

/// The counter name of a request: its route template, and `(by ids)` for a
/// bulk lookup on a list endpoint.
fn endpoint_of(method: &Method, uri: &axum::http::Uri) -> String {
    let path = uri.path().trim_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut endpoint = route(method, &segments);
    let by_ids = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("ids=") || p.starts_with("id="))
    });
    if method == Method::GET && segments.len() == 1 && by_ids {
        endpoint.push_str(" (by ids)");
    }
    endpoint
}

/// Faults that replace a served response (the call was still counted):
/// random hostile answers (`fail_percent`), per-endpoint malformed bodies,
/// and every scripted `next_*` switch, in a fixed order.
pub(super) async fn faults(
    State(sim): State<Sim>,
    Extension(call): Extension<Call>,
    req: Request,
    next: Next,
) -> Response {
    // The lock is released before the route runs (it is not held across
    // an await).
    let replaced = replacement(&sim, &call, req.headers());
    match replaced {
        Some(response) => response,
        None => next.run(req).await,
    }
}

fn replacement(sim: &Sim, call: &Call, headers: &HeaderMap) -> Option<Response> {
    let state = &*sim.inner;
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
                return Some((StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>").into_response())
            }
            "503" => f.next_503_plain += 1,
            "malformed" => f.next_malformed_json += 1,
            "truncated" => f.next_truncated_body += 1,
            _ => f.next_dropped_connection += 1,
        }
    }
    if let Some(n) = f.malformed_on.get_mut(&call.endpoint) {
        if take(n) {
            f.next_malformed_json += 1;
        }
    }
    if let Some(n) = f.redirect_on.get_mut(&call.endpoint) {
        if take(n) {
            f.next_redirect += 1;
        }
    }
    if take(&mut f.next_5xx) {
        return Some(json_response(
            StatusCode::BAD_GATEWAY,
            &json!({"error": "upstream exploded"}),
        ));
    }
    if take(&mut f.next_no_records) {
        return Some(json_response(
            StatusCode::OK,
            &json!({"error": "temporarily unavailable"}),
        ));
    }
    if take(&mut f.next_503_plain) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "try later").into_response());
    }
    if take(&mut f.next_503_retry_after) {
        let mut r = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "maintenance"}),
        );
        r.headers_mut().insert(
            "retry-after",
            retry_after_value(
                call.faults.retry_after_style,
                call.now,
                call.faults.burst_retry_after_secs,
            ),
        );
        return Some(r);
    }
    if take(&mut f.next_redirect) {
        let mut r = json_response(StatusCode::TEMPORARY_REDIRECT, &json!({"moved": true}));
        if let Ok(v) = axum::http::HeaderValue::from_str(&f.redirect_to) {
            r.headers_mut().insert("location", v);
        }
        return Some(r);
    }
    if take(&mut f.next_400_echo_auth) {
        let echoed = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if f.echo_auth_offset > 0 {
            let body = format!(
                "{}{echoed} and more text after it",
                "x".repeat(f.echo_auth_offset)
            );
            return Some((StatusCode::BAD_REQUEST, body).into_response());
        }
        return Some(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad request", "you_sent": echoed}),
        ));
    }
    if let Some(n) = f.next_huge_body.take() {
        let body = format!("{{\"data\": [], \"padding\": \"{}\"}}", "x".repeat(n));
        return Some(
            (StatusCode::OK, [("content-type", "application/json")], body).into_response(),
        );
    }
    if take(&mut f.next_malformed_json) {
        return Some(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"data\": [{\"id\": \"x\", ",
            )
                .into_response(),
        );
    }
    if take(&mut f.next_truncated_body) {
        let stream = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"{\"data\": [")),
            Err(std::io::Error::other("connection reset mid-body")),
        ]);
        return Some(
            Response::builder()
                .status(200)
                .body(Body::from_stream(stream))
                .unwrap_or_default(),
        );
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
        return Some(
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_default(),
        );
    }
    if take(&mut f.next_dropped_connection) {
        let stream = futures::stream::iter(vec![Err::<Bytes, _>(std::io::Error::other("dropped"))]);
        return Some(
            Response::builder()
                .status(200)
                .body(Body::from_stream(stream))
                .unwrap_or_default(),
        );
    }
    None
}
