//! Jobs: the envelope every queued message carries ([`JobEnvelope`]), the
//! queue port ([`JobQueue`]), the ledgers that make at-least-once delivery
//! do work once ([`JobLedger`], [`ActionLedger`]), the lines of jobs parked
//! for a concurrency slot ([`SlotWaiters`]), what becomes of a message
//! (`fate.rs`, a pure rule) and the runtime that carries it out
//! ([`JobRuntime`]). No Lambda types here: the edge
//! adapts Lambda's events to the runtime.

pub(crate) mod envelope;
pub(crate) mod fate;
pub(crate) mod ledger;
pub(crate) mod queue;
pub(crate) mod runtime;
pub(crate) mod waiters;

// The face of the layer: what the functions, the CLI and the tests name.
pub use envelope::{sync_lease, JobEnvelope, JobKind, Outcome};
pub use fate::{RestartPolicy, NOT_BEFORE_REASON};
pub use ledger::{ActionBegin, ActionLedger, Claim, JobLedger};
pub use queue::{Choose, DeadLetter, Delivery, JobQueue, Queues};
pub use runtime::{JobContext, JobHandler, JobRuntime, Settled};
pub use waiters::{SlotWaiters, SLOT_BACKSTOP_GRACE_SECS};
