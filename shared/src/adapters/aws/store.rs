//! Record store on DynamoDB.
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | record | `rec#{org}#{app}#{type}` | id | `hash`, `data` (JSON), `first_seen`, `last_synced`, `last_looked_up` (epoch ms) |
//! | sync state | `sync#{org}#{app}` | sync name | `high_water`, `last_started`, `last_completed`, `last_pages`, `running_job`, `lease_until`, `last_failed`, `last_failure`, `api_page_size`, `probed_short_page`, `probed_at` |
//! | Data Source outbox row | `obx#{org}#{app}#{datasource}` | row id | `change` (JSON), `stamp`, `written_at` |
//! | Data Source outbox state | `obxs#{org}#{app}` | datasource | `next_seq`, `inflight` (JSON rows), `inflight_seq`, `flush_due`, `last_flush`, `pushes`, `rows_pushed` |
//! | job parked for a slot | `wait#{org}#{app}` | park time, job id, generation | `due` (epoch ms), `body` (the envelope), `ttl` (a day past `due`) |
//! | quarantined record | `quar#{org}#{app}` | entry key (source, type, id) | `source`, `record_type`, `record_id`, `reason`, `excerpt`, `at`, `ttl` (90 days) |
//!
//! A page is written with `BatchGetItem` (old hashes, 100 ids a call) then
//! `BatchWriteItem` (25 a call), not one conditional write per record: a
//! page of 200 costs 2 + 8 requests instead of 200. Two syncs writing the
//! same record at the same instant may both report it changed; follow-up
//! work is idempotent, so that costs a duplicate trigger, never a loss.

use crate::adapters::aws::{
    conditional, get_n, get_s, is_ccf, key_part, n, s, sdk_error, Item, Table,
};
use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::{Disposition, Error, Result};
use crate::core::record::Record;
use crate::core::record::{content_hash, StoredRecord};
use crate::core::tenant::Tenant;
use crate::store::{change_of, Held, PageDiff, Quarantined, RecordStore, SyncFinish, SyncState};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use std::collections::HashMap;

/// Immediate re-tries of unprocessed batch items (the SDK already retried
/// throttling with backoff); what is still unprocessed after them fails the
/// operation as transient, and the job restarts from its checkpoint after a
/// backoff instead of looping here.
const BATCH_ROUNDS: usize = 3;

/// The record store, job ledger and action ledger on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    pub(crate) table: Table,
}

