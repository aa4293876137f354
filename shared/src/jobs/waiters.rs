//! Jobs parked for a concurrency slot, so a slot that frees is handed to
//! the job that waited longest instead of being found by polling (#30).
//!
//! A job refused only because `max_concurrent` calls were in flight is
//! restarted as usual — its next generation goes on the queue — but with
//! its wake-up pushed back by [`SLOT_BACKSTOP_GRACE_SECS`] (a *backstop*),
//! and it is parked in its tenant's line here. When a job of that tenant
//! that gave a slot back ends — of any kind: a slot is the org's, whoever
//! frees it — the runtime pops the oldest waiter and sends that same
//! generation again, to its kind's queue, with no delay. Whichever copy
//! arrives first runs; the job ledger drops the other (the generation is
//! done, or a newer one exists).
//!
//! The queue therefore always holds every job: the line only ever makes a
//! wake-up earlier. A pop whose send fails, a line the store lost, a holder
//! that crashed before handing its slot on, a runtime with no queue for
//! the waiter's kind — each costs the waiter its backstop, never the job. What it
//! costs when it works: one parked entry written and one popped per
//! refusal, and the backstop copy, delivered later and dropped by the
//! ledger without touching the budget.

use crate::core::clock::Timestamp;
use crate::core::error::Result;
use crate::core::tenant::Tenant;
use crate::jobs::envelope::JobEnvelope;
use async_trait::async_trait;

/// How much later than its paced time a parked job's queued copy is
/// delivered: the time a handoff has to come first. (At most SQS's 900 s
/// from the refusal.)
pub const SLOT_BACKSTOP_GRACE_SECS: u32 = 60;

/// Where a parked job sorts in its line: by the time it was parked, then
/// its id and generation (unique, and a re-park of the same job is a new
/// entry behind the others).
pub(crate) fn entry_key(parked_at: Timestamp, job: &JobEnvelope) -> String {
    format!(
        "{:013}#{}#{}",
        crate::core::clock::to_millis(parked_at).max(0),
        job.id,
        job.generation
    )
}

/// The pop rule, one for every adapter: a waiter whose backstop has come
/// (`due <= now`) is not woken — its queued copy is delivered or on its
/// way, and a second copy would only be dropped by the ledger. Such an
/// entry is removed as the line is read.
pub(crate) fn worth_waking(due: Timestamp, now: Timestamp) -> bool {
    due > now
}

/// The lines of parked jobs, one per tenant, every kind in it.
///
/// Lines are scoped by [`Tenant`]: two organizations whose job ids
/// coincide never pop each other's jobs.
#[async_trait]
pub trait SlotWaiters: Send + Sync {
    /// Parks `job` (the next generation, whose copy is on the queue until
    /// `due`) at the back of its tenant's line.
    async fn park(
        &self,
        tenant: &Tenant,
        job: &JobEnvelope,
        now: Timestamp,
        due: Timestamp,
    ) -> Result<()>;

    /// Removes and returns the longest-parked job of `tenant` that is
    /// [`worth_waking`] at `now`, removing on the way the entries that are
    /// not (and any that no longer parse). `None`: nobody waits. Atomic per
    /// entry: two concurrent pops never return the same job.
    async fn pop_oldest(&self, tenant: &Tenant, now: Timestamp) -> Result<Option<JobEnvelope>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::envelope::JobKind;
    use chrono::{TimeZone, Utc};

    #[test]
    fn lines_sort_by_park_time_then_job() {
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
        let a = JobEnvelope::new(JobKind::ActionHttp, "o", "a", serde_json::json!({}), t);
        let b = JobEnvelope::new(JobKind::ActionHttp, "o", "a", serde_json::json!({}), t);
        let later = t + chrono::Duration::milliseconds(1);
        assert!(entry_key(t, &a) < entry_key(later, &b));
        assert!(entry_key(t, &b) < entry_key(later, &a));
        assert_ne!(entry_key(t, &a), entry_key(t, &b));
        // Ten thousand years of milliseconds still sort as text.
        assert_eq!(entry_key(t, &a).find('#'), Some(13));
        assert!(worth_waking(later, t) && !worth_waking(t, t));
    }
}
