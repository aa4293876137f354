//! The store conformance suite: the record store's claims, the job ledger
//! and the action ledger, on every adapter, from **one** case list
//! ([`crate::store_cases`]) that each adapter's test file expands, so no
//! case can be missing from one of them.
//!
//! Every case uses two organizations of one app whose ids coincide.

use crate::afternoon;
use async_trait::async_trait;
use chrono::Duration;
use metered::adapters::sqlite::queue::SqliteQueue;
use metered::core::clock::Clock;
use metered::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use metered::jobs::ledger::{ActionBegin, ActionLedger};
use metered::jobs::ledger::{Claim, JobLedger};
use metered::jobs::runtime::{JobContext, JobHandler, JobRuntime, RestartPolicy, Settled};
use metered::store::outbox::{OutboxRow, RowChange, RowWrite};
use metered::store::RecordStore;
use metered::Tenant;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One adapter's store, seen through each of its ports.
pub struct Fixture {
    pub records: Arc<dyn RecordStore>,
    pub jobs: Arc<dyn JobLedger>,
    pub actions: Arc<dyn ActionLedger>,
    pub hosted: Arc<dyn metered::store::hosted::HostedRows>,
}

/// Every case of the suite, for one adapter: `store_cases!(make())`.
#[macro_export]
macro_rules! store_cases {
    ($make:expr) => {
        $crate::suite_tests!(
            $crate::store_suite,
            $make,
            [
                job_ledger_entries_are_scoped_by_org,
                action_keys_are_scoped_by_org,
                an_action_key_in_progress_is_held_until_its_claim_ends,
                a_live_claim_is_never_acknowledged,
                a_claim_ends_at_the_invocation_deadline,
                lookup_claims_are_reclaimable_by_their_claimer_only,
                lookup_claims_are_scoped_by_org,
                both_adapters_refuse_the_same_record_size,
                quarantine_is_scoped_by_org_and_lists_each_record_once,
                a_sync_lease_is_free_own_or_expired_and_scoped_by_org,
                finishing_a_sync_needs_the_lease_and_keeps_what_it_is_not_told,
                a_page_diff_says_created_updated_or_unchanged_per_org,
                outbox_rows_keep_the_last_write_per_id_and_org,
                an_outbox_row_from_an_older_version_never_replaces_a_newer_one,
                an_outbox_chunk_is_fixed_once_and_leaves_only_when_accepted,
                a_refused_chunk_is_split_and_its_row_set_aside_per_org,
                concurrent_flushes_fix_one_chunk,
                a_timed_flush_is_marked_once_until_cleared_or_lost,
                hosted_rows_page_by_id_and_version_per_org,
            ]
        );
    };
}

fn orgs() -> (Tenant, Tenant) {
    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    (Tenant::new("org-a", &app), Tenant::new("org-b", &app))
}

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

pub async fn lookup_claims_are_reclaimable_by_their_claimer_only<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, _) = orgs();
    let now = afternoon();
    let hour = Duration::hours(1);
    let ids: Vec<String> = ["cus_1", "cus_2", "cus_3"].map(String::from).to_vec();
    let first = s
        .records
        .claim_lookups(&a, "customers", &ids[..2], "job-1:p0", now, hour)
        .await;
    assert_eq!(first.unwrap(), ids[..2].to_vec());
    // The page failed before its checkpoint moved: its re-run claims again.
    let later = now + Duration::seconds(30);
    let again = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-1:p0", later, hour)
        .await;
    assert_eq!(again.unwrap(), ids, "its own claims, and the new id");
    // A page that runs again unchanged finds its claims by reading them.
    let held = s.records.get(&a, "customers", &ids).await.unwrap();
    let mut claimers: Vec<(&str, Option<&str>)> = held
        .iter()
        .map(|r| (r.id.as_str(), r.lookup_claimed_by.as_deref()))
        .collect();
    claimers.sort();
    assert_eq!(
        claimers,
        ids.iter()
            .map(|id| (id.as_str(), Some("job-1:p0")))
            .collect::<Vec<_>>()
    );
    // Another claimer gets none of them within min_relookup…
    let other = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-2", later, hour)
        .await;
    assert_eq!(other.unwrap(), Vec::<String>::new());
    // …and all of them after it.
    let after = s
        .records
        .claim_lookups(&a, "customers", &ids, "job-2", later + hour, hour)
        .await;
    assert_eq!(after.unwrap(), ids);
    let held = s.records.get(&a, "customers", &ids[..1]).await.unwrap();
    assert_eq!(held[0].lookup_claimed_by.as_deref(), Some("job-2"));
}

