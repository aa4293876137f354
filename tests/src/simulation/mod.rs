//! A seeded simulation of the deployed shape: every queue's event source at
//! once, as Lambda runs them, on one clock the seed drives.
//!
//! What one seed decides ([`world::Simulation::run`]):
//!
//! - which ready job goes on next, at every port call (store, ledgers,
//!   outbox, quota, queue, the API): [`sched`];
//! - when each queue's event source takes a batch (1 to 10 messages) and
//!   starts an invocation (at most the template's `MaximumConcurrency` per
//!   kind), each with its function's timeout as a deadline;
//! - duplicate deliveries (a message sent twice), sends whose response is
//!   lost (sent, but the sender is told it failed), crashes at any port
//!   call (the invocation stops there; its messages come back after their
//!   visibility timeout), Lambda timeouts mid-batch (the clock passes an
//!   invocation's deadline);
//! - the clock: small steps while jobs run, jumps to the next due message
//!   when nothing is ready, the scheduler's tick every 5 minutes;
//! - changes at the API: invoices modified and created while syncs run.
//!
//! The scenario ([`world::scenario`]) has two organizations whose record
//! ids coincide, a complete transfer and recent lookups of invoices, PK
//! lookups of their customers, a workflow with a related record, HTTP
//! actions, a pushed and a hosted Data Source. After the run settles,
//! [`check`] reads what the API saw and what the store holds, per org:
//! every record stored at its latest version, every due action performed
//! exactly once (creates counted per `Idempotency-Key` and per record at
//! the simulated API), every row pushed or hosted, no window exceeded,
//! every job done (nothing waiting, nothing dead).
//!
//! A failing seed panics with `METERED_SEED=<seed>`; that variable makes
//! the simulation test run that seed alone, and the run replays exactly
//! (ids come from the seed too: `metered::core::ids`). Why a scheduler of
//! our own rather than shuttle, loom or madsim: those replace the runtime
//! or the synchronisation primitives under the whole program (tokio, the
//! AWS SDK, reqwest, rusqlite), which the library cannot run on; the
//! interleavings that matter here are between port calls, where this
//! scheduler sits, and nowhere else.

pub mod check;
pub mod sched;
pub mod world;
