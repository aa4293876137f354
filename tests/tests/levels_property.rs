//! No level's window is ever exceeded (#30), as a property: random
//! sequences of calls from two orgs of one app — workflow actions, PK
//! lookups and transfers, costs of 1 to 3, some calls used only in part
//! (the rest refunded), the clock moving by 0 to 40 s between them —
//! through the `Quota` facade with every level at once: each org's minute
//! and day, the app-wide minute shared by both orgs, and shares (actions
//! reserve 30%, lookups capped at 50%). A model counts what was used per
//! level and window; no count may pass its limit. The lookups' cap is
//! checked outside the windows' last tenth, where another kind's unspent
//! reserve may be lent. SQLite (in memory, one database per case): the
//! store suite proves both adapters apply one rule.

use chrono::{Duration, TimeZone, Timelike};
use metered::core::Clock;
use metered::quota::{Admission, Call, Limits};
use metered_tests::budget::Budget;
use metered_tests::sync_world::Adapter;
use proptest::prelude::*;
use std::collections::HashMap;

const LIMITS: &str = r#"
per_day = 60
per_minute = 10
max_concurrent = 3
[shares]
workflow = { reserve_percent = 30 }
pk-lookup = { cap_percent = 50 }
[app_wide]
per_minute = 15
max_concurrent = 6
"#;

const SOURCES: [&str; 3] = [
    "workflow:thanks",
    "pk-lookup:customers",
    "complete-transfer:invoices",
];

#[derive(Debug, Clone)]
struct Step {
    org: usize,
    source: usize,
    cost: u32,
    used: u32,
    advance_secs: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (0..2usize, 0..3usize, 1..=3u32, 0..=3u32, 0..=40i64).prop_map(
        |(org, source, cost, used, advance_secs)| Step {
            org,
            source,
            cost,
            used: used.min(cost),
            advance_secs,
        },
    )
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let limits: Limits = toml::from_str(LIMITS).unwrap();
        limits.validate().unwrap();
        let t0 = chrono::Utc
            .with_ymd_and_hms(2026, 12, 6, 23, 50, 0)
            .unwrap();
        let w = Budget::on(Adapter::Sqlite).at(t0).build().await;
        let (clock, quota) = (&w.clock, &w.quota);
        let orgs = [w.a.clone(), w.b.clone()];
        // (level, window) → calls used
        let mut used: HashMap<(String, String), u32> = HashMap::new();
        for s in steps {
            clock.advance(Duration::seconds(s.advance_secs));
            let now = clock.now();
            let call = Call::new(SOURCES[s.source], "GET /x").reserve(s.cost);
            let Admission::Granted(p) = quota.acquire(&orgs[s.org], &limits, call).await.unwrap()
            else {
                continue;
            };
            quota.release(p, s.used).await.unwrap();
            let minute = now.format("%Y-%m-%dT%H:%M").to_string();
            let day = now.format("%Y-%m-%d").to_string();
            let in_last_tenth = now.second() >= 54;
            let org = &orgs[s.org].org;
            let mut add = |level: String, window: &str, limit: u32| -> Result<(), TestCaseError> {
                let n = used.entry((level.clone(), window.to_string())).or_default();
                *n += s.used;
                prop_assert!(*n <= limit, "{level} used {n} of {limit} in {window}");
                Ok(())
            };
            add(format!("{org} minute"), &minute, 10)?;
            add(format!("{org} day"), &day, 60)?;
            add("app minute".into(), &minute, 15)?;
            if SOURCES[s.source].starts_with("pk-lookup") && !in_last_tenth {
                add(format!("{org} lookups' minute cap"), &minute, 5)?;
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_level_is_ever_exceeded(steps in proptest::collection::vec(step(), 1..80)) {
        run(steps)?;
    }
}
