//! The simulated deployment and its driver: see [`super`].

use crate::faults::{Faults, FaultyQuota, FaultyStore};
use crate::simulation::sched::{Rng, Sched, TaskId};
use crate::sync_world::{Adapter, ORGS};
use crate::{dynamo_table, sim_fixture_with, sqs_queue, SimFixture};
use async_trait::async_trait;
use metered::adapters::sqlite::SqliteQueue;
use metered::config::{
    CompleteTransferSettings, LookupPolicy, PkLookupSettings, RecentSettings, StormGuard,
    SyncConfig,
};
use metered::connector::{ApiError, Connector, ListRequest, Page, SendRequest};
use metered::core::{Clock, ManualClock, SharedClock, Timestamp};
use metered::jobs::{ActionLedger, JobLedger};
use metered::jobs::{Choose, DeadLetter, Delivery, JobQueue, Queues};
use metered::jobs::{JobEnvelope, JobKind};
use metered::jobs::{JobRuntime, RestartPolicy, Settled};
use metered::quota::{Limits, Quota, QuotaStore};
use metered::store::HostedRows;
use metered::store::RecordStore;
use metered::AppConfig;
use metered::AppContext;
use metered::Router;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// How often each kind of event happens, per step of the driver (‰).
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// A parked job crashes at its port call.
    pub crash: u64,
    /// Crashes at most per run.
    pub max_crashes: u32,
    /// A sent message is delivered twice.
    pub duplicate: u64,
    /// A send reaches the queue but its sender is told it failed.
    pub lost_send: u64,
    /// The clock moves 1 to 15 s while jobs run (deadlines, leases,
    /// windows pass mid-job).
    pub advance: u64,
    /// Invoices change (or a new one appears) at the API.
    pub change: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            crash: 3,
            max_crashes: 6,
            duplicate: 30,
            lost_send: 10,
            advance: 25,
            change: 8,
        }
    }
}

/// The scheduler's rate in the simulation (`ScheduleRate`): often enough
/// for the 15-minute recent lookups.
const TICK_MINUTES: i64 = 5;

/// Calls per UTC day and per minute of each org.
pub const DAILY_BUDGET: u32 = 600;
pub const PER_MINUTE: u32 = 15;

