//! # metered
//!
//! The library every metered handler shares: it spends a third-party API's
//! call budget like money and restarts work later instead of sleeping.
//!
//! ## Layers, bottom first
//!
//! Each layer imports only the layers beneath it (checked by
//! `shared/tests/layers.rs`); the three ports of layer 4 do not import each
//! other.
//!
//! ```text
//!  7  edge       lambda (SQS/EventBridge loop, feature aws) · hosted (Function URL) · local (one process, feature sqlite)
//!  6  adapters   aws: DynamoDB quota+store, SQS queue      · sqlite: the same on one file
//!  5  handlers   route (one match on JobKind) · payload · start · flow (`?`) · sync · schedule · workflow · actions · hosted GET · AppContext
//!  4  ports      connector (API calls)   · jobs (envelope, queue, ledgers, fate, runtime) · store (records, leases)
//!  3  config     AppConfig: app, record types, syncs, workflows — validated in one pass (validate)
//!  2  quota      key · limits · port · rules · usage · facade (windows, buckets, shares, waves)
//!  1  core       clock · error · tenant · record
//! ```
//!
//! - [`core`] — time as a port ([`core::ManualClock`] in tests), the
//!   one error type that says retryable or permanent, the tenant (whose
//!   records, ledgers and budget), records and their content hash.
//! - [`quota`] — the budget: port [`quota::QuotaStore`], its pure rules
//!   (`explain_denial`) and the facade [`quota::Quota`].
//! - [`config`] — [`config::AppConfig`] and everything it holds.
//! - [`connector`] — third-party APIs: the [`connector::Connector`] port, the
//!   declarative REST connector, secrets, and [`connector::Metered`] (every
//!   call through the quota; 429 → shared block → restart).
//! - [`jobs`] — the envelope and a handler's [`jobs::Outcome`], the
//!   queue port, the job and action ledgers with their claim rules, and the
//!   `jobs::fate::decide` (what becomes of a message: a pure rule) and the
//!   [`jobs::JobRuntime`] that carries it out (restarts with delay
//!   and jitter, `not_before`, dead letters; waits are never capped).
//! - [`store`] — synced records, sync state (high-water marks, leases),
//!   lookup claims, quarantine; the diff and lease rules.
//! - [`handlers`] — what each function does with a job, through one
//!   [`handlers::AppContext`]; [`handlers::Router`] is the
//!   one place a job kind finds its handler.
//! - [`adapters`] — [`adapters::aws`] and [`adapters::sqlite`], I/O only.
//! - [`edge`] — [`edge::lambda`], `edge::hosted` (Hosted GET's Function URL
//!   edge), [`edge::cold_start`] (each function's first job, timed) and
//!   [`edge::local`].
//!
//! Forecasting (`metered plan`) lives in the CLI: the Lambdas never run it.
//!
//! ## Example
//!
//! ```
//! use metered::core::{ManualClock, SharedClock};
//! use metered::adapters::sqlite::SqliteQuota;
//! use metered::quota::{Admission, Call, Limits, Quota, QuotaKey};
//! use metered::adapters::sqlite::Db;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> metered::core::Result<()> {
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

pub mod adapters;
pub mod config;
pub mod connector;
pub mod core;
pub mod edge;
pub mod handlers;
pub mod jobs;
pub mod quota;
pub mod store;

pub use crate::core::error::{Error, Result};

// The face: the types every user of the library (the functions, the CLI,
// the tests) names, importable from the crate root. Each layer is a public
// module whose files are private (`pub(crate) mod`): what a user may name
// is the layer's `pub use` list (`metered::jobs::JobKind`, never
// `metered::jobs::envelope::JobKind`), and an item only the library uses is
// `pub(crate)` (`unreachable_pub` is warned in the workspace lints).
pub use crate::config::app::AppConfig;
pub use crate::core::clock::{ManualClock, SharedClock, SystemClock, Timestamp};
pub use crate::core::record::Record;
pub use crate::core::tenant::Tenant;
pub use crate::handlers::context::AppContext;
pub use crate::handlers::route::Router;
pub use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
pub use crate::quota::{Limits, Quota, QuotaKey};
