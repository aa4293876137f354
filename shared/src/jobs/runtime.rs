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

use crate::core::clock::{SharedClock, Timestamp};
use crate::core::metrics::{Counter, Metrics};
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome, Restart};
use crate::jobs::ledger::{Claim, JobLedger};
use crate::jobs::queue::{JobQueue, MAX_DELAY_SECS};
use crate::quota::QuotaKey;
use async_trait::async_trait;
use std::sync::Arc;
use tracing::Instrument;

/// The reason given when an early arrival is re-sent for the rest of its wait.
pub const NOT_BEFORE_REASON: &str = "waiting for not_before";

/// Restart rules, as data. Defaults: 100 restarts, up to 30 s of jitter, 5
/// transient attempts in a row with a backoff of 30 s, 60 s, 120 s, 240 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Past this many restarts a job goes to the dead-letter queue.
    pub max_restarts: u32,
    /// Spread restarts over up to this many extra seconds, so a window reset
    /// does not wake every waiting job at the same instant.
    pub max_jitter_secs: u32,
    /// Transient failures in a row a job may have; the next one sends it to
    /// the dead-letter queue, naming the attempts and the last error.
    pub max_attempts: u32,
    /// The wait after the first transient failure; it doubles with each
    /// failure in a row, up to SQS's 900 s.
    pub backoff_base_secs: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 100,
            max_jitter_secs: 30,
            max_attempts: 5,
            backoff_base_secs: 30,
        }
    }
}

impl RestartPolicy {
    /// The wait before attempt `attempts + 1`, after `attempts` transient
    /// failures in a row (`attempts >= 1`).
    pub fn backoff(&self, attempts: u32) -> chrono::Duration {
        let secs = u64::from(self.backoff_base_secs)
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
            .min(u64::from(MAX_DELAY_SECS));
        chrono::Duration::seconds(secs as i64)
    }
}

/// What a handler knows about the invocation it runs in.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// When the invocation ends (Lambda's deadline, or the end of a local
    /// pump's visibility timeout), on the same clock the handlers read:
    /// handlers checkpoint and restart before it, and a job's claim in the
    /// ledger ends with it, so a crashed invocation never blocks its
    /// redelivery.
    pub deadline: Option<Timestamp>,
    /// True when the job ledger proved that no earlier delivery of this
    /// generation ran (set by the runtime, false when unknown): a handler
    /// may then skip looking for what a crashed earlier run left behind.
    pub first_run: bool,
}

impl JobContext {
    /// An invocation that ends at `deadline`.
    pub fn until(deadline: Timestamp) -> Self {
        Self {
            deadline: Some(deadline),
            first_run: false,
        }
    }

    /// True when less than `margin` remains before the deadline at `now`.
    ///
    /// Handlers stop at it only after one unit of work in the invocation
    /// (a page, a lookup call, a slice of triggers): a deadline too close to
    /// begin with must not make a job restart forever without progress.
    pub fn near_deadline(&self, now: Timestamp, margin: std::time::Duration) -> bool {
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        self.deadline.is_some_and(|d| d - now < margin)
    }
}

/// A handler of one or more job kinds.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// For logs and dead-letter reasons.
    fn name(&self) -> &str;
    /// Whether this handler runs jobs of `kind`.
    fn accepts(&self, kind: JobKind) -> bool;
    /// Runs one job; never panics on bad input, returns an outcome.
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome;
    /// Called once when the runtime gives up on a job it parsed (it goes to
    /// the dead-letter queue): the handler records what must not look
    /// merely unfinished (a sync's failed run). Must not fail.
    async fn gave_up(&self, _job: &JobEnvelope, _reason: &str) {}
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Done; delete it.
    Done,
    /// Re-sent (restart or early arrival); delete this copy.
    Restarted {
        /// The delay it was sent with.
        delay_secs: u32,
        /// Why.
        reason: String,
    },
    /// Sent to the dead-letter queue; delete this copy.
    DeadLettered {
        /// The reason the dead letter carries.
        reason: String,
    },
    /// Leave it for redelivery (transient failure, or a send that failed).
    Retry {
        /// What failed.
        reason: String,
    },
    /// A copy the ledger proves redundant (its generation finished, or a
    /// newer one exists), dropped without work.
    Skipped {
        /// What the ledger proved.
        reason: String,
    },
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
    /// Where the runtime re-sends and dead-letters.
    pub queue: Arc<dyn JobQueue>,
    /// The time.
    pub clock: SharedClock,
    /// Restart cap and transient attempts.
    pub policy: RestartPolicy,
    /// The job ledger, if duplicate deliveries must be dropped.
    pub ledger: Option<Arc<dyn JobLedger>>,
    /// How long a delivery's claim lasts when the invocation has no deadline
    /// (a deadline, when given, bounds the claim instead).
    pub claim_ttl: chrono::Duration,
    /// Where jobs done, restarts and dead letters are counted, if anywhere.
    pub metrics: Option<Metrics>,
}

