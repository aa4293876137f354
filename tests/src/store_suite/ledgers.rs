//! The job ledger and the action ledger: entries and keys scoped by org, a
//! key held while its claim lives, a claim that ends at the deadline.

use super::{orgs, Fixture};
use crate::afternoon;
use async_trait::async_trait;
use chrono::Duration;
use metered::adapters::sqlite::SqliteQueue;
use metered::core::Clock;
use metered::jobs::ActionBegin;
use metered::jobs::Claim;
use metered::jobs::{JobContext, JobHandler, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind, Outcome};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub async fn job_ledger_entries_are_scoped_by_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let until = now + Duration::seconds(300);
    assert_eq!(
        s.jobs.claim(&a, "job-1", 0, now, until).await.unwrap(),
        Claim::Granted
    );
    assert_eq!(
        s.jobs.claim(&b, "job-1", 0, now, until).await.unwrap(),
        Claim::Granted,
        "another org's job with the same id is another job"
    );
    s.jobs.settle(&a, "job-1", 0, true).await.unwrap();
    s.jobs.settle(&b, "job-1", 0, false).await.unwrap();
    assert_eq!(
        s.jobs.claim(&a, "job-1", 0, now, until).await.unwrap(),
        Claim::AlreadyDone
    );
    assert_eq!(
        s.jobs.claim(&b, "job-1", 0, now, until).await.unwrap(),
        Claim::Rerun,
        "b's generation 0 was given back unfinished: it runs again, as a re-run"
    );
    assert_eq!(
        s.jobs.claim(&b, "job-1", 1, now, until).await.unwrap(),
        Claim::Granted,
        "a new generation is a first run"
    );
    assert_eq!(
        s.jobs.claim(&b, "job-1", 0, now, until).await.unwrap(),
        Claim::Stale
    );
    assert_eq!(
        s.jobs.claim(&a, "job-1", 0, now, until).await.unwrap(),
        Claim::AlreadyDone
    );
}

pub async fn action_keys_are_scoped_by_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let key = "vip:0:inv_000001:hash";
    assert_eq!(
        s.actions.begin_action(&a, key, now, now).await.unwrap(),
        ActionBegin::New
    );
    assert_eq!(
        s.actions.begin_action(&b, key, now, now).await.unwrap(),
        ActionBegin::New,
        "org B's action is not org A's"
    );
    s.actions.finish_action(&a, key, now).await.unwrap();
    assert_eq!(
        s.actions.begin_action(&a, key, now, now).await.unwrap(),
        ActionBegin::Done
    );
    assert_eq!(
        s.actions.begin_action(&b, key, now, now).await.unwrap(),
        ActionBegin::Again
    );
    s.actions.abandon_action(&b, key).await.unwrap();
    assert_eq!(
        s.actions.begin_action(&b, key, now, now).await.unwrap(),
        ActionBegin::New
    );
    s.actions.abandon_action(&a, key).await.unwrap();
    assert_eq!(
        s.actions.begin_action(&a, key, now, now).await.unwrap(),
        ActionBegin::Done,
        "a done key is never abandoned"
    );
}

/// Counts its runs; done every time.
struct Counting(AtomicU32);

#[async_trait]
impl JobHandler for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn accepts(&self, _: JobKind) -> bool {
        true
    }
    async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
        self.0.fetch_add(1, Ordering::SeqCst);
        Outcome::Done
    }
}

fn runtime(s: &Fixture) -> (JobRuntime, metered::ManualClock) {
    let (clock, shared) = crate::manual_clock();
    let db = metered::adapters::sqlite::Db::in_memory().unwrap();
    let queue = Arc::new(SqliteQueue::new(db, "jobs", shared.clone(), 5));
    (
        JobRuntime::new(queue, shared, RestartPolicy::default()).with_ledger(s.jobs.clone()),
        clock,
    )
}

