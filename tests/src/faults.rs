//! Fault injection at named points.
//!
//! Wrappers around the real adapters ([`FaultyStore`], [`FaultyQuota`]) and
//! the queue wrapper in [`crate::sync_world`] call [`Faults::check`] with
//! the name of the operation they are about to perform (`store.commit`,
//! `quota.acquire`, `ledger.settle`, `queue.send`, …). A planned fault
//! fires on the Nth call of that point, optionally only while a job of one
//! kind runs (the driver sets the kind for each job's task):
//!
//! - [`Fault::Fail`]: the operation returns an error, retryable or permanent,
//!   without reaching the store;
//! - [`Fault::Crash`]: the invocation is abandoned right there (the task
//!   panics; the driver treats it as a Lambda that died): nothing after the
//!   point runs, nothing is settled or acknowledged.

use async_trait::async_trait;
use metered::core::Disposition;
use metered::core::StoredRecord;
use metered::jobs::{ActionBegin, ActionLedger};
use metered::jobs::{Claim, JobEnvelope, JobLedger, SlotWaiters};
use metered::quota::{Acquire, Grant, Limits, QuotaKey, QuotaState, QuotaStore, UsageEntry};
use metered::store::RowIndex;
use metered::store::{Chunk, Outbox, OutboxRow, OutboxState, RowWrite};
use metered::store::{PageDiff, Quarantined, RecordStore, SyncFinish, SyncState};
use metered::JobKind;
use metered::Record;
use metered::Timestamp;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What happens at a planned point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with a store error of this disposition.
    Fail(Disposition),
    /// The invocation stops dead at this point.
    Crash,
}

#[derive(Debug, Clone)]
struct Planned {
    point: String,
    kind: Option<JobKind>,
    nth: u64,
    fault: Fault,
}

tokio::task_local! {
    /// The kind of job the current task runs (set by the driver).
    pub static RUNNING: JobKind;
}

/// The message a crash panics with; the driver recognises it.
pub const CRASH: &str = "injected crash";

/// Keeps injected crashes out of the test output (they are expected; the
/// driver counts them); every other panic is reported as usual.
pub fn quiet_injected_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&CRASH) {
                default(info);
            }
        }));
    });
}

/// A plan of faults and a count of every point's calls.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<Vec<Planned>>,
    hits: Mutex<BTreeMap<(String, Option<JobKind>), u64>>,
    fired: Mutex<Vec<String>>,
    /// The seeded scheduler every point yields to, in a simulation.
    sched: std::sync::OnceLock<Arc<crate::simulation::sched::Sched>>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Plans `fault` on the `nth` (1-based) call of `point`, counting only
    /// calls made while a job of `kind` runs (any job when `None`).
    pub fn at(&self, point: &str, kind: Option<JobKind>, nth: u64, fault: Fault) {
        self.plan.lock().unwrap().push(Planned {
            point: point.into(),
            kind,
            nth,
            fault,
        });
    }

    /// Calls of `point` so far (any kind).
    pub fn hits(&self, point: &str) -> u64 {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, k), _)| p == point && k.is_none())
            .map(|(_, n)| *n)
            .sum()
    }

    /// Descriptions of the faults that fired, in order.
    pub fn fired(&self) -> Vec<String> {
        self.fired.lock().unwrap().clone()
    }

    /// Makes every point a place where the seeded scheduler may run
    /// another job first (or crash this one): see [`crate::simulation`].
    pub fn yield_to(&self, sched: Arc<crate::simulation::sched::Sched>) {
        let _ = self.sched.set(sched);
    }

    /// A port call at `point`: yields to the scheduler (in a simulation),
    /// then counts the call and applies the fault planned for it.
    pub async fn enter(&self, point: &'static str) -> metered::Result<()> {
        if let Some(sched) = self.sched.get() {
            sched.yield_point(point).await;
        }
        self.check(point)
    }

    /// [`Faults::enter`] for [`Faults::check_on`].
    pub async fn enter_on(
        &self,
        point: &'static str,
        org: &str,
        record_type: &str,
    ) -> metered::Result<()> {
        if let Some(sched) = self.sched.get() {
            sched.yield_point(point).await;
        }
        self.check_on(point, org, record_type)
    }

    /// Counts a call of `point` and applies the fault planned for it.
    pub fn check(&self, point: &str) -> metered::Result<()> {
        Self::apply(point, self.next(point))
    }

    fn apply(point: &str, fault: Option<Fault>) -> metered::Result<()> {
        match fault {
            None => Ok(()),
            Some(Fault::Crash) => std::panic::panic_any(CRASH),
            Some(Fault::Fail(disposition)) => Err(metered::Error::Store {
                operation: "injected",
                message: format!("injected failure at {point}"),
                disposition,
            }),
        }
    }

    /// Like [`Faults::check`], and counts the call as well under the point
    /// qualified by what it works on, `point[org/record type]`, so a test
    /// can aim at one org's Nth page whatever order the orgs run in.
    pub fn check_on(&self, point: &str, org: &str, record_type: &str) -> metered::Result<()> {
        let general = self.next(point);
        let qualified = self.next(&format!("{point}[{org}/{record_type}]"));
        Self::apply(point, general.or(qualified))
    }

    /// Counts a call of `point` and returns the fault planned for it, if
    /// any (for the driver, which crashes by not acknowledging).
    pub fn next(&self, point: &str) -> Option<Fault> {
        let kind = RUNNING.try_with(|k| *k).ok();
        let fault = {
            let mut hits = self.hits.lock().unwrap();
            let any = {
                let n = hits.entry((point.to_string(), None)).or_default();
                *n += 1;
                *n
            };
            let of_kind = kind.map(|k| {
                let n = hits.entry((point.to_string(), Some(k))).or_default();
                *n += 1;
                *n
            });
            self.plan
                .lock()
                .unwrap()
                .iter()
                .find(|p| {
                    p.point == point
                        && match p.kind {
                            None => p.nth == any,
                            Some(k) => kind == Some(k) && of_kind == Some(p.nth),
                        }
                })
                .map(|p| p.fault)
        };
        if let Some(fault) = fault {
            let what = format!("{fault:?} at {point} ({kind:?})");
            tracing::warn!(%what, "fault injected");
            self.fired.lock().unwrap().push(what);
        }
        fault
    }
}

