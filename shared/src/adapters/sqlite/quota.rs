//! Quota on embedded SQLite: the same check-and-take as DynamoDB, inside one
//! `BEGIN IMMEDIATE` transaction, so it is correct across processes sharing
//! the file.

use super::Cached;
use crate::adapters::sqlite::Db;
use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::{Error, Result};
use crate::quota::{
    explain_denial, Acquire, Grant, Limits, QuotaKey, QuotaState, QuotaStore, TakenWindow,
    UsageEntry,
};
use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;

/// The quota on SQLite: one `BEGIN IMMEDIATE` transaction per acquire.
#[derive(Debug, Clone)]
pub struct SqliteQuota {
    db: Db,
}

impl SqliteQuota {
    /// The quota kept in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// Every live counter of `key` (a rolling window sums its buckets); the
/// counters of windows that ended are deleted on the way.
fn live_counters(
    tx: &rusqlite::Transaction<'_>,
    key: &QuotaKey,
    windows: &[TakenWindow],
    now: Timestamp,
) -> rusqlite::Result<HashMap<String, u64>> {
    let mut used: HashMap<String, u64> = HashMap::new();
    let mut stmt =
        tx.prepare_cached("SELECT window, used FROM quota_window WHERE org = ?1 AND app = ?2")?;
    let rows = stmt.query_map(params![key.org, key.app], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (w, u) = row?;
        if windows.iter().any(|t| t.id == w) || !crate::quota::window_ended(&w, now) {
            used.insert(w, u.max(0) as u64);
        } else {
            tx.exec(
                "DELETE FROM quota_window WHERE org = ?1 AND app = ?2 AND window = ?3",
                params![key.org, key.app, w],
            )?;
        }
    }
    Ok(used)
}

/// When each of `key`'s unexpired leases expires.
fn live_leases(
    tx: &rusqlite::Transaction<'_>,
    key: &QuotaKey,
    now_ms: i64,
) -> rusqlite::Result<Vec<Timestamp>> {
    let mut stmt = tx.prepare_cached(
        "SELECT expires_at FROM quota_lease WHERE org = ?1 AND app = ?2 AND expires_at > ?3",
    )?;
    let rows = stmt.query_map(params![key.org, key.app, now_ms], |r| r.get::<_, i64>(0))?;
    rows.map(|r| r.map(from_millis)).collect()
}

#[async_trait]
impl QuotaStore for SqliteQuota {
    async fn acquire(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        cost: u32,
        now: Timestamp,
    ) -> Result<Acquire> {
        let key = key.clone();
        let limits = limits.clone();
        // Taken here, not in the blocking closure: see `core::ids`.
        let lease_id = crate::core::ids::new_id();
        self.db
            .call("quota acquire", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now_ms = to_millis(now);
                let windows: Vec<TakenWindow> = limits
                    .windows()
                    .map(|(kind, _)| TakenWindow { kind, id: kind.id(now), used: 0 })
                    .collect();
                // Housekeeping inside the same transaction: expired leases of
                // crashed holders and counters of past windows.
                // A reservation's lease row stays until its windows end, so
                // a holder that outlived its lease can still refund.
                tx.exec(
                    "DELETE FROM quota_lease WHERE org = ?1 AND app = ?2 AND expires_at <= ?3
                     AND (cost <= 1 OR valid_until <= ?3)",
                    params![key.org, key.app, now_ms],
                )?;
                let used = live_counters(&tx, &key, &windows, now)?;
                let leases = live_leases(&tx, &key, now_ms)?;
                let blocked: Option<Timestamp> = tx
                    .query_row(
                        "SELECT blocked_until FROM quota_block WHERE org = ?1 AND app = ?2",
                        params![key.org, key.app],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map(from_millis);
                if let Some(denied) = explain_denial(
                    &limits,
                    cost,
                    now,
                    |id| used.get(id).copied().unwrap_or(0),
                    &leases,
                    blocked,
                ) {
                    tx.commit()?;
                    return Ok(Acquire::Denied(denied));
                }
                let mut windows = windows;
                for w in &mut windows {
                    w.used = w.kind.held(now, |id| used.get(id).copied().unwrap_or(0)) + u64::from(cost);
                    let add = w.kind.take(used.get(&w.id).copied().unwrap_or(0), now, cost);
                    tx.exec(
                        "INSERT INTO quota_window (org, app, window, used) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (org, app, window) DO UPDATE SET used = used + excluded.used",
                        params![key.org, key.app, w.id, i64::try_from(add).unwrap_or(i64::MAX)],
                    )?;
                }
                let expires_at = now + limits.lease_ttl();
                let valid_until = limits.windows_end(now);
                tx.exec(
                    "INSERT INTO quota_lease (org, app, lease_id, expires_at, cost, valid_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![key.org, key.app, lease_id, to_millis(expires_at), cost, to_millis(valid_until)],
                )?;
                tx.commit()?;
                Ok(Acquire::Granted(Grant {
                    key,
                    lease_id,
                    cost,
                    windows,
                    expires_at,
                    valid_until,
                    stale_windows: Vec::new(),
                }))
            })
            .await
    }

