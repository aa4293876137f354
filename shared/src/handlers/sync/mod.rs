//! The sync handlers: complete transfer, recent record lookup, primary key
//! lookup, and the scheduler that starts them. Each is a
//! [`crate::jobs::runtime::JobHandler`]; the Lambda functions and the local runner
//! run the same code.

pub(crate) mod checkpoint;
pub(crate) mod estimate;
pub(crate) mod listing;
pub(crate) mod pk_lookup;

use crate::core::clock::Timestamp;
use crate::handlers::context::AppContext;
use crate::handlers::payload::{
    sync_name, ChangedRecord, PkLookupPayload, SyncPayload, TriggerPayload,
};
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::{JobContext, JobHandler};
use crate::store::Change;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A string or number at `pointer`, as an id.
pub(crate) fn id_at(data: &serde_json::Value, pointer: &str) -> Option<String> {
    match data.pointer(pointer)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Splits what a page or lookup brought into the records to store and the
/// ones to quarantine (no id, too large for the store): one bad record never
/// fails its page. The quarantined ones are written (and logged) here.
pub(crate) async fn set_aside(
    svc: &AppContext,
    key: &crate::quota::QuotaKey,
    source: &str,
    record_type: &str,
    page: crate::connector::Page,
) -> crate::core::error::Result<Vec<crate::core::record::Record>> {
    let now = svc.clock.now();
    let mut bad: Vec<crate::store::Quarantined> = page
        .unreadable
        .into_iter()
        .map(|u| crate::store::Quarantined::new(source, record_type, None, u.reason, &u.data, now))
        .collect();
    let mut keep = Vec::with_capacity(page.records.len());
    for record in page.records {
        match crate::store::unstorable(&record) {
            Some(why) => bad.push(crate::store::Quarantined::new(
                source,
                record_type,
                Some(record.id.clone()),
                why,
                &record.data,
                now,
            )),
            None => keep.push(record),
        }
    }
    if !bad.is_empty() {
        svc.store.quarantine(key, &bad).await?;
        svc.metrics.add(
            &key.app,
            &key.org,
            crate::core::metrics::Counter::RecordsQuarantined,
            bad.len() as u64,
        );
        for q in &bad {
            tracing::warn!(
                source,
                record_type,
                record_id = q.record_id.as_deref().unwrap_or("(none)"),
                reason = %q.reason,
                "record quarantined; the rest of the page goes on"
            );
        }
    }
    Ok(keep)
}

/// Where a served page (or lookup answer) goes, and how its follow-ups go
/// out (see [`Followups`]).
#[derive(Debug)]
pub(crate) struct Intake<'a> {
    /// The sync that fetched it (quarantined records name it).
    pub source: &'a str,
    /// The record type it is of.
    pub record_type: &'a str,
    /// [`Followups::tag`].
    pub tag: String,
    /// [`Followups::last`].
    pub last: bool,
    /// [`Followups::recheck_unchanged`].
    pub recheck_unchanged: bool,
}

/// What storing one page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Records stored (new, changed or unchanged).
    pub records: u64,
    /// Of those, new or changed.
    pub changed: u64,
    /// Records set aside (no id, too large).
    pub quarantined: u64,
}

/// Stores a served page: sets aside what cannot be stored, compares the
/// rest with the store, sends the follow-ups (lookups into `pending`,
/// full blocks out; the workflow trigger) and only then commits, so a
/// crash between the two repeats follow-ups and never loses one.
pub(crate) async fn take_in(
    svc: &AppContext,
    job: &JobEnvelope,
    intake: Intake<'_>,
    page: crate::connector::Page,
    pending: &mut BTreeMap<String, Vec<String>>,
) -> crate::Result<Stored> {
    let key = svc.key(&job.org);
    let served = page.served() as u64;
    let records = set_aside(svc, &key, intake.source, intake.record_type, page).await?;
    let diff = svc.store.diff(&key, intake.record_type, &records).await?;
    let followups = Followups {
        record_type: intake.record_type,
        records: &records,
        changes: &diff.changes,
        tag: intake.tag,
        last: intake.last,
        recheck_unchanged: intake.recheck_unchanged,
    };
    enqueue_followups(svc, job, &followups, pending).await?;
    svc.store
        .commit(&key, intake.record_type, &diff, svc.clock.now())
        .await?;
    let changed = diff.changes.len() as u64;
    svc.metrics.add(
        &key.app,
        &key.org,
        crate::core::metrics::Counter::RecordsSynced,
        changed,
    );
    Ok(Stored {
        records: records.len() as u64,
        changed,
        quarantined: served - records.len() as u64,
    })
}