/// The record store, job ledger and action ledger of one adapter, with
/// faults at every operation.
pub struct FaultyStore<S> {
    pub inner: Arc<S>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl<S: RecordStore + 'static> RecordStore for FaultyStore<S> {
    async fn diff(
        &self,
        key: &QuotaKey,
        rt: &str,
        records: &[Record],
    ) -> metered::Result<PageDiff> {
        self.faults.enter("store.diff").await?;
        self.inner.diff(key, rt, records).await
    }
    async fn commit(
        &self,
        key: &QuotaKey,
        rt: &str,
        diff: &PageDiff,
        now: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter_on("store.commit", &key.org, rt).await?;
        self.inner.commit(key, rt, diff, now).await
    }
    async fn get(
        &self,
        key: &QuotaKey,
        rt: &str,
        ids: &[String],
    ) -> metered::Result<Vec<StoredRecord>> {
        self.faults.enter("store.get").await?;
        self.inner.get(key, rt, ids).await
    }
    async fn claim_lookups(
        &self,
        key: &QuotaKey,
        rt: &str,
        ids: &[String],
        claimer: &str,
        now: Timestamp,
        min: chrono::Duration,
    ) -> metered::Result<Vec<String>> {
        self.faults.enter("store.claim_lookups").await?;
        let claimed = self
            .inner
            .claim_lookups(key, rt, ids, claimer, now, min)
            .await?;
        // A crash right after the claim was written.
        self.faults.enter("store.claim_lookups.after").await?;
        Ok(claimed)
    }
    async fn list(
        &self,
        key: &QuotaKey,
        rt: &str,
        after: Option<&str>,
        limit: u32,
    ) -> metered::Result<Vec<StoredRecord>> {
        self.faults.enter("store.list").await?;
        self.inner.list(key, rt, after, limit).await
    }
    async fn count(&self, key: &QuotaKey, rt: &str) -> metered::Result<u64> {
        self.faults.enter("store.count").await?;
        self.inner.count(key, rt).await
    }
    async fn sync_state(&self, key: &QuotaKey, sync: &str) -> metered::Result<SyncState> {
        self.faults.enter("store.sync_state").await?;
        self.inner.sync_state(key, sync).await
    }
    async fn take_sync_lease(
        &self,
        key: &QuotaKey,
        sync: &str,
        job: &str,
        now: Timestamp,
        until: Timestamp,
        starting: bool,
    ) -> metered::Result<bool> {
        self.faults.enter("store.take_sync_lease").await?;
        self.inner
            .take_sync_lease(key, sync, job, now, until, starting)
            .await
    }
    async fn finish_sync(
        &self,
        key: &QuotaKey,
        sync: &str,
        job: &str,
        update: SyncFinish,
    ) -> metered::Result<bool> {
        self.faults.enter("store.finish_sync").await?;
        self.inner.finish_sync(key, sync, job, update).await
    }
    async fn quarantine(&self, key: &QuotaKey, items: &[Quarantined]) -> metered::Result<()> {
        self.faults.enter("store.quarantine").await?;
        self.inner.quarantine(key, items).await
    }
    async fn quarantined(&self, key: &QuotaKey, limit: u32) -> metered::Result<Vec<Quarantined>> {
        self.faults.enter("store.quarantined").await?;
        self.inner.quarantined(key, limit).await
    }
}

