//! Primary key lookups: fetch records that synced records reference, by the
//! referenced type's policy.
//!
//! - `unseen_only` (default): only ids never seen; `seen_and_unseen`: also
//!   seen ones not synced within `min_relookup`; `never`: nothing.
//! - Ids are deduplicated within the job and against the store, and claimed
//!   (`last_looked_up`) before the call, so two jobs never look up the same
//!   id within `min_relookup`. Claimed ids travel in the checkpoint, so a
//!   restart fetches exactly what is still owed.
//! - Bulk lookups of up to `max_keys_per_call` ids per call.
//! - Storm guard: while the referenced type has a complete transfer that
//!   never finished, lookups wait for it (and start it if needed): after
//!   the transfer, most keys are seen and cost nothing.

use crate::config::sync::{chrono as dur, StormGuard};
use crate::connector::Reservation;
use crate::handlers::context::AppContext;
use crate::handlers::flow::{fail, settled, Flow, Settle};
use crate::handlers::payload::{parse_payload, sync_name, PkLookupPayload};
use crate::handlers::start::start_sync;
use crate::handlers::sync::listing::max_block;
use crate::handlers::sync::{keys_per_call, needing_lookup, take_in, Intake};
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::JobContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ids claimed and not yet fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LookupCheckpoint {
    /// Ids still to look up.
    pub remaining: Vec<String>,
    /// Calls made so far.
    pub calls: u64,
}

/// Runs one pk-lookup job.
pub(crate) async fn run(svc: &AppContext, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
    settled(lookup(svc, job, ctx).await)
}

/// [`run`], written with `?`: every early end is an outcome.
async fn lookup(svc: &AppContext, job: &JobEnvelope, ctx: &JobContext) -> Flow<Outcome> {
    let payload: PkLookupPayload = parse_payload(job)?;
    let record_type = payload.record_type.as_str();
    svc.config.record_type(record_type).or_end()?;
    let pk = svc.config.sync(record_type).pk_lookup;
    if !pk.active() {
        tracing::info!(
            record_type,
            "primary key lookups are off for this type; nothing to do"
        );
        return Ok(Outcome::Done);
    }
    let cp: LookupCheckpoint = match &job.checkpoint {
        Some(v) => {
            serde_json::from_value(v.clone()).or_else(|e| fail(format!("bad checkpoint: {e}")))?
        }
        None => plan(svc, job, &payload, &pk).await?,
    };
    if cp.remaining.is_empty() {
        return Ok(Outcome::Done);
    }
    let sync = sync_name(JobKind::PkLookup, record_type);
    let per_call = keys_per_call(svc, &job.org, record_type);
    let calls_needed = cp.remaining.len().div_ceil(per_call) as u32;
    let metered = svc
        .metered(&job.org, &sync)
        .or_else(fail)?
        .needing(calls_needed);
    let endpoint = metered.connector().lookup_endpoint(record_type);
    let block = calls_needed.min(max_block(&svc.limits(&job.org)));
    let mut reservation = metered
        .reserve(&endpoint, block)
        .await
        .or_restart_from(|| serde_json::to_value(&cp).ok())?;
    let mut lookups = Lookups {
        svc,
        job,
        record_type,
        sync,
        per_call,
        cp,
    };
    let outcome = settled(lookups.calls(&mut reservation, ctx).await);
    if let Err(e) = reservation.finish().await {
        tracing::warn!(error = %e, "could not give back the unused reservation");
    }
    Ok(outcome)
}

