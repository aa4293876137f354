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

use crate::connector::SendRequest;
use crate::core::metrics::Counter;
use crate::handlers::context::AppContext;
use crate::handlers::payload::{HttpActionPayload, PushJob};
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::ledger::{ActionBegin, ActionLedger};
use crate::jobs::runtime::{JobContext, JobHandler};
use async_trait::async_trait;
use std::sync::Arc;

/// The `action-http` and `action-datasource-push` handlers.
pub struct ActionHandlers {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    /// Where each action's idempotency key is recorded.
    pub ledger: Arc<dyn ActionLedger>,
}

impl ActionHandlers {
    /// The action handlers (both action kinds).
    pub fn new(svc: Arc<AppContext>, ledger: Arc<dyn ActionLedger>) -> Self {
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
        let (workflow, request) = match job.kind {
            JobKind::ActionHttp => {
                match serde_json::from_value::<HttpActionPayload>(job.payload.clone()) {
                    Ok(p) => (
                        p.workflow,
                        SendRequest {
                            method: p.method,
                            path: p.path,
                            body: p.body,
                            idempotency_key: Some(job.idempotency_key.clone()),
                        },
                    ),
                    Err(e) => return Outcome::Fail(format!("bad `action-http` payload: {e}")),
                }
            }
            JobKind::ActionDatasourcePush => match PushJob::of(job) {
                Ok(PushJob::Flush(p)) => {
                    return crate::handlers::datasource::flush(&self.svc, job, ctx, p).await
                }
                Ok(PushJob::Legacy(p)) => {
                    let shape = &self.svc.config.app.datasource_push;
                    (
                        p.workflow,
                        SendRequest {
                            method: shape.method.clone(),
                            path: shape.path_for(&p.datasource),
                            body: Some(shape.body(p.inserts, p.deletes)),
                            idempotency_key: Some(job.idempotency_key.clone()),
                        },
                    )
                }
                Err(e) => return Outcome::Fail(e),
            },
            other => return Outcome::Fail(format!("`{other}` is not an action job")),
        };
        let now = self.svc.clock.now();
        let scope = job.quota_key();
        // The key is held until this invocation ends: a duplicate delivery
        // (or a second trigger of the same version) waits instead of
        // calling beside it.
        let until = ctx
            .claim_until()
            .unwrap_or(now + chrono::Duration::minutes(5));
        match self
            .ledger
            .begin_action(&scope, &job.idempotency_key, now, until)
            .await
        {
            Ok(ActionBegin::Done) => {
                tracing::info!(key = %job.idempotency_key, "action already performed; skipping");
                return Outcome::Done;
            }
            Ok(ActionBegin::InProgress(until)) => {
                return Outcome::wait(
                    until,
                    "another delivery of this action holds its Idempotency-Key (it may be calling the API now)",
                    None,
                );
            }
            Ok(ActionBegin::Again) => {
                tracing::warn!(key = %job.idempotency_key, "action attempted before; calling again with the same Idempotency-Key")
            }
            Ok(ActionBegin::New) => {}
            Err(e) => return Outcome::from_error(&e),
        }
        let metered = match self.svc.metered(&job.org, &format!("workflow:{workflow}")) {
            Ok(m) => m,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        let outcome = match metered.send(&request).await {
            Ok(_) => match self
                .ledger
                .finish_action(&scope, &job.idempotency_key, self.svc.clock.now())
                .await
            {
                Ok(()) => {
                    self.svc
                        .metrics
                        .add(&job.app, &job.org, Counter::ActionsPerformed, 1);
                    Outcome::Done
                }
                // The call happened; a redelivery repeats it under the same key.
                Err(e) => Outcome::from_error(&e),
            },
            Err(e) => {
                // Refused before the API acted: the key is free for the retry.
                if matches!(
                    e,
                    crate::connector::CallError::Denied(_)
                        | crate::connector::CallError::Unauthorized { .. }
                ) {
                    if let Err(err) = self
                        .ledger
                        .abandon_action(&scope, &job.idempotency_key)
                        .await
                    {
                        tracing::warn!(error = %err, "could not reset the action ledger");
                    }
                }
                e.into_outcome(None)
            }
        };
        if let Err(e) = self.svc.quota.flush_usage().await {
            tracing::warn!(error = %e, "usage flush failed; kept for the next flush");
        }
        outcome
    }
}
