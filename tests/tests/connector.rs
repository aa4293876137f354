//! The declarative REST connector against the simulated API: pagination
//! styles, page sizes, time windows, bulk lookups, response classes,
//! quota integration, and secrets kept out of errors and logs.

use chrono::Duration;
use metered::connector::{ApiError, CallError, Connector, ListRequest, Metered, PageCursor};
use metered::core::{SharedClock, SystemClock};
use metered::handlers::IntoOutcome;
use metered::quota::Limits;
use metered_sim::{RetryAfterStyle, SimConfig};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;
use metered_tests::{manual_clock, sim_fixture, sim_fixture_with, SimFixture};
use std::collections::BTreeSet;
use std::sync::Arc;

/// One org's budget on in-memory SQLite, for the simulator's app.
async fn sqlite_budget() -> Budget {
    Budget::on(Adapter::Sqlite).app("sim").build().await
}

fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Lists every page of a type; returns (ids, calls made).
async fn list_all(fx: &SimFixture, record_type: &str) -> (Vec<String>, u64) {
    let before = fx.sim().stats().served();
    let mut ids = Vec::new();
    let mut cursor: Option<PageCursor> = None;
    loop {
        let page = fx
            .connector
            .list(&ListRequest {
                record_type: record_type.into(),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.extend(page.records.into_iter().map(|r| r.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(ids.len() < 100_000, "pagination never ended");
    }
    (ids, fx.sim().stats().served() - before)
}

fn unique(ids: &[String]) -> usize {
    ids.iter().collect::<BTreeSet<_>>().len()
}

#[tokio::test]
async fn cursor_pagination_uses_the_largest_page() {
    let fx = sim_fixture(
        SimConfig {
            customers: 450,
            ..Default::default()
        },
        system(),
    )
    .await;
    let (ids, calls) = list_all(&fx, "customers").await;
    assert_eq!((ids.len(), unique(&ids)), (450, 450));
    assert_eq!(calls, 3, "ceil(450 / 200)");
    assert_eq!(
        fx.sim()
            .stats()
            .page_sizes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![200]
    );
}

#[tokio::test]
async fn link_header_pagination() {
    let fx = sim_fixture(
        SimConfig {
            classes: 250,
            ..Default::default()
        },
        system(),
    )
    .await;
    let (ids, calls) = list_all(&fx, "classes").await;
    assert_eq!((ids.len(), unique(&ids)), (250, 250));
    assert_eq!(calls, 3, "ceil(250 / 100), the config's max for classes");
    assert_eq!(
        fx.sim()
            .stats()
            .page_sizes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![100]
    );
}

#[tokio::test]
async fn page_number_pagination() {
    let fx = sim_fixture(
        SimConfig {
            invoices: 1_150,
            ..Default::default()
        },
        system(),
    )
    .await;
    let (ids, calls) = list_all(&fx, "invoices").await;
    assert_eq!((ids.len(), unique(&ids)), (1_150, 1_150));
    assert_eq!(calls, 6, "ceil(1150 / 200): the short last page ends it");
}

#[tokio::test]
async fn offset_pagination_and_configured_smaller_page() {
    let fx = sim_fixture_with(
        SimConfig {
            checkins: 330,
            ..Default::default()
        },
        system(),
        |c| {
            c.record_types.get_mut("checkins").unwrap().page_size = Some(100);
        },
    )
    .await;
    let (ids, calls) = list_all(&fx, "checkins").await;
    assert_eq!((ids.len(), unique(&ids)), (330, 330));
    assert_eq!(calls, 4);
    assert_eq!(
        fx.sim()
            .stats()
            .page_sizes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![100]
    );
}

#[tokio::test]
async fn modified_since_and_until_windows() {
    let (clock, shared) = manual_clock();
    let fx = sim_fixture(SimConfig::default(), shared.clone()).await;
    let start = shared.now();
    clock.advance(Duration::minutes(1));
    let changed: BTreeSet<String> = fx.sim().modify("customers", 7).into_iter().collect();
    clock.advance(Duration::minutes(1));
    let later: BTreeSet<String> = fx.sim().modify("invoices", 3).into_iter().collect();
    let window = |rt: &str, since, until| ListRequest {
        record_type: rt.into(),
        cursor: None,
        modified_since: Some(since),
        modified_until: until,
        page_size: None,
    };
    let page = fx
        .connector
        .list(&window("customers", start, None))
        .await
        .unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>(),
        changed
    );
    assert!(page
        .records
        .iter()
        .all(|r| r.updated_at.is_some_and(|t| t >= start)));
    let page = fx
        .connector
        .list(&window(
            "invoices",
            start,
            Some(start + Duration::seconds(90)),
        ))
        .await
        .unwrap();
    assert!(
        page.records.is_empty(),
        "the until bound excludes later changes"
    );
    let page = fx
        .connector
        .list(&window("invoices", start + Duration::seconds(90), None))
        .await
        .unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>(),
        later
    );
    // Unix-seconds time format (checkins).
    let since = shared.now();
    clock.advance(Duration::seconds(5));
    let touched: BTreeSet<String> = fx.sim().modify("checkins", 4).into_iter().collect();
    let page = fx
        .connector
        .list(&window("checkins", since, None))
        .await
        .unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.id.clone())
            .collect::<BTreeSet<_>>(),
        touched
    );
}

