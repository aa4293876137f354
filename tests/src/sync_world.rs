//! A whole system for end-to-end tests: the simulated API with **two
//! organizations whose record ids coincide** (each org its own API key; the
//! simulator serves both the same dataset), every handler, and either
//! adapter set (SQLite, or DynamoDB Local + ministack SQS), driven on a
//! manual clock, with faults injected at named points.
//!
//! The driver plays the Lambda service: it receives each queue's messages,
//! runs every delivery in a task of its own with a deadline on the manual
//! clock, acknowledges what settled, hands back what must be redelivered,
//! and treats a task that died at an injected crash point as an invocation
//! that died (nothing settled or acknowledged; its message comes back after
//! the deadline, when its claim has ended). It never panics on an outcome:
//! every one is counted in the [`Report`], dead letters with their reasons.
//!
//! Time travel on real queues: [`TimeTravel`] sends every message with no
//! delay and remembers each job's `not_before`; an early arrival is re-sent
//! by the runtime without work, and when nothing else is due the driver moves
//! the clock to the earliest `not_before`. So a day-long wait takes
//! milliseconds on SQS too, through the same restart code. With
//! [`World::with_call_time`] every API call also moves the clock, so long
//! jobs meet their deadline and restart from their checkpoint.

use crate::faults::{Faults, FaultyQuota, FaultyStore, CRASH, RUNNING};
use crate::{dynamo_table, sim_fixture_with, sqs_queue, SimFixture};
use async_trait::async_trait;
use metered::adapters::sqlite::SqliteQueue;
use metered::config::ConnectionConfig;
use metered::connector::{ApiError, Connector, ListRequest, Page, SendRequest};
use metered::core::{ManualClock, SharedClock, Timestamp};
use metered::jobs::JobLedger;
use metered::jobs::{DeadLetter, Delivery, JobQueue, Queues};
use metered::jobs::{
    JobContext, JobHandler, JobRuntime, RestartPolicy, Settled, NOT_BEFORE_REASON,
};
use metered::jobs::{JobEnvelope, JobKind};
use metered::quota::{Quota, QuotaStore};
use metered::store::RecordStore;
use metered::AppConfig;
use metered::AppContext;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Sqlite,
    Aws,
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Adapter::Sqlite => "sqlite",
            Adapter::Aws => "dynamodb+sqs",
        })
    }
}

/// The first organization; single-org scenarios use it alone.
pub const ORG: &str = "acme";
/// The second organization: same app, same record ids, its own API key.
pub const ORG_B: &str = "globex";
pub const ORGS: [&str; 2] = [ORG, ORG_B];

/// How long the driver lets an invocation run (on the manual clock): the
/// transfer functions' timeout in `template.yaml`.
pub const DEADLINE_SECS: i64 = 300;

/// Sends without delay; remembers when each job may run; fails a send or
/// an ack where a fault is planned (`queue.send`, `queue.ack`).
pub struct TimeTravel {
    inner: Arc<dyn JobQueue>,
    waits: Arc<Mutex<HashMap<String, Timestamp>>>,
    faults: Arc<Faults>,
}

#[async_trait]
impl JobQueue for TimeTravel {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, job: &JobEnvelope, _delay_secs: u32) -> metered::Result<()> {
        self.faults.check("queue.send")?;
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
    async fn release(&self, receipt: &str, visible_in_secs: u32) -> metered::Result<()> {
        self.inner.release(receipt, visible_in_secs).await
    }
    async fn dead_letters(&self, max: u32) -> metered::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(&self, choose: &metered::jobs::Choose<'_>) -> metered::Result<u64> {
        self.inner.redrive(choose).await
    }
}

/// A connector whose every call takes `secs` of the manual clock, so long
/// jobs reach their deadline inside the job.
struct Ticking {
    inner: Arc<dyn Connector>,
    clock: ManualClock,
    secs: Arc<Mutex<i64>>,
}

