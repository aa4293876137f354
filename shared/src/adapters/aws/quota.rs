//! Quota on DynamoDB: one item per budget, one conditional `UpdateItem` per
//! acquire.
//!
//! The item holds a counter per current window (`w:d2026-11-22`,
//! `w:h2026-11-22T14`, …), one attribute per lease (`l:{uuid}` → expiry in
//! epoch ms), `lease_count`, and `blocked_until`. Acquire `ADD`s the cost to
//! every window and `lease_count`, and `SET`s the lease, under a condition
//! that every window has room, `lease_count` is under the cap and
//! `blocked_until` has passed. A refusal comes back with the old item
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), which says which limit
//! refused and when it frees, with no second read.
//!
//! `lease_count` also counts leases that expired but were not released (a
//! crashed Lambda). Only when the old item shows such leases and nothing else
//! refuses does a second update reclaim them, conditioned on their expiry
//! being unchanged (so a lease renewed meanwhile survives); then the acquire
//! is tried again.

use crate::adapters::aws::{as_i64, get_s, is_ccf, key_part, n, s, sdk_error, Item, Table};
use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::{Error, Result};
use crate::quota::{
    explain_denial, Acquire, Grant, Limits, QuotaKey, QuotaState, QuotaStore, TakenWindow,
    UsageEntry, WindowKind,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{Duration, NaiveDate};

const WINDOW_PREFIX: &str = "w:";
const LEASE_PREFIX: &str = "l:";
/// A reservation's refund right (`r:{lease id}` → when its windows end): it
/// outlives the lease, so a holder released after its lease lapsed still
/// refunds, once.
const REFUND_PREFIX: &str = "r:";
/// Rounds of acquire → reclaim → acquire before giving up as contended.
const MAX_ROUNDS: usize = 4;
/// Usage items are kept this long for reports, then TTL removes them.
const USAGE_RETENTION_DAYS: i64 = 400;

/// The quota on DynamoDB: one conditional `UpdateItem` per acquire.
#[derive(Debug, Clone)]
pub struct DynamoQuota {
    table: Table,
}

impl DynamoQuota {
    /// The quota kept in `table`.
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    fn pk(key: &QuotaKey) -> String {
        format!("quota#{}#{}", key_part(&key.org), key_part(&key.app))
    }

    fn update(&self, key: &QuotaKey) -> UpdateItemFluentBuilder {
        self.table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(Self::pk(key)))
            .key("sk", s("quota"))
    }

    /// One conditional take. `Ok(Ok(grant))` or `Ok(Err(old_item))` on refusal.
    async fn try_take(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        cost: u32,
        now: Timestamp,
        seen: Option<&Item>,
    ) -> Result<std::result::Result<Grant, Item>> {
        let take = Take::new(key, limits, cost, now);
        let result = take
            .expression(limits, seen)
            .apply(self.update(key))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Ok(take.grant(out.attributes()))),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let old = c.item().cloned().unwrap_or_default();
                    if old.contains_key(&take.lease_attr()) {
                        // Our own write, applied by an earlier attempt of
                        // this request whose response was lost: granted.
                        tracing::info!(quota = %key, "acquire applied by an earlier attempt; taken once");
                        return Ok(Ok(take.grant(Some(&old))));
                    }
                    Ok(Err(old))
                }
                _ => Err(sdk_error("quota acquire", e)),
            },
        }
    }

    /// Removes leases that expired, if their expiry is still what we saw,
    /// and sets `lease_count` to the leases that remain, if it is still
    /// `seen_count`. Every write that adds or removes a lease also changes
    /// `lease_count`, so an unchanged count means an unchanged set of
    /// leases: the count is repaired from the leases themselves, whatever
    /// made it drift.
    async fn reclaim(
        &self,
        key: &QuotaKey,
        expired: &[(String, i64)],
        seen_count: i64,
        remaining: i64,
    ) -> Result<()> {
        let mut req = self
            .update(key)
            .expression_attribute_values(":seen", n(seen_count))
            .expression_attribute_values(":count", n(remaining));
        let mut removes = Vec::new();
        let mut conds = vec!["lease_count = :seen".to_string()];
        for (i, (attr, exp)) in expired.iter().enumerate() {
            req = req
                .expression_attribute_names(format!("#l{i}"), attr)
                .expression_attribute_values(format!(":e{i}"), n(*exp));
            removes.push(format!("#l{i}"));
            conds.push(format!("#l{i} = :e{i}"));
        }
        let remove = if removes.is_empty() {
            String::new()
        } else {
            format!(" REMOVE {}", removes.join(", "))
        };
        let result = req
            .update_expression(format!("SET lease_count = :count{remove}"))
            .condition_expression(conds.join(" AND "))
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(quota = %key, reclaimed = expired.len(), lease_count = remaining, was = seen_count, "reclaimed expired leases");
                Ok(())
            }
            // Someone else reclaimed, released or renewed first: fine.
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(sdk_error("quota reclaim", e)),
        }
    }
}

