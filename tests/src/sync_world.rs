//! A whole sync system for end-to-end tests: the simulated API, the sync
//! handlers, and either adapter set (SQLite, or DynamoDB Local + ministack
//! SQS), driven on a manual clock.
//!
//! Time travel on real queues: [`TimeTravel`] sends every message with no
//! delay and remembers each job's `not_before`; an early arrival is re-sent
//! by the runtime without work, and when nothing else is due the driver moves
//! the clock to the earliest `not_before`. So a day-long wait takes
//! milliseconds on SQS too, through the same restart code.

use crate::{dynamo_table, sim_fixture_with, sqs_queue, SimFixture};
use async_trait::async_trait;
use metered::clock::{ManualClock, SharedClock, Timestamp};
use metered::connector::config::AppConfig;
use metered::job::{JobEnvelope, JobKind};
use metered::queue::{sqlite::SqliteQueue, DeadLetter, Delivery, JobQueue, Queues};
use metered::quota::{Quota, QuotaStore};
use metered::runtime::{JobLedger, JobRuntime, RestartPolicy, Settled, NOT_BEFORE_REASON};
use metered::services::Services;
use metered::store::RecordStore;
use metered::sync::settings::ConnectionConfig;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Sqlite,
    Aws,
}

pub const ORG: &str = "acme";

/// Sends without delay; remembers when each job may run.
pub struct TimeTravel {
    inner: Arc<dyn JobQueue>,
    waits: Arc<Mutex<HashMap<String, Timestamp>>>,
}

#[async_trait]
impl JobQueue for TimeTravel {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, job: &JobEnvelope, _delay_secs: u32) -> metered::Result<()> {
        {
            let mut waits = self.waits.lock().unwrap();
            match job.not_before {
                Some(t) => waits.insert(job.id.clone(), t),
                None => waits.remove(&job.id),
            };
        }
        self.inner.send(job, 0).await
    }
    async fn dead_letter(&self, body: &str, reason: &str) -> metered::Result<()> {
        self.inner.dead_letter(body, reason).await
    }
    async fn receive(&self, max: u32, visibility_secs: u32) -> metered::Result<Vec<Delivery>> {
        self.inner.receive(max, visibility_secs).await
    }
    async fn ack(&self, receipt: &str) -> metered::Result<()> {
        self.inner.ack(receipt).await
    }
    async fn dead_letters(&self, max: u32) -> metered::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(max).await
    }
}

/// What a drive did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub done: BTreeMap<JobKind, u64>,
    pub restarts: Vec<String>,
    pub skipped: u64,
    pub retries: u64,
    pub dead: u64,
}