pub async fn lookup_claims_are_scoped_by_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let ids = vec!["cus_1".to_string()];
    let hour = Duration::hours(1);
    assert_eq!(
        s.records
            .claim_lookups(&a, "customers", &ids, "job-a", now, hour)
            .await
            .unwrap(),
        ids
    );
    assert_eq!(
        s.records
            .claim_lookups(&b, "customers", &ids, "job-b", now, hour)
            .await
            .unwrap(),
        ids,
        "org B's cus_1 is not org A's"
    );
}

/// A record whose JSON is exactly `bytes` long.
fn record(id: &str, bytes: usize) -> metered::Record {
    let frame = serde_json::json!({"id": id, "notes": ""}).to_string().len();
    let data = serde_json::json!({"id": id, "notes": "n".repeat(bytes - frame)});
    assert_eq!(data.to_string().len(), bytes);
    metered::Record {
        id: id.into(),
        updated_at: None,
        data,
    }
}

/// A record just under [`metered::store::MAX_RECORD_BYTES`] is stored; one
/// just over is refused with an error naming it, on every adapter alike
/// (DynamoDB's 400 KB item limit decides; SQLite applies the same rule).
pub async fn both_adapters_refuse_the_same_record_size<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, _) = orgs();
    let max = metered::store::MAX_RECORD_BYTES;
    s.records
        .upsert(&a, "invoices", &[record("fits", max)], afternoon())
        .await
        .expect("a record of exactly the limit is stored");
    let Err(err) = s
        .records
        .upsert(&a, "invoices", &[record("big", max + 1)], afternoon())
        .await
    else {
        panic!("a record one byte over the limit was stored");
    };
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("record `big`"), "{err}");
    assert_eq!(s.records.count(&a, "invoices").await.unwrap(), 1);
    // Ids: DynamoDB's key limit, on both.
    let long = |n: usize| metered::Record {
        id: "i".repeat(n),
        updated_at: None,
        data: serde_json::json!({"id": "long"}),
    };
    let max_id = metered::store::MAX_ID_BYTES;
    s.records
        .upsert(&a, "invoices", &[long(max_id)], afternoon())
        .await
        .expect("an id of exactly the limit is stored");
    let Err(err) = s
        .records
        .upsert(&a, "invoices", &[long(max_id + 1)], afternoon())
        .await
    else {
        panic!("an id one byte over the limit was stored");
    };
    assert!(
        !err.is_retryable() && err.to_string().contains("id is 1001 bytes"),
        "{err}"
    );
    // And the record is quarantined as it is, on both.
    let entry = metered::store::Quarantined::new(
        "complete-transfer:invoices",
        "invoices",
        Some("i".repeat(4_000)),
        "too long".into(),
        &serde_json::json!({}),
        afternoon(),
    );
    s.records.quarantine(&a, &[entry]).await.unwrap();
    assert_eq!(s.records.quarantined(&a, 10).await.unwrap().len(), 1);
}

