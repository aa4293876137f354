//! The whole system on one machine: SQLite adapters, one queue per job kind,
//! and a dispatcher that feeds each queue to the same handler code the
//! Lambda functions run.
//!
//! On a simulated clock the dispatcher jumps time to the next due job when
//! nothing is due now, so days of restarts pass in seconds; on the system
//! clock it would wait for it instead (the one place that may wait: it waits
//! for the next due job, not out a limit).

use crate::adapters::sqlite::queue::SqliteQueue;
use crate::adapters::sqlite::quota::SqliteQuota;
use crate::adapters::sqlite::store::SqliteStore;
use crate::adapters::sqlite::Db;
use crate::config::app::AppConfig;
use crate::connector::Connector;
use crate::core::clock::{ManualClock, SharedClock, Timestamp};
use crate::core::error::Result;
use crate::handlers::context::AppContext;
use crate::handlers::sync::SyncHandlers;
use crate::jobs::envelope::JobKind;
use crate::jobs::queue::{JobQueue, Queues};
use crate::jobs::runtime::{JobRuntime, RestartPolicy, Settled, NOT_BEFORE_REASON};
use crate::quota::Quota;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every handler behind one [`crate::jobs::runtime::JobHandler`], routed by kind:
/// what a single process runs when it plays every Lambda function.
pub struct Dispatch {
    /// The sync handlers.
    pub sync: SyncHandlers,
    /// The workflow handler.
    pub workflow: crate::handlers::workflow::WorkflowHandler,
    /// The action handlers.
    pub actions: crate::handlers::actions::ActionHandlers,
}

impl Dispatch {
    /// The handlers of every kind over one context.
    pub fn new(
        svc: Arc<AppContext>,
        ledger: Arc<dyn crate::jobs::ledger::ActionLedger>,
    ) -> Result<Self> {
        Ok(Self {
            sync: SyncHandlers::all(svc.clone()),
            workflow: crate::handlers::workflow::WorkflowHandler::new(svc.clone())?,
            actions: crate::handlers::actions::ActionHandlers::new(svc, ledger, None),
        })
    }
}

#[async_trait::async_trait]
impl crate::jobs::runtime::JobHandler for Dispatch {
    fn name(&self) -> &str {
        "local"
    }
    fn accepts(&self, kind: JobKind) -> bool {
        self.sync.accepts(kind) || self.workflow.accepts(kind) || self.actions.accepts(kind)
    }
    async fn handle(
        &self,
        job: &crate::jobs::envelope::JobEnvelope,
        ctx: &crate::jobs::runtime::JobContext,
    ) -> crate::jobs::envelope::Outcome {
        if self.sync.accepts(job.kind) {
            self.sync.handle(job, ctx).await
        } else if self.workflow.accepts(job.kind) {
            self.workflow.handle(job, ctx).await
        } else {
            self.actions.handle(job, ctx).await
        }
    }
    async fn gave_up(&self, job: &crate::jobs::envelope::JobEnvelope, reason: &str) {
        if self.sync.accepts(job.kind) {
            self.sync.gave_up(job, reason).await
        } else if self.workflow.accepts(job.kind) {
            self.workflow.gave_up(job, reason).await
        } else {
            self.actions.gave_up(job, reason).await
        }
    }
}

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

/// Every function in one process: the SQLite queues pumped in turn.
pub struct LocalRunner {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    /// The quota's own database, so its round trips can be counted apart.
    pub quota_db: Db,
    /// The records, ledgers and queues' database.
    pub db: Db,
    queues: BTreeMap<JobKind, Arc<SqliteQueue>>,
    runtimes: Vec<(JobKind, JobRuntime)>,
    handler: Dispatch,
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
        let mut queues = Queues::new();
        let mut raw = BTreeMap::new();
        for (kind, q) in local_queues(&db, &clock) {
            raw.insert(kind, q.clone());
            queues = queues.with(kind, q);
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
                let q: Arc<dyn JobQueue> = raw[k].clone();
                (
                    *k,
                    JobRuntime::new(q, clock.clone(), RestartPolicy::default())
                        .with_ledger(store.clone())
                        .with_metrics(svc.metrics.clone()),
                )
            })
            .collect();
        Ok(Self {
            handler: Dispatch::new(svc.clone(), store)?,
            svc,
            quota_db,
            db,
            queues: raw,
            runtimes,
        })
    }

    /// The queue of a kind (reports, `metered jobs`).
    pub fn queue(&self, kind: JobKind) -> Option<&Arc<SqliteQueue>> {
        self.queues.get(&kind)
    }

    /// Runs due jobs until none is left before `until`, jumping `clock` to
    /// the next due job whenever nothing is due now. `tick` is called at
    /// every jump (run the scheduler there).
    pub async fn run_simulated(
        &self,
        clock: &ManualClock,
        until: Timestamp,
        tick_every: Option<chrono::Duration>,
    ) -> Result<RunReport> {
        let mut report = RunReport::default();
        let mut next_tick = tick_every.map(|_| self.svc.clock.now());
        loop {
            if let (Some(t), Some(every)) = (next_tick, tick_every) {
                if self.svc.clock.now() >= t {
                    crate::handlers::schedule::tick(&self.svc).await?;
                    next_tick = Some(t + every);
                }
            }
            let mut worked = false;
            for (kind, rt) in &self.runtimes {
                for s in rt.pump_once(&self.handler, 10, 900).await? {
                    worked |= !matches!(&s, Settled::Restarted { reason, .. } if reason == NOT_BEFORE_REASON);
                    record(&mut report, *kind, s);
                }
            }
            if worked {
                continue;
            }
            let mut next: Option<Timestamp> = next_tick;
            for kind in JobKind::QUEUED {
                if let Some(at) = self.queues[&kind].next_visible_at().await? {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            match next {
                // `until` is exclusive: what is due then belongs to the next slice.
                Some(at) if at < until => {
                    clock.set(at.max(self.svc.clock.now() + chrono::Duration::milliseconds(1)))
                }
                _ => return Ok(report),
            }
        }
    }
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
        Settled::Restarted { reason, .. } => *report.restarts.entry(reason).or_default() += 1,
        Settled::Skipped { .. } => report.duplicates_dropped += 1,
        Settled::Retry { .. } => report.retries += 1,
        Settled::DeadLettered { .. } => report.dead_lettered += 1,
    }
}

/// Deliveries of a local message before it moves to its dead-letter table
/// (the deployed queues' `maxReceiveCount` in `template.yaml` plays this part).
pub const MAX_RECEIVES: u32 = 5;

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