/// One acquire's attempt: the lease it takes, the windows it adds its cost
/// to, and the grant it makes of the item its write left.
struct Take<'a> {
    key: &'a QuotaKey,
    lease_id: String,
    cost: u32,
    now: Timestamp,
    expires_at: Timestamp,
    valid_until: Timestamp,
    windows: Vec<TakenWindow>,
}

impl<'a> Take<'a> {
    fn new(key: &'a QuotaKey, limits: &Limits, cost: u32, now: Timestamp) -> Self {
        Self {
            key,
            lease_id: crate::core::ids::new_id(),
            cost,
            now,
            expires_at: now + limits.lease_ttl(),
            valid_until: limits.windows_end(now),
            windows: limits
                .windows()
                .map(|(kind, _)| TakenWindow {
                    kind,
                    id: kind.id(now),
                    used: 0,
                })
                .collect(),
        }
    }

    fn lease_attr(&self) -> String {
        format!("{LEASE_PREFIX}{}", self.lease_id)
    }

    /// The conditional `UpdateItem`: `ADD` the cost to every window and
    /// `lease_count`, `SET` the lease (and a reservation's refund right),
    /// if every window has room, a lease slot is free, no 429 block holds,
    /// and — for windows judged on the item read (`seen`) — nothing was
    /// added since.
    fn expression(&self, limits: &Limits, seen: Option<&Item>) -> Expr {
        let mut e = Expr::default();
        e.name("#lease", self.lease_attr());
        e.value(":one", n(1));
        e.value(":exp", n(to_millis(self.expires_at)));
        e.value(":now", n(to_millis(self.now)));
        e.value(":maxc", n(limits.max_concurrent));
        // Idempotent: the SDK may send this request again after a response
        // was lost; the second application is refused here instead of
        // adding the cost and the lease count twice.
        e.cond("attribute_not_exists(#lease)");
        e.cond("(attribute_not_exists(lease_count) OR lease_count < :maxc)");
        e.cond("(attribute_not_exists(blocked_until) OR blocked_until <= :now)");
        self.window_clauses(&mut e, limits, seen);
        e.adds.push("lease_count :one".into());
        if let Some(item) = seen {
            // The rolling windows were judged on `seen`: only if no acquire
            // has added to any counter since.
            match item.get("rv").and_then(as_i64) {
                Some(rv) => {
                    e.value(":rv", n(rv));
                    e.cond("rv = :rv");
                }
                None => e.cond("attribute_not_exists(rv)"),
            }
            e.adds.push("rv :one".into());
        }
        e.sets.push("#lease = :exp".into());
        if self.cost > 1 {
            e.name("#refund", format!("{REFUND_PREFIX}{}", self.lease_id));
            e.value(":valid", n(to_millis(self.valid_until)));
            e.sets.push("#refund = :valid".into());
        }
        e
    }

    /// Each window's `ADD`: a fixed window adds the cost under a room
    /// condition; a window that needs a read (rolling, bucket) adds what
    /// `seen` says it takes, held by the `rv` condition.
    fn window_clauses(&self, e: &mut Expr, limits: &Limits, seen: Option<&Item>) {
        let mut adds_cost = false;
        for (i, ((kind, limit), w)) in limits.windows().zip(&self.windows).enumerate() {
            e.name(&format!("#w{i}"), format!("{WINDOW_PREFIX}{}", w.id));
            if kind.needs_read() {
                let current = seen.map_or(0, |item| counter(item, &w.id));
                e.value(
                    &format!(":take{i}"),
                    n(kind.take(current, self.now, self.cost)),
                );
                e.adds.push(format!("#w{i} :take{i}"));
                continue;
            }
            adds_cost = true;
            e.adds.push(format!("#w{i} :cost"));
            e.value(
                &format!(":room{i}"),
                n(i64::from(limit) - i64::from(self.cost)),
            );
            e.cond(&format!(
                "(attribute_not_exists(#w{i}) OR #w{i} <= :room{i})"
            ));
        }
        if adds_cost {
            e.value(":cost", n(self.cost));
        }
    }

