//! The job-queue port: where jobs wait, with a delay, until a handler takes
//! them. Adapters: [`crate::adapters::aws::queue::SqsQueue`] (deployed; Lambda's event source
//! mapping receives and deletes) and [`crate::adapters::sqlite::queue::SqliteQueue`] (one machine;
//! the local runner receives and deletes).
//!
//! Each queue has a dead-letter queue. Jobs that can never succeed are sent
//! there explicitly with their reason; jobs that fail transiently too often
//! are moved there by the queue's redrive (SQS's `maxReceiveCount`, mirrored
//! by the SQLite adapter).

use crate::core::error::Result;
use crate::jobs::envelope::JobEnvelope;
use async_trait::async_trait;

/// SQS refuses longer delays; longer waits travel in `not_before`.
pub(crate) const MAX_DELAY_SECS: u32 = 900;

/// The delay rule every queue adapter applies before sending: SQS refuses
/// more than [`MAX_DELAY_SECS`], and the SQLite queue refuses the same so a
/// local run fails where a deployed one would. Longer waits travel in the
/// envelope's `not_before` instead.
pub(crate) fn check_delay(delay_secs: u32) -> crate::core::error::Result<()> {
    if delay_secs > MAX_DELAY_SECS {
        return Err(crate::core::error::Error::queue(
            "send",
            format!("delay {delay_secs}s exceeds the {MAX_DELAY_SECS}s maximum"),
            crate::core::error::Disposition::Permanent,
        ));
    }
    Ok(())
}

/// A received message, visible to nobody else until acked or timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's id of the message.
    pub message_id: String,
    /// What deletes or re-hides this delivery.
    pub receipt: String,
    /// The message body (a job envelope, or garbage).
    pub body: String,
    /// 1 on first delivery.
    pub receive_count: u32,
}

/// A message in the dead-letter queue and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The queue's id of the message.
    pub message_id: String,
    /// The body as it was sent.
    pub body: String,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// The queue port: send with a delay, receive, delete, dead-letter.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// The queue's name, for logs.
    fn name(&self) -> &str;

    /// Enqueues `job`, invisible for `delay_secs` (at most [`MAX_DELAY_SECS`]).
    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> Result<()>;

    /// Puts a body (well-formed or not) in the dead-letter queue with its reason.
    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()>;

    /// Takes up to `max` visible messages, hiding them for `visibility_secs`.
    async fn receive(&self, max: u32, visibility_secs: u32) -> Result<Vec<Delivery>>;

    /// Deletes a received message: it is done (or was re-sent).
    async fn ack(&self, receipt: &str) -> Result<()>;

    /// Hands a received message back, visible again in `visible_in_secs`
    /// (0: at once), as a consumer that stopped would leave it when its
    /// visibility timeout ends. Counts toward the redrive like any receive.
    async fn release(&self, receipt: &str, visible_in_secs: u32) -> Result<()>;

    /// Reads up to `max` messages of the dead-letter queue (reports, tests).
    async fn dead_letters(&self, max: u32) -> Result<Vec<DeadLetter>>;

    /// Moves dead letters back to this queue (`metered dlq redrive`): each
    /// one `choose` returns a body for is sent again, visible at once, with
    /// that body, and only then removed from the dead-letter queue; the
    /// others stay. A crash in between leaves a job in both queues — run
    /// twice, which the job ledger absorbs — never in neither. Returns how
    /// many moved.
    async fn redrive(&self, choose: &Choose<'_>) -> Result<u64>;
}

/// Which dead letters a redrive moves, and with what body (e.g. the
/// envelope with its restarts reset); `None` leaves one where it is.
pub type Choose<'a> = dyn Fn(&DeadLetter) -> Option<String> + Send + Sync + 'a;

/// Routes jobs to the queue of their kind (one queue per handler).
#[derive(Clone, Default)]
pub struct Queues {
    by_kind:
        std::collections::BTreeMap<crate::jobs::envelope::JobKind, std::sync::Arc<dyn JobQueue>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.by_kind.iter().map(|(k, q)| (k, q.name())))
            .finish()
    }
}

impl Queues {
    /// No queues yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the queue of `kind`.
    pub fn with(
        mut self,
        kind: crate::jobs::envelope::JobKind,
        queue: std::sync::Arc<dyn JobQueue>,
    ) -> Self {
        self.by_kind.insert(kind, queue);
        self
    }

    /// The queue of `kind`; a missing one is a configuration error.
    pub fn get(
        &self,
        kind: crate::jobs::envelope::JobKind,
    ) -> Result<&std::sync::Arc<dyn JobQueue>> {
        self.by_kind.get(&kind).ok_or_else(|| {
            crate::Error::Config(format!("no queue is configured for `{kind}` jobs"))
        })
    }

    /// The kinds that have a queue.
    pub fn kinds(&self) -> impl Iterator<Item = crate::jobs::envelope::JobKind> + '_ {
        self.by_kind.keys().copied()
    }

    /// Sends `job` to its kind's queue after `delay_secs`.
    pub async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> Result<()> {
        self.get(job.kind)?.send(job, delay_secs).await
    }
}
