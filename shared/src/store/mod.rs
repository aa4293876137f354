//! The record store: what got synced, per org/app/type/id, with a content
//! hash so only new or changed records produce follow-up work; and the state
//! of each sync (high-water marks, leases, last runs).
//!
//! Adapters: [`sqlite::SqliteStore`] and [`dynamodb::DynamoStore`], both
//! passing the same conformance suite in `tests/`.

pub mod dynamodb;
pub mod sqlite;

use crate::clock::Timestamp;
use crate::connector::Record;
use crate::error::Result;
use crate::quota::QuotaKey;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A record as stored. `data` is `None` for an id that was looked up and
/// not found (kept so the minimum relookup time applies to it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub id: String,
    pub hash: String,
    pub data: Option<Value>,
    pub first_seen: Timestamp,
    pub last_synced: Option<Timestamp>,
    pub last_looked_up: Option<Timestamp>,
}

impl StoredRecord {
    /// Whether the record itself has been seen (not just looked for).
    pub fn seen(&self) -> bool {
        self.data.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Updated,
}

/// A record that is new or whose content changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub record: Record,
    pub hash: String,
}

/// The content hash: SHA-256 of the record's canonical JSON (object keys
/// sorted), so the same content always hashes the same.
pub fn content_hash(data: &Value) -> String {
    let digest = Sha256::digest(data.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// State of one sync (e.g. `complete-transfer:invoices`) of one connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// Records modified before this were all seen (recent lookups).
    pub high_water: Option<Timestamp>,
    pub last_started: Option<Timestamp>,
    pub last_completed: Option<Timestamp>,
    /// Pages the last complete run took (sizes the next reservation).
    pub last_pages: Option<u64>,
    /// The job holding the sync's lease, and until when.
    pub running_job: Option<String>,
    pub lease_until: Option<Timestamp>,
}

impl SyncState {
    /// Whether `job_id` may run this sync at `now`.
    pub fn lease_free_for(&self, job_id: &str, now: Timestamp) -> bool {
        match (&self.running_job, self.lease_until) {
            (Some(holder), Some(until)) => holder == job_id || until <= now,
            _ => true,
        }
    }
}

/// The lookup-claim rule, in one place for every adapter: an id may be
/// claimed when it was never looked up, was last looked up at or before
/// `cutoff` (`now - min_relookup`), or was claimed by `claimer` itself.
pub fn lookup_claimable(
    last_looked_up: Option<Timestamp>,
    claimed_by: Option<&str>,
    claimer: &str,
    cutoff: Timestamp,
) -> bool {
    last_looked_up.is_none_or(|t| t <= cutoff) || claimed_by == Some(claimer)
}

/// What a page of records changes, computed before anything is written.
///
/// Handlers enqueue follow-up work for `changes` *before* committing the
/// page: a crash in between repeats the follow-ups (idempotent) instead of
/// losing them, because an uncommitted page still looks changed next time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageDiff {
    pub changes: Vec<Change>,
    pub(crate) records: Vec<(Record, String)>,
    /// first_seen and last_looked_up of records already stored.
    pub(crate) prior: std::collections::HashMap<String, (Timestamp, Option<Timestamp>)>,
}

#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Compares a page with what is stored: which records are new or
    /// changed by content hash. Writes nothing.
    async fn diff(&self, key: &QuotaKey, record_type: &str, records: &[Record])
        -> Result<PageDiff>;

    /// Writes the page: changed records with their new content and hash,
    /// unchanged ones with a new `last_synced`.
    async fn commit(
        &self,
        key: &QuotaKey,
        record_type: &str,
        diff: &PageDiff,
        now: Timestamp,
    ) -> Result<()>;

    /// [`RecordStore::diff`] then [`RecordStore::commit`].
    async fn upsert(
        &self,
        key: &QuotaKey,
        record_type: &str,
        records: &[Record],
        now: Timestamp,
    ) -> Result<Vec<Change>> {
        let diff = self.diff(key, record_type, records).await?;
        self.commit(key, record_type, &diff, now).await?;
        Ok(diff.changes)
    }

    /// Stored records (seen or only looked for) among `ids`.
    async fn get(
        &self,
        key: &QuotaKey,
        record_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecord>>;

    /// Claims ids for a lookup on behalf of `claimer`: sets
    /// `last_looked_up = now` and the claimer on each id that
    /// [`lookup_claimable`] allows (creating a placeholder for unknown ids)
    /// and returns those claimed. Two concurrent claims of the same id by
    /// different claimers give it to one of them only; the same claimer may
    /// claim again (a retried page or job re-claims what it claimed before
    /// its failure, instead of losing those ids for `min_interval`).
    async fn claim_lookups(
        &self,
        key: &QuotaKey,
        record_type: &str,
        ids: &[String],
        claimer: &str,
        now: Timestamp,
        min_interval: chrono::Duration,
    ) -> Result<Vec<String>>;

    /// Records of a type in id order, after `after` (paging for reports
    /// and bulk workflow executions).
    async fn list(
        &self,
        key: &QuotaKey,
        record_type: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>>;

    /// How many records of a type have been seen.
    async fn count(&self, key: &QuotaKey, record_type: &str) -> Result<u64>;

    async fn sync_state(&self, key: &QuotaKey, sync: &str) -> Result<SyncState>;

    /// Takes the sync's lease for `job_id` until `until`, if it is free at
    /// `now` (or already held by `job_id`), and records `last_started` when
    /// `starting`. Returns false when another live job holds it.
    async fn take_sync_lease(
        &self,
        key: &QuotaKey,
        sync: &str,
        job_id: &str,
        now: Timestamp,
        until: Timestamp,
        starting: bool,
    ) -> Result<bool>;

    /// Ends a run held by `job_id`: frees the lease and applies `update`
    /// (high-water mark, completion). No-op if `job_id` no longer holds it.
    async fn finish_sync(
        &self,
        key: &QuotaKey,
        sync: &str,
        job_id: &str,
        update: SyncFinish,
    ) -> Result<bool>;
}

/// What a finished sync run records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncFinish {
    pub completed_at: Option<Timestamp>,
    pub high_water: Option<Timestamp>,
    pub pages: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    proptest! {
        /// A lookup may be claimed when never looked up, looked up at or
        /// before the cutoff, or claimed by the same claimer; never when
        /// another claimer looked it up after the cutoff.
        #[test]
        fn lookup_claims_follow_the_rule(
            last in proptest::option::of(-7_200i64..7_200),
            by in proptest::option::of("[ab]"),
            me in "[ab]",
        ) {
            let cutoff = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
            let last = last.map(|s| cutoff + chrono::Duration::seconds(s));
            let ok = lookup_claimable(last, by.as_deref(), &me, cutoff);
            let fresh_and_other = last.is_some_and(|t| t > cutoff) && by.as_deref() != Some(me.as_str());
            prop_assert_eq!(ok, !fresh_and_other);
        }
    }
}