impl DynamoStore {
    /// The store kept in `table` (items in `docs/table.md`).
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

fn rec_pk(key: &Tenant, record_type: &str) -> String {
    format!(
        "rec#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(record_type)
    )
}

fn sync_pk(key: &Tenant) -> String {
    format!("sync#{}#{}", key_part(&key.org), key_part(&key.app))
}

fn quarantine_pk(key: &Tenant) -> String {
    format!("quar#{}#{}", key_part(&key.org), key_part(&key.app))
}

/// Quarantine entries live 90 days (TTL): long enough to be noticed.
const QUARANTINE_TTL_DAYS: i64 = 90;
/// Most entries read to answer a listing (sorted newest first in memory).
const QUARANTINE_READ_CAP: usize = 5_000;

fn to_stored(item: &Item) -> Option<StoredRecord> {
    Some(StoredRecord {
        id: get_s(item, "sk")?.clone(),
        hash: get_s(item, "hash").cloned().unwrap_or_default(),
        data: get_s(item, "data").and_then(|d| serde_json::from_str(d).ok()),
        first_seen: get_n(item, "first_seen").map(from_millis)?,
        last_synced: get_n(item, "last_synced").map(from_millis),
        last_looked_up: get_n(item, "last_looked_up").map(from_millis),
        lookup_claimed_by: get_s(item, "claimed_by").cloned(),
    })
}

impl DynamoStore {
    pub(crate) async fn batch_get(&self, pk: &str, ids: &[String]) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        // An id too long to store cannot be stored: not asked for (DynamoDB
        // would refuse the whole read).
        let mut unique: Vec<&String> = ids
            .iter()
            .filter(|id| id.len() <= crate::store::MAX_ID_BYTES)
            .collect();
        unique.sort();
        unique.dedup();
        for chunk in unique.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                keys = keys.keys(HashMap::from([
                    ("pk".to_string(), s(pk)),
                    ("sk".to_string(), s(id.as_str())),
                ]));
            }
            let mut request = Some(
                keys.build()
                    .map_err(|e| Error::store("records get", e, Disposition::Permanent))?,
            );
            for _ in 0..BATCH_ROUNDS {
                let Some(req) = request.take() else { break };
                let resp = self
                    .table
                    .client
                    .batch_get_item()
                    .request_items(&self.table.name, req)
                    .send()
                    .await
                    .map_err(|e| sdk_error("records get", e))?;
                if let Some(items) = resp.responses.and_then(|mut r| r.remove(&self.table.name)) {
                    out.extend(items);
                }
                request = resp
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table.name))
                    .filter(|k| !k.keys.is_empty());
            }
            if request.is_some() {
                return Err(Error::store(
                    "records get",
                    "DynamoDB left keys unprocessed (throttled)",
                    Disposition::Retryable,
                ));
            }
        }
        Ok(out)
    }

    pub(crate) async fn batch_put(&self, items: Vec<Item>) -> Result<()> {
        for chunk in items.chunks(25) {
            let mut writes: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(|e| Error::store("records write", e, Disposition::Permanent))
                })
                .collect::<Result<_>>()?;
            for _ in 0..BATCH_ROUNDS {
                if writes.is_empty() {
                    break;
                }
                let resp = self
                    .table
                    .client
                    .batch_write_item()
                    .request_items(&self.table.name, std::mem::take(&mut writes))
                    .send()
                    .await
                    .map_err(|e| sdk_error("records write", e))?;
                writes = resp
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table.name))
                    .unwrap_or_default();
            }
            if !writes.is_empty() {
                return Err(Error::store(
                    "records write",
                    "DynamoDB left writes unprocessed (throttled)",
                    Disposition::Retryable,
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RecordStore for DynamoStore {
    async fn diff(&self, key: &Tenant, record_type: &str, records: &[Record]) -> Result<PageDiff> {
        let pk = rec_pk(key, record_type);
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let old: HashMap<String, Item> = self
            .batch_get(&pk, &ids)
            .await?
            .into_iter()
            .filter_map(|i| get_s(&i, "sk").cloned().map(|id| (id, i)))
            .collect();
        let mut diff = PageDiff::default();
        for record in records {
            let hash = content_hash(&record.data);
            let prev = old.get(&record.id);
            let held = prev.map(|p| Held {
                hash: get_s(p, "hash").map_or("", String::as_str),
                has_data: p.contains_key("data"),
            });
            if let Some(p) = prev {
                if let Some(first) = get_n(p, "first_seen") {
                    diff.prior.insert(
                        record.id.clone(),
                        (
                            from_millis(first),
                            get_n(p, "last_looked_up").map(from_millis),
                        ),
                    );
                }
            }
            diff.changes.extend(change_of(held, record, &hash));
            diff.records.push((record.clone(), hash));
        }
        Ok(diff)
    }

    async fn commit(
        &self,
        key: &Tenant,
        record_type: &str,
        diff: &PageDiff,
        now: Timestamp,
    ) -> Result<()> {
        diff.check_storable(record_type)?;
        let pk = rec_pk(key, record_type);
        // One put per id (a page may repeat a record).
        let mut puts: HashMap<&str, Item> = HashMap::new();
        for (record, hash) in &diff.records {
            let prior = diff.prior.get(&record.id);
            let mut item: Item = HashMap::from([
                ("pk".into(), s(pk.clone())),
                ("sk".into(), s(record.id.clone())),
                ("hash".into(), s(hash.clone())),
                ("data".into(), s(record.data.to_string())),
                (
                    "first_seen".into(),
                    n(prior.map_or(to_millis(now), |p| to_millis(p.0))),
                ),
                ("last_synced".into(), n(to_millis(now))),
            ]);
            if let Some(t) = prior.and_then(|p| p.1) {
                item.insert("last_looked_up".into(), n(to_millis(t)));
            }
            puts.insert(&record.id, item);
        }
        self.batch_put(puts.into_values().collect()).await
    }

    async fn get(
        &self,
        key: &Tenant,
        record_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecord>> {
        let items = self.batch_get(&rec_pk(key, record_type), ids).await?;
        Ok(items.iter().filter_map(to_stored).collect())
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
        let pk = rec_pk(key, record_type);
        let cutoff = to_millis(now - min_interval);
        let mut unique: Vec<&String> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        let mut claimed = Vec::new();
        for chunk in unique.chunks(16) {
            let attempts = chunk.iter().map(|id| {
                self.table
                    .client
                    .update_item()
                    .table_name(&self.table.name)
                    .key("pk", s(pk.clone()))
                    .key("sk", s(id.as_str()))
                    // `store::lookup_claimable`, as a condition.
                    .update_expression("SET last_looked_up = :now, claimed_by = :me, first_seen = if_not_exists(first_seen, :now), #h = if_not_exists(#h, :empty)")
                    .condition_expression("attribute_not_exists(last_looked_up) OR last_looked_up <= :cutoff OR claimed_by = :me")
                    .expression_attribute_names("#h", "hash")
                    .expression_attribute_values(":me", s(claimer))
                    .expression_attribute_values(":now", n(to_millis(now)))
                    .expression_attribute_values(":cutoff", n(cutoff))
                    .expression_attribute_values(":empty", s(""))
                    .send()
            });
            for (id, result) in chunk.iter().zip(futures::future::join_all(attempts).await) {
                match result {
                    Ok(_) => claimed.push((*id).clone()),
                    Err(e) if is_ccf(&e) => {}
                    Err(e) => return Err(sdk_error("records claim", e)),
                }
            }
        }
        Ok(claimed)
    }

    async fn list(
        &self,
        key: &Tenant,
        record_type: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .table
                .client
                .query()
                .table_name(&self.table.name)
                .expression_attribute_values(":pk", s(rec_pk(key, record_type)))
                .limit((limit as usize - out.len()).clamp(1, 1000) as i32)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            // DynamoDB refuses an empty key value, so "from the start" is no bound.
            q = match after {
                Some(a) if !a.is_empty() => q
                    .key_condition_expression("pk = :pk AND sk > :after")
                    .expression_attribute_values(":after", s(a)),
                _ => q.key_condition_expression("pk = :pk"),
            };
            let resp = q.send().await.map_err(|e| sdk_error("records list", e))?;
            out.extend(resp.items().iter().filter_map(to_stored));
            match resp.last_evaluated_key {
                Some(k) if out.len() < limit as usize => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn count(&self, key: &Tenant, record_type: &str) -> Result<u64> {
        // Placeholders (lookup claims on ids never fetched) have no data.
        self.table
            .count("records count", rec_pk(key, record_type), Some("data"))
            .await
    }

    async fn sync_state(&self, key: &Tenant, sync: &str) -> Result<SyncState> {
        let Some(item) = self.table.get("sync state", sync_pk(key), sync).await? else {
            return Ok(SyncState::default());
        };
        let item = &item;
        Ok(SyncState {
            high_water: get_n(item, "high_water").map(from_millis),
            last_started: get_n(item, "last_started").map(from_millis),
            last_completed: get_n(item, "last_completed").map(from_millis),
            last_pages: get_n(item, "last_pages").map(|p| p.max(0) as u64),
            running_job: get_s(item, "running_job").cloned(),
            lease_until: get_n(item, "lease_until").map(from_millis),
            last_failed: get_n(item, "last_failed").map(from_millis),
            last_failure: get_s(item, "last_failure").cloned(),
            api_page_size: get_n(item, "api_page_size")
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            probed_short_page: get_n(item, "probed_short_page")
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            probed_at: get_n(item, "probed_at").map(from_millis),
        })
    }

    async fn quarantine(&self, key: &Tenant, items: &[Quarantined]) -> Result<()> {
        let pk = quarantine_pk(key);
        // One put per entry (BatchWriteItem refuses a key twice in a call).
        let mut puts: HashMap<String, Item> = HashMap::new();
        for q in items {
            let ttl = (q.at + chrono::Duration::days(QUARANTINE_TTL_DAYS)).timestamp();
            let mut item: Item = HashMap::from([
                ("pk".into(), s(pk.clone())),
                ("sk".into(), s(q.entry_key())),
                ("source".into(), s(q.source.clone())),
                ("record_type".into(), s(q.record_type.clone())),
                ("reason".into(), s(q.reason.clone())),
                ("excerpt".into(), s(q.excerpt.clone())),
                ("at".into(), n(to_millis(q.at))),
                ("ttl".into(), n(ttl)),
            ]);
            if let Some(id) = &q.record_id {
                item.insert("record_id".into(), s(id.clone()));
            }
            puts.insert(q.entry_key(), item);
        }
        self.batch_put(puts.into_values().collect()).await
    }

    async fn quarantined(&self, key: &Tenant, limit: u32) -> Result<Vec<Quarantined>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let resp = self
                .table
                .client
                .query()
                .table_name(&self.table.name)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(quarantine_pk(key)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("quarantine list", e))?;
            out.extend(resp.items().iter().filter_map(|item| {
                Some(Quarantined {
                    source: get_s(item, "source")?.clone(),
                    record_type: get_s(item, "record_type")?.clone(),
                    record_id: get_s(item, "record_id").cloned(),
                    reason: get_s(item, "reason")?.clone(),
                    excerpt: get_s(item, "excerpt").cloned().unwrap_or_default(),
                    at: from_millis(get_n(item, "at")?),
                })
            }));
            match resp.last_evaluated_key {
                Some(k) if out.len() < QUARANTINE_READ_CAP => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| {
            b.at.cmp(&a.at)
                .then_with(|| a.entry_key().cmp(&b.entry_key()))
        });
        out.truncate(limit as usize);
        Ok(out)
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
        let mut update = "SET running_job = :job, lease_until = :until".to_string();
        if starting {
            update.push_str(", last_started = :now");
        }
        let result = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(sync_pk(key)))
            .key("sk", s(sync))
            .update_expression(update)
            .condition_expression(
                "attribute_not_exists(running_job) OR running_job = :job OR lease_until <= :now",
            )
            .expression_attribute_values(":job", s(job_id))
            .expression_attribute_values(":until", n(to_millis(until)))
            .expression_attribute_values(":now", n(to_millis(now)))
            .send()
            .await;
        Ok(conditional(result, "sync lease")?.is_some())
    }

    async fn finish_sync(
        &self,
        key: &Tenant,
        sync: &str,
        job_id: &str,
        update: SyncFinish,
    ) -> Result<bool> {
        let mut sets = Vec::new();
        let mut req = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(sync_pk(key)))
            .key("sk", s(sync))
            .condition_expression("running_job = :job")
            .expression_attribute_values(":job", s(job_id));
        if let Some(t) = update.completed_at {
            sets.push("last_completed = :done");
            req = req.expression_attribute_values(":done", n(to_millis(t)));
        }
        if let Some(t) = update.high_water {
            sets.push("high_water = :hw");
            req = req.expression_attribute_values(":hw", n(to_millis(t)));
        }
        if let Some(p) = update.pages {
            sets.push("last_pages = :pages");
            req = req.expression_attribute_values(":pages", n(p as i64));
        }
        if let Some((at, why)) = update.failed {
            sets.push("last_failed = :failed, last_failure = :why");
            req = req
                .expression_attribute_values(":failed", n(to_millis(at)))
                .expression_attribute_values(":why", s(why));
        }
        if let Some(size) = update.api_page_size {
            sets.push("api_page_size = :psize");
            req = req.expression_attribute_values(":psize", n(i64::from(size)));
        }
        if let Some((len, at)) = update.probed_short_page {
            sets.push("probed_short_page = :probed, probed_at = :probed_at");
            req = req
                .expression_attribute_values(":probed", n(i64::from(len)))
                .expression_attribute_values(":probed_at", n(to_millis(at)));
        }
        let mut expr = "REMOVE running_job, lease_until".to_string();
        if !sets.is_empty() {
            expr = format!("SET {} {expr}", sets.join(", "));
        }
        Ok(conditional(req.update_expression(expr).send().await, "sync finish")?.is_some())
    }
}

/// Ledger items live a week (TTL), far longer than any job's redelivery.
const LEDGER_TTL_DAYS: i64 = 7;

fn ledger_pk(key: &Tenant, job_id: &str) -> String {
    format!(
        "job#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(job_id)
    )
}

fn action_pk(scope: &Tenant, key: &str) -> String {
    format!(
        "act#{}#{}#{}",
        key_part(&scope.org),
        key_part(&scope.app),
        key_part(key)
    )
}

#[async_trait]
impl crate::jobs::ledger::JobLedger for DynamoStore {
    async fn claim(
        &self,
        key: &Tenant,
        job_id: &str,
        generation: u32,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<crate::jobs::ledger::Claim> {
        use crate::jobs::ledger::{decide_claim, Claim, LedgerEntry};
        // The condition is `decide_claim(..) == Granted` written for DynamoDB;
        // a refusal is explained by the same rule from the old item.
        let result = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(ledger_pk(key, job_id)))
            .key("sk", s("ledger"))
            .update_expression("SET generation = :g, done = :no, claimed_until = :until, #ttl = :ttl")
            .condition_expression(
                "attribute_not_exists(generation) OR generation < :g OR (generation = :g AND done = :no AND claimed_until <= :now)",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":g", n(i64::from(generation)))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":until", n(to_millis(until)))
            .expression_attribute_values(":now", n(to_millis(now)))
            .expression_attribute_values(":ttl", n((now + chrono::Duration::days(LEDGER_TTL_DAYS)).timestamp()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .return_values_on_condition_check_failure(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let entry = |old: &Item| LedgerEntry {
            generation: get_n(old, "generation")
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            done: old
                .get("done")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            claimed_until: from_millis(get_n(old, "claimed_until").unwrap_or(0)),
        };
        match result {
            // Taken; the item before says whether this generation ran before.
            Ok(out) => Ok(match out.attributes().filter(|old| !old.is_empty()) {
                Some(old) if entry(old).generation == generation => Claim::Rerun,
                _ => Claim::Granted,
            }),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let old = c.item().cloned().unwrap_or_default();
                    let stored = entry(&old);
                    Ok(match decide_claim(Some(stored), generation, now) {
                        // The condition saw a live claim the item no longer
                        // shows: still not ours to run.
                        Claim::Granted | Claim::Rerun => Claim::InProgress,
                        other => other,
                    })
                }
                _ => Err(sdk_error("ledger claim", e)),
            },
        }
    }

    async fn settle(&self, key: &Tenant, job_id: &str, generation: u32, done: bool) -> Result<()> {
        let update = if done {
            "SET done = :yes"
        } else {
            "SET claimed_until = :zero"
        };
        let result = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(ledger_pk(key, job_id)))
            .key("sk", s("ledger"))
            .update_expression(update)
            .condition_expression("generation = :g")
            .expression_attribute_values(":g", n(i64::from(generation)))
            .expression_attribute_values(
                if done { ":yes" } else { ":zero" },
                if done {
                    AttributeValue::Bool(true)
                } else {
                    n(0)
                },
            )
            .send()
            .await;
        conditional(result, "ledger settle")?;
        Ok(())
    }
}

fn waiters_pk(key: &Tenant) -> String {
    format!("wait#{}#{}", key_part(&key.org), key_part(&key.app))
}

/// A parked entry outlives its backstop by a day (TTL), in case no pop
/// ever reads it again.
const WAITER_TTL_DAYS: i64 = 1;

#[async_trait]
impl crate::jobs::SlotWaiters for DynamoStore {
    async fn park(
        &self,
        tenant: &Tenant,
        job: &crate::jobs::JobEnvelope,
        now: Timestamp,
        due: Timestamp,
    ) -> Result<()> {
        self.table
            .client
            .put_item()
            .table_name(&self.table.name)
            .item("pk", s(waiters_pk(tenant)))
            .item("sk", s(crate::jobs::waiters::entry_key(now, job)))
            .item("due", n(to_millis(due)))
            .item("body", s(job.to_body()))
            .item(
                "ttl",
                n((due + chrono::Duration::days(WAITER_TTL_DAYS)).timestamp()),
            )
            .send()
            .await
            .map_err(|e| sdk_error("slot park", e))?;
        Ok(())
    }

    async fn pop_oldest(
        &self,
        tenant: &Tenant,
        now: Timestamp,
    ) -> Result<Option<crate::jobs::JobEnvelope>> {
        use crate::jobs::waiters::worth_waking;
        use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
        let pk = waiters_pk(tenant);
        let mut start = None;
        loop {
            let resp = self
                .table
                .client
                .query()
                .table_name(&self.table.name)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .limit(25)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("slot line", e))?;
            for item in resp.items() {
                let Some(sk) = get_s(item, "sk") else {
                    continue;
                };
                let due = from_millis(get_n(item, "due").unwrap_or(0));
                let job = get_s(item, "body")
                    .and_then(|b| crate::jobs::JobEnvelope::parse(b).ok())
                    .filter(|_| worth_waking(due, now));
                // Taken by whoever deletes it: a concurrent pop that got
                // there first makes this delete fail its condition. (A
                // delete whose response is lost and retried by the SDK
                // fails it too: that waiter is then woken by nobody and
                // waits for its queued copy, the backstop — slower, never
                // lost. Marking before deleting would close that for a
                // write per pop.)
                let deleted = self
                    .table
                    .client
                    .delete_item()
                    .table_name(&self.table.name)
                    .key("pk", s(&pk))
                    .key("sk", s(sk))
                    .condition_expression("attribute_exists(pk)")
                    .send()
                    .await;
                match deleted {
                    Ok(_) => {
                        if job.is_some() {
                            return Ok(job);
                        }
                    }
                    Err(e) => match e.as_service_error() {
                        Some(DeleteItemError::ConditionalCheckFailedException(_)) => {}
                        _ => return Err(sdk_error("slot pop", e)),
                    },
                }
            }
            match resp.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(None),
            }
        }
    }
}