impl JobRuntime {
    /// A runtime over `queue`, without a ledger.
    pub fn new(queue: Arc<dyn JobQueue>, clock: SharedClock, policy: RestartPolicy) -> Self {
        Self {
            queue,
            clock,
            policy,
            ledger: None,
            claim_ttl: chrono::Duration::minutes(5),
            metrics: None,
        }
    }

    /// Counts jobs done, restarts and dead letters into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
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
            Err(e) => {
                let settled = self.dead_letter(body, e.to_string()).await;
                self.count("", "", &settled);
                return settled;
            }
        };
        let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, org = %job.org, app = %job.app, generation = job.generation);
        let settled = self
            .process_job(&job, body, handler, ctx)
            .instrument(span)
            .await;
        self.count(&job.app, &job.org, &settled);
        settled
    }

    fn count(&self, app: &str, org: &str, settled: &Settled) {
        let Some(metrics) = &self.metrics else { return };
        let counter = match settled {
            Settled::Done => Counter::JobsDone,
            Settled::Restarted { reason, .. } if reason == NOT_BEFORE_REASON => return,
            Settled::Restarted { .. } => Counter::Restarts,
            Settled::DeadLettered { .. } => Counter::DeadLetters,
            Settled::Retry { .. } | Settled::Skipped { .. } => return,
        };
        metrics.add(app, org, counter, 1);
    }

    async fn process_job<H: JobHandler + ?Sized>(
        &self,
        job: &JobEnvelope,
        body: &str,
        handler: &H,
        ctx: &JobContext,
    ) -> Settled {
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
            return self.resend(&next, delay, NOT_BEFORE_REASON.into()).await;
        }
        let key = job.quota_key();
        // Only the ledger can say that no delivery of this generation ran
        // before; without it, handlers assume one may have.
        let mut first_run = false;
        if let Some(ledger) = &self.ledger {
            let until = ctx.deadline.unwrap_or(now + self.claim_ttl);
            match ledger
                .claim(&key, &job.id, job.generation, now, until)
                .await
            {
                Ok(Claim::Granted) => first_run = true,
                Ok(Claim::Rerun) => {}
                Ok(Claim::InProgress) => {
                    // Not proven redundant: the other delivery may yet crash.
                    // Left on the queue, it comes back after its visibility
                    // timeout, when that claim has ended.
                    let reason =
                        "another delivery of this generation holds its claim; left for redelivery"
                            .to_string();
                    tracing::info!(%reason);
                    return Settled::Retry { reason };
                }
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
        let ctx = JobContext {
            first_run,
            ..ctx.clone()
        };
        let outcome = handler.handle(job, &ctx).await;
        // Delays count from now, not from when the work started: a long run
        // must not wait its own length again.
        let now = self.clock.now();
        let settled = match outcome {
            Outcome::Done => Settled::Done,
            Outcome::Retry(reason) => {
                tracing::warn!(%reason, "job failed, will be redelivered");
                Settled::Retry { reason }
            }
            Outcome::Fail(reason) => {
                handler.gave_up(job, &reason).await;
                self.dead_letter_job(job, reason, None).await
            }
            Outcome::Restart(restart) => {
                let mut next = job.clone();
                next.attempts = 0;
                self.restart(next, restart, now, handler).await
            }
            Outcome::Transient { reason, checkpoint } => {
                // "In a row" means without progress: an attempt that moved
                // the checkpoint (a transfer that got some pages further
                // before a call failed) starts the count again. Otherwise a
                // long transfer through an API failing 10% of its calls
                // would be dead-lettered while it was still advancing.
                let progressed = checkpoint.is_some() && checkpoint != job.checkpoint;
                let attempts = if progressed {
                    1
                } else {
                    job.attempts.saturating_add(1)
                };
                if attempts >= self.policy.max_attempts {
                    let reason =
                        format!("gave up after {attempts} attempts in a row; last error: {reason}");
                    handler.gave_up(job, &reason).await;
                    // The copy resumes where the last attempt stopped.
                    self.dead_letter_job(job, reason, checkpoint).await
                } else {
                    let mut next = job.clone();
                    next.attempts = attempts;
                    let restart = Restart {
                        at: now + self.policy.backoff(attempts),
                        reason: format!(
                            "transient failure (attempt {attempts} of {}): {reason}",
                            self.policy.max_attempts
                        ),
                        checkpoint,
                    };
                    self.restart(next, restart, now, handler).await
                }
            }
        };
        if let Some(ledger) = &self.ledger {
            self.settle(ledger.as_ref(), &key, job, settled.ack()).await;
        }
        settled
    }

    /// Records the end of a delivery. Tried twice: a settle that never lands
    /// leaves the claim to end at the deadline, after which a duplicate copy
    /// of a finished generation would run again (harmless for idempotent
    /// work, but wasted calls).
    async fn settle(&self, ledger: &dyn JobLedger, key: &QuotaKey, job: &JobEnvelope, done: bool) {
        for attempt in 1..=2 {
            match ledger.settle(key, &job.id, job.generation, done).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, attempt, "could not settle the job ledger"),
            }
        }
        tracing::error!("job ledger not settled; the claim ends at the invocation's deadline");
    }

    /// Dead-letters a parsed job. The copy in the dead-letter queue carries
    /// the next generation, so a redrive runs it even though the ledger
    /// records this generation as finished (which drops any stray copy), and
    /// no transient attempts, so a redrive starts over.
    async fn dead_letter_job(
        &self,
        job: &JobEnvelope,
        reason: String,
        checkpoint: Option<serde_json::Value>,
    ) -> Settled {
        let mut next = job.clone();
        if let Some(cp) = checkpoint {
            next.checkpoint = Some(cp);
        }
        next.generation += 1;
        next.attempts = 0;
        next.last_reason = Some(reason.clone());
        self.dead_letter(&next.to_body(), reason).await
    }

    async fn restart<H: JobHandler + ?Sized>(
        &self,
        job: JobEnvelope,
        restart: Restart,
        now: Timestamp,
        handler: &H,
    ) -> Settled {
        let mut next = job;
        if let Some(cp) = restart.checkpoint {
            next.checkpoint = Some(cp);
        }
        if next.restarts >= self.policy.max_restarts {
            let reason = format!(
                "restart cap of {} reached; last restart was for: {}",
                self.policy.max_restarts, restart.reason
            );
            handler.gave_up(&next, &reason).await;
            return self.dead_letter_job(&next, reason, None).await;
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

    /// One round of a local event source: receive up to `max` messages,
    /// process them concurrently, delete the settled ones.
    pub async fn pump_once<H: JobHandler + ?Sized>(
        &self,
        handler: &H,
        max: u32,
        visibility_secs: u32,
    ) -> crate::core::error::Result<Vec<Settled>> {
        let deliveries = self.queue.receive(max, visibility_secs).await?;
        // The claim of each job ends with the visibility timeout, as a
        // Lambda invocation's ends with its deadline.
        let ctx = JobContext::until(
            self.clock.now() + chrono::Duration::seconds(i64::from(visibility_secs)),
        );
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

// The runtime is exercised on the SQLite queue: a real adapter, in memory.
#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::core::clock::{Clock, ManualClock};
    use crate::jobs::ledger::{decide_claim, LedgerEntry};
    use chrono::{TimeZone, Utc};

    /// Works for `secs` of the clock, then restarts at `at_offset` seconds
    /// after it started.
    struct Slow {
        clock: ManualClock,
        secs: i64,
        at_offset: i64,
    }

    #[async_trait]
    impl JobHandler for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn accepts(&self, _: JobKind) -> bool {
            true
        }
        async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
            let start = self.clock.now();
            self.clock.advance(chrono::Duration::seconds(self.secs));
            Outcome::Restart(Restart {
                at: start + chrono::Duration::seconds(self.at_offset),
                reason: "test".into(),
                checkpoint: None,
            })
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn entry() -> impl Strategy<Value = Option<LedgerEntry>> {
            proptest::option::of((0u32..5, any::<bool>(), -600i64..600).prop_map(
                |(g, done, off)| LedgerEntry {
                    generation: g,
                    done,
                    claimed_until: base() + chrono::Duration::seconds(off),
                },
            ))
        }

        fn base() -> Timestamp {
            Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
        }

        proptest! {
            /// Delays are whole seconds within SQS's maximum, zero for the
            /// past, and never shorter than the wait (rounded up).
            #[test]
            fn delays_round_up_within_the_sqs_maximum(ms in -10_000_000i64..10_000_000) {
                let now = base();
                let at = now + chrono::Duration::milliseconds(ms);
                let d = delay_secs(now, at);
                prop_assert!(d <= MAX_DELAY_SECS);
                if ms <= 0 {
                    prop_assert_eq!(d, 0);
                } else if ms <= i64::from(MAX_DELAY_SECS) * 1000 {
                    prop_assert!(i64::from(d) * 1000 >= ms && i64::from(d) * 1000 < ms + 1000);
                } else {
                    prop_assert_eq!(d, MAX_DELAY_SECS);
                }
            }

            /// Jitter stays within the policy and is the same for the same
            /// job and generation.
            #[test]
            fn jitter_is_bounded_and_deterministic(max in 0u32..120, generation in 0u32..1000, id in "[a-z0-9-]{1,36}") {
                let db = crate::adapters::sqlite::Db::in_memory().unwrap();
                let clock: SharedClock = Arc::new(ManualClock::new(base()));
                let queue = Arc::new(crate::adapters::sqlite::queue::SqliteQueue::new(db, "q", clock.clone(), 5));
                let rt = JobRuntime::new(queue, clock, RestartPolicy { max_restarts: 1, max_jitter_secs: max, ..Default::default() });
                let mut job = JobEnvelope::new(JobKind::Spend, "o", "a", serde_json::json!({}), base());
                job.id = id;
                job.generation = generation;
                let j = rt.jitter_secs(&job);
                prop_assert!(j <= max);
                prop_assert_eq!(j, rt.jitter_secs(&job));
            }

            /// The claim rule: a delivery runs only when no newer generation
            /// exists, its own did not finish, and no live claim holds it;
            /// a newer generation always runs.
            #[test]
            fn claims_follow_the_rule(stored in entry(), generation in 0u32..5, off in -600i64..600) {
                let now = base() + chrono::Duration::seconds(off);
                let claim = decide_claim(stored, generation, now);
                let expected = match stored {
                    None => Claim::Granted,
                    Some(e) if e.generation > generation => Claim::Stale,
                    Some(e) if e.generation < generation => Claim::Granted,
                    Some(e) if e.done => Claim::AlreadyDone,
                    Some(e) if e.claimed_until > now => Claim::InProgress,
                    Some(_) => Claim::Rerun,
                };
                prop_assert_eq!(claim, expected);
            }
        }
    }

    /// Fails every time, transiently.
    struct Flaky;

    #[async_trait]
    impl JobHandler for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn accepts(&self, _: JobKind) -> bool {
            true
        }
        async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
            Outcome::transient("list invoices: response is not valid JSON", None)
        }
    }

    /// A runtime on an in-memory SQLite queue, without jitter, on a manual clock.
    fn retry_runtime() -> (
        ManualClock,
        Arc<crate::adapters::sqlite::queue::SqliteQueue>,
        JobRuntime,
    ) {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap());
        let shared: SharedClock = Arc::new(clock.clone());
        let db = crate::adapters::sqlite::Db::in_memory().unwrap();
        let queue = Arc::new(crate::adapters::sqlite::queue::SqliteQueue::new(
            db,
            "q",
            shared.clone(),
            99,
        ));
        let policy = RestartPolicy {
            max_jitter_secs: 0,
            ..Default::default()
        };
        let rt = JobRuntime::new(queue.clone(), shared, policy);
        (clock, queue, rt)
    }

    /// The next delivery's body, acknowledged.
    async fn take_next(queue: &dyn crate::jobs::queue::JobQueue) -> String {
        let d = queue.receive(1, 30).await.unwrap();
        queue.ack(&d[0].receipt).await.unwrap();
        d[0].body.clone()
    }

    /// Transient failures back off 30, 60, 120, 240 s, keep the checkpoint,
    /// and the fifth in a row dead-letters the job naming the attempts and
    /// the last error (the dead-letter copy starts over on a redrive).
    #[tokio::test]
    async fn transient_failures_back_off_then_give_up() {
        let (clock, queue, rt) = retry_runtime();
        let mut job =
            JobEnvelope::new(JobKind::Spend, "o", "a", serde_json::json!({}), clock.now());
        job.checkpoint = Some(serde_json::json!({"page": 7}));
        let mut body = job.to_body();
        let mut delays = Vec::new();
        loop {
            match rt.process(&body, &Flaky, &JobContext::default()).await {
                Settled::Restarted { delay_secs, .. } => delays.push(delay_secs),
                Settled::DeadLettered { reason } => {
                    assert!(reason.contains("gave up after 5 attempts"), "{reason}");
                    assert!(reason.contains("not valid JSON"), "{reason}");
                    break;
                }
                other => panic!("{other:?}"),
            }
            clock.advance(chrono::Duration::seconds(i64::from(
                *delays.last().unwrap(),
            )));
            let d = take_next(queue.as_ref()).await;
            let next = JobEnvelope::parse(&d).unwrap();
            assert_eq!(next.checkpoint, job.checkpoint, "the checkpoint is kept");
            body = d;
        }
        assert_eq!(delays, vec![30, 60, 120, 240]);
        let dead = crate::jobs::queue::JobQueue::dead_letters(queue.as_ref(), 1)
            .await
            .unwrap();
        let redrive = JobEnvelope::parse(&dead[0].body).unwrap();
        assert_eq!(
            (redrive.attempts, redrive.generation),
            (0, job.generation + 5)
        );
    }

    /// Gets one page further, then fails: transient, with a new checkpoint.
    struct Advancing;

    #[async_trait::async_trait]
    impl JobHandler for Advancing {
        fn name(&self) -> &str {
            "advancing"
        }
        fn accepts(&self, _: JobKind) -> bool {
            true
        }
        async fn handle(&self, job: &JobEnvelope, _: &JobContext) -> Outcome {
            let page = job
                .checkpoint
                .as_ref()
                .and_then(|c| c["page"].as_u64())
                .unwrap_or(0);
            Outcome::transient(
                "list invoices: failed in transit",
                Some(serde_json::json!({"page": page + 1})),
            )
        }
    }

    /// A job whose every attempt makes progress before failing is never
    /// given up on for failures "in a row": the count restarts at 1, so
    /// the backoff stays at its first step (a demo with 10% of calls
    /// failing once dead-lettered a long transfer that was still advancing).
    #[tokio::test]
    async fn failures_after_progress_do_not_count_as_in_a_row() {
        let (clock, queue, rt) = retry_runtime();
        let job = JobEnvelope::new(JobKind::Spend, "o", "a", serde_json::json!({}), clock.now());
        let mut body = job.to_body();
        for page in 1..=12u64 {
            match rt.process(&body, &Advancing, &JobContext::default()).await {
                Settled::Restarted { delay_secs, .. } => {
                    assert_eq!(delay_secs, 30, "first step of the backoff at page {page}")
                }
                other => panic!("attempt {page}: {other:?}"),
            }
            clock.advance(chrono::Duration::seconds(30));
            let d = take_next(queue.as_ref()).await;
            let next = JobEnvelope::parse(&d).unwrap();
            assert_eq!(next.checkpoint, Some(serde_json::json!({"page": page})));
            assert_eq!(next.attempts, 1);
            body = d;
        }
    }

    /// Fails when the delay counts from the start of the work (the delay
    /// would be 250 s, and 290 s for the deadline restart).
    #[tokio::test]
    async fn restart_delays_count_from_the_end_of_the_work() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap());
        let shared: SharedClock = Arc::new(clock.clone());
        let db = crate::adapters::sqlite::Db::in_memory().unwrap();
        let queue = Arc::new(crate::adapters::sqlite::queue::SqliteQueue::new(
            db,
            "q",
            shared.clone(),
            5,
        ));
        let policy = RestartPolicy {
            max_restarts: 10,
            max_jitter_secs: 0,
            ..Default::default()
        };
        let rt = JobRuntime::new(queue, shared, policy);
        let job = JobEnvelope::new(JobKind::Spend, "o", "a", serde_json::json!({}), clock.now());
        // 200 s of work, capacity back 250 s after the start: wait 50 s more.
        let slow = Slow {
            clock: clock.clone(),
            secs: 200,
            at_offset: 250,
        };
        let settled = rt
            .process(&job.to_body(), &slow, &JobContext::default())
            .await;
        assert!(
            matches!(settled, Settled::Restarted { delay_secs: 50, .. }),
            "{settled:?}"
        );
        // A deadline restart (at = the moment it stops) resumes at once.
        let deadline = Slow {
            clock: clock.clone(),
            secs: 290,
            at_offset: 290,
        };
        let settled = rt
            .process(&job.to_body(), &deadline, &JobContext::default())
            .await;
        assert!(
            matches!(settled, Settled::Restarted { delay_secs: 0, .. }),
            "{settled:?}"
        );
    }

    #[test]
    fn delays_round_up_and_cap_at_sqs_maximum() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        assert_eq!(delay_secs(now, now), 0);
        assert_eq!(delay_secs(now, now - chrono::Duration::seconds(5)), 0);
        assert_eq!(delay_secs(now, now + chrono::Duration::milliseconds(1)), 1);
        assert_eq!(delay_secs(now, now + chrono::Duration::seconds(3600)), 900);
    }
}