    /// The grant, read from the item after our add (the new item, or the
    /// old one that already holds an earlier attempt's add).
    fn grant(&self, item: Option<&Item>) -> Grant {
        let windows = self
            .windows
            .iter()
            .map(|w| TakenWindow {
                used: match (w.kind, item) {
                    (WindowKind::Bucket(_), Some(item)) => {
                        w.kind.held(self.now, |id| counter(item, id))
                    }
                    _ => item
                        .and_then(|item| item.get(&format!("{WINDOW_PREFIX}{}", w.id)))
                        .and_then(as_i64)
                        .map_or(u64::from(self.cost), |n| n.max(0) as u64),
                },
                ..w.clone()
            })
            .collect();
        Grant {
            key: self.key.clone(),
            lease_id: self.lease_id.clone(),
            cost: self.cost,
            windows,
            expires_at: self.expires_at,
            valid_until: self.valid_until,
            stale_windows: item.map(|item| self.stale(item)).unwrap_or_default(),
        }
    }

    /// Past windows' counters and refund rights of reservations whose
    /// windows ended: the release removes them.
    fn stale(&self, item: &Item) -> Vec<String> {
        let current: Vec<String> = self
            .windows
            .iter()
            .map(|w| format!("{WINDOW_PREFIX}{}", w.id))
            .collect();
        item.iter()
            .filter(|(k, v)| {
                (k.starts_with(WINDOW_PREFIX)
                    && !current.contains(k)
                    && crate::quota::window_ended(&k[WINDOW_PREFIX.len()..], self.now))
                    || (k.starts_with(REFUND_PREFIX)
                        && as_i64(v).is_some_and(|ms| from_millis(ms) <= self.now))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// An `UpdateItem`'s expression as it is built: its clauses, and the names
/// and values they use (DynamoDB refuses a value no clause uses).
#[derive(Default)]
struct Expr {
    names: std::collections::HashMap<String, String>,
    values: std::collections::HashMap<String, AttributeValue>,
    adds: Vec<String>,
    sets: Vec<String>,
    conds: Vec<String>,
}

impl Expr {
    fn name(&mut self, placeholder: &str, attribute: String) {
        self.names.insert(placeholder.into(), attribute);
    }

    fn value(&mut self, placeholder: &str, value: AttributeValue) {
        self.values.insert(placeholder.into(), value);
    }

    fn cond(&mut self, cond: &str) {
        self.conds.push(cond.into());
    }

    fn apply(self, req: UpdateItemFluentBuilder) -> UpdateItemFluentBuilder {
        req.set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(Some(self.values))
            .update_expression(format!(
                "ADD {} SET {}",
                self.adds.join(", "),
                self.sets.join(", ")
            ))
            .condition_expression(self.conds.join(" AND "))
    }
}

#[async_trait]
impl QuotaStore for DynamoQuota {
    async fn acquire(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        cost: u32,
        now: Timestamp,
    ) -> Result<Acquire> {
        // A rolling window's room is a sum of buckets, which no condition
        // expression can compute: read the item, decide with the same rule
        // (`explain_denial`; a denial costs only this read), and write on
        // the condition that no acquire wrote since (`rv` unchanged).
        let mut seen: Option<Item> = if limits.needs_read() {
            Some(
                self.table
                    .get("quota acquire", Self::pk(key), "quota")
                    .await?
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        for _ in 0..MAX_ROUNDS {
            if let Some(item) = &seen {
                let (leases, _) = lease_expiries(item, now);
                let blocked = item.get("blocked_until").and_then(as_i64).map(from_millis);
                if let Some(denied) =
                    explain_denial(limits, cost, now, |id| counter(item, id), &leases, blocked)
                {
                    return Ok(Acquire::Denied(denied));
                }
            }
            let old = match self.try_take(key, limits, cost, now, seen.as_ref()).await? {
                Ok(grant) => return Ok(Acquire::Granted(grant)),
                Err(old) => old,
            };
            if seen.is_some() {
                seen = Some(old.clone());
            }
            let (leases, expired) = lease_expiries(&old, now);
            let blocked = old.get("blocked_until").and_then(as_i64).map(from_millis);
            let used = |id: &str| counter(&old, id);
            if let Some(denied) = explain_denial(limits, cost, now, used, &leases, blocked) {
                return Ok(Acquire::Denied(denied));
            }
            // Nothing live refuses: crashed holders' expired leases fill
            // `lease_count`, or the count drifted from the leases, or the
            // item changed since (a release).
            let seen_count = old.get("lease_count").and_then(as_i64).unwrap_or(0);
            let remaining = (leases.len() - expired.len()) as i64;
            if !expired.is_empty() || seen_count != leases.len() as i64 {
                self.reclaim(key, &expired, seen_count, remaining).await?;
            }
        }
        // Contended beyond reason: come back in a moment rather than spin.
        Ok(Acquire::Denied(crate::quota::Denied {
            retry_at: now + Duration::seconds(i64::from(limits.concurrency_retry_secs)),
            reason: crate::quota::DenyReason::Concurrency {
                max: limits.max_concurrent,
            },
        }))
    }

    async fn release(&self, grant: &Grant, used: u32) -> Result<()> {
        let refund = grant.cost.saturating_sub(used);
        let mut req = self
            .update(&grant.key)
            .expression_attribute_names("#lease", format!("{LEASE_PREFIX}{}", grant.lease_id))
            .expression_attribute_values(":minus1", n(-1));
        let mut adds = vec!["lease_count :minus1".to_string()];
        if refund > 0 {
            req = refund_windows(req, grant, refund, &mut adds);
        }
        let mut removes = vec!["#lease".to_string()];
        let refund_attr = format!("{REFUND_PREFIX}{}", grant.lease_id);
        if grant.cost > 1 {
            req = req.expression_attribute_names("#refund", &refund_attr);
            removes.push("#refund".into());
        }
        for (i, stale) in grant.stale_windows.iter().enumerate() {
            req = req.expression_attribute_names(format!("#s{i}"), stale);
            removes.push(format!("#s{i}"));
        }
        let result = req
            .update_expression(format!(
                "REMOVE {} ADD {}",
                removes.join(", "),
                adds.join(", ")
            ))
            // Idempotent: only the holder of a live record of the lease
            // releases it, so a second release refunds nothing.
            .condition_expression("attribute_exists(#lease)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) && refund > 0 && grant.cost > 1 => {
                // The lease lapsed and was reclaimed (its count with it); the
                // refund right outlives it and is spent once.
                let mut req = self
                    .update(&grant.key)
                    .expression_attribute_names("#refund", &refund_attr);
                let mut adds = Vec::new();
                req = refund_windows(req, grant, refund, &mut adds);
                match req
                    .update_expression(format!("REMOVE #refund ADD {}", adds.join(", ")))
                    .condition_expression("attribute_exists(#refund)")
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_ccf(&e) => Ok(()),
                    Err(e) => Err(sdk_error("quota refund", e)),
                }
            }
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(sdk_error("quota release", e)),
        }
    }

    async fn renew(&self, grant: &Grant, until: Timestamp) -> Result<()> {
        let result = self
            .update(&grant.key)
            .expression_attribute_names("#lease", format!("{LEASE_PREFIX}{}", grant.lease_id))
            .expression_attribute_values(":until", n(to_millis(until)))
            .update_expression("SET #lease = :until")
            .condition_expression("attribute_exists(#lease)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Err(Error::LeaseLost(grant.lease_id.clone())),
            Err(e) => Err(sdk_error("quota renew", e)),
        }
    }

    async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> Result<()> {
        let result = self
            .update(key)
            .expression_attribute_values(":until", n(to_millis(until)))
            .update_expression("SET blocked_until = :until")
            .condition_expression("attribute_not_exists(blocked_until) OR blocked_until < :until")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already blocked for longer: never shorten a block.
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(sdk_error("quota block", e)),
        }
    }

    async fn raise_window(&self, key: &QuotaKey, window: &str, at_least: u64) -> Result<u64> {
        let result = self
            .update(key)
            .update_expression("SET #w = :n")
            .condition_expression("attribute_not_exists(#w) OR #w < :n")
            .expression_attribute_names("#w", format!("{WINDOW_PREFIX}{window}"))
            .expression_attribute_values(":n", n(at_least))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let old = out
                    .attributes()
                    .and_then(|a| a.get(&format!("{WINDOW_PREFIX}{window}")))
                    .and_then(as_i64)
                    .unwrap_or(0)
                    .max(0) as u64;
                Ok(at_least.saturating_sub(old))
            }
            // Already counted at least that many: never lower a window.
            Err(e) if is_ccf(&e) => Ok(0),
            Err(e) => Err(sdk_error("quota raise", e)),
        }
    }

    async fn record_usage(&self, entries: &[UsageEntry]) -> Result<()> {
        let writes = entries.iter().map(|u| {
            let ttl = u
                .day
                .and_hms_opt(0, 0, 0)
                .map(|d| (d.and_utc() + Duration::days(USAGE_RETENTION_DAYS)).timestamp())
                .unwrap_or(0);
            // Hours ride in the same item, one number per hour (`h07`
            // calls, `d07` denials, `w07` of them waits for a concurrency
            // slot): still one write per entry.
            let mut adds = vec!["calls :calls".to_string()];
            let mut hour_values = Vec::new();
            for (hour, counted) in &u.hours {
                for (prefix, v) in [
                    ("h", counted.calls),
                    ("d", counted.denied),
                    ("w", counted.waited),
                ] {
                    if v > 0 {
                        let name = format!("{prefix}{hour:02}");
                        adds.push(format!("{name} :{name}"));
                        hour_values.push((format!(":{name}"), n(v)));
                    }
                }
            }
            let req = self
                .table
                .client
                .update_item()
                .table_name(&self.table.name)
                .key("pk", s(usage_pk(&u.key, u.day)))
                .key(
                    "sk",
                    s(format!(
                        "{}#{}#{}",
                        key_part(&u.source),
                        key_part(&u.endpoint),
                        u.exempt
                    )),
                )
                .update_expression(format!(
                    "ADD {} SET #src = :src, endpoint = :ep, exempt = :ex, #ttl = :ttl",
                    adds.join(", ")
                ))
                .expression_attribute_names("#src", "source")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":calls", n(u.calls))
                .expression_attribute_values(":src", s(u.source.clone()))
                .expression_attribute_values(":ep", s(u.endpoint.clone()))
                .expression_attribute_values(":ex", AttributeValue::Bool(u.exempt))
                .expression_attribute_values(":ttl", n(ttl));
            hour_values
                .into_iter()
                .fold(req, |req, (k, v)| req.expression_attribute_values(k, v))
                .send()
        });
        for result in futures::future::join_all(writes).await {
            result.map_err(|e| sdk_error("usage record", e))?;
        }
        Ok(())
    }