    async fn release(&self, grant: &Grant, used: u32) -> Result<()> {
        let grant = grant.clone();
        self.db
            .call("quota release", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let removed = tx.exec(
                    "DELETE FROM quota_lease WHERE org = ?1 AND app = ?2 AND lease_id = ?3",
                    params![grant.key.org, grant.key.app, grant.lease_id],
                )?;
                // Refund only with the lease row: a second release finds
                // none and refunds nothing. A reservation's row outlives its
                // lease (see acquire), so a late release still refunds.
                let refund = grant.cost.saturating_sub(used);
                if removed == 1 && refund > 0 {
                    for w in &grant.windows {
                        tx.exec(
                            "UPDATE quota_window SET used = MAX(0, used - ?4)
                             WHERE org = ?1 AND app = ?2 AND window = ?3",
                            params![
                                grant.key.org,
                                grant.key.app,
                                w.id,
                                i64::try_from(w.kind.refund(refund)).unwrap_or(i64::MAX)
                            ],
                        )?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn renew(&self, grant: &Grant, until: Timestamp) -> Result<()> {
        let lease_id = grant.lease_id.clone();
        let grant = grant.clone();
        let changed = self
            .db
            .call("quota renew", move |conn| {
                conn.exec(
                    "UPDATE quota_lease SET expires_at = ?4 WHERE org = ?1 AND app = ?2 AND lease_id = ?3",
                    params![grant.key.org, grant.key.app, grant.lease_id, to_millis(until)],
                )
            })
            .await?;
        if changed == 0 {
            return Err(Error::LeaseLost(lease_id));
        }
        Ok(())
    }

    async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> Result<()> {
        let key = key.clone();
        self.db
            .call("quota block", move |conn| {
                conn.exec(
                    "INSERT INTO quota_block (org, app, blocked_until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (org, app) DO UPDATE
                     SET blocked_until = MAX(blocked_until, excluded.blocked_until)",
                    params![key.org, key.app, to_millis(until)],
                )
            })
            .await
            .map(|_| ())
    }

    async fn raise_window(&self, key: &QuotaKey, window: &str, at_least: u64) -> Result<u64> {
        let (key, window) = (key.clone(), window.to_string());
        let at_least = i64::try_from(at_least).unwrap_or(i64::MAX);
        self.db
            .call("quota raise", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let old: i64 = tx
                    .query_row(
                        "SELECT used FROM quota_window WHERE org = ?1 AND app = ?2 AND window = ?3",
                        params![key.org, key.app, window],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                if old >= at_least {
                    return Ok(0);
                }
                tx.exec(
                    "INSERT INTO quota_window (org, app, window, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (org, app, window) DO UPDATE SET used = MAX(used, excluded.used)",
                    params![key.org, key.app, window, at_least],
                )?;
                tx.commit()?;
                Ok((at_least - old) as u64)
            })
            .await
    }

    async fn record_usage(&self, entries: &[UsageEntry]) -> Result<()> {
        let entries = entries.to_vec();
        self.db
            .call("usage record", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for u in &entries {
                    tx.exec(
                        "INSERT INTO usage (org, app, day, source, endpoint, exempt, calls)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (org, app, day, source, endpoint, exempt)
                         DO UPDATE SET calls = calls + excluded.calls",
                        params![
                            u.key.org,
                            u.key.app,
                            u.day.to_string(),
                            u.source,
                            u.endpoint,
                            u.exempt,
                            u.calls as i64
                        ],
                    )?;
                    for (hour, n) in &u.hours {
                        tx.exec(
                            "INSERT INTO usage_hour (org, app, day, source, endpoint, exempt, hour, calls, denied, waited)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                             ON CONFLICT (org, app, day, source, endpoint, exempt, hour)
                             DO UPDATE SET calls = calls + excluded.calls, denied = denied + excluded.denied,
                                           waited = waited + excluded.waited",
                            params![
                                u.key.org,
                                u.key.app,
                                u.day.to_string(),
                                u.source,
                                u.endpoint,
                                u.exempt,
                                hour,
                                n.calls as i64,
                                n.denied as i64,
                                n.waited as i64
                            ],
                        )?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn usage(&self, key: &QuotaKey, day: NaiveDate) -> Result<Vec<UsageEntry>> {
        let key = key.clone();
        self.db
            .call("usage read", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT source, endpoint, exempt, calls FROM usage
                     WHERE org = ?1 AND app = ?2 AND day = ?3 ORDER BY source, endpoint, exempt",
                )?;
                let rows = stmt.query_map(params![key.org, key.app, day.to_string()], |r| {
                    Ok(UsageEntry {
                        key: key.clone(),
                        day,
                        source: r.get(0)?,
                        endpoint: r.get(1)?,
                        exempt: r.get(2)?,
                        calls: r.get::<_, i64>(3)?.max(0) as u64,
                        hours: Default::default(),
                    })
                })?;
                let mut entries: Vec<UsageEntry> = rows.collect::<rusqlite::Result<_>>()?;
                let mut stmt = conn.prepare_cached(
                    "SELECT source, endpoint, exempt, hour, calls, denied, waited FROM usage_hour
                     WHERE org = ?1 AND app = ?2 AND day = ?3",
                )?;
                let hours = stmt.query_map(params![key.org, key.app, day.to_string()], |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, bool>(2)?,
                        ),
                        r.get::<_, u8>(3)?,
                        crate::quota::HourUse {
                            calls: r.get::<_, i64>(4)?.max(0) as u64,
                            denied: r.get::<_, i64>(5)?.max(0) as u64,
                            waited: r.get::<_, i64>(6)?.max(0) as u64,
                        },
                    ))
                })?;
                for row in hours {
                    let ((source, endpoint, exempt), hour, n) = row?;
                    if let Some(e) = entries.iter_mut().find(|e| {
                        e.source == source && e.endpoint == endpoint && e.exempt == exempt
                    }) {
                        e.hours.insert(hour, n);
                    }
                }
                Ok(entries)
            })
            .await
    }

    async fn state(&self, key: &QuotaKey, limits: &Limits, now: Timestamp) -> Result<QuotaState> {
        let key = key.clone();
        let kinds: Vec<_> = limits.windows().map(|(k, _)| k).collect();
        self.db
            .call("quota state", move |conn| {
                let mut state = QuotaState::default();
                let mut stmt = conn.prepare_cached(
                    "SELECT window, used FROM quota_window WHERE org = ?1 AND app = ?2",
                )?;
                let mut counters: HashMap<String, u64> = HashMap::new();
                for row in stmt.query_map(params![key.org, key.app], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })? {
                    let (w, u) = row?;
                    counters.insert(w, u.max(0) as u64);
                }
                for kind in &kinds {
                    let held = kind.held(now, |id| counters.get(id).copied().unwrap_or(0));
                    if held > 0 {
                        state.used.insert(kind.id(now), held);
                    }
                }
                state.live_leases = conn.row(
                    "SELECT COUNT(*) FROM quota_lease WHERE org = ?1 AND app = ?2 AND expires_at > ?3",
                    params![key.org, key.app, to_millis(now)],
                    |r| r.get(0),
                )?;
                state.blocked_until = conn
                    .query_row(
                        "SELECT blocked_until FROM quota_block WHERE org = ?1 AND app = ?2",
                        params![key.org, key.app],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map(from_millis)
                    .filter(|t| *t > now);
                Ok(state)
            })
            .await
    }

    async fn health(&self, key: &QuotaKey) -> Result<crate::quota::Health> {
        let key = key.clone();
        let json: Option<String> = self
            .db
            .call("connection health", move |conn| {
                conn.row(
                    "SELECT health FROM connection_health WHERE org = ?1 AND app = ?2",
                    params![key.org, key.app],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    async fn swap_health(
        &self,
        key: &QuotaKey,
        expected: &crate::quota::Health,
        new: &crate::quota::Health,
    ) -> Result<bool> {
        let (key, expected) = (key.clone(), expected.clone());
        let new = serde_json::to_string(new).map_err(|e| {
            Error::store(
                "connection health",
                e,
                crate::core::error::Disposition::Permanent,
            )
        })?;
        self.db
            .call("connection health", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let current: crate::quota::Health = tx
                    .query_row(
                        "SELECT health FROM connection_health WHERE org = ?1 AND app = ?2",
                        params![key.org, key.app],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default();
                if current != expected {
                    return Ok(false);
                }
                tx.exec(
                    "INSERT INTO connection_health (org, app, health) VALUES (?1, ?2, ?3)
                     ON CONFLICT (org, app) DO UPDATE SET health = excluded.health",
                    params![key.org, key.app, new],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await
    }

    async fn resume(&self, key: &QuotaKey) -> Result<()> {
        let key = key.clone();
        self.db
            .call("connection resume", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.exec(
                    "DELETE FROM connection_health WHERE org = ?1 AND app = ?2",
                    params![key.org, key.app],
                )?;
                tx.exec(
                    "DELETE FROM quota_block WHERE org = ?1 AND app = ?2",
                    params![key.org, key.app],
                )?;
                tx.commit()
            })
            .await
    }
}