/// Quarantine entries belong to their org, and a record set aside again
/// (every run sees it) is listed once, with the latest reason.
pub async fn quarantine_is_scoped_by_org_and_lists_each_record_once<F: Future<Output = Fixture>>(
    make: F,
) {
    use metered::store::Quarantined;
    let s = make.await;
    let (a, b) = orgs();
    let t = afternoon();
    let entry = |id: Option<&str>, reason: &str, at| {
        Quarantined::new(
            "complete-transfer:invoices",
            "invoices",
            id.map(str::to_string),
            reason.into(),
            &serde_json::json!({"id": id, "total": 5}),
            at,
        )
    };
    s.records
        .quarantine(
            &a,
            &[
                entry(Some("inv_1"), "too large", t),
                entry(None, "no id", t),
            ],
        )
        .await
        .unwrap();
    s.records
        .quarantine(
            &a,
            &[entry(
                Some("inv_1"),
                "too large again",
                t + Duration::hours(1),
            )],
        )
        .await
        .unwrap();
    s.records
        .quarantine(&b, &[entry(Some("inv_1"), "b's own", t)])
        .await
        .unwrap();
    let listed = s.records.quarantined(&a, 10).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].reason, "too large again", "newest first");
    assert_eq!(listed[1].record_id, None);
    let of_b = s.records.quarantined(&b, 10).await.unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].reason, "b's own");
    assert_eq!(
        s.records.quarantined(&a, 1).await.unwrap().len(),
        1,
        "limit"
    );
}

/// The lease rule on every adapter (`SyncState::lease_free_for`): a lease is
/// taken when free, renewed by its holder, refused to another job while
/// live, taken over once expired; another org's sync of the same name is
/// another lease.
pub async fn a_sync_lease_is_free_own_or_expired_and_scoped_by_org<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let sync = "complete-transfer:invoices";
    let now = afternoon();
    let until = now + Duration::minutes(5);
    let take = |key: Tenant, job: &'static str, at, until, starting| {
        let records = s.records.clone();
        async move {
            records
                .take_sync_lease(&key, sync, job, at, until, starting)
                .await
                .unwrap()
        }
    };
    assert!(take(a.clone(), "job-1", now, until, true).await, "free");
    let state = s.records.sync_state(&a, sync).await.unwrap();
    assert_eq!(state.running_job.as_deref(), Some("job-1"));
    assert_eq!(state.lease_until, Some(until));
    assert_eq!(
        state.last_started,
        Some(now),
        "a starting run records its start"
    );

    let later = now + Duration::minutes(1);
    assert!(
        !take(
            a.clone(),
            "job-2",
            later,
            later + Duration::minutes(5),
            true
        )
        .await,
        "live, another job's"
    );
    assert!(
        take(
            b.clone(),
            "job-2",
            later,
            later + Duration::minutes(5),
            true
        )
        .await,
        "org B's sync is another lease"
    );
    let renewed = later + Duration::minutes(10);
    assert!(
        take(a.clone(), "job-1", later, renewed, false).await,
        "its holder renews"
    );
    let state = s.records.sync_state(&a, sync).await.unwrap();
    assert_eq!(state.lease_until, Some(renewed));
    assert_eq!(state.last_started, Some(now), "a renewal is not a start");
    assert!(
        !take(
            a.clone(),
            "job-2",
            until,
            renewed + Duration::minutes(5),
            true
        )
        .await,
        "the renewal still holds"
    );
    // At its end (exclusive) the lease binds nobody.
    assert!(
        take(
            a.clone(),
            "job-2",
            renewed,
            renewed + Duration::minutes(5),
            true
        )
        .await,
        "expired"
    );
    let state = s.records.sync_state(&a, sync).await.unwrap();
    assert_eq!(state.running_job.as_deref(), Some("job-2"));
    assert_eq!(
        state.live_lease_holder(renewed),
        Some("job-2"),
        "the rule and the adapter agree"
    );
}

/// `finish_sync` frees the lease and records the run only for the holder;
/// fields it is not given keep their values.
pub async fn finishing_a_sync_needs_the_lease_and_keeps_what_it_is_not_told<
    F: Future<Output = Fixture>,