    async fn usage(&self, key: &QuotaKey, day: NaiveDate) -> Result<Vec<UsageEntry>> {
        let mut out = Vec::new();
        let mut pages = self
            .table
            .client
            .query()
            .table_name(&self.table.name)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(usage_pk(key, day)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| sdk_error("usage read", e))?;
            let text = |k: &str| get_s(&item, k).cloned().unwrap_or_default();
            out.push(UsageEntry {
                key: key.clone(),
                day,
                source: text("source"),
                endpoint: text("endpoint"),
                exempt: item
                    .get("exempt")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
                calls: item
                    .get("calls")
                    .and_then(as_i64)
                    .map_or(0, |n| n.max(0) as u64),
                hours: usage_hours(&item),
            });
        }
        out.sort();
        Ok(out)
    }

    async fn state(&self, key: &QuotaKey, limits: &Limits, now: Timestamp) -> Result<QuotaState> {
        let out = self
            .table
            .client
            .get_item()
            .table_name(&self.table.name)
            .key("pk", s(Self::pk(key)))
            .key("sk", s("quota"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("quota state", e))?;
        let mut state = QuotaState::default();
        let Some(item) = out.item() else {
            return Ok(state);
        };
        for (kind, _) in limits.windows() {
            let held = kind.held(now, |id| counter(item, id));
            if held > 0 {
                state.used.insert(kind.id(now), held);
            }
        }
        state.live_leases = item
            .iter()
            .filter(|(k, v)| {
                k.starts_with(LEASE_PREFIX) && as_i64(v).is_some_and(|ms| from_millis(ms) > now)
            })
            .count() as u32;
        state.blocked_until = item
            .get("blocked_until")
            .and_then(as_i64)
            .map(from_millis)
            .filter(|t| *t > now);
        Ok(state)
    }

    async fn health(&self, key: &QuotaKey) -> Result<crate::quota::Health> {
        let out = self
            .table
            .client
            .get_item()
            .table_name(&self.table.name)
            .key("pk", s(Self::pk(key)))
            .key("sk", s("health"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("connection health", e))?;
        Ok(out
            .item()
            .and_then(|i| get_s(i, "health"))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default())
    }

    async fn swap_health(
        &self,
        key: &QuotaKey,
        expected: &crate::quota::Health,
        new: &crate::quota::Health,
    ) -> Result<bool> {
        let json = |h: &crate::quota::Health| {
            serde_json::to_string(h).map_err(|e| {
                Error::store(
                    "connection health",
                    e,
                    crate::core::error::Disposition::Permanent,
                )
            })
        };
        // The health item apart from the quota item: no write on the hot
        // item that every acquire takes.
        let mut put = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .item("pk", s(Self::pk(key)))
            .item("sk", s("health"))
            .item("health", s(json(new)?))
            .expression_attribute_values(":old", s(json(expected)?));
        put = if *expected == crate::quota::Health::default() {
            put.condition_expression("attribute_not_exists(health) OR health = :old")
        } else {
            put.condition_expression("health = :old")
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("connection health", e)),
        }
    }

    async fn resume(&self, key: &QuotaKey) -> Result<()> {
        self.table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .key("pk", s(Self::pk(key)))
            .key("sk", s("health"))
            .send()
            .await
            .map_err(|e| sdk_error("connection resume", e))?;
        self.update(key)
            .update_expression("REMOVE blocked_until")
            .send()
            .await
            .map_err(|e| sdk_error("connection resume", e))?;
        Ok(())
    }
}

