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

use crate::connector::{CallError, ListRequest, Metered, Page, Reservation};
use crate::handlers::context::AppContext;
use crate::handlers::flow::{fail, settled, Flow, Settle};
use crate::handlers::payload::{parse_payload, sync_name, SyncPayload};
pub(crate) use crate::handlers::sync::checkpoint::ListingCheckpoint;
use crate::handlers::sync::checkpoint::{
    advance, page_digest, probe_cursor, turn_page, Step, Turn,
};
use crate::handlers::sync::{enqueue_followups, take_in, Followups, Intake};
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::JobContext;
use crate::store::SyncFinish;

/// Largest block of calls reserved at once.
const MAX_RESERVATION: u32 = 50;
/// Block size when nothing is known about the dataset yet.
const FIRST_RESERVATION: u32 = 10;

/// Runs one complete-transfer or recent-records job.
pub(crate) async fn run(svc: &AppContext, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
    settled(listing(svc, job, ctx).await)
}

/// [`run`], written with `?`: every early end is an outcome.
async fn listing(svc: &AppContext, job: &JobEnvelope, ctx: &JobContext) -> Flow<Outcome> {
    let payload: SyncPayload = parse_payload(job)?;
    let background = payload.background(job.kind);
    let rt = svc.config.record_type(&payload.record_type).or_end()?;
    let sync = sync_name(job.kind, &payload.record_type);
    let key = svc.key(&job.org);
    let now = svc.clock.now();
    let cp: ListingCheckpoint = match &job.checkpoint {
        Some(v) => {
            serde_json::from_value(v.clone()).or_else(|e| fail(format!("bad checkpoint: {e}")))?
        }
        None => ListingCheckpoint::default(),
    };
    // A sync never runs twice at once: hold (or renew) its lease.
    let held = svc
        .store
        .take_sync_lease(&key, &sync, &job.id, now, now + svc.sync_lease, false)
        .await
        .or_end()?;
    if !held {
        return Ok(hand_on_lookups(svc, job, &payload.record_type, &sync, &cp).await);
    }
    if cp.complete {
        return Ok(record_completion(svc, &sync, job, &cp).await);
    }
    let state = svc.store.sync_state(&key, &sync).await.or_end()?;
    let mut listing = Listing {
        svc,
        job,
        record_type: payload.record_type,
        sync,
        key,
        rt,
        state,
        cp,
        // A first run of a first generation cannot meet its own claims of
        // an earlier delivery; any later generation can (two copies of one
        // generation with different checkpoints exist after a lost send
        // response, and the older may be the one that runs).
        recheck_unchanged: !ctx.first_run || job.generation > 0,
    };
    listing.open(now)?;
    let metered = svc
        .metered(&job.org, &listing.sync)
        .or_else(fail)?
        .in_background(background)
        // What the last run took, less what this one has read: a refusal's
        // wake turn that size.
        .needing(
            listing
                .state
                .last_pages
                .unwrap_or(0)
                .saturating_sub(listing.cp.pages)
                .try_into()
                .unwrap_or(u32::MAX),
        );
    let outcome = settled(listing.pages(&metered, ctx).await);
    if matches!(outcome, Outcome::Done) {
        return Ok(record_completion(svc, &listing.sync, job, &listing.cp).await);
    }
    hold_lease_through(svc, &listing.key, &listing.sync, job, &outcome).await;
    Ok(outcome)
}

/// One listing run, holding its sync's lease: what its pages are read
/// against, and the checkpoint they move.
struct Listing<'a> {
    svc: &'a AppContext,
    job: &'a JobEnvelope,
    record_type: String,
    sync: String,
    key: crate::quota::QuotaKey,
    rt: &'a crate::config::app::RecordTypeConfig,
    /// The sync's state as the run started (last run's pages, the API's
    /// page size, the last probe).
    state: crate::store::SyncState,
    cp: ListingCheckpoint,
    /// Re-check the claims of unchanged records (see [`Followups`]).
    recheck_unchanged: bool,
}

