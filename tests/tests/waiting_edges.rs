//! Waiting at its edges: a job ends done, waiting with a reason, or in the
//! dead-letter queue with a reason, and waiting is free. Each case failed
//! before its fix (see the commit that added it), on both adapter sets,
//! with two organizations whose record ids coincide.

use metered::config::{CompleteTransferSettings, SyncConfig};
use metered::core::Disposition;
use metered::AppConfig;
use metered::JobKind;
use metered::Limits;
use metered_sim::{RetryAfterStyle, SimConfig};
use metered_tests::faults::Fault;
use metered_tests::sync_world::{Adapter, World, ORGS};

/// A daily complete transfer of `record_type`, in pages of `page`.
fn transfer(c: &mut AppConfig, record_type: &str, page: u32) {
    if let Some(rt) = c.record_types.get_mut(record_type) {
        rt.max_page_size = page;
    }
    c.syncs.insert(
        record_type.into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: std::time::Duration::from_secs(86_400),
            }),
            ..Default::default()
        },
    );
    c.app.limits = Limits::new(Some(2_000), None, None, 3).unwrap();
}

async fn both_transfers(w: &World, record_type: &str) {
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, record_type)
            .await;
    }
}

/// How the API says "come back" while it throttles.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// `Retry-After: 0`.
    RetryAfterZero,
    /// `Retry-After` as an HTTP date 30 s in the past.
    PastDate,
    /// `X-RateLimit-Reset` 10 s behind the API's clock, no `Retry-After`.
    PastReset,
}

/// The API throttles for a minute and says to come back *now* (three ways
/// of saying it). Every job of the org waits at least
/// `min_retry_after_secs` (5 s) plus jitter, the org is held meanwhile,
/// and the transfers finish: a handful of 429s, nothing lost, no dead
/// letter. Before the floor a hint at or before now restarted every job
/// at once, again and again, spending a call on each 429 until the
/// restart cap dead-lettered them (or, with waits uncapped, forever).
async fn a_retry_hint_at_or_before_now_still_holds_the_org(adapter: Adapter) {
    for hint in [Hint::RetryAfterZero, Hint::PastDate, Hint::PastReset] {
        let w = World::new(
            adapter,
            SimConfig {
                invoices: 1_000,
                ..Default::default()
            },
            |c| {
                transfer(c, "invoices", 100);
                c.app.rate_limit.reset_header = Some("X-RateLimit-Reset".into());
            },
        )
        .await;
        {
            let mut f = w.sim().faults();
            f.throttle_until = Some(w.shared.now() + chrono::Duration::seconds(60));
            match hint {
                Hint::RetryAfterZero => f.burst_retry_after_secs = 0,
                Hint::PastDate => {
                    f.retry_after_style = RetryAfterStyle::HttpDate;
                    f.burst_retry_after_secs = -30;
                }
                Hint::PastReset => f.burst_reset_offset_secs = Some(-10),
            }
        }
        both_transfers(&w, "invoices").await;
        let report = w.drive().await;
        let stats = w.sim().stats();
        for org in ORGS {
            assert_eq!(
                w.store.count(&w.svc.key(org), "invoices").await.unwrap(),
                1_000,
                "{hint:?} {org}"
            );
            assert_eq!(
                stats.calls_of(&w.api_keys[org], "GET /invoices"),
                11,
                "{hint:?} {org}: every page once"
            );
        }
        // Each 429 holds the org at least 5 s: over a 60 s throttle, at
        // most 13 per org.
        assert!(
            stats.rejected_429 <= 26,
            "{hint:?}: {} 429s, restarts {:?}",
            stats.rejected_429,
            report.restarts
        );
        assert!(stats.rejected_429 >= 1, "{hint:?}: the API throttled");
        assert_eq!(w.dead_letters().await, 0, "{hint:?}");
    }
}

