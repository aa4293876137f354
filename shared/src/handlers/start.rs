//! Starting work: the one way a sync is started, whoever starts it (the
//! scheduler's tick, an ad-hoc request, a lookup storm that turns into a
//! complete transfer, a workflow whose related records are missing). Its own
//! file so that the handlers that start syncs need not import each other.

use crate::core::error::Result;
use crate::handlers::context::AppContext;
use crate::handlers::payload::{sync_name, SyncPayload};
use crate::jobs::envelope::{JobEnvelope, JobKind};

/// Starts one sync of `org` now if nobody runs it: takes the lease for a new
/// job and enqueues it. Returns the job, or `None` when it already runs.
pub async fn start_sync(
    svc: &AppContext,
    org: &str,
    kind: JobKind,
    record_type: &str,
    adhoc: bool,
) -> Result<Option<JobEnvelope>> {
    let now = svc.clock.now();
    let key = svc.key(org);
    let sync = sync_name(kind, record_type);
    let payload = serde_json::to_value(SyncPayload {
        record_type: record_type.to_string(),
        adhoc,
    })?;
    let job = JobEnvelope::new(kind, org, &svc.config.app.name, payload, now);
    // The lease first (no twin can start), the start only after the send.
    if !svc
        .store
        .take_sync_lease(&key, &sync, &job.id, now, now + svc.sync_lease, false)
        .await?
    {
        return Ok(None);
    }
    if let Err(e) = svc.queues.send(&job, 0).await {
        // Do not strand the lease on a job that was never sent.
        let _ = svc
            .store
            .finish_sync(&key, &sync, &job.id, Default::default())
            .await;
        return Err(e);
    }
    // The job is on its way: now the period counts from here. If this
    // write fails, the job runs anyway and the next tick finds its lease.
    if let Err(e) = svc
        .store
        .take_sync_lease(&key, &sync, &job.id, now, now + svc.sync_lease, true)
        .await
    {
        tracing::warn!(%sync, org, error = %e, "sync sent, but its start could not be recorded");
    }
    tracing::info!(%sync, org, job = %job.id, adhoc, "sync started");
    Ok(Some(job))
}
