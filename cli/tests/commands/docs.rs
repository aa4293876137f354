//! The docs' TOML blocks load, and the configuration walkthrough runs.

use super::*;

/// The TOML blocks of a Markdown file with their info strings (`toml`,
/// `toml helpdesk`, `toml volumes`).
fn toml_blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in md.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.starts_with("toml") => {
                current = Some((info.trim().to_string(), String::new()))
            }
            (Some(_), Some("")) => out.extend(current.take()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Merges `piece` into `base`: tables merge key by key, arrays of tables
/// (`[[connections]]`, actions) are appended, anything else is replaced.
fn merge_toml(base: &mut toml::Value, piece: toml::Value) {
    match (base, piece) {
        (toml::Value::Table(b), toml::Value::Table(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(existing) => merge_toml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (toml::Value::Array(b), toml::Value::Array(p)) => b.extend(p),
        (b, p) => *b = p,
    }
}

/// Every config of `docs/limits.md` loads as the `[app.limits]` (and
/// `[app.rate_limit]`) of the reference's minimal config, with the windows
/// it names.
#[test]
fn docs_limits_configs_load() {
    let minimal = toml_blocks(include_str!("../../../docs/configuration.md"))
        .into_iter()
        .find(|(info, _)| info == "toml")
        .map(|(_, t)| t)
        .expect("the reference's minimal config");
    let blocks = toml_blocks(include_str!("../../../docs/limits.md"));
    assert!(blocks.len() >= 7, "a config per API: {blocks:?}");
    for (_, piece) in blocks {
        let mut config: toml::Value = toml::from_str(&minimal).unwrap();
        config["app"].as_table_mut().unwrap().remove("limits");
        let piece_value: toml::Value =
            toml::from_str(&piece).unwrap_or_else(|e| panic!("{e}: {piece}"));
        let windows = piece_value["app"]["limits"]
            .get("windows")
            .and_then(|w| w.as_array())
            .map_or(0, Vec::len);
        let buckets = piece_value["app"]["limits"]
            .get("buckets")
            .and_then(|w| w.as_array())
            .map_or(0, Vec::len);
        merge_toml(&mut config, piece_value);
        let loaded = metered::AppConfig::parse(&toml::to_string(&config).unwrap())
            .unwrap_or_else(|e| panic!("the example\n{piece}\ndoes not load: {e}"));
        assert_eq!(loaded.app.limits.windows.len(), windows, "{piece}");
        assert_eq!(
            loaded.app.limits.windows().count(),
            windows
                + buckets
                + [
                    loaded.app.limits.per_day,
                    loaded.app.limits.per_hour,
                    loaded.app.limits.per_minute
                ]
                .iter()
                .flatten()
                .count(),
            "{piece}"
        );
    }
}

/// `docs/configuration.md` is enough to write a config (#33 item 8): its
/// minimal config loads, every example piece loads merged onto it in order,
/// and the walk-through's blocks — a page-numbered API with its key in a
/// header — make a config that loads, forecasts within its limits and runs
/// against the simulator for a day, storing every record.
#[test]
fn docs_configuration_loads_and_its_walkthrough_runs() {
    let md = include_str!("../../../docs/configuration.md");
    let blocks = toml_blocks(md);
    let plain: Vec<&String> = blocks
        .iter()
        .filter(|(info, _)| info == "toml")
        .map(|(_, t)| t)
        .collect();
    assert!(
        plain.len() >= 7,
        "the reference has its examples: {blocks:?}"
    );
    let mut config: toml::Value = toml::from_str(plain[0]).expect("the minimal config is TOML");
    metered::AppConfig::parse(plain[0]).expect("the minimal config loads");
    for piece in &plain[1..] {
        merge_toml(
            &mut config,
            toml::from_str(piece).unwrap_or_else(|e| panic!("{e}: {piece}")),
        );
        let text = toml::to_string(&config).unwrap();
        metered::AppConfig::parse(&text)
            .unwrap_or_else(|e| panic!("the example\n{piece}\ndoes not load: {e}"));
    }
    let helpdesk: String = blocks
        .iter()
        .filter(|(info, _)| info == "toml helpdesk")
        .map(|(_, t)| t.as_str())
        .collect();
    let volumes: String = blocks
        .iter()
        .filter(|(info, _)| info == "toml volumes")
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(helpdesk.contains("scheme = \"header\"") && helpdesk.contains("style = \"page\""));
    let dir = tmp("docs-config");
    std::fs::write(dir.join("helpdesk.toml"), &helpdesk).unwrap();
    std::fs::write(dir.join("volumes.toml"), &volumes).unwrap();
    let plan = json(&metered(
        &[
            "plan",
            "--config",
            "helpdesk.toml",
            "--volumes",
            "volumes.toml",
            "--json",
        ],
        &dir,
    ));
    assert!(plan["calls_per_day"].as_f64() > Some(0.0), "{plan}");
    assert_eq!(plan["missing_volumes"], serde_json::json!([]), "{plan}");
    let run = json(&metered(
        &[
            "run",
            "--config",
            "helpdesk.toml",
            "--sim",
            "--simulate",
            "1",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(run["report"]["dead_lettered"], 0, "{run}");
    assert!(
        run["report"]["done"]["complete-transfer"].as_u64() >= Some(1)
            && run["report"]["done"]["recent-records"].as_u64() >= Some(1),
        "{run}"
    );
    let stored = json(&metered(
        &[
            "records",
            "tickets",
            "--db",
            ".metered/simulated.sqlite",
            "--limit",
            "5000",
            "--json",
        ],
        &dir,
    ));
    assert!(
        stored.as_array().unwrap().len() >= 2_000,
        "every ticket the simulator lists was stored: {}",
        stored.as_array().unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