/// Bulk lookup calls one PK lookup job makes at most.
pub(crate) const LOOKUP_CALLS_PER_JOB: usize = 10;

/// Ids per lookup call for `target`: the configured bulk size, within the
/// API's maximum.
pub(crate) fn keys_per_call(svc: &AppContext, org: &str, target: &str) -> usize {
    let api_max = svc
        .connectors
        .get(org)
        .map_or(1, |c| c.max_ids_per_call(target))
        .max(1);
    svc.config
        .sync(target)
        .pk_lookup
        .max_keys_per_call
        .map_or(api_max, |k| (k as usize).clamp(1, api_max))
}

/// Whether `pk`'s policy says to look an id up, given what the store holds
/// of it: an unknown id always; a seen one never for `unseen_only`, and for
/// `seen_and_unseen` when not synced after `fresh_after`; none for `never`.
fn wants_lookup(
    pk: &crate::config::sync::PkLookupSettings,
    stored: Option<&crate::core::record::StoredRecord>,
    fresh_after: Timestamp,
) -> bool {
    use crate::config::sync::LookupPolicy;
    let Some(r) = stored else {
        return true;
    };
    match pk.policy {
        LookupPolicy::UnseenOnly => !r.seen(),
        LookupPolicy::SeenAndUnseen => {
            !(r.seen() && r.last_synced.is_some_and(|t| t > fresh_after))
        }
        LookupPolicy::Never => false,
    }
}

/// The ids (deduplicated) that `pk`'s policy says to look up, given what the
/// store holds (see [`wants_lookup`]).
pub(crate) async fn needing_lookup(
    svc: &AppContext,
    key: &crate::quota::QuotaKey,
    record_type: &str,
    pk: &crate::config::sync::PkLookupSettings,
    ids: Vec<String>,
    now: Timestamp,
) -> crate::Result<Vec<String>> {
    // An id longer than the store keeps can never be stored: not looked up.
    let ids: BTreeSet<String> = ids
        .into_iter()
        .filter(|id| !id.is_empty() && id.len() <= crate::store::MAX_ID_BYTES)
        .collect();
    let ids: Vec<String> = ids.into_iter().collect();
    let stored = svc.store.get(key, record_type, &ids).await?;
    let stored: BTreeMap<&str, _> = stored.iter().map(|r| (r.id.as_str(), r)).collect();
    let fresh_after = now - crate::config::sync::chrono(pk.min_relookup);
    Ok(ids
        .into_iter()
        .filter(|id| wants_lookup(pk, stored.get(id.as_str()).copied(), fresh_after))
        .collect())
}

/// What a stored page (or lookup call) causes downstream: the PK lookups
/// of the records it references, and a workflow trigger for its changes.
#[derive(Debug)]
pub(crate) struct Followups<'a> {
    /// The record type the page is of.
    pub record_type: &'a str,
    /// The whole page, unchanged records too (see `recheck_unchanged`).
    pub records: &'a [crate::core::record::Record],
    /// What the page changed in the store.
    pub changes: &'a [Change],
    /// Makes idempotency keys unique per page of the job, so a repeated
    /// page repeats its keys (`p3`, `c0`, `handoff`).
    pub tag: String,
    /// The job's last page: send the ids still pending, not only full blocks.
    pub last: bool,
    /// Re-check the claims of the page's unchanged records (see
    /// [`enqueue_followups`]).
    pub recheck_unchanged: bool,
}