>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let sync = "recent-records:invoices";
    let now = afternoon();
    let until = now + Duration::minutes(5);
    for key in [&a, &b] {
        assert!(s
            .records
            .take_sync_lease(key, sync, "job-1", now, until, true)
            .await
            .unwrap());
    }
    let done = metered::store::SyncFinish {
        completed_at: Some(now + Duration::minutes(1)),
        high_water: Some(now),
        pages: Some(3),
        ..Default::default()
    };
    assert!(
        !s.records
            .finish_sync(&a, sync, "job-9", done.clone())
            .await
            .unwrap(),
        "not the holder: nothing changes"
    );
    assert_eq!(
        s.records
            .sync_state(&a, sync)
            .await
            .unwrap()
            .running_job
            .as_deref(),
        Some("job-1")
    );
    assert!(s
        .records
        .finish_sync(&a, sync, "job-1", done)
        .await
        .unwrap());
    let state = s.records.sync_state(&a, sync).await.unwrap();
    assert_eq!(state.running_job, None, "the lease is free");
    assert_eq!(state.lease_until, None);
    assert_eq!(state.high_water, Some(now));
    assert_eq!(state.last_completed, Some(now + Duration::minutes(1)));
    assert_eq!(state.last_pages, Some(3));
    let b_state = s.records.sync_state(&b, sync).await.unwrap();
    assert_eq!(
        b_state.running_job.as_deref(),
        Some("job-1"),
        "org B's run is its own"
    );
    assert_eq!(b_state.high_water, None);

    // A failed run keeps the high-water mark and the last completion.
    let later = now + Duration::hours(1);
    assert!(s
        .records
        .take_sync_lease(&a, sync, "job-2", later, later + Duration::minutes(5), true)
        .await
        .unwrap());
    let failed = metered::store::SyncFinish {
        failed: Some((later, "list invoices: not JSON".into())),
        ..Default::default()
    };
    assert!(s
        .records
        .finish_sync(&a, sync, "job-2", failed)
        .await
        .unwrap());
    let state = s.records.sync_state(&a, sync).await.unwrap();
    assert_eq!(state.high_water, Some(now));
    assert_eq!(state.last_completed, Some(now + Duration::minutes(1)));
    assert_eq!(state.last_failed, Some(later));
    assert_eq!(
        state.last_failure.as_deref(),
        Some("list invoices: not JSON")
    );
    assert_eq!(state.last_started, Some(later));
}

/// The change rule on every adapter (`store::classify_change`): an id never
/// stored, or only claimed for a lookup, is created; new content is an
/// update; the same content is no change. Org B's `inv_1` is not org A's.
pub async fn a_page_diff_says_created_updated_or_unchanged_per_org<F: Future<Output = Fixture>>(
    make: F,
) {
    use metered::core::record::{ChangeKind, Record};
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let rec = |id: &str, amount: u32| Record {
        id: id.into(),
        updated_at: None,
        data: serde_json::json!({"id": id, "amount": amount}),
    };
    let kinds = |diff: &metered::store::PageDiff| {
        let mut k: Vec<(String, ChangeKind)> = diff
            .changes
            .iter()
            .map(|c| (c.record.id.clone(), c.kind))
            .collect();
        k.sort_by(|x, y| x.0.cmp(&y.0));
        k
    };
    let first = s
        .records
        .diff(&a, "invoices", &[rec("inv_1", 10), rec("inv_2", 20)])
        .await
        .unwrap();
    assert_eq!(
        kinds(&first),
        vec![
            ("inv_1".into(), ChangeKind::Created),
            ("inv_2".into(), ChangeKind::Created)
        ]
    );
    let again = s
        .records
        .diff(&a, "invoices", &[rec("inv_1", 10)])
        .await
        .unwrap();
    assert_eq!(
        kinds(&again),
        vec![("inv_1".into(), ChangeKind::Created)],
        "diff writes nothing"
    );
    s.records.commit(&a, "invoices", &first, now).await.unwrap();

    let next = s
        .records
        .diff(
            &a,
            "invoices",
            &[rec("inv_1", 10), rec("inv_2", 21), rec("inv_3", 30)],
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&next),
        vec![
            ("inv_2".into(), ChangeKind::Updated),
            ("inv_3".into(), ChangeKind::Created)
        ]
    );
    let other_org = s
        .records
        .diff(&b, "invoices", &[rec("inv_1", 10)])
        .await
        .unwrap();
    assert_eq!(
        kinds(&other_org),
        vec![("inv_1".into(), ChangeKind::Created)],
        "org B has no inv_1 yet"
    );

    // A lookup claim leaves a placeholder without data: still a creation.
    let claimed = s
        .records
        .claim_lookups(
            &a,
            "invoices",
            &["inv_9".to_string()],
            "job-1",
            now,
            Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(claimed, vec!["inv_9".to_string()]);
    let found = s
        .records
        .diff(&a, "invoices", &[rec("inv_9", 90)])
        .await
        .unwrap();
    assert_eq!(kinds(&found), vec![("inv_9".into(), ChangeKind::Created)]);
    assert_eq!(
        s.records.count(&a, "invoices").await.unwrap(),
        2,
        "a placeholder is not a seen record"
    );
}