impl DynamoStore {
    /// Takes an action's lapsed claim, on the condition that it is still
    /// lapsed and undone: of two deliveries retrying at once, one calls.
    async fn retake_action(
        &self,
        scope: &Tenant,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<crate::jobs::ledger::ActionBegin> {
        use crate::jobs::ledger::{decide_begin, ActionBegin, ActionEntry};
        let taken = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(action_pk(scope, key)))
            .key("sk", s("action"))
            .update_expression("SET claimed_until = :until")
            .condition_expression(
                "attribute_not_exists(done_at) AND (attribute_not_exists(claimed_until) OR claimed_until <= :now)",
            )
            .expression_attribute_values(":until", n(to_millis(until)))
            .expression_attribute_values(":now", n(to_millis(now)))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match taken {
            Ok(_) => Ok(ActionBegin::Again),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let now_held = c.item().map(action_entry).unwrap_or(ActionEntry {
                        done: true,
                        claimed_until: None,
                    });
                    // Done, or claimed by the other delivery meanwhile.
                    Ok(match decide_begin(Some(now_held), now) {
                        ActionBegin::Again => ActionBegin::InProgress(now),
                        other => other,
                    })
                }
                _ => Err(sdk_error("action begin", e)),
            },
        }
    }
}

/// An action ledger item as the claim rule reads it.
fn action_entry(item: &Item) -> crate::jobs::ledger::ActionEntry {
    crate::jobs::ledger::ActionEntry {
        done: item.contains_key("done_at"),
        claimed_until: get_n(item, "claimed_until").map(from_millis),
    }
}