const WORKFLOWS: &str = r#"
[workflows.vip]
trigger = { record_type = "customers", on = ["created"] }
conditions = ["record.score < 30"]
[[workflows.vip.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { customer = "{{ record.id }}", text = "Welcome {{ record.name }}" }
[[workflows.vip.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}", score = "{{ record.score }}" }
max_rows_per_call = 4

[workflows.paid]
trigger = { record_type = "invoices", on = ["created", "updated"] }
conditions = ["record.status == 'paid'"]
related.customer = { via = "/customer_id", record_type = "customers", missing = "pk_lookup", min_relookup = "1h" }
[[workflows.paid.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { invoice = "{{ record.id }}", version = "{{ record.version }}", customer = "{{ related.customer.name }}" }
[[workflows.paid.actions]]
kind = "datasource_push"
datasource = "customer_invoices"
row = { id = "{{ record.id }}", customer_id = "{{ record.customer_id }}", version = "{{ record.version }}" }

[datasources.customer_invoices]
mode = "hosted"
secret = { env = "METERED_SIMULATION_UNUSED_SECRET" }
filter = "row.customer_id == user.customer_id"
"#;

/// The scenario's workflows and Data Sources as TOML, the hosted Data
/// Source's JWT key read from `hosted_secret` (a `secret = ...` value):
/// what the deployed stack's test runs too.
pub fn workflows_toml(hosted_secret: &str) -> String {
    WORKFLOWS.replace(
        r#"{ env = "METERED_SIMULATION_UNUSED_SECRET" }"#,
        hosted_secret,
    )
}

/// The simulated app: 12 customers, 30 invoices.
pub fn sim_config() -> metered_sim::SimConfig {
    metered_sim::SimConfig {
        customers: 12,
        invoices: 30,
        daily_budget: 100_000,
        ..Default::default()
    }
}

/// The scenario's app config: invoices transferred every 30 minutes in
/// pages of 10 and looked up every 15; their customers looked up by key in
/// bulks of 5; two workflows (one with a related record), HTTP actions, a
/// pushed and a hosted Data Source; each org 600 calls a day, 15 a minute,
/// 3 at once.
pub fn scenario(c: &mut AppConfig) {
    if let Some(rt) = c.record_types.get_mut("invoices") {
        rt.max_page_size = 10;
    }
    c.syncs.insert(
        "invoices".into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: std::time::Duration::from_secs(1_800),
            }),
            recent: Some(RecentSettings {
                every: std::time::Duration::from_secs(900),
                overlap: std::time::Duration::from_secs(300),
            }),
            ..Default::default()
        },
    );
    c.syncs.insert(
        "customers".into(),
        SyncConfig {
            pk_lookup: PkLookupSettings {
                enabled: true,
                policy: LookupPolicy::UnseenOnly,
                max_keys_per_call: Some(5),
                storm_guard: StormGuard::Off,
                // A day, as by default: a claim that nobody looks up stays
                // lost for the whole run, not healed an hour later.
                min_relookup: std::time::Duration::from_secs(86_400),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    crate::add_sections(
        c,
        &workflows_toml(r#"{ env = "METERED_SIMULATION_UNUSED_SECRET" }"#),
    );
    for conn in &mut c.connections {
        conn.limits = Some(Limits::new(Some(DAILY_BUDGET), None, Some(PER_MINUTE), 3).unwrap());
    }
}

/// What the run did, for the failure message and the summary.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub steps: u64,
    pub done: BTreeMap<JobKind, u64>,
    pub restarts: BTreeMap<String, u64>,
    pub dead: Vec<String>,
    pub skipped: u64,
    pub left_for_redelivery: u64,
    pub crashes: u64,
    pub timeouts: u64,
    pub duplicates: u64,
    pub lost_sends: u64,
    pub api_changes: u64,
    pub ticks: u64,
    pub invocations: u64,
    pub simulated: chrono::Duration,
}

/// A queue as the simulation sees it: every send and ack is a port call
/// (a yield point); sends may be delivered twice or have their response
/// lost; on SQS, delays are held here on the simulated clock (the server
/// counts real seconds) and released when due.
struct SimQueue {
    inner: Arc<dyn JobQueue>,
    sqlite: Option<Arc<SqliteQueue>>,
    faults: Arc<Faults>,
    rng: Arc<Mutex<Rng>>,
    knobs: Knobs,
    clock: SharedClock,
    pen: Mutex<Vec<(Timestamp, JobEnvelope)>>,
    stats: Arc<Mutex<Report>>,
    sent: std::sync::atomic::AtomicU64,
}

impl SimQueue {
    async fn put(&self, job: &JobEnvelope, delay_secs: u32) -> metered::Result<()> {
        if self.sqlite.is_none() && delay_secs > 0 {
            let at = self.clock.now() + chrono::Duration::seconds(i64::from(delay_secs));
            self.pen.lock().unwrap().push((at, job.clone()));
            return Ok(());
        }
        self.inner.send(job, delay_secs).await
    }

    /// Sends what waited in the pen until now (SQS only).
    async fn release_due(&self, now: Timestamp) {
        let due: Vec<JobEnvelope> = {
            let mut pen = self.pen.lock().unwrap();
            let (due, wait): (Vec<_>, Vec<_>) = pen.drain(..).partition(|(at, _)| *at <= now);
            *pen = wait;
            due.into_iter().map(|(_, j)| j).collect()
        };
        for job in due {
            self.inner
                .send(&job, 0)
                .await
                .expect("send a delayed message");
            self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// When the next message becomes visible, if any is waiting.
    async fn next_due(&self) -> Option<Timestamp> {
        let pen = self.pen.lock().unwrap().iter().map(|(t, _)| *t).min();
        let visible = match &self.sqlite {
            Some(q) => q.next_visible_at().await.expect("next visible"),
            None => None,
        };
        match (pen, visible) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[async_trait]
impl JobQueue for SimQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> metered::Result<()> {
        self.faults.enter("queue.send").await?;
        let (dup, lost) = {
            let mut rng = self.rng.lock().unwrap();
            (
                rng.chance(self.knobs.duplicate),
                rng.chance(self.knobs.lost_send),
            )
        };
        self.put(job, delay_secs).await?;
        if dup {
            self.put(job, delay_secs).await?;
            self.stats.lock().unwrap().duplicates += 1;
        }
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if lost {
            self.stats.lock().unwrap().lost_sends += 1;
            return Err(metered::Error::Queue {
                operation: "send",
                message: "simulated: the response to a send that succeeded was lost".into(),
                disposition: metered::core::Disposition::Retryable,
            });
        }
        Ok(())
    }
    async fn dead_letter(&self, body: &str, reason: &str) -> metered::Result<()> {
        self.faults.enter("queue.dead_letter").await?;
        self.inner.dead_letter(body, reason).await
    }
    async fn receive(&self, max: u32, visibility_secs: u32) -> metered::Result<Vec<Delivery>> {
        self.inner.receive(max, visibility_secs).await
    }
    async fn ack(&self, receipt: &str) -> metered::Result<()> {
        self.faults.enter("queue.ack").await?;
        self.inner.ack(receipt).await
    }
    async fn release(&self, receipt: &str, visible_in_secs: u32) -> metered::Result<()> {
        self.inner.release(receipt, visible_in_secs).await
    }
    async fn dead_letters(&self, max: u32) -> metered::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(&self, choose: &Choose<'_>) -> metered::Result<u64> {
        self.inner.redrive(choose).await
    }
}

/// The API as the simulation sees it: every call is a port call.
struct SimApi {
    inner: Arc<dyn Connector>,
    sched: Arc<Sched>,
}

#[async_trait]
impl Connector for SimApi {
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
        self.sched.yield_point("api.list").await;
        self.inner.list(req).await
    }
    async fn lookup(&self, rt: &str, ids: &[String]) -> Result<Page, ApiError> {
        self.sched.yield_point("api.lookup").await;
        self.inner.lookup(rt, ids).await
    }
    async fn send(&self, req: &SendRequest) -> Result<serde_json::Value, ApiError> {
        self.sched.yield_point("api.send").await;
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

enum TaskOut {
    Invocation {
        kind: JobKind,
        settled: Vec<Settled>,
        leftover: Vec<String>,
    },
    Tick,
}

struct Task {
    handle: tokio::task::JoinHandle<TaskOut>,
    kind: Option<JobKind>,
    deadline: Option<Timestamp>,
    receipts: Vec<String>,
}

/// One seeded run of the scenario.
pub struct Simulation {
    pub seed: u64,
    pub adapter: Adapter,
    pub knobs: Knobs,
    pub clock: ManualClock,
    pub sched: Arc<Sched>,
    rng: Arc<Mutex<Rng>>,
    pub fx: SimFixture,
    pub svc: Arc<AppContext>,
    pub store: Arc<dyn RecordStore>,
    pub hosted: Arc<dyn HostedRows>,
    pub api_keys: BTreeMap<String, String>,
    pub queues: BTreeMap<JobKind, Arc<dyn JobQueue>>,
    sim_queues: BTreeMap<JobKind, Arc<SimQueue>>,
    runtimes: BTreeMap<JobKind, JobRuntime>,
    handler: Arc<Router>,
    stats: Arc<Mutex<Report>>,
    /// When the run started (the simulated clock).
    pub start: Timestamp,
    /// Syncs are scheduled, and the API changes, until this much time has
    /// passed; then the run drains.
    pub horizon: chrono::Duration,
    _ids: metered::core::SeededIds,
}

impl Simulation {
    /// The scenario on `adapter`, decided by `seed`. Call it on a
    /// current-thread runtime: every id and every step comes from the seed.
    pub async fn new(seed: u64, adapter: Adapter, knobs: Knobs) -> Self {
        Self::with_config(seed, adapter, knobs, |_| {}).await
    }

    /// Like [`Simulation::new`], with the config edited after the scenario's.
    pub async fn with_config(
        seed: u64,
        adapter: Adapter,
        knobs: Knobs,
        edit: impl FnOnce(&mut AppConfig),
    ) -> Self {
        let ids = metered::core::seed_thread(seed);
        crate::faults::quiet_injected_crashes();
        let (clock, shared) = crate::manual_clock();
        let sched = Sched::new();
        let rng = Arc::new(Mutex::new(Rng::new(seed)));
        let fx = sim_fixture_with(sim_config(), shared.clone(), |c| {
            c.connections = ORGS
                .iter()
                .map(|org| metered::config::ConnectionConfig {
                    org: (*org).into(),
                    secret: None,
                    limits: None,
                })
                .collect();
            scenario(c);
            edit(c);
        })
        .await;
        let faults = Faults::new();
        faults.yield_to(sched.clone());
        type Stores = (
            Arc<dyn RecordStore>,
            Arc<dyn QuotaStore>,
            Arc<dyn JobLedger>,
            Arc<dyn ActionLedger>,
            Arc<dyn HostedRows>,
            Arc<dyn metered::jobs::SlotWaiters>,
        );
        let (store, quota_store, ledger, action_ledger, hosted, waiters): Stores = match adapter {
            Adapter::Sqlite => {
                let db = metered::adapters::sqlite::Db::in_memory().unwrap();
                let inner = Arc::new(metered::adapters::sqlite::SqliteStore::new(db.clone()));
                let store = Arc::new(FaultyStore {
                    inner: inner.clone(),
                    faults: faults.clone(),
                });
                (
                    store.clone(),
                    Arc::new(metered::adapters::sqlite::SqliteQuota::new(db)),
                    store.clone(),
                    store.clone(),
                    inner,
                    store,
                )
            }
            Adapter::Aws => {
                let table = dynamo_table().await;
                let inner = Arc::new(metered::adapters::aws::DynamoStore::new(table.clone()));
                let store = Arc::new(FaultyStore {
                    inner: inner.clone(),
                    faults: faults.clone(),
                });
                (
                    store.clone(),
                    Arc::new(metered::adapters::aws::DynamoQuota::new(table)),
                    store.clone(),
                    store.clone(),
                    inner,
                    store,
                )
            }
        };
        let quota_store: Arc<dyn QuotaStore> = Arc::new(FaultyQuota {
            inner: quota_store,
            faults: faults.clone(),
        });
        let stats: Arc<Mutex<Report>> = Arc::default();
        let queue_db = metered::adapters::sqlite::Db::in_memory().unwrap();
        let mut queues = Queues::new();
        let mut sim_queues = BTreeMap::new();
        let mut raw: BTreeMap<JobKind, Arc<dyn JobQueue>> = BTreeMap::new();
        for kind in JobKind::QUEUED {
            let (inner, sqlite): (Arc<dyn JobQueue>, _) = match adapter {
                Adapter::Sqlite => {
                    let q = Arc::new(SqliteQueue::new(
                        queue_db.clone(),
                        kind.as_str(),
                        shared.clone(),
                        5,
                    ));
                    (q.clone(), Some(q))
                }
                Adapter::Aws => (Arc::new(sqs_queue(5).await), None),
            };
            let q = Arc::new(SimQueue {
                inner,
                sqlite,
                faults: faults.clone(),
                rng: rng.clone(),
                knobs,
                clock: shared.clone(),
                pen: Mutex::default(),
                stats: stats.clone(),
                sent: Default::default(),
            });
            sim_queues.insert(kind, q.clone());
            raw.insert(kind, q.clone() as Arc<dyn JobQueue>);
            queues = queues.with(kind, q);
        }
        let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        let mut api_keys = BTreeMap::new();
        for (i, org) in ORGS.iter().enumerate() {
            let (connector, key): (Arc<dyn Connector>, String) = if i == 0 {
                (fx.connector.clone(), fx.key.clone())
            } else {
                let key = format!("org-key-{}", metered::core::new_id());
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
                (*org).into(),
                Arc::new(SimApi {
                    inner: connector,
                    sched: sched.clone(),
                }),
            );
            api_keys.insert((*org).to_string(), key);
        }
        let quota = Quota::new(quota_store, shared.clone());
        let svc = Arc::new(AppContext::new(
            fx.config.clone(),
            store.clone(),
            quota,
            queues,
            connectors,
        ));
        let runtimes = JobKind::QUEUED
            .into_iter()
            .map(|k| {
                (
                    k,
                    JobRuntime::new(raw[&k].clone(), shared.clone(), RestartPolicy::default())
                        .with_ledger(ledger.clone())
                        .with_waiters(waiters.clone(), svc.queues.clone())
                        .with_metrics(svc.metrics.clone()),
                )
            })
            .collect();
        let handler = Arc::new(Router::all(svc.clone(), action_ledger).expect("workflows compile"));
        Self {
            seed,
            adapter,
            knobs,
            start: clock.now(),
            clock,
            sched,
            rng,
            fx,
            svc,
            store,
            hosted,
            api_keys,
            queues: raw,
            sim_queues,
            runtimes,
            handler,
            stats,
            horizon: chrono::Duration::minutes(70),
            _ids: ids,
        }
    }

    pub fn sim(&self) -> &metered_sim::Sim {
        self.fx.sim()
    }

    fn roll(&self, per_mille: u64) -> bool {
        self.rng.lock().unwrap().chance(per_mille)
    }

    fn below(&self, n: u64) -> u64 {
        self.rng.lock().unwrap().below(n)
    }

    /// Runs the scenario until everything settles; returns what happened.
    pub async fn run(&mut self) -> Report {
        let quiet = std::time::Duration::from_secs(30);
        let visibility = |kind: JobKind, adapter: Adapter| match adapter {
            Adapter::Sqlite => kind.deployed().visibility_secs,
            // SQS counts real seconds: the simulation releases what an
            // invocation left, on its own clock (`releases`).
            Adapter::Aws => 43_200,
        };
        let end_of_changes = self.start + self.horizon - chrono::Duration::minutes(30);
        let end_of_ticks = self.start + self.horizon;
        let mut next_tick = self.start;
        let mut tasks: BTreeMap<TaskId, Task> = BTreeMap::new();
        let mut next_id: TaskId = 1;
        let mut crashes_left = self.knobs.max_crashes;
        let mut releases: Vec<(Timestamp, JobKind, String)> = Vec::new();
        let mut dry: BTreeSet<JobKind> = BTreeSet::new();
        let mut sent_seen: BTreeMap<JobKind, u64> = BTreeMap::new();
        // When each SQLite queue's next message becomes visible, read once
        // and kept until a send, a receive or the clock changes it.
        let mut visible_at: BTreeMap<JobKind, Option<Timestamp>> = BTreeMap::new();
        let mut clock_seen = self.clock.now();
        let mut final_tick = false;
        loop {
            self.sched.quiet(quiet).await;
            let steps = {
                let mut s = self.stats.lock().unwrap();
                s.steps += 1;
                s.steps
            };
            assert!(steps < 200_000, "the run did not settle");
            let now = self.clock.now();
            // Invocations that ended.
            let finished: Vec<TaskId> = tasks
                .iter()
                .filter(|(_, t)| t.handle.is_finished())
                .map(|(id, _)| *id)
                .collect();
            for id in finished {
                let task = tasks.remove(&id).expect("task");
                match task.handle.await {
                    Ok(TaskOut::Invocation {
                        kind,
                        settled,
                        leftover,
                    }) => {
                        self.account(kind, settled);
                        for receipt in leftover {
                            releases.push((
                                now + chrono::Duration::seconds(i64::from(
                                    kind.deployed().visibility_secs,
                                )),
                                kind,
                                receipt,
                            ));
                        }
                    }
                    Ok(TaskOut::Tick) => {}
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => panic!("task {id}: {e}"),
                }
            }
            // Lambda's timeout: an invocation past its deadline is killed.
            let late: Vec<TaskId> = tasks
                .iter()
                .filter(|(_, t)| t.deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in late {
                self.stats.lock().unwrap().timeouts += 1;
                self.kill(&mut tasks, id, now, &mut releases);
            }
            // SQS: delays and visibility timeouts on the simulated clock.
            if self.adapter == Adapter::Aws {
                for q in self.sim_queues.values() {
                    q.release_due(now).await;
                }
                let (due, wait): (Vec<_>, Vec<_>) =
                    releases.drain(..).partition(|(t, _, _)| *t <= now);
                releases = wait;
                for (_, kind, receipt) in due {
                    // A message deleted after all (a crash after its ack) is gone.
                    let _ = self.queues[&kind].release(&receipt, 0).await;
                    dry.remove(&kind);
                }
            } else {
                releases.clear();
            }
            for (kind, q) in &self.sim_queues {
                let sent = q.sent.load(std::sync::atomic::Ordering::SeqCst);
                if sent_seen.get(kind) != Some(&sent) {
                    sent_seen.insert(*kind, sent);
                    dry.remove(kind);
                    visible_at.remove(kind);
                }
            }
            if clock_seen != now {
                clock_seen = now;
                visible_at.clear();
            }
            // The schedule.
            if now >= next_tick && next_tick < end_of_ticks {
                next_tick += chrono::Duration::minutes(TICK_MINUTES);
                let svc = self.svc.clone();
                let id = next_id;
                next_id += 1;
                self.stats.lock().unwrap().ticks += 1;
                let handle = self.sched.spawn(id, async move {
                    metered::handlers::schedule::tick(&svc).await;
                    TaskOut::Tick
                });
                tasks.insert(
                    id,
                    Task {
                        handle,
                        kind: None,
                        deadline: Some(now + chrono::Duration::seconds(60)),
                        receipts: Vec::new(),
                    },
                );
                continue;
            }
            // The API's data changes while syncs run.
            if now < end_of_changes && self.roll(self.knobs.change) {
                let invoices = self.sim().records("invoices");
                if self.roll(200) {
                    self.sim().insert("invoices", 1);
                } else {
                    let pick = invoices[self.below(invoices.len() as u64) as usize]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    self.sim().modify_ids("invoices", &[pick]);
                }
                self.stats.lock().unwrap().api_changes += 1;
            }
            let parked: Vec<TaskId> = {
                let mut ids: Vec<TaskId> =
                    self.sched.parked().into_iter().map(|(t, _, _)| t).collect();
                ids.dedup();
                ids
            };
            if !parked.is_empty() && crashes_left > 0 && self.roll(self.knobs.crash) {
                let victim = parked[self.below(parked.len() as u64) as usize];
                if tasks.get(&victim).is_some_and(|t| t.kind.is_some()) {
                    crashes_left -= 1;
                    self.stats.lock().unwrap().crashes += 1;
                    self.kill(&mut tasks, victim, now, &mut releases);
                    continue;
                }
            }
            // Time passes between any two port calls but one: a request
            // reaches the API as it leaves the quota (latency is
            // milliseconds; a window's edge is the quota's to keep, see
            // `Metered`), so not while a job is about to call the API.
            let calling = self
                .sched
                .parked()
                .iter()
                .any(|(_, _, label)| label.starts_with("api."));
            if !tasks.is_empty() && !calling && self.roll(self.knobs.advance) {
                let secs = 1 + self.below(15) as i64;
                self.clock.advance(chrono::Duration::seconds(secs));
                dry.clear();
                continue;
            }
            // What may go on: a parked job, or an event source with room
            // and messages.
            let mut startable = Vec::new();
            for kind in JobKind::QUEUED {
                let busy = tasks.values().filter(|t| t.kind == Some(kind)).count() as u32;
                if busy >= kind.deployed().max_concurrency || dry.contains(&kind) {
                    continue;
                }
                let visible = match &self.sim_queues[&kind].sqlite {
                    Some(q) => {
                        let at = match visible_at.get(&kind) {
                            Some(at) => *at,
                            None => {
                                let at = q.next_visible_at().await.expect("next visible");
                                visible_at.insert(kind, at);
                                at
                            }
                        };
                        at.is_some_and(|t| t <= now)
                    }
                    None => true,
                };
                if visible {
                    startable.push(kind);
                } else {
                    dry.insert(kind);
                }
            }
            let choices = parked.len() * 3 + startable.len();
            if choices == 0 {
                // Nothing ready: jump to the next due message or tick.
                let mut next: Option<Timestamp> = (next_tick < end_of_ticks).then_some(next_tick);
                for q in self.sim_queues.values() {
                    if let Some(t) = q.next_due().await {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                }
                if let Some(t) = releases.iter().map(|(t, _, _)| *t).min() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                match next {
                    Some(t) => {
                        self.clock
                            .set(t.max(now + chrono::Duration::milliseconds(1)));
                        dry.clear();
                    }
                    None if !final_tick && tasks.is_empty() => {
                        // A last look after the last change: recent lookups
                        // are due, nothing else (as the next tick would be).
                        final_tick = true;
                        self.clock.advance(chrono::Duration::minutes(16));
                        next_tick = self.clock.now();
                        let svc = self.svc.clone();
                        let id = next_id;
                        next_id += 1;
                        let handle = self.sched.spawn(id, async move {
                            metered::handlers::schedule::tick(&svc).await;
                            TaskOut::Tick
                        });
                        tasks.insert(
                            id,
                            Task {
                                handle,
                                kind: None,
                                deadline: None,
                                receipts: Vec::new(),
                            },
                        );
                        dry.clear();
                    }
                    None if tasks.is_empty() => break,
                    None => panic!("tasks exist but none is parked"),
                }
                continue;
            }
            let pick = self.below(choices as u64) as usize;
            if pick < parked.len() * 3 {
                self.sched.resume(parked[pick / 3]);
                continue;
            }
            let kind = startable[pick - parked.len() * 3];
            let batch = 1 + self.below(u64::from(kind.deployed().batch_size)) as u32;
            let deliveries = self.queues[&kind]
                .receive(batch, visibility(kind, self.adapter))
                .await
                .expect("receive");
            visible_at.remove(&kind);
            if deliveries.is_empty() {
                dry.insert(kind);
                continue;
            }
            self.stats.lock().unwrap().invocations += 1;
            let deadline = now + chrono::Duration::seconds(i64::from(kind.deployed().timeout_secs));
            let receipts = deliveries.iter().map(|d| d.receipt.clone()).collect();
            let (rt, handler) = (self.runtimes[&kind].clone(), self.handler.clone());
            let id = next_id;
            next_id += 1;
            let handle = self.sched.spawn(id, async move {
                let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
                let settled = rt
                    .process_batch(&bodies, handler.as_ref(), Some(deadline))
                    .await;
                let mut leftover = Vec::new();
                for (d, s) in deliveries.iter().zip(&settled) {
                    if s.ack() {
                        rt.queue.ack(&d.receipt).await.expect("ack");
                    } else {
                        leftover.push(d.receipt.clone());
                    }
                }
                TaskOut::Invocation {
                    kind,
                    settled,
                    leftover,
                }
            });
            tasks.insert(
                id,
                Task {
                    handle,
                    kind: Some(kind),
                    deadline: Some(deadline),
                    receipts,
                },
            );
        }
        let mut report = self.stats.lock().unwrap().clone();
        report.simulated = self.clock.now() - self.start;
        report
    }

    /// An invocation dies where it is parked (a crash, or Lambda's
    /// timeout): nothing after that point runs; its messages come back
    /// after their visibility timeout.
    fn kill(
        &self,
        tasks: &mut BTreeMap<TaskId, Task>,
        id: TaskId,
        now: Timestamp,
        releases: &mut Vec<(Timestamp, JobKind, String)>,
    ) {
        let Some(task) = tasks.remove(&id) else {
            return;
        };
        task.handle.abort();
        self.sched.forget(id);
        if let Some(kind) = task.kind {
            let back = now + chrono::Duration::seconds(i64::from(kind.deployed().visibility_secs));
            releases.extend(task.receipts.into_iter().map(|r| (back, kind, r)));
        }
    }

    fn account(&self, kind: JobKind, settled: Vec<Settled>) {
        let mut s = self.stats.lock().unwrap();
        for one in settled {
            match one {
                Settled::Done => *s.done.entry(kind).or_default() += 1,
                ref r @ Settled::Restarted { ref reason, .. } => {
                    if r.is_counted_restart() {
                        *s.restarts.entry(reason.clone()).or_default() += 1;
                    }
                }
                Settled::DeadLettered { reason } => s.dead.push(format!("{kind}: {reason}")),
                Settled::Retry { .. } => s.left_for_redelivery += 1,
                Settled::Skipped { .. } => s.skipped += 1,
            }
        }
    }
}