/// A store error while recording a transfer's completion: the restart
/// records it and fetches nothing again (it used to start over from page
/// 1, and a one-page listing then failed as "served the same page again").
async fn a_completion_that_cannot_be_recorded_fetches_nothing_again(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 1_000,
            ..Default::default()
        },
        |c| transfer(c, "invoices", 100),
    )
    .await;
    w.faults.at(
        "store.finish_sync",
        Some(JobKind::CompleteTransfer),
        1,
        Fault::Fail(Disposition::Retryable),
    );
    both_transfers(&w, "invoices").await;
    let report = w.drive().await;
    assert_eq!(w.faults.fired().len(), 1, "the fault happened");
    assert!(
        report
            .restarts
            .iter()
            .any(|r| r.contains("could not record the run's completion")),
        "{:?}",
        report.restarts
    );
    let stats = w.sim().stats();
    for org in ORGS {
        assert_eq!(
            stats.calls_of(&w.api_keys[org], "GET /invoices"),
            11,
            "{org}: ten pages and the empty one, once"
        );
        let state = w
            .store
            .sync_state(&w.svc.key(org), "complete-transfer:invoices")
            .await
            .unwrap();
        assert!(state.last_completed.is_some(), "{org}: {state:?}");
        assert!(state.running_job.is_none(), "{org}: the lease is free");
    }
}

/// A cursor API that answers empty pages with ever-new cursors after its
/// last record: the transfer stores every record and stops after five
/// empty pages, as complete (it used to follow them until the budget was
/// gone: the loop check needed records on the page).
async fn empty_pages_with_new_cursors_end_the_listing(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 450,
            ..Default::default()
        },
        |c| transfer(c, "customers", 100),
    )
    .await;
    w.sim().faults().endless_empty_pages = true;
    both_transfers(&w, "customers").await;
    w.drive().await;
    let stats = w.sim().stats();
    for org in ORGS {
        assert_eq!(
            w.store.count(&w.svc.key(org), "customers").await.unwrap(),
            450,
            "{org}"
        );
        assert_eq!(
            stats.calls_of(&w.api_keys[org], "GET /customers"),
            5 + 5,
            "{org}: five pages of records, five empty ones"
        );
    }
    assert_eq!(w.dead_letters().await, 0);
}

/// A quota release that fails after the API accepted an action keeps the
/// call's result: the action is done, not called again (the failure used
/// to throw the result away, and the retry sent the request twice).
async fn a_failed_release_keeps_the_calls_result(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig::default())
        .config(|c| {
            transfer(c, "classes", 100);
            metered_tests::add_workflows(
                c,
                r#"
[workflows.notes]
trigger = { record_type = "classes" }
conditions = ["record.id in ['cls_000', 'cls_001', 'cls_002']"]
[[workflows.notes.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { class = "{{ record.id }}" }
"#,
            );
        })
        .workflows()
        .build()
        .await;
    w.faults.at(
        "quota.release",
        Some(JobKind::ActionHttp),
        1,
        Fault::Fail(Disposition::Retryable),
    );
    both_transfers(&w, "classes").await;
    w.drive().await;
    assert_eq!(w.faults.fired().len(), 1, "the fault happened");
    let stats = w.sim().stats();
    assert_eq!(
        stats.creates_by_idempotency_key.len(),
        6,
        "three notes per org"
    );
    assert!(
        stats
            .create_requests_by_idempotency_key
            .values()
            .all(|n| *n == 1),
        "no action was called twice: {:?}",
        stats.create_requests_by_idempotency_key
    );
    assert_eq!(w.dead_letters().await, 0);
}

/// Org A's key is revoked: its first few calls get 401 and the connection
/// pauses (15 minutes, doubling per failed probe), so over a whole day A
/// spends a handful of calls on 401s, nothing is dead-lettered and its
/// jobs wait with the reason; org B (same record ids) is untouched. After
/// the key is fixed and `resume` runs, A finishes with nothing lost.
/// Before, every 401 was a permanent failure: each job of A went to the
/// dead-letter queue and every schedule tick sent new ones there.
async fn a_revoked_key_pauses_its_connection_and_costs_a_handful_of_calls(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 600,
            customers: 300,
            ..Default::default()
        },
        |c| {
            transfer(c, "invoices", 100);
            transfer(c, "customers", 100);
        },
    )
    .await;
    let (a, b) = (ORGS[0], ORGS[1]);
    w.sim().faults().revoked_keys.insert(w.api_keys[a].clone());
    for rt in ["invoices", "customers"] {
        both_transfers(&w, rt).await;
    }
    let start = w.shared.now();
    let report = w
        .drive_until(Some(start + chrono::Duration::hours(24)))
        .await;
    assert!(report.dead.is_empty(), "{:?}", report.dead);
    assert_eq!(w.dead_letters().await, 0);
    let refused = w.sim().stats().rejected_401_by_key[&w.api_keys[a]];
    // 3 to pause (plus what was in flight), then one probe per pause:
    // 15 m, 30 m, 1 h, 2 h, 4 h, 8 h, 16 h.
    assert!(
        (3..=3 + 2 + 7).contains(&refused),
        "{refused} calls refused in a day"
    );
    let health = w.svc.quota.store().health(&w.svc.key(a)).await.unwrap();
    assert!(health.paused_at(w.shared.now()), "{health:?}");
    assert!(health.reason.as_deref().unwrap_or("").contains("HTTP 401"));
    assert!(
        report.restarts.iter().any(|r| r.contains("paused")),
        "the wait names the pause: {:?}",
        report.restarts.iter().rev().take(3).collect::<Vec<_>>()
    );
    for rt in ["invoices", "customers"] {
        let n = w.store.count(&w.svc.key(b), rt).await.unwrap();
        assert_eq!(n, if rt == "invoices" { 600 } else { 300 }, "{b}: {rt}");
        assert_eq!(w.store.count(&w.svc.key(a), rt).await.unwrap(), 0);
    }
    // The key is fixed; the operator resumes the connection.
    w.sim().faults().revoked_keys.clear();
    w.svc.quota.store().resume(&w.svc.key(a)).await.unwrap();
    w.drive().await;
    assert_eq!(w.store.count(&w.svc.key(a), "invoices").await.unwrap(), 600);
    assert_eq!(
        w.store.count(&w.svc.key(a), "customers").await.unwrap(),
        300
    );
    assert_eq!(w.dead_letters().await, 0);
}

