//! Workflows: triggers, decision nodes, and actions that spend calls.
//!
//! The `workflow` handler reads records from the store (no API call),
//! resolves related records through foreign keys, evaluates the decision
//! nodes in CEL, and enqueues action jobs only for records that pass.
//! Actions (`action-http`, `action-datasource-push`) spend quota like the
//! syncs and run at most once per trigger: each has an idempotency key,
//! recorded before the call and marked done after, and sent to the API as
//! `Idempotency-Key`.

pub mod actions;
pub mod config;
pub mod engine;
pub mod template;

pub use engine::{RunPayload, WorkflowEstimate, WorkflowHandler};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::quota::QuotaKey;
use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// What the action ledger knows of an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionBegin {
    /// Never attempted.
    New,
    /// Attempted before without being marked done: the call may have
    /// happened. It is made again with the same `Idempotency-Key`.
    Again,
    /// Done: nothing to do.
    Done,
}

/// The begin rule, in one place for every adapter: `stored` is `None` for a
/// key never begun, else whether it was marked done.
pub fn decide_begin(stored: Option<bool>) -> ActionBegin {
    match stored {
        None => ActionBegin::New,
        Some(true) => ActionBegin::Done,
        Some(false) => ActionBegin::Again,
    }
}

/// Idempotency keys of actions, stored before the call and marked after.
///
/// Keys are scoped by org and app (`scope`): tenants of one app reuse record
/// ids, and one tenant's finished action must never make another's look done.
#[async_trait]
pub trait ActionLedger: Send + Sync {
    /// Applies [`decide_begin`] atomically, recording a new key as begun.
    async fn begin_action(
        &self,
        scope: &QuotaKey,
        key: &str,
        now: Timestamp,
    ) -> Result<ActionBegin>;
    async fn finish_action(&self, scope: &QuotaKey, key: &str, now: Timestamp) -> Result<()>;
    /// Forgets a begun key whose call was never made (the quota refused),
    /// so the next attempt is a first attempt, not a replay.
    async fn abandon_action(&self, scope: &QuotaKey, key: &str) -> Result<()>;
}

/// The `Idempotency-Key` of an action: a digest of the org, the app and
/// `parts` (workflow, action, record, version, trigger…), so two tenants'
/// actions on records with the same id never share a key, at the API or in
/// the ledger. Parts are length-prefixed, so no choice of ids can make two
/// different part lists hash alike. Readable prefix, bounded length (APIs
/// cap the header, e.g. at 255 characters).
pub fn idempotency_key(scope: &QuotaKey, label: &str, parts: &[&str]) -> String {
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
    fn idempotency_keys_differ_between_orgs_and_part_splits() {
        let a = QuotaKey::new("org-a", "crm");
        let b = QuotaKey::new("org-b", "crm");
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
