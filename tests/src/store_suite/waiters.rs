//! The lines of jobs parked for a concurrency slot (#30): first in, first
//! handed a slot, per org and kind; a waiter past its backstop is dropped,
//! not woken; concurrent pops never hand one job twice; and through the
//! runtime, a freed slot wakes the longest waiter at once while its queued
//! copy, arriving later, is dropped by the ledger.

use super::{orgs, Fixture};
use async_trait::async_trait;
use chrono::Duration;
use metered::adapters::sqlite::{SqliteQueue, SqliteQuota};
use metered::core::Clock;
use metered::jobs::{JobContext, JobHandler, JobQueue, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind, Outcome, Queues};
use metered::quota::{Admission, Call, Limits, Permit, Quota};
use metered::Tenant;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The time the cases start at: the real clock's second, not the suite's
/// fixed afternoon. A parked entry lives until a day past its backstop
/// (TTL), and DynamoDB Local's TTL sweeper, run against the real clock,
/// removed entries parked in a past November while a case read them.
fn start() -> metered::Timestamp {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(0)
}

fn job(tenant: &Tenant, kind: JobKind, id: &str) -> JobEnvelope {
    let mut j = JobEnvelope::new(
        kind,
        &tenant.org,
        &tenant.app,
        serde_json::json!({}),
        start(),
    );
    j.id = id.to_string();
    j
}

/// Oldest first, whatever its kind, per org (the two orgs' job ids
/// coincide); a popped job is gone.
pub async fn slot_lines_are_first_in_first_out_per_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = start();
    let due = now + Duration::seconds(120);
    let ms = Duration::milliseconds;
    let w = &s.waiters;
    let parked = [
        (&a, JobKind::ActionHttp, "first"),
        (&b, JobKind::ActionHttp, "first"),
        (&a, JobKind::Workflow, "flow"),
        (&a, JobKind::ActionHttp, "second"),
    ];
    for (i, (t, kind, id)) in parked.into_iter().enumerate() {
        w.park(t, &job(t, kind, id), now + ms(i as i64), due)
            .await
            .unwrap();
    }
    let pop = |t: &Tenant| {
        let (t, w) = (t.clone(), w.clone());
        async move {
            w.pop_oldest(&t, now + ms(10))
                .await
                .unwrap()
                .map(|j| (j.org, j.kind, j.id))
        }
    };
    let org_a = || "org-a".to_string();
    assert_eq!(
        pop(&a).await,
        Some((org_a(), JobKind::ActionHttp, "first".into()))
    );
    assert_eq!(
        pop(&a).await,
        Some((org_a(), JobKind::Workflow, "flow".into()))
    );
    assert_eq!(
        pop(&a).await,
        Some((org_a(), JobKind::ActionHttp, "second".into()))
    );
    assert_eq!(pop(&a).await, None, "a popped job is gone");
    assert_eq!(
        pop(&b).await,
        Some(("org-b".into(), JobKind::ActionHttp, "first".into())),
        "org B's line is its own"
    );
    assert_eq!(pop(&b).await, None);
}

/// A waiter whose backstop has come is on its way through the queue: it
/// is taken out of the line, never handed a slot.
pub async fn a_waiter_past_its_backstop_is_dropped_not_woken<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, _) = orgs();
    let now = start();
    let w = &s.waiters;
    w.park(
        &a,
        &job(&a, JobKind::ActionHttp, "old"),
        now,
        now + Duration::seconds(10),
    )
    .await
    .unwrap();
    w.park(
        &a,
        &job(&a, JobKind::ActionHttp, "young"),
        now + Duration::seconds(5),
        now + Duration::seconds(70),
    )
    .await
    .unwrap();
    let at = now + Duration::seconds(10);
    let popped = w.pop_oldest(&a, at).await.unwrap();
    assert_eq!(
        popped.map(|j| j.id).as_deref(),
        Some("young"),
        "the old entry is skipped"
    );
    assert!(
        w.pop_oldest(&a, now).await.unwrap().is_none(),
        "and was removed"
    );
}

