//! Calls through the connector against the simulator on loopback.

use super::{row, uuid_like, Latencies};
use metered::adapters::sqlite::Db;
use metered::adapters::sqlite::SqliteQuota;
use metered::core::{SharedClock, SystemClock};
use metered::quota::{Limits, Quota, QuotaKey};
use std::sync::Arc;
use std::time::Instant;

/// Calls through the connector against the simulator on loopback: bare, and
/// through the SQLite quota, to show what the quota adds per call.
pub async fn section(n: u32) -> Result<(), Box<dyn std::error::Error>> {
    use metered::connector::{Connector, ListRequest, Metered};
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            customers: 20,
            daily_budget: u64::MAX,
            ..Default::default()
        },
        clock.clone(),
    );
    let server = metered_sim::serve(sim, "127.0.0.1:0".parse()?).await?;
    let app = Arc::new(metered::AppConfig::parse(&metered_sim::app_config(
        &server.base_url(),
    ))?);
    let client = metered::connector::http_client(&app.app.timeouts)?;
    let connector: Arc<dyn Connector> = Arc::new(metered::connector::HttpConnector::new(
        app.clone(),
        client,
        Some(metered::connector::Secret::new("bench-key")),
        clock.clone(),
    )?);
    let req = ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    println!(
        "\nConnector against the simulator on loopback (20 records per call, no added latency)"
    );
    let mut bare = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        let c = Instant::now();
        connector.list(&req).await?;
        bare.push(c.elapsed());
    }
    let bare_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let db =
        Db::open(std::env::temp_dir().join(format!("metered-bench-conn-{}.sqlite", uuid_like())))?;
    let quota = Quota::new(Arc::new(SqliteQuota::new(db)), clock.clone());
    let limits = Limits::new(Some(u32::MAX / 2), None, None, 3)?;
    let metered = Metered::new(
        connector.clone(),
        quota.clone(),
        QuotaKey::new("bench", "sim"),
        limits,
        "bench",
    );
    let mut with_quota = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        let c = Instant::now();
        metered.list(&req).await?;
        with_quota.push(c.elapsed());
    }
    let quota_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (m, req) = (metered.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while done < n / 3 {
                match m.list(&req).await {
                    Ok(_) => done += 1,
                    Err(metered::connector::CallError::Denied(_)) => tokio::task::yield_now().await,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let concurrent_rate = f64::from(n / 3 * 3) / t.elapsed().as_secs_f64();
    quota.flush_usage().await?;
    let (mut bare, mut with_quota) = (Latencies(bare), Latencies(with_quota));
    row(
        "calls per second, connector alone (1 task)",
        format!("{bare_rate:.0}"),
    );
    row(
        "calls per second, connector + SQLite quota (1 task)",
        format!("{quota_rate:.0}"),
    );
    row(
        "calls per second, connector + SQLite quota (3 tasks)",
        format!("{concurrent_rate:.0}"),
    );
    row(
        "call latency median, alone / with quota",
        format!("{:.3} ms / {:.3} ms", bare.pct(0.5), with_quota.pct(0.5)),
    );
    row(
        "quota overhead per call (median difference)",
        format!("{:.3} ms", with_quota.pct(0.5) - bare.pct(0.5)),
    );
    Ok(())
}
