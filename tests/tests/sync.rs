//! The sync handlers end to end against the simulated API, on both adapter
//! sets: SQLite, and DynamoDB Local + ministack SQS. Time is a manual clock.

use chrono::Duration;
use metered::config::{
    CompleteTransferSettings, LookupPolicy, PkLookupSettings, RecentSettings, StormGuard,
    SyncConfig,
};
use metered::AppConfig;
use metered::JobKind;
use metered::Limits;
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World, ORG, ORGS};
use std::collections::BTreeSet;

fn transfer() -> Option<CompleteTransferSettings> {
    Some(CompleteTransferSettings {
        every: std::time::Duration::from_secs(86_400),
    })
}

fn recent() -> Option<RecentSettings> {
    Some(RecentSettings {
        every: std::time::Duration::from_secs(900),
        overlap: std::time::Duration::from_secs(2_700),
    })
}

fn lookups(policy: LookupPolicy, guard: StormGuard) -> PkLookupSettings {
    PkLookupSettings {
        enabled: true,
        policy,
        max_keys_per_call: Some(50),
        storm_guard: guard,
        min_relookup: std::time::Duration::from_secs(3_600),
        ..Default::default()
    }
}

fn sync(c: &mut AppConfig, record_type: &str, s: SyncConfig) {
    c.syncs.insert(record_type.into(), s);
}

/// Invoices transferred daily; the customers they reference looked up by key.
fn invoices_with_lookups(c: &mut AppConfig, policy: LookupPolicy, guard: StormGuard) {
    sync(
        c,
        "invoices",
        SyncConfig {
            complete_transfer: transfer(),
            ..Default::default()
        },
    );
    sync(
        c,
        "customers",
        SyncConfig {
            pk_lookup: lookups(policy, guard),
            ..Default::default()
        },
    );
}

/// The same daily limit for every connected org.
fn with_limits(c: &mut AppConfig, per_day: u32) {
    for conn in &mut c.connections {
        conn.limits = Some(Limits::new(Some(per_day), None, None, 3).unwrap());
    }
}

/// Distinct customers referenced by the simulator's invoices.
fn referenced_customers(w: &World) -> BTreeSet<String> {
    w.sim()
        .records("invoices")
        .iter()
        .filter_map(|r| r["customer_id"].as_str().map(str::to_string))
        .collect()
}

async fn complete_transfer_spends_exactly_ceil_n_over_page(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 1_150,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "invoices",
                SyncConfig {
                    complete_transfer: transfer(),
                    ..Default::default()
                },
            )
        },
    )
    .await;
    // Both orgs, whose invoices have the same ids.
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    let report = w.drive().await;
    assert_eq!(report.done.get(&JobKind::CompleteTransfer), Some(&2));
    let stats = w.sim().stats();
    let triggers = w.take_triggers().await;
    assert_eq!(
        triggers.iter().map(|t| t.changes.len()).sum::<usize>(),
        2 * 1_150,
        "every new record of each org triggers once"
    );
    for org in ORGS {
        assert_eq!(
            stats.calls_of(&w.api_keys[org], "GET /invoices"),
            6,
            "{org}: ceil(1150 / 200)"
        );
        let scope = w.svc.key(org);
        assert_eq!(w.store.count(&scope, "invoices").await.unwrap(), 1_150);
        let state = w
            .store
            .sync_state(&scope, "complete-transfer:invoices")
            .await
            .unwrap();
        assert!(
            state.last_completed.is_some() && state.running_job.is_none(),
            "{org}: {state:?}"
        );
        assert_eq!(state.last_pages, Some(6), "{org}");
    }
}

