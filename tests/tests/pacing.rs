//! Pacing from the API's own counter: another tool of the organization
//! spends part of the same budget, which metered's counters cannot see. The
//! API reports what is left (`X-RateLimit-Remaining`); metered's quota takes
//! the difference after each call, so its handlers are denied before the
//! API would refuse them. Both adapter sets; two orgs with the same ids, one
//! of them sharing its budget.

use metered::quota::{Limits, QuotaKey, SPENT_ELSEWHERE};
use metered::AppConfig;
use metered::JobKind;
use metered_sim::SimConfig;
use metered_tests::sync_world::{Adapter, World, ORG, ORGS, ORG_B};

/// 9,000 customers at 200 a page: 45 pages and an empty one, more than one
/// day's 40 calls.
fn sim() -> SimConfig {
    SimConfig {
        customers: 9_000,
        daily_budget: 40,
        ..Default::default()
    }
}

fn config(c: &mut AppConfig, paced: bool) {
    metered_tests::weekly_customer_transfer(c);
    c.app.limits = Limits::new(Some(40), None, None, 3).unwrap();
    if paced {
        c.app.rate_limit.remaining_header = Some("X-RateLimit-Remaining".into());
        c.app.rate_limit.limit_header = Some("X-RateLimit-Limit".into());
    }
}

/// Another client spends `n` calls of `org`'s budget now.
async fn another_client(w: &World, org: &str, n: usize) {
    let client = reqwest::Client::new();
    for _ in 0..n {
        let r = client
            .get(format!("{}customers?limit=1", w.fx.server.base_url()))
            .bearer_auth(&w.api_keys[org])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

async fn run(w: &World) -> chrono::NaiveDate {
    let day1 = w.shared.now().date_naive();
    another_client(w, ORG, 15).await;
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "customers")
            .await;
    }
    w.drive().await;
    day1
}

async fn another_clients_calls_are_paced_from_the_apis_count(adapter: Adapter) {
    let w = World::new(adapter, sim(), |c| config(c, true)).await;
    // Besides 15 calls up front, the other client spends one call after
    // every 4th of the key's, so some land while a transfer's reserved
    // block of calls is out.
    w.sim()
        .faults()
        .shadow_every
        .insert(w.api_keys[ORG].clone(), 4);
    let day1 = run(&w).await;
    let stats = w.sim().stats();
    assert_eq!(
        stats.rejected_429, 0,
        "the API never had to refuse: {:?}",
        stats.calls_by_key_day
    );
    let day = day1.format("%Y-%m-%d").to_string();
    let a = &w.api_keys[ORG];
    assert!(stats.shadow_calls[a] >= 5, "{:?}", stats.shadow_calls);
    assert_eq!(
        stats.calls_by_key_day[&(a.clone(), day.clone())],
        40,
        "the other client's calls and metered's: the rest of the day exactly"
    );
    assert!(
        stats.calls_by_key_day.values().all(|n| *n <= 40),
        "{:?}",
        stats.calls_by_key_day
    );
    assert_eq!(
        stats.calls_by_key_day[&(w.api_keys[ORG_B].clone(), day)],
        40,
        "org B shares its budget with nobody"
    );
    for org in ORGS {
        assert_eq!(
            w.store.count(&w.svc.key(org), "customers").await.unwrap(),
            9_000,
            "{org}: the transfer finished on later days"
        );
    }
    // Usage over the run: every call the API counted is metered's or
    // `spent elsewhere`, and the other client's are exactly the latter.
    let mut usage = Vec::new();
    for d in 0..4 {
        usage.extend(
            w.quota_store
                .usage(
                    &QuotaKey::new(ORG, "sim-booking"),
                    day1 + chrono::Duration::days(d),
                )
                .await
                .unwrap(),
        );
    }
    let elsewhere: u64 = usage
        .iter()
        .filter(|u| u.source == SPENT_ELSEWHERE)
        .map(|u| u.calls)
        .sum();
    assert_eq!(
        elsewhere,
        15 + stats.shadow_calls[a],
        "usage shows the other client's calls: {usage:?}"
    );
    let mine: u64 = usage
        .iter()
        .filter(|u| u.source != SPENT_ELSEWHERE)
        .map(|u| u.calls)
        .sum();
    assert_eq!(mine, 45, "one call a page, none refused");
    let b = w
        .quota_store
        .usage(&QuotaKey::new(ORG_B, "sim-booking"), day1)
        .await
        .unwrap();
    assert!(b.iter().all(|u| u.source != SPENT_ELSEWHERE), "{b:?}");
    assert_eq!(w.dead_letters().await, 0);
}