/// A crashed invocation's claim is still live when its message comes back
/// (the original defect: claims of 15 min, redelivery after 180 s): the
/// redelivery must be left on the queue, never acknowledged as a duplicate,
/// and run once the claim has ended.
/// Two deliveries of one action never call at once: the key is held until
/// the invocation that began it ends; after that a retry takes it (and
/// only one of two retries), and a done key stays done. Per org.
pub async fn an_action_key_in_progress_is_held_until_its_claim_ends<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let key = "vip:0:inv_000001:hash";
    let at = |secs| now + Duration::seconds(secs);
    assert_eq!(
        s.actions.begin_action(&a, key, now, at(30)).await.unwrap(),
        ActionBegin::New
    );
    assert_eq!(
        s.actions
            .begin_action(&a, key, at(10), at(40))
            .await
            .unwrap(),
        ActionBegin::InProgress(at(30)),
        "a second delivery waits for the first"
    );
    assert_eq!(
        s.actions
            .begin_action(&b, key, at(10), at(40))
            .await
            .unwrap(),
        ActionBegin::New,
        "org B's key is its own"
    );
    assert_eq!(
        s.actions
            .begin_action(&a, key, at(31), at(61))
            .await
            .unwrap(),
        ActionBegin::Again,
        "the first delivery's invocation ended: a retry calls again"
    );
    assert_eq!(
        s.actions
            .begin_action(&a, key, at(40), at(70))
            .await
            .unwrap(),
        ActionBegin::InProgress(at(61)),
        "the retry holds it now"
    );
    s.actions.finish_action(&a, key, at(45)).await.unwrap();
    assert_eq!(
        s.actions
            .begin_action(&a, key, at(50), at(80))
            .await
            .unwrap(),
        ActionBegin::Done
    );
}

pub async fn a_live_claim_is_never_acknowledged<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (rt, clock) = runtime(&s);
    let job = JobEnvelope::new(
        JobKind::Spend,
        "org-a",
        "app",
        serde_json::json!({}),
        clock.now(),
    );
    // The first delivery claims until its deadline and dies there.
    let deadline = clock.now() + Duration::seconds(900);
    assert_eq!(
        s.jobs
            .claim(&job.tenant(), &job.id, 0, clock.now(), deadline)
            .await
            .unwrap(),
        Claim::Granted
    );
    clock.advance(Duration::seconds(180));
    let handler = Counting(AtomicU32::new(0));
    let settled = rt
        .process(&job.to_body(), &handler, &JobContext::default())
        .await;
    assert!(
        !settled.ack(),
        "a live claim is not proof of a duplicate: {settled:?}"
    );
    assert_eq!(handler.0.load(Ordering::SeqCst), 0);
    clock.set(deadline + Duration::seconds(1));
    let settled = rt
        .process(&job.to_body(), &handler, &JobContext::default())
        .await;
    assert_eq!(settled, Settled::Done);
    assert_eq!(handler.0.load(Ordering::SeqCst), 1, "the redelivery ran");
    let again = rt
        .process(&job.to_body(), &handler, &JobContext::default())
        .await;
    assert!(matches!(again, Settled::Skipped { .. }), "{again:?}");
    assert_eq!(
        handler.0.load(Ordering::SeqCst),
        1,
        "a finished generation never runs twice"
    );
}

/// A claim taken by `process` lasts until the invocation's deadline, no
/// longer: the redelivery of an invocation that died runs right after it.
pub async fn a_claim_ends_at_the_invocation_deadline<F: Future<Output = Fixture>>(make: F) {
    struct Dies;
    #[async_trait]
    impl JobHandler for Dies {
        fn name(&self) -> &str {
            "dies"
        }
        fn accepts(&self, _: JobKind) -> bool {
            true
        }
        async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
            std::future::pending().await
        }
    }
    let s = make.await;
    let (rt, clock) = runtime(&s);
    let job = JobEnvelope::new(
        JobKind::Spend,
        "org-b",
        "app",
        serde_json::json!({}),
        clock.now(),
    );
    let deadline = clock.now() + Duration::seconds(120);
    // The invocation never returns: dropped as a Lambda that was killed.
    let (body, ctx) = (job.to_body(), JobContext::until(deadline));
    let run = rt.process(&body, &Dies, &ctx);
    assert!(tokio::time::timeout(std::time::Duration::from_secs(1), run)
        .await
        .is_err());
    let key = job.tenant();
    let before = s
        .jobs
        .claim(&key, &job.id, 0, deadline - Duration::seconds(1), deadline)
        .await;
    assert_eq!(before.unwrap(), Claim::InProgress);
    let after = s
        .jobs
        .claim(&key, &job.id, 0, deadline, deadline + Duration::seconds(60))
        .await;
    assert_eq!(
        after.unwrap(),
        Claim::Rerun,
        "the claim ended with the invocation; the next delivery is a re-run"
    );
}