/// Per referenced record type: the ids the page's changes reference
/// (`.0`), and the ids its unchanged records reference that the changes do
/// not (`.1`, only with `recheck_unchanged`). Types whose lookups are off
/// (`active` says no) are left out.
pub(crate) fn referenced_ids<'a>(
    foreign_keys: &'a BTreeMap<String, String>,
    active: impl Fn(&str) -> bool,
    page: &Followups<'_>,
) -> BTreeMap<&'a str, (BTreeSet<String>, BTreeSet<String>)> {
    let changed: BTreeSet<&str> = page.changes.iter().map(|c| c.record.id.as_str()).collect();
    let mut by_target: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for (pointer, target) in foreign_keys {
        if !active(target) {
            continue;
        }
        let (fresh, others) = by_target.entry(target.as_str()).or_default();
        fresh.extend(
            page.changes
                .iter()
                .filter_map(|c| id_at(&c.record.data, pointer)),
        );
        let unchanged = page
            .records
            .iter()
            .filter(|r| page.recheck_unchanged && !changed.contains(r.id.as_str()));
        others.extend(unchanged.filter_map(|r| id_at(&r.data, pointer)));
    }
    for (fresh, others) in by_target.values_mut() {
        others.retain(|id| !fresh.contains(id));
    }
    by_target.retain(|_, (fresh, others)| !fresh.is_empty() || !others.is_empty());
    by_target
}

/// Enqueues what new or changed records cause ([`Followups`]).
///
/// PK lookups: foreign keys of the changes, for each referenced type whose
/// lookups are on, deduplicated within the run and against the store by
/// claiming them (see [`crate::store::RecordStore::claim_lookups`]); claimed
/// ids wait in `pending` (the run's checkpoint) and go out in full blocks of
/// the bulk size, the remainder when `last` is set. So a sync's lookups cost
/// `ceil(unseen / bulk size)` calls, not one partial call per page.
///
/// `records` is the whole page. With `recheck_unchanged`, the foreign keys
/// of its unchanged records whose lookups this job claimed (claimer: the
/// job id) and that are still not done go back into `pending`. They are
/// the claims of pages that committed in an invocation that then crashed
/// before its checkpoint moved on: the redelivered message runs those pages
/// again, finds no change, and would otherwise leave the ids claimed by
/// nobody alive until `min_relookup` ends — never looked up. The claimer is
/// the job, not its page: a rerun's pages need not hold the same records
/// (a recent lookup's window is fixed anew, records come and go between
/// pages), and the seeded simulation found claims lost to exactly that when
/// they were tagged per page. On a first run of a first generation (the
/// job ledger says so) no such claim can exist, and the read is skipped:
/// steady-state pages cost no extra store read.
///
/// A workflow trigger carries the page's changes.
pub(crate) async fn enqueue_followups(
    svc: &AppContext,
    job: &JobEnvelope,
    page: &Followups<'_>,
    pending: &mut BTreeMap<String, Vec<String>>,
) -> crate::Result<()> {
    let rt = svc.config.record_type(page.record_type)?;
    let active = |target: &str| svc.config.sync(target).pk_lookup.active();
    for (target, (fresh, others)) in referenced_ids(&rt.foreign_keys, active, page) {
        let found = claimed_ids(svc, job, target, fresh, others).await?;
        let queued = pending.entry(target.to_string()).or_default();
        for id in found {
            if !queued.contains(&id) {
                queued.push(id);
            }
        }
    }
    send_lookups(svc, job, pending, &page.tag, page.last).await?;
    pending.retain(|_, ids| !ids.is_empty());
    send_trigger(svc, job, page).await
}

