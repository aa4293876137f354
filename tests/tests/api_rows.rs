//! Each API of `docs/limits.md` end to end: the simulator enforces what
//! that API publishes (all its shapes at once), metered runs a complete
//! transfer of two orgs whose record ids coincide under the config the page
//! gives for it, and the API answers no 429 while every record is stored.
//! Both adapter sets.
//!
//! The numbers are the documented ones scaled down (Salesforce's 100,000 a
//! rolling day becomes 40) so that a transfer of a few thousand records
//! meets every limit within a simulated day or two; the shapes, lengths,
//! levels and headers are the documented ones. Shopify's rows are in
//! `limit_shapes.rs` (a leaky bucket, cost points).

use metered::AppConfig;
use metered::JobKind;
use metered::Limits;
use metered_sim::{Shape, SimConfig};
use metered_tests::sync_world::{Adapter, World, ORGS};

/// One API: what the simulator enforces and what metered is told.
struct Row {
    /// Customers per org.
    customers: usize,
    shapes: Vec<Shape>,
    /// The API's soft cap on calls in flight per key.
    max_concurrent: usize,
    /// Calls per UTC day the API allows a key (`x-ratelimit-*`).
    daily_budget: u64,
    /// Another client of org A's account spends on every n-th call.
    shadow_every: u64,
    /// `[app.limits]` as TOML.
    limits: &'static str,
    /// Further config (`[app.rate_limit]`).
    edit: fn(&mut AppConfig),
}

impl Default for Row {
    fn default() -> Self {
        Self {
            customers: 9_000,
            shapes: Vec::new(),
            max_concurrent: 3,
            daily_budget: 1_000_000,
            shadow_every: 0,
            limits: "",
            edit: |_| {},
        }
    }
}

/// Runs the row's two-org transfer to the end; asserts nothing was lost
/// or dead-lettered and the API refused nothing.
async fn run(adapter: Adapter, row: Row) -> World {
    let w = transfer(adapter, row).await;
    let stats = w.sim().stats();
    assert_eq!(
        stats.rejected_429, 0,
        "the API refused calls: {:?}",
        stats.calls_by_key_minute
    );
    w
}

/// The row's two-org transfer driven to the end: nothing lost, nothing
/// dead-lettered.
async fn transfer(adapter: Adapter, row: Row) -> World {
    let sim = SimConfig {
        customers: row.customers,
        daily_budget: row.daily_budget,
        max_concurrent: row.max_concurrent,
        shapes: row.shapes,
        ..Default::default()
    };
    let limits: Limits = toml::from_str(row.limits).unwrap();
    limits.validate().unwrap();
    let w = World::new(adapter, sim, |c| {
        metered_tests::weekly_customer_transfer(c);
        c.app.limits = limits;
        (row.edit)(c);
    })
    .await;
    if row.shadow_every > 0 {
        let a = w.api_keys[ORGS[0]].clone();
        let mut faults = w.sim().faults();
        faults.shadow_every.insert(a, row.shadow_every);
        // Other apps of the account: they share its day, not this app's
        // shapes (which are per app, as HubSpot's 10 seconds are).
        faults.shadow_spends_only_the_day = true;
    }
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    let report = w.drive().await;
    assert!(report.dead.is_empty(), "{:?}", report.dead);
    for org in ORGS {
        let stored = w.store.count(&w.svc.key(org), "customers").await.unwrap();
        assert_eq!(stored, row.customers as u64, "{org}");
    }
    w
}

/// Salesforce: a rolling 24 hours (100,000 → 40) and 25 concurrent. 45
/// pages an org take two rolling days.
async fn salesforce(adapter: Adapter) {
    run(
        adapter,
        Row {
            shapes: vec![Shape::Rolling {
                calls: 40,
                secs: 86_400,
            }],
            max_concurrent: 25,
            limits:
                "max_concurrent = 25\nwindows = [{ calls = 40, every = \"24h\", rolling = true }]",
            ..Row::default()
        },
    )
    .await;
}

