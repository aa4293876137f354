//! The whole system on one machine: SQLite adapters, one queue per job kind,
//! and a dispatcher that plays the deployed stack's event source mappings:
//! every queue polled at once, batches of up to ten messages, up to the
//! template's `MaximumConcurrency` invocations per kind in flight, each
//! with its function's timeout as a deadline and its queue's visibility
//! timeout (a message an invocation did not settle comes back after it).
//! So a sync, the workflow it triggers, lookups, actions and flushes run
//! concurrently here as they do on Lambda, and a trial on one machine meets
//! the same interleavings as the deployment.
//!
//! On a simulated clock the dispatcher jumps time to the next due job when
//! nothing is in flight and nothing is due now, so days of restarts pass in
//! seconds; it never waits out a limit. A new message wakes it (the queues
//! it builds notify on send).

use crate::adapters::sqlite::queue::SqliteQueue;
use crate::adapters::sqlite::quota::SqliteQuota;
use crate::adapters::sqlite::store::SqliteStore;
use crate::adapters::sqlite::Db;
use crate::config::app::AppConfig;
use crate::connector::Connector;
use crate::core::clock::{ManualClock, SharedClock, Timestamp};
use crate::core::error::Result;
use crate::handlers::context::AppContext;
use crate::handlers::route::Router;
use crate::jobs::envelope::{JobEnvelope, JobKind};
use crate::jobs::queue::{Choose, DeadLetter, Delivery, JobQueue, Queues};
use crate::jobs::runtime::{JobRuntime, RestartPolicy, Settled, NOT_BEFORE_REASON};
use crate::quota::Quota;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct RunReport {
    /// Jobs done, by kind.
    pub done: BTreeMap<String, u64>,
    /// Restarts by reason (early re-sends of long waits not counted).
    pub restarts: BTreeMap<String, u64>,
    /// Early arrivals re-sent to wait for their `not_before`.
    pub not_before_hops: u64,
    /// Deliveries the ledger proved duplicate.
    pub duplicates_dropped: u64,
    /// Transient failures left for redelivery.
    pub retries: u64,
    /// Jobs sent to a dead-letter queue.
    pub dead_lettered: u64,
}

/// Every function in one process: the SQLite queues polled at once.
pub struct LocalRunner {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    /// The quota's own database, so its round trips can be counted apart.
    pub quota_db: Db,
    /// The records, ledgers and queues' database.
    pub db: Db,
    queues: BTreeMap<JobKind, Arc<SqliteQueue>>,
    runtimes: BTreeMap<JobKind, JobRuntime>,
    handler: Arc<Router>,
    sent: Arc<Notify>,
    concurrency: Option<u32>,
}

/// A local queue that wakes the dispatcher when a message is sent, so new
/// work starts at once instead of at the next poll.
struct Notifying {
    inner: Arc<SqliteQueue>,
    sent: Arc<Notify>,
}

#[async_trait::async_trait]
impl JobQueue for Notifying {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> Result<()> {
        self.inner.send(job, delay_secs).await?;
        self.sent.notify_one();
        Ok(())
    }
    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        self.inner.dead_letter(body, reason).await
    }
    async fn receive(&self, max: u32, visibility_secs: u32) -> Result<Vec<Delivery>> {
        self.inner.receive(max, visibility_secs).await
    }
    async fn ack(&self, receipt: &str) -> Result<()> {
        self.inner.ack(receipt).await
    }
    async fn release(&self, receipt: &str, visible_in_secs: u32) -> Result<()> {
        self.inner.release(receipt, visible_in_secs).await?;
        self.sent.notify_one();
        Ok(())
    }
    async fn dead_letters(&self, max: u32) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(&self, choose: &Choose<'_>) -> Result<u64> {
        let moved = self.inner.redrive(choose).await?;
        self.sent.notify_one();
        Ok(moved)
    }
}

