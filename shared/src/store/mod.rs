//! The record store: what got synced, per org/app/type/id, with a content
//! hash so only new or changed records produce follow-up work; and the state
//! of each sync (high-water marks, leases, last runs).
//!
//! Adapters: [`crate::adapters::sqlite::store::SqliteStore`] and [`crate::adapters::aws::store::DynamoStore`], both
//! passing the same conformance suite in `tests/`.

use crate::core::clock::Timestamp;
use crate::core::error::Result;
use crate::core::record::{content_hash, ChangeKind, Record, StoredRecord};
use crate::core::tenant::Tenant;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) mod hosted;
pub(crate) mod outbox;

// The face of the layer: what the functions, the CLI and the tests name.
pub use hosted::{HostedRows, IndexState, RowIndex};
pub use outbox::{
    Chunk, Outbox, OutboxRow, OutboxState, Probe, Refusal, RefusedRow, RowChange, RowWrite,
};

/// A record that is new or whose content changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Created or updated.
    pub kind: ChangeKind,
    /// The record as served.
    pub record: Record,
    /// Its content hash.
    pub hash: String,
    /// The content hash the store held when the page was compared (`None`
    /// for a record never stored): with `hash`, what tells a reader of the
    /// store whether the page was committed yet.
    pub prev_hash: Option<String>,
}

/// The largest record, as JSON, the store keeps. DynamoDB refuses items
/// over 400 KB; the item's keys and other attributes take at most a few
/// hundred bytes, so 4 KB of headroom keeps every accepted record storable.
/// The SQLite adapter refuses the same size, so both adapters behave alike.
pub const MAX_RECORD_BYTES: usize = 400 * 1024 - 4 * 1024;

/// The longest record id the store keeps, in bytes: a little under
/// DynamoDB's 1,024-byte limit for a sort key. The SQLite adapter refuses
/// the same, so both behave alike (a longer id failed its whole page on
/// DynamoDB while SQLite stored it).
pub const MAX_ID_BYTES: usize = 1000;

/// Why `record` cannot be stored, if it cannot: the one size rule both
/// adapters and the sync layer apply.
pub(crate) fn unstorable(record: &Record) -> Option<String> {
    if record.id.len() > MAX_ID_BYTES {
        return Some(format!(
            "record id is {} bytes; the store keeps ids of at most {MAX_ID_BYTES} (DynamoDB's key limit)",
            record.id.len()
        ));
    }
    let size = record.data.to_string().len();
    (size > MAX_RECORD_BYTES).then(|| {
        format!("record is {size} bytes as JSON; the store keeps at most {MAX_RECORD_BYTES} (DynamoDB's 400 KB item limit)")
    })
}

impl PageDiff {
    /// The commit rule both adapters apply before writing: a page holding a
    /// record the store cannot keep is refused whole, naming the record and
    /// why (DynamoDB would refuse the whole batch; SQLite does the same so
    /// both behave alike). The sync layer quarantines such records first, so
    /// this only fires for a caller that did not.
    pub(crate) fn check_storable(&self, record_type: &str) -> Result<()> {
        match self
            .records
            .iter()
            .find_map(|(r, _)| unstorable(r).map(|why| (r, why)))
        {
            Some((record, why)) => Err(crate::core::error::Error::store(
                "records commit",
                format!("record `{}` of `{record_type}`: {why}", record.id),
                crate::core::error::Disposition::Permanent,
            )),
            None => Ok(()),
        }
    }
}

/// A record set aside instead of failing its page or trigger: the API sent
/// something that cannot be stored (no id, too large) or acted on (an
/// action template names a field it lacks). Kept with the reason so an
/// operator sees it (`metered quarantine`); every other record proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// What set it aside: `complete-transfer:invoices`, `workflow:paid`.
    pub source: String,
    /// The record's type.
    pub record_type: String,
    /// `None` when the record had no id at all.
    pub record_id: Option<String>,
    /// Why it was set aside.
    pub reason: String,
    /// The start of the record's JSON, for recognising it.
    pub excerpt: String,
    /// When.
    pub at: Timestamp,
}