async fn a_denial_mid_transfer_resumes_without_refetching(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 1_150,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "invoices",
                SyncConfig {
                    complete_transfer: transfer(),
                    ..Default::default()
                },
            );
            with_limits(c, 4);
        },
    )
    .await;
    let day1 = w.shared.now().date_naive();
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive().await;
    assert!(
        report
            .restarts
            .iter()
            .any(|r| r.contains("day limit reached")),
        "{:?}",
        report.restarts
    );
    let stats = w.sim().stats();
    assert_eq!(stats.calls("GET /invoices"), 6, "no page fetched twice");
    let per_day: Vec<u64> = stats.calls_by_key_day.values().copied().collect();
    assert_eq!(
        per_day,
        vec![4, 2],
        "four on the first day, the rest after midnight"
    );
    assert!(w.shared.now().date_naive() > day1);
    let ids: BTreeSet<String> = w
        .store
        .list(&w.key(), "invoices", None, 2_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 1_150);
    assert_eq!(w.dead_letters().await, 0);
}

async fn recent_lookups_with_overlap_miss_nothing_and_repeat_nothing(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 450,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "customers",
                SyncConfig {
                    complete_transfer: transfer(),
                    recent: recent(),
                    ..Default::default()
                },
            )
        },
    )
    .await;
    w.start(JobKind::CompleteTransfer, "customers").await;
    w.drive().await;
    assert_eq!(
        w.take_triggers().await.len(),
        3,
        "one trigger per page of new records"
    );

    w.clock.advance(Duration::minutes(1));
    let first: BTreeSet<String> = w.sim().modify("customers", 5).into_iter().collect();
    w.clock.advance(Duration::minutes(1));
    // A record changes while the window is being read: its time equals the
    // window's end, so this window excludes it and the next one includes it.
    w.sim().faults().change_between_pages = true;
    w.start(JobKind::RecentRecords, "customers").await;
    w.drive().await;
    let t1 = w.take_triggers().await;
    let changed: BTreeSet<String> = t1
        .iter()
        .flat_map(|t| t.changes.iter().map(|c| c.id.clone()))
        .collect();
    assert_eq!(changed, first);

    w.clock.advance(Duration::minutes(15));
    w.sim().faults().change_between_pages = false;
    w.start(JobKind::RecentRecords, "customers").await;
    w.drive().await;
    let t2 = w.take_triggers().await;
    let changed: Vec<String> = t2
        .iter()
        .flat_map(|t| t.changes.iter().map(|c| c.id.clone()))
        .collect();
    assert_eq!(changed.len(), 1, "only the record changed during the last run; the overlap's unchanged records trigger nothing: {changed:?}");
    assert!(!first.contains(&changed[0]));

    // The store now holds exactly what the API holds.
    let stored = w
        .store
        .list(&w.key(), "customers", None, 1_000)
        .await
        .unwrap();
    let api = w.sim().records("customers");
    assert_eq!(stored.len(), api.len());
    for (s, a) in stored.iter().zip(&api) {
        assert_eq!(s.data.as_ref(), Some(a), "record {} is stale", s.id);
    }
    let state = w
        .store
        .sync_state(&w.key(), "recent-records:customers")
        .await
        .unwrap();
    assert_eq!(
        state.high_water, state.last_completed,
        "the high-water mark is the last window's end"
    );
}

async fn unseen_only_lookups_spend_ceil_u_over_k(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 500,
            invoices: 1_150,
            ..Default::default()
        },
        |c| invoices_with_lookups(c, LookupPolicy::UnseenOnly, StormGuard::Off),
    )
    .await;
    // A hundred customers are already known to org A; org B, whose ids
    // coincide, knows none: each org looks up what it has not seen.
    let known: Vec<metered::Record> = w.sim().records("customers")[..100]
        .iter()
        .map(|d| metered::Record {
            id: d["id"].as_str().unwrap().into(),
            updated_at: None,
            data: d.clone(),
        })
        .collect();
    w.store
        .upsert(&w.key(), "customers", &known, w.shared.now())
        .await
        .unwrap();
    let known_ids: BTreeSet<String> = known.iter().map(|r| r.id.clone()).collect();
    let referenced = referenced_customers(&w);
    let unseen_by_a = referenced.difference(&known_ids).count();
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    w.drive().await;
    let stats = w.sim().stats();
    for (org, unseen) in [(ORGS[0], unseen_by_a), (ORGS[1], referenced.len())] {
        let lookups = stats.calls_of(&w.api_keys[org], "GET /customers (by ids)");
        assert_eq!(
            lookups as usize,
            unseen.div_ceil(50),
            "{org}: {unseen} unseen keys at 50 a call"
        );
        let ids: Vec<String> = referenced.iter().cloned().collect();
        assert_eq!(
            w.seen(org, "customers", &ids).await,
            ids.len(),
            "{org}: every referenced customer is now stored"
        );
    }
}