impl LocalRunner {
    /// A runner for `config` over the two databases, with one connector per org.
    pub fn new(
        config: Arc<AppConfig>,
        db: Db,
        quota_db: Db,
        clock: SharedClock,
        connectors: BTreeMap<String, Arc<dyn Connector>>,
    ) -> Result<Self> {
        let store = Arc::new(SqliteStore::new(db.clone()));
        let quota = Quota::new(Arc::new(SqliteQuota::new(quota_db.clone())), clock.clone());
        let sent = Arc::new(Notify::new());
        let mut queues = Queues::new();
        let mut raw = BTreeMap::new();
        let mut notifying: BTreeMap<JobKind, Arc<dyn JobQueue>> = BTreeMap::new();
        for (kind, q) in local_queues(&db, &clock) {
            raw.insert(kind, q.clone());
            let n: Arc<dyn JobQueue> = Arc::new(Notifying {
                inner: q,
                sent: sent.clone(),
            });
            notifying.insert(kind, n.clone());
            queues = queues.with(kind, n);
        }
        let svc = Arc::new(AppContext::new(
            config,
            store.clone(),
            quota,
            queues,
            connectors,
        ));
        let runtimes = JobKind::QUEUED
            .iter()
            .map(|k| {
                (
                    *k,
                    JobRuntime::new(
                        notifying[k].clone(),
                        clock.clone(),
                        RestartPolicy::default(),
                    )
                    .with_ledger(store.clone())
                    .with_waiters(store.clone(), svc.queues.clone())
                    .with_metrics(svc.metrics.clone()),
                )
            })
            .collect();
        Ok(Self {
            handler: Arc::new(Router::all(svc.clone(), store)?),
            svc,
            quota_db,
            db,
            queues: raw,
            runtimes,
            sent,
            concurrency: None,
        })
    }

    /// The queue of a kind (reports, `metered jobs`).
    pub fn queue(&self, kind: JobKind) -> Option<&Arc<SqliteQueue>> {
        self.queues.get(&kind)
    }

    /// Runs due jobs until none is left before `until`, jumping `clock` to
    /// the next due job whenever nothing is in flight and nothing is due
    /// now. The scheduler ticks every `tick_every` of the clock.
    pub async fn run_simulated(
        &self,
        clock: &ManualClock,
        until: Timestamp,
        tick_every: Option<chrono::Duration>,
    ) -> Result<RunReport> {
        self.run_until(Some(clock), until, tick_every).await
    }

