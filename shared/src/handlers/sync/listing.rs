//! Complete transfers and recent record lookups: page through a list
//! endpoint, checkpointing the cursor after every page, so a restart resumes
//! at the next page and never fetches one twice.
//!
//! - Complete transfer: the whole dataset, at the largest page size.
//! - Recent lookup: records modified in `[high_water - overlap, until)`,
//!   where `until` is fixed when the window first runs; the high-water mark
//!   moves to `until` only when the whole window is done.
//!
//! Calls are reserved in blocks (sized from the last run's page count) so
//! the quota costs far less than one store round trip per call.

use crate::connector::{CallError, ListRequest, Reservation};
use crate::core::metrics::Counter;
use crate::handlers::context::AppContext;
use crate::handlers::payload::{parse_payload, sync_name, SyncPayload};
pub use crate::handlers::sync::checkpoint::ListingCheckpoint;
use crate::handlers::sync::checkpoint::{advance, page_digest, probe_cursor, Step};
use crate::handlers::sync::enqueue_followups;
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::JobContext;
use crate::store::SyncFinish;

/// Largest block of calls reserved at once.
const MAX_RESERVATION: u32 = 50;
/// Block size when nothing is known about the dataset yet.
const FIRST_RESERVATION: u32 = 10;

/// Runs one complete-transfer or recent-records job.
pub async fn run(svc: &AppContext, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
    let payload: SyncPayload = match parse_payload(job) {
        Ok(p) => p,
        Err(o) => return o,
    };
    if let Err(e) = svc.config.record_type(&payload.record_type) {
        return Outcome::Fail(e.to_string());
    }
    let settings = svc.config.sync(&payload.record_type);
    let sync = sync_name(job.kind, &payload.record_type);
    let key = svc.key(&job.org);
    let now = svc.clock.now();
    let mut cp: ListingCheckpoint = match &job.checkpoint {
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(cp) => cp,
            Err(e) => return Outcome::Fail(format!("bad checkpoint: {e}")),
        },
        None => ListingCheckpoint::default(),
    };
    // A sync never runs twice at once: hold (or renew) its lease.
    match svc
        .store
        .take_sync_lease(&key, &sync, &job.id, now, now + svc.sync_lease, false)
        .await
    {
        Ok(true) => {}
        Ok(false) => return hand_on_lookups(svc, job, &payload.record_type, &sync, &cp).await,
        Err(e) => return Outcome::from_error(&e),
    }
    if cp.complete {
        return record_completion(svc, &sync, job, &cp).await;
    }
    let state = match svc.store.sync_state(&key, &sync).await {
        Ok(s) => s,
        Err(e) => return Outcome::from_error(&e),
    };
    if cp.page_size.is_none() {
        cp.page_size = state.api_page_size;
    }
    let rt_config = match svc.config.record_type(&payload.record_type) {
        Ok(rt) => rt,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    if job.kind == JobKind::RecentRecords && cp.until.is_none() {
        let Some(recent) = &settings.recent else {
            return Outcome::Fail(format!(
                "no recent lookup is configured for `{}` (syncs.{}.recent)",
                payload.record_type, payload.record_type
            ));
        };
        cp.open_recent_window(recent, state.high_water, now);
    }
    let metered = match svc.metered(&job.org, &sync) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let endpoint = metered.connector().list_endpoint(&payload.record_type);
    let mut reservation: Option<Reservation<'_>> = None;
    // Blocks double while a run goes on: a long first transfer soon costs
    // few quota round trips, a short one wastes little.
    let mut block = state
        .last_pages
        .map(|p| p.saturating_sub(cp.pages).max(1) as u32)
        .unwrap_or(FIRST_RESERVATION);

    let mut pages_here = 0u32;
    let mut renewed = false;
    let outcome = loop {
        let checkpoint = || serde_json::to_value(&cp).ok();
        if pages_here > 0 && ctx.near_deadline(svc.clock.now(), svc.deadline_margin) {
            break Outcome::resume(svc.clock.now(), "near the Lambda deadline", checkpoint());
        }
        if reservation.as_ref().is_none_or(|r| r.remaining() == 0) {
            if let Some(done) = reservation.take() {
                if let Err(e) = done.finish().await {
                    break e.into_outcome(checkpoint());
                }
            }
            let want = block.clamp(1, max_block(&svc.limits(&job.org)));
            match metered.reserve(&endpoint, want).await {
                Ok(r) => reservation = Some(r),
                Err(e) => break e.into_outcome(checkpoint()),
            }
            block = block.saturating_mul(2);
        }
        let Some(res) = reservation.as_mut() else {
            continue;
        };
        let req = ListRequest {
            record_type: payload.record_type.clone(),
            cursor: cp.cursor.clone(),
            modified_since: cp.since,
            modified_until: cp.until,
            page_size: cp.probe.or(cp.page_size),
        };
        let first_page = cp.cursor.is_none();
        let mut page = match res.list(&req).await {
            Ok(p) => p,
            // Its windows ended since the look above: reserve anew, once.
            Err(CallError::ReservationEnded) if !renewed => {
                renewed = true;
                continue;
            }
            Err(e) => break e.into_outcome(checkpoint()),
        };
        renewed = false;
        let served = page.served() as u64;
        let mut next = page.next.take();
        let digest = page_digest(&page);
        let repeated = served > 0 && cp.last_page.as_deref() == Some(digest.as_str());
        if repeated && cp.probe.is_none() {
            break Outcome::Fail(format!(
                "list `{}`: the API served the same page again after {} pages (it may ignore the page or offset parameter); following it would loop until the budget is gone",
                payload.record_type, cp.pages
            ));
        }
        if repeated {
            // The probe got page 1 again: the API ignores the page parameter
            // and its one page was the whole listing.
            next = None;
        }
        let records =
            match crate::handlers::sync::set_aside(svc, &key, &sync, &payload.record_type, page)
                .await
            {
                Ok(r) => r,
                Err(e) => break Outcome::from_error_at(&e, checkpoint()),
            };
        let quarantined = served - records.len() as u64;
        let diff = match svc.store.diff(&key, &payload.record_type, &records).await {
            Ok(d) => d,
            Err(e) => break Outcome::from_error_at(&e, checkpoint()),
        };
        // A short first page of a page/offset listing may be an API that
        // caps its page size below ours: look at the next page once.
        // (Applied to the checkpoint after the commit below.)
        let learned = cp.probe.filter(|_| served > 0 && !repeated);
        let mut probe = None;
        if cp.probe.is_none()
            && next.is_none()
            && first_page
            && job.kind == JobKind::CompleteTransfer
        {
            if let Some(cursor) = probe_cursor(rt_config, &cp, &state, served, svc.clock.now()) {
                probe = Some(served as u32);
                next = Some(cursor);
            }
        }
        // Follow-ups before the page is committed: never lost, at worst repeated.
        let last = next.is_none();
        let mut pending = cp.pending_lookups.clone();
        if let Err(e) = enqueue_followups(
            svc,
            job,
            &payload.record_type,
            &records,
            &diff.changes,
            &mut pending,
            &format!("p{}", cp.pages),
            last,
            // A first run of a first generation cannot meet its own claims
            // of an earlier delivery; any later generation can (two copies
            // of one generation with different checkpoints exist after a
            // lost send response, and the older may be the one that runs).
            !ctx.first_run || job.generation > 0,
        )
        .await
        {
            break Outcome::from_error_at(&e, checkpoint());
        }
        if let Err(e) = svc
            .store
            .commit(&key, &payload.record_type, &diff, svc.clock.now())
            .await
        {
            break Outcome::from_error_at(&e, checkpoint());
        }
        svc.metrics.add(
            &key.app,
            &key.org,
            Counter::RecordsSynced,
            diff.changes.len() as u64,
        );
        cp.pending_lookups = pending;
        pages_here += 1;
        cp.count_page(records.len() as u64, diff.changes.len() as u64, quarantined);
        if let Some(short) = learned {
            cp.learn_page_size(short);
            tracing::warn!(
                sync = %sync,
                api_page_size = short,
                configured = rt_config.effective_page_size(),
                "the API serves fewer records per page than configured; using its page size (set `page_size = {short}` to skip the probe)"
            );
        }
        if probe.is_some() {
            cp.probe = probe;
        }
        cp.last_page = Some(digest);
        tracing::debug!(
            pages = cp.pages,
            records = cp.records,
            changed = cp.changed,
            "page synced"
        );
        match advance(&mut cp, next, served, &payload.record_type) {
            Step::Next => {}
            Step::Done => {
                cp.complete = true;
                break Outcome::Done;
            }
            Step::Stop(warning) => {
                tracing::warn!(sync = %sync, %warning, "listing stopped");
                cp.complete = true;
                break Outcome::Done;
            }
            Step::Loop(reason) => break Outcome::Fail(reason),
        }
    };
    if let Some(r) = reservation {
        if let Err(e) = r.finish().await {
            tracing::warn!(error = %e, "could not give back the unused reservation; it frees when its lease expires");
        }
    }
    if matches!(outcome, Outcome::Done) {
        return record_completion(svc, &sync, job, &cp).await;
    }
    hold_lease_through(svc, &key, &sync, job, &outcome).await;
    outcome
}