impl Ticking {
    fn tick(&self) {
        let secs = *self.secs.lock().unwrap();
        if secs > 0 {
            self.clock.advance(chrono::Duration::seconds(secs));
        }
    }
}

#[async_trait]
impl Connector for Ticking {
    fn list_endpoint(&self, rt: &str) -> String {
        self.inner.list_endpoint(rt)
    }
    fn lookup_endpoint(&self, rt: &str) -> String {
        self.inner.lookup_endpoint(rt)
    }
    fn max_ids_per_call(&self, rt: &str) -> usize {
        self.inner.max_ids_per_call(rt)
    }
    async fn list(&self, req: &ListRequest) -> Result<Page, ApiError> {
        self.tick();
        self.inner.list(req).await
    }
    async fn lookup(&self, rt: &str, ids: &[String]) -> Result<Page, ApiError> {
        self.tick();
        self.inner.lookup(rt, ids).await
    }
    async fn send(&self, req: &SendRequest) -> Result<serde_json::Value, ApiError> {
        self.tick();
        self.inner.send(req).await
    }
    fn is_exempt(&self, endpoint: &str) -> bool {
        self.inner.is_exempt(endpoint)
    }
    fn call_cost(&self, endpoint: &str) -> u32 {
        self.inner.call_cost(endpoint)
    }
    fn take_api_count(&self) -> Option<metered::connector::ApiCount> {
        self.inner.take_api_count()
    }
}

/// What a drive did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub done: BTreeMap<JobKind, u64>,
    pub restarts: Vec<String>,
    pub skipped: u64,
    pub retries: Vec<String>,
    /// Invocations that died at an injected crash point.
    pub crashes: u64,
    /// Dead letters settled during the drive, with their reasons.
    pub dead: Vec<String>,
}

pub struct World {
    pub adapter: Adapter,
    pub clock: ManualClock,
    pub shared: SharedClock,
    pub fx: SimFixture,
    pub svc: Arc<AppContext>,
    pub store: Arc<dyn RecordStore>,
    pub quota_store: Arc<dyn QuotaStore>,
    pub runtimes: Vec<(JobKind, Arc<JobRuntime>)>,
    pub workflow: Arc<dyn JobQueue>,
    pub action_ledger: Arc<dyn metered::jobs::ActionLedger>,
    /// Faults planned at named points (see [`crate::faults`]).
    pub faults: Arc<Faults>,
    /// API key of each org at the simulator.
    pub api_keys: BTreeMap<String, String>,
    /// The DynamoDB table (AWS adapter set only).
    pub table: Option<metered::adapters::aws::Table>,
    /// The same store, read as Hosted GET reads it.
    pub hosted: Arc<dyn metered::store::HostedRows>,
    handler: Arc<metered::Router>,
    raw: BTreeMap<JobKind, Arc<dyn JobQueue>>,
    ledger: Arc<dyn JobLedger>,
    waiters: Arc<dyn metered::jobs::SlotWaiters>,
    waits: Arc<Mutex<HashMap<String, Timestamp>>>,
    call_secs: Arc<Mutex<i64>>,
    deadline_secs: i64,
}

/// What differs from the default world: the simulated API, the app
/// config, the DynamoDB client, which handlers run and in what order, how
/// long calls take. `World::builder(adapter).….build().await`.
pub struct WorldBuilder<'a> {
    adapter: Adapter,
    sim: metered_sim::SimConfig,
    dynamodb: Option<aws_sdk_dynamodb::Client>,
    edit: Box<dyn FnOnce(&mut AppConfig) + 'a>,
    workflows: bool,
    first: Option<JobKind>,
    call_time: Option<(i64, i64)>,
}

impl<'a> WorldBuilder<'a> {
    /// The simulated API's behaviour (records, budget, faults).
    pub fn sim(mut self, sim: metered_sim::SimConfig) -> Self {
        self.sim = sim;
        self
    }

