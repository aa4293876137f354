//! Record store on embedded SQLite: one transaction per page of records.

use super::Cached;
use crate::adapters::sqlite::Db;
use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::Result;
use crate::core::record::Record;
use crate::core::record::{content_hash, StoredRecord};
use crate::core::tenant::Tenant;
use crate::store::{change_of, Held, PageDiff, Quarantined, RecordStore, SyncFinish, SyncState};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

/// The record store, job ledger and action ledger on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    /// The store kept in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

fn row_to_stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let data: Option<String> = r.get(2)?;
    Ok(StoredRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        data: data.and_then(|d| serde_json::from_str(&d).ok()),
        first_seen: from_millis(r.get(3)?),
        last_synced: r.get::<_, Option<i64>>(4)?.map(from_millis),
        last_looked_up: r.get::<_, Option<i64>>(5)?.map(from_millis),
        lookup_claimed_by: r.get(6)?,
    })
}

const COLUMNS: &str = "id, hash, data, first_seen, last_synced, last_looked_up, lookup_claimed_by";

#[async_trait]
impl RecordStore for SqliteStore {
    async fn diff(&self, key: &Tenant, record_type: &str, records: &[Record]) -> Result<PageDiff> {
        let (key, rt, records) = (key.clone(), record_type.to_string(), records.to_vec());
        self.db
            .call("records diff", move |conn| {
                let mut diff = PageDiff::default();
                let mut stmt = conn.prepare_cached(
                    "SELECT hash, data IS NOT NULL FROM records WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND id = ?4",
                )?;
                for record in records {
                    let hash = content_hash(&record.data);
                    let existing: Option<(String, bool)> =
                        stmt.query_row(params![key.org, key.app, rt, record.id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                    let held = existing.as_ref().map(|(hash, has_data)| Held { hash, has_data: *has_data });
                    diff.changes.extend(change_of(held, &record, &hash));
                    diff.records.push((record, hash));
                }
                Ok(diff)
            })
            .await
    }

    async fn commit(
        &self,
        key: &Tenant,
        record_type: &str,
        diff: &PageDiff,
        now: Timestamp,
    ) -> Result<()> {
        diff.check_storable(record_type)?;
        let (key, rt, records) = (key.clone(), record_type.to_string(), diff.records.clone());
        self.db
            .call("records commit", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now_ms = to_millis(now);
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO records (org, app, record_type, id, hash, data, first_seen, last_synced)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                         ON CONFLICT (org, app, record_type, id) DO UPDATE
                         SET hash = excluded.hash, data = excluded.data, last_synced = excluded.last_synced",
                    )?;
                    for (record, hash) in &records {
                        stmt.execute(params![key.org, key.app, rt, record.id, hash, record.data.to_string(), now_ms])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn get(
        &self,
        key: &Tenant,
        record_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecord>> {
        let (key, rt, ids) = (key.clone(), record_type.to_string(), ids.to_vec());
        self.db
            .call("records get", move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM records WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND id = ?4"
                ))?;
                let mut out = Vec::new();
                for id in ids {
                    if let Some(r) = stmt.query_row(params![key.org, key.app, rt, id], row_to_stored).optional()? {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn claim_lookups(
        &self,
        key: &Tenant,
        record_type: &str,
        ids: &[String],
        claimer: &str,
        now: Timestamp,
        min_interval: chrono::Duration,
    ) -> Result<Vec<String>> {
        let (key, rt, ids, claimer) = (
            key.clone(),
            record_type.to_string(),
            ids.to_vec(),
            claimer.to_string(),
        );
        let cutoff = now - min_interval;
        let now_ms = to_millis(now);
        self.db
            .call("records claim", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut claimed = Vec::new();
                for id in ids {
                    if claimed.contains(&id) {
                        continue;
                    }
                    let row: Option<(Option<i64>, Option<String>)> = tx
                        .prepare_cached("SELECT last_looked_up, lookup_claimed_by FROM records WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND id = ?4")?
                        .query_row(params![key.org, key.app, rt, id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    match row {
                        None => {
                            tx.prepare_cached(
                                "INSERT INTO records (org, app, record_type, id, hash, data, first_seen, last_looked_up, lookup_claimed_by)
                                 VALUES (?1, ?2, ?3, ?4, '', NULL, ?5, ?5, ?6)",
                            )?
                            .execute(params![key.org, key.app, rt, id, now_ms, claimer])?;
                        }
                        Some((last, by)) => {
                            if !crate::store::lookup_claimable(last.map(from_millis), by.as_deref(), &claimer, cutoff) {
                                continue;
                            }
                            tx.prepare_cached("UPDATE records SET last_looked_up = ?5, lookup_claimed_by = ?6 WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND id = ?4")?
                                .execute(params![key.org, key.app, rt, id, now_ms, claimer])?;
                        }
                    }
                    claimed.push(id);
                }
                tx.commit()?;
                Ok(claimed)
            })
            .await
    }

    async fn list(
        &self,
        key: &Tenant,
        record_type: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let (key, rt, after) = (
            key.clone(),
            record_type.to_string(),
            after.unwrap_or("").to_string(),
        );
        self.db
            .call("records list", move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM records WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND id > ?4 ORDER BY id LIMIT ?5"
                ))?;
                let rows = stmt.query_map(params![key.org, key.app, rt, after, limit], row_to_stored)?;
                rows.collect()
            })
            .await
    }

    async fn count(&self, key: &Tenant, record_type: &str) -> Result<u64> {
        let (key, rt) = (key.clone(), record_type.to_string());
        self.db
            .call("records count", move |conn| {
                conn.row(
                    "SELECT COUNT(*) FROM records WHERE org = ?1 AND app = ?2 AND record_type = ?3 AND data IS NOT NULL",
                    params![key.org, key.app, rt],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n.max(0) as u64)
    }

    async fn sync_state(&self, key: &Tenant, sync: &str) -> Result<SyncState> {
        let (key, sync) = (key.clone(), sync.to_string());
        self.db
            .call("sync state", move |conn| {
                conn.row(
                    "SELECT high_water, last_started, last_completed, last_pages, running_job, lease_until,
                            last_failed, last_failure, api_page_size, probed_short_page, probed_at
                     FROM sync_state WHERE org = ?1 AND app = ?2 AND sync = ?3",
                    params![key.org, key.app, sync],
                    |r| {
                        Ok(SyncState {
                            high_water: r.get::<_, Option<i64>>(0)?.map(from_millis),
                            last_started: r.get::<_, Option<i64>>(1)?.map(from_millis),
                            last_completed: r.get::<_, Option<i64>>(2)?.map(from_millis),
                            last_pages: r.get::<_, Option<i64>>(3)?.map(|n| n.max(0) as u64),
                            running_job: r.get(4)?,
                            lease_until: r.get::<_, Option<i64>>(5)?.map(from_millis),
                            last_failed: r.get::<_, Option<i64>>(6)?.map(from_millis),
                            last_failure: r.get(7)?,
                            api_page_size: r.get::<_, Option<i64>>(8)?.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
                            probed_short_page: r.get::<_, Option<i64>>(9)?.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
                            probed_at: r.get::<_, Option<i64>>(10)?.map(from_millis),
                        })
                    },
                )
                .optional()
                .map(Option::unwrap_or_default)
            })
            .await
    }

    async fn quarantine(&self, key: &Tenant, items: &[Quarantined]) -> Result<()> {
        let (key, items) = (key.clone(), items.to_vec());
        self.db
            .call("quarantine", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO quarantine
                         (org, app, entry, source, record_type, record_id, reason, excerpt, at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?;
                    for q in &items {
                        stmt.execute(params![
                            key.org,
                            key.app,
                            q.entry_key(),
                            q.source,
                            q.record_type,
                            q.record_id,
                            q.reason,
                            q.excerpt,
                            to_millis(q.at)
                        ])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn quarantined(&self, key: &Tenant, limit: u32) -> Result<Vec<Quarantined>> {
        let key = key.clone();
        self.db
            .call("quarantine list", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT source, record_type, record_id, reason, excerpt, at FROM quarantine
                     WHERE org = ?1 AND app = ?2 ORDER BY at DESC, entry LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![key.org, key.app, limit], |r| {
                    Ok(Quarantined {
                        source: r.get(0)?,
                        record_type: r.get(1)?,
                        record_id: r.get(2)?,
                        reason: r.get(3)?,
                        excerpt: r.get(4)?,
                        at: from_millis(r.get(5)?),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn take_sync_lease(
        &self,
        key: &Tenant,
        sync: &str,
        job_id: &str,
        now: Timestamp,
        until: Timestamp,
        starting: bool,
    ) -> Result<bool> {
        let (key, sync, job) = (key.clone(), sync.to_string(), job_id.to_string());
        self.db
            .call("sync lease", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.exec(
                    "INSERT OR IGNORE INTO sync_state (org, app, sync) VALUES (?1, ?2, ?3)",
                    params![key.org, key.app, sync],
                )?;
                let (running_job, lease_until): (Option<String>, Option<i64>) = tx.row(
                    "SELECT running_job, lease_until FROM sync_state WHERE org = ?1 AND app = ?2 AND sync = ?3",
                    params![key.org, key.app, sync],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let held = SyncState { running_job, lease_until: lease_until.map(from_millis), ..SyncState::default() };
                if !held.lease_free_for(&job, now) {
                    return Ok(false);
                }
                tx.exec(
                    "UPDATE sync_state SET running_job = ?4, lease_until = ?6,
                         last_started = CASE WHEN ?7 THEN ?5 ELSE last_started END
                     WHERE org = ?1 AND app = ?2 AND sync = ?3",
                    params![
                        key.org,
                        key.app,
                        sync,
                        job,
                        to_millis(now),
                        to_millis(until),
                        starting
                    ],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await
    }

    async fn finish_sync(
        &self,
        key: &Tenant,
        sync: &str,
        job_id: &str,
        update: SyncFinish,
    ) -> Result<bool> {
        let (key, sync, job) = (key.clone(), sync.to_string(), job_id.to_string());
        self.db
            .call("sync finish", move |conn| {
                let changed = conn.exec(
                    "UPDATE sync_state SET running_job = NULL, lease_until = NULL,
                         last_completed = COALESCE(?5, last_completed),
                         high_water = COALESCE(?6, high_water),
                         last_pages = COALESCE(?7, last_pages),
                         last_failed = COALESCE(?8, last_failed),
                         last_failure = COALESCE(?9, last_failure),
                         api_page_size = COALESCE(?10, api_page_size),
                         probed_short_page = COALESCE(?11, probed_short_page),
                         probed_at = COALESCE(?12, probed_at)
                     WHERE org = ?1 AND app = ?2 AND sync = ?3 AND running_job = ?4",
                    params![
                        key.org,
                        key.app,
                        sync,
                        job,
                        update.completed_at.map(to_millis),
                        update.high_water.map(to_millis),
                        update.pages.map(|p| p as i64),
                        update.failed.as_ref().map(|f| to_millis(f.0)),
                        update.failed.as_ref().map(|f| f.1.clone()),
                        update.api_page_size,
                        update.probed_short_page.map(|p| p.0),
                        update.probed_short_page.map(|p| to_millis(p.1))
                    ],
                )?;
                Ok(changed == 1)
            })
            .await
    }
}

#[async_trait]
impl crate::jobs::ledger::JobLedger for SqliteStore {
    async fn claim(
        &self,
        key: &Tenant,
        job_id: &str,
        generation: u32,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<crate::jobs::ledger::Claim> {
        use crate::jobs::ledger::{decide_claim, Claim, LedgerEntry};
        let (key, job) = (key.clone(), job_id.to_string());
        self.db
            .call("ledger claim", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let stored: Option<LedgerEntry> = tx
                    .query_row(
                        "SELECT generation, done, claimed_until FROM job_claims WHERE org = ?1 AND app = ?2 AND job_id = ?3",
                        params![key.org, key.app, job],
                        |r| {
                            Ok(LedgerEntry {
                                generation: r.get(0)?,
                                done: r.get(1)?,
                                claimed_until: from_millis(r.get(2)?),
                            })
                        },
                    )
                    .optional()?;
                let claim = decide_claim(stored, generation, now);
                if matches!(claim, Claim::Granted | Claim::Rerun) {
                    tx.exec(
                        "INSERT INTO job_claims (org, app, job_id, generation, done, claimed_until) VALUES (?1, ?2, ?3, ?4, 0, ?5)
                         ON CONFLICT (org, app, job_id) DO UPDATE SET generation = excluded.generation, done = 0, claimed_until = excluded.claimed_until",
                        params![key.org, key.app, job, generation, to_millis(until)],
                    )?;
                }
                tx.commit()?;
                Ok(claim)
            })
            .await
    }

    async fn settle(&self, key: &Tenant, job_id: &str, generation: u32, done: bool) -> Result<()> {
        let (key, job) = (key.clone(), job_id.to_string());
        self.db
            .call("ledger settle", move |conn| {
                let sql = if done {
                    "UPDATE job_claims SET done = 1 WHERE org = ?1 AND app = ?2 AND job_id = ?3 AND generation = ?4"
                } else {
                    "UPDATE job_claims SET claimed_until = 0 WHERE org = ?1 AND app = ?2 AND job_id = ?3 AND generation = ?4"
                };
                conn.exec(sql, params![key.org, key.app, job, generation]).map(|_| ())
            })
            .await
    }
}

#[async_trait]
impl crate::jobs::SlotWaiters for SqliteStore {
    async fn park(
        &self,
        tenant: &Tenant,
        job: &crate::jobs::JobEnvelope,
        now: Timestamp,
        due: Timestamp,
    ) -> Result<()> {
        let t = tenant.clone();
        let (entry, body) = (crate::jobs::waiters::entry_key(now, job), job.to_body());
        self.db
            .call("slot park", move |conn| {
                conn.exec(
                    "INSERT OR REPLACE INTO slot_line (org, app, entry, due, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.org, t.app, entry, to_millis(due), body],
                )
                .map(|_| ())
            })
            .await
    }

    async fn pop_oldest(
        &self,
        tenant: &Tenant,
        now: Timestamp,
    ) -> Result<Option<crate::jobs::JobEnvelope>> {
        use crate::jobs::waiters::worth_waking;
        let t = tenant.clone();
        self.db
            .call("slot pop", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut gone = Vec::new();
                let mut found = None;
                {
                    let mut stmt = tx.prepare_cached(
                        "SELECT entry, due, body FROM slot_line WHERE org = ?1 AND app = ?2 ORDER BY entry",
                    )?;
                    let mut rows = stmt.query(params![t.org, t.app])?;
                    while let Some(row) = rows.next()? {
                        let entry: String = row.get(0)?;
                        let due = from_millis(row.get(1)?);
                        let job = crate::jobs::JobEnvelope::parse(&row.get::<_, String>(2)?);
                        gone.push(entry);
                        match job {
                            Ok(job) if worth_waking(due, now) => {
                                found = Some(job);
                                break;
                            }
                            _ => {}
                        }
                    }
                }
                for entry in &gone {
                    tx.exec(
                        "DELETE FROM slot_line WHERE org = ?1 AND app = ?2 AND entry = ?3",
                        params![t.org, t.app, entry],
                    )?;
                }
                tx.commit()?;
                Ok(found)
            })
            .await
    }
}

#[async_trait]
impl crate::jobs::ledger::ActionLedger for SqliteStore {
    async fn begin_action(
        &self,
        scope: &Tenant,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<crate::jobs::ledger::ActionBegin> {
        use crate::jobs::ledger::{ActionBegin, ActionEntry};
        let (scope, key) = (scope.clone(), key.to_string());
        self.db
            .call("action begin", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let row: Option<(Option<i64>, Option<i64>)> = tx
                    .query_row(
                        "SELECT done_at, claimed_until FROM action_keys WHERE org = ?1 AND app = ?2 AND key = ?3",
                        params![scope.org, scope.app, key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let entry = row.map(|(done, until)| ActionEntry {
                    done: done.is_some(),
                    claimed_until: until.filter(|u| *u > 0).map(from_millis),
                });
                let begin = crate::jobs::ledger::decide_begin(entry, now);
                if matches!(begin, ActionBegin::New | ActionBegin::Again) {
                    tx.exec(
                        "INSERT INTO action_keys (org, app, key, started_at, claimed_until) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (org, app, key) DO UPDATE SET claimed_until = excluded.claimed_until",
                        params![scope.org, scope.app, key, to_millis(now), to_millis(until)],
                    )?;
                }
                tx.commit()?;
                Ok(begin)
            })
            .await
    }

    async fn abandon_action(&self, scope: &Tenant, key: &str) -> Result<()> {
        let (scope, key) = (scope.clone(), key.to_string());
        self.db
            .call("action abandon", move |conn| {
                conn.exec(
                    "DELETE FROM action_keys WHERE org = ?1 AND app = ?2 AND key = ?3 AND done_at IS NULL",
                    params![scope.org, scope.app, key],
                )
                .map(|_| ())
            })
            .await
    }

    async fn finish_action(&self, scope: &Tenant, key: &str, now: Timestamp) -> Result<()> {
        let (scope, key) = (scope.clone(), key.to_string());
        self.db
            .call("action finish", move |conn| {
                conn.exec(
                    "UPDATE action_keys SET done_at = ?4 WHERE org = ?1 AND app = ?2 AND key = ?3",
                    params![scope.org, scope.app, key, to_millis(now)],
                )
                .map(|_| ())
            })
            .await
    }
}