/// The outbox, with faults at every write: `outbox.put`, `outbox.begin`
/// (fails before the chunk is fixed), `outbox.begin.after` (a crash right
/// after it was fixed, before the call) and `outbox.ack` (before the rows
/// leave: the API has the chunk, the outbox still holds it).
#[async_trait]
impl<S: RecordStore + 'static> Outbox for FaultyStore<S> {
    async fn put_rows_indexed(
        &self,
        key: &QuotaKey,
        ds: &str,
        rows: &[RowWrite],
        index: Option<&RowIndex>,
        now: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("outbox.put").await?;
        self.inner.put_rows_indexed(key, ds, rows, index, now).await
    }
    async fn pending_rows(
        &self,
        key: &QuotaKey,
        ds: &str,
        limit: u32,
    ) -> metered::Result<Vec<OutboxRow>> {
        self.faults.enter("outbox.pending_rows").await?;
        self.inner.pending_rows(key, ds, limit).await
    }
    async fn pending_count(&self, key: &QuotaKey, ds: &str) -> metered::Result<u64> {
        self.faults.enter("outbox.pending_count").await?;
        self.inner.pending_count(key, ds).await
    }
    async fn outbox_state(&self, key: &QuotaKey, ds: &str) -> metered::Result<OutboxState> {
        self.faults.enter("outbox.state").await?;
        self.inner.outbox_state(key, ds).await
    }
    async fn begin_chunk(
        &self,
        key: &QuotaKey,
        ds: &str,
        rows: &[OutboxRow],
    ) -> metered::Result<Option<Chunk>> {
        self.faults.enter("outbox.begin").await?;
        let chunk = self.inner.begin_chunk(key, ds, rows).await?;
        self.faults.enter("outbox.begin.after").await?;
        Ok(chunk)
    }
    async fn ack_chunk(
        &self,
        key: &QuotaKey,
        ds: &str,
        chunk: &Chunk,
        now: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("outbox.ack").await?;
        self.inner.ack_chunk(key, ds, chunk, now).await
    }
    async fn mark_flush_due(
        &self,
        key: &QuotaKey,
        ds: &str,
        due: Timestamp,
        before: Timestamp,
    ) -> metered::Result<bool> {
        self.faults.enter("outbox.mark").await?;
        self.inner.mark_flush_due(key, ds, due, before).await
    }
    async fn clear_flush_due(
        &self,
        key: &QuotaKey,
        ds: &str,
        due: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("outbox.clear").await?;
        self.inner.clear_flush_due(key, ds, due).await
    }
    async fn refuse_chunk(
        &self,
        key: &QuotaKey,
        ds: &str,
        chunk: &Chunk,
        refusal: &metered::store::Refusal,
        now: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("outbox.refuse").await?;
        self.inner.refuse_chunk(key, ds, chunk, refusal, now).await
    }
    async fn set_probe(
        &self,
        key: &QuotaKey,
        ds: &str,
        probe: Option<&metered::store::Probe>,
    ) -> metered::Result<()> {
        self.faults.enter("outbox.probe").await?;
        self.inner.set_probe(key, ds, probe).await
    }
    async fn refused_rows(
        &self,
        key: &QuotaKey,
        ds: &str,
        limit: u32,
    ) -> metered::Result<Vec<metered::store::RefusedRow>> {
        self.inner.refused_rows(key, ds, limit).await
    }
    async fn retry_refused(
        &self,
        key: &QuotaKey,
        ds: &str,
        ids: Option<&[String]>,
        now: Timestamp,
    ) -> metered::Result<u64> {
        self.inner.retry_refused(key, ds, ids, now).await
    }
    async fn drop_refused(
        &self,
        key: &QuotaKey,
        ds: &str,
        ids: Option<&[String]>,
    ) -> metered::Result<u64> {
        self.inner.drop_refused(key, ds, ids).await
    }
}