#[tokio::test]
async fn bulk_lookups_split_at_the_maximum_ids_per_call() {
    let fx = sim_fixture(SimConfig::default(), system()).await;
    let ids: Vec<String> = (0..120).map(|i| format!("cus_{i:05}")).collect();
    let max = fx.connector.max_ids_per_call("customers");
    assert_eq!(max, 50);
    let mut found = Vec::new();
    for chunk in ids.chunks(max) {
        found.extend(
            fx.connector
                .lookup("customers", chunk)
                .await
                .unwrap()
                .records,
        );
    }
    assert_eq!(found.len(), 120);
    assert_eq!(
        fx.sim().stats().calls("GET /customers (by ids)"),
        3,
        "ceil(120 / 50)"
    );
    // Repeated-parameter style.
    let inv: Vec<String> = (0..50).map(|i| format!("inv_{i:06}")).collect();
    assert_eq!(
        fx.connector
            .lookup("invoices", &inv)
            .await
            .unwrap()
            .records
            .len(),
        50
    );
    // One id per call where there is no bulk endpoint; 404 is "not there".
    assert_eq!(fx.connector.max_ids_per_call("classes"), 1);
    let one = fx
        .connector
        .lookup("classes", &["cls_001".to_string()])
        .await
        .unwrap();
    assert_eq!(one.records.len(), 1);
    assert!(fx
        .connector
        .lookup("classes", &["cls_999".to_string()])
        .await
        .unwrap()
        .records
        .is_empty());
    assert_eq!(fx.sim().stats().calls("GET /classes/{id}"), 2);
}

fn customers() -> ListRequest {
    ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn response_classes_map_to_outcomes() {
    let (_clock, shared) = manual_clock();
    let now = shared.now();
    let fx = sim_fixture(SimConfig::default(), shared).await;
    let req = customers();
    let list = || fx.connector.list(&req);

    fx.sim().faults().next_5xx = 1;
    assert!(matches!(list().await, Err(ApiError::Retryable(m)) if m.contains("HTTP 502")));

    {
        let mut f = fx.sim().faults();
        f.next_429 = 1;
        f.burst_retry_after_secs = 42;
    }
    assert_eq!(
        list().await.unwrap_err(),
        ApiError::RateLimited {
            status: 429,
            retry_at: now + Duration::seconds(42)
        }
    );

    {
        let mut f = fx.sim().faults();
        f.next_429 = 1;
        f.burst_retry_after_secs = 300;
        f.retry_after_style = RetryAfterStyle::HttpDate;
    }
    assert_eq!(
        list().await.unwrap_err(),
        ApiError::RateLimited {
            status: 429,
            retry_at: now + Duration::seconds(300)
        }
    );

    fx.sim().faults().next_503_retry_after = 1;
    assert!(matches!(
        list().await,
        Err(ApiError::RateLimited { status: 503, .. })
    ));

    // A 2xx whose body is not JSON is retried (a bounded number of times):
    // proxies and cut connections produce them as often as broken APIs.
    fx.sim().faults().next_malformed_json = 1;
    assert!(matches!(list().await, Err(ApiError::Retryable(m)) if m.contains("not valid JSON")));

    fx.sim().faults().next_truncated_body = 1;
    let r = list().await;
    // Depending on timing hyper sees the abort while reading headers or body.
    assert!(
        matches!(&r, Err(ApiError::Retryable(m)) if m.contains("cut short") || m.contains("in transit")),
        "truncated body: {r:?}"
    );

    fx.sim().faults().next_dropped_connection = 1;
    assert!(
        matches!(list().await, Err(ApiError::Retryable(_))),
        "dropped connection"
    );

    // Items without an id do not fail the page: they come back unreadable,
    // named, for the caller to quarantine.
    fx.sim().faults().next_missing_ids = 1;
    let page = list().await.unwrap();
    assert!(page.records.is_empty() && !page.unreadable.is_empty());
    assert!(
        page.unreadable[0]
            .reason
            .contains("record type `customers`")
            && page.unreadable[0].reason.contains("no id at \"/id\""),
        "{:?}",
        page.unreadable[0]
    );

    fx.sim().faults().next_400_echo_auth = 1;
    let err = list().await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Rejected(m) if m.contains("HTTP 400")),
        "{err}"
    );
    assert!(
        !err.to_string().contains(&fx.key),
        "the credential leaked: {err}"
    );
    assert!(list().await.is_ok(), "faults are spent");
}