    /// Shapes the app config (syncs, limits) before it is validated.
    pub fn config(mut self, edit: impl FnOnce(&mut AppConfig) + 'a) -> Self {
        self.edit = Box::new(edit);
        self
    }

    /// A DynamoDB client of one's own (e.g. one whose HTTP layer loses
    /// responses) for the AWS adapter set.
    pub fn dynamodb(mut self, client: Option<aws_sdk_dynamodb::Client>) -> Self {
        self.dynamodb = client;
        self
    }

    /// Also runs the workflow and action handlers ([`World::with_workflows`]).
    pub fn workflows(mut self) -> Self {
        self.workflows = true;
        self
    }

    /// Runs `kind`'s queue first in every round ([`World::prioritise`]).
    pub fn first(mut self, kind: JobKind) -> Self {
        self.first = Some(kind);
        self
    }

    /// Every call takes `secs`; invocations end after `deadline_secs`
    /// ([`World::with_call_time`]).
    pub fn call_time(mut self, secs: i64, deadline_secs: i64) -> Self {
        self.call_time = Some((secs, deadline_secs));
        self
    }

    /// Starts the simulator and builds the adapters, queues and handlers.
    pub async fn build(self) -> World {
        let mut w = World::assemble(self.adapter, self.sim, self.dynamodb, self.edit).await;
        if self.workflows {
            w = w.with_workflows();
        }
        if let Some(kind) = self.first {
            w = w.prioritise(kind);
        }
        if let Some((secs, deadline)) = self.call_time {
            w = w.with_call_time(secs, deadline);
        }
        w
    }
}

impl World {
    /// The default world on `adapter`: the default simulated API, the
    /// simulator's app config, the sync handlers only.
    pub fn builder<'a>(adapter: Adapter) -> WorldBuilder<'a> {
        WorldBuilder {
            adapter,
            sim: metered_sim::SimConfig::default(),
            dynamodb: None,
            edit: Box::new(|_| {}),
            workflows: false,
            first: None,
            call_time: None,
        }
    }

    /// The world most tests want: `sim`, and `edit` shaping the app config
    /// (syncs, limits) before it is validated.
    pub async fn new(
        adapter: Adapter,
        sim: metered_sim::SimConfig,
        edit: impl FnOnce(&mut AppConfig),
    ) -> Self {
        Self::builder(adapter).sim(sim).config(edit).build().await
    }

