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
use async_trait::async_trait;

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

/// Idempotency keys of actions, stored before the call and marked after.
#[async_trait]
pub trait ActionLedger: Send + Sync {
    async fn begin_action(&self, key: &str, now: Timestamp) -> Result<ActionBegin>;
    async fn finish_action(&self, key: &str, now: Timestamp) -> Result<()>;
    /// Forgets a begun key whose call was never made (the quota refused),
    /// so the next attempt is a first attempt, not a replay.
    async fn abandon_action(&self, key: &str) -> Result<()>;
}
