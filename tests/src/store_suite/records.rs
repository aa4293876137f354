//! The record store: the size limit, quarantine, the sync lease and the
//! page diff.

use super::{orgs, Fixture};
use crate::afternoon;
use chrono::Duration;
use metered::Tenant;
use std::future::Future;

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
    use metered::core::{ChangeKind, Record};
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
