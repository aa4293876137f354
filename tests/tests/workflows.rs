//! Workflows end to end against the simulated API, on both adapter sets:
//! decision nodes, exactly-once actions, related-record relookups, bulk
//! executions under a tight budget, and dry runs.

use metered::config::{CompleteTransferSettings, SyncConfig};
use metered::handlers::RunPayload;
use metered::jobs::{JobEnvelope, JobKind};
use metered::AppConfig;
use metered::Limits;
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World, ORG, ORGS};

fn transfer() -> SyncConfig {
    SyncConfig {
        complete_transfer: Some(CompleteTransferSettings {
            every: std::time::Duration::from_secs(86_400),
        }),
        ..Default::default()
    }
}

fn workflow(c: &mut AppConfig, toml: &str) {
    metered_tests::add_workflows(c, toml);
}

/// Customers: 10% pass (`score < 10`); each passing one gets a note (HTTP)
/// and a Data Source row (pushed 30 a call).
const VIP: &str = r#"
[workflows.vip]
trigger = { record_type = "customers", on = ["updated"] }
conditions = ["record.score < 10"]
[[workflows.vip.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { customer = "{{ record.id }}", text = "Hello {{ record.name }}" }
[[workflows.vip.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}", score = "{{ record.score }}" }
max_rows_per_call = 30
"#;

async fn run_bulk(w: &World, name: &str, dry_run: bool) -> JobEnvelope {
    run_bulk_for(w, ORG, name, dry_run).await
}

async fn run_bulk_for(w: &World, org: &str, name: &str, dry_run: bool) -> JobEnvelope {
    run_workflow(w, org, name, None, dry_run).await
}

/// Enqueues a manual (`ids`) or bulk (`None`) run of workflow `name`.
async fn run_workflow(
    w: &World,
    org: &str,
    name: &str,
    ids: Option<Vec<String>>,
    dry_run: bool,
) -> JobEnvelope {
    let payload = serde_json::to_value(RunPayload {
        workflow: name.into(),
        ids,
        dry_run,
    })
    .unwrap();
    let job = JobEnvelope::new(
        JobKind::Workflow,
        org,
        "sim-booking",
        payload,
        w.shared.now(),
    );
    w.svc.queues.send(&job, 0).await.unwrap();
    job
}

async fn decision_nodes_spend_only_on_passing_records(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 1_000,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(c, VIP);
        })
        .workflows()
        .build()
        .await;
    // Two orgs whose customers have the same ids; each runs its own bulk
    // execution and gets its own notes and rows.
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    let before = w.sim().stats();
    assert_eq!(
        before.calls("POST /notes"),
        0,
        "created records do not trigger an `updated` workflow"
    );
    let handler = metered::handlers::WorkflowHandler::new(w.svc.clone()).unwrap();
    let estimate = handler.estimate(ORG, "vip", None).await.unwrap();
    assert_eq!((estimate.records, estimate.passing), (1_000, 100));
    assert_eq!(
        (estimate.http_actions, estimate.datasource_calls),
        (100, 4),
        "{estimate:?}"
    );
    for org in ORGS {
        run_bulk_for(&w, org, "vip", true).await;
    }
    w.drive().await;
    assert_eq!(
        w.sim().stats().served(),
        before.served(),
        "a dry run spends nothing"
    );
    for org in ORGS {
        run_bulk_for(&w, org, "vip", false).await;
    }
    w.drive().await;
    let stats = w.sim().stats();
    let passing: std::collections::BTreeSet<String> = w
        .sim()
        .records("customers")
        .iter()
        .filter(|r| r["score"].as_u64().unwrap() < 10)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for org in ORGS {
        let key = &w.api_keys[org];
        assert_eq!(
            stats.calls_of(key, "POST /notes"),
            100,
            "{org}: exactly the passing records"
        );
        assert_eq!(
            stats.calls_of(key, "POST /datasources/{name}/rows"),
            4,
            "{org}: ceil(100 / 30)"
        );
        let spent = stats.calls_by_key.get(key).copied().unwrap_or(0)
            - before.calls_by_key.get(key).copied().unwrap_or(0);
        assert_eq!(spent, estimate.total_calls, "{org}: the estimate was exact");
        let pushed: std::collections::BTreeSet<String> = w
            .sim()
            .datasource_rows_of(key, "vips")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(pushed, passing, "{org}");
    }
    assert!(stats.creates_by_idempotency_key.values().all(|n| *n == 1));
}

async fn actions_fire_once_under_duplicates_restarts_and_crashes(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 200,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(c, VIP);
            c.connections[0].limits = Some(Limits::new(Some(2_500), None, None, 1).unwrap());
        })
        .workflows()
        .build()
        .await;
    w.start(JobKind::CompleteTransfer, "customers").await;
    w.drive().await;
    // A simulated crash between call and mark: the first attempt of one
    // action reached the API but was never marked done.
    let target = w
        .sim()
        .records("customers")
        .into_iter()
        .find(|r| r["score"].as_u64().unwrap() < 10)
        .unwrap();
    let stored = w
        .store
        .get(
            &w.key(),
            "customers",
            &[target["id"].as_str().unwrap().to_string()],
        )
        .await
        .unwrap()
        .remove(0);
    let crashed_key = format!("vip:0:{}:{}", stored.id, stored.hash);
    // Duplicate deliveries and a changed record arrive as triggers.
    w.sim()
        .modify_ids("customers", std::slice::from_ref(&stored.id));
    let job = run_bulk(&w, "vip", false).await;
    w.svc.queues.send(&job, 0).await.unwrap(); // the same workflow job twice
    w.drive().await;
    let stats = w.sim().stats();
    let notes = stats.calls("POST /notes");
    assert_eq!(notes, 20, "200 customers, 10% pass, one note each");
    assert!(
        stats.creates_by_idempotency_key.values().all(|n| *n == 1),
        "{:?}",
        stats.creates_by_idempotency_key
    );
    assert_eq!(stats.creates_by_idempotency_key.len(), 20);
    // Now the crash: begin the action, make the call, never mark it.
    let key = format!("{crashed_key}:replay");
    w.action_ledger
        .begin_action(&w.key(), &key, w.shared.now(), w.shared.now())
        .await
        .unwrap();
    let req = metered::connector::SendRequest {
        method: "POST".into(),
        path: "/notes".into(),
        body: Some(serde_json::json!({})),
        idempotency_key: Some(key.clone()),
    };
    metered::connector::Connector::send(&*w.fx.connector, &req)
        .await
        .unwrap();
    let payload = metered::handlers::HttpActionPayload {
        workflow: "vip".into(),
        action: 0,
        record_id: stored.id.clone(),
        method: "POST".into(),
        path: "/notes".into(),
        body: Some(serde_json::json!({})),
        background: false,
    };
    let mut action = JobEnvelope::new(
        JobKind::ActionHttp,
        ORG,
        "sim-booking",
        serde_json::to_value(payload).unwrap(),
        w.shared.now(),
    );
    action.idempotency_key = key.clone();
    w.svc.queues.send(&action, 0).await.unwrap();
    w.svc.queues.send(&action, 0).await.unwrap();
    w.drive().await;
    let stats = w.sim().stats();
    assert_eq!(
        stats.create_requests_by_idempotency_key.get(&key),
        Some(&2),
        "called again after the crash, with the same key: {key} not in {:?}",
        stats
            .create_requests_by_idempotency_key
            .iter()
            .filter(|(k, _)| k.contains("cus_00000"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stats.creates_by_idempotency_key.get(&key),
        Some(&1),
        "performed once"
    );
    assert_eq!(w.dead_letters().await, 0);
}

async fn a_missing_related_record_waits_for_one_relookup(adapter: Adapter) {
    let w = World::builder(adapter)
.sim(SimConfig { customers: 450, invoices: 1_150, ..Default::default() })
.config(|c| {
        c.syncs.insert("invoices".into(), transfer());
        c.syncs.insert("customers".into(), transfer());
        workflow(
            c,
            r#"
[workflows.gold_invoices]
trigger = { record_type = "invoices" }
conditions = ["related.customer.tier == 'gold'", "record.status == 'paid'"]
related.customer = { via = "/customer_id", record_type = "customers", missing = "transfer", min_relookup = "1h" }
[[workflows.gold_invoices.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { invoice = "{{ record.id }}", customer = "{{ related.customer.name }}" }
"#,
        );
    })
.workflows()
.build()
.await;
    w.start(JobKind::CompleteTransfer, "invoices").await;
    let report = w.drive().await;
    assert!(
        report
            .restarts
            .iter()
            .any(|r| r.contains("waiting for a related record")),
        "{:?}",
        report.restarts
    );
    let stats = w.sim().stats();
    assert_eq!(
        stats.calls("GET /customers"),
        3,
        "one customers transfer for six waiting workflow jobs (450 at 200 a page)"
    );
    let customers = w.sim().records("customers");
    let gold = |id: &str| {
        customers
            .iter()
            .any(|c| c["id"] == id && c["tier"] == "gold")
    };
    let expected = w
        .sim()
        .records("invoices")
        .iter()
        .filter(|i| i["status"] == "paid" && gold(i["customer_id"].as_str().unwrap()))
        .count();
    assert_eq!(
        stats.calls("POST /notes") as usize,
        expected,
        "every passing invoice got its action once the customers arrived"
    );
    assert_eq!(w.dead_letters().await, 0);
}

/// 1,000 customers transferred under `limits`, of whom 200 match `vip`
/// (one POST each, their rows in one Data Source push), the bulk run not
/// yet started.
async fn bulk_world(adapter: Adapter, limits: Limits) -> World {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 1_000,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(
                c,
                &VIP.replace("record.score < 10", "record.score < 20")
                    .replace("max_rows_per_call = 30", "max_rows_per_call = 1000"),
            );
            c.connections[0].limits = Some(limits);
        })
        .workflows()
        .build()
        .await;
    w.start(JobKind::CompleteTransfer, "customers").await;
    w.drive().await;
    w
}

async fn a_bulk_execution_over_budget_spreads_over_windows(adapter: Adapter) {
    let w = bulk_world(adapter, Limits::new(Some(60), None, None, 3).unwrap()).await;
    let day0 = w.shared.now().date_naive();
    run_bulk(&w, "vip", false).await;
    let report = w.drive().await;
    let stats = w.sim().stats();
    assert_eq!(stats.calls("POST /notes"), 200, "nothing lost");
    assert_eq!(stats.creates_by_idempotency_key.len(), 200);
    assert!(stats.creates_by_idempotency_key.values().all(|n| *n == 1));
    assert_eq!(stats.datasource_pushes, 1);
    assert!(
        stats.calls_by_key_day.values().all(|n| *n <= 60),
        "{:?}",
        stats.calls_by_key_day
    );
    assert!(
        (w.shared.now().date_naive() - day0).num_days() >= 3,
        "205 calls at 60 a day take four windows"
    );
    assert!(
        report.restarts.iter().any(|r| r.contains("day limit")),
        "{:?}",
        report.restarts
    );
    assert_eq!(w.dead_letters().await, 0);
}

/// A bulk run is background work: with `background_percent = 50` the
/// transfer and the run's actions take at most half of a day until its
/// last tenth (21:36), when they wake for the held half, lent because no
/// interactive work came for it. Nothing lost, no day over.
async fn a_bulk_run_is_held_to_background_percent(adapter: Adapter) {
    let mut limits = Limits::new(Some(100), None, None, 3).unwrap();
    limits.background_percent = 50;
    let w = bulk_world(adapter, limits).await;
    run_bulk(&w, "vip", false).await;
    w.drive().await;
    let stats = w.sim().stats();
    assert_eq!(stats.calls("POST /notes"), 200, "nothing lost");
    assert!(stats.creates_by_idempotency_key.values().all(|n| *n == 1));
    assert!(
        stats.calls_by_key_day.values().all(|n| *n <= 100),
        "{:?}",
        stats.calls_by_key_day
    );
    let mut early = std::collections::BTreeMap::<&str, u64>::new();
    let mut late = 0;
    for ((_, minute), n) in &stats.calls_by_key_minute {
        let (day, time) = minute.split_at(10);
        if time < "T21:36" {
            *early.entry(day).or_default() += n;
        } else {
            late += n;
        }
    }
    // Day 0: 50 background calls and the Data Source push, which is
    // interactive (an outbox's rows may be a triggered run's too).
    assert_eq!(early.remove("2026-11-22"), Some(51), "{early:?}");
    assert!(early.values().all(|n| *n <= 50), "held to half: {early:?}");
    assert!(late >= 50, "woken when the held half is lent: {late}");
    assert_eq!(w.dead_letters().await, 0);
}

/// What a function's logs say it did is what the API saw, per org: the EMF
/// lines the Lambda edge writes after an invocation, parsed back, for two
/// orgs whose customers have the same ids, one of them on a budget tight
/// enough to be refused and restarted.
async fn metrics_count_what_the_api_saw(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 300,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(c, &VIP.replace("record.score < 10", "record.score < 20"));
            c.connections[0].limits = Some(Limits::new(Some(40), None, None, 3).unwrap());
        })
        .workflows()
        .build()
        .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    for org in ORGS {
        run_bulk_for(&w, org, "vip", false).await;
    }
    w.drive().await;
    let mut out = Vec::new();
    let now = w.shared.now();
    metered::edge::lambda::write_emf(&w.svc.metrics, JobKind::Workflow, 24, now, &mut out);
    let mut sums: std::collections::BTreeMap<(String, String), f64> = Default::default();
    let mut burn: std::collections::BTreeMap<String, f64> = Default::default();
    for line in String::from_utf8(out).unwrap().lines() {
        let doc: serde_json::Value = serde_json::from_str(line).expect("one JSON document a line");
        let org = doc["Org"].as_str().expect("Org property").to_string();
        assert_eq!(doc["Function"], "workflow");
        for d in doc["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            for m in d["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap().to_string();
                let v = doc[&name]
                    .as_f64()
                    .expect("a metric is a number at the root");
                if name == "BudgetUsedPercent" {
                    burn.insert(org.clone(), v);
                } else if name != "BudgetUsedPercentEarly" {
                    *sums.entry((org.clone(), name)).or_default() += v;
                }
            }
        }
    }
    let get = |org: &str, name: &str| {
        sums.get(&(org.to_string(), name.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    let stats = w.sim().stats();
    for org in ORGS {
        let key = &w.api_keys[org];
        assert_eq!(
            get(org, "CallsMade") as u64,
            stats.calls_by_key.get(key).copied().unwrap_or(0),
            "{org}: calls in the metrics = calls the API served; {sums:?}"
        );
        let performed = stats.created_by_key.get(key).map_or(0, Vec::len) as u64;
        assert!(performed > 0, "{org}: the workflow acted");
        assert_eq!(get(org, "ActionsPerformed") as u64, performed, "{org}");
        let pushes = stats.pushes_by_key.get(key).copied().unwrap_or(0);
        assert!(pushes > 0, "{org}: the outbox was flushed");
        assert_eq!(get(org, "PushesSent") as u64, pushes, "{org}");
        assert_eq!(
            get(org, "RowsPushed") as usize,
            w.sim().datasource_rows_of(key, "vips").len(),
            "{org}: every row pushed once"
        );
        assert_eq!(
            get(org, "RecordsSynced") as u64,
            300,
            "{org}: every customer stored once"
        );
        assert_eq!(get(org, "DeadLetters"), 0.0, "{org}");
        assert!(get(org, "JobsDone") >= 2.0, "{org}: {sums:?}");
    }
    assert!(get(ORG, "DenialsDayLimit") >= 1.0, "{sums:?}");
    assert!(get(ORG, "Restarts") >= 1.0, "{sums:?}");
    assert_eq!(
        get(metered_tests::sync_world::ORG_B, "DenialsDayLimit"),
        0.0
    );
    // The burn is the last day's count against org A's 40 a day.
    let last_day = stats
        .calls_by_key_day
        .iter()
        .filter(|((k, _), _)| k == &w.api_keys[ORG])
        .max_by_key(|((_, day), _)| day.clone())
        .map(|(_, n)| *n)
        .unwrap();
    assert_eq!(burn[ORG], last_day as f64 * 100.0 / 40.0, "{burn:?}");
    let mut again = Vec::new();
    metered::edge::lambda::write_emf(&w.svc.metrics, JobKind::Workflow, 24, now, &mut again);
    assert!(again.is_empty(), "each count is written once");
}

/// Rows only: every updated customer becomes a row of `vips`, deleted when
/// its score is 95 or more; the outbox flushes every 5 minutes, 100 a call.
const ROWS: &str = r#"
[workflows.rows]
trigger = { record_type = "customers", on = ["updated"] }
[[workflows.rows.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}", score = "{{ record.score }}" }
delete_when = "record.score >= 95"
"#;

/// Sends manual runs of `rows` over `ids`, `per_job` ids a job, for `org`.
async fn run_rows(w: &World, org: &str, ids: &[String], per_job: usize) {
    for chunk in ids.chunks(per_job) {
        run_workflow(w, org, "rows", Some(chunk.to_vec()), false).await;
    }
}

/// The issue's count: rows that many workflow jobs produce within one
/// flush interval leave in `ceil(rows / max_rows_per_call)` push calls, not
/// one per job; a full call's worth goes at once, the rest when `every` is
/// up; a crash after a push, before its rows leave, repeats that push under
/// the same key (applied once). Two orgs whose customers share ids each get
/// their own rows.
async fn an_outbox_flush_spends_ceil_rows_over_max_calls(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 400,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(c, ROWS);
            c.datasources.insert(
                "vips".into(),
                toml::from_str("every = \"5m\"\nmax_rows_per_call = 100").unwrap(),
            );
        })
        .workflows()
        .build()
        .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    let customers = w.sim().records("customers");
    let ids: Vec<String> = customers
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let pushes = |org: &str| {
        w.sim()
            .stats()
            .calls_of(&w.api_keys[org], "POST /datasources/{name}/rows")
    };
    // 91 rows from 13 workflow jobs: one call, when the interval is up.
    let t0 = w.shared.now();
    for org in ORGS {
        run_rows(&w, org, &ids[..91], 7).await;
    }
    w.drive().await;
    for org in ORGS {
        assert_eq!(pushes(org), 1, "{org}: ceil(91 / 100), not one per job");
        let state = w.store.outbox_state(&w.svc.key(org), "vips").await.unwrap();
        assert!(
            state
                .last_flush
                .is_some_and(|t| t >= t0 + chrono::Duration::minutes(5)),
            "{org}: a partial call waits for `every`: {state:?}"
        );
        assert_eq!((state.pushes, state.rows_pushed), (1, 91), "{org}");
    }
    // 250 more rows from 25 jobs, and a crash after the next push before
    // its rows leave: 3 calls each, plus one repeat.
    w.faults.at(
        "outbox.ack",
        Some(JobKind::ActionDatasourcePush),
        w.faults.hits("outbox.ack") + 1,
        metered_tests::faults::Fault::Crash,
    );
    for org in ORGS {
        run_rows(&w, org, &ids[91..341], 10).await;
    }
    let report = w.drive().await;
    assert_eq!(report.crashes, 1);
    let stats = w.sim().stats();
    let repeated: Vec<_> = stats
        .push_requests_by_idempotency_key
        .iter()
        .filter(|(_, n)| **n > 1)
        .collect();
    assert_eq!(
        repeated.len(),
        1,
        "the crashed push was sent again: {repeated:?}"
    );
    assert_eq!(*repeated[0].1, 2);
    assert!(
        stats.pushes_by_idempotency_key.values().all(|n| *n == 1),
        "every chunk applied once"
    );
    let mut extra = 0;
    for org in ORGS {
        let key = w.svc.key(org);
        let state = w.store.outbox_state(&key, "vips").await.unwrap();
        assert_eq!(
            (state.pushes, state.rows_pushed),
            (1 + 3, 91 + 250),
            "{org}"
        );
        extra += pushes(org) - 4;
        assert_eq!(
            w.store.pending_count(&key, "vips").await.unwrap(),
            0,
            "{org}"
        );
        // What the Data Source holds: every row of a customer under 95, none of the others.
        let held: std::collections::BTreeSet<String> = w
            .sim()
            .datasource_rows_of(&w.api_keys[org], "vips")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let expected: std::collections::BTreeSet<String> = customers[..341]
            .iter()
            .filter(|r| r["score"].as_u64().unwrap() < 95)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(held, expected, "{org}");
    }
    assert_eq!(extra, 1, "one repeated call in all, after the crash");
    assert_eq!(w.dead_letters().await, 0);
}

/// A platform that refuses one row (422, naming it): the chunk is halved
/// until that row stands alone, the row is set aside with the API's reason,
/// every other row arrives, and the whole costs a bounded handful of extra
/// calls, once. `retry` after the fix sends it. Rows are keyed by their own
/// `id` (`v-…`, not the record's). Before the fix the refused chunk stayed
/// in flight and was re-sent at every timed flush, forever, dead-lettering
/// each flush and stalling the Data Source.
async fn a_refused_row_costs_only_that_row(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 200,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(
                c,
                &ROWS.replace("id = \"{{ record.id }}\"", "id = \"v-{{ record.id }}\""),
            );
            c.datasources.insert(
                "vips".into(),
                toml::from_str("every = \"5m\"\nmax_rows_per_call = 100").unwrap(),
            );
        })
        .workflows()
        .build()
        .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    let customers = w.sim().records("customers");
    let kept: Vec<String> = customers
        .iter()
        .filter(|r| r["score"].as_u64().unwrap() < 95)
        .map(|r| format!("v-{}", r["id"].as_str().unwrap()))
        .collect();
    let bad = kept[57].clone();
    w.sim().faults().refuse_row_ids.insert(bad.clone());
    let ids: Vec<String> = customers
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for org in ORGS {
        run_rows(&w, org, &ids, 20).await;
    }
    w.drive().await;
    let pushes = |org: &str| {
        w.sim()
            .stats()
            .calls_of(&w.api_keys[org], "POST /datasources/{name}/rows")
    };
    let held = |org: &str| -> std::collections::BTreeSet<String> {
        w.sim()
            .datasource_rows_of(&w.api_keys[org], "vips")
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    for org in ORGS {
        let key = w.svc.key(org);
        let expected: std::collections::BTreeSet<String> =
            kept.iter().filter(|id| **id != bad).cloned().collect();
        assert_eq!(held(org), expected, "{org}: every other row arrived");
        let refused = w.store.refused_rows(&key, "vips", 10).await.unwrap();
        assert_eq!(refused.len(), 1, "{org}: {refused:?}");
        assert_eq!(refused[0].id, bad);
        assert!(
            refused[0].reason.contains("HTTP 422") && refused[0].reason.contains(&bad),
            "{org}: the API's reason: {}",
            refused[0].reason
        );
        assert_eq!(w.store.pending_count(&key, "vips").await.unwrap(), 0);
        // 200 rows at 100 a call: 2, and the search for the row: at most
        // two calls per halving of 100.
        let calls = pushes(org);
        assert!(
            (3..=2 + 2 * 7).contains(&calls),
            "{org}: {calls} push calls"
        );
    }
    assert_eq!(w.dead_letters().await, 0, "nothing dead-lettered");
    // Later flushes never send it again; after the platform's fix, a retry does.
    let before: Vec<u64> = ORGS.iter().map(|o| pushes(o)).collect();
    for org in ORGS {
        run_rows(&w, org, &ids[..10], 10).await;
    }
    w.drive().await;
    for (org, calls) in ORGS.iter().zip(&before) {
        assert!(
            pushes(org) <= calls + 1,
            "{org}: the refused row is not re-sent"
        );
        assert_eq!(
            w.store
                .refused_rows(&w.svc.key(org), "vips", 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    w.sim().faults().refuse_row_ids.clear();
    let now = w.shared.now();
    for org in ORGS {
        let key = w.svc.key(org);
        assert_eq!(
            w.store
                .retry_refused(&key, "vips", None, now)
                .await
                .unwrap(),
            1
        );
        let ds = w.svc.config.datasource("vips").unwrap();
        metered::handlers::schedule_flush(&w.svc, org, &ds, true)
            .await
            .unwrap();
    }
    w.drive().await;
    for org in ORGS {
        assert!(held(org).contains(&bad), "{org}: sent after the retry");
        assert_eq!(
            w.store
                .pending_count(&w.svc.key(org), "vips")
                .await
                .unwrap(),
            0
        );
    }
}

/// A condition that is `null` for some records (the usual JSON for an unset
/// boolean) sets exactly those records aside, each quarantined with the
/// reason, and every other record of the run gets its action: nothing is
/// dead-lettered. Before the fix a non-boolean failed the whole job as a
/// config error, and a redrive failed the same way.
async fn a_null_condition_costs_only_its_record(adapter: Adapter) {
    let w = World::builder(adapter)
        .sim(SimConfig {
            customers: 300,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(
                c,
                &VIP.replace(
                    "record.score < 10",
                    "record.score < 10 ? (record.score == 3 ? null : true) : false",
                ),
            );
        })
        .workflows()
        .build()
        .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    for org in ORGS {
        run_bulk_for(&w, org, "vip", false).await;
    }
    w.drive().await;
    let scores: Vec<u64> = w
        .sim()
        .records("customers")
        .iter()
        .map(|r| r["score"].as_u64().unwrap())
        .collect();
    let passing = scores.iter().filter(|s| **s < 10 && **s != 3).count() as u64;
    let nulls = scores.iter().filter(|s| **s == 3).count();
    assert!(passing > 0 && nulls > 0, "{passing} {nulls}");
    let stats = w.sim().stats();
    for org in ORGS {
        assert_eq!(
            stats.calls_of(&w.api_keys[org], "POST /notes"),
            passing,
            "{org}: every record with a boolean answer was decided"
        );
        let q = w.store.quarantined(&w.svc.key(org), 1_000).await.unwrap();
        assert_eq!(q.len(), nulls, "{org}: {q:?}");
        assert!(
            q.iter()
                .all(|e| e.reason.contains("conditions[0]") && e.reason.contains("got null")),
            "{q:?}"
        );
    }
    assert_eq!(w.dead_letters().await, 0);
}

#[test]
fn bad_workflow_configs_are_rejected_at_load() {
    let base = metered_sim::app_config("http://127.0.0.1:1/");
    let cases = [
        ("[workflows.w]\ntrigger = { record_type = \"orders\" }\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "workflows.w.trigger.record_type: unknown record type `orders`"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\nconditions = [\"record.score <\"]\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "workflows.w.conditions[0]: invalid CEL expression"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\nconditions = [\"customer.score < 3\"]\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "unknown variable `customer`"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\nfilter = \"x\"\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "unknown field `filter`"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x/{{ related.owner.id }}\"", "workflows.w.actions[0].path: template {{ related.owner.id }}"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\n[[workflows.w.actions]]\nkind = \"teleport\"", "unknown variant `teleport`"),
        ("[workflows.w]\ntrigger = { record_type = \"invoices\" }\nrelated.c = { via = \"/customer_id\", record_type = \"customers\" }\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "`transfer` needs syncs.customers.complete_transfer"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\nconditions = [\"record.email.matches('@example')\"]\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "workflows.w.conditions[0]: CEL function `matches` is not available"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\nconditions = [\"timestamp(record.updated_at) > timestamp(now)\"]\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"", "CEL function `timestamp` is not available"),
        ("[workflows.w]\ntrigger = { record_type = \"customers\" }\n[[workflows.w.actions]]\nkind = \"http\"\nmethod = \"POST\"\npath = \"/x\"\nbody = { text = \"Thank you, {{ record.name }\" }", "workflows.w.actions[0].body: template \"Thank you, {{ record.name }\": a `{{` is not closed by `}}`"),
    ];
    for (extra, expected) in cases {
        let err = AppConfig::parse(&format!("{base}\n{extra}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
    let err = AppConfig::parse(&format!("{base}\n{}\n", cases[1].0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":1:"),
        "the CEL error carries its position: {err}"
    );
}

metered_tests::on_both!(
    decision_nodes_spend_only_on_passing_records,
    actions_fire_once_under_duplicates_restarts_and_crashes,
    a_missing_related_record_waits_for_one_relookup,
    a_bulk_execution_over_budget_spreads_over_windows,
    a_bulk_run_is_held_to_background_percent,
    metrics_count_what_the_api_saw,
    an_outbox_flush_spends_ceil_rows_over_max_calls,
    a_null_condition_costs_only_its_record,
    a_refused_row_costs_only_that_row,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_workflow_runs_over_stored_records_at_its_interval() {
    let w = World::builder(Adapter::Sqlite)
        .sim(SimConfig {
            customers: 300,
            ..Default::default()
        })
        .config(|c| {
            c.syncs.insert("customers".into(), transfer());
            workflow(
                c,
                &VIP.replace(
                    "on = [\"updated\"] }",
                    "on = [\"updated\"] }\nschedule = \"12h\"",
                ),
            );
        })
        .workflows()
        .build()
        .await;
    w.start(JobKind::CompleteTransfer, "customers").await;
    w.drive().await;
    let started = metered::handlers::schedule::tick(&w.svc).await.started;
    assert!(
        started.iter().any(|j| j.kind == JobKind::Workflow),
        "the scheduled workflow starts"
    );
    w.drive().await;
    // The tick started org B's first transfer too; each org's schedule runs
    // over its own records.
    for org in ORGS {
        assert_eq!(
            w.sim().stats().calls_of(&w.api_keys[org], "POST /notes"),
            30,
            "{org}: 300 customers, 10% pass"
        );
    }
    assert!(
        metered::handlers::schedule::tick(&w.svc)
            .await
            .started
            .iter()
            .all(|j| j.kind != JobKind::Workflow),
        "not again before 12 h"
    );
    w.clock.advance(chrono::Duration::hours(12));
    assert!(
        metered::handlers::schedule::tick(&w.svc)
            .await
            .started
            .iter()
            .any(|j| j.kind == JobKind::Workflow),
        "again after 12 h"
    );
    w.drive().await;
    for org in ORGS {
        assert_eq!(
            w.sim().stats().calls_of(&w.api_keys[org], "POST /notes"),
            60,
            "{org}: a new bulk execution is a new trigger"
        );
    }
}
