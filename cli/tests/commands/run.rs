//! `metered run`: real time, simulated days, the database it keeps.

use super::*;

/// `metered run` in real time, as a person or a machine follows it: with
/// stdout not a terminal it prints a line per change, and with `--json` one
/// event per change, each naming every org's calls of its budget, calls in
/// flight, jobs done, waiting and dead, and the next due job. Two orgs of
/// the simulated API whose records have the same ids both make progress.
#[test]
fn run_in_real_time_reports_a_status_per_org() {
    let dir = tmp("realtime");
    let config = include_str!("../../examples/booking.toml").replace(
        "[[connections]]\norg = \"acme\"\n",
        "[[connections]]\norg = \"acme\"\n\n[[connections]]\norg = \"globex\"\n",
    );
    assert!(config.contains("globex"));
    std::fs::write(dir.join("two.toml"), config).unwrap();
    // Reads stdout lines until `enough` says so or two minutes pass, then
    // stops the run (it never ends on its own).
    let follow = |extra: &[&str], db: &str, enough: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut run = Command::new(env!("CARGO_BIN_EXE_metered"));
        run.args(["run", "--config", "two.toml", "--sim", "--db", db])
            .args(extra)
            .current_dir(&dir);
        follow_stdout(run, 120, enough)
    };
    let progressed = |line: &str| -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        v["orgs"].as_array().is_some_and(|orgs| {
            orgs.len() == 2
                && orgs.iter().all(|o| {
                    o["done"].as_u64() >= Some(1) && o["today"]["used"].as_u64() >= Some(1)
                })
        })
    };
    let events = follow(&["--json"], "json.sqlite", &progressed);
    let last = events.last().expect("at least one status event");
    assert!(progressed(last), "both orgs made progress: {events:#?}");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    for o in v["orgs"].as_array().unwrap() {
        assert_eq!(o["today"]["limit"], 2500, "{o}");
        for field in ["in_flight", "waiting", "dead", "done"] {
            assert!(o[field].is_u64(), "{field} in {o}");
        }
    }
    assert_eq!(
        v["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["org"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["acme", "globex"]
    );
    for pair in events.windows(2) {
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&pair[0]).unwrap(),
            serde_json::from_str(&pair[1]).unwrap(),
        );
        assert!(
            a["orgs"] != b["orgs"] || a["next_due"] != b["next_due"],
            "an event is printed only when something changed"
        );
    }
    let plain = follow(&[], "plain.sqlite", &|line: &str| {
        line.contains("acme ") && line.contains("globex ") && line.contains(" done ")
    });
    let line = plain.last().expect("a status line");
    assert!(
        line.contains("/2500 today") && line.contains("in flight") && line.contains(" | "),
        "{plain:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A simulation keeps its own database (#33 item 1): it never writes the
/// real-time default, a database holds one clock or the other and refuses
/// the other with a message that says why, and a second simulation there
/// continues from where the first ended instead of silently doing nothing.
/// The database remembers the limits it ran under (item 3), and `metered
/// demo --db` run twice replaces its own database and reports the same
/// figures (item 2), while refusing a database that holds other work.
#[test]
fn a_simulation_keeps_its_own_database_and_remembers_its_limits() {
    let dir = tmp("sim-db");
    let example = include_str!("../../examples/booking.toml");
    let head = &example[..example.find("[record_types.invoices]").unwrap()];
    let small = format!(
        "{head}\n[[connections]]\norg = \"acme\"\n\n[syncs.classes]\ncomplete_transfer = {{ every = \"6h\" }}\n"
    )
    .replace("per_day = 2500", "per_day = 300");
    assert!(small.contains("per_day = 300"));
    std::fs::write(dir.join("small.toml"), &small).unwrap();
    let simulate = |extra: &[&str]| {
        metered_within(
            &[
                &[
                    "run",
                    "--config",
                    "small.toml",
                    "--sim",
                    "--simulate",
                    "1",
                    "--json",
                ][..],
                extra,
            ]
            .concat(),
            &dir,
            300,
        )
    };
    let first = simulate(&[]);
    let first_json = json(&first);
    assert!(dir.join(".metered/simulated.sqlite").exists());
    assert!(
        !dir.join(".metered/metered.sqlite").exists(),
        "the real-time database is untouched"
    );
    let second = simulate(&[]);
    let second_json = json(&second);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("continuing the simulation"), "{said}");
    let days = |v: &serde_json::Value| {
        v["calls_per_day"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        second_json["report"]["done"]["complete-transfer"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "the second simulation ran transfers of its own: {second_json}"
    );
    assert!(
        days(&second_json).last() > days(&first_json).last(),
        "it went on into later days: {first_json} then {second_json}"
    );

    // Real time refuses the simulation's database, and the reverse.
    let real = metered_within(
        &[
            "run",
            "--config",
            "small.toml",
            "--sim",
            "--db",
            ".metered/simulated.sqlite",
        ],
        &dir,
        60,
    );
    assert!(!real.status.success());
    let said = String::from_utf8_lossy(&real.stderr);
    assert!(said.contains("holds a simulation"), "{said}");
    std::fs::write(
        dir.join("tick.json"),
        include_str!("../../../tests/fixtures/scheduled-event.json"),
    )
    .unwrap();
    let tick = metered_within(
        &[
            "invoke",
            "scheduler",
            "--event",
            "tick.json",
            "--db",
            "real.sqlite",
        ],
        &dir,
        60,
    );
    assert!(
        tick.status.success(),
        "{}",
        String::from_utf8_lossy(&tick.stderr)
    );
    let mixed = simulate(&["--db", "real.sqlite"]);
    assert!(!mixed.status.success());
    let said = String::from_utf8_lossy(&mixed.stderr);
    assert!(said.contains("holds real-time work"), "{said}");

    // The limits it ran under: 300 a day, not the bundled example's 2,500,
    // though the app has the example's name.
    let lim = simulate(&["--db", "lim.sqlite", "--start", "2026-11-22T00:00:00Z"]);
    json(&lim);
    let usage = metered_within(&["usage", "--db", "lim.sqlite"], &dir, 60);
    let text = String::from_utf8_lossy(&usage.stdout);
    let said = String::from_utf8_lossy(&usage.stderr);
    assert!(usage.status.success(), "{said}");
    assert!(said.contains("its last day is 2026-11-22"), "{said}");
    assert!(text.contains("2026-11-22 (budget 300 a day)"), "{text}");
    let back = simulate(&["--db", "lim.sqlite", "--start", "2026-11-21T00:00:00Z"]);
    assert!(!back.status.success());
    let said = String::from_utf8_lossy(&back.stderr);
    assert!(said.contains("already ran to 2026-11-23"), "{said}");

    // The demo replaces its own database, and only its own.
    let demo = || {
        metered_within(
            &["demo", "--days", "1", "--json", "--db", "demo.sqlite"],
            &dir,
            600,
        )
    };
    let once = json(&demo());
    let again = demo();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("replacing demo.sqlite"), "{said}");
    let again = json(&again);
    for field in ["records", "calls_by_source", "actions"] {
        assert_eq!(once[field], again[field], "{field} the same both times");
    }
    let refused = metered_within(&["demo", "--days", "1", "--db", "lim.sqlite"], &dir, 60);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("holds other work"), "{said}");
    let nowhere = simulate(&["--db", "no/such/folder/x.sqlite"]);
    assert!(!nowhere.status.success());
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(said.contains("no such folder"), "{said}");
    assert!(!dir.join("no").exists(), "no folders made for a typo");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the API unreachable, the real-time status says why, not only how
/// many restarts (#33 item 5): the latest problem per org is on the line.
#[test]
fn a_real_time_run_says_why_it_is_failing() {
    let dir = tmp("unreachable");
    // The example's base_url is port 9 on loopback: nothing listens there.
    std::fs::write(
        dir.join("app.toml"),
        include_str!("../../examples/booking.toml"),
    )
    .unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_metered"));
    run.args(["run", "--config", "app.toml", "--db", "r.sqlite"])
        .env("SIM_API_KEY", "not-a-real-key")
        .current_dir(&dir);
    let seen = follow_stdout(run, 90, &|line: &str| {
        line.contains("last: transient failure")
    });
    let last = seen.last().cloned().unwrap_or_default();
    assert!(
        last.contains("acme ") && last.contains("last: transient failure"),
        "the cause is on the status line: {seen:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --sim --sim-limit`: the simulated API enforces a chosen shape; the
/// example's UTC day alone meets its 429s, the config that says the shape
/// meets none. A spec that is not a shape is refused, naming it.
#[test]
fn run_against_a_chosen_shape_of_the_simulated_api() {
    let dir = tmp("sim-limit");
    std::fs::write(
        dir.join("plain.toml"),
        include_str!("../../examples/booking.toml"),
    )
    .unwrap();
    example_edited(
        &dir,
        "shaped.toml",
        "per_day = 2500\n",
        "per_day = 2500\nwindows = [{ calls = 5, every = \"1m\", rolling = true }]\n",
    );
    let api = |config: &str| {
        let run = json(&metered(
            &[
                "run",
                "--config",
                config,
                "--sim",
                "--sim-limit",
                "rolling:5/1m",
                "--simulate",
                "1",
                "--start",
                "2026-11-22T00:00:00Z",
                "--db",
                &format!("{config}.sqlite"),
                "--json",
            ],
            &dir,
        ));
        assert_eq!(run["report"]["dead_lettered"], 0, "{run}");
        run["api"].clone()
    };
    let plain = api("plain.toml");
    assert!(plain["rejected_by_shape"].as_u64().unwrap() > 0, "{plain}");
    let shaped = api("shaped.toml");
    assert_eq!(shaped["rejected_429"], 0, "{shaped}");
    assert!(shaped["served"].as_u64().unwrap() > 300, "{shaped}");

    let out = metered(
        &[
            "run",
            "--config",
            "plain.toml",
            "--sim",
            "--sim-limit",
            "leaky:5/1m",
            "--simulate",
            "1",
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sim-limit") && err.contains("is not a shape"),
        "{err}"
    );
}