/// Characters of a record's JSON kept in a quarantine entry.
pub(crate) const QUARANTINE_EXCERPT_CHARS: usize = 300;

impl Quarantined {
    /// An entry for a record of `record_type` set aside by `source`.
    pub fn new(
        source: &str,
        record_type: &str,
        record_id: Option<String>,
        reason: String,
        data: &Value,
        at: Timestamp,
    ) -> Self {
        let excerpt = crate::core::error::bounded(&data.to_string(), QUARANTINE_EXCERPT_CHARS);
        Self {
            source: source.into(),
            record_type: record_type.into(),
            record_id,
            reason,
            excerpt,
            at,
        }
    }

    /// One entry per source, type and record (by id, else by content), so a
    /// record seen again on every run is listed once, with its latest reason.
    pub(crate) fn entry_key(&self) -> String {
        let who = match &self.record_id {
            // A long id (one too long to store, say) by its digest: the
            // entry's own key must fit DynamoDB's 1,024-byte key.
            Some(id) if id.len() > 256 => {
                format!("idh:{}", content_hash(&Value::String(id.clone())))
            }
            Some(id) => format!("id:{id}"),
            None => format!(
                "content:{}",
                content_hash(&Value::String(self.excerpt.clone()))
            ),
        };
        format!("{}#{}#{who}", self.source, self.record_type)
    }
}

/// State of one sync (e.g. `complete-transfer:invoices`) of one connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// Records modified before this were all seen (recent lookups).
    pub high_water: Option<Timestamp>,
    /// When the last run started.
    pub last_started: Option<Timestamp>,
    /// When the last run completed.
    pub last_completed: Option<Timestamp>,
    /// Pages the last complete run took (sizes the next reservation).
    pub last_pages: Option<u64>,
    /// The job holding the sync's lease, and until when.
    pub running_job: Option<String>,
    /// When that lease ends.
    pub lease_until: Option<Timestamp>,
    /// When a run last gave up (dead-lettered), and why: the storm guard
    /// starts another at most once per `min_relookup` after it.
    pub last_failed: Option<Timestamp>,
    /// Why it gave up.
    pub last_failure: Option<String>,
    /// The page size the API really serves when it caps below the
    /// configured one (learned by a probe; see `sync::listing`).
    pub api_page_size: Option<u32>,
    /// The length of a short first page that a probe found to be the whole
    /// listing, and when: the same length is probed again only after
    /// [`SHORT_PAGE_REPROBE_DAYS`] (a dataset that was exactly one capped
    /// page long may have grown).
    pub probed_short_page: Option<u32>,
    /// When that probe was made.
    pub probed_at: Option<Timestamp>,
}

/// How long a probe that found a short first page to be the whole listing
/// stands: at most one extra call per sync in this many days.
pub(crate) const SHORT_PAGE_REPROBE_DAYS: i64 = 7;

impl SyncState {
    /// The lease rule: the job holding a live lease at `now`, if any. A lease
    /// is live until `lease_until` (exclusive); an expired one binds nobody.
    ///
    /// The SQLite adapter applies this rule inside its transaction; the
    /// DynamoDB adapter writes it as the condition of its `UpdateItem`
    /// (`attribute_not_exists(running_job) OR running_job = :job OR
    /// lease_until <= :now`); the store suite checks both agree on a free,
    /// own, expired and foreign live lease.
    pub fn live_lease_holder(&self, now: Timestamp) -> Option<&str> {
        match (&self.running_job, self.lease_until) {
            (Some(holder), Some(until)) if until > now => Some(holder),
            _ => None,
        }
    }

    /// Whether `job_id` may take (or renew) this sync's lease at `now`:
    /// free, its own, or expired.
    pub fn lease_free_for(&self, job_id: &str, now: Timestamp) -> bool {
        self.live_lease_holder(now)
            .is_none_or(|holder| holder == job_id)
    }
}

/// What the store held for an id when a page brought it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held<'a> {
    /// Content hash of the stored record.
    pub hash: &'a str,
    /// False for a placeholder (a lookup claim on an id never fetched).
    pub has_data: bool,
}