/// The credential echoed at every offset around the excerpt's cut (300
/// characters): no part of it long enough to matter reaches the error.
/// Before the fix the body was cut, then scrubbed, so a key straddling the
/// cut left its prefix in the message.
#[tokio::test]
async fn a_secret_at_the_excerpt_cut_never_leaks() {
    let fx = sim_fixture(SimConfig::default(), system()).await;
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    let list = || fx.connector.list(&req);
    let header = format!("Bearer {}", fx.key);
    let mut tried = 0;
    for offset in (300 - header.len() - 2)..=302 {
        {
            let mut f = fx.sim().faults();
            f.next_400_echo_auth = 1;
            f.echo_auth_offset = offset;
        }
        let err = list().await.unwrap_err().to_string();
        assert!(err.contains("HTTP 400"), "{err}");
        for window in fx.key.as_bytes().windows(8) {
            let part = std::str::from_utf8(window).unwrap();
            assert!(
                !err.contains(part),
                "offset {offset}: `{part}` of the key leaked: {err}"
            );
        }
        tried += 1;
    }
    assert!(tried > 40, "{tried}");
}

#[tokio::test]
async fn a_missing_records_array_names_pointer_and_type() {
    let fx = sim_fixture_with(SimConfig::default(), system(), |c| {
        c.record_types.get_mut("invoices").unwrap().records_pointer = "/results".into();
    })
    .await;
    let err = fx
        .connector
        .list(&ListRequest {
            record_type: "invoices".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Retryable(m) if m.contains("record type `invoices`") && m.contains("\"/results\"")),
        "{err}"
    );
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retryable() {
    let fx = sim_fixture_with(SimConfig::default(), system(), |c| {
        c.app.timeouts.request_ms = 200
    })
    .await;
    fx.sim().faults().latency_ms = 1_000;
    let err = fx.connector.list(&customers()).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Retryable(m) if m.contains("timed out")),
        "{err}"
    );
    // Headers at once, then a body that drips for 2 s: the request's
    // deadline covers the body too.
    fx.sim().faults().latency_ms = 0;
    fx.sim().faults().next_slow_drip = 1;
    let err = fx.connector.list(&customers()).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Retryable(m) if m.contains("timed out") || m.contains("cut short") || m.contains("in transit")),
        "slow drip: {err}"
    );
    // Nothing listens on the discard port.
    let mut app = (*fx.config).clone();
    app.app.base_url = "http://127.0.0.1:9/".into();
    let c = metered::connector::HttpConnector::new(
        Arc::new(app),
        metered::connector::http_client(&Default::default()).unwrap(),
        Some(metered::connector::Secret::new("k")),
        system(),
    )
    .unwrap();
    assert!(
        matches!(c.list(&customers()).await, Err(ApiError::Retryable(m)) if m.contains("could not connect"))
    );
}

