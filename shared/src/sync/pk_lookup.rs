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

use super::settings::{chrono as dur, StormGuard};
use super::{enqueue_followups, parse_payload, scheduler, sync_name, PkLookupPayload};
use crate::job::{JobEnvelope, JobKind, Outcome, Restart};
use crate::runtime::JobContext;
use crate::services::Services;
use serde::{Deserialize, Serialize};

/// Ids claimed and not yet fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupCheckpoint {
    pub remaining: Vec<String>,
    pub calls: u64,
}

pub async fn run(svc: &Services, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
    let payload: PkLookupPayload = match parse_payload(job) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let rt_name = payload.record_type.as_str();
    if let Err(e) = svc.config.record_type(rt_name) {
        return Outcome::Fail(e.to_string());
    }
    let settings = svc.config.sync(rt_name);
    let pk = &settings.pk_lookup;
    if !pk.active() {
        tracing::info!(
            record_type = rt_name,
            "primary key lookups are off for this type; nothing to do"
        );
        return Outcome::Done;
    }
    let key = svc.key(&job.org);
    let now = svc.clock.now();

    let mut cp: LookupCheckpoint = match &job.checkpoint {
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(cp) => cp,
            Err(e) => return Outcome::Fail(format!("bad checkpoint: {e}")),
        },
        None => {
            if let Some(wait) = storm_guard(svc, job, rt_name).await {
                return wait;
            }
            // Re-checked even for claimed ids: a transfer may have seen them since.
            let candidates =
                match super::needing_lookup(svc, &key, rt_name, pk, payload.ids.clone(), now).await
                {
                    Ok(c) => c,
                    Err(e) => return Outcome::from_error(&e),
                };
            let claimed = if payload.claimed {
                candidates
            } else {
                match svc
                    .store
                    .claim_lookups(
                        &key,
                        rt_name,
                        &candidates,
                        &job.id,
                        now,
                        dur(pk.min_relookup),
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return Outcome::from_error(&e),
                }
            };
            tracing::info!(
                record_type = rt_name,
                asked = payload.ids.len(),
                to_fetch = claimed.len(),
                "pk lookup planned"
            );
            LookupCheckpoint {
                remaining: claimed,
                calls: 0,
            }
        }
    };
    if cp.remaining.is_empty() {
        return Outcome::Done;
    }
    let sync = sync_name(JobKind::PkLookup, rt_name);
    let metered = match svc.metered(&job.org, &sync) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let per_call = super::keys_per_call(svc, &job.org, rt_name);
    let calls_needed = cp.remaining.len().div_ceil(per_call) as u32;
    let endpoint = metered.connector().lookup_endpoint(rt_name);
    let block = calls_needed.min(super::listing::max_block(&svc.limits(&job.org)));
    let mut reservation = match metered.reserve(&endpoint, block).await {
        Ok(r) => r,
        Err(e) => return e.into_outcome(serde_json::to_value(&cp).ok()),
    };
    let mut calls_here = 0u32;
    let outcome = loop {
        let checkpoint = serde_json::to_value(&cp).ok();
        if cp.remaining.is_empty() {
            break Outcome::Done;
        }
        if calls_here > 0 && ctx.near_deadline(svc.clock.now(), svc.deadline_margin) {
            break Outcome::Restart(Restart {
                at: svc.clock.now(),
                reason: "near the Lambda deadline".into(),
                checkpoint,
            });
        }
        if reservation.remaining() == 0 {
            // More than one block was needed: restart to reserve the next.
            break Outcome::Restart(Restart {
                at: svc.clock.now(),
                reason: "next block of lookups".into(),
                checkpoint,
            });
        }
        let chunk: Vec<String> = cp.remaining.iter().take(per_call).cloned().collect();
        let records = match reservation.lookup(rt_name, &chunk).await {
            Ok(r) => r,
            Err(e) => break e.into_outcome(checkpoint),
        };
        let diff = match svc.store.diff(&key, rt_name, &records).await {
            Ok(d) => d,
            Err(e) => break Outcome::from_error_at(&e, checkpoint),
        };
        let mut pending = std::collections::BTreeMap::new();
        if let Err(e) = enqueue_followups(
            svc,
            job,
            rt_name,
            &diff.changes,
            &mut pending,
            &format!("c{}", cp.calls),
            true,
        )
        .await
        {
            break Outcome::from_error_at(&e, checkpoint);
        }
        if let Err(e) = svc
            .store
            .commit(&key, rt_name, &diff, svc.clock.now())
            .await
        {
            break Outcome::from_error_at(&e, checkpoint);
        }
        cp.remaining.drain(..chunk.len());
        cp.calls += 1;
        calls_here += 1;
    };
    if let Err(e) = reservation.finish().await {
        tracing::warn!(error = %e, "could not give back the unused reservation");
    }
    outcome
}

/// Holds lookups of a type whose first complete transfer has not finished
/// (starting that transfer if nothing runs it). `None`: go ahead.
async fn storm_guard(svc: &Services, job: &JobEnvelope, record_type: &str) -> Option<Outcome> {
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
    if state.last_completed.is_some() {
        return None;
    }
    let now = svc.clock.now();
    if let Err(e) =
        scheduler::start_sync(svc, &job.org, JobKind::CompleteTransfer, record_type, false).await
    {
        return Some(Outcome::from_error(&e));
    }
    let holder = svc
        .store
        .sync_state(&key, &transfer)
        .await
        .ok()
        .and_then(|s| s.lease_until);
    let at = holder
        .unwrap_or(now)
        .max(now + chrono::Duration::minutes(5));
    Some(Outcome::Restart(Restart {
        at,
        reason: format!(
            "waiting for the first complete transfer of `{record_type}` before looking keys up"
        ),
        checkpoint: None,
    }))
}
