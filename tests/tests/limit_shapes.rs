//! Limit shapes end to end: the simulator enforces one shape an API
//! publishes, metered runs a complete transfer of two orgs (same ids)
//! under the config `docs/limits.md` gives for it, and the API never
//! answers 429 while nothing is lost. Both adapter sets.

use metered::core::Clock;
use metered::AppConfig;
use metered::JobKind;
use metered::Limits;
use metered_sim::{Shape, SimConfig};
use metered_tests::sync_world::{Adapter, World, ORGS};

fn sim(customers: usize, shape: Shape) -> SimConfig {
    SimConfig {
        customers,
        daily_budget: 1_000_000,
        shapes: vec![shape],
        ..Default::default()
    }
}

/// A weekly transfer of customers under `limits` (TOML of `[app.limits]`).
fn config(c: &mut AppConfig, limits: &str) {
    metered_tests::weekly_customer_transfer(c);
    let limits: Limits = toml::from_str(limits).unwrap();
    limits.validate().unwrap();
    c.app.limits = limits;
}

async fn stored(w: &World, org: &str) -> u64 {
    w.store.count(&w.svc.key(org), "customers").await.unwrap()
}

/// Both orgs' complete transfers driven to the end, nothing dead-lettered;
/// the API's 429 count.
async fn transfer_both(w: &World) -> u64 {
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    let report = w.drive().await;
    assert!(report.dead.is_empty(), "{:?}", report.dead);
    w.sim().stats().rejected_429
}

/// A transfer of 12,000 customers (61 pages per org) against an API that
/// allows 30 calls in any rolling minute, the run starting mid-minute,
/// under `limits`; the API's 429 count.
async fn against_a_rolling_minute(adapter: Adapter, limits: &str) -> (World, u64) {
    let w = World::new(
        adapter,
        sim(
            12_000,
            Shape::Rolling {
                calls: 30,
                secs: 60,
            },
        ),
        |c| config(c, limits),
    )
    .await;
    w.clock.advance(chrono::Duration::seconds(30));
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    let rejected = w.sim().stats().rejected_429;
    (w, rejected)
}

/// 30 calls in any rolling minute, configured as such: no 429, everything
/// stored.
async fn a_rolling_minute(adapter: Adapter) {
    let (w, rejected) = against_a_rolling_minute(
        adapter,
        "max_concurrent = 3\nwindows = [{ calls = 30, every = \"1m\", rolling = true }]",
    )
    .await;
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 12_000, "{org}");
    }
}

/// The control: the same API configured as a fixed minute (all the old
/// format could say) is refused at the minute's edge, where a fixed window
/// allows 60 in a rolling minute.
#[tokio::test]
async fn a_fixed_minute_against_a_rolling_api_is_refused() {
    let (_, rejected) =
        against_a_rolling_minute(Adapter::Sqlite, "max_concurrent = 3\nper_minute = 30").await;
    assert!(
        rejected > 0,
        "a fixed minute should overrun the rolling one"
    );
}

