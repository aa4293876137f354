//! # metered
//!
//! The library every metered handler shares: it spends a third-party API's
//! call budget like money and restarts work later instead of sleeping.
//!
//! ## Layout
//!
//! - [`clock`] — time as a port; tests and simulations use [`clock::ManualClock`].
//! - [`quota`] — the budget: windows, concurrency leases, blocks, usage.
//!   Port [`quota::QuotaStore`], adapters `quota::dynamodb` and `quota::sqlite`,
//!   facade [`quota::Quota`].
//! - [`connector`] — third-party APIs: the [`connector::Connector`] port,
//!   the declarative REST connector, secrets, and [`connector::Metered`]
//!   (every call through the quota; 429 → shared block → restart).
//! - [`job`] — the job envelope and a handler's [`job::Outcome`].
//! - [`queue`] — the job-queue port, adapters `queue::sqs` and `queue::sqlite`.
//! - [`runtime`] — outcome → queue operations: restarts with delay and
//!   jitter, `not_before`, the restart cap, dead letters, partial batch
//!   responses for SQS-triggered Lambdas.
//! - [`store`] — synced records with content hashes, and sync state
//!   (high-water marks, leases); adapters `store::dynamodb`, `store::sqlite`.
//! - [`sqlite`], [`dynamodb`] — the database handles the adapters share.
//! - [`lambda`] — the Lambda edge: typed env config, clients built once,
//!   the SQS loop every function's `main.rs` calls.
//! - [`services`], [`sync`] — the sync handlers and what they share.
//! - [`local`] — every handler in one process on SQLite (`metered run`).
//! - [`plan`] — forecasting the calls an app will drive (`metered plan`).
//! - [`workflow`] — triggers, CEL decision nodes, actions that run once.
//! - [`error`] — one error type that says retryable or permanent.
//!
//! ## Example
//!
//! ```
//! use metered::clock::{ManualClock, SharedClock};
//! use metered::quota::{sqlite::SqliteQuota, Admission, Call, Limits, Quota, QuotaKey};
//! use metered::sqlite::Db;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> metered::error::Result<()> {
//! let clock = ManualClock::new(chrono::Utc::now());
//! let quota = Quota::new(Arc::new(SqliteQuota::new(Db::in_memory()?)), Arc::new(clock) as SharedClock);
//! let key = QuotaKey::new("acme", "crm");
//! let limits = Limits::seed_example(); // 2,500 calls a day, 3 concurrent
//! match quota.acquire(&key, &limits, Call::new("complete-transfer:invoices", "GET /invoices")).await? {
//!     Admission::Granted(permit) => {
//!         // ... make the call ...
//!         quota.release(permit, 1).await?;
//!     }
//!     Admission::Denied(denied) => {
//!         // Restart the job at denied.retry_at; never sleep.
//!         println!("come back at {}", denied.retry_at);
//!     }
//! }
//! quota.flush_usage().await?;
//! # Ok(()) }
//! ```

pub mod clock;
pub mod connector;
pub mod dynamodb;
pub mod error;
pub mod job;
pub mod lambda;
pub mod local;
pub mod plan;
pub mod queue;
pub mod quota;
pub mod runtime;
pub mod services;
pub mod sqlite;
pub mod store;
pub mod sync;
pub mod workflow;

pub use error::{Error, Result};
