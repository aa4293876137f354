//! `metered quota-demo` end to end: the binary runs, exits 0, and its report shows
//! the budget held (per day and in concurrency) with nothing lost.

use std::process::Command;

fn demo(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metered"))
        .arg("quota-demo")
        .arg("--json")
        .args(args)
        .output()
        .expect("run metered quota-demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn demo_spreads_work_over_days_within_the_budget() {
    let (ok, r, err) = demo(&[]);
    assert!(ok, "demo failed: {err}");
    assert_eq!(r["jobs_done"], 40);
    assert_eq!(r["api_calls_served"], 4000);
    assert_eq!(r["usage_recorded"], 4000);
    assert_eq!(r["dead_lettered"], 0);
    assert_eq!(r["api_calls_per_day"]["2026-11-22"], 2500, "{r}");
    assert_eq!(r["api_calls_per_day"]["2026-11-23"], 1500, "{r}");
    let max = r["max_concurrent_seen_by_api"].as_u64().unwrap();
    assert!((1..=3).contains(&max), "{r}");
    assert!(
        r["restarts"]["day limit reached (2500 of 2500 used)"]
            .as_u64()
            .unwrap()
            > 0,
        "{r}"
    );
}

/// A backlog of seven days (#30): each job says how many calls it still
/// needs, so each day wakes only the five jobs it can finish; a refused job
/// wakes once, not once a day until its turn.
#[test]
fn a_tight_budget_backlog_wakes_each_refused_job_once() {
    let (ok, r, err) = demo(&["--per-day", "500"]);
    assert!(ok, "demo failed: {err}");
    assert_eq!(
        (r["jobs_done"].as_u64(), r["dead_lettered"].as_u64()),
        (Some(40), Some(0)),
        "{r}"
    );
    let days = r["api_calls_per_day"].as_object().unwrap();
    assert_eq!(days.len(), 8, "{r}");
    assert!(
        days.values().all(|c| c.as_u64() == Some(500)),
        "every day spent whole: {r}"
    );
    let restarts: u64 = r["restarts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        (restarts, r["jobs_ever_refused"].as_u64()),
        (35, Some(35)),
        "{r}"
    );
}

#[test]
fn demo_on_a_file_database_with_other_limits() {
    let dir = std::env::temp_dir().join(format!("metered-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.sqlite");
    let (ok, r, err) = demo(&[
        "--jobs",
        "7",
        "--calls-per-job",
        "30",
        "--per-day",
        "50",
        "--max-concurrent",
        "2",
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(ok, "demo failed: {err}");
    assert_eq!(r["api_calls_served"], 210);
    let days = r["api_calls_per_day"].as_object().unwrap();
    assert_eq!(days.len(), 5, "210 calls at 50 a day take five days: {r}");
    assert!(days.values().all(|c| c.as_u64().unwrap() <= 50), "{r}");
    assert!(r["max_concurrent_seen_by_api"].as_u64().unwrap() <= 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_limits_fail_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(["quota-demo", "--per-day", "0"])
        .output()
        .expect("run metered quota-demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.per_day is 0"), "{err}");
}