async fn seen_and_unseen_respects_the_minimum_relookup_time(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 200,
            invoices: 300,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "invoices",
                SyncConfig {
                    recent: recent(),
                    ..Default::default()
                },
            );
            sync(
                c,
                "customers",
                SyncConfig {
                    complete_transfer: transfer(),
                    pk_lookup: lookups(LookupPolicy::SeenAndUnseen, StormGuard::TransferFirst),
                    ..Default::default()
                },
            );
        },
    )
    .await;
    w.start(JobKind::CompleteTransfer, "customers").await;
    w.drive().await;
    let bulk = || w.sim().stats().calls("GET /customers (by ids)");
    let mut seen_calls = Vec::new();
    let invoices: Vec<String> = w.sim().records("invoices")[..10]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for gap in [
        Duration::hours(2),
        Duration::minutes(10),
        Duration::hours(2),
    ] {
        w.clock.advance(gap);
        w.sim().modify_ids("invoices", &invoices);
        w.clock.advance(Duration::minutes(1));
        let before = bulk();
        w.start(JobKind::RecentRecords, "invoices").await;
        w.drive().await;
        seen_calls.push(bulk() - before);
    }
    assert_eq!(
        seen_calls,
        vec![1, 0, 1],
        "relooked after 2h, not after 11 min (min_relookup 1h)"
    );
}

async fn never_spends_nothing(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 400,
            ..Default::default()
        },
        |c| invoices_with_lookups(c, LookupPolicy::Never, StormGuard::Off),
    )
    .await;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive().await;
    assert_eq!(w.sim().stats().calls("GET /customers (by ids)"), 0);
    assert_eq!(
        report.done.get(&JobKind::PkLookup),
        None,
        "no lookup jobs at all"
    );
}

async fn lookups_on_a_never_transferred_type_do_not_storm(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 450,
            invoices: 1_150,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "invoices",
                SyncConfig {
                    complete_transfer: transfer(),
                    ..Default::default()
                },
            );
            sync(
                c,
                "customers",
                SyncConfig {
                    complete_transfer: transfer(),
                    pk_lookup: lookups(LookupPolicy::UnseenOnly, StormGuard::TransferFirst),
                    ..Default::default()
                },
            );
        },
    )
    .await;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive().await;
    let stats = w.sim().stats();
    assert_eq!(
        stats.calls("GET /customers"),
        3,
        "the customers transfer ran first (450 at 200 a page)"
    );
    assert_eq!(
        stats.calls("GET /customers (by ids)"),
        0,
        "after it, no key was unseen"
    );
    assert!(
        report
            .restarts
            .iter()
            .any(|r| r.contains("waiting for the first complete transfer")),
        "{:?}",
        report.restarts
    );
}