#[async_trait]
impl<S: JobLedger + 'static> JobLedger for FaultyStore<S> {
    async fn claim(
        &self,
        key: &QuotaKey,
        job: &str,
        generation: u32,
        now: Timestamp,
        until: Timestamp,
    ) -> metered::Result<Claim> {
        self.faults.enter("ledger.claim").await?;
        self.inner.claim(key, job, generation, now, until).await
    }
    async fn settle(
        &self,
        key: &QuotaKey,
        job: &str,
        generation: u32,
        done: bool,
    ) -> metered::Result<()> {
        self.faults.enter("ledger.settle").await?;
        self.inner.settle(key, job, generation, done).await
    }
}

#[async_trait]
impl<S: SlotWaiters + 'static> SlotWaiters for FaultyStore<S> {
    async fn park(
        &self,
        tenant: &QuotaKey,
        job: &JobEnvelope,
        now: Timestamp,
        due: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("slots.park").await?;
        self.inner.park(tenant, job, now, due).await
    }
    async fn pop_oldest(
        &self,
        tenant: &QuotaKey,
        now: Timestamp,
    ) -> metered::Result<Option<JobEnvelope>> {
        self.faults.enter("slots.pop").await?;
        self.inner.pop_oldest(tenant, now).await
    }
}

#[async_trait]
impl<S: ActionLedger + 'static> ActionLedger for FaultyStore<S> {
    async fn begin_action(
        &self,
        scope: &QuotaKey,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> metered::Result<ActionBegin> {
        self.faults.enter("actions.begin").await?;
        self.inner.begin_action(scope, key, now, until).await
    }
    async fn finish_action(
        &self,
        scope: &QuotaKey,
        key: &str,
        now: Timestamp,
    ) -> metered::Result<()> {
        self.faults.enter("actions.finish").await?;
        self.inner.finish_action(scope, key, now).await
    }
    async fn abandon_action(&self, scope: &QuotaKey, key: &str) -> metered::Result<()> {
        self.faults.enter("actions.abandon").await?;
        self.inner.abandon_action(scope, key).await
    }
}

/// A quota store with faults at every operation.
pub struct FaultyQuota {
    pub inner: Arc<dyn QuotaStore>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl QuotaStore for FaultyQuota {
    async fn acquire(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        cost: u32,
        now: Timestamp,
    ) -> metered::Result<Acquire> {
        self.faults.enter("quota.acquire").await?;
        self.inner.acquire(key, limits, cost, now).await
    }
    async fn release(&self, grant: &Grant, used: u32) -> metered::Result<()> {
        self.faults.enter("quota.release").await?;
        self.inner.release(grant, used).await
    }
    async fn renew(&self, grant: &Grant, until: Timestamp) -> metered::Result<()> {
        self.faults.enter("quota.renew").await?;
        self.inner.renew(grant, until).await
    }
    async fn block_until(&self, key: &QuotaKey, until: Timestamp) -> metered::Result<()> {
        self.faults.enter("quota.block_until").await?;
        self.inner.block_until(key, until).await
    }
    async fn raise_window(
        &self,
        key: &QuotaKey,
        window: &str,
        at_least: u64,
    ) -> metered::Result<u64> {
        self.faults.enter("quota.raise").await?;
        self.inner.raise_window(key, window, at_least).await
    }
    async fn record_usage(&self, entries: &[UsageEntry]) -> metered::Result<()> {
        self.faults.enter("quota.usage").await?;
        self.inner.record_usage(entries).await
    }
    async fn usage(
        &self,
        key: &QuotaKey,
        day: chrono::NaiveDate,
    ) -> metered::Result<Vec<UsageEntry>> {
        self.inner.usage(key, day).await
    }
    async fn state(
        &self,
        key: &QuotaKey,
        limits: &Limits,
        now: Timestamp,
    ) -> metered::Result<QuotaState> {
        self.inner.state(key, limits, now).await
    }
    async fn health(&self, key: &QuotaKey) -> metered::Result<metered::quota::Health> {
        self.faults.enter("quota.health").await?;
        self.inner.health(key).await
    }
    async fn swap_health(
        &self,
        key: &QuotaKey,
        expected: &metered::quota::Health,
        new: &metered::quota::Health,
    ) -> metered::Result<bool> {
        self.faults.enter("quota.swap_health").await?;
        self.inner.swap_health(key, expected, new).await
    }
    async fn resume(&self, key: &QuotaKey) -> metered::Result<()> {
        self.inner.resume(key).await
    }
}