/// A twin runs this sync. Its pages are its own, but lookups this run
/// claimed and had not sent yet are claimed by this job alone: send them
/// now, or nobody looks them up; then drop this duplicate.
async fn hand_on_lookups(
    svc: &AppContext,
    job: &JobEnvelope,
    record_type: &str,
    sync: &str,
    cp: &ListingCheckpoint,
) -> Outcome {
    let mut pending = cp.pending_lookups.clone();
    let handed_on: usize = pending.values().map(Vec::len).sum();
    if handed_on > 0 {
        if let Err(e) = enqueue_followups(
            svc,
            job,
            record_type,
            &[],
            &[],
            &mut pending,
            "handoff",
            true,
            false,
        )
        .await
        {
            return Outcome::from_error(&e);
        }
    }
    tracing::info!(%sync, handed_on, "another job holds this sync; dropping the duplicate after handing on its claimed lookups");
    Outcome::Done
}

/// Keeps the sync's lease through a restart's wait (or the longest
/// backoff of a transient failure), so the scheduler does not start a twin
/// meanwhile. A failed run frees its lease and records the failure in
/// `JobHandler::gave_up`, which the runtime calls for every way a job is
/// given up on.
async fn hold_lease_through(
    svc: &AppContext,
    key: &crate::quota::QuotaKey,
    sync: &str,
    job: &JobEnvelope,
    outcome: &Outcome,
) {
    let now = svc.clock.now();
    let until = match outcome {
        Outcome::Restart(r) => r.at + svc.sync_lease,
        Outcome::Transient { .. } => now + chrono::Duration::seconds(900) + svc.sync_lease,
        Outcome::Done | Outcome::Fail(_) => return,
    };
    let _ = svc
        .store
        .take_sync_lease(key, sync, &job.id, now, until, false)
        .await;
}

