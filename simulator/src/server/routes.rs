//! One handler per route of the simulated API. By the time a handler runs,
//! the middleware has authenticated the caller ([`ApiKey`]), admitted and
//! counted the call ([`Call`]) and passed over every fault.

use super::middleware::{ApiKey, Call};
use super::{json_response, lock, parse_time, take, updated_at, State};
use crate::data::ts;
use crate::Sim;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

/// `POST /datasources/{name}/rows`: inserts and deletes in one call, applied
/// once per `Idempotency-Key` of an organization.
pub(super) async fn push_rows(
    AxState(sim): AxState<Sim>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &*sim.inner;
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "body must be JSON"}),
        );
    };
    // A platform that validates rows: a push carrying a refused id is
    // refused whole, naming the row (as such APIs do), and nothing of it
    // is applied.
    let refused: Option<String> = {
        let f = sim.faults();
        payload["inserts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str())
            .find(|id| f.refuse_row_ids.contains(*id))
            .map(str::to_string)
    };
    if let Some(id) = refused {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": format!("row {id}: field `email` is not a valid address")}),
        );
    }
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A key this organization already used: answered, not applied again.
    let repeat = match &idem {
        Some(k) => !lock(&state.applied_pushes).insert((key.clone(), k.clone())),
        None => false,
    };
    let (inserted, deleted) = if repeat {
        (0, 0)
    } else {
        let mut ds = lock(&state.datasources);
        let rows = ds.entry((key.clone(), name)).or_default();
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
        (inserted, deleted)
    };
    {
        let mut stats = lock(&state.stats);
        stats.datasource_pushes += 1;
        *stats.pushes_by_key.entry(key).or_default() += 1;
        if let Some(k) = idem {
            *stats
                .push_requests_by_idempotency_key
                .entry(k.clone())
                .or_default() += 1;
            if !repeat {
                *stats.pushes_by_idempotency_key.entry(k).or_default() += 1;
            }
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"inserted": inserted, "deleted": deleted}),
    )
}

/// `GET /datasources/{name}/rows`: what the caller's pushes left.
pub(super) async fn datasource_rows(
    AxState(sim): AxState<Sim>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    Path(name): Path<String>,
) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"data": sim.inner.datasource_rows_of(&key, &name)}),
    )
}

/// `POST /hooks/{name}`: accepted, nothing kept (the exempt endpoint).
pub(super) async fn hook() -> Response {
    json_response(StatusCode::OK, &json!({"ok": true}))
}

/// `POST /{record_type}`: creates a record, once per `Idempotency-Key`.
pub(super) async fn create(
    AxState(sim): AxState<Sim>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    Extension(call): Extension<Call>,
    Path(record_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    created(&sim, key, &call, &record_type, None, &headers, &body)
}

/// `POST /{record_type}/{parent}`: a record created under another (a note
/// on a customer). The parent segment, percent-decoded, is kept in the
/// record as `parent`, so a test can tell what one path segment carried.
pub(super) async fn create_under(
    AxState(sim): AxState<Sim>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    Extension(call): Extension<Call>,
    Path((record_type, parent)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    created(
        &sim,
        key,
        &call,
        &record_type,
        Some(parent),
        &headers,
        &body,
    )
}

fn created(
    sim: &Sim,
    key: String,
    call: &Call,
    record_type: &str,
    parent: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let state = &*sim.inner;
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
    let Ok(mut record) = serde_json::from_slice::<Value>(body) else {
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
    record["created_at"] = json!(ts(call.now));
    if let Some(parent) = parent {
        record["parent"] = json!(parent);
    }
    if let Some(k) = idem {
        lock(&state.created).insert((key.clone(), k), record.clone());
    }
    lock(&state.stats)
        .created_by_key
        .entry(key)
        .or_default()
        .push(record.clone());
    json_response(StatusCode::CREATED, &record)
}

/// `GET /{record_type}/{id}`: one record.
pub(super) async fn get_one(
    AxState(sim): AxState<Sim>,
    Path((record_type, id)): Path<(String, String)>,
) -> Response {
    let data = lock(&sim.inner.data);
    match data
        .types
        .get(&record_type)
        .and_then(|rs| rs.iter().find(|r| r["id"] == id.as_str()))
    {
        Some(r) => json_response(StatusCode::OK, &json!({"data": r})),
        None => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// `GET /{record_type}`: a page of a listing, or a bulk lookup by ids.
pub(super) async fn list_records(
    AxState(sim): AxState<Sim>,
    Extension(call): Extension<Call>,
    Path(record_type): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query: Vec<(String, String)> = query
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
    list(&sim.inner, &record_type, &param, &params, &call.faults)
}

/// Anything else: 404 naming the route.
pub(super) async fn no_route(Extension(call): Extension<Call>) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("no route {}", call.endpoint)}),
    )
}

fn list(
    state: &State,
    record_type: &str,
    param: &dyn Fn(&str) -> Option<String>,
    params: &dyn Fn(&str) -> Vec<String>,
    faults: &super::Faults,
) -> Response {
    let (change_between_pages, repeat_next, ignore_page_param) = (
        faults.change_between_pages,
        faults.repeat_next,
        faults.ignore_page_param,
    );
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
            // Hostile: the listing never ends; empty pages, new cursors
            // (`~` sorts after every id, so nothing follows them).
            let next = match next {
                None if faults.endless_empty_pages => {
                    let n: u64 = after
                        .as_deref()
                        .and_then(|a| a.strip_prefix("~empty-"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    Some(format!("~empty-{}", n + 1))
                }
                other => other,
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