/// The API moved the invoice listing (every run answers 404). Each of the
/// first 3 scheduled runs per org is dead-lettered with the reason; then
/// both connections pause (`pause_after_failed_runs`), and the next runs
/// wait with the pause's reason instead of calling the API and adding a
/// dead letter every interval. `resume` lifts it. Before, every run added
/// one call and one dead letter, forever.
async fn the_same_failure_run_after_run_pauses_the_connection(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 50,
            ..Default::default()
        },
        |c| {
            transfer(c, "invoices", 20);
            if let Some(rt) = c.record_types.get_mut("invoices") {
                rt.list_path = "/v1/invoices/all".into();
            }
        },
    )
    .await;
    for run in 1..=4 {
        both_transfers(&w, "invoices").await;
        let start = w.shared.now();
        w.drive_until(Some(start + chrono::Duration::minutes(5)))
            .await;
        let dead = w.dead_letters().await;
        assert_eq!(dead, 2 * run.min(3), "after run {run}");
    }
    // The 4th run waits, holding its sync: the next tick starts nothing.
    for org in ORGS {
        let started = metered::handlers::start_sync(
            &w.svc,
            org,
            JobKind::CompleteTransfer,
            "invoices",
            false,
        )
        .await
        .unwrap();
        assert!(started.is_none(), "{org}: a 5th run beside the waiting one");
    }
    let stats = w.sim().stats();
    assert_eq!(
        stats.calls_by_endpoint.values().sum::<u64>(),
        6,
        "one call per failed run, none while paused: {:?}",
        stats.calls_by_endpoint
    );
    for org in ORGS {
        let key = w.svc.key(org);
        let health = w.svc.quota.store().health(&key).await.unwrap();
        let said = health.describe(w.shared.now());
        assert!(health.paused_at(w.shared.now()), "{org}: {health:?}");
        assert!(
            said.contains("3 sync runs in a row failed the same way") && said.contains("HTTP 404"),
            "{org}: {said}"
        );
    }
    let waiting = w.all_dead_letters().await;
    assert!(
        waiting.iter().all(|(_, d)| d.reason.contains("HTTP 404")),
        "{waiting:?}"
    );
    // Resumed (after the config is fixed), the waiting runs call again.
    for org in ORGS {
        w.svc.quota.store().resume(&w.svc.key(org)).await.unwrap();
    }
    w.drive_until(Some(w.shared.now() + chrono::Duration::minutes(30)))
        .await;
    assert!(w.sim().stats().calls_by_endpoint.values().sum::<u64>() > 6);
}

metered_tests::on_both!(
    the_same_failure_run_after_run_pauses_the_connection,
    a_retry_hint_at_or_before_now_still_holds_the_org,
    a_completion_that_cannot_be_recorded_fetches_nothing_again,
    empty_pages_with_new_cursors_end_the_listing,
    a_failed_release_keeps_the_calls_result,
    a_revoked_key_pauses_its_connection_and_costs_a_handful_of_calls,
);
