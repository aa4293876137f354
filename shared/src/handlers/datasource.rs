//! Data Source flushes: the rows workflows put in an outbox (see
//! `store::outbox`) leave in as few calls as the API allows.
//!
//! A flush job runs per (org, data source). It holds the outbox's lease
//! (the sync-lease rule, under the name `push:{datasource}`), then sends
//! chunks of at most `max_rows_per_call` rows, inserts and deletes in one
//! call, until what is left is less than a full call, or nothing when the
//! timed flush is due. So a Data Source is pushed at most once per `every`,
//! sooner only when a full call's worth is waiting, and each flush spends
//! `ceil(pending / max_rows_per_call)` calls.
//!
//! Exactly once per chunk: the chunk (rows, content, sequence number) is
//! recorded before the call, so its `Idempotency-Key` is fixed; a denial,
//! a transient failure or a crash leaves it in flight and the next attempt
//! sends the same body under the same key before anything else. Rows
//! leave only after the API accepted them.

use crate::config::datasource::DataSource;
use crate::connector::{CallError, SendRequest};
use crate::core::error::Result;
use crate::core::metrics::Counter;
use crate::handlers::context::AppContext;
use crate::handlers::payload::FlushPayload;
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::{delay_secs, JobContext};
use crate::store::outbox::{after_acceptance, after_refusal, cut_chunk, Refusal};
use crate::store::SyncFinish;

/// A flush that finds another holding the outbox comes back this much later.
const BUSY_RETRY_SECS: i64 = 30;

/// A timed-flush mark this long past one interval is taken for lost (its job
/// dead-lettered) and replaced, so an outbox never waits for a job that
/// will not come.
const LOST_MARK_GRACE_SECS: i64 = 900;

/// The quota source pushes spend under, as `metered usage` lists it.
pub fn push_source(datasource: &str) -> String {
    format!("datasource:{datasource}")
}

/// The lease name of a Data Source's outbox.
fn lease_name(datasource: &str) -> String {
    format!("push:{datasource}")
}

fn every(ds: &DataSource) -> chrono::Duration {
    chrono::Duration::from_std(ds.every).unwrap_or(chrono::Duration::MAX)
}

/// Enqueues a flush of `datasource` for `org`, not before `at`.
async fn send_flush(
    svc: &AppContext,
    org: &str,
    datasource: &str,
    at: crate::core::clock::Timestamp,
) -> Result<()> {
    let now = svc.clock.now();
    let mut job = JobEnvelope::new(
        JobKind::ActionDatasourcePush,
        org,
        &svc.config.app.name,
        serde_json::to_value(FlushPayload {
            datasource: datasource.to_string(),
        })?,
        now,
    );
    job.not_before = (at > now).then_some(at);
    svc.queues.send(&job, delay_secs(now, at)).await
}

/// The scheduling rule, after rows were written to an outbox (by a workflow)
/// or a flush ended: a full call's worth waiting → a flush now (when
/// `full_now`); any rows waiting → a timed flush `every` from now, unless
/// one is already marked. The scheduler's tick passes `full_now = false`: it
/// only replaces lost marks, and must not pile up flushes of an outbox that
/// waits for budget. A hosted Data Source is never flushed.
pub async fn schedule_flush(
    svc: &AppContext,
    org: &str,
    ds: &DataSource,
    full_now: bool,
) -> Result<()> {
    if ds.hosted() {
        return Ok(());
    }
    let key = svc.key(org);
    let pending = svc.store.pending_count(&key, &ds.name).await?;
    if pending == 0 {
        return Ok(());
    }
    let now = svc.clock.now();
    // A chunk in flight means a flush is at work or waiting for budget:
    // another would only wait beside it.
    if full_now
        && pending >= u64::from(ds.max_rows_per_call)
        && svc
            .store
            .outbox_state(&key, &ds.name)
            .await?
            .inflight
            .is_none()
    {
        send_flush(svc, org, &ds.name, now).await?;
    }
    let due = now + every(ds);
    let lost = now - every(ds) - chrono::Duration::seconds(LOST_MARK_GRACE_SECS);
    if svc.store.mark_flush_due(&key, &ds.name, due, lost).await? {
        tracing::debug!(datasource = %ds.name, %due, pending, "timed flush scheduled");
        send_flush(svc, org, &ds.name, due).await?;
    }
    Ok(())
}

/// Runs one flush job.
pub async fn flush(
    svc: &AppContext,
    job: &JobEnvelope,
    ctx: &JobContext,
    p: FlushPayload,
) -> Outcome {
    match try_flush(svc, job, ctx, &p.datasource).await {
        Ok(o) => o,
        Err(e) => Outcome::from_error(&e),
    }
}

async fn try_flush(
    svc: &AppContext,
    job: &JobEnvelope,
    ctx: &JobContext,
    datasource: &str,
) -> Result<Outcome> {
    let ds = svc.config.datasource(datasource)?;
    if ds.hosted() {
        // Switched to hosted while this flush waited: its rows are served
        // by Hosted GET from where they are; nothing is sent.
        tracing::info!(datasource = %ds.name, org = %job.org, "hosted Data Source: flush has nothing to push");
        return Ok(Outcome::Done);
    }
    let key = svc.key(&job.org);
    let lease = lease_name(&ds.name);
    let now = svc.clock.now();
    if !svc
        .store
        .take_sync_lease(
            &key,
            &lease,
            &job.id,
            now,
            now + JobKind::ActionDatasourcePush.deployed().lease(),
            true,
        )
        .await?
    {
        // Another flush holds the outbox; come back rather than vanish, in
        // case it stops short of what this one was sent for.
        return Ok(Outcome::wait(
            now + chrono::Duration::seconds(BUSY_RETRY_SECS),
            format!("another flush of Data Source `{}` is running", ds.name),
            None,
        ));
    }
    let result = send_chunks(svc, job, ctx, &ds).await;
    let done = matches!(result, Ok(Outcome::Done));
    svc.store
        .finish_sync(
            &key,
            &lease,
            &job.id,
            SyncFinish {
                completed_at: done.then(|| svc.clock.now()),
                ..SyncFinish::default()
            },
        )
        .await?;
    if done {
        // Rows that arrived during the flush go to the next one.
        schedule_flush(svc, &job.org, &ds, true).await?;
    }
    result
}