    async fn assemble(
        adapter: Adapter,
        sim: metered_sim::SimConfig,
        dynamodb: Option<aws_sdk_dynamodb::Client>,
        edit: Box<dyn FnOnce(&mut AppConfig) + '_>,
    ) -> Self {
        crate::faults::quiet_injected_crashes();
        let (clock, shared) = crate::manual_clock();
        let fx = sim_fixture_with(sim, shared.clone(), |c| {
            c.connections = ORGS
                .iter()
                .map(|org| ConnectionConfig {
                    org: (*org).into(),
                    secret: None,
                    limits: None,
                })
                .collect();
            edit(c);
        })
        .await;
        let faults = Faults::new();
        let waits: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
        type Stores = (
            Arc<dyn RecordStore>,
            Arc<dyn QuotaStore>,
            Arc<dyn JobLedger>,
            Arc<dyn metered::jobs::ActionLedger>,
            Option<metered::adapters::aws::Table>,
            Arc<dyn metered::store::HostedRows>,
            Arc<dyn metered::jobs::SlotWaiters>,
        );
        let (store, quota_store, ledger, action_ledger, table, hosted, waiters): Stores =
            match adapter {
                Adapter::Sqlite => {
                    let db = metered::adapters::sqlite::Db::in_memory().unwrap();
                    let store = Arc::new(FaultyStore {
                        inner: Arc::new(metered::adapters::sqlite::SqliteStore::new(db.clone())),
                        faults: faults.clone(),
                    });
                    (
                        store.clone(),
                        Arc::new(metered::adapters::sqlite::SqliteQuota::new(db)),
                        store.clone(),
                        store.clone(),
                        None,
                        store.inner.clone(),
                        store.clone(),
                    )
                }
                Adapter::Aws => {
                    let mut table = dynamo_table().await;
                    if let Some(client) = dynamodb {
                        table.client = client;
                    }
                    let store = Arc::new(FaultyStore {
                        inner: Arc::new(metered::adapters::aws::DynamoStore::new(table.clone())),
                        faults: faults.clone(),
                    });
                    (
                        store.clone(),
                        Arc::new(metered::adapters::aws::DynamoQuota::new(table.clone())),
                        store.clone(),
                        store.clone(),
                        Some(table),
                        store.inner.clone(),
                        store.clone(),
                    )
                }
            };
        let quota_store: Arc<dyn QuotaStore> = Arc::new(FaultyQuota {
            inner: quota_store,
            faults: faults.clone(),
        });
        let db = metered::adapters::sqlite::Db::in_memory().unwrap();
        let mut queues = Queues::new();
        let mut raw: BTreeMap<JobKind, Arc<dyn JobQueue>> = BTreeMap::new();
        for kind in metered::JobKind::QUEUED {
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
                faults: faults.clone(),
            });
            raw.insert(kind, q.clone());
            queues = queues.with(kind, q);
        }
        let quota = Quota::new(quota_store.clone(), shared.clone());
        let call_secs: Arc<Mutex<i64>> = Arc::default();
        let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        let mut api_keys = BTreeMap::new();
        for org in ORGS {
            // Org A uses the fixture's key, org B a key of its own: the
            // simulator counts, limits and dedupes per key.
            let (connector, key): (Arc<dyn Connector>, String) = if org == ORG {
                (fx.connector.clone(), fx.key.clone())
            } else {
                let key = format!("org-key-{}", uuid::Uuid::new_v4().simple());
                let client =
                    metered::connector::http_client(&fx.config.app.timeouts).expect("http client");
                let c = metered::connector::HttpConnector::new(
                    fx.config.clone(),
                    client,
                    Some(metered::connector::Secret::new(key.clone())),
                    shared.clone(),
                )
                .expect("connector");
                (Arc::new(c), key)
            };
            connectors.insert(
                org.into(),
                Arc::new(Ticking {
                    inner: connector,
                    clock: clock.clone(),
                    secs: call_secs.clone(),
                }),
            );
            api_keys.insert(org.to_string(), key);
        }
        let svc = Arc::new(AppContext::new(
            fx.config.clone(),
            store.clone(),
            quota,
            queues,
            connectors,
        ));
        let policy = RestartPolicy {
            max_restarts: 100,
            max_jitter_secs: 30,
            ..Default::default()
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
                Arc::new(
                    JobRuntime::new(raw[&k].clone(), shared.clone(), policy)
                        .with_ledger(ledger.clone())
                        .with_waiters(waiters.clone(), svc.queues.clone())
                        .with_metrics(svc.metrics.clone()),
                ),
            )
        })
        .collect();
        Self {
            adapter,
            clock,
            shared,
            handler: Arc::new(
                metered::Router::all(svc.clone(), action_ledger.clone())
                    .expect("workflows compile"),
            ),
            action_ledger,
            raw: raw.clone(),
            ledger,
            waiters,
            svc,
            store,
            quota_store,
            runtimes,
            workflow: raw[&JobKind::Workflow].clone(),
            fx,
            waits,
            faults,
            api_keys,
            table,
            hosted,
            call_secs,
            deadline_secs: DEADLINE_SECS,
        }
    }

    /// Also run the workflow and action handlers (off by default, so sync
    /// tests can read the triggers the syncs enqueue).
    fn with_workflows(mut self) -> Self {
        let policy = RestartPolicy {
            max_restarts: 100,
            max_jitter_secs: 30,
            ..Default::default()
        };
        for k in [
            JobKind::Workflow,
            JobKind::ActionHttp,
            JobKind::ActionDatasourcePush,
        ] {
            self.runtimes.push((
                k,
                Arc::new(
                    JobRuntime::new(self.raw[&k].clone(), self.shared.clone(), policy)
                        .with_ledger(self.ledger.clone())
                        .with_waiters(self.waiters.clone(), self.svc.queues.clone())
                        .with_metrics(self.svc.metrics.clone()),
                ),
            ));
        }
        self
    }

    /// Every API call takes `secs` of the manual clock; invocations end
    /// `deadline_secs` after they start.
    pub fn with_call_time(self, secs: i64, deadline_secs: i64) -> Self {
        *self.call_secs.lock().unwrap() = secs;
        Self {
            deadline_secs,
            ..self
        }
    }

    /// Runs `kind`'s queue first in every round of the driver (e.g. the
    /// workflow before the lookups its related records wait for).
    fn prioritise(mut self, kind: JobKind) -> Self {
        if let Some(i) = self.runtimes.iter().position(|(k, _)| *k == kind) {
            let rt = self.runtimes.remove(i);
            self.runtimes.insert(0, rt);
        }
        self
    }

    pub fn sim(&self) -> &metered_sim::Sim {
        self.fx.sim()
    }

    /// How many of `ids` of `record_type` org `org` has seen (stored, not
    /// only looked for).
    pub async fn seen(&self, org: &str, record_type: &str, ids: &[String]) -> usize {
        self.store
            .get(&self.svc.key(org), record_type, ids)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.seen())
            .count()
    }

    /// Runs the transfer of `record_type` for the first org again a day
    /// later and returns the calls to `endpoint` it made.
    pub async fn calls_of_a_rerun(&self, record_type: &str, endpoint: &str) -> u64 {
        self.sim().reset_stats();
        self.clock.advance(chrono::Duration::days(1));
        self.start(JobKind::CompleteTransfer, record_type).await;
        self.drive().await;
        self.sim().stats().calls(endpoint)
    }

    pub fn key(&self) -> metered::QuotaKey {
        self.svc.key(ORG)
    }

    pub async fn start(&self, kind: JobKind, record_type: &str) -> JobEnvelope {
        self.start_for(ORG, kind, record_type).await
    }

    pub async fn start_for(&self, org: &str, kind: JobKind, record_type: &str) -> JobEnvelope {
        metered::handlers::start_sync(&self.svc, org, kind, record_type, false)
            .await
            .unwrap()
            .expect("sync was free to start")
    }

    /// Runs every queued job until nothing is left; a dead letter fails the
    /// test with its reason (scenarios that expect some use
    /// [`World::drive_report`]).
    pub async fn drive(&self) -> Report {
        let report = self.drive_report().await;
        assert!(report.dead.is_empty(), "dead-lettered: {:?}", report.dead);
        report
    }

    /// Runs every queued job, moving the clock to the next `not_before`
    /// whenever nothing else is due, until nothing is left. Every outcome is
    /// counted, none panics.
    pub async fn drive_report(&self) -> Report {
        self.drive_until(None).await
    }

    /// Like [`World::drive_report`], but stops when the next wait ends
    /// after `until` (work that waits for a day stays waiting).
    pub async fn drive_until(&self, until: Option<Timestamp>) -> Report {
        let mut report = Report::default();
        for _round in 0..5_000 {
            let mut worked = false;
            for (kind, rt) in &self.runtimes {
                worked |= self.pump(*kind, rt, &mut report).await;
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
                    Some(t) if until.is_none_or(|u| t <= u) => self.clock.set(t),
                    _ => return report,
                }
            }
        }
        panic!("the system did not settle: {report:?}");
    }

    /// One receive of `kind`'s queue, each delivery in a task of its own.
    async fn pump(&self, kind: JobKind, rt: &Arc<JobRuntime>, report: &mut Report) -> bool {
        let deliveries = match rt.queue.receive(10, 60).await {
            Ok(d) => d,
            Err(e) => panic!("receive from {kind}: {e}"),
        };
        let deadline = self.shared.now() + chrono::Duration::seconds(self.deadline_secs);
        let tasks: Vec<_> = deliveries
            .iter()
            .map(|d| {
                let (rt, handler, body) = (rt.clone(), self.handler.clone(), d.body.clone());
                let ctx = JobContext::until(deadline);
                tokio::spawn(RUNNING.scope(kind, async move {
                    rt.process(&body, handler.as_ref(), &ctx).await
                }))
            })
            .collect();
        let mut worked = false;
        for (delivery, task) in deliveries.iter().zip(tasks) {
            let settled = match task.await {
                Ok(s) => s,
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let crash = panic.downcast_ref::<&str>().is_some_and(|m| *m == CRASH);
                    if !crash {
                        std::panic::resume_unwind(panic);
                    }
                    // The invocation died: its claim ends at its deadline,
                    // and the queue redelivers its message after that.
                    report.crashes += 1;
                    worked = true;
                    if self.shared.now() < deadline {
                        self.clock.set(deadline);
                    }
                    rt.queue.release(&delivery.receipt, 0).await.unwrap();
                    continue;
                }
                Err(e) => panic!("job task failed: {e}"),
            };
            if settled.ack() {
                let fault = RUNNING
                    .scope(kind, async { self.faults.next("queue.ack") })
                    .await;
                if fault.is_some() {
                    // The consumer died after settling, before the delete.
                    rt.queue.release(&delivery.receipt, 0).await.unwrap();
                } else {
                    rt.queue.ack(&delivery.receipt).await.unwrap();
                }
            } else {
                rt.queue.release(&delivery.receipt, 0).await.unwrap();
            }
            match settled {
                Settled::Restarted { reason, .. } if reason == NOT_BEFORE_REASON => {}
                Settled::Restarted { reason, .. } => {
                    worked = true;
                    report.restarts.push(reason);
                }
                Settled::Done => {
                    worked = true;
                    *report.done.entry(kind).or_default() += 1;
                }
                Settled::Skipped { .. } => {
                    worked = true;
                    report.skipped += 1;
                }
                Settled::Retry { reason } => {
                    worked = true;
                    report.retries.push(reason);
                }
                Settled::DeadLettered { reason } => {
                    worked = true;
                    report.dead.push(format!("{kind}: {reason}"));
                }
            }
        }
        worked
    }

    /// Workflow trigger jobs enqueued so far (taken off the queue).
    pub async fn take_triggers(&self) -> Vec<metered::handlers::TriggerPayload> {
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

    /// Every dead letter across every queue, with its reason.
    pub async fn all_dead_letters(&self) -> Vec<(JobKind, DeadLetter)> {
        let mut out = Vec::new();
        for (kind, q) in &self.raw {
            for d in q.dead_letters(100).await.unwrap() {
                out.push((*kind, d));
            }
        }
        out
    }

    /// Puts every dead letter back on its queue, as `metered dlq redrive`
    /// does after the operator's fix; returns how many moved.
    pub async fn redrive_all(&self) -> u64 {
        let mut moved = 0;
        for q in self.raw.values() {
            moved += q.redrive(&|d| Some(d.body.clone())).await.unwrap();
        }
        moved
    }

    /// Dead letters across every queue.
    pub async fn dead_letters(&self) -> usize {
        self.all_dead_letters().await.len()
    }
}

/// The dispatch a test may call directly (e.g. with its own context).
impl World {
    pub fn handler(&self) -> &dyn JobHandler {
        self.handler.as_ref()
    }
}