async fn budget_exhaustion_finishes_in_the_next_window(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 450,
            invoices: 1_150,
            checkins: 330,
            ..Default::default()
        },
        |c| {
            for t in ["customers", "invoices", "checkins"] {
                sync(
                    c,
                    t,
                    SyncConfig {
                        complete_transfer: transfer(),
                        ..Default::default()
                    },
                );
            }
            c.syncs.get_mut("customers").unwrap().pk_lookup =
                lookups(LookupPolicy::UnseenOnly, StormGuard::TransferFirst);
            with_limits(c, 7);
        },
    )
    .await;
    let started = metered::handlers::schedule::tick(&w.svc).await.started;
    assert_eq!(started.len(), 3 * ORGS.len(), "three syncs for each org");
    assert!(
        metered::handlers::schedule::tick(&w.svc)
            .await
            .started
            .is_empty(),
        "a running sync is never started twice"
    );
    let report = w.drive().await;
    let stats = w.sim().stats();
    for org in ORGS {
        for (t, n) in [("customers", 450), ("invoices", 1_150), ("checkins", 330)] {
            assert_eq!(
                w.store.count(&w.svc.key(org), t).await.unwrap(),
                n,
                "{org}: {t} complete"
            );
        }
        let key = &w.api_keys[org];
        assert_eq!(
            stats.calls_of(key, "GET /customers")
                + stats.calls_of(key, "GET /invoices")
                + stats.calls_of(key, "GET /checkins"),
            3 + 6 + 2,
            "{org}: the minimum, across restarts"
        );
    }
    assert!(
        stats.calls_by_key_day.values().all(|n| *n <= 7),
        "{:?}",
        stats.calls_by_key_day
    );
    assert!(
        stats.calls_by_key_day.len() >= 2,
        "the work spilled into the next window"
    );
    assert_eq!(stats.rejected_429, 0);
    assert_eq!(w.dead_letters().await, 0);
    assert_eq!(
        report.done.get(&JobKind::CompleteTransfer),
        Some(&(3 * ORGS.len() as u64))
    );
}

async fn a_redelivered_message_does_no_double_work(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 550,
            ..Default::default()
        },
        |c| {
            sync(
                c,
                "invoices",
                SyncConfig {
                    complete_transfer: transfer(),
                    ..Default::default()
                },
            )
        },
    )
    .await;
    let job = w.start(JobKind::CompleteTransfer, "invoices").await;
    // The same message delivered twice.
    w.svc.queues.send(&job, 0).await.unwrap();
    let report = w.drive().await;
    assert_eq!(
        w.sim().stats().calls("GET /invoices"),
        3,
        "550 at 200 a page, once"
    );
    assert_eq!(report.done.get(&JobKind::CompleteTransfer), Some(&1));
    assert_eq!(report.skipped, 1);
}

async fn an_adhoc_sync_reports_its_cost_first(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 300,
            invoices: 700,
            ..Default::default()
        },
        |c| invoices_with_lookups(c, LookupPolicy::UnseenOnly, StormGuard::Off),
    )
    .await;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    w.drive().await;
    let estimate = metered::handlers::estimate(&w.svc, ORG, JobKind::CompleteTransfer, "invoices")
        .await
        .unwrap();
    assert_eq!(estimate.sync_calls, 4, "{estimate:?}");
    assert_eq!(
        estimate.pk_lookup_calls.get("customers"),
        Some(&0),
        "every referenced customer is known now"
    );
    let before = w.sim().stats().served();
    w.clock.advance(Duration::hours(1));
    metered::handlers::start_sync(&w.svc, ORG, JobKind::CompleteTransfer, "invoices", true)
        .await
        .unwrap()
        .unwrap();
    w.drive().await;
    assert_eq!(
        w.sim().stats().served() - before,
        estimate.total_calls,
        "the estimate was exact"
    );
}

