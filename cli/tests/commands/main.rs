//! The `metered` commands end to end, as a user runs them: one file per
//! command family, the helpers they share here (one test binary, so the
//! CLI and its dependencies link once).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod basics;
mod charts;
mod demo;
mod dlq;
mod docs;
mod inspect;
mod plan;
mod run;
mod serve;

fn metered(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run metered")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metered-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The bundled example with `from` replaced by `to` once, written to
/// `dir/name` (the edit must apply).
fn example_edited(dir: &Path, name: &str, from: &str, to: &str) {
    let example = include_str!("../../examples/booking.toml");
    let edited = example.replacen(from, to, 1);
    assert_ne!(edited, example, "{from:?} is in the example");
    std::fs::write(dir.join(name), edited).unwrap();
}

fn dynamo_table_for_test(url: &str, name: &str) -> metered::adapters::aws::Table {
    let cfg = metered::adapters::aws::local_sdk_config(url);
    metered::adapters::aws::Table::new(aws_sdk_dynamodb::Client::new(&cfg), name)
}

/// Runs `metered` with a deadline: a command that should refuse at once
/// must not be left running (a real-time `run` would run forever).
fn metered_within(args: &[&str], dir: &Path, secs: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run metered");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`metered {}` still running after {secs} s", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Runs `command` (a real-time `metered run`, which never ends on its own)
/// and reads its stdout lines until `enough` says so or `secs` pass, then
/// stops it.
fn follow_stdout(mut command: Command, secs: u64, enough: &dyn Fn(&str) -> bool) -> Vec<String> {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run metered");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut lines = Vec::new();
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = enough(&line);
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// The example's limits with the actions reserving 20% and recent
/// lookups capped at 5% (125 of 2,500).
const SHARES: &str = "max_concurrent = 3\n[app.limits.shares]\nworkflow = { reserve_percent = 20 }\nrecent-records = { cap_percent = 5 }\n";
