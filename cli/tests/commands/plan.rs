//! `metered plan`: the forecast against a simulated run, windows, first days
//! and shares.

use super::*;

/// `plan` against `run --simulate 3` on the simulator, started at midnight
/// UTC so each reported day is one simulated day: the forecast of day 1
/// (the first load) is within 5% of the run's first day, and the steady
/// day's within 5% of the mean of days 2 and 3, each checked separately, on
/// four configs: syncs only, slower syncs, PK lookups of a type no complete
/// transfer fills (day 1 looks up every key the first transfers reference),
/// and the bundled example with its workflow and Data Source (day 1 runs
/// the workflow on every invoice the first transfer creates).
#[test]
fn plan_agrees_with_a_simulated_run() {
    let dir = tmp("plan");
    let example = include_str!("../../examples/booking.toml");
    let syncs_only = example
        .split("# Thank gold customers")
        .next()
        .unwrap()
        .to_string();
    let slower = syncs_only
        .replace(
            "recent = { every = \"15m\", overlap = \"45m\" }",
            "recent = { every = \"30m\", overlap = \"15m\" }",
        )
        .replacen(
            "complete_transfer = { every = \"24h\" }\nrecent",
            "complete_transfer = { every = \"12h\" }\nrecent",
            1,
        );
    let never_transferred = syncs_only.replace(
        "[syncs.customers]\ncomplete_transfer = { every = \"24h\" }\n",
        "[syncs.customers]\n",
    );
    assert_ne!(slower, syncs_only);
    assert_ne!(never_transferred, syncs_only);
    let volumes = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking-volumes.toml");
    for (name, config) in [
        ("syncs", syncs_only),
        ("slower", slower),
        ("never-transferred", never_transferred),
        ("example", example.to_string()),
    ] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let plan = json(&metered(
            &[
                "plan",
                "--config",
                path.to_str().unwrap(),
                "--volumes",
                volumes,
                "--json",
                "--chart",
                "p.svg",
            ],
            &dir,
        ));
        let db = format!("{name}.sqlite");
        let run = json(&metered(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--sim",
                "--simulate",
                "3",
                "--start",
                "2026-11-22T00:00:00Z",
                "--db",
                &db,
                "--json",
            ],
            &dir,
        ));
        let day = |d: &str| {
            run["calls_per_day"][format!("acme 2026-11-{d}")]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: no calls on day {d}: {run}")) as f64
        };
        for (which, forecast, spent) in [
            ("day 1", plan["day1_calls"].as_f64().unwrap(), day("22")),
            (
                "steady",
                plan["calls_per_day"].as_f64().unwrap(),
                (day("23") + day("24")) / 2.0,
            ),
        ] {
            let off = (spent - forecast).abs() / forecast;
            assert!(
                off <= 0.05,
                "{name}, {which}: forecast {forecast:.1}, the run spent {spent:.1} ({:.1}% off)",
                off * 100.0
            );
        }
        let lookups_day1: f64 = plan["day1_sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["source"] == "pk-lookup:customers")
            .map(|s| s["calls_per_day"].as_f64().unwrap())
            .sum();
        assert_eq!(
            lookups_day1 > 0.0,
            name == "never-transferred",
            "{name}: day 1 looks keys up only where no transfer fills the type: {plan}"
        );
        let svg = std::fs::read_to_string(dir.join("p.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<rect"),
            "a chart was written"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first load over the daily limit: plan says so, says how many days
/// its backlog takes to drain, and lists the seeds' remedies with what each
/// saves on day 1 and on a steady day (turning on a complete transfer
/// before PK lookups saves on day 1 and costs a little every day).
/// Every window bounds the forecast, not only `per_day` and `per_hour`
/// (#29: `per_minute = 5` forecast 589 calls in one hour and passed): a
/// minute of 5 holds an hour to 300 and a day to 7,200, and plan says
/// which window binds.
#[test]
fn plan_honours_minute_and_span_windows() {
    let dir = tmp("plan-minute");
    let example = include_str!("../../examples/booking.toml");
    let volumes = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking-volumes.toml");
    let run = |limits: &str| {
        let path = dir.join("minute.toml");
        std::fs::write(&path, example.replace("per_day = 2500", limits)).unwrap();
        let out = metered(
            &[
                "plan",
                "--config",
                path.to_str().unwrap(),
                "--volumes",
                volumes,
                "--json",
            ],
            &dir,
        );
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), plan)
    };
    let (code, plan) = run("per_day = 100000\nper_minute = 1");
    let peak = plan["day1_per_hour"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_f64())
        .fold(0.0, f64::max);
    assert!(
        peak > 60.0,
        "the example's busiest hour is over 60 calls: {plan}"
    );
    assert_eq!(code, Some(3), "{plan}");
    assert_eq!(plan["limit_per_hour"], 60, "{plan}");
    // The minute binds first on day 1 (its burst hour), the day when the
    // day is small enough to be the fullest.
    assert_eq!(plan["day1_loads"][0]["window"], "minute", "{plan}");
    let (_, small_day) = run("per_day = 300\nper_minute = 10");
    assert_eq!(small_day["steady_loads"][0]["window"], "day", "{small_day}");
    let text = metered(
        &[
            "plan",
            "--config",
            dir.join("minute.toml").to_str().unwrap(),
            "--volumes",
            volumes,
            "--warn-only",
        ],
        &dir,
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("binds first, day 1: the day (limit 300): 338 calls in the day"),
        "{text}"
    );
    assert!(
        text.contains("binds first, steady: the day (limit 300)"),
        "{text}"
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("60 (the minute limit of 1)"),
        "{warnings}"
    );
    // A 30-second window of 1 holds an hour to 120.
    let (_, plan) = run("per_day = 100000\nwindows = [{ calls = 1, every = \"30s\" }]");
    assert_eq!(plan["limit_per_hour"], 120, "{plan}");
    assert!(
        plan["warnings"]
            .to_string()
            .contains("120 (the 30s window limit of 1)"),
        "{plan}"
    );
    // Room to spare: no warning about an hour.
    let (code, plan) = run("per_day = 100000\nper_minute = 1000");
    assert_eq!(code, Some(0), "{plan}");
    assert!(!plan["warnings"].to_string().contains("hour"), "{plan}");
}