/// A first run's plan: the ids the type's policy wants, claimed for this
/// job — or the storm guard's wait. Ids the sync claimed already are
/// re-checked too: a transfer may have seen them since.
async fn plan(
    svc: &AppContext,
    job: &JobEnvelope,
    payload: &PkLookupPayload,
    pk: &crate::config::sync::PkLookupSettings,
) -> Flow<LookupCheckpoint> {
    let record_type = payload.record_type.as_str();
    if let Some(wait) = storm_guard(svc, job, record_type).await {
        return Err(wait);
    }
    let key = svc.key(&job.org);
    let now = svc.clock.now();
    let candidates = needing_lookup(svc, &key, record_type, pk, payload.ids.clone(), now)
        .await
        .or_end()?;
    let claimed = if payload.claimed {
        candidates
    } else {
        let relookup = dur(pk.min_relookup);
        svc.store
            .claim_lookups(&key, record_type, &candidates, &job.id, now, relookup)
            .await
            .or_end()?
    };
    tracing::info!(
        record_type,
        asked = payload.ids.len(),
        to_fetch = claimed.len(),
        "pk lookup planned"
    );
    Ok(LookupCheckpoint {
        remaining: claimed,
        calls: 0,
    })
}

/// One lookup job's claimed ids and the sync its calls are metered under.
struct Lookups<'a> {
    svc: &'a AppContext,
    job: &'a JobEnvelope,
    record_type: &'a str,
    sync: String,
    /// Ids per bulk call.
    per_call: usize,
    cp: LookupCheckpoint,
}

impl Lookups<'_> {
    /// The checkpoint to restart from.
    fn checkpoint(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.cp).ok()
    }

    /// Bulk calls until every claimed id is fetched, the reserved block is
    /// spent (restart for the next) or the deadline nears.
    async fn calls(
        &mut self,
        reservation: &mut Reservation<'_>,
        ctx: &JobContext,
    ) -> Flow<Outcome> {
        let svc = self.svc;
        let mut calls_here = 0u32;
        while !self.cp.remaining.is_empty() {
            if calls_here > 0 && ctx.near_deadline(svc.clock.now(), svc.deadline_margin) {
                let at = svc.clock.now();
                return Ok(Outcome::resume(
                    at,
                    "near the Lambda deadline",
                    self.checkpoint(),
                ));
            }
            if reservation.remaining() == 0 {
                // More than one block was needed: restart to reserve the next.
                let at = svc.clock.now();
                return Ok(Outcome::resume(
                    at,
                    "next block of lookups",
                    self.checkpoint(),
                ));
            }
            let chunk: Vec<String> = self
                .cp
                .remaining
                .iter()
                .take(self.per_call)
                .cloned()
                .collect();
            let page = reservation
                .lookup(self.record_type, &chunk)
                .await
                .or_restart_from(|| self.checkpoint())?;
            let intake = Intake {
                source: &self.sync,
                record_type: self.record_type,
                tag: format!("c{}", self.cp.calls),
                // Everything claimed is sent at once, before the commit: no
                // claim waits in memory to be lost in a crash.
                last: true,
                recheck_unchanged: false,
            };
            take_in(svc, self.job, intake, page, &mut BTreeMap::new())
                .await
                .or_restart_from(|| self.checkpoint())?;
            self.cp.remaining.drain(..chunk.len());
            self.cp.calls += 1;
            calls_here += 1;
        }
        Ok(Outcome::Done)
    }
}