#[async_trait]
impl crate::jobs::ledger::ActionLedger for DynamoStore {
    async fn begin_action(
        &self,
        scope: &Tenant,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<crate::jobs::ledger::ActionBegin> {
        use crate::jobs::ledger::{decide_begin, ActionBegin};
        let result = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .item("pk", s(action_pk(scope, key)))
            .item("sk", s("action"))
            .item("started_at", n(to_millis(now)))
            .item("claimed_until", n(to_millis(until)))
            .item(
                "ttl",
                n((now + chrono::Duration::days(LEDGER_TTL_DAYS * 5)).timestamp()),
            )
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        let old = match result {
            Ok(_) => return Ok(ActionBegin::New),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    c.item().cloned().unwrap_or_default()
                }
                _ => return Err(sdk_error("action begin", e)),
            },
        };
        let begin = decide_begin(Some(action_entry(&old)), now);
        if begin != ActionBegin::Again {
            return Ok(begin);
        }
        self.retake_action(scope, key, now, until).await
    }

    async fn abandon_action(&self, scope: &Tenant, key: &str) -> Result<()> {
        let result = self
            .table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .key("pk", s(action_pk(scope, key)))
            .key("sk", s("action"))
            .condition_expression("attribute_not_exists(done_at)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(aws_sdk_dynamodb::operation::delete_item::DeleteItemError::ConditionalCheckFailedException(_))) => Ok(()),
            Err(e) => Err(sdk_error("action abandon", e)),
        }
    }

    async fn finish_action(&self, scope: &Tenant, key: &str, now: Timestamp) -> Result<()> {
        self.table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(action_pk(scope, key)))
            .key("sk", s("action"))
            .update_expression("SET done_at = :now")
            .expression_attribute_values(":now", n(to_millis(now)))
            .send()
            .await
            .map_err(|e| sdk_error("action finish", e))?;
        Ok(())
    }
}
