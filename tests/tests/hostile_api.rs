//! Hostile and broken APIs (issue: a bad body, page or record never stalls
//! a sync, loops, leaks a secret or blocks an org), on both adapter sets
//! with two orgs connected.

use metered::config::{
    CompleteTransferSettings, LookupPolicy, PkLookupSettings, StormGuard, SyncConfig,
};
use metered::core::Clock;
use metered::JobKind;
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World, ORGS};

fn transfer_of(c: &mut metered::AppConfig, record_type: &str) {
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

/// An API that serves 50 records a page when asked for 200: a page/offset
/// transfer must not end after page 1. The short first page costs one look
/// at page 2; finding records there, the transfer learns the API's page
/// size, warns, and goes on: ceil(180 / 50) = 4 calls per org, not 1 (all
/// records) and not 5. The next run knows the size and needs no probe.
async fn an_api_that_caps_its_page_size_is_found_out_once(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 180,
            max_page_size: 50,
            ..Default::default()
        },
        |c| transfer_of(c, "invoices"),
    )
    .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    w.drive().await;
    let stats = w.sim().stats();
    for org in ORGS {
        let scope = w.svc.key(org);
        assert_eq!(
            w.store.count(&scope, "invoices").await.unwrap(),
            180,
            "{org}"
        );
        assert_eq!(
            stats.calls_of(&w.api_keys[org], "GET /invoices"),
            4,
            "{org}"
        );
        let state = w
            .store
            .sync_state(&scope, "complete-transfer:invoices")
            .await
            .unwrap();
        assert_eq!(state.api_page_size, Some(50), "{org}: {state:?}");
    }
    // A day later: the learned size is used from the first page on.
    w.sim().reset_stats();
    w.clock.advance(chrono::Duration::days(1));
    w.start_for(ORGS[0], JobKind::CompleteTransfer, "invoices")
        .await;
    w.drive().await;
    assert_eq!(w.sim().stats().calls("GET /invoices"), 4);
}

/// A listing shorter than one page costs one extra call the first time
/// (the probe finds page 2 empty) and none after: the short length is
/// remembered.
async fn a_short_listing_is_probed_once(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 30,
            ..Default::default()
        },
        |c| transfer_of(c, "invoices"),
    )
    .await;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    w.drive().await;
    assert_eq!(
        w.sim().stats().calls("GET /invoices"),
        2,
        "page 1 and the probe"
    );
    assert_eq!(w.store.count(&w.key(), "invoices").await.unwrap(), 30);
    let again = w.calls_of_a_rerun("invoices", "GET /invoices").await;
    assert_eq!(again, 1, "no second probe");
}

/// An API that ignores the page parameter serves page 1 for every page.
/// A listing longer than a page fails on page 2 with a reason (2 calls, not
/// the budget); one shorter than a page is complete after the probe sees
/// page 1 again (2 calls, then 1 per run).
async fn an_api_that_ignores_the_page_parameter_never_loops(adapter: Adapter) {
    for (invoices, calls, dead) in [(450, 2, 1), (30, 2, 0)] {
        let w = World::new(
            adapter,
            SimConfig {
                invoices,
                ..Default::default()
            },
            |c| transfer_of(c, "invoices"),
        )
        .await;
        w.sim().faults().ignore_page_param = true;
        w.start(JobKind::CompleteTransfer, "invoices").await;
        let report = w.drive_report().await;
        assert_eq!(w.sim().stats().calls("GET /invoices"), calls, "{invoices}");
        assert_eq!(report.dead.len(), dead, "{invoices}: {report:?}");
        if dead > 0 {
            assert!(
                report.dead[0].contains("served the same page again"),
                "{report:?}"
            );
        } else {
            assert_eq!(w.store.count(&w.key(), "invoices").await.unwrap(), 30);
            let again = w.calls_of_a_rerun("invoices", "GET /invoices").await;
            assert_eq!(again, 1, "no second probe");
        }
    }
}

