//! The handlers: what each Lambda function (and the local runner) does with
//! a job. They reach the ports through one [`context::AppContext`] and never
//! name an adapter.

pub(crate) mod actions;
pub(crate) mod context;
pub(crate) mod datasource;
pub(crate) mod flow;
#[cfg(feature = "hosted")]
pub(crate) mod hosted;
pub(crate) mod payload;
pub(crate) mod route;
// Public as a module: its `tick` and `handle` are named through it.
pub mod schedule;
pub(crate) mod start;
pub(crate) mod sync;
pub(crate) mod workflow;

// The face of the layer: what the functions, the CLI and the tests name.
pub use context::{http_connectors, http_connectors_with, AppContext};
pub use datasource::schedule_flush;
#[cfg(feature = "hosted")]
pub use hosted::{resolve_secrets, HostedRequest, HostedResponse, HostedService, MAX_ROWS_READ};
pub use payload::{HttpActionPayload, RunPayload, TriggerPayload};
pub use route::Router;
pub use start::start_sync;
pub use sync::estimate::estimate;
pub use workflow::WorkflowHandler;

use crate::connector::CallError;
use crate::jobs::envelope::Outcome;
use serde_json::Value;

/// How a failed API call ends a job. Lives with the handlers, not the
/// connector: the connector knows calls, the handlers know jobs.
pub trait IntoOutcome {
    /// What a handler returns: denials and rate limits restart from
    /// `checkpoint` at the moment capacity returns; transient failures (a
    /// quota-store error, a 5xx, a broken body) restart from it after a
    /// bounded backoff, so nothing already fetched is fetched (and paid
    /// for) again.
    fn into_outcome(self, checkpoint: Option<Value>) -> Outcome;
}

impl IntoOutcome for CallError {
    fn into_outcome(self, checkpoint: Option<Value>) -> Outcome {
        match self {
            CallError::Denied(d) => Outcome::denied(&d, checkpoint),
            CallError::RateLimited { retry_at } => Outcome::wait(
                retry_at,
                "rate limited by the API (Retry-After)",
                checkpoint,
            ),
            CallError::Retryable(m) => Outcome::transient(m, checkpoint),
            // A time already past restarts at once.
            CallError::ReservationEnded => Outcome::resume(
                chrono::DateTime::<chrono::Utc>::MIN_UTC,
                "the reserved calls' window ended; reserving anew",
                checkpoint,
            ),
            CallError::Unauthorized { reason, retry_at } => {
                Outcome::wait(retry_at, reason, checkpoint)
            }
            CallError::Rejected(m) | CallError::Permanent(m) => Outcome::Fail(m),
        }
    }
}