/// The `hNN` (calls), `dNN` (denials) and `wNN` (waits for a slot)
/// numbers of a usage item.
fn usage_hours(item: &Item) -> std::collections::BTreeMap<u8, crate::quota::HourUse> {
    let mut hours: std::collections::BTreeMap<u8, crate::quota::HourUse> = Default::default();
    for (k, v) in item {
        let (kind, digits) = k.split_at(k.len().min(1));
        let (Ok(hour), Some(count)) = (digits.parse::<u8>(), as_i64(v)) else {
            continue;
        };
        if digits.len() != 2 || hour > 23 {
            continue;
        }
        let slot = hours.entry(hour).or_default();
        match kind {
            "h" => slot.calls = count.max(0) as u64,
            "d" => slot.denied = count.max(0) as u64,
            "w" => slot.waited = count.max(0) as u64,
            _ => {}
        }
    }
    hours
}

/// Every lease's expiry, and the expired ones with their attribute.
fn lease_expiries(item: &Item, now: Timestamp) -> (Vec<Timestamp>, Vec<(String, i64)>) {
    let mut leases = Vec::new();
    let mut expired = Vec::new();
    for (k, v) in item {
        if k.starts_with(LEASE_PREFIX) {
            if let Some(ms) = as_i64(v) {
                leases.push(from_millis(ms));
                if from_millis(ms) <= now {
                    expired.push((k.clone(), ms));
                }
            }
        }
    }
    (leases, expired)
}

