//! The scheduler: on every tick (an EventBridge schedule), enqueue the syncs
//! that are due by their configured frequency. Starting a sync takes its
//! lease first, so a sync never runs twice at once however often ticks fire
//! or overlap.

use super::settings::chrono as dur;
use super::{sync_name, SyncPayload};
use crate::error::Result;
use crate::job::{JobEnvelope, JobKind};
use crate::services::Services;

/// Starts one sync of `org` now if nobody runs it: takes the lease for a new
/// job and enqueues it. Returns the job, or `None` when it already runs.
pub async fn start_sync(
    svc: &Services,
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
    if !svc
        .store
        .take_sync_lease(&key, &sync, &job.id, now, now + svc.sync_lease, true)
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
    tracing::info!(%sync, org, job = %job.id, adhoc, "sync started");
    Ok(Some(job))
}

/// One scheduler tick: every due sync of every connection is started.
pub async fn tick(svc: &Services) -> Result<Vec<JobEnvelope>> {
    let now = svc.clock.now();
    let mut started = Vec::new();
    for org in svc.orgs().map(str::to_string).collect::<Vec<_>>() {
        let key = svc.key(&org);
        for (record_type, sync) in &svc.config.syncs {
            let schedules = [
                (
                    JobKind::CompleteTransfer,
                    sync.complete_transfer.as_ref().map(|t| t.every),
                ),
                (
                    JobKind::RecentRecords,
                    sync.recent.as_ref().map(|r| r.every),
                ),
            ];
            for (kind, every) in schedules {
                let Some(every) = every else { continue };
                let state = svc
                    .store
                    .sync_state(&key, &sync_name(kind, record_type))
                    .await?;
                let due = state.last_started.is_none_or(|t| now >= t + dur(every));
                if due {
                    if let Some(job) = start_sync(svc, &org, kind, record_type, false).await? {
                        started.push(job);
                    }
                }
            }
        }
    }
    Ok(started)
}