/// The change rule, in one place for every adapter: an id never stored (or
/// only claimed for a lookup) is created; stored with another content hash,
/// updated; with the same hash, unchanged (`None`).
pub(crate) fn classify_change(held: Option<Held<'_>>, new_hash: &str) -> Option<ChangeKind> {
    match held {
        None
        | Some(Held {
            has_data: false, ..
        }) => Some(ChangeKind::Created),
        Some(Held { hash, .. }) if hash != new_hash => Some(ChangeKind::Updated),
        Some(_) => None,
    }
}

/// The change a page brings for one record, in one place for every
/// adapter: [`classify_change`], with the hash it replaces.
pub(crate) fn change_of(held: Option<Held<'_>>, record: &Record, hash: &str) -> Option<Change> {
    classify_change(held, hash).map(|kind| Change {
        kind,
        record: record.clone(),
        hash: hash.to_string(),
        prev_hash: held.filter(|h| h.has_data).map(|h| h.hash.to_string()),
    })
}

/// The lookup-claim rule, in one place for every adapter: an id may be
/// claimed when it was never looked up, was last looked up at or before
/// `cutoff` (`now - min_relookup`), or was claimed by `claimer` itself.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn lookup_claimable(
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
    /// New and changed records, to trigger workflows with.
    pub changes: Vec<Change>,
    pub(crate) records: Vec<(Record, String)>,
    /// first_seen and last_looked_up of records already stored.
    pub(crate) prior: std::collections::HashMap<String, (Timestamp, Option<Timestamp>)>,
}

/// The record store port: synced records, sync state, lookup claims,
/// quarantine; and the Data Source outbox beside them (its own port,
/// [`outbox::Outbox`], which every record store also implements).
#[async_trait]
pub trait RecordStore: outbox::Outbox + Send + Sync {
    /// Compares a page with what is stored: which records are new or
    /// changed by content hash. Writes nothing.
    async fn diff(&self, key: &Tenant, record_type: &str, records: &[Record]) -> Result<PageDiff>;

    /// Writes the page: changed records with their new content and hash,
    /// unchanged ones with a new `last_synced`.
    async fn commit(
        &self,
        key: &Tenant,
        record_type: &str,
        diff: &PageDiff,
        now: Timestamp,
    ) -> Result<()>;

    /// [`RecordStore::diff`] then [`RecordStore::commit`].
    async fn upsert(
        &self,
        key: &Tenant,
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
        key: &Tenant,
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
        key: &Tenant,
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
        key: &Tenant,
        record_type: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>>;

    /// How many records of a type have been seen.
    async fn count(&self, key: &Tenant, record_type: &str) -> Result<u64>;

    /// The state of one sync of one connection (default when never run).
    async fn sync_state(&self, key: &Tenant, sync: &str) -> Result<SyncState>;

    /// Sets records aside (see [`Quarantined`]); an entry with the same
    /// [`Quarantined::entry_key`] is replaced.
    async fn quarantine(&self, key: &Tenant, items: &[Quarantined]) -> Result<()>;

    /// Quarantined records of a connection, newest first.
    async fn quarantined(&self, key: &Tenant, limit: u32) -> Result<Vec<Quarantined>>;

    /// Takes the sync's lease for `job_id` until `until`, if it is free at
    /// `now` (or already held by `job_id`), and records `last_started` when
    /// `starting`. Returns false when another live job holds it.
    async fn take_sync_lease(
        &self,
        key: &Tenant,
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
        key: &Tenant,
        sync: &str,
        job_id: &str,
        update: SyncFinish,
    ) -> Result<bool>;
}

/// What a finished sync run records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncFinish {
    /// The run completed at this time.
    pub completed_at: Option<Timestamp>,
    /// A new high-water mark.
    pub high_water: Option<Timestamp>,
    /// Pages the run took.
    pub pages: Option<u64>,
    /// The run gave up: when, and why.
    pub failed: Option<(Timestamp, String)>,
    /// The API's real page size, when a probe found it.
    pub api_page_size: Option<u32>,
    /// A probe found a short first page of this length to be the whole
    /// listing, at this time.
    pub probed_short_page: Option<(u32, Timestamp)>,
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