/// The ids of `target` this job now holds the lookup claim of: the fresh
/// ones its policy wants and that it claimed just now, and the others that
/// an earlier delivery of this job claimed and never looked up.
async fn claimed_ids(
    svc: &AppContext,
    job: &JobEnvelope,
    target: &str,
    fresh: BTreeSet<String>,
    others: BTreeSet<String>,
) -> crate::Result<Vec<String>> {
    let now = svc.clock.now();
    let key = svc.key(&job.org);
    let pk = svc.config.sync(target).pk_lookup;
    let relookup = crate::config::sync::chrono(pk.min_relookup);
    let mut found = Vec::new();
    if !fresh.is_empty() {
        let wanted =
            needing_lookup(svc, &key, target, &pk, fresh.into_iter().collect(), now).await?;
        // Claimed by this job: if a page fails before its checkpoint
        // moves on, its re-run claims the same ids again rather than
        // finding them taken (by itself) and losing them.
        found = svc
            .store
            .claim_lookups(&key, target, &wanted, &job.id, now, relookup)
            .await?;
    }
    if !others.is_empty() {
        let others: Vec<String> = others.into_iter().collect();
        let stored = svc.store.get(&key, target, &others).await?;
        found.extend(
            stored
                .into_iter()
                .filter(|r| r.lookup_claimed_by.as_deref() == Some(job.id.as_str()))
                .filter(|r| wants_lookup(&pk, Some(r), now - relookup))
                .map(|r| r.id),
        );
    }
    Ok(found)
}

/// Sends the pending ids as lookup jobs of whole bulk calls, several calls
/// each (the quota is paid once per job, and the total stays
/// `ceil(ids / bulk size)`); the remainder too when `last`.
async fn send_lookups(
    svc: &AppContext,
    job: &JobEnvelope,
    pending: &mut BTreeMap<String, Vec<String>>,
    tag: &str,
    last: bool,
) -> crate::Result<()> {
    for (target, ids) in pending.iter_mut() {
        let k = keys_per_call(svc, &job.org, target) * LOOKUP_CALLS_PER_JOB;
        let mut block = 0;
        while ids.len() >= k || (last && !ids.is_empty()) {
            let take = ids.len().min(k);
            let payload = PkLookupPayload {
                record_type: target.clone(),
                ids: ids.drain(..take).collect(),
                claimed: true,
            };
            let follow = job.follow_up(
                JobKind::PkLookup,
                serde_json::to_value(payload)?,
                format!("{}:{tag}:{target}:{block}", job.id),
                svc.clock.now(),
            );
            svc.queues.send(&follow, 0).await?;
            block += 1;
        }
    }
    Ok(())
}

/// Sends the workflow trigger for the page's changes, when there are
/// changes and a workflow queue.
async fn send_trigger(
    svc: &AppContext,
    job: &JobEnvelope,
    page: &Followups<'_>,
) -> crate::Result<()> {
    if page.changes.is_empty() || svc.queues.get(JobKind::Workflow).is_err() {
        return Ok(());
    }
    let payload = TriggerPayload {
        record_type: page.record_type.to_string(),
        changes: page
            .changes
            .iter()
            .map(|c| ChangedRecord {
                id: c.record.id.clone(),
                kind: c.kind,
                hash: c.hash.clone(),
                prev: c.prev_hash.clone(),
            })
            .collect(),
    };
    let trigger = job.follow_up(
        JobKind::Workflow,
        serde_json::to_value(payload)?,
        format!("{}:{}:workflow", job.id, page.tag),
        svc.clock.now(),
    );
    svc.queues.send(&trigger, 0).await
}

impl From<serde_json::Error> for crate::Error {
    fn from(e: serde_json::Error) -> Self {
        crate::Error::MalformedJob(e.to_string())
    }
}

/// The sync handlers behind one [`JobHandler`]: every listing and lookup
/// kind. Which kinds a process takes is the router's to say
/// ([`crate::handlers::route::Router`]).
pub(crate) struct SyncHandlers {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
}

impl SyncHandlers {
    /// Handles every sync kind.
    pub(crate) fn all(svc: Arc<AppContext>) -> Self {
        Self { svc }
    }
}

#[async_trait]
impl JobHandler for SyncHandlers {
    fn name(&self) -> &str {
        "sync"
    }