/// Eight pops at once over twenty waiters: each waiter handed exactly once.
pub async fn concurrent_pops_never_hand_one_job_twice<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, _) = orgs();
    let now = start();
    for i in 0..20 {
        let j = job(&a, JobKind::PkLookup, &format!("job-{i:02}"));
        s.waiters
            .park(
                &a,
                &j,
                now + Duration::milliseconds(i),
                now + Duration::seconds(600),
            )
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (w, a) = (s.waiters.clone(), a.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(j) = w.pop_oldest(&a, now + Duration::seconds(1)).await.unwrap() {
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!((all.len(), distinct.len()), (20, 20), "{all:?}");
}

/// Takes a slot of its org's budget (one slot) and gives it straight back;
/// a job whose payload says `release` gives back the slot held outside.
struct Slotted {
    quota: Quota,
    limits: Limits,
    held: Mutex<Option<Permit>>,
    runs: AtomicU32,
}

#[async_trait]
impl JobHandler for Slotted {
    fn name(&self) -> &str {
        "slotted"
    }
    fn accepts(&self, _: JobKind) -> bool {
        true
    }
    async fn handle(&self, job: &JobEnvelope, _: &JobContext) -> Outcome {
        if job.payload.get("release").is_some() {
            let held = self.held.lock().unwrap().take();
            if let Some(p) = held {
                self.quota.release(p, 1).await.unwrap();
            }
            return Outcome::Done;
        }
        self.runs.fetch_add(1, Ordering::SeqCst);
        if job.payload.get("churn").is_some() {
            // Gives its slot back, which another job takes at once.
            let call = || Call::new("workflow:w", "POST /x");
            let tenant = job.tenant();
            if let Ok(Admission::Granted(p)) =
                self.quota.acquire(&tenant, &self.limits, call()).await
            {
                self.quota.release(p, 1).await.unwrap();
            }
            if let Ok(Admission::Granted(p)) =
                self.quota.acquire(&tenant, &self.limits, call()).await
            {
                *self.held.lock().unwrap() = Some(p);
            }
        }
        match self
            .quota
            .acquire(
                &job.tenant(),
                &self.limits,
                Call::new("workflow:w", "POST /x"),
            )
            .await
            .unwrap()
        {
            Admission::Granted(p) => {
                self.quota.release(p, 1).await.unwrap();
                Outcome::Done
            }
            Admission::Denied(d) => Outcome::denied(&d, None),
        }
    }
}

/// A runtime over the fixture's ledger and slot lines, its queue (which
/// the actions' queue is) and the workflows' queue, and a handler on a
/// budget of one slot, on a manual clock.
struct SlotWorld {
    clock: metered::ManualClock,
    queue: Arc<SqliteQueue>,
    workflows: Arc<SqliteQueue>,
    rt: JobRuntime,
    handler: Slotted,
}

fn slot_world(s: &Fixture) -> SlotWorld {
    let clock = metered::ManualClock::new(start());
    let shared: metered::core::SharedClock = Arc::new(clock.clone());
    let db = metered::adapters::sqlite::Db::in_memory().unwrap();
    let queue = Arc::new(SqliteQueue::new(db.clone(), "jobs", shared.clone(), 5));
    let workflows = Arc::new(SqliteQueue::new(db.clone(), "flows", shared.clone(), 5));
    let queues = Queues::new()
        .with(JobKind::ActionHttp, queue.clone())
        .with(JobKind::Workflow, workflows.clone());
    let rt = JobRuntime::new(queue.clone(), shared.clone(), RestartPolicy::default())
        .with_ledger(s.jobs.clone())
        .with_waiters(s.waiters.clone(), queues);
    let handler = Slotted {
        quota: Quota::new(Arc::new(SqliteQuota::new(db)), shared),
        limits: toml::from_str("per_day = 2500\nmax_concurrent = 1").unwrap(),
        held: Mutex::new(None),
        runs: AtomicU32::new(0),
    };
    SlotWorld {
        clock,
        queue,
        workflows,
        rt,
        handler,
    }
}

/// Through the runtime: a workflow job refused for a slot is parked with
/// its queued copy pushed to the backstop; the holder — an action, another
/// kind — ends, and the waiter is sent at once to the workflows' queue and
/// runs; its queued copy, delivered later, is dropped without running.
/// Org B's waiter with the same id stays in its line.
pub async fn a_freed_slot_is_handed_to_the_longest_waiter<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let SlotWorld {
        clock,
        queue,
        workflows,
        rt,
        handler,
    } = slot_world(&s);
    let Admission::Granted(p) = handler
        .quota
        .acquire(&a, &handler.limits, Call::new("sync", "GET /x"))
        .await
        .unwrap()
    else {
        panic!("the first slot is free")
    };
    *handler.held.lock().unwrap() = Some(p);
    let waiter = job(&a, JobKind::Workflow, "same-id");
    s.waiters
        .park(
            &b,
            &job(&b, JobKind::Workflow, "same-id"),
            clock.now(),
            clock.now() + Duration::seconds(600),
        )
        .await
        .unwrap();

    let ctx = JobContext::default();
    match rt.process(&waiter.to_body(), &handler, &ctx).await {
        Settled::Restarted { delay_secs, .. } => assert!(
            delay_secs >= 60,
            "the queued copy waits for its backstop: {delay_secs}"
        ),
        other => panic!("refused for the slot, restarted: {other:?}"),
    }
    assert!(
        queue.receive(10, 30).await.unwrap().is_empty(),
        "nothing due yet"
    );

    let mut holder = job(&a, JobKind::ActionHttp, "holder");
    holder.payload = serde_json::json!({"release": true});
    assert_eq!(
        rt.process(&holder.to_body(), &handler, &ctx).await,
        Settled::Done
    );
    assert!(queue.receive(10, 30).await.unwrap().is_empty());
    let handed = workflows.receive(10, 30).await.unwrap();
    assert_eq!(
        handed.len(),
        1,
        "the waiter was sent at once, to its kind's queue"
    );
    let copy = JobEnvelope::parse(&handed[0].body).unwrap();
    assert_eq!(
        (copy.id.as_str(), copy.org.as_str(), copy.generation),
        ("same-id", "org-a", 1)
    );
    assert_eq!(
        rt.process(&handed[0].body, &handler, &ctx).await,
        Settled::Done
    );
    workflows.ack(&handed[0].receipt).await.unwrap();
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        2,
        "refused once, then ran"
    );

    clock.advance(Duration::seconds(200));
    let late = queue.receive(10, 30).await.unwrap();
    assert_eq!(late.len(), 1, "the backstop copy still comes");
    assert!(matches!(
        rt.process(&late[0].body, &handler, &ctx).await,
        Settled::Skipped { .. }
    ));
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        2,
        "and is dropped without running"
    );

    let b_line = s.waiters.pop_oldest(&b, clock.now()).await.unwrap();
    assert_eq!(
        b_line.map(|j| j.org).as_deref(),
        Some("org-b"),
        "org B's waiter was not handed org A's slot"
    );
}

