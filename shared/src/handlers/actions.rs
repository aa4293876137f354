//! The action handlers: one API call per job, through the quota, at most
//! once per idempotency key; `action-datasource-push` jobs flush a Data
//! Source's outbox (`handlers::datasource`).
//!
//! A crash between the call and the mark leaves the key begun but not done;
//! the redelivery calls again with the same `Idempotency-Key`, so an API
//! that honours the key performs it once (the simulator does, and the tests
//! count its creates per key). An API that ignores the key could see it
//! twice: metered chooses "at least once, deduplicated by key" over "at most
//! once", which could lose an action.

use crate::connector::{CallError, Metered, SendRequest};
use crate::core::metrics::Counter;
use crate::handlers::context::AppContext;
use crate::handlers::flow::{fail, settled, Flow, Settle};
use crate::handlers::payload::{HttpActionPayload, PushJob};
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::ledger::{ActionBegin, ActionLedger};
use crate::jobs::runtime::{JobContext, JobHandler};
use async_trait::async_trait;
use std::sync::Arc;

/// The `action-http` and `action-datasource-push` handlers.
pub(crate) struct ActionHandlers {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    /// Where each action's idempotency key is recorded.
    pub ledger: Arc<dyn ActionLedger>,
}

impl ActionHandlers {
    /// The action handlers (both action kinds).
    pub(crate) fn new(svc: Arc<AppContext>, ledger: Arc<dyn ActionLedger>) -> Self {
        Self { svc, ledger }
    }
}

#[async_trait]
impl JobHandler for ActionHandlers {
    fn name(&self) -> &str {
        "actions"
    }

    fn accepts(&self, kind: JobKind) -> bool {
        matches!(kind, JobKind::ActionHttp | JobKind::ActionDatasourcePush)
    }

    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
        settled(self.act(job, ctx).await)
    }
}

/// What an action job does.
enum Action {
    /// Flush a Data Source's outbox (`handlers::datasource`).
    Flush(crate::handlers::payload::FlushPayload),
    /// One API call, metered under the workflow that asked for it.
    Call {
        workflow: String,
        request: SendRequest,
        /// A bulk execution's action: background work.
        background: bool,
    },
}

impl ActionHandlers {
    /// [`JobHandler::handle`], written with `?`.
    async fn act(&self, job: &JobEnvelope, ctx: &JobContext) -> Flow<Outcome> {
        let (workflow, request, background) = match self.action(job)? {
            Action::Flush(p) => {
                return Ok(crate::handlers::datasource::flush(&self.svc, job, ctx, p).await)
            }
            Action::Call {
                workflow,
                request,
                background,
            } => (workflow, request, background),
        };
        self.begin(job, ctx).await?;
        let metered = self
            .svc
            .metered(&job.org, &format!("workflow:{workflow}"))
            .or_else(fail)?
            .in_background(background);
        let outcome = self.call(job, &metered, &request).await;
        if let Err(e) = self.svc.quota.flush_usage().await {
            tracing::warn!(error = %e, "usage flush failed; kept for the next flush");
        }
        Ok(outcome)
    }

    /// What the job's payload asks for, or why it cannot be read.
    fn action(&self, job: &JobEnvelope) -> Flow<Action> {
        let idempotency_key = Some(job.idempotency_key.clone());
        match job.kind {
            JobKind::ActionHttp => {
                let p = serde_json::from_value::<HttpActionPayload>(job.payload.clone())
                    .or_else(|e| fail(format!("bad `action-http` payload: {e}")))?;
                let request = SendRequest {
                    method: p.method,
                    path: p.path,
                    body: p.body,
                    idempotency_key,
                };
                Ok(Action::Call {
                    workflow: p.workflow,
                    request,
                    background: p.background,
                })
            }
            JobKind::ActionDatasourcePush => match PushJob::of(job).or_else(fail)? {
                PushJob::Flush(p) => Ok(Action::Flush(p)),
                PushJob::Legacy(p) => {
                    let shape = &self.svc.config.app.datasource_push;
                    let request = SendRequest {
                        method: shape.method.clone(),
                        path: shape.path_for(&p.datasource),
                        body: Some(shape.body(p.inserts, p.deletes)),
                        idempotency_key,
                    };
                    Ok(Action::Call {
                        workflow: p.workflow,
                        request,
                        background: false,
                    })
                }
            },
            other => fail(format!("`{other}` is not an action job")),
        }
    }

    /// Takes the action's idempotency key in the ledger, or ends the job:
    /// done already, or another delivery holds the key. The key is held
    /// until this invocation ends: a duplicate delivery (or a second
    /// trigger of the same version) waits instead of calling beside it.
    async fn begin(&self, job: &JobEnvelope, ctx: &JobContext) -> Flow<()> {
        let now = self.svc.clock.now();
        let until = ctx
            .claim_until()
            .unwrap_or(now + chrono::Duration::minutes(5));
        let key = &job.idempotency_key;
        match self.ledger.begin_action(&job.tenant(), key, now, until).await.or_end()? {
            ActionBegin::Done => {
                tracing::info!(%key, "action already performed; skipping");
                Err(Outcome::Done)
            }
            ActionBegin::InProgress(until) => Err(Outcome::wait(
                until,
                "another delivery of this action holds its Idempotency-Key (it may be calling the API now)",
                None,
            )),
            ActionBegin::Again => {
                tracing::warn!(%key, "action attempted before; calling again with the same Idempotency-Key");
                Ok(())
            }
            ActionBegin::New => Ok(()),
        }
    }

    /// Makes the call and marks the key done. A call refused before the
    /// API acted frees the key for the retry; a call that happened and
    /// could not be marked is repeated by the redelivery under the same key.
    async fn call(&self, job: &JobEnvelope, metered: &Metered, request: &SendRequest) -> Outcome {
        let scope = job.tenant();
        let key = &job.idempotency_key;
        match metered.send(request).await {
            Ok(_) => {
                let now = self.svc.clock.now();
                if let Err(e) = self.ledger.finish_action(&scope, key, now).await {
                    return Outcome::from_error(&e);
                }
                let performed = Counter::ActionsPerformed;
                self.svc.metrics.add(&job.app, &job.org, performed, 1);
                Outcome::Done
            }
            Err(e) => {
                if matches!(e, CallError::Denied(_) | CallError::Unauthorized { .. }) {
                    if let Err(err) = self.ledger.abandon_action(&scope, key).await {
                        tracing::warn!(error = %err, "could not reset the action ledger");
                    }
                }
                e.into_outcome(None)
            }
        }
    }
}