// ---- The Data Source outbox ------------------------------------------------

fn insert(v: i64) -> RowChange {
    RowChange::Insert(serde_json::json!({ "id": "inv_1", "v": v }))
}

fn rows(changes: &[(&str, RowChange)]) -> Vec<RowWrite> {
    changes
        .iter()
        .map(|(id, c)| RowWrite::new(*id, c.clone()))
        .collect()
}

/// Two workflow jobs acting on consecutive versions of a record may write
/// its row in either order: the row made from the newer version stands
/// (by its source record's `updated_at`), and a row without a source time
/// is a plain last write. Per org.
pub async fn an_outbox_row_from_an_older_version_never_replaces_a_newer_one<
    F: Future<Output = Fixture>,
>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let at = |mins: i64| Some(now - Duration::minutes(mins));
    let write = |v: i64, source| vec![RowWrite::new("inv_1", insert(v)).from_source_at(source)];
    o.put_rows(&a, "vips", &write(3, at(1)), now).await.unwrap();
    o.put_rows(&a, "vips", &write(2, at(5)), now).await.unwrap();
    o.put_rows(&b, "vips", &write(2, at(5)), now).await.unwrap();
    let row = |key| async move {
        o.pending_rows(key, "vips", 10).await.unwrap()[0]
            .change
            .clone()
    };
    assert_eq!(row(&a).await, insert(3), "the newer version's row stands");
    assert_eq!(row(&b).await, insert(2), "org B's row is its own");
    o.put_rows(&a, "vips", &write(4, at(0)), now).await.unwrap();
    assert_eq!(row(&a).await, insert(4));
    o.put_rows(&a, "vips", &rows(&[("inv_1", RowChange::Delete)]), now)
        .await
        .unwrap();
    assert_eq!(
        row(&a).await,
        RowChange::Delete,
        "no source time: last write"
    );
}

/// Last write wins per row id, within one write and across writes; two
/// orgs with the same row id and Data Source name never see each other's.
pub async fn outbox_rows_keep_the_last_write_per_id_and_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    // Org A: insert then delete (one write) → delete.
    o.put_rows(
        &a,
        "vips",
        &rows(&[("inv_1", insert(1)), ("inv_1", RowChange::Delete)]),
        now,
    )
    .await
    .unwrap();
    // Org B: delete then insert (two writes) → insert.
    o.put_rows(&b, "vips", &rows(&[("inv_1", RowChange::Delete)]), now)
        .await
        .unwrap();
    o.put_rows(&b, "vips", &rows(&[("inv_1", insert(2))]), now)
        .await
        .unwrap();
    // Org A again: two inserts of another id → the newer.
    o.put_rows(&a, "vips", &rows(&[("inv_2", insert(3))]), now)
        .await
        .unwrap();
    o.put_rows(&a, "vips", &rows(&[("inv_2", insert(4))]), now)
        .await
        .unwrap();
    let pa = o.pending_rows(&a, "vips", 10).await.unwrap();
    let pb = o.pending_rows(&b, "vips", 10).await.unwrap();
    let view = |p: &[OutboxRow]| {
        p.iter()
            .map(|r| RowWrite::new(r.id.clone(), r.change.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(&pa),
        rows(&[("inv_1", RowChange::Delete), ("inv_2", insert(4))])
    );
    assert_eq!(view(&pb), rows(&[("inv_1", insert(2))]));
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 2);
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 1);
    assert_eq!(o.pending_count(&a, "other").await.unwrap(), 0);
    assert_eq!(o.pending_rows(&a, "vips", 1).await.unwrap().len(), 1);
    assert_ne!(pa[0].stamp, pb[0].stamp, "every write gets its own stamp");
}

