//! What every command shares: help, clear errors for bad input, `invoke`,
//! `local-infra`, a closed stdout, logs.

use super::*;

#[test]
fn bad_configs_and_events_fail_clearly() {
    let dir = tmp("bad");
    std::fs::write(dir.join("bad.toml"), "[app]\nname = \"x\"\nbase_url = \"ftp://nope\"\n[app.limits]\nper_day = 10\nmax_concurrent = 1\n").unwrap();
    let out = metered(&["run", "--config", "bad.toml", "--simulate", "1"], &dir);
    assert_eq!(out.status.code(), Some(2), "a config error exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("app.base_url"),
        "{err}"
    );

    let out = metered(
        &["run", "--config", "missing.toml", "--simulate", "1"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read"));

    std::fs::write(dir.join("event.json"), "{\"Records\": 7}").unwrap();
    let out = metered(
        &[
            "invoke",
            "complete-transfer",
            "--event",
            "event.json",
            "--db",
            "x.sqlite",
        ],
        &dir,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an SQS event"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = metered(
        &[
            "invoke",
            "teleport",
            "--event",
            "event.json",
            "--db",
            "x.sqlite",
        ],
        &dir,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown function `teleport`"));

    let out = metered(&["records", "customers", "--db", "nowhere.sqlite"], &dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database here"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invoke_runs_one_handler_with_a_lambda_event() {
    let dir = tmp("invoke");
    let job = serde_json::json!({
        "v": 1, "id": "job-1", "kind": "complete-transfer", "org": "acme", "app": "sim-booking",
        "payload": {"record_type": "classes"}, "idempotency_key": "job-1", "created_at": "2026-11-22T00:00:00Z"
    });
    let mut event: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/sqs-event.json")).unwrap();
    event["Records"][0]["body"] = job.to_string().into();
    std::fs::write(dir.join("sqs.json"), event.to_string()).unwrap();
    let out = json(&metered(
        &[
            "invoke",
            "complete-transfer",
            "--event",
            "sqs.json",
            "--db",
            "i.sqlite",
        ],
        &dir,
    ));
    assert_eq!(out["batchItemFailures"], serde_json::json!([]), "{out}");
    let records = json(&metered(
        &["records", "classes", "--db", "i.sqlite", "--json"],
        &dir,
    ));
    assert_eq!(
        records.as_array().unwrap().len(),
        20,
        "the transfer ran against the simulator"
    );
    // The scheduler with a schedule event.
    std::fs::write(
        dir.join("tick.json"),
        include_str!("../../../tests/fixtures/scheduled-event.json"),
    )
    .unwrap();
    let out = json(&metered(
        &[
            "invoke",
            "scheduler",
            "--event",
            "tick.json",
            "--db",
            "i.sqlite",
        ],
        &dir,
    ));
    assert!(!out["started"].as_array().unwrap().is_empty(), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_has_help() {
    let dir = tmp("help");
    for cmd in [
        "demo",
        "run",
        "usage",
        "records",
        "jobs",
        "quarantine",
        "outbox",
        "connections",
        "invoke",
        "bench",
        "quota-demo",
    ] {
        let out = metered(&[cmd, "--help"], &dir);
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: metered"),
            "{cmd}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn local_infra_creates_what_the_template_declares() {
    let ddb = std::env::var("METERED_TEST_DYNAMODB_URL")
        .expect("METERED_TEST_DYNAMODB_URL: run `bash infra/test.sh`");
    let sqs = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL: run `bash infra/test.sh`");
    let dir = tmp("infra");
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    let prefix = format!("t{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(["local-infra", "--template", template, "--prefix", &prefix])
        .env("AWS_ENDPOINT_URL_DYNAMODB", &ddb)
        .env("AWS_ENDPOINT_URL_SQS", &sqs)
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("AWS_REGION", "us-east-1")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let vars: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("export ")?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(vars["METERED_TABLE"], format!("{prefix}-MeteredTable"));
    for kind in metered::JobKind::QUEUED {
        let suffix = metered::edge::lambda::env_suffix(kind);
        assert!(
            vars[&format!("METERED_QUEUE_URL_{suffix}")].contains(&prefix),
            "{text}"
        );
        assert!(
            vars[&format!("METERED_DLQ_URL_{suffix}")].contains("DeadLetterQueue"),
            "{text}"
        );
    }
    // What the functions read from this environment is complete.
    let mut with_app = vars.clone();
    with_app.insert(
        "METERED_APP_CONFIG_SSM".into(),
        "/metered/app-config".into(),
    );
    let config =
        metered::edge::lambda::DeployConfig::from_lookup(|k| with_app.get(k).cloned()).unwrap();
    assert_eq!(config.queues.len(), metered::JobKind::QUEUED.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `metered plan --json | head -c 0`: the reader is gone before anything
/// is written. The command stops quietly with 0, as Unix tools do; it
/// panicked with exit 101 and a backtrace before.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tmp("broken-pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(["plan", "--json"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Logs follow `RUST_LOG`, as the Lambdas' do (only the undocumented
/// `METERED_LOG` worked before), and a log written to a pipe or file has no
/// ANSI colour codes (it had them whatever the output).
#[test]
fn logs_follow_rust_log_and_stay_plain_in_a_pipe() {
    let dir = tmp("logs");
    let out = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(["quota-demo", "--jobs", "3", "--calls-per-job", "2"])
        .env("RUST_LOG", "debug")
        .env_remove("METERED_LOG")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG") && l.contains("quota granted")),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes in a pipe: {log:?}"
    );
    let quiet = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(["quota-demo", "--jobs", "3", "--calls-per-job", "2"])
        .env_remove("RUST_LOG")
        .env_remove("METERED_LOG")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("quota granted"),
        "warn by default"
    );
}