/// 10 calls per 10 seconds (HubSpot's shape): no 429, everything stored.
async fn a_ten_second_window(adapter: Adapter) {
    let w = World::new(
        adapter,
        sim(
            6_000,
            Shape::Fixed {
                calls: 10,
                secs: 10,
                offset_secs: 0,
            },
        ),
        |c| {
            config(
                c,
                "max_concurrent = 3\nwindows = [{ calls = 10, every = \"10s\" }]",
            )
        },
    )
    .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    assert_eq!(w.sim().stats().rejected_429, 0);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

/// A transfer of 20,000 customers per org against an API whose day (40
/// calls) resets 90 s into the run, under `limits` (where `{align}` is the
/// offset that puts a day's start at the API's reset), driven for three
/// minutes.
async fn against_a_day_resetting_soon(adapter: Adapter, limits: &str) -> World {
    let start = metered_tests::afternoon();
    let boundary = start + chrono::Duration::seconds(90);
    let day_secs = boundary.timestamp().rem_euclid(86_400);
    // Windows start where `t + offset` is a multiple of a day.
    let offset = (86_400 - day_secs) % 86_400;
    let align = format!(
        "+{:02}:{:02}:{:02}",
        offset / 3600,
        offset % 3600 / 60,
        offset % 60
    );
    let w = World::new(
        adapter,
        sim(
            20_000,
            Shape::Fixed {
                calls: 40,
                secs: 86_400,
                offset_secs: day_secs,
            },
        ),
        |c| config(c, &limits.replace("{align}", &align)),
    )
    .await;
    assert_eq!(w.shared.now(), start, "the world starts in the afternoon");
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    let report = w
        .drive_until(Some(start + chrono::Duration::minutes(3)))
        .await;
    assert!(report.dead.is_empty(), "{:?}", report.dead);
    w
}

/// Configured with the API's hour: metered spends its 40, waits for the
/// API's own midnight and spends the fresh 40 right then, not at UTC
/// midnight hours away.
async fn a_day_that_resets_at_the_apis_hour(adapter: Adapter) {
    let w = against_a_day_resetting_soon(
        adapter,
        "max_concurrent = 3\nwindows = [{ calls = 40, every = \"1d\", align = \"{align}\" }]",
    )
    .await;
    let boundary = metered_tests::afternoon() + chrono::Duration::seconds(90);
    let stats = w.sim().stats();
    assert_eq!(stats.rejected_429, 0, "{:?}", stats.calls_by_key_minute);
    for org in ORGS {
        let key = &w.api_keys[org];
        let served = stats.calls_by_key.get(key).copied().unwrap_or(0);
        assert_eq!(served, 80, "{org}: the old day's 40 and the new day's 40");
        let from_reset = boundary.format("%Y-%m-%dT%H:%M").to_string();
        let after_reset: u64 = stats
            .calls_by_key_minute
            .iter()
            .filter(|((k, minute), _)| k == key && *minute >= from_reset)
            .map(|(_, n)| n)
            .sum();
        assert!(
            after_reset >= 40,
            "{org}: {after_reset} calls from the API's reset on"
        );
        assert_eq!(stored(&w, org).await, 16_000, "{org}: 80 pages of 200");
    }
}

/// The control: a UTC day (all the old format could say) leaves the API's
/// fresh budget unused for hours.
#[tokio::test]
async fn a_utc_day_leaves_the_apis_fresh_day_unused() {
    let w = against_a_day_resetting_soon(Adapter::Sqlite, "max_concurrent = 3\nper_day = 40").await;
    for org in ORGS {
        let served = w.sim().stats().calls_by_key[&w.api_keys[org]];
        assert_eq!(served, 40, "{org}: waits for UTC midnight");
    }
}

/// Two orgs against an API that allows 30 calls in any rolling minute
/// across all of them (the app's own limit), each org also held to 30:
/// the API's 429 count and the world.
async fn against_an_app_wide_minute(adapter: Adapter, limits: &str) -> (World, u64) {
    let w = World::new(
        adapter,
        sim(
            6_000,
            Shape::AppRolling {
                calls: 30,
                secs: 60,
            },
        ),
        |c| config(c, limits),
    )
    .await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    let rejected = w.sim().stats().rejected_429;
    (w, rejected)
}

const ORG_MINUTE: &str =
    "max_concurrent = 3\nwindows = [{ calls = 30, every = \"1m\", rolling = true }]\n";

/// `[app.limits.app_wide]` holds both orgs together to the app's minute:
/// no 429, everything stored.
async fn an_app_wide_limit_across_orgs(adapter: Adapter) {
    let (w, rejected) = against_an_app_wide_minute(
        adapter,
        &format!(
            "{ORG_MINUTE}[app_wide]\nmax_concurrent = 6\nwindows = [{{ calls = 30, every = \"1m\", rolling = true }}]"
        ),
    )
    .await;
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

/// The control: each org's own 30 add up to 60 a minute at the app.
#[tokio::test]
async fn without_the_app_level_the_orgs_add_up_past_the_apps_limit() {
    let (_, rejected) = against_an_app_wide_minute(Adapter::Sqlite, ORG_MINUTE).await;
    assert!(
        rejected > 0,
        "two orgs' 30 a minute each overrun the app's 30"
    );
}

/// Two orgs of 6,000 customers (31 pages each) against a leaky bucket of
/// 10 calls draining half a call a second, under `limits`; org A's key is
/// also spent by another client on every `shadow_every`-th call (0: none).
/// With `paced`, the API's `X-Shopify-Shop-Api-Call-Limit` is configured.
async fn against_a_leaky_bucket(
    adapter: Adapter,
    limits: &str,
    shadow_every: u64,
    paced: bool,
) -> (World, u64) {
    let w = World::new(
        adapter,
        sim(
            6_000,
            Shape::Bucket {
                capacity: 10,
                per_sec: 0.5,
            },
        ),
        |c| {
            config(c, limits);
            if paced {
                c.app.rate_limit.bucket_header = Some("X-Shopify-Shop-Api-Call-Limit".into());
            }
        },
    )
    .await;
    if shadow_every > 0 {
        let a = w.api_keys[ORGS[0]].clone();
        w.sim().faults().shadow_every.insert(a, shadow_every);
    }
    let rejected = transfer_both(&w).await;
    (w, rejected)
}

const BUCKET: &str =
    "max_concurrent = 3\nbuckets = [{ capacity = 10, refill = 1, every = \"2s\" }]\n";

/// Configured as the bucket it is: no 429, everything stored.
async fn a_leaky_bucket(adapter: Adapter) {
    let (w, rejected) = against_a_leaky_bucket(adapter, BUCKET, 0, false).await;
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

/// The control: the minute the old format could say (30 = the bucket's
/// drain rate) bursts past the bucket.
#[tokio::test]
async fn a_fixed_minute_against_a_leaky_bucket_is_refused() {
    let (_, rejected) = against_a_leaky_bucket(
        Adapter::Sqlite,
        "max_concurrent = 3\nper_minute = 30",
        0,
        false,
    )
    .await;
    assert!(rejected > 0, "a fixed minute should overflow the bucket");
}

/// Another client spends org A's bucket too; the API reports the level
/// (`X-Shopify-Shop-Api-Call-Limit: 7/10`) and metered, told the header,
/// raises its bucket to it: no 429, everything stored. Its control
/// (the header not configured) meets 429s.
async fn a_shared_bucket_paced_from_the_apis_level(adapter: Adapter) {
    let (w, rejected) = against_a_leaky_bucket(adapter, BUCKET, 3, true).await;
    let shadow = w.sim().stats().shadow_calls.values().sum::<u64>();
    assert!(shadow > 5, "the other client made {shadow} calls");
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

#[tokio::test]
async fn a_shared_bucket_not_paced_meets_429s() {
    let (_, rejected) = against_a_leaky_bucket(Adapter::Sqlite, BUCKET, 3, false).await;
    assert!(rejected > 0, "the other client's calls overflow the bucket");
}

/// Two orgs of 6,000 customers against an API that charges 5 points for
/// a page of customers from a bucket of 50 points restoring 5 a second
/// (GraphQL-style costs), under `limits`, with `page_cost` as the page's
/// `[app.endpoint_costs]` entry (None: no costs configured).
async fn against_costly_pages(
    adapter: Adapter,
    limits: &str,
    page_cost: Option<u32>,
) -> (World, u64) {
    let mut config = sim(
        6_000,
        Shape::Bucket {
            capacity: 50,
            per_sec: 5.0,
        },
    );
    config.costs.insert("GET /customers".into(), 5);
    let w = World::new(adapter, config, |c| {
        self::config(c, limits);
        if let Some(cost) = page_cost {
            c.app.endpoint_costs.insert("GET /customers".into(), cost);
        }
    })
    .await;
    let rejected = transfer_both(&w).await;
    (w, rejected)
}

const POINTS: &str = "max_concurrent = 3\nbuckets = [{ capacity = 50, refill = 5 }]\n";

/// Each page charged its 5 points (`[app.endpoint_costs]`): no 429,
/// everything stored.
async fn costly_pages_charged_their_cost(adapter: Adapter) {
    let (w, rejected) = against_costly_pages(adapter, POINTS, Some(5)).await;
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

/// The control: every call counted as 1 point overflows the bucket.
#[tokio::test]
async fn costly_pages_counted_as_one_call_are_refused() {
    let (_, rejected) = against_costly_pages(Adapter::Sqlite, POINTS, None).await;
    assert!(
        rejected > 0,
        "pages of 5 points counted as 1 overflow the bucket"
    );
}

/// Two orgs of 6,000 customers against a GraphQL-style API that charges a
/// page its requested 10 points from a bucket of 50 restoring 5 a second,
/// then settles it to its actual 5 and says so in `x-query-cost`.
/// Configured with the requested cost (the estimate that must fit before
/// the call), reading the actual one when `read_cost`. The API's 429s, and
/// per org the points metered counted and the points the API charged.
async fn against_settled_costs(
    adapter: Adapter,
    estimate: u32,
    read_cost: bool,
) -> (u64, Vec<(u64, u64)>) {
    let mut sim = sim(
        6_000,
        Shape::Bucket {
            capacity: 50,
            per_sec: 5.0,
        },
    );
    sim.costs.insert("GET /customers".into(), 10);
    sim.settle_costs = true;
    let w = World::new(adapter, sim, |c| {
        config(c, POINTS);
        c.app
            .endpoint_costs
            .insert("GET /customers".into(), estimate);
        if read_cost {
            c.app.rate_limit.cost_header = Some("X-Query-Cost".into());
        }
    })
    .await;
    let day1 = w.clock.now().date_naive();
    let rejected = transfer_both(&w).await;
    let stats = w.sim().stats();
    let mut points = Vec::new();
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
        let mut counted = 0;
        for d in 0..3 {
            let day = day1 + chrono::Duration::days(d);
            let usage = w.quota_store.usage(&w.svc.key(org), day).await.unwrap();
            counted += usage.iter().map(|u| u.calls).sum::<u64>();
        }
        points.push((counted, stats.points_by_key[&w.api_keys[org]]));
    }
    (rejected, points)
}

/// The actual cost read from the answer settles each page's estimate: no
/// 429, and metered counts exactly the points the API charged.
async fn costs_reported_by_the_api_settle_the_estimate(adapter: Adapter) {
    let (rejected, points) = against_settled_costs(adapter, 10, true).await;
    assert_eq!(rejected, 0);
    for (counted, charged) in points {
        assert_eq!(counted, charged, "metered's points against the API's");
        assert_eq!(charged, 30 * 5, "30 pages of 5 points");
    }
    // An estimate below the actual cost: each page's excess is taken after
    // it, so the count still matches what the API charged, plus the
    // estimate of each call it refused (a refused call counts, unreported).
    let (rejected, points) = against_settled_costs(adapter, 2, true).await;
    let counted: u64 = points.iter().map(|p| p.0).sum();
    let charged: u64 = points.iter().map(|p| p.1).sum();
    assert_eq!(charged, 2 * 30 * 5);
    assert_eq!(
        counted,
        charged + 2 * rejected,
        "excess taken: metered's against the API's"
    );
}

/// The control: unread, every page counts its estimate, twice what the
/// API charged (the budget would run dry at half its use).
#[tokio::test]
async fn costs_unread_count_the_estimate() {
    let (rejected, points) = against_settled_costs(Adapter::Sqlite, 10, false).await;
    assert_eq!(rejected, 0);
    for (counted, charged) in points {
        assert_eq!(counted, 2 * charged, "the estimate is twice the cost");
    }
}

/// Two orgs of 6,000 customers against an API holding each org to 20
/// calls a minute and the app to 30 a minute across both, reporting both
/// windows in Xero-style header families; another client spends org A's
/// budget on every other call. `counts` is TOML for
/// `[[app.rate_limit.counts]]` (empty: the families unread).
async fn against_counted_minutes(adapter: Adapter, counts: &str) -> (World, u64) {
    let mut config = sim(
        6_000,
        Shape::Fixed {
            calls: 20,
            secs: 60,
            offset_secs: 0,
        },
    );
    config.shapes.push(Shape::AppFixed {
        calls: 30,
        secs: 60,
    });
    let w = World::new(adapter, config, |c| {
        super_config(c);
        let parsed: toml::Table = toml::from_str(counts).unwrap();
        c.app.rate_limit.counts = parsed
            .get("counts")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.clone().try_into().unwrap()).collect())
            .unwrap_or_default();
    })
    .await;
    let a = w.api_keys[ORGS[0]].clone();
    w.sim().faults().shadow_every.insert(a, 2);
    let rejected = transfer_both(&w).await;
    (w, rejected)
}

/// One call at a time at both levels. The other client spends right after
/// one of ours; a call of ours admitted while that one is still in flight
/// cannot have seen it, and could meet the 429 the headers were read to
/// avoid (seen in about one run in eight with 3 and 6 slots). Serial calls
/// make "no 429" a property of the pacing rather than of the timing.
fn super_config(c: &mut AppConfig) {
    config(
        c,
        "max_concurrent = 1\nper_minute = 20\n[app_wide]\nmax_concurrent = 1\nper_minute = 30",
    );
}

const COUNTED: &str = r#"
[[counts]]
remaining = "x-limit-60s-remaining"
limit = "x-limit-60s-limit"
every = "1m"
[[counts]]
remaining = "x-app-limit-60s-remaining"
limit = "x-app-limit-60s-limit"
every = "1m"
level = "app"
"#;

/// Both families read, the org's minute and the app's: the other client's
/// calls are taken into both levels; no 429, everything stored.
async fn header_families_pace_each_window_and_level(adapter: Adapter) {
    let (w, rejected) = against_counted_minutes(adapter, COUNTED).await;
    let shadow = w.sim().stats().shadow_calls.values().sum::<u64>();
    assert!(shadow > 5, "the other client made {shadow} calls");
    assert_eq!(rejected, 0, "{:?}", w.sim().stats().calls_by_key_minute);
    for org in ORGS {
        assert_eq!(stored(&w, org).await, 6_000, "{org}");
    }
}

/// The controls: unread, or with only the org's family read (the app's
/// minute still misses the other client), the API answers 429.
#[tokio::test]
async fn header_families_unread_meet_429s() {
    let (_, rejected) = against_counted_minutes(Adapter::Sqlite, "").await;
    assert!(rejected > 0, "unread families");
    let org_only = COUNTED.split("[[counts]]").nth(1).unwrap();
    let (_, rejected) =
        against_counted_minutes(Adapter::Sqlite, &format!("[[counts]]{org_only}")).await;
    assert!(rejected > 0, "the app's family unread");
}

metered_tests::on_both!(
    an_app_wide_limit_across_orgs,
    a_rolling_minute,
    a_ten_second_window,
    a_day_that_resets_at_the_apis_hour,
    a_leaky_bucket,
    a_shared_bucket_paced_from_the_apis_level,
    costly_pages_charged_their_cost,
    costs_reported_by_the_api_settle_the_estimate,
    header_families_pace_each_window_and_level,
);