/// One chunk in flight per outbox, numbered once; the ack removes only
/// rows not written since, clears the chunk and counts it once; another
/// org's outbox with the same ids is untouched.
pub async fn an_outbox_chunk_is_fixed_once_and_leaves_only_when_accepted<
    F: Future<Output = Fixture>,
>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let five: Vec<RowWrite> = (1..=5)
        .map(|i| RowWrite::new(format!("inv_{i}"), insert(i)))
        .collect();
    o.put_rows(&a, "vips", &five, now).await.unwrap();
    o.put_rows(&b, "vips", &five, now).await.unwrap();
    let first = o.pending_rows(&a, "vips", 3).await.unwrap();
    let chunk = o
        .begin_chunk(&a, "vips", &first)
        .await
        .unwrap()
        .expect("no chunk in flight yet");
    assert_eq!((chunk.seq, chunk.rows.clone()), (0, first.clone()));
    assert_eq!(
        o.begin_chunk(&a, "vips", &first).await.unwrap(),
        None,
        "one chunk in flight at a time"
    );
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(
        state.inflight.as_ref(),
        Some(&chunk),
        "kept with its content"
    );
    assert_eq!(state.next_seq, 1);
    // inv_2 is written again while its chunk is at the API.
    o.put_rows(&a, "vips", &rows(&[("inv_2", RowChange::Delete)]), now)
        .await
        .unwrap();
    let later = now + Duration::seconds(5);
    o.ack_chunk(&a, "vips", &chunk, later).await.unwrap();
    o.ack_chunk(&a, "vips", &chunk, later).await.unwrap();
    let left: Vec<RowWrite> = o
        .pending_rows(&a, "vips", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| RowWrite::new(r.id, r.change))
        .collect();
    assert_eq!(
        left,
        rows(&[
            ("inv_2", RowChange::Delete),
            ("inv_4", insert(4)),
            ("inv_5", insert(5))
        ]),
        "the rewritten row stays for the next flush"
    );
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(state.inflight, None);
    assert_eq!(state.last_flush, Some(later));
    assert_eq!(
        (state.pushes, state.rows_pushed),
        (1, 3),
        "a repeated ack counts once"
    );
    let next = o
        .begin_chunk(&a, "vips", &o.pending_rows(&a, "vips", 10).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 1, "chunk numbers are never reused");
    // Org B: same ids, its own outbox and numbering.
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 5);
    let b_chunk = o
        .begin_chunk(&b, "vips", &o.pending_rows(&b, "vips", 10).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b_chunk.seq, b_chunk.rows.len()), (0, 5));
}