    fn accepts(&self, kind: JobKind) -> bool {
        matches!(
            kind,
            JobKind::CompleteTransfer | JobKind::RecentRecords | JobKind::PkLookup
        )
    }

    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
        let outcome = match job.kind {
            JobKind::CompleteTransfer | JobKind::RecentRecords => {
                listing::run(&self.svc, job, ctx).await
            }
            JobKind::PkLookup => pk_lookup::run(&self.svc, job, ctx).await,
            other => Outcome::Fail(format!("`{other}` is not a sync job")),
        };
        // Usage is written once per job, off the per-call path.
        if let Err(e) = self.svc.quota.flush_usage().await {
            tracing::warn!(error = %e, "usage flush failed; kept for the next flush");
        }
        outcome
    }

    /// A listing that is given up on frees its sync's lease and records the
    /// failure, so the storm guard does not start it again on every wake-up.
    async fn gave_up(&self, job: &JobEnvelope, reason: &str) {
        if !matches!(job.kind, JobKind::CompleteTransfer | JobKind::RecentRecords) {
            return;
        }
        let Ok(payload) = serde_json::from_value::<SyncPayload>(job.payload.clone()) else {
            return;
        };
        let sync = sync_name(job.kind, &payload.record_type);
        let failed = (
            self.svc.clock.now(),
            crate::core::error::bounded(reason, 500),
        );
        let finish = crate::store::SyncFinish {
            failed: Some(failed),
            ..Default::default()
        };
        if let Err(e) = self
            .svc
            .store
            .finish_sync(&self.svc.key(&job.org), &sync, &job.id, finish)
            .await
        {
            tracing::warn!(error = %e, %sync, "could not record the failed run; its lease frees when it expires");
        }
        // The same failure run after run pauses the connection.
        if let Err(e) = self
            .svc
            .quota
            .run_failed(
                &self.svc.key(&job.org),
                reason,
                self.svc.config.app.pause_after_failed_runs,
            )
            .await
        {
            tracing::warn!(error = %e, %sync, "could not count the failed run in the connection's health");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{ChangeKind, Record};
    use serde_json::json;

    fn record(id: &str, customer: &str) -> Record {
        Record {
            id: id.into(),
            updated_at: None,
            data: json!({ "id": id, "customer_id": customer, "owner": { "id": 7 } }),
        }
    }

    fn change(r: &Record) -> Change {
        Change {
            kind: ChangeKind::Updated,
            record: r.clone(),
            hash: "h".into(),
            prev_hash: None,
        }
    }

    fn page<'a>(records: &'a [Record], changes: &'a [Change], recheck: bool) -> Followups<'a> {
        Followups {
            record_type: "invoices",
            records,
            changes,
            tag: "p0".into(),
            last: false,
            recheck_unchanged: recheck,
        }
    }

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("/customer_id".to_string(), "customers".to_string()),
            ("/owner/id".to_string(), "users".to_string()),
        ])
    }

    #[test]
    fn changes_reference_fresh_ids_and_unchanged_records_only_when_rechecked() {
        let records = [record("i1", "c1"), record("i2", "c2"), record("i3", "c1")];
        let changes = [change(&records[0])];
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let keys = keys();

        let plain = referenced_ids(&keys, |_| true, &page(&records, &changes, false));
        assert_eq!(plain["customers"], (set(&["c1"]), set(&[])));
        assert_eq!(
            plain["users"],
            (set(&["7"]), set(&[])),
            "a number id is an id"
        );

        let rechecked = referenced_ids(&keys, |_| true, &page(&records, &changes, true));
        // i3 references c1 too, but c1 is already fresh: listed once.
        assert_eq!(rechecked["customers"], (set(&["c1"]), set(&["c2"])));
        assert_eq!(rechecked["users"], (set(&["7"]), set(&[])));
    }

    #[test]
    fn types_whose_lookups_are_off_and_pages_without_references_are_left_out() {
        let keys = keys();
        let records = [record("i1", "c1")];
        let changes = [change(&records[0])];
        let only_customers =
            referenced_ids(&keys, |t| t == "customers", &page(&records, &changes, true));
        assert_eq!(
            only_customers.keys().copied().collect::<Vec<_>>(),
            ["customers"]
        );
        let nothing_changed = referenced_ids(&keys, |_| true, &page(&records, &[], false));
        assert!(nothing_changed.is_empty(), "{nothing_changed:?}");
    }
}