/// The storm guard backs off: the customers transfer that lookups wait for
/// fails (its list endpoint answers garbage five times in a row). It is
/// given up on once, its failure recorded, and not started again on every
/// lookup wake-up; the lookups fall back to bulk lookups and every
/// referenced customer is stored, for both orgs.
async fn a_failed_first_transfer_is_not_restarted_by_every_lookup(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            customers: 450,
            invoices: 300,
            ..Default::default()
        },
        |c| {
            transfer_of(c, "invoices");
            c.syncs.insert(
                "customers".into(),
                SyncConfig {
                    complete_transfer: Some(CompleteTransferSettings {
                        every: std::time::Duration::from_secs(86_400),
                    }),
                    pk_lookup: PkLookupSettings {
                        enabled: true,
                        policy: LookupPolicy::UnseenOnly,
                        max_keys_per_call: Some(50),
                        storm_guard: StormGuard::TransferFirst,
                        min_relookup: std::time::Duration::from_secs(86_400),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
        },
    )
    .await;
    // Both orgs' customer transfers answer garbage until given up on.
    w.sim()
        .faults()
        .malformed_on
        .insert("GET /customers".into(), 2 * 5);
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    let report = w.drive_report().await;
    let stats = w.sim().stats();
    let referenced: std::collections::BTreeSet<String> = w
        .sim()
        .records("invoices")
        .iter()
        .filter_map(|i| i["customer_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        report.dead.len(),
        2,
        "one failed transfer per org: {report:?}"
    );
    for org in ORGS {
        let key = &w.api_keys[org];
        assert_eq!(
            stats.calls_of(key, "GET /customers"),
            5,
            "{org}: the failed transfer was started once, not on every wake-up"
        );
        assert!(stats.calls_of(key, "GET /customers (by ids)") > 0, "{org}");
        let scope = w.svc.key(org);
        let stored = w
            .seen(
                org,
                "customers",
                &referenced.iter().cloned().collect::<Vec<_>>(),
            )
            .await;
        assert_eq!(stored, referenced.len(), "{org}: every referenced customer");
        let state = w
            .store
            .sync_state(&scope, "complete-transfer:customers")
            .await
            .unwrap();
        assert!(state.last_failed.is_some(), "{org}: {state:?}");
        assert!(
            state
                .last_failure
                .as_deref()
                .is_some_and(|f| f.contains("gave up after 5 attempts")),
            "{org}: {state:?}"
        );
    }
}

/// Records the store cannot keep are quarantined with their reason, listed
/// per org, and every other record of the page is stored: both orgs, the
/// same bad records.
async fn bad_records_are_quarantined_and_the_rest_stored(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 450,
            ..Default::default()
        },
        |c| transfer_of(c, "invoices"),
    )
    .await;
    let mut template = w.sim().records("invoices")[0].clone();
    let mut no_id = template.clone();
    no_id.as_object_mut().map(|o| o.remove("id"));
    w.sim().insert_raw("invoices", no_id);
    template["id"] = serde_json::json!("inv_huge");
    template["notes"] = serde_json::json!("n".repeat(410 * 1024));
    w.sim().insert_raw("invoices", template);
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    w.drive().await;
    for org in ORGS {
        let scope = w.svc.key(org);
        assert_eq!(
            w.store.count(&scope, "invoices").await.unwrap(),
            450,
            "{org}"
        );
        let q = w.store.quarantined(&scope, 10).await.unwrap();
        assert_eq!(q.len(), 2, "{org}: {q:?}");
        assert!(
            q.iter()
                .any(|e| e.record_id.is_none() && e.reason.contains("no id")),
            "{q:?}"
        );
        assert!(
            q.iter().any(|e| e.record_id.as_deref() == Some("inv_huge")
                && e.reason.contains("400 KB")
                && e.excerpt.len() < 1_000),
            "{q:?}"
        );
        // 452 items at 200 a page: 3 calls.
        assert_eq!(
            w.sim().stats().calls_of(&w.api_keys[org], "GET /invoices"),
            3
        );
    }
}

/// One hostile switch, how to set it, and what the operator must see.
struct Switch {
    name: &'static str,
    set: fn(&mut metered_sim::Faults),
    /// Extra calls the switch may cost per org beyond the 3 pages.
    extra_calls: u64,
    /// Text one restart reason must contain (the reason is visible).
    reason: &'static [&'static str],
}

const SWITCHES: &[Switch] = &[
    Switch {
        name: "body not JSON",
        set: |f| f.next_malformed_json = 2,
        extra_calls: 2,
        reason: &["not valid JSON"],
    },
    Switch {
        name: "200 without the records array",
        set: |f| f.next_no_records = 2,
        extra_calls: 2,
        reason: &["no records array"],
    },
    Switch {
        name: "body cut short",
        set: |f| f.next_truncated_body = 2,
        extra_calls: 2,
        reason: &["cut short", "in transit"],
    },
    Switch {
        name: "dropped connection",
        set: |f| f.next_dropped_connection = 2,
        extra_calls: 2,
        reason: &["cut short", "in transit", "connection"],
    },
    Switch {
        name: "502 without Retry-After",
        set: |f| f.next_5xx = 2,
        extra_calls: 2,
        reason: &["HTTP 502"],
    },
    Switch {
        name: "503 without Retry-After",
        set: |f| f.next_503_plain = 2,
        extra_calls: 2,
        reason: &["HTTP 503"],
    },
    Switch {
        name: "a body that drips past the timeout",
        set: |f| f.next_slow_drip = 1,
        extra_calls: 1,
        reason: &["timed out", "cut short", "in transit"],
    },
    Switch {
        name: "a body over max_response_bytes",
        set: |f| f.next_huge_body = Some(3_000_000),
        extra_calls: 1,
        reason: &["app.max_response_bytes"],
    },
    Switch {
        name: "Retry-After as an HTTP date 30 days away",
        set: |f| {
            f.next_429 = 1;
            f.burst_retry_after_secs = 30 * 86_400;
            f.retry_after_style = metered_sim::RetryAfterStyle::HttpDate;
        },
        // A 429 is not served (nor counted by the API's budget).
        extra_calls: 0,
        reason: &["rate limited"],
    },
];

