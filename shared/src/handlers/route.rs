//! The one routing point: which handler runs a job of each kind.
//!
//! A Lambda function is the router restricted to its own kind
//! ([`Router::only`]); the local runner, `metered run` and the test worlds
//! use every kind at once ([`Router::all`]). [`Route::of`] is one
//! exhaustive `match`, so a new [`JobKind`] does not compile until it says
//! where it goes.

use crate::core::error::Result;
use crate::handlers::actions::ActionHandlers;
use crate::handlers::context::AppContext;
use crate::handlers::sync::SyncHandlers;
use crate::handlers::workflow::WorkflowHandler;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::ledger::ActionLedger;
use crate::jobs::runtime::{JobContext, JobHandler};
use async_trait::async_trait;
use std::sync::Arc;

/// The handler family a kind belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Listings and lookups ([`SyncHandlers`]).
    Sync,
    /// Triggers, manual and bulk runs ([`WorkflowHandler`]).
    Workflow,
    /// One API call per job, or a Data Source flush ([`ActionHandlers`]).
    Action,
    /// No deployed handler: `Spend` runs only where a test or the demo
    /// wires its own.
    Unrouted,
}

impl Route {
    /// Where a job of `kind` goes.
    pub(crate) fn of(kind: JobKind) -> Self {
        match kind {
            JobKind::CompleteTransfer | JobKind::RecentRecords | JobKind::PkLookup => Self::Sync,
            JobKind::Workflow => Self::Workflow,
            JobKind::ActionHttp | JobKind::ActionDatasourcePush => Self::Action,
            JobKind::Spend => Self::Unrouted,
        }
    }
}

/// Every handler a process runs, behind one [`JobHandler`]. Only the
/// families it serves are built, so a sync function does not compile the
/// workflows' CEL at its cold start.
pub struct Router {
    only: Option<JobKind>,
    sync: Option<SyncHandlers>,
    workflow: Option<WorkflowHandler>,
    actions: Option<ActionHandlers>,
}

impl Router {
    /// Every kind: one process playing every function.
    pub fn all(svc: Arc<AppContext>, ledger: Arc<dyn ActionLedger>) -> Result<Self> {
        Self::build(svc, ledger, None)
    }

    /// One function's view: jobs of any other kind are refused (and go to
    /// the dead-letter queue, naming both kinds).
    pub fn only(
        svc: Arc<AppContext>,
        ledger: Arc<dyn ActionLedger>,
        kind: JobKind,
    ) -> Result<Self> {
        Self::build(svc, ledger, Some(kind))
    }

    fn build(
        svc: Arc<AppContext>,
        ledger: Arc<dyn ActionLedger>,
        only: Option<JobKind>,
    ) -> Result<Self> {
        let serves = |route: Route| only.is_none_or(|k| Route::of(k) == route);
        Ok(Self {
            only,
            sync: serves(Route::Sync).then(|| SyncHandlers::all(svc.clone())),
            workflow: match serves(Route::Workflow) {
                true => Some(WorkflowHandler::new(svc.clone())?),
                false => None,
            },
            actions: serves(Route::Action).then(|| ActionHandlers::new(svc, ledger)),
        })
    }

    /// The handler built for `kind`, if this router serves it.
    fn handler(&self, kind: JobKind) -> Option<&dyn JobHandler> {
        if self.only.is_some_and(|k| k != kind) {
            return None;
        }
        match Route::of(kind) {
            Route::Sync => self.sync.as_ref().map(|h| h as &dyn JobHandler),
            Route::Workflow => self.workflow.as_ref().map(|h| h as &dyn JobHandler),
            Route::Action => self.actions.as_ref().map(|h| h as &dyn JobHandler),
            Route::Unrouted => None,
        }
    }
}

#[async_trait]
impl JobHandler for Router {
    fn name(&self) -> &str {
        self.only.map_or("local", JobKind::as_str)
    }

    fn accepts(&self, kind: JobKind) -> bool {
        self.handler(kind).is_some()
    }

    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
        match self.handler(job.kind) {
            Some(h) => h.handle(job, ctx).await,
            None => Outcome::Fail(format!(
                "`{}` does not take jobs of kind `{}`",
                self.name(),
                job.kind
            )),
        }
    }

    async fn gave_up(&self, job: &JobEnvelope, reason: &str) {
        if let Some(h) = self.handler(job.kind) {
            h.gave_up(job, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queued_kind_has_a_handler_and_spend_has_none() {
        for kind in JobKind::QUEUED {
            assert_ne!(Route::of(kind), Route::Unrouted, "{kind}");
        }
        assert_eq!(Route::of(JobKind::Spend), Route::Unrouted);
        assert_eq!(Route::of(JobKind::PkLookup), Route::Sync);
        assert_eq!(Route::of(JobKind::Workflow), Route::Workflow);
        assert_eq!(Route::of(JobKind::ActionDatasourcePush), Route::Action);
    }
}