async fn send_chunks(
    svc: &AppContext,
    job: &JobEnvelope,
    ctx: &JobContext,
    ds: &DataSource,
) -> Result<Outcome> {
    let key = svc.key(&job.org);
    let metered = svc.metered(&job.org, &push_source(&ds.name))?;
    let shape = &svc.config.app.datasource_push;
    let max = ds.max_rows_per_call;
    let mut sent = 0u32;
    loop {
        let now = svc.clock.now();
        if sent > 0 && ctx.near_deadline(now, svc.deadline_margin) {
            // The outbox holds where the flush is; the checkpoint counts
            // the chunks sent, so the restart shows it moved on.
            let before = job
                .checkpoint
                .as_ref()
                .and_then(|c| c["chunks_sent"].as_u64())
                .unwrap_or(0);
            return Ok(Outcome::resume(
                now,
                "near the Lambda deadline",
                Some(serde_json::json!({ "chunks_sent": before + u64::from(sent) })),
            ));
        }
        let state = svc.store.outbox_state(&key, &ds.name).await?;
        let timer_due = state.flush_due.filter(|d| *d <= now);
        let chunk = match state.inflight {
            // Fixed before a crash, denial or failure: the same rows under
            // the same key, before anything else.
            Some(chunk) => chunk,
            None => {
                // While a refused chunk is being split, smaller chunks.
                let take = state.probe.as_ref().map_or(max, |p| p.rows.clamp(1, max));
                let pending = svc.store.pending_rows(&key, &ds.name, take).await?;
                let fetched = pending.len();
                let rows = cut_chunk(pending, take as usize);
                let full = rows.len() == take as usize || rows.len() < fetched;
                if rows.is_empty() || !(full || timer_due.is_some()) {
                    if let Some(due) = timer_due {
                        svc.store.clear_flush_due(&key, &ds.name, due).await?;
                    }
                    return Ok(Outcome::Done);
                }
                match svc.store.begin_chunk(&key, &ds.name, &rows).await? {
                    Some(chunk) => chunk,
                    None => continue,
                }
            }
        };
        let request = SendRequest {
            method: shape.method.clone(),
            path: shape.path_for(&ds.name),
            body: Some(shape.body(chunk.inserts(), chunk.deletes())),
            idempotency_key: Some(crate::jobs::ledger::idempotency_key(
                &key,
                "push",
                &[&ds.name, &chunk.seq.to_string()],
            )),
        };
        match metered.send(&request).await {
            Ok(_) => {
                svc.store
                    .ack_chunk(&key, &ds.name, &chunk, svc.clock.now())
                    .await?;
                svc.metrics.add(&job.app, &job.org, Counter::PushesSent, 1);
                svc.metrics.add(
                    &job.app,
                    &job.org,
                    Counter::RowsPushed,
                    chunk.rows.len() as u64,
                );
                tracing::info!(datasource = %ds.name, seq = chunk.seq, rows = chunk.rows.len(), "Data Source push accepted");
                if let (Some(probe), Some(last)) = (&state.probe, chunk.rows.last()) {
                    let next = after_acceptance(Some(probe.clone()), &last.id);
                    if next.as_ref() != Some(probe) {
                        svc.store.set_probe(&key, &ds.name, next.as_ref()).await?;
                    }
                }
                sent += 1;
            }
            Err(CallError::Rejected(reason)) => {
                // Refused for its content: never re-sent as it was. Halved
                // until the refused row stands alone, which is set aside
                // with the API's reason; the rest go on in this flush.
                let refusal = after_refusal(&chunk.rows, &reason);
                if let Refusal::SetAside { .. } = &refusal {
                    let ids: Vec<&str> = chunk.rows.iter().map(|r| r.id.as_str()).collect();
                    tracing::warn!(datasource = %ds.name, org = %job.org, rows = ?ids, %reason, "Data Source row refused by the API; set aside (metered outbox)");
                    svc.metrics.add(
                        &job.app,
                        &job.org,
                        Counter::RowsRefused,
                        chunk.rows.len() as u64,
                    );
                } else {
                    tracing::info!(datasource = %ds.name, rows = chunk.rows.len(), %reason, "Data Source chunk refused; splitting it to find the row");
                }
                svc.store
                    .refuse_chunk(&key, &ds.name, &chunk, &refusal, svc.clock.now())
                    .await?;
                sent += 1;
            }
            Err(e) => {
                let back_at = match &e {
                    CallError::Denied(d) => Some(d.retry_at),
                    CallError::Unauthorized { retry_at, .. } => Some(*retry_at),
                    _ => None,
                };
                if let Some(at) = back_at {
                    // The chunk stays in flight; the timed mark moves to
                    // when capacity returns so it is not taken for lost.
                    svc.store.mark_flush_due(&key, &ds.name, at, at).await?;
                }
                return Ok(e.into_outcome(None));
            }
        }
    }
}