/// Xero: per tenant 5 concurrent, a rolling minute (60 → 20) and a
/// rolling day (5,000 → 40); across tenants a minute (10,000 → 30).
async fn xero(adapter: Adapter) {
    run(
        adapter,
        Row {
            shapes: vec![
                Shape::Rolling {
                    calls: 20,
                    secs: 60,
                },
                Shape::Rolling {
                    calls: 40,
                    secs: 86_400,
                },
                Shape::AppRolling {
                    calls: 30,
                    secs: 60,
                },
            ],
            max_concurrent: 5,
            limits: r#"
max_concurrent = 5
windows = [
  { calls = 20, every = "1m", rolling = true },
  { calls = 40, every = "24h", rolling = true },
]

[app_wide]
max_concurrent = 500
windows = [{ calls = 30, every = "1m", rolling = true }]
"#,
            ..Row::default()
        },
    )
    .await;
}

/// HubSpot: 10 seconds (100 → 10) and a day (250,000 → 40) shared with
/// the account's other apps, which spend on every fourth call of org A;
/// paced from the API's daily count.
fn hubspot_row() -> Row {
    Row {
            shapes: vec![Shape::Rolling {
                calls: 10,
                secs: 10,
            }],
            max_concurrent: 10,
            daily_budget: 40,
            shadow_every: 4,
            limits: "max_concurrent = 10\nper_day = 40\nwindows = [{ calls = 10, every = \"10s\", rolling = true }]",
            edit: |c| {
                c.app.rate_limit.remaining_header = Some("X-RateLimit-Remaining".into());
                c.app.rate_limit.limit_header = Some("X-RateLimit-Limit".into());
            },
            ..Row::default()
        }
}

async fn hubspot(adapter: Adapter) {
    let w = run(adapter, hubspot_row()).await;
    let a = &w.api_keys[ORGS[0]];
    assert!(
        w.sim().stats().shadow_calls.get(a).copied().unwrap_or(0) > 0,
        "the other apps spent"
    );
}

/// The control: the daily count unread, org A runs into the day the other
/// apps spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_unpaced_meets_429s() {
    let row = Row {
        edit: |_| {},
        ..hubspot_row()
    };
    let w = transfer(Adapter::Sqlite, row).await;
    assert!(w.sim().stats().rejected_429 > 0);
}

/// GitHub REST: an hour per token (5,000 → 30) that starts at the token's
/// first call, not on the clock, configured as a rolling hour; 100
/// concurrent.
async fn github(adapter: Adapter) {
    run(
        adapter,
        Row {
            shapes: vec![Shape::Fixed {
                calls: 30,
                secs: 3_600,
                offset_secs: 1_234,
            }],
            max_concurrent: 100,
            limits:
                "max_concurrent = 100\nwindows = [{ calls = 30, every = \"1h\", rolling = true }]",
            ..Row::default()
        },
    )
    .await;
}

/// Marketo: a day that ends at midnight US Central (50,000 → 40; in
/// November that is 06:00 UTC) and 100 per 20 seconds (→ 10), 10
/// concurrent. 45 pages an org: 40 on the first day, the rest right after
/// Chicago's midnight.
async fn marketo(adapter: Adapter) {
    let w = run(
        adapter,
        Row {
            shapes: vec![
                Shape::Fixed {
                    calls: 40,
                    secs: 86_400,
                    offset_secs: 6 * 3_600,
                },
                Shape::Rolling {
                    calls: 10,
                    secs: 20,
                },
            ],
            max_concurrent: 10,
            limits: r#"
max_concurrent = 10
windows = [
  { calls = 40, every = "1d", align = "America/Chicago" },
  { calls = 10, every = "20s", rolling = true },
]
"#,
            ..Row::default()
        },
    )
    .await;
    let stats = w.sim().stats();
    for org in ORGS {
        let key = &w.api_keys[org];
        let after_reset: u64 = stats
            .calls_by_key_minute
            .iter()
            .filter(|((k, minute), _)| k == key && minute.as_str() >= "2026-11-23T06:00")
            .filter(|((_, minute), _)| minute.as_str() < "2026-11-23T06:10")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            after_reset, 5,
            "{org}: the rest within minutes of Chicago's midnight"
        );
    }
}

/// Stripe: operations a second (100 → 5), 20 concurrent.
async fn stripe(adapter: Adapter) {
    run(
        adapter,
        Row {
            customers: 6_000,
            shapes: vec![Shape::Rolling { calls: 5, secs: 1 }],
            max_concurrent: 20,
            limits:
                "max_concurrent = 20\nwindows = [{ calls = 5, every = \"1s\", rolling = true }]",
            ..Row::default()
        },
    )
    .await;
}

metered_tests::on_both!(salesforce, xero, hubspot, marketo, github, stripe);
