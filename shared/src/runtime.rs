//! Turning handler outcomes into queue operations.
//!
//! [`JobRuntime::process`] is the one place where a message's fate is
//! decided:
//!
//! - a body that is not a valid envelope, or a kind this handler does not
//!   take, goes to the dead-letter queue with the reason;
//! - a job that arrives before its `not_before` is re-sent for the remaining
//!   time without doing any work (SQS delays stop at 900 s);
//! - [`Outcome::Restart`] re-sends the job with its checkpoint and a delay
//!   until the restart time plus jitter, unless the restart cap is reached, in
//!   which case it goes to the dead-letter queue;
//! - [`Outcome::Retry`] leaves the message to the queue's redelivery;
//! - [`Outcome::Fail`] goes to the dead-letter queue.
//!
//! The new message is always sent *before* the old one is acknowledged: if
//! the send fails the message is reported as failed, so the queue delivers it
//! again. Nothing is acknowledged that was not re-sent.

use crate::clock::{SharedClock, Timestamp};
use crate::job::{JobEnvelope, JobKind, Outcome, Restart};
use crate::queue::{JobQueue, MAX_DELAY_SECS};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use std::sync::Arc;
use std::time::Instant;

/// The reason given when an early arrival is re-sent for the rest of its wait.
pub const NOT_BEFORE_REASON: &str = "waiting for not_before";

/// Restart rules, as data. Defaults: 100 restarts, up to 30 s of jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Past this many restarts a job goes to the dead-letter queue.
    pub max_restarts: u32,
    /// Spread restarts over up to this many extra seconds, so a window reset
    /// does not wake every waiting job at the same instant.
    pub max_jitter_secs: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 100,
            max_jitter_secs: 30,
        }
    }
}

/// What a handler knows about the invocation it runs in.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// When Lambda will kill the invocation; handlers checkpoint and restart
    /// before it.
    pub deadline: Option<Instant>,
}

impl JobContext {
    /// True when less than `margin` remains before the deadline.
    pub fn near_deadline(&self, margin: std::time::Duration) -> bool {
        self.deadline
            .is_some_and(|d| d.saturating_duration_since(Instant::now()) < margin)
    }
}

/// A handler of one or more job kinds.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// For logs and dead-letter reasons.
    fn name(&self) -> &str;
    fn accepts(&self, kind: JobKind) -> bool;
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome;
}

/// What the job ledger says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody works on this generation: go ahead.
    Granted,
    /// Another delivery of the same generation is being worked on now.
    InProgress,
    /// This generation already finished.
    AlreadyDone,
    /// A newer generation of the job exists: this copy is stale.
    Stale,
}

/// Job id → latest generation, so a duplicate delivery (SQS is
/// at-least-once; a crash after a re-send but before the ack leaves two
/// copies) is dropped without doing its work twice. A claim expires, so the
/// redelivery of a crashed invocation still runs.
#[async_trait]
pub trait JobLedger: Send + Sync {
    async fn claim(
        &self,
        job_id: &str,
        generation: u32,
        now: Timestamp,
        until: Timestamp,
    ) -> crate::error::Result<Claim>;
    /// `done`: the generation finished (or was re-sent as the next one);
    /// otherwise the claim is released so a redelivery may run at once.
    async fn settle(&self, job_id: &str, generation: u32, done: bool) -> crate::error::Result<()>;
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Done; delete it.
    Done,
    /// Re-sent (restart or early arrival); delete this copy.
    Restarted { delay_secs: u32, reason: String },
    /// Sent to the dead-letter queue; delete this copy.
    DeadLettered { reason: String },
    /// Leave it for redelivery (transient failure, or a send that failed).
    Retry { reason: String },
    /// A duplicate or stale copy, dropped without work.
    Skipped { reason: String },
}

impl Settled {
    /// Whether the received copy may be deleted.
    pub fn ack(&self) -> bool {
        !matches!(self, Settled::Retry { .. })
    }
}

/// Queue, clock and policy: what processing a message needs.
#[derive(Clone)]
pub struct JobRuntime {
    pub queue: Arc<dyn JobQueue>,
    pub clock: SharedClock,
    pub policy: RestartPolicy,
    pub ledger: Option<Arc<dyn JobLedger>>,
    /// How long a delivery's claim lasts (at least the handler's timeout).
    pub claim_ttl: chrono::Duration,
}

impl JobRuntime {
    pub fn new(queue: Arc<dyn JobQueue>, clock: SharedClock, policy: RestartPolicy) -> Self {
        Self {
            queue,
            clock,
            policy,
            ledger: None,
            claim_ttl: chrono::Duration::minutes(15),
        }
    }

