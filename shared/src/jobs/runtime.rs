//! Carrying out a message's fate.
//!
//! [`JobRuntime::process`] parses the envelope (a body that is not one goes
//! to the dead-letter queue with the reason), sends an early arrival back
//! for the rest of its wait, claims the job in the ledger (a duplicate
//! delivery is dropped only when the ledger proves it finished or stale),
//! runs the handler and carries out what [`super::fate::decide`] makes of
//! its outcome: acknowledge, send the next generation and then
//! acknowledge, or dead-letter and then acknowledge.
//!
//! The new message is always sent *before* the old one is acknowledged: if
//! the send fails the message is reported as failed, so the queue delivers it
//! again. Nothing is acknowledged that was not re-sent.
//!
//! [`JobRuntime::process_batch`] is what one invocation does with its batch,
//! on Lambda, in the local runner and in the simulation alike: messages one
//! after the other, each with its share of the time left, so the last of a
//! batch is not started on a deadline the first ones used up.

use crate::core::clock::{SharedClock, Timestamp};
use crate::core::metrics::{Counter, Metrics};
use crate::core::tenant::Tenant;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::fate::{decide, early, slot_backstop, Fate};
pub(crate) use crate::jobs::fate::{delay_secs, RestartPolicy, NOT_BEFORE_REASON};
use crate::jobs::ledger::{Claim, JobLedger};
use crate::jobs::queue::{JobQueue, Queues};
use crate::jobs::waiters::{SlotWaiters, SLOT_BACKSTOP_GRACE_SECS};
use async_trait::async_trait;
use std::sync::Arc;
use tracing::Instrument;

/// The reason given when a message of a batch is sent back unstarted: too
/// little of the invocation was left to begin it.
pub(crate) const DEFERRED_REASON: &str = "not started: the invocation's time ran out";