/// A job that gave its slot back and was then refused one (another job
/// took the slot) has no slot to hand on: it parks, and nothing is sent
/// at once — not even itself, the oldest waiter.
pub async fn a_job_refused_after_freeing_a_slot_hands_nothing_on<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, _) = orgs();
    let SlotWorld {
        clock,
        queue,
        workflows,
        rt,
        handler,
    } = slot_world(&s);
    let mut churn = job(&a, JobKind::ActionHttp, "churn");
    churn.payload = serde_json::json!({"churn": true});
    match rt
        .process(&churn.to_body(), &handler, &JobContext::default())
        .await
    {
        Settled::Restarted { delay_secs, .. } => assert!(delay_secs >= 60, "{delay_secs}"),
        other => panic!("refused for the slot it gave away: {other:?}"),
    }
    assert!(
        handler.held.lock().unwrap().is_some(),
        "another job holds the slot"
    );
    assert!(
        queue.receive(10, 30).await.unwrap().is_empty()
            && workflows.receive(10, 30).await.unwrap().is_empty(),
        "no slot was free to hand on"
    );
    let parked = s.waiters.pop_oldest(&a, clock.now()).await.unwrap();
    assert_eq!(
        parked.map(|j| j.id).as_deref(),
        Some("churn"),
        "it waits in the line"
    );
}