#[tokio::test]
async fn a_429_blocks_every_handler_of_the_org() {
    let w = sqlite_budget().await;
    let (shared, store, quota, key) = (&w.shared, &w.store, &w.quota, &w.a);
    let fx = sim_fixture(SimConfig::default(), shared.clone()).await;
    let limits = Limits::seed_example();
    let a = Metered::new(
        fx.connector.clone(),
        quota.clone(),
        key.clone(),
        limits.clone(),
        "sync:a",
    );
    let b = Metered::new(
        fx.connector.clone(),
        quota.clone(),
        key.clone(),
        limits.clone(),
        "sync:b",
    );
    {
        let mut f = fx.sim().faults();
        f.next_429 = 1;
        f.burst_retry_after_secs = 120;
    }
    let until = shared.now() + Duration::seconds(120);
    assert_eq!(
        a.list(&customers()).await.unwrap_err(),
        CallError::RateLimited { retry_at: until }
    );
    let served = fx.sim().stats().served();
    // Another handler of the same org does not spend a call before then.
    match b.list(&customers()).await.unwrap_err() {
        CallError::Denied(d) => assert_eq!(d.retry_at, until),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(fx.sim().stats().served(), served);
    let outcome = CallError::RateLimited { retry_at: until }.into_outcome(None);
    assert!(matches!(outcome, metered::Outcome::Restart(r) if r.at == until));
    assert_eq!(
        store
            .state(key, &limits, shared.now())
            .await
            .unwrap()
            .blocked_until,
        Some(until)
    );
}

#[tokio::test]
async fn exempt_endpoints_bypass_the_budget() {
    let w = sqlite_budget().await;
    let (shared, quota, key) = (&w.shared, &w.quota, &w.a);
    let fx = sim_fixture(SimConfig::default(), shared.clone()).await;
    let limits = Limits::new(Some(1), None, None, 3).unwrap();
    let m = Metered::new(
        fx.connector.clone(),
        quota.clone(),
        key.clone(),
        limits,
        "workflow:w",
    );
    m.list(&customers()).await.unwrap();
    assert!(
        matches!(m.list(&customers()).await, Err(CallError::Denied(_))),
        "budget of 1 spent"
    );
    let hook = metered::connector::SendRequest {
        method: "POST".into(),
        path: "/hooks/ping".into(),
        body: Some(serde_json::json!({})),
        idempotency_key: None,
    };
    m.send(&hook)
        .await
        .expect("exempt call goes through a spent budget");
    quota.flush_usage().await.unwrap();
    let usage = quota
        .store()
        .usage(key, shared.now().date_naive())
        .await
        .unwrap();
    let exempt: Vec<_> = usage.iter().filter(|u| u.exempt).collect();
    assert_eq!(
        (exempt.len(), exempt[0].calls, exempt[0].endpoint.as_str()),
        (1, 1, "POST /hooks/ping")
    );
}

/// 32 tasks share one org's quota (3 concurrent, 60 a day) through the
/// connector. The simulator's own counters show no more than 3 requests at
/// once, no 429s, and exactly the budget served; the quota's usage equals
/// what the simulator served.
async fn thirty_two_concurrent_calls(adapter: Adapter) {
    let w = Budget::on(adapter).app("sim").build().await;
    let (shared, quota, key) = (&w.shared, &w.quota, &w.a);
    let fx = sim_fixture(
        SimConfig {
            daily_budget: 60,
            ..Default::default()
        },
        shared.clone(),
    )
    .await;
    fx.sim().faults().latency_ms = 2;
    let limits = Limits::new(Some(60), None, None, 3).unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let m = Metered::new(
            fx.connector.clone(),
            quota.clone(),
            key.clone(),
            limits.clone(),
            format!("task-{}", i % 4),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match m.list(&customers()).await {
                    Ok(_) => {}
                    Err(CallError::Denied(d))
                        if matches!(d.reason, metered::quota::DenyReason::Concurrency { .. }) =>
                    {
                        tokio::task::yield_now().await
                    }
                    Err(CallError::Denied(_)) => return,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    quota.flush_usage().await.unwrap();
    let stats = fx.sim().stats();
    assert!(
        stats.max_concurrent <= 3,
        "the API saw {} requests at once",
        stats.max_concurrent
    );
    assert_eq!(stats.rejected_429, 0);
    assert_eq!(stats.served(), 60);
    let usage: u64 = quota
        .store()
        .usage(key, shared.now().date_naive())
        .await
        .unwrap()
        .iter()
        .map(|u| u.calls)
        .sum();
    assert_eq!(usage, stats.served());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_calls_on_sqlite() {
    thirty_two_concurrent_calls(Adapter::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_calls_on_dynamodb_local() {
    thirty_two_concurrent_calls(Adapter::Aws).await;
}

/// Logs at every level while calls fail in every way; the credential never
/// appears in them, nor in errors or Debug output.
#[test]
fn secrets_never_reach_logs_or_errors() {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (errors, key, debug) = rt.block_on(async {
        let w = sqlite_budget().await;
        let fx = sim_fixture(SimConfig::default(), w.shared.clone()).await;
        let m = Metered::new(
            fx.connector.clone(),
            w.quota.clone(),
            w.a.clone(),
            Limits::seed_example(),
            "sync",
        );
        let mut errors = Vec::new();
        {
            let mut f = fx.sim().faults();
            f.next_400_echo_auth = 1;
        }
        errors.push(m.list(&customers()).await.unwrap_err().to_string());
        fx.sim().faults().next_5xx = 1;
        errors.push(m.list(&customers()).await.unwrap_err().to_string());
        fx.sim().faults().next_429 = 1;
        errors.push(m.list(&customers()).await.unwrap_err().to_string());
        (
            errors,
            fx.key.clone(),
            format!("{:?} {:?}", fx.connector, m),
        )
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the test must capture some logs");
    assert!(errors.iter().any(|e| e.contains("HTTP 400")), "{errors:?}");
    for text in errors.iter().chain([&logs, &debug]) {
        assert!(!text.contains(&key), "credential leaked into: {text}");
    }
}

#[tokio::test]
async fn credentials_from_secrets_manager_and_ssm() {
    use metered::config::SecretRef;
    use metered::connector::{resolve_secret, SecretStores};
    let cfg = metered_tests::ministack_config();
    let stores = SecretStores::new(&cfg);
    let name = format!("metered-test-{}", uuid::Uuid::new_v4().simple());
    stores
        .secrets_manager
        .create_secret()
        .name(&name)
        .secret_string("s3cr3t-from-sm")
        .send()
        .await
        .unwrap();
    stores
        .ssm
        .put_parameter()
        .name(format!("/{name}"))
        .value("s3cr3t-from-ssm")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let sm = resolve_secret(&SecretRef::SecretsManager(name.clone()), Some(&stores))
        .await
        .unwrap();
    assert_eq!(sm.expose(), "s3cr3t-from-sm");
    assert_eq!(format!("{sm:?} {sm}"), "Secret([redacted]) [redacted]");
    let ssm = resolve_secret(&SecretRef::Ssm(format!("/{name}")), Some(&stores))
        .await
        .unwrap();
    assert_eq!(ssm.expose(), "s3cr3t-from-ssm");
    let err = resolve_secret(
        &SecretRef::SecretsManager("no-such-secret".into()),
        Some(&stores),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("app.auth.secret") && err.contains("no-such-secret"),
        "{err}"
    );
    let err = resolve_secret(
        &SecretRef::Env("METERED_TEST_SURELY_UNSET_VAR".into()),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("METERED_TEST_SURELY_UNSET_VAR is not set"),
        "{err}"
    );
}

/// A rate limit that says "come back in a year" holds the org 7 days at
/// most, whether it is written in seconds or as an HTTP date.
#[tokio::test]
async fn a_far_future_retry_after_is_clamped_to_seven_days() {
    let (_clock, shared) = manual_clock();
    let fx = sim_fixture(SimConfig::default(), shared.clone()).await;
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    for style in [RetryAfterStyle::Seconds, RetryAfterStyle::HttpDate] {
        {
            let mut f = fx.sim().faults();
            f.next_429 = 1;
            f.burst_retry_after_secs = 365 * 86_400;
            f.retry_after_style = style;
        }
        match fx.connector.list(&req).await {
            Err(ApiError::RateLimited { retry_at, .. }) => {
                assert_eq!(retry_at, shared.now() + Duration::days(7), "{style:?}")
            }
            other => panic!("{style:?}: {other:?}"),
        }
    }
}

/// A body larger than `app.max_response_bytes` is refused, naming the
/// setting, before it is all in memory; the next normal page is read.
#[tokio::test]
async fn a_response_over_the_size_cap_is_refused() {
    let fx = sim_fixture_with(SimConfig::default(), system(), |c| {
        c.app.max_response_bytes = 200_000;
    })
    .await;
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    fx.sim().faults().next_huge_body = Some(1_000_000);
    let err = fx.connector.list(&req).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Retryable(m) if m.contains("app.max_response_bytes (200000 bytes")),
        "{err}"
    );
    assert_eq!(fx.connector.list(&req).await.unwrap().records.len(), 200);
}

/// A redirect is never followed: the credential, the request's body and a
/// second (unmetered) request would all go where the `Location` points. The
/// answer is a permanent error naming the target, and the target hears
/// nothing. Before the fix reqwest followed it (its default policy).
#[tokio::test]
async fn a_redirect_is_refused_and_the_other_host_hears_nothing() {
    use tokio::io::AsyncWriteExt;
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = elsewhere.local_addr().unwrap();
    let heard = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = elsewhere.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
        }
    });
    let fx = sim_fixture(SimConfig::default(), system()).await;
    {
        let mut f = fx.sim().faults();
        f.next_redirect = 1;
        f.redirect_to = format!("http://{addr}/steal");
    }
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    let err = fx.connector.list(&req).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ApiError::Permanent(_)),
        "a redirect is not worth retrying: {err:?}"
    );
    assert!(
        msg.contains("HTTP 307") && msg.contains("127.0.0.1/steal"),
        "the reason names the target: {msg}"
    );
    assert!(!msg.contains(&fx.key), "the credential leaked: {msg}");
    assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(fx.connector.list(&req).await.is_ok(), "faults are spent");
}

/// `error_excerpt_chars = 0` keeps the response body out of errors (and so
/// out of dead-letter reasons): only the status is named.
#[tokio::test]
async fn error_excerpts_can_be_turned_off() {
    let fx = sim_fixture_with(SimConfig::default(), system(), |c| {
        c.app.error_excerpt_chars = 0;
    })
    .await;
    fx.sim().faults().next_400_echo_auth = 1;
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    let msg = fx.connector.list(&req).await.unwrap_err().to_string();
    assert!(msg.ends_with("HTTP 400"), "{msg}");
}

/// A connector written in code says what a call cost with
/// `metered::connector::report_cost` (the face's name for it, `docs/limits.md`):
/// a call estimated at one unit that reports four spends four.
#[tokio::test]
async fn a_code_connector_reports_its_cost_through_the_face() {
    struct Costly(Arc<dyn Connector>);
    #[async_trait::async_trait]
    impl Connector for Costly {
        fn list_endpoint(&self, rt: &str) -> String {
            self.0.list_endpoint(rt)
        }
        fn lookup_endpoint(&self, rt: &str) -> String {
            self.0.lookup_endpoint(rt)
        }
        fn max_ids_per_call(&self, rt: &str) -> usize {
            self.0.max_ids_per_call(rt)
        }
        fn call_cost(&self, endpoint: &str) -> u32 {
            self.0.call_cost(endpoint)
        }
        fn take_api_count(&self) -> Option<metered::connector::ApiCount> {
            None
        }
        async fn list(&self, req: &ListRequest) -> Result<metered::connector::Page, ApiError> {
            metered::connector::report_cost(4);
            self.0.list(req).await
        }
        async fn lookup(
            &self,
            rt: &str,
            ids: &[String],
        ) -> Result<metered::connector::Page, ApiError> {
            self.0.lookup(rt, ids).await
        }
        async fn send(
            &self,
            req: &metered::connector::SendRequest,
        ) -> Result<serde_json::Value, ApiError> {
            self.0.send(req).await
        }
    }
    let w = sqlite_budget().await;
    let (shared, store, key) = (&w.shared, &w.store, &w.a);
    let fx = sim_fixture(SimConfig::default(), shared.clone()).await;
    let limits = Limits::seed_example();
    let m = Metered::new(
        Arc::new(Costly(fx.connector.clone())),
        w.quota.clone(),
        key.clone(),
        limits.clone(),
        "sync:costly",
    );
    m.list(&customers()).await.unwrap();
    let state = store.state(key, &limits, shared.now()).await.unwrap();
    let today: u64 = state
        .used
        .iter()
        .filter(|(w, _)| w.starts_with('d'))
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(today, 4, "the reported cost, not the estimate: {state:?}");
}