    /// Drops duplicate deliveries through `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<dyn JobLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Decides the fate of one message body. Never panics on bad input.
    pub async fn process<H: JobHandler + ?Sized>(
        &self,
        body: &str,
        handler: &H,
        ctx: &JobContext,
    ) -> Settled {
        let job = match JobEnvelope::parse(body) {
            Ok(job) => job,
            Err(e) => return self.dead_letter(body, e.to_string()).await,
        };
        let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, org = %job.org, app = %job.app, generation = job.generation);
        let _enter = span.enter();
        if !handler.accepts(job.kind) {
            let reason = format!(
                "handler `{}` does not take jobs of kind `{}`",
                handler.name(),
                job.kind
            );
            return self.dead_letter(body, reason).await;
        }
        let now = self.clock.now();
        if let Some(not_before) = job.not_before.filter(|t| *t > now) {
            // Early: wait again for the rest, spending nothing.
            let mut next = job.clone();
            next.generation += 1;
            let delay = delay_secs(now, not_before);
            return self
                .resend(&next, delay, "waiting for not_before".into())
                .await;
        }
        if let Some(ledger) = &self.ledger {
            match ledger
                .claim(&job.id, job.generation, now, now + self.claim_ttl)
                .await
            {
                Ok(Claim::Granted) => {}
                Ok(other) => {
                    let reason = format!("duplicate delivery dropped ({other:?})");
                    tracing::info!(%reason);
                    return Settled::Skipped { reason };
                }
                Err(e) => {
                    return Settled::Retry {
                        reason: format!("job ledger: {e}"),
                    }
                }
            }
        }
        let settled = match handler.handle(&job, ctx).await {
            Outcome::Done => Settled::Done,
            Outcome::Retry(reason) => {
                tracing::warn!(%reason, "job failed, will be redelivered");
                Settled::Retry { reason }
            }
            Outcome::Fail(reason) => self.dead_letter(&job.to_body(), reason).await,
            Outcome::Restart(restart) => self.restart(job.clone(), restart, now).await,
        };
        if let Some(ledger) = &self.ledger {
            if let Err(e) = ledger.settle(&job.id, job.generation, settled.ack()).await {
                // The claim expires by itself; a redelivery then runs.
                tracing::warn!(error = %e, "could not settle the job ledger");
            }
        }
        settled
    }

    async fn restart(&self, job: JobEnvelope, restart: Restart, now: Timestamp) -> Settled {
        let mut next = job;
        if let Some(cp) = restart.checkpoint {
            next.checkpoint = Some(cp);
        }
        if next.restarts >= self.policy.max_restarts {
            let reason = format!(
                "restart cap of {} reached; last restart was for: {}",
                self.policy.max_restarts, restart.reason
            );
            return self.dead_letter(&next.to_body(), reason).await;
        }
        next.restarts += 1;
        next.generation += 1;
        next.last_reason = Some(restart.reason.clone());
        let at = if restart.at > now {
            restart.at + chrono::Duration::seconds(i64::from(self.jitter_secs(&next)))
        } else {
            now
        };
        next.not_before = (at > now).then_some(at);
        self.resend(&next, delay_secs(now, at), restart.reason)
            .await
    }

    /// Deterministic per job and generation, so tests can predict it and
    /// different jobs spread out.
    fn jitter_secs(&self, job: &JobEnvelope) -> u32 {
        if self.policy.max_jitter_secs == 0 {
            return 0;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in job.id.bytes().chain(job.generation.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % (u64::from(self.policy.max_jitter_secs) + 1)) as u32
    }

    async fn resend(&self, next: &JobEnvelope, delay: u32, reason: String) -> Settled {
        match self.queue.send(next, delay).await {
            Ok(()) => {
                tracing::info!(delay_secs = delay, %reason, restarts = next.restarts, "job restarted");
                Settled::Restarted {
                    delay_secs: delay,
                    reason,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "restart send failed; leaving the message for redelivery");
                Settled::Retry {
                    reason: format!("restart send failed: {e}"),
                }
            }
        }
    }

    async fn dead_letter(&self, body: &str, reason: String) -> Settled {
        match self.queue.dead_letter(body, &reason).await {
            Ok(()) => {
                tracing::warn!(%reason, "job sent to the dead-letter queue");
                Settled::DeadLettered { reason }
            }
            Err(e) => {
                tracing::error!(error = %e, %reason, "dead-letter send failed; leaving the message for redelivery");
                Settled::Retry {
                    reason: format!("dead-letter send failed: {e}"),
                }
            }
        }
    }

    /// Processes an SQS event as Lambda delivers it and reports only the
    /// messages that must come back, so one bad message never fails or
    /// repeats its neighbours (`ReportBatchItemFailures`).
    pub async fn handle_sqs_event<H: JobHandler + ?Sized>(
        &self,
        event: SqsEvent,
        handler: &H,
        ctx: &JobContext,
    ) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let Some(message_id) = record.message_id else {
                // Without an id it cannot be reported; Lambda never sends one.
                tracing::error!("SQS record without a message id skipped");
                continue;
            };
            let body = record.body.unwrap_or_default();
            let settled = self.process(&body, handler, ctx).await;
            if !settled.ack() {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    /// One round of a local event source: receive up to `max` messages,
    /// process them concurrently, delete the settled ones.
    pub async fn pump_once<H: JobHandler + ?Sized>(
        &self,
        handler: &H,
        max: u32,
        visibility_secs: u32,
    ) -> crate::error::Result<Vec<Settled>> {
        let deliveries = self.queue.receive(max, visibility_secs).await?;
        let ctx = JobContext::default();
        let results = futures::future::join_all(
            deliveries
                .iter()
                .map(|d| self.process(&d.body, handler, &ctx)),
        )
        .await;
        for (delivery, settled) in deliveries.iter().zip(&results) {
            if settled.ack() {
                self.queue.ack(&delivery.receipt).await?;
            }
        }
        Ok(results)
    }
}

/// Seconds from `now` until `at`, rounded up, within SQS's maximum.
pub fn delay_secs(now: Timestamp, at: Timestamp) -> u32 {
    let ms = (at - now).num_milliseconds().max(0);
    let secs = (ms + 999) / 1000;
    secs.min(i64::from(MAX_DELAY_SECS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn delays_round_up_and_cap_at_sqs_maximum() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        assert_eq!(delay_secs(now, now), 0);
        assert_eq!(delay_secs(now, now - chrono::Duration::seconds(5)), 0);
        assert_eq!(delay_secs(now, now + chrono::Duration::milliseconds(1)), 1);
        assert_eq!(delay_secs(now, now + chrono::Duration::seconds(3600)), 900);
    }
}