/// A reserved block of calls out while the other client spends: the
/// reservation stops where the API's count says the window is full (the
/// unspent rest is not made), and its finish keeps those calls counted
/// instead of refunding them (a refund would let the next call run into the
/// API's refusal). The other client spends one call after each of metered's.
async fn a_reservation_out_while_another_client_spends_stops_at_the_apis_count(adapter: Adapter) {
    let w = World::new(adapter, sim(), |c| config(c, true)).await;
    let a = w.api_keys[ORG].clone();
    w.sim().faults().shadow_every.insert(a.clone(), 1);
    let metered = w.svc.metered(ORG, "test").unwrap();
    let req = metered::connector::ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    let mut block = metered.reserve("GET /customers", 30).await.unwrap();
    let mut made = 0;
    while block.remaining() > 0 {
        block.list(&req).await.unwrap();
        made += 1;
    }
    block.finish().await.unwrap();
    assert_eq!(
        made, 20,
        "20 of metered's and 20 of the other client's fill the 40"
    );
    let next = metered.list(&req).await;
    assert!(
        matches!(next, Err(metered::connector::CallError::Denied(_))),
        "the quota refuses before the API would: {next:?}"
    );
    let stats = w.sim().stats();
    assert_eq!(stats.rejected_429, 0);
    let day = w.shared.now().format("%Y-%m-%d").to_string();
    assert_eq!(stats.calls_by_key_day[&(a.clone(), day)], 40);
    assert_eq!(stats.shadow_calls[&a], 20);
    w.svc.quota.flush_usage().await.unwrap();
    let usage = w
        .quota_store
        .usage(
            &QuotaKey::new(ORG, "sim-booking"),
            w.shared.now().date_naive(),
        )
        .await
        .unwrap();
    let of = |elsewhere: bool| -> u64 {
        usage
            .iter()
            .filter(|u| (u.source == SPENT_ELSEWHERE) == elsewhere)
            .map(|u| u.calls)
            .sum()
    };
    assert_eq!((of(false), of(true)), (20, 20), "{usage:?}");
}

/// A connector whose answers come back `secs` after the API counted the
/// call (the clock moves after the request, not before).
struct Latency {
    inner: std::sync::Arc<dyn metered::connector::Connector>,
    clock: metered::ManualClock,
    secs: i64,
}

#[async_trait::async_trait]
impl metered::connector::Connector for Latency {
    fn list_endpoint(&self, rt: &str) -> String {
        self.inner.list_endpoint(rt)
    }
    fn lookup_endpoint(&self, rt: &str) -> String {
        self.inner.lookup_endpoint(rt)
    }
    fn max_ids_per_call(&self, rt: &str) -> usize {
        self.inner.max_ids_per_call(rt)
    }
    fn is_exempt(&self, endpoint: &str) -> bool {
        self.inner.is_exempt(endpoint)
    }
    fn call_cost(&self, endpoint: &str) -> u32 {
        self.inner.call_cost(endpoint)
    }
    async fn list(
        &self,
        req: &metered::connector::ListRequest,
    ) -> Result<metered::connector::Page, metered::connector::ApiError> {
        let out = self.inner.list(req).await;
        self.clock.advance(chrono::Duration::seconds(self.secs));
        out
    }
    async fn lookup(
        &self,
        rt: &str,
        ids: &[String],
    ) -> Result<metered::connector::Page, metered::connector::ApiError> {
        self.inner.lookup(rt, ids).await
    }
    async fn send(
        &self,
        req: &metered::connector::SendRequest,
    ) -> Result<serde_json::Value, metered::connector::ApiError> {
        self.inner.send(req).await
    }
    fn take_api_count(&self) -> Option<metered::connector::ApiCount> {
        self.inner.take_api_count()
    }
}

