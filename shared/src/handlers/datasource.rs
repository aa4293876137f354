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
use crate::store::outbox::{
    after_acceptance, after_refusal, cut_chunk, Chunk, OutboxState, Refusal,
};
use crate::store::SyncFinish;

/// A flush that finds another holding the outbox comes back this much later.
const BUSY_RETRY_SECS: i64 = 30;

/// A timed-flush mark this long past one interval is taken for lost (its job
/// dead-lettered) and replaced, so an outbox never waits for a job that
/// will not come.
const LOST_MARK_GRACE_SECS: i64 = 900;

/// The quota source pushes spend under, as `metered usage` lists it.
pub(crate) fn push_source(datasource: &str) -> String {
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
pub(crate) async fn flush(
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
    let flush = Flush {
        svc,
        job,
        key: svc.key(&job.org),
        ds,
    };
    let metered = svc.metered(&job.org, &push_source(&ds.name))?;
    let mut sent = 0u32;
    loop {
        let now = svc.clock.now();
        if sent > 0 && ctx.near_deadline(now, svc.deadline_margin) {
            return Ok(flush.resume(now, sent));
        }
        let mut state = svc.store.outbox_state(&flush.key, &ds.name).await?;
        let chunk = match flush.next_chunk(&mut state, now).await? {
            Taken::Chunk(chunk) => chunk,
            Taken::Nothing => return Ok(Outcome::Done),
            Taken::Raced => continue,
        };
        match metered.send(&flush.request(&chunk)).await {
            Ok(_) => flush.accepted(&state, &chunk).await?,
            Err(CallError::Rejected(reason)) => flush.refused(&chunk, &reason).await?,
            Err(e) => return flush.held_back(e).await,
        }
        sent += 1;
    }
}

/// One flush of one Data Source for one org, holding its outbox's lease.
struct Flush<'a> {
    svc: &'a AppContext,
    job: &'a JobEnvelope,
    key: crate::quota::QuotaKey,
    ds: &'a DataSource,
}

/// What the outbox gives a flush to send next.
enum Taken {
    /// This chunk (in flight already, or begun now).
    Chunk(Chunk),
    /// Less than a full call waits and no timed flush is due: done.
    Nothing,
    /// Another writer moved the outbox between the read and the begin:
    /// read it again.
    Raced,
}

impl Flush<'_> {
    /// Stops near the deadline. The outbox holds where the flush is; the
    /// checkpoint counts the chunks sent, so the restart shows it moved on.
    fn resume(&self, now: crate::core::clock::Timestamp, sent: u32) -> Outcome {
        let before = self
            .job
            .checkpoint
            .as_ref()
            .and_then(|c| c["chunks_sent"].as_u64())
            .unwrap_or(0);
        let checkpoint = serde_json::json!({ "chunks_sent": before + u64::from(sent) });
        Outcome::resume(now, "near the Lambda deadline", Some(checkpoint))
    }

    /// The chunk to send: the one in flight (fixed before a crash, denial
    /// or failure: the same rows under the same key, before anything
    /// else), else a new one of the pending rows when a full call's worth
    /// waits or the timed flush is due.
    async fn next_chunk(
        &self,
        state: &mut OutboxState,
        now: crate::core::clock::Timestamp,
    ) -> Result<Taken> {
        let (svc, key, name) = (self.svc, &self.key, &self.ds.name);
        if let Some(chunk) = state.inflight.take() {
            return Ok(Taken::Chunk(chunk));
        }
        let timer_due = state.flush_due.filter(|d| *d <= now);
        let max = self.ds.max_rows_per_call;
        // While a refused chunk is being split, smaller chunks.
        let take = state.probe.as_ref().map_or(max, |p| p.rows.clamp(1, max));
        let pending = svc.store.pending_rows(key, name, take).await?;
        let fetched = pending.len();
        let rows = cut_chunk(pending, take as usize);
        let full = rows.len() == take as usize || rows.len() < fetched;
        if rows.is_empty() || !(full || timer_due.is_some()) {
            if let Some(due) = timer_due {
                svc.store.clear_flush_due(key, name, due).await?;
            }
            return Ok(Taken::Nothing);
        }
        Ok(match svc.store.begin_chunk(key, name, &rows).await? {
            Some(chunk) => Taken::Chunk(chunk),
            None => Taken::Raced,
        })
    }

    /// The push call for `chunk`: inserts and deletes in one call, under
    /// the chunk's own idempotency key.
    fn request(&self, chunk: &Chunk) -> SendRequest {
        let shape = &self.svc.config.app.datasource_push;
        let seq = chunk.seq.to_string();
        let idempotency_key =
            crate::jobs::ledger::idempotency_key(&self.key, "push", &[&self.ds.name, &seq]);
        SendRequest {
            method: shape.method.clone(),
            path: shape.path_for(&self.ds.name),
            body: Some(shape.body(chunk.inserts(), chunk.deletes())),
            idempotency_key: Some(idempotency_key),
        }
    }

    /// The API took the chunk: its rows leave the outbox, and a search for
    /// a refused row moves past them.
    async fn accepted(&self, state: &OutboxState, chunk: &Chunk) -> Result<()> {
        let (svc, job, name) = (self.svc, self.job, &self.ds.name);
        svc.store
            .ack_chunk(&self.key, name, chunk, svc.clock.now())
            .await?;
        let rows = chunk.rows.len() as u64;
        svc.metrics.add(&job.app, &job.org, Counter::PushesSent, 1);
        svc.metrics
            .add(&job.app, &job.org, Counter::RowsPushed, rows);
        tracing::info!(datasource = %name, seq = chunk.seq, rows, "Data Source push accepted");
        if let (Some(probe), Some(last)) = (&state.probe, chunk.rows.last()) {
            let next = after_acceptance(Some(probe.clone()), &last.id);
            if next.as_ref() != Some(probe) {
                svc.store.set_probe(&self.key, name, next.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// The API refused the chunk for its content: never re-sent as it was.
    /// Halved until the refused row stands alone, which is set aside with
    /// the API's reason; the rest go on in this flush.
    async fn refused(&self, chunk: &Chunk, reason: &str) -> Result<()> {
        let (svc, job, name) = (self.svc, self.job, &self.ds.name);
        let refusal = after_refusal(&chunk.rows, reason);
        let rows = chunk.rows.len() as u64;
        if let Refusal::SetAside { .. } = &refusal {
            let ids: Vec<&str> = chunk.rows.iter().map(|r| r.id.as_str()).collect();
            tracing::warn!(datasource = %name, org = %job.org, rows = ?ids, %reason, "Data Source row refused by the API; set aside (metered outbox)");
            svc.metrics
                .add(&job.app, &job.org, Counter::RowsRefused, rows);
        } else {
            tracing::info!(datasource = %name, rows, %reason, "Data Source chunk refused; splitting it to find the row");
        }
        svc.store
            .refuse_chunk(&self.key, name, chunk, &refusal, svc.clock.now())
            .await
    }

    /// The call did not reach the API's answer (a denial, a wait, a
    /// failure): the chunk stays in flight. After a denial the timed mark
    /// moves to when capacity returns, so it is not taken for lost.
    async fn held_back(&self, e: CallError) -> Result<Outcome> {
        let back_at = match &e {
            CallError::Denied(d) => Some(d.retry_at),
            CallError::Unauthorized { retry_at, .. } => Some(*retry_at),
            _ => None,
        };
        if let Some(at) = back_at {
            self.svc
                .store
                .mark_flush_due(&self.key, &self.ds.name, at, at)
                .await?;
        }
        Ok(e.into_outcome(None))
    }
}