/// A window counter of the quota item (0 when absent).
/// Adds to `req` the refund of `refund` calls to every window `grant`
/// took from (each in its own units: a bucket's in milliseconds). A
/// bucket's refund also moves `rv`: an acquire judged on the item before
/// it would otherwise add its move of the arrival time to a refunded one
/// and count too little (the `max` with the clock does not commute with
/// the refund, as a sum does).
fn refund_windows(
    mut req: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    grant: &Grant,
    refund: u32,
    adds: &mut Vec<String>,
) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
    for (i, w) in grant.windows.iter().enumerate() {
        let units = i64::try_from(w.kind.refund(refund)).unwrap_or(i64::MAX);
        req = req
            .expression_attribute_names(format!("#w{i}"), format!("{WINDOW_PREFIX}{}", w.id))
            .expression_attribute_values(format!(":r{i}"), n(-units));
        adds.push(format!("#w{i} :r{i}"));
    }
    if grant
        .windows
        .iter()
        .any(|w| matches!(w.kind, WindowKind::Bucket(_)))
    {
        req = req.expression_attribute_values(":rv1", n(1));
        adds.push("rv :rv1".into());
    }
    req
}

fn counter(item: &Item, id: &str) -> u64 {
    item.get(&format!("{WINDOW_PREFIX}{id}"))
        .and_then(as_i64)
        .map_or(0, |n| n.max(0) as u64)
}

fn usage_pk(key: &QuotaKey, day: NaiveDate) -> String {
    format!(
        "usage#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        day
    )
}