pub struct World {
    pub adapter: Adapter,
    pub clock: ManualClock,
    pub shared: SharedClock,
    pub fx: SimFixture,
    pub svc: Arc<Services>,
    pub store: Arc<dyn RecordStore>,
    pub quota_store: Arc<dyn QuotaStore>,
    pub runtimes: Vec<(JobKind, JobRuntime)>,
    pub workflow: Arc<dyn JobQueue>,
    pub action_ledger: Arc<dyn metered::workflow::ActionLedger>,
    handler: metered::local::Dispatch,
    raw: BTreeMap<JobKind, Arc<dyn JobQueue>>,
    ledger: Arc<dyn JobLedger>,
    waits: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl World {
    /// `edit` shapes the app config (syncs, limits) before it is validated.
    pub async fn new(
        adapter: Adapter,
        sim: metered_sim::SimConfig,
        edit: impl FnOnce(&mut AppConfig),
    ) -> Self {
        let (clock, shared) = crate::manual_clock();
        let fx = sim_fixture_with(sim, shared.clone(), |c| {
            c.connections = vec![ConnectionConfig {
                org: ORG.into(),
                secret: None,
                limits: None,
            }];
            edit(c);
        })
        .await;
        let waits: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
        type Stores = (
            Arc<dyn RecordStore>,
            Arc<dyn QuotaStore>,
            Arc<dyn JobLedger>,
            Arc<dyn metered::workflow::ActionLedger>,
        );
        let (store, quota_store, ledger, action_ledger): Stores = match adapter {
            Adapter::Sqlite => {
                let db = metered::sqlite::Db::in_memory().unwrap();
                let store = Arc::new(metered::store::sqlite::SqliteStore::new(db.clone()));
                (
                    store.clone(),
                    Arc::new(metered::quota::sqlite::SqliteQuota::new(db)),
                    store.clone(),
                    store,
                )
            }
            Adapter::Aws => {
                let table = dynamo_table().await;
                let store = Arc::new(metered::store::dynamodb::DynamoStore::new(table.clone()));
                (
                    store.clone(),
                    Arc::new(metered::quota::dynamodb::DynamoQuota::new(table)),
                    store.clone(),
                    store,
                )
            }
        };
        let db = metered::sqlite::Db::in_memory().unwrap();
        let mut queues = Queues::new();
        let mut raw: BTreeMap<JobKind, Arc<dyn JobQueue>> = BTreeMap::new();
        for kind in metered::local::DISPATCHED {
            let inner: Arc<dyn JobQueue> = match adapter {
                Adapter::Sqlite => Arc::new(SqliteQueue::new(
                    db.clone(),
                    kind.as_str(),
                    shared.clone(),
                    5,
                )),
                Adapter::Aws => Arc::new(sqs_queue(5).await),
            };
            let q: Arc<dyn JobQueue> = Arc::new(TimeTravel {
                inner,
                waits: waits.clone(),
            });
            raw.insert(kind, q.clone());
            queues = queues.with(kind, q);
        }
        let quota = Quota::new(quota_store.clone(), shared.clone());
        let mut connectors: BTreeMap<String, Arc<dyn metered::connector::Connector>> =
            BTreeMap::new();
        connectors.insert(ORG.into(), fx.connector.clone());
        let config = Arc::new({
            let mut c = (*fx.config).clone();
            c.connections = vec![ConnectionConfig {
                org: ORG.into(),
                secret: None,
                limits: fx.config.connections.first().and_then(|c| c.limits.clone()),
            }];
            c
        });
        let svc = Arc::new(Services::new(
            config,
            store.clone(),
            quota,
            queues,
            connectors,
        ));
        let policy = RestartPolicy {
            max_restarts: 100,
            max_jitter_secs: 30,
        };
        let runtimes = [
            JobKind::CompleteTransfer,
            JobKind::RecentRecords,
            JobKind::PkLookup,
        ]
        .into_iter()
        .map(|k| {
            (
                k,
                JobRuntime::new(raw[&k].clone(), shared.clone(), policy)
                    .with_ledger(ledger.clone()),
            )
        })
        .collect();
        Self {
            adapter,
            clock,
            shared,
            handler: metered::local::Dispatch::new(svc.clone(), action_ledger.clone())
                .expect("workflows compile"),
            action_ledger,
            raw: raw.clone(),
            ledger,
            svc,
            store,
            quota_store,
            runtimes,
            workflow: raw[&JobKind::Workflow].clone(),
            fx,
            waits,
        }
    }

    /// Also run the workflow and action handlers (off by default, so sync
    /// tests can read the triggers the syncs enqueue).
    pub fn with_workflows(mut self) -> Self {
        let policy = RestartPolicy {
            max_restarts: 100,
            max_jitter_secs: 30,
        };
        for k in [
            JobKind::Workflow,
            JobKind::ActionHttp,
            JobKind::ActionDatasourcePush,
        ] {
            self.runtimes.push((
                k,
                JobRuntime::new(self.raw[&k].clone(), self.shared.clone(), policy)
                    .with_ledger(self.ledger.clone()),
            ));
        }
        self
    }

    pub fn sim(&self) -> &metered_sim::Sim {
        self.fx.sim()
    }

    pub fn key(&self) -> metered::quota::QuotaKey {
        self.svc.key(ORG)
    }

    pub async fn start(&self, kind: JobKind, record_type: &str) -> JobEnvelope {
        metered::sync::scheduler::start_sync(&self.svc, ORG, kind, record_type, false)
            .await
            .unwrap()
            .expect("sync was free to start")
    }

    /// Runs every queued sync job, moving the clock to the next `not_before`
    /// whenever nothing else is due, until nothing is left.
    pub async fn drive(&self) -> Report {
        let mut report = Report::default();
        for _round in 0..5_000 {
            let mut worked = false;
            for (kind, rt) in &self.runtimes {
                let settled = rt.pump_once(&self.handler, 10, 60).await.unwrap();
                for s in settled {
                    match s {
                        Settled::Restarted { reason, .. } if reason == NOT_BEFORE_REASON => {}
                        Settled::Restarted { reason, .. } => {
                            worked = true;
                            report.restarts.push(reason);
                        }
                        Settled::Done => {
                            worked = true;
                            *report.done.entry(*kind).or_default() += 1;
                        }
                        Settled::Skipped { .. } => {
                            worked = true;
                            report.skipped += 1;
                        }
                        Settled::Retry { reason } => panic!("unexpected retry: {reason}"),
                        Settled::DeadLettered { reason } => panic!("dead-lettered: {reason}"),
                    }
                }
            }
            if !worked {
                let now = self.shared.now();
                let next = self
                    .waits
                    .lock()
                    .unwrap()
                    .values()
                    .copied()
                    .filter(|t| *t > now)
                    .min();
                match next {
                    Some(t) => self.clock.set(t),
                    None => return report,
                }
            }
        }
        panic!("the system did not settle");
    }

    /// Workflow trigger jobs enqueued so far (taken off the queue).
    pub async fn take_triggers(&self) -> Vec<metered::sync::TriggerPayload> {
        let mut out = Vec::new();
        for _ in 0..50 {
            let batch = self.workflow.receive(10, 60).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let job = JobEnvelope::parse(&d.body).unwrap();
                out.push(serde_json::from_value(job.payload).unwrap());
                self.workflow.ack(&d.receipt).await.unwrap();
            }
        }
        out
    }

    /// Dead letters across every queue.
    pub async fn dead_letters(&self) -> usize {
        let mut n = 0;
        for (_, rt) in &self.runtimes {
            n += rt.queue.dead_letters(10).await.unwrap().len();
        }
        n
    }
}