/// A transfer of unchanged data on a first run (the job ledger proves no
/// earlier delivery of its generation ran) reads no stored records for its
/// unchanged pages: looking for claims a crashed run left behind is only
/// done on a re-run (`nothing_lost::claims_survive_a_failed_commit` proves
/// that one). Two orgs whose invoices have the same ids.
async fn steady_transfers_read_no_stored_records_for_unchanged_pages(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 300,
            invoices: 1_000,
            ..Default::default()
        },
        |c| invoices_with_lookups(c, LookupPolicy::UnseenOnly, StormGuard::Off),
    )
    .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    w.drive().await;
    let referenced: Vec<String> = referenced_customers(&w).into_iter().collect();
    let (gets, stats) = (w.faults.hits("store.get"), w.sim().stats());
    assert!(
        gets > 0,
        "the first transfer read what it needed to look up"
    );
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    let report = w.drive().await;
    assert_eq!(report.done.get(&JobKind::CompleteTransfer), Some(&2));
    assert_eq!(
        w.faults.hits("store.get") - gets,
        0,
        "unchanged pages on a first run read nothing back"
    );
    let after = w.sim().stats();
    for org in ORGS {
        let key = &w.api_keys[org];
        assert_eq!(
            after.calls_of(key, "GET /invoices") - stats.calls_of(key, "GET /invoices"),
            stats.calls_of(key, "GET /invoices"),
            "{org}: the same pages again, no more"
        );
        assert_eq!(
            after.calls_of(key, "GET /customers (by ids)"),
            stats.calls_of(key, "GET /customers (by ids)"),
            "{org}: nothing looked up twice"
        );
        assert_eq!(
            w.seen(org, "customers", &referenced).await,
            referenced.len()
        );
    }
}

/// A tick whose send fails leaves the sync due at the next tick (it used
/// to record the start first and keep it, so the sync waited a whole
/// period), and one org's store error never holds back the other's.
async fn a_failed_start_or_one_orgs_error_never_delays_a_sync(adapter: Adapter) {
    use metered::core::Disposition;
    use metered_tests::faults::Fault;
    let w = World::new(adapter, SimConfig::default(), |c| {
        sync(
            c,
            "invoices",
            SyncConfig {
                complete_transfer: transfer(),
                ..Default::default()
            },
        );
    })
    .await;
    // The first org's start: the send fails.
    w.faults
        .at("queue.send", None, 1, Fault::Fail(Disposition::Retryable));
    let first = metered::handlers::schedule::tick(&w.svc).await;
    assert_eq!(first.failed.len(), 1, "{:?}", first.failed);
    assert_eq!(
        first.started.len(),
        1,
        "the other org started: {:?}",
        first.started
    );
    let second = metered::handlers::schedule::tick(&w.svc).await;
    assert!(second.failed.is_empty(), "{:?}", second.failed);
    assert_eq!(
        second.started.len(),
        1,
        "the org whose send failed starts at the next tick, not a day later"
    );
    assert_ne!(first.started[0].org, second.started[0].org);
    // One org's store error: the other org is still ticked.
    w.clock.advance(Duration::days(1));
    let next = w.faults.hits("store.sync_state") + 1;
    w.faults.at(
        "store.sync_state",
        None,
        next,
        Fault::Fail(Disposition::Retryable),
    );
    let third = metered::handlers::schedule::tick(&w.svc).await;
    assert_eq!(third.failed.len(), 1, "{:?}", third.failed);
    assert!(third.failed[0].1.contains("injected"), "{:?}", third.failed);
    assert_eq!(third.started.len(), 1, "the other org still started");
    w.drive().await;
}

metered_tests::on_both!(
    a_failed_start_or_one_orgs_error_never_delays_a_sync,
    complete_transfer_spends_exactly_ceil_n_over_page,
    a_denial_mid_transfer_resumes_without_refetching,
    recent_lookups_with_overlap_miss_nothing_and_repeat_nothing,
    unseen_only_lookups_spend_ceil_u_over_k,
    seen_and_unseen_respects_the_minimum_relookup_time,
    never_spends_nothing,
    lookups_on_a_never_transferred_type_do_not_storm,
    budget_exhaustion_finishes_in_the_next_window,
    a_redelivered_message_does_no_double_work,
    an_adhoc_sync_reports_its_cost_first,
    steady_transfers_read_no_stored_records_for_unchanged_pages,
);