/// What a handler knows about the invocation it runs in.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// When this message's share of the invocation ends, on the same clock
    /// the handlers read: handlers checkpoint and restart before it.
    pub deadline: Option<Timestamp>,
    /// When the invocation itself ends (Lambda's deadline, the end of a
    /// local pump's visibility timeout). A job's claim in the ledger ends
    /// with it, so a crashed invocation never blocks its redelivery, and a
    /// live one is never run twice. `None`: the share's deadline.
    pub invocation_ends: Option<Timestamp>,
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
            invocation_ends: Some(deadline),
            first_run: false,
        }
    }

    /// When the claim of a job run in this context ends.
    pub(crate) fn claim_until(&self) -> Option<Timestamp> {
        self.invocation_ends.or(self.deadline)
    }

    /// True when less than `margin` remains before the deadline at `now`.
    ///
    /// Handlers stop at it only after one unit of work in the invocation
    /// (a page, a lookup call, a slice of triggers): a deadline too close to
    /// begin with must not make a job restart forever without progress.
    pub(crate) fn near_deadline(&self, now: Timestamp, margin: std::time::Duration) -> bool {
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
    /// Leave it for redelivery: a send that failed, or another delivery of
    /// the same generation holding its claim.
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

    /// Whether this counts as a restart in reports (early arrivals and
    /// messages sent back unstarted do not: no work was done).
    pub fn is_counted_restart(&self) -> bool {
        matches!(self, Settled::Restarted { reason, .. } if reason != NOT_BEFORE_REASON && reason != DEFERRED_REASON)
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
    /// A message of a batch is not started with less than this left of the
    /// invocation: it is sent back for another invocation instead of being
    /// cut off by the timeout (which would count a receive against every
    /// message of the batch).
    pub start_margin: chrono::Duration,
    /// Where jobs done, restarts and dead letters are counted, if anywhere.
    pub metrics: Option<Metrics>,
    /// The lines of jobs parked for a concurrency slot, and the queues of
    /// every kind a freed slot may be handed to, if slots are handed on
    /// ([`SlotWaiters`]); without, a slot wait is a plain restart.
    pub waiters: Option<(Arc<dyn SlotWaiters>, Queues)>,
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
            start_margin: chrono::Duration::seconds(5),
            metrics: None,
            waiters: None,
        }
    }

    /// Parks jobs refused for a concurrency slot in `waiters` and hands a
    /// slot that frees to the tenant's longest-parked job, sent to its
    /// kind's queue in `queues` (a kind without one waits for its backstop).
    pub fn with_waiters(mut self, waiters: Arc<dyn SlotWaiters>, queues: Queues) -> Self {
        self.waiters = Some((waiters, queues));
        self
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

    /// What one invocation does with its batch: each message in turn, with
    /// a share of the time left (`deadline`, the invocation's end) as its
    /// own deadline; one that would start with less than
    /// [`JobRuntime::start_margin`] left is sent back unstarted.
    pub async fn process_batch<H: JobHandler + ?Sized>(
        &self,
        bodies: &[&str],
        handler: &H,
        deadline: Option<Timestamp>,
    ) -> Vec<Settled> {
        let mut out = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.iter().enumerate() {
            out.push(
                self.process_batch_item(body, handler, deadline, bodies.len() - i)
                    .await,
            );
        }
        out
    }

    /// One message of a batch, `left` messages (this one included) before
    /// the invocation ends at `deadline`: see [`JobRuntime::process_batch`].
    pub(crate) async fn process_batch_item<H: JobHandler + ?Sized>(
        &self,
        body: &str,
        handler: &H,
        deadline: Option<Timestamp>,
        left: usize,
    ) -> Settled {
        let Some(end) = deadline else {
            return self.process(body, handler, &JobContext::default()).await;
        };
        let now = self.clock.now();
        if end - now < self.start_margin {
            return self.defer(body).await;
        }
        let share = (end - now) / i32::try_from(left.max(1)).unwrap_or(i32::MAX);
        let ctx = JobContext {
            deadline: Some(now + share),
            invocation_ends: Some(end),
            first_run: false,
        };
        self.process(body, handler, &ctx).await
    }

    /// Sends a message back unstarted (as the next generation, at once),
    /// so another invocation takes it; garbage goes where garbage goes.
    async fn defer(&self, body: &str) -> Settled {
        let Ok(job) = JobEnvelope::parse(body) else {
            return self.process(body, &NoHandler, &JobContext::default()).await;
        };
        let mut next = job;
        next.generation += 1;
        self.resend(&next, 0, DEFERRED_REASON.into()).await
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
        match settled {
            Settled::Restarted { reason, .. } if reason.starts_with("transient failure") => {
                metrics.note(app, org, reason)
            }
            Settled::DeadLettered { reason } => {
                metrics.note(app, org, &format!("dead-lettered: {reason}"))
            }
            Settled::Retry { reason } => metrics.note(app, org, reason),
            _ => {}
        }
        let counter = match settled {
            Settled::Done => Counter::JobsDone,
            Settled::Restarted { .. } if !settled.is_counted_restart() => return,
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
        if let Some(fate) = early(job, now) {
            // Early: wait again for the rest, spending nothing.
            return self.carry_out(job, fate, handler).await;
        }
        let key = job.tenant();
        // Only the ledger can say that no delivery of this generation ran
        // before; without it, handlers assume one may have.
        let mut first_run = false;
        if let Some(ledger) = &self.ledger {
            let until = ctx.claim_until().unwrap_or(now + self.claim_ttl);
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
                    // Backs off like any transient failure (the next
                    // generation, which the ledger will grant), with our
                    // reason if it never passes.
                    let outcome = Outcome::transient(format!("job ledger: {e}"), None);
                    let fate = decide(job, outcome, now, &self.policy);
                    return self.carry_out(job, fate, handler).await;
                }
            }
        }
        let ctx = JobContext {
            first_run,
            ..ctx.clone()
        };
        let (outcome, freed) = crate::core::freed::counting_freed(handler.handle(job, &ctx)).await;
        let fate = decide(job, outcome, self.clock.now(), &self.policy);
        // A job that gave a slot back and was then refused one saw its
        // slot taken: there is none to hand on (the oldest waiter could be
        // this very job, sent again only to be refused).
        let refused_a_slot = matches!(fate, Fate::RestartAt { slot: true, .. });
        let settled = self.carry_out(job, fate, handler).await;
        if let Some(ledger) = &self.ledger {
            self.settle(ledger.as_ref(), &key, job, settled.ack()).await;
        }
        if freed > 0 && !refused_a_slot {
            self.hand_slot_on(&key).await;
        }
        settled
    }

    /// This job gave a slot back and has ended: its tenant's longest-parked
    /// job, of whatever kind, is sent now to its kind's queue, as the same
    /// generation its queued copy carries (the ledger runs whichever copy
    /// comes first). A failure only costs that job the wait to its backstop.
    async fn hand_slot_on(&self, key: &Tenant) {
        let Some((waiters, queues)) = &self.waiters else {
            return;
        };
        let now = self.clock.now();
        match waiters.pop_oldest(key, now).await {
            Ok(Some(mut next)) => {
                next.not_before = None;
                match queues.send(&next, 0).await {
                    Ok(()) => {
                        tracing::info!(handed_to = %next.id, generation = next.generation, "a freed slot handed to the longest-waiting job")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, waiting = %next.id, "could not hand a freed slot on; the job wakes at its backstop")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the slot line; waiters wake at their backstop")
            }
        }
    }

    /// A wait for a slot, with a line to park in: the queued copy moves to
    /// the backstop, then the job is parked. A park that fails leaves the
    /// backstop, which still comes.
    async fn park_for_slot(
        &self,
        waiters: &dyn SlotWaiters,
        mut next: JobEnvelope,
        reason: String,
    ) -> Settled {
        let now = self.clock.now();
        let (delay, due) = slot_backstop(&mut next, now, SLOT_BACKSTOP_GRACE_SECS);
        let settled = self.resend(&next, delay, reason).await;
        if matches!(settled, Settled::Restarted { .. }) {
            if let Err(e) = waiters.park(&next.tenant(), &next, now, due).await {
                tracing::warn!(error = %e, "could not park the job for a slot; it wakes at its backstop");
            }
        }
        settled
    }

    /// Does what the fate says: the new message (or dead letter) first,
    /// then the settlement that acknowledges this copy.
    async fn carry_out<H: JobHandler + ?Sized>(
        &self,
        job: &JobEnvelope,
        fate: Fate,
        handler: &H,
    ) -> Settled {
        match fate {
            Fate::Finish => Settled::Done,
            Fate::RestartAt {
                next,
                delay_secs,
                reason,
                slot,
            } => match (&self.waiters, slot) {
                (Some((waiters, _)), true) => {
                    self.park_for_slot(waiters.as_ref(), next, reason).await
                }
                _ => self.resend(&next, delay_secs, reason).await,
            },
            Fate::GiveUp { dead, reason } => {
                handler.gave_up(job, &reason).await;
                self.dead_letter(&dead.to_body(), reason).await
            }
        }
    }

    /// Records the end of a delivery. Tried twice: a settle that never lands
    /// leaves the claim to end at the deadline, after which a duplicate copy
    /// of a finished generation would run again (harmless for idempotent
    /// work, but wasted calls).
    async fn settle(&self, ledger: &dyn JobLedger, key: &Tenant, job: &JobEnvelope, done: bool) {
        for attempt in 1..=2 {
            match ledger.settle(key, &job.id, job.generation, done).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, attempt, "could not settle the job ledger"),
            }
        }
        tracing::error!("job ledger not settled; the claim ends at the invocation's deadline");
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

    /// One invocation of a local event source: receive up to `max`
    /// messages, hidden for `visibility_secs`, process them as a Lambda
    /// invocation would (in turn, each with its share of the time), delete
    /// the settled ones.
    pub async fn pump_once<H: JobHandler + ?Sized>(
        &self,
        handler: &H,
        max: u32,
        visibility_secs: u32,
        timeout_secs: u32,
    ) -> crate::core::error::Result<Vec<Settled>> {
        let deliveries = self.queue.receive(max, visibility_secs).await?;
        let deadline = self.clock.now() + chrono::Duration::seconds(i64::from(timeout_secs));
        let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
        let results = self.process_batch(&bodies, handler, Some(deadline)).await;
        for (delivery, settled) in deliveries.iter().zip(&results) {
            if settled.ack() {
                self.queue.ack(&delivery.receipt).await?;
            }
        }
        Ok(results)
    }
}

/// Takes nothing: what a message is processed with when it is only to be
/// read (garbage that goes to the dead-letter queue).
struct NoHandler;

#[async_trait]
impl JobHandler for NoHandler {
    fn name(&self) -> &str {
        "none"
    }
    fn accepts(&self, _: JobKind) -> bool {
        false
    }
    async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
        Outcome::Fail("no handler".into())
    }
}

// The runtime is exercised on the SQLite queue: a real adapter, in memory.
#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::core::clock::{Clock, ManualClock};
    use crate::jobs::ledger::{decide_claim, LedgerEntry};
    use crate::jobs::queue::MAX_DELAY_SECS;
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
            Outcome::wait(
                start + chrono::Duration::seconds(self.at_offset),
                "test",
                None,
            )
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
                let j = rt.policy.jitter_secs(&job);
                prop_assert!(j <= max);
                prop_assert_eq!(j, rt.policy.jitter_secs(&job));
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
}