/// Every hostile switch of the simulator alone, against a transfer of 450
/// invoices (3 pages) for two orgs: every record of both orgs stored, at
/// most 3 calls plus the switch's failures per org (the bound), the reason
/// in a restart the operator sees, nothing dead-lettered, no panic.
async fn every_hostile_switch_costs_a_bounded_retry_and_loses_nothing(adapter: Adapter) {
    for switch in SWITCHES {
        let w = World::new(
            adapter,
            SimConfig {
                invoices: 450,
                ..Default::default()
            },
            |c| {
                transfer_of(c, "invoices");
                c.app.timeouts.request_ms = 1_000;
                c.app.max_response_bytes = 2_000_000;
            },
        )
        .await;
        (switch.set)(&mut w.sim().faults());
        let started = w.clock.now();
        for org in ORGS {
            w.start_for(org, JobKind::CompleteTransfer, "invoices")
                .await;
        }
        let report = w.drive_report().await;
        let name = switch.name;
        // A retry time 30 days away holds the orgs 7 days at most.
        let took = w.clock.now() - started;
        assert!(
            took <= chrono::Duration::days(7) + chrono::Duration::hours(1),
            "{name}: took {took}"
        );
        assert!(report.dead.is_empty(), "{name}: {report:?}");
        let stats = w.sim().stats();
        for org in ORGS {
            let stored = w.store.count(&w.svc.key(org), "invoices").await.unwrap();
            assert_eq!(stored, 450, "{name}: {org}");
            let calls = stats.calls_of(&w.api_keys[org], "GET /invoices");
            assert!(
                (3..=3 + switch.extra_calls).contains(&calls),
                "{name}: {org} spent {calls} calls; bound {}",
                3 + switch.extra_calls
            );
        }
        assert!(
            report
                .restarts
                .iter()
                .any(|r| switch.reason.iter().any(|want| r.contains(want))),
            "{name}: no restart names the fault: {:?}",
            report.restarts
        );
    }
}

/// A transfer whose every record was quarantined (here: a wrong id
/// pointer) fails with that reason instead of being recorded as done; the
/// records are listed with the pointer named. Before, the run was
/// "complete" and green with nothing stored.
async fn a_transfer_of_only_quarantined_records_is_a_failure(adapter: Adapter) {
    let w = World::new(
        adapter,
        SimConfig {
            invoices: 30,
            ..Default::default()
        },
        |c| {
            transfer_of(c, "invoices");
            c.record_types.get_mut("invoices").unwrap().id_pointer = "/invoice_id".into();
        },
    )
    .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
    let report = w.drive_report().await;
    assert_eq!(report.dead.len(), 2, "{:?}", report.dead);
    assert!(
        report
            .dead
            .iter()
            .all(|d| d.contains("every one of the 30 records")),
        "{:?}",
        report.dead
    );
    for org in ORGS {
        let q = w.store.quarantined(&w.svc.key(org), 100).await.unwrap();
        assert_eq!(q.len(), 30, "{org}");
        assert!(q[0].reason.contains("/invoice_id"), "{q:?}");
    }
}

metered_tests::on_both!(
    every_hostile_switch_costs_a_bounded_retry_and_loses_nothing,
    an_api_that_ignores_the_page_parameter_never_loops,
    an_api_that_caps_its_page_size_is_found_out_once,
    a_short_listing_is_probed_once,
    a_failed_first_transfer_is_not_restarted_by_every_lookup,
    bad_records_are_quarantined_and_the_rest_stored,
    a_transfer_of_only_quarantined_records_is_a_failure,
    a_repeating_cursor_or_next_link_fails_instead_of_looping,
    broken_bodies_are_retried_from_the_checkpoint,
    a_persistently_broken_api_is_given_up_on_after_five_attempts,
);