/// A refused chunk of several rows clears the in-flight mark and sets the
/// probe; a refused single row leaves the waiting rows for the refused
/// list (unless written since), which lists, retries (back to waiting,
/// a newer write standing) and drops rows; another org's outbox with the
/// same ids is untouched.
pub async fn a_refused_chunk_is_split_and_its_row_set_aside_per_org<F: Future<Output = Fixture>>(
    make: F,
) {
    use metered::store::outbox::Refusal;
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let four: Vec<RowWrite> = (1..=4)
        .map(|i| RowWrite::new(format!("inv_{i}"), insert(i)))
        .collect();
    o.put_rows(&a, "vips", &four, now).await.unwrap();
    o.put_rows(&b, "vips", &four, now).await.unwrap();
    let chunk = o
        .begin_chunk(&a, "vips", &o.pending_rows(&a, "vips", 4).await.unwrap())
        .await
        .unwrap()
        .unwrap();
    let probe = metered::store::outbox::Probe {
        rows: 2,
        until: "inv_4".into(),
    };
    o.refuse_chunk(
        &a,
        "vips",
        &chunk,
        &Refusal::Split {
            probe: probe.clone(),
        },
        now,
    )
    .await
    .unwrap();
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!((state.inflight, state.probe), (None, Some(probe.clone())));
    assert_eq!(
        o.pending_count(&a, "vips").await.unwrap(),
        4,
        "all wait again"
    );
    // inv_3 alone is refused; inv_4 alone is refused but was written since.
    let a_ref = &a;
    let refuse_alone = |id: &'static str| async move {
        let row: Vec<_> = o
            .pending_rows(a_ref, "vips", 4)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.id == id)
            .collect();
        o.begin_chunk(a_ref, "vips", &row).await.unwrap().unwrap()
    };
    let three = refuse_alone("inv_3").await;
    let aside = Refusal::SetAside {
        reason: "HTTP 422: email is not valid".into(),
    };
    o.refuse_chunk(&a, "vips", &three, &aside, now)
        .await
        .unwrap();
    o.refuse_chunk(&a, "vips", &three, &aside, now)
        .await
        .unwrap();
    let four_chunk = refuse_alone("inv_4").await;
    o.put_rows(&a, "vips", &rows(&[("inv_4", insert(40))]), now)
        .await
        .unwrap();
    o.refuse_chunk(&a, "vips", &four_chunk, &aside, now)
        .await
        .unwrap();
    let state = o.outbox_state(&a, "vips").await.unwrap();
    assert_eq!(
        (state.inflight, state.probe),
        (None, None),
        "a row set aside ends the search"
    );
    let refused = o.refused_rows(&a, "vips", 10).await.unwrap();
    assert_eq!(
        refused
            .iter()
            .map(|r| (r.id.as_str(), r.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![("inv_3", "HTTP 422: email is not valid")],
        "the rewritten row is not set aside"
    );
    assert_eq!(refused[0].change, insert(3));
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 3);
    assert!(o.refused_rows(&b, "vips", 10).await.unwrap().is_empty());
    assert_eq!(o.pending_count(&b, "vips").await.unwrap(), 4);
    o.set_probe(&a, "vips", Some(&probe)).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().probe, Some(probe));
    o.set_probe(&a, "vips", None).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().probe, None);
    // Retry puts it back to waiting; a newer write of the row would stand.
    let others = vec!["inv_9".to_string()];
    assert_eq!(
        o.retry_refused(&a, "vips", Some(&others), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(o.retry_refused(&a, "vips", None, now).await.unwrap(), 1);
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 4);
    assert!(o.refused_rows(&a, "vips", 10).await.unwrap().is_empty());
    // Refused again, then dropped: it is never sent.
    let again = refuse_alone("inv_3").await;
    o.refuse_chunk(&a, "vips", &again, &aside, now)
        .await
        .unwrap();
    o.put_rows(&a, "vips", &rows(&[("inv_3", insert(33))]), now)
        .await
        .unwrap();
    assert_eq!(
        o.retry_refused(&a, "vips", None, now).await.unwrap(),
        1,
        "leaves the list"
    );
    let waiting = o.pending_rows(&a, "vips", 10).await.unwrap();
    assert_eq!(
        waiting.iter().find(|r| r.id == "inv_3").unwrap().change,
        insert(33),
        "the newer write stands"
    );
    let again = refuse_alone("inv_3").await;
    o.refuse_chunk(&a, "vips", &again, &aside, now)
        .await
        .unwrap();
    let ids = vec!["inv_3".to_string()];
    assert_eq!(o.drop_refused(&a, "vips", Some(&ids)).await.unwrap(), 1);
    assert_eq!(o.drop_refused(&a, "vips", None).await.unwrap(), 0);
    assert!(o.refused_rows(&a, "vips", 10).await.unwrap().is_empty());
    assert_eq!(o.pending_count(&a, "vips").await.unwrap(), 3);
}

/// Many flushers racing to fix a chunk: exactly one does.
pub async fn concurrent_flushes_fix_one_chunk<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, _) = orgs();
    let o = s.records.clone();
    o.put_rows(&a, "vips", &rows(&[("inv_1", insert(1))]), afternoon())
        .await
        .unwrap();
    let pending = o.pending_rows(&a, "vips", 10).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (o, a, pending) = (o.clone(), a.clone(), pending.clone());
            tokio::spawn(async move { o.begin_chunk(&a, "vips", &pending).await.unwrap() })
        })
        .collect();
    let mut fixed = 0;
    for t in tasks {
        fixed += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(fixed, 1);
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().next_seq, 1);
}

