//! The ledgers that make at-least-once delivery do work once.
//!
//! The job ledger drops a duplicate delivery of a job generation; the action
//! ledger makes every action call happen at most once per idempotency key
//! (recorded before the call, marked done after, sent to the API as
//! `Idempotency-Key`). The rules ([`decide_claim`], [`decide_begin`]) are
//! pure and live here; adapters only store entries atomically.

use crate::core::clock::Timestamp;
use crate::core::error::Result;
use crate::core::tenant::Tenant;
use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// What the job ledger says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody has worked on this generation: go ahead.
    Granted,
    /// Go ahead, again: this generation was claimed before and did not
    /// finish (its delivery crashed, timed out or gave it back), so work it
    /// did before it stopped may already be stored and must be found again.
    Rerun,
    /// Another delivery of the same generation is being worked on now.
    InProgress,
    /// This generation already finished.
    AlreadyDone,
    /// A newer generation of the job exists: this copy is stale.
    Stale,
}

/// What the ledger holds for one job: its latest generation, whether that
/// generation finished, and until when a delivery holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LedgerEntry {
    /// The job generation the entry is about.
    pub generation: u32,
    /// Whether that generation finished.
    pub done: bool,
    /// Until when the invocation that claimed it may still be running.
    pub claimed_until: Timestamp,
}

/// The claim rule, in one place for every adapter: a delivery of
/// `generation` may run unless a newer generation exists (stale), this one
/// finished (done), or another delivery holds a claim that has not ended.
/// Adapters only store the entry atomically; they never decide.
pub(crate) fn decide_claim(stored: Option<LedgerEntry>, generation: u32, now: Timestamp) -> Claim {
    match stored {
        Some(e) if e.generation > generation => Claim::Stale,
        Some(e) if e.generation == generation && e.done => Claim::AlreadyDone,
        Some(e) if e.generation == generation && e.claimed_until > now => Claim::InProgress,
        Some(e) if e.generation == generation => Claim::Rerun,
        _ => Claim::Granted,
    }
}

/// Job id → latest generation, so a duplicate delivery (SQS is
/// at-least-once; a crash after a re-send but before the ack leaves two
/// copies) is dropped without doing its work twice.
///
/// Entries are scoped by org and app ([`Tenant`]): ids come from messages,
/// and one tenant's message must never settle another's job. A claim ends
/// with the invocation that took it (its deadline), so the redelivery of a
/// crashed invocation runs; a delivery that finds a live claim is left on the
/// queue, never acknowledged.
#[async_trait]
pub trait JobLedger: Send + Sync {
    /// Applies [`decide_claim`] atomically and, when granted, records the
    /// claim until `until`.
    async fn claim(
        &self,
        key: &Tenant,
        job_id: &str,
        generation: u32,
        now: Timestamp,
        until: Timestamp,
    ) -> crate::core::error::Result<Claim>;
    /// `done`: the generation finished (or was re-sent as the next one);
    /// otherwise the claim is released so a redelivery may run at once.
    async fn settle(
        &self,
        key: &Tenant,
        job_id: &str,
        generation: u32,
        done: bool,
    ) -> crate::core::error::Result<()>;
}

/// What the action ledger knows of an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionBegin {
    /// Never attempted.
    New,
    /// Attempted before without being marked done, by a delivery whose
    /// claim has ended: the call may have happened. It is made again with
    /// the same `Idempotency-Key`.
    Again,
    /// Another delivery holds the key until this time (it may be calling
    /// the API right now): wait for it rather than call beside it — an API
    /// may answer a concurrent duplicate key with 409, and one that ignores
    /// keys would perform it twice.
    InProgress(Timestamp),
    /// Done: nothing to do.
    Done,
}

/// What the ledger holds for a key: whether it is done, and until when the
/// delivery that last began it holds it (`None` in entries written before
/// claims existed: held by nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActionEntry {
    /// Marked done.
    pub done: bool,
    /// The claim of the delivery that last began it.
    pub claimed_until: Option<Timestamp>,
}

/// The begin rule, in one place for every adapter: `stored` is `None` for a
/// key never begun. New and Again take the claim (until the invocation
/// ends); InProgress and Done leave the entry as it is.
pub(crate) fn decide_begin(stored: Option<ActionEntry>, now: Timestamp) -> ActionBegin {
    match stored {
        None => ActionBegin::New,
        Some(ActionEntry { done: true, .. }) => ActionBegin::Done,
        Some(ActionEntry {
            claimed_until: Some(until),
            ..
        }) if until > now => ActionBegin::InProgress(until),
        Some(_) => ActionBegin::Again,
    }
}

/// Idempotency keys of actions, stored before the call and marked after.
///
/// Keys are scoped by org and app (`scope`): tenants of one app reuse record
/// ids, and one tenant's finished action must never make another's look done.
#[async_trait]
pub trait ActionLedger: Send + Sync {
    /// Applies [`decide_begin`] atomically: a new key is recorded as begun,
    /// and a new or retried one is claimed until `until` (the end of the
    /// invocation that will make the call).
    async fn begin_action(
        &self,
        scope: &Tenant,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<ActionBegin>;
    /// Records the action as performed; it will never run again.
    async fn finish_action(&self, scope: &Tenant, key: &str, now: Timestamp) -> Result<()>;
    /// Forgets a begun key whose call was never made (the quota refused),
    /// so the next attempt is a first attempt, not a replay.
    async fn abandon_action(&self, scope: &Tenant, key: &str) -> Result<()>;
}

/// The `Idempotency-Key` of an action: a digest of the org, the app and
/// `parts` (workflow, action, record, version, trigger…), so two tenants'
/// actions on records with the same id never share a key, at the API or in
/// the ledger. Parts are length-prefixed, so no choice of ids can make two
/// different part lists hash alike. Readable prefix, bounded length (APIs
/// cap the header, e.g. at 255 characters).
pub(crate) fn idempotency_key(scope: &Tenant, label: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in [scope.org.as_str(), scope.app.as_str()]
        .into_iter()
        .chain(parts.iter().copied())
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest: String = h
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(48)
        .collect();
    format!("mt-{label}-{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_progress_is_waited_for_until_its_claim_ends() {
        use chrono::TimeZone;
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .unwrap();
        let later = now + chrono::Duration::seconds(30);
        let entry = |done, until| {
            Some(ActionEntry {
                done,
                claimed_until: until,
            })
        };
        assert_eq!(decide_begin(None, now), ActionBegin::New);
        assert_eq!(
            decide_begin(entry(true, Some(later)), now),
            ActionBegin::Done
        );
        assert_eq!(
            decide_begin(entry(false, Some(later)), now),
            ActionBegin::InProgress(later)
        );
        assert_eq!(
            decide_begin(entry(false, Some(now)), now),
            ActionBegin::Again
        );
        assert_eq!(decide_begin(entry(false, None), now), ActionBegin::Again);
    }

    #[test]
    fn idempotency_keys_differ_between_orgs_and_part_splits() {
        let a = Tenant::new("org-a", "crm");
        let b = Tenant::new("org-b", "crm");
        let ka = idempotency_key(&a, "vip", &["vip", "0", "inv_1", "h"]);
        assert_eq!(ka, idempotency_key(&a, "vip", &["vip", "0", "inv_1", "h"]));
        assert_ne!(ka, idempotency_key(&b, "vip", &["vip", "0", "inv_1", "h"]));
        assert_ne!(
            idempotency_key(&a, "x", &["ab", "c"]),
            idempotency_key(&a, "x", &["a", "bc"])
        );
        assert!(ka.starts_with("mt-vip-") && ka.len() < 100, "{ka}");
    }
}
