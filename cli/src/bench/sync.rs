//! The reference sync: a transfer with bulk lookups on SQLite.

use super::{row, uuid_like};
use metered::adapters::sqlite::Db;
use metered::JobKind;
use metered::Limits;
use metered::SharedClock;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn manual_now(clock: &metered::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use metered::core::Clock;
    clock.now()
}

/// The reference run: 10,000 invoices referencing 2,000 customers,
/// pages of 200, bulk lookups of 50, on SQLite against the simulator.
pub async fn section() -> Result<(), Box<dyn std::error::Error>> {
    use metered::config::{
        CompleteTransferSettings, ConnectionConfig, LookupPolicy, PkLookupSettings, StormGuard,
        SyncConfig,
    };
    use metered::AppConfig;
    let manual = metered::ManualClock::new(chrono::Utc::now());
    let clock: SharedClock = Arc::new(manual.clone());
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            customers: 2_000,
            invoices: 10_000,
            daily_budget: 100_000,
            ..Default::default()
        },
        clock.clone(),
    );
    let server = metered_sim::serve(sim.clone(), "127.0.0.1:0".parse()?).await?;
    let mut app = AppConfig::parse(&metered_sim::app_config(&server.base_url()))?;
    app.app.limits = Limits::new(Some(100_000), None, None, 3)?;
    app.connections = vec![ConnectionConfig {
        org: "bench".into(),
        secret: None,
        limits: None,
    }];
    app.syncs.insert(
        "invoices".into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: Duration::from_secs(86_400),
            }),
            ..Default::default()
        },
    );
    app.syncs.insert(
        "customers".into(),
        SyncConfig {
            pk_lookup: PkLookupSettings {
                enabled: true,
                policy: LookupPolicy::UnseenOnly,
                storm_guard: StormGuard::Off,
                max_keys_per_call: Some(50),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    app.validate()?;
    let app = Arc::new(app);
    let client = metered::connector::http_client(&app.app.timeouts)?;
    let connector: Arc<dyn metered::connector::Connector> =
        Arc::new(metered::connector::HttpConnector::new(
            app.clone(),
            client,
            Some(metered::connector::Secret::new("bench-key")),
            clock.clone(),
        )?);
    let dir = std::env::temp_dir().join(format!("metered-bench-sync-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let db = Db::open(dir.join("store.sqlite"))?;
    let quota_db = Db::open(dir.join("quota.sqlite"))?;
    let runner = metered::edge::local::LocalRunner::new(
        app,
        db.clone(),
        quota_db.clone(),
        clock.clone(),
        [("bench".to_string(), connector)].into(),
    )?;
    let referenced: std::collections::BTreeSet<String> = sim
        .records("invoices")
        .iter()
        .filter_map(|r| r["customer_id"].as_str().map(str::to_string))
        .collect();
    let t = Instant::now();
    metered::handlers::start_sync(
        &runner.svc,
        "bench",
        JobKind::CompleteTransfer,
        "invoices",
        false,
    )
    .await?;
    let report = runner
        .run_simulated(
            &manual,
            chrono::Utc::now() + chrono::Duration::days(2),
            None,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let stats = sim.stats();
    let list = stats.calls("GET /invoices");
    let bulk = stats.calls("GET /customers (by ids)");
    let min_list = 10_000u64.div_ceil(200);
    let min_bulk = (referenced.len() as u64).div_ceil(50);
    let records = 10_000 + referenced.len() as u64;
    println!("\nReference sync: 10,000 invoices → {} distinct customers, page 200, bulk 50 (SQLite, simulator on loopback)", referenced.len());
    row(
        "complete transfer list calls / minimum",
        format!("{list} / {min_list}"),
    );
    row(
        "pk lookup calls / minimum (unseen_only)",
        format!("{bulk} / {min_bulk}"),
    );
    row(
        "quota round trips per API call",
        format!(
            "{:.3}",
            quota_db.round_trips() as f64 / (list + bulk) as f64
        ),
    );
    row(
        "record-store + queue round trips per API call",
        format!("{:.2}", db.round_trips() as f64 / (list + bulk) as f64),
    );
    row(
        "records synced per second",
        format!(
            "{:.0} ({records} records in {secs:.2} s)",
            records as f64 / secs
        ),
    );
    row(
        "jobs done",
        format!("{:?}, dead-lettered {}", report.done, report.dead_lettered),
    );
    // A second transfer knows the page count from the first.
    manual.advance(chrono::Duration::hours(1));
    let (q0, s0, c0) = (
        quota_db.round_trips(),
        db.round_trips(),
        sim.stats().calls("GET /invoices"),
    );
    let t = Instant::now();
    metered::handlers::start_sync(
        &runner.svc,
        "bench",
        JobKind::CompleteTransfer,
        "invoices",
        true,
    )
    .await?;
    runner
        .run_simulated(
            &manual,
            manual_now(&manual) + chrono::Duration::days(1),
            None,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let calls = sim.stats().calls("GET /invoices") - c0;
    row(
        "second transfer (unchanged data): list calls",
        format!("{calls}"),
    );
    row(
        "second transfer: quota round trips per API call",
        format!("{:.3}", (quota_db.round_trips() - q0) as f64 / calls as f64),
    );
    row(
        "second transfer: store + queue round trips per API call",
        format!("{:.2}", (db.round_trips() - s0) as f64 / calls as f64),
    );
    row(
        "second transfer: records compared per second",
        format!("{:.0}", 10_000.0 / secs),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