/// The timed-flush mark is set once; a second writer is told one is on its
/// way; a lost one (older than `replace_before`) is replaced; clearing
/// needs the same due time; per org.
pub async fn a_timed_flush_is_marked_once_until_cleared_or_lost<F: Future<Output = Fixture>>(
    make: F,
) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    let o = &s.records;
    let due = now + Duration::minutes(5);
    assert!(o.mark_flush_due(&a, "vips", due, now).await.unwrap());
    assert!(!o
        .mark_flush_due(&a, "vips", due + Duration::minutes(1), now)
        .await
        .unwrap());
    assert!(
        o.mark_flush_due(&b, "vips", due, now).await.unwrap(),
        "another org's outbox has its own mark"
    );
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(due)
    );
    o.clear_flush_due(&a, "vips", due + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(due),
        "only the mark that was seen is cleared"
    );
    let lost_before = due + Duration::seconds(1);
    let moved = due + Duration::hours(1);
    assert!(o
        .mark_flush_due(&a, "vips", moved, lost_before)
        .await
        .unwrap());
    assert_eq!(
        o.outbox_state(&a, "vips").await.unwrap().flush_due,
        Some(moved)
    );
    o.clear_flush_due(&a, "vips", moved).await.unwrap();
    assert_eq!(o.outbox_state(&a, "vips").await.unwrap().flush_due, None);
    assert!(o.mark_flush_due(&a, "vips", due, now).await.unwrap());
    assert_eq!(
        o.outbox_state(&b, "vips").await.unwrap().flush_due,
        Some(due)
    );
}

/// Hosted GET's reads: rows (tombstones included) after a cursor in id
/// byte order, and a version that changes with every write of that org's
/// Data Source only.
pub async fn hosted_rows_page_by_id_and_version_per_org<F: Future<Output = Fixture>>(make: F) {
    let s = make.await;
    let (a, b) = orgs();
    let now = afternoon();
    assert_eq!(s.hosted.rows_version(&a, "ds").await.unwrap(), 0);
    let ins = |id: &str| {
        RowWrite::new(
            id.to_string(),
            RowChange::Insert(serde_json::json!({"id": id})),
        )
    };
    s.records
        .put_rows(
            &a,
            "ds",
            &[ins("r2"), ins("r1"), ins("r10"), ins("R0")],
            now,
        )
        .await
        .unwrap();
    s.records
        .put_rows(&b, "ds", &[ins("r1")], now)
        .await
        .unwrap();
    let v1 = s.hosted.rows_version(&a, "ds").await.unwrap();
    assert!(v1 > 0);
    let ids = |rows: Vec<OutboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    // Byte order on both adapters: upper case first, "r10" before "r2".
    assert_eq!(
        ids(s.hosted.rows_after(&a, "ds", None, 10).await.unwrap()),
        ["R0", "r1", "r10", "r2"]
    );
    assert_eq!(
        ids(s.hosted.rows_after(&a, "ds", Some("r1"), 2).await.unwrap()),
        ["r10", "r2"]
    );
    assert!(s
        .hosted
        .rows_after(&a, "ds", Some("r2"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s.hosted.rows_after(&b, "ds", None, 10).await.unwrap()),
        ["r1"]
    );
    assert!(s
        .hosted
        .rows_after(&a, "other", None, 10)
        .await
        .unwrap()
        .is_empty());
    // A delete stays as a tombstone; the version moves for org A only.
    let vb = s.hosted.rows_version(&b, "ds").await.unwrap();
    s.records
        .put_rows(&a, "ds", &[RowWrite::new("r1", RowChange::Delete)], now)
        .await
        .unwrap();
    let rows = s.hosted.rows_after(&a, "ds", Some("R0"), 1).await.unwrap();
    assert_eq!(rows[0].change, RowChange::Delete);
    assert!(s.hosted.rows_version(&a, "ds").await.unwrap() > v1);
    assert_eq!(s.hosted.rows_version(&b, "ds").await.unwrap(), vb);
}
