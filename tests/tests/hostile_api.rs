//! Hostile and broken APIs (issue: a bad body, page or record never stalls
//! a sync, loops, leaks a secret or blocks an org), on both adapter sets
//! with two orgs connected.

use metered::job::JobKind;
use metered::sync::settings::{CompleteTransferSettings, SyncConfig};
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World};

fn transfer_of(c: &mut metered::connector::config::AppConfig, record_type: &str) {
    c.syncs.insert(
        record_type.into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: std::time::Duration::from_secs(86_400),
            }),
            ..Default::default()
        },
    );
}

/// A cursor (customers) or `Link: rel="next"` (classes) that the API hands
/// out again fails the transfer with a reason on its second page, instead
/// of spending the budget until the restart cap: 2 calls, not hundreds.
async fn a_repeating_cursor_or_next_link_fails_instead_of_looping(adapter: Adapter) {
    for (record_type, endpoint) in [("customers", "GET /customers"), ("classes", "GET /classes")] {
        let w = World::new(
            adapter,
            SimConfig {
                customers: 450,
                classes: 250,
                ..Default::default()
            },
            |c| transfer_of(c, record_type),
        )
        .await;
        w.sim().faults().repeat_next = true;
        w.start(JobKind::CompleteTransfer, record_type).await;
        let report = w.drive_report().await;
        assert_eq!(report.dead.len(), 1, "{record_type}: {report:?}");
        assert!(
            report.dead[0].contains("already returned in this run"),
            "{}",
            report.dead[0]
        );
        let calls = w.sim().stats().calls(endpoint);
        assert!(
            calls <= 3,
            "{record_type}: {calls} calls; the loop was not cut"
        );
        // Without the fault the same transfer completes.
        w.sim().faults().repeat_next = false;
        w.clock.advance(chrono::Duration::days(1));
        w.start(JobKind::CompleteTransfer, record_type).await;
        w.drive().await;
        let n = if record_type == "customers" { 450 } else { 250 };
        assert_eq!(w.store.count(&w.key(), record_type).await.unwrap(), n);
    }
}

/// 2xx bodies that are not JSON, cut short, or 500s without Retry-After:
/// retried from the checkpoint with backoff; every record is stored and no
/// page is fetched twice beyond the failed attempts.
async fn broken_bodies_are_retried_from_the_checkpoint(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 1_150,
            ..Default::default()
        },
        |c| transfer_of(c, "invoices"),
    )
    .await;
    {
        let mut f = w.sim().faults();
        f.next_malformed_json = 1;
        f.next_5xx = 1;
    }
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive().await;
    assert_eq!(w.store.count(&w.key(), "invoices").await.unwrap(), 1_150);
    assert!(
        report
            .restarts
            .iter()
            .filter(|r| r.contains("transient failure"))
            .count()
            >= 2,
        "{:?}",
        report.restarts
    );
    // 6 pages, plus the 2 failed attempts (each retried from its page).
    assert_eq!(w.sim().stats().calls("GET /invoices"), 6 + 2);
}

/// Five broken answers in a row: the transfer gives up with the attempts and
/// the last error in its dead letter, having spent exactly 5 calls.
async fn a_persistently_broken_api_is_given_up_on_after_five_attempts(adapter: Adapter) {
    let w = World::new(adapter, SimConfig::default(), |c| {
        transfer_of(c, "invoices")
    })
    .await;
    w.sim().faults().next_malformed_json = 50;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive_report().await;
    assert_eq!(report.dead.len(), 1, "{report:?}");
    assert!(
        report.dead[0].contains("gave up after 5 attempts"),
        "{}",
        report.dead[0]
    );
    assert!(
        report.dead[0].contains("not valid JSON"),
        "{}",
        report.dead[0]
    );
    assert_eq!(w.sim().stats().calls("GET /invoices"), 5);
}

metered_tests::on_both!(
    a_repeating_cursor_or_next_link_fails_instead_of_looping,
    broken_bodies_are_retried_from_the_checkpoint,
    a_persistently_broken_api_is_given_up_on_after_five_attempts,
);