impl Listing<'_> {
    /// The checkpoint to restart from.
    fn checkpoint(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.cp).ok()
    }

    /// Readies the checkpoint for its first page: the API's known page
    /// size, and a recent lookup's window, fixed at its first run.
    fn open(&mut self, now: crate::core::clock::Timestamp) -> Flow<()> {
        if self.cp.page_size.is_none() {
            self.cp.page_size = self.state.api_page_size;
        }
        if self.job.kind == JobKind::RecentRecords && self.cp.until.is_none() {
            let settings = self.svc.config.sync(&self.record_type);
            let Some(recent) = &settings.recent else {
                return fail(format!(
                    "no recent lookup is configured for `{}` (syncs.{}.recent)",
                    self.record_type, self.record_type
                ));
            };
            self.cp
                .open_recent_window(recent, self.state.high_water, now);
        }
        Ok(())
    }

    /// Fetches and stores pages until the listing is done, a limit or the
    /// deadline stops it, or it fails; then gives back the calls reserved
    /// and not spent.
    async fn pages(&mut self, metered: &Metered, ctx: &JobContext) -> Flow<Outcome> {
        let svc = self.svc;
        let endpoint = metered.connector().list_endpoint(&self.record_type);
        let mut reservation: Option<Reservation<'_>> = None;
        // Blocks double while a run goes on: a long first transfer soon
        // costs few quota round trips, a short one wastes little.
        let mut block = self
            .state
            .last_pages
            .map(|p| p.saturating_sub(self.cp.pages).max(1) as u32)
            .unwrap_or(FIRST_RESERVATION);
        let mut pages_here = 0u32;
        let mut renewed = false;
        let outcome = loop {
            if pages_here > 0 && ctx.near_deadline(svc.clock.now(), svc.deadline_margin) {
                let at = svc.clock.now();
                break Ok(Outcome::resume(
                    at,
                    "near the Lambda deadline",
                    self.checkpoint(),
                ));
            }
            if reservation.as_ref().is_none_or(|r| r.remaining() == 0) {
                if let Some(done) = reservation.take() {
                    if let Err(end) = done.finish().await.or_restart_from(|| self.checkpoint()) {
                        break Err(end);
                    }
                }
                let want = block.clamp(1, max_block(&svc.limits(&self.job.org)));
                match metered.reserve(&endpoint, want).await {
                    Ok(r) => reservation = Some(r),
                    Err(e) => break Err(e.into_outcome(self.checkpoint())),
                }
                block = block.saturating_mul(2);
            }
            let Some(res) = reservation.as_mut() else {
                continue;
            };
            let page = match res.list(&self.request()).await {
                Ok(p) => p,
                // Its windows ended since the look above: reserve anew, once.
                Err(CallError::ReservationEnded) if !renewed => {
                    renewed = true;
                    continue;
                }
                Err(e) => break Err(e.into_outcome(self.checkpoint())),
            };
            renewed = false;
            pages_here += 1;
            match self.store_page(page).await {
                Ok(true) => {}
                Ok(false) => break Ok(Outcome::Done),
                Err(end) => break Err(end),
            }
        };
        if let Some(r) = reservation {
            if let Err(e) = r.finish().await {
                tracing::warn!(error = %e, "could not give back the unused reservation; it frees when its lease expires");
            }
        }
        outcome
    }

    /// The request for the page at the checkpoint.
    fn request(&self) -> ListRequest {
        ListRequest {
            record_type: self.record_type.clone(),
            cursor: self.cp.cursor.clone(),
            modified_since: self.cp.since,
            modified_until: self.cp.until,
            page_size: self.cp.probe.or(self.cp.page_size),
        }
    }

    /// Stores one served page and moves the checkpoint past it: whether
    /// another page follows. Follow-ups are sent before the page is
    /// committed, so they are never lost, at worst repeated.
    async fn store_page(&mut self, mut page: Page) -> Flow<bool> {
        let svc = self.svc;
        let served = page.served() as u64;
        let digest = page_digest(&page);
        let probe_at = || {
            let now = svc.clock.now();
            (self.job.kind == JobKind::CompleteTransfer)
                .then(|| probe_cursor(self.rt, &self.cp, &self.state, served, now))
                .flatten()
        };
        let turn = turn_page(
            &self.cp,
            page.next.take(),
            &digest,
            served,
            probe_at,
            &self.record_type,
        )
        .or_else(fail)?;
        let mut pending = self.cp.pending_lookups.clone();
        let intake = Intake {
            source: &self.sync,
            record_type: &self.record_type,
            tag: format!("p{}", self.cp.pages),
            last: turn.next.is_none(),
            recheck_unchanged: self.recheck_unchanged,
        };
        let stored = take_in(svc, self.job, intake, page, &mut pending)
            .await
            .or_restart_from(|| self.checkpoint())?;
        self.cp.pending_lookups = pending;
        self.cp
            .count_page(stored.records, stored.changed, stored.quarantined);
        self.learn(&turn);
        self.cp.last_page = Some(digest);
        tracing::debug!(
            pages = self.cp.pages,
            records = self.cp.records,
            changed = self.cp.changed,
            "page synced"
        );
        match advance(&mut self.cp, turn.next, served, &self.record_type) {
            Step::Next => Ok(true),
            Step::Done => {
                self.cp.complete = true;
                Ok(false)
            }
            Step::Stop(warning) => {
                tracing::warn!(sync = %self.sync, %warning, "listing stopped");
                self.cp.complete = true;
                Ok(false)
            }
            Step::Loop(reason) => fail(reason),
        }
    }

    /// Applies what a committed page taught about the API's page size.
    fn learn(&mut self, turn: &Turn) {
        if let Some(short) = turn.learned {
            self.cp.learn_page_size(short);
            tracing::warn!(
                sync = %self.sync,
                api_page_size = short,
                configured = self.rt.effective_page_size(),
                "the API serves fewer records per page than configured; using its page size (set `page_size = {short}` to skip the probe)"
            );
        }
        if turn.probe.is_some() {
            self.cp.probe = turn.probe;
        }
    }
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
        let followups = Followups {
            record_type,
            records: &[],
            changes: &[],
            tag: "handoff".into(),
            last: true,
            recheck_unchanged: false,
        };
        if let Err(e) = enqueue_followups(svc, job, &followups, &mut pending).await {
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
