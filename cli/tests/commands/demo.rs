//! `metered demo`: its report against the API's own counters, and under faults.

use super::*;

#[test]
fn demo_report_matches_the_apis_own_counters_and_the_database_answers() {
    let dir = tmp("demo");
    let r = json(&metered(
        &["demo", "--days", "1", "--json", "--db", "demo.sqlite"],
        &dir,
    ));
    assert_eq!(r["usage_recorded"], r["api_calls_served"], "{r}");
    assert!(r["api_calls_served"].as_u64().unwrap() > 100, "{r}");
    for (day, d) in r["days"].as_object().unwrap() {
        assert_eq!(d["api_served"], d["usage_recorded"], "{day}");
        assert!(d["api_served"].as_u64().unwrap() <= 2_500);
    }
    for (t, rec) in r["records"].as_object().unwrap() {
        assert_eq!(rec["stored"], rec["in_api"], "{t} fully synced");
    }
    assert_eq!(r["dead_lettered"], 0);
    assert_eq!(r["api_429s"], 0);
    assert!(r["max_concurrent_seen_by_api"].as_u64().unwrap() <= 3);
    assert!(
        r["actions"]["notes_created"].as_u64().unwrap() > 0,
        "the workflow fired"
    );
    // Data Source rows leave through the outbox: every push the API saw is
    // one the outbox counted, each carries several rows, none is left.
    let ds = &r["datasources"]["gold_invoices"];
    assert_eq!(ds["pushes"], r["actions"]["datasource_pushes"], "{r}");
    assert!(ds["rows_per_push"].as_f64().unwrap() > 2.0, "{r}");
    assert_eq!(ds["rows_waiting"], 0, "{r}");
    // The hosted Data Source is never pushed; one user's Hosted GET is
    // answered from the store with that customer's rows and no API call.
    let hosted = &r["hosted"]["customer_invoices"];
    assert!(r["datasources"].get("customer_invoices").is_none(), "{r}");
    assert!(hosted["rows_hosted"].as_u64().unwrap() > 50, "{r}");
    assert_eq!(hosted["status"], 200, "{r}");
    let served = hosted["rows_served"].as_u64().unwrap();
    assert!(
        served >= 1 && served < hosted["rows_hosted"].as_u64().unwrap(),
        "one customer's rows only: {r}"
    );
    assert_eq!(hosted["api_calls_during"], 0, "{r}");

    // The same database answers the inspection commands.
    let usage = json(&metered(
        &[
            "usage",
            "--db",
            "demo.sqlite",
            "--day",
            "2026-11-22",
            "--json",
        ],
        &dir,
    ));
    let total: u64 = usage
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["exempt"] == false)
        .map(|u| u["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total,
        r["days"]["2026-11-22"]["usage_recorded"].as_u64().unwrap()
    );
    let records = json(&metered(
        &[
            "records",
            "customers",
            "--db",
            "demo.sqlite",
            "--json",
            "--limit",
            "5",
        ],
        &dir,
    ));
    assert_eq!(records.as_array().unwrap().len(), 5);
    assert!(records[0]["record"]["first_seen"].is_string());
    let text = metered(
        &["usage", "--db", "demo.sqlite", "--day", "2026-11-22"],
        &dir,
    );
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("recent-records:invoices"), "{text}");
    let windows = text
        .lines()
        .skip_while(|l| !l.starts_with("Windows at 2026-11-22 23:59:59 UTC"))
        .nth(1)
        .unwrap_or_else(|| panic!("the windows of the day's end: {text}"));
    assert!(
        windows.contains("day") && windows.contains(" of 2500 ") && windows.contains("<- tightest"),
        "{windows}"
    );
    let pushes = text
        .lines()
        .skip_while(|l| !l.starts_with("Data Source pushes"))
        .find(|l| l.contains("gold_invoices"))
        .unwrap_or_else(|| panic!("a Data Source line: {text}"));
    assert!(pushes.split_whitespace().count() >= 7, "{pushes}");
    assert!(
        !text.contains("customer_invoices"),
        "a hosted Data Source has no pushes and nothing waiting: {text}"
    );
    let jobs = metered(&["jobs", "--db", "demo.sqlite"], &dir);
    assert!(jobs.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The report, as a user would reproduce it: 10% of API calls fail
/// (500/502/503 without Retry-After, bodies not JSON or cut short, dropped
/// connections). Every record still arrives, nothing is dead-lettered, and
/// the workflow still acts.
#[test]
fn a_demo_with_ten_percent_of_calls_failing_loses_nothing() {
    let dir = tmp("hostile");
    let r = json(&metered(
        &["demo", "--days", "1", "--json", "--fail-percent", "10"],
        &dir,
    ));
    let injected: u64 = r["api_failures_injected"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(injected > 10, "{r}");
    for (t, rec) in r["records"].as_object().unwrap() {
        assert_eq!(rec["stored"], rec["in_api"], "{t} fully synced: {r}");
    }
    assert_eq!(r["dead_lettered"], 0, "{r}");
    assert!(r["actions"]["notes_created"].as_u64().unwrap() > 0, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}