/// A call made just before midnight whose answer ("0 left") arrives just
/// after it is about the day the call was made in: the new day stays whole
/// (the count used to be taken into the window of the answer's arrival,
/// filling the new day, and the org stalled for 24 hours).
async fn a_count_read_after_midnight_is_of_the_day_the_call_was_made(adapter: Adapter) {
    let w = World::new(adapter, sim(), |c| config(c, true)).await;
    let today = w.shared.now().date_naive();
    w.clock
        .set(today.and_hms_opt(23, 59, 58).unwrap().and_utc());
    another_client(&w, ORG, 39).await;
    let req = metered::connector::ListRequest {
        record_type: "customers".into(),
        ..Default::default()
    };
    for org in ORGS {
        let connector: std::sync::Arc<dyn metered::connector::Connector> = if org == ORG {
            w.fx.connector.clone()
        } else {
            // Org B's own key: its day is its own.
            std::sync::Arc::new(
                metered::connector::HttpConnector::new(
                    w.fx.config.clone(),
                    metered::connector::http_client(&w.fx.config.app.timeouts).unwrap(),
                    Some(metered::connector::Secret::new(w.api_keys[org].clone())),
                    w.shared.clone(),
                )
                .unwrap(),
            )
        };
        let slow = std::sync::Arc::new(Latency {
            inner: connector,
            clock: w.clock.clone(),
            secs: if org == ORG { 3 } else { 0 },
        });
        let metered = metered::connector::Metered::new(
            slow,
            w.svc.quota.clone(),
            w.svc.key(org),
            w.svc.limits(org),
            "test",
        );
        metered.list(&req).await.unwrap();
    }
    assert!(
        w.shared.now().date_naive() > today,
        "the answer came after midnight"
    );
    let stats = w.sim().stats();
    let day = today.format("%Y-%m-%d").to_string();
    assert_eq!(
        stats.calls_by_key_day[&(w.api_keys[ORG].clone(), day)],
        40,
        "the API counted the call in the old day"
    );
    // The new day: 40 calls for each org, not 0 for the first.
    for org in ORGS {
        let metered = w.svc.metered(org, "test").unwrap();
        let mut made = 0;
        while metered.list(&req).await.is_ok() {
            made += 1;
            assert!(made <= 40, "{org}: more than a day's calls");
        }
        assert!(
            made >= 39,
            "{org}: the new day's budget is there ({made} calls)"
        );
    }
    assert_eq!(w.sim().stats().rejected_429, 0);
}

/// The control: without the header named, metered cannot know, runs into
/// the API's refusal, and is blocked until midnight (nothing lost, but a
/// 429 the paced run avoids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_header_the_api_has_to_refuse() {
    let w = World::new(Adapter::Sqlite, sim(), |c| config(c, false)).await;
    run(&w).await;
    assert!(w.sim().stats().rejected_429 >= 1);
    assert_eq!(
        w.store.count(&w.svc.key(ORG), "customers").await.unwrap(),
        9_000
    );
}

#[test]
fn a_remaining_header_needs_a_window_to_pace() {
    let base = metered_sim::app_config("http://127.0.0.1:1/");
    let text = base.replacen(
        "[app.limits]",
        "[app.rate_limit]\nremaining_header = \"X-RateLimit-Remaining\"\nremaining_window = \"hour\"\n\n[app.limits]",
        1,
    );
    let err = AppConfig::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("app.rate_limit.remaining_window: `hour`, but app.limits sets no per_hour"),
        "{err}"
    );
    let text = base.replacen(
        "[app.limits]",
        "[app.rate_limit]\nlimit_header = \"X-RateLimit-Limit\"\n\n[app.limits]",
        1,
    );
    let err = AppConfig::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("app.rate_limit.limit_header: only used with remaining_header"),
        "{err}"
    );
}

/// The API reports its day in the standard `RateLimit` /
/// `RateLimit-Policy` fields (IETF draft-12) and nothing is configured to
/// read a header: the policy `"day";w=86400` raises the configured day, so
/// another client's calls are paced as with `remaining_header`. 0 × 429,
/// every customer stored. With the fields turned off (`standard_headers =
/// false`) the same run meets the API's 429s.
async fn the_standard_ratelimit_fields_pace_with_no_header_configured(adapter: Adapter) {
    let run = |standard: bool| async move {
        let w = World::new(
            adapter,
            SimConfig {
                standard_headers: true,
                ..sim()
            },
            |c| {
                config(c, false);
                c.app.rate_limit.standard_headers = standard;
            },
        )
        .await;
        w.sim()
            .faults()
            .shadow_every
            .insert(w.api_keys[ORG].clone(), 4);
        run(&w).await;
        let rejected = w.sim().stats().rejected_429;
        let stored = w.store.count(&w.svc.key(ORG), "customers").await.unwrap();
        (rejected, stored)
    };
    let (rejected, stored) = run(true).await;
    assert_eq!(rejected, 0, "paced from the standard fields");
    assert_eq!(stored, 9_000);
    let (rejected, _) = run(false).await;
    assert!(
        rejected > 0,
        "without them the other client's calls go unseen"
    );
}

metered_tests::on_both!(
    the_standard_ratelimit_fields_pace_with_no_header_configured,
    a_count_read_after_midnight_is_of_the_day_the_call_was_made,
    another_clients_calls_are_paced_from_the_apis_count,
    a_reservation_out_while_another_client_spends_stops_at_the_apis_count,
);