/// Records a run whose every page is stored as complete (and frees its
/// lease). A failure to record it is transient, and the restart comes back
/// here through [`ListingCheckpoint::complete`] without fetching a page.
async fn record_completion(
    svc: &AppContext,
    sync: &str,
    job: &JobEnvelope,
    cp: &ListingCheckpoint,
) -> Outcome {
    if cp.records == 0 && cp.quarantined > 0 {
        // Not a transfer: a wrong id pointer, or an API answering with
        // something else. Recording it as done would hide that behind a
        // green run (and move the high-water mark past what was missed).
        return Outcome::Fail(format!(
            "every one of the {} records served was quarantined and none stored (metered quarantine says why; often the record type's id_pointer): the run is not recorded as complete",
            cp.quarantined
        ));
    }
    let now = svc.clock.now();
    let finish = SyncFinish {
        completed_at: Some(now),
        high_water: cp.until,
        pages: Some(cp.pages),
        api_page_size: cp.page_size.filter(|_| cp.learned_page_size),
        probed_short_page: cp.probe.map(|len| (len, now)),
        failed: None,
    };
    if let Err(e) = svc
        .store
        .finish_sync(&svc.key(&job.org), sync, &job.id, finish)
        .await
    {
        let what = crate::Error::store(
            "record completion",
            format!("could not record the run's completion: {e}"),
            if e.is_retryable() {
                crate::core::error::Disposition::Retryable
            } else {
                crate::core::error::Disposition::Permanent
            },
        );
        return Outcome::from_error_at(&what, serde_json::to_value(cp).ok());
    }
    tracing::info!(%sync, pages = cp.pages, records = cp.records, changed = cp.changed, quarantined = cp.quarantined, "sync complete");
    if let Err(e) = svc.quota.run_succeeded(&svc.key(&job.org)).await {
        tracing::warn!(error = %e, %sync, "could not reset the connection's count of failed runs");
    }
    Outcome::Done
}

/// The largest block to reserve: at most 2% of the tightest window. A block
/// makes the window look fuller than it will be after the refund, and a job
/// refused meanwhile waits for the window's end; small blocks keep that rare.
pub(crate) fn max_block(limits: &crate::quota::Limits) -> u32 {
    let tightest = limits.windows().map(|(_, l)| l).min().unwrap_or(u32::MAX);
    (tightest / 50).clamp(1, MAX_RESERVATION)
}