#[test]
fn plan_flags_a_first_day_over_the_limit_and_prices_remedies_on_both_days() {
    let dir = tmp("plan-day1");
    let example = include_str!("../../examples/booking.toml");
    let tight = example
        .replace("per_day = 2500", "per_day = 300")
        .replace("missing = \"transfer\"", "missing = \"pk_lookup\"")
        .replace(
            "[syncs.customers]\ncomplete_transfer = { every = \"24h\" }\n",
            "[syncs.customers]\n",
        );
    let path = dir.join("tight.toml");
    std::fs::write(&path, tight).unwrap();
    let volumes = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking-volumes.toml");
    let args = [
        "plan",
        "--config",
        path.to_str().unwrap(),
        "--volumes",
        volumes,
        "--chart",
        "p.svg",
    ];
    let plan = json(&metered(
        &[&args[..], &["--json", "--warn-only"]].concat(),
        &dir,
    ));
    // Over a limit, plan fails a CI step (exit 3) unless told only to warn.
    let gate = metered(&[&args[..], &["--json"]].concat(), &dir);
    assert_eq!(
        gate.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&gate.stderr)
    );
    assert!(String::from_utf8_lossy(&gate.stderr).contains("--warn-only"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&gate.stdout).unwrap()["over_limit"],
        true,
        "the forecast is printed before the exit"
    );
    let (day1, steady) = (
        plan["day1_calls"].as_f64().unwrap(),
        plan["calls_per_day"].as_f64().unwrap(),
    );
    assert!(day1 > 300.0 && steady < 300.0, "{plan}");
    let expected = ((day1 - 300.0) / (300.0 - steady)).ceil();
    assert_eq!(plan["backlog_days"].as_f64(), Some(expected), "{plan}");
    let remedy = |starts: &str| {
        plan["remedies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["remedy"].as_str().unwrap().starts_with(starts))
            .unwrap_or_else(|| panic!("no remedy `{starts}`: {plan}"))
            .clone()
    };
    let transfer_first = remedy("complete transfer before PK lookups");
    assert!(
        transfer_first["saves_day1"].as_f64().unwrap() > 0.0,
        "{transfer_first}"
    );
    assert!(
        transfer_first["saves_per_day"].as_f64().unwrap() < 0.0,
        "{transfer_first}"
    );
    // Hosting the Data Source saves every one of its push calls, on both days.
    let hosted = remedy("host data source gold_invoices");
    let push_calls = |day: &str| {
        plan[day]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == "datasource:gold_invoices")
            .map(|s| s["calls_per_day"].as_f64().unwrap())
            .unwrap_or_else(|| panic!("no push forecast in {day}: {plan}"))
    };
    assert!(
        (hosted["saves_per_day"].as_f64().unwrap() - push_calls("sources")).abs() < 0.01,
        "{hosted} {plan}"
    );
    assert!(
        (hosted["saves_day1"].as_f64().unwrap() - push_calls("day1_sources")).abs() < 0.01,
        "{hosted} {plan}"
    );
    let filter = remedy("decision nodes before actions");
    assert!(
        filter["saves_day1"].as_f64().unwrap() > filter["saves_per_day"].as_f64().unwrap(),
        "the first load has more to filter: {filter}"
    );
    let text = metered(&[&args[..], &["--warn-only"]].concat(), &dir);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("day 1") && text.contains("steady"), "{text}");
    assert!(
        text.contains(&format!("drains in {expected:.0} more day(s)")),
        "{text}"
    );
    // After a day of running, the store holds the invoices and the customers
    // they reference: `--db` forecasts no first load any more.
    metered(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--sim",
            "--simulate",
            "1",
            "--db",
            "t.sqlite",
            "--json",
        ],
        &dir,
    );
    let later = json(&metered(
        &[&args[..], &["--json", "--warn-only", "--db", "t.sqlite"]].concat(),
        &dir,
    ));
    assert_eq!(
        later["day1_calls"], later["calls_per_day"],
        "nothing left to load: {later}"
    );
    assert_eq!(later["backlog_days"], serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `plan` says what it could not forecast instead of printing `-0 calls`
/// (#33 item 6): a config with no syncs, a volumes file without a synced
/// type; within the limits it exits 0.
#[test]
fn plan_names_what_it_cannot_forecast() {
    let dir = tmp("plan-missing");
    let example = include_str!("../../examples/booking.toml");
    let head = &example[..example.find("[record_types.invoices]").unwrap()];
    let bare = format!("{head}\n[[connections]]\norg = \"acme\"\n");
    let synced = format!("{bare}\n[syncs.classes]\ncomplete_transfer = {{ every = \"24h\" }}\n");
    std::fs::write(dir.join("bare.toml"), &bare).unwrap();
    std::fs::write(dir.join("synced.toml"), &synced).unwrap();
    std::fs::write(dir.join("v.toml"), "").unwrap();
    for (config, expect) in [
        ("bare.toml", "has no [syncs]"),
        ("synced.toml", "no entry for record type `classes`"),
    ] {
        let out = metered(&["plan", "--config", config, "--volumes", "v.toml"], &dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{config}: {text}");
        assert!(!text.contains("-0"), "{config}: no negative zero: {text}");
    }
    let out = json(&metered(
        &[
            "plan",
            "--config",
            "synced.toml",
            "--volumes",
            "v.toml",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(
        out["missing_volumes"],
        serde_json::json!(["classes"]),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `plan` with `[app.limits.shares]`: each share against its kind's calls,
/// a share that runs dry flagged (exit 3), the JSON with the numbers.
#[test]
fn plan_forecasts_each_share_and_flags_one_that_runs_dry() {
    let dir = tmp("plan-shares");
    let volumes = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/booking-volumes.toml");
    example_edited(&dir, "shares.toml", "max_concurrent = 3\n", SHARES);
    let out = metered(
        &[
            "plan",
            "--config",
            "shares.toml",
            "--volumes",
            volumes,
            "--json",
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(3));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let share = |kind: &str| {
        plan["shares"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no share {kind}: {plan}"))
    };
    assert_eq!(share("recent-records")["most"], 125, "5% of 2500");
    assert_eq!(share("recent-records")["steady_calls"], 192.0);
    assert_eq!(share("workflow")["reserved"], 500);
    assert_eq!(
        share("workflow")["most"],
        2500,
        "its reserve plus all the unreserved"
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("share `recent-records` forecasts 192 calls but may spend 125 a day"),
        "{warnings}"
    );
    assert!(!warnings.contains("share `workflow`"), "{warnings}");
}