/// Holds lookups of a type whose first complete transfer has not finished
/// while a run of it is live, and starts that transfer when none ran within
/// `min_relookup`. A transfer that started within `min_relookup` and is not
/// running any more failed or crashed: lookups then go ahead as bulk
/// lookups instead of waiting (and starting it again) on every wake-up,
/// which would refetch the same pages until the budget is gone. `None`: go
/// ahead.
async fn storm_guard(svc: &AppContext, job: &JobEnvelope, record_type: &str) -> Option<Outcome> {
    let settings = svc.config.sync(record_type);
    if settings.pk_lookup.storm_guard == StormGuard::Off || settings.complete_transfer.is_none() {
        return None;
    }
    let key = svc.key(&job.org);
    let transfer = sync_name(JobKind::CompleteTransfer, record_type);
    let state = match svc.store.sync_state(&key, &transfer).await {
        Ok(s) => s,
        Err(e) => return Some(Outcome::from_error(&e)),
    };
    let now = svc.clock.now();
    let wait = |until: Option<crate::core::clock::Timestamp>| {
        Some(Outcome::wait(
            until.unwrap_or(now).max(now + chrono::Duration::minutes(5)),
            format!(
                "waiting for the first complete transfer of `{record_type}` before looking keys up"
            ),
            None,
        ))
    };
    match storm_decision(&state, now, dur(settings.pk_lookup.min_relookup)) {
        StormDecision::GoAhead => None,
        StormDecision::Wait => wait(state.lease_until),
        StormDecision::FallBack => {
            tracing::info!(
                record_type,
                last_failure = state.last_failure.as_deref().unwrap_or("(none recorded)"),
                "the first complete transfer did not finish; looking keys up in bulk instead of waiting"
            );
            None
        }
        StormDecision::Start => {
            if let Err(e) =
                // Lookups wait for it: not background work (`adhoc`).
                start_sync(svc, &job.org, JobKind::CompleteTransfer, record_type, true).await
            {
                return Some(Outcome::from_error(&e));
            }
            let holder = svc
                .store
                .sync_state(&key, &transfer)
                .await
                .ok()
                .and_then(|s| s.lease_until);
            wait(holder)
        }
    }
}

/// What the storm guard does, from the transfer's state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StormDecision {
    /// The transfer completed once: lookups are cheap now.
    GoAhead,
    /// A run is live: wait for it.
    Wait,
    /// A run started within `min_relookup` and ended without completing:
    /// look keys up instead of starting it again.
    FallBack,
    /// Nothing ran recently: start the transfer and wait for it.
    Start,
}

pub(crate) fn storm_decision(
    state: &crate::store::SyncState,
    now: crate::core::clock::Timestamp,
    min_relookup: chrono::Duration,
) -> StormDecision {
    if state.last_completed.is_some() {
        return StormDecision::GoAhead;
    }
    if state.live_lease_holder(now).is_some() {
        return StormDecision::Wait;
    }
    let recent =
        |t: Option<crate::core::clock::Timestamp>| t.is_some_and(|t| now < t + min_relookup);
    if recent(state.last_started) || recent(state.last_failed) {
        StormDecision::FallBack
    } else {
        StormDecision::Start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SyncState;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn the_storm_guard_starts_a_transfer_at_most_once_per_min_relookup() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let day = Duration::days(1);
        let never = SyncState::default();
        assert_eq!(storm_decision(&never, now, day), StormDecision::Start);
        let running = SyncState {
            last_started: Some(now - Duration::minutes(10)),
            running_job: Some("t1".into()),
            lease_until: Some(now + Duration::minutes(5)),
            ..Default::default()
        };
        assert_eq!(storm_decision(&running, now, day), StormDecision::Wait);
        let failed = SyncState {
            last_started: Some(now - Duration::hours(2)),
            last_failed: Some(now - Duration::hours(1)),
            last_failure: Some("list `invoices`: gave up after 5 attempts".into()),
            ..Default::default()
        };
        assert_eq!(storm_decision(&failed, now, day), StormDecision::FallBack);
        // A crashed run's lease lapsed without a recorded failure: the same.
        let crashed = SyncState {
            last_started: Some(now - Duration::hours(2)),
            running_job: Some("t1".into()),
            lease_until: Some(now - Duration::hours(1)),
            ..Default::default()
        };
        assert_eq!(storm_decision(&crashed, now, day), StormDecision::FallBack);
        let long_ago = SyncState {
            last_started: Some(now - Duration::days(2)),
            last_failed: Some(now - Duration::days(2)),
            ..Default::default()
        };
        assert_eq!(storm_decision(&long_ago, now, day), StormDecision::Start);
        let done = SyncState {
            last_completed: Some(now - Duration::days(3)),
            ..long_ago
        };
        assert_eq!(storm_decision(&done, now, day), StormDecision::GoAhead);
    }
}