    async fn run_until(
        &self,
        clock: Option<&ManualClock>,
        until: Timestamp,
        tick_every: Option<chrono::Duration>,
    ) -> Result<RunReport> {
        let mut report = RunReport::default();
        let mut next_tick = tick_every.map(|_| self.svc.clock.now());
        let mut in_flight: tokio::task::JoinSet<(JobKind, Result<Vec<Settled>>)> =
            tokio::task::JoinSet::new();
        let mut busy: BTreeMap<JobKind, u32> = BTreeMap::new();
        loop {
            if let (Some(t), Some(every)) = (next_tick, tick_every) {
                if self.svc.clock.now() >= t {
                    crate::handlers::schedule::tick(&self.svc).await;
                    next_tick = Some(t + every);
                }
            }
            // Every kind with room polls its queue, as each event source
            // mapping does.
            for (kind, rt) in &self.runtimes {
                let shape = kind.deployed();
                let limit = self.concurrency.unwrap_or(shape.max_concurrency);
                while busy.get(kind).copied().unwrap_or(0) < limit {
                    let deliveries = rt
                        .queue
                        .receive(shape.batch_size, shape.visibility_secs)
                        .await?;
                    if deliveries.is_empty() {
                        break;
                    }
                    *busy.entry(*kind).or_default() += 1;
                    let (rt, handler, kind) = (rt.clone(), self.handler.clone(), *kind);
                    in_flight.spawn(async move {
                        (
                            kind,
                            invoke(&rt, handler.as_ref(), deliveries, shape.timeout_secs).await,
                        )
                    });
                }
            }
            if !in_flight.is_empty() {
                // Until an invocation ends or a message is sent (it may be
                // due now, for a kind with room).
                tokio::select! {
                    done = in_flight.join_next() => {
                        if let Some(done) = done {
                            let (kind, settled) = done.map_err(|e| {
                                crate::Error::Config(format!("a local invocation panicked: {e}"))
                            })?;
                            *busy.entry(kind).or_default() -= 1;
                            for s in settled? {
                                record(&mut report, kind, s);
                            }
                        }
                    }
                    () = self.sent.notified() => {}
                }
                continue;
            }
            let mut next: Option<Timestamp> = next_tick;
            for kind in JobKind::QUEUED {
                if let Some(at) = self.queues[&kind].next_visible_at().await? {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            match (next, clock) {
                // `until` is exclusive: what is due then belongs to the next slice.
                (Some(at), Some(clock)) if at < until => {
                    clock.set(at.max(self.svc.clock.now() + chrono::Duration::milliseconds(1)))
                }
                // Real time: a message due now that was not received (sent
                // as the last invocation ended) is taken on the next pass.
                (Some(at), None) if at <= self.svc.clock.now() => {}
                _ => return Ok(report),
            }
        }
    }
}

/// One invocation, as Lambda runs it: the batch in turn with the function's
/// timeout, then the settled messages deleted; the others come back after
/// the visibility timeout.
async fn invoke(
    rt: &JobRuntime,
    handler: &Router,
    deliveries: Vec<Delivery>,
    timeout_secs: u32,
) -> Result<Vec<Settled>> {
    let deadline = rt.clock.now() + chrono::Duration::seconds(i64::from(timeout_secs));
    let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
    let results = rt.process_batch(&bodies, handler, Some(deadline)).await;
    for (delivery, settled) in deliveries.iter().zip(&results) {
        if settled.ack() {
            rt.queue.ack(&delivery.receipt).await?;
        }
    }
    Ok(results)
}

impl RunReport {
    /// Adds another run's counts to this one.
    pub fn merge(&mut self, other: RunReport) {
        for (k, v) in other.done {
            *self.done.entry(k).or_default() += v;
        }
        for (k, v) in other.restarts {
            *self.restarts.entry(k).or_default() += v;
        }
        self.not_before_hops += other.not_before_hops;
        self.duplicates_dropped += other.duplicates_dropped;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
    }
}

fn record(report: &mut RunReport, kind: JobKind, s: Settled) {
    match s {
        Settled::Done => *report.done.entry(kind.as_str().into()).or_default() += 1,
        Settled::Restarted { reason, .. } if reason == NOT_BEFORE_REASON => {
            report.not_before_hops += 1
        }
        ref s @ Settled::Restarted { .. } if !s.is_counted_restart() => {}
        Settled::Restarted { reason, .. } => *report.restarts.entry(reason).or_default() += 1,
        Settled::Skipped { .. } => report.duplicates_dropped += 1,
        Settled::Retry { .. } => report.retries += 1,
        Settled::DeadLettered { .. } => report.dead_lettered += 1,
    }
}

/// Deliveries of a local message before it moves to its dead-letter table
/// (the deployed queues' `maxReceiveCount` in `template.yaml` plays this part).
pub(crate) const MAX_RECEIVES: u32 = 5;

/// The local queue of every queued job kind in `db`: what the runner pumps
/// and what `metered jobs` and `metered dlq` read.
pub fn local_queues(db: &Db, clock: &SharedClock) -> Vec<(JobKind, Arc<SqliteQueue>)> {
    JobKind::QUEUED
        .into_iter()
        .map(|kind| {
            let q = SqliteQueue::new(db.clone(), kind.as_str(), clock.clone(), MAX_RECEIVES);
            (kind, Arc::new(q))
        })
        .collect()
}
