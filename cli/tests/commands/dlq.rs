//! `metered dlq`: dead letters listed, shown and redriven, on SQLite and SQS.

use super::*;

/// Two orgs' dead-lettered jobs with the same id, on one queue.
async fn dead_letter_two_orgs(queue: &dyn metered::jobs::JobQueue) {
    for org in ["acme", "globex"] {
        let mut job = metered::JobEnvelope::new(
            metered::JobKind::Workflow,
            org,
            "sim-booking",
            serde_json::json!({"workflow": "vip"}),
            chrono::Utc::now(),
        );
        job.id = "job-1".into();
        job.restarts = 50;
        queue
            .dead_letter(&job.to_body(), "restart cap (50) reached")
            .await
            .unwrap();
    }
}

/// `metered dlq` on `cmd`'s queues: list both orgs' dead letters, show
/// one id, redrive one org's with its restarts reset; the other stays.
fn dlq_list_show_redrive(cmd: &dyn Fn(&[&str]) -> Output) {
    let list = json(&cmd(&["dlq", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["kind"] == "workflow" && d["id"] == "job-1" && d["restarts"] == 50));
    // A dry run moves nothing; an unfiltered redrive wants --all.
    let dry = json(&cmd(&[
        "dlq",
        "redrive",
        "--org",
        "acme",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(dry["would_redrive"], 1, "{dry}");
    let unfiltered = cmd(&["dlq", "redrive"]);
    assert!(!unfiltered.status.success());
    assert!(
        String::from_utf8_lossy(&unfiltered.stderr).contains("every dead letter (2)")
            && String::from_utf8_lossy(&unfiltered.stderr).contains("--all"),
        "{}",
        String::from_utf8_lossy(&unfiltered.stderr)
    );
    let by_reason = json(&cmd(&[
        "dlq",
        "list",
        "--reason",
        "NO SUCH REASON",
        "--json",
    ]));
    assert!(by_reason.as_array().unwrap().is_empty(), "{by_reason}");
    assert_eq!(
        json(&cmd(&["dlq", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        2,
        "nothing moved"
    );
    let out = json(&cmd(&[
        "dlq",
        "redrive",
        "--id",
        "job-1",
        "--org",
        "acme",
        "--reset-restarts",
        "--json",
    ]));
    assert_eq!(out["redriven"], 1, "{out}");
    assert_eq!(out["by_kind"]["workflow"], 1, "{out}");
    let show = json(&cmd(&["dlq", "show", "job-1"]));
    assert_eq!(show.as_array().unwrap().len(), 1, "{show}");
    assert_eq!(show[0]["org"], "globex");
    assert_eq!(show[0]["body"]["payload"]["workflow"], "vip", "{show}");
    let missing = cmd(&["dlq", "show", "job-404"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter with id `job-404`"));
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven_on_sqlite() {
    let dir = tmp("dlq-sqlite");
    let db = metered::adapters::sqlite::Db::open(dir.join("q.sqlite")).unwrap();
    let clock: metered::SharedClock = std::sync::Arc::new(metered::SystemClock);
    let queue = metered::adapters::sqlite::SqliteQueue::new(db, "workflow", clock, 5);
    dead_letter_two_orgs(&queue).await;
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--db", "q.sqlite"]);
        metered(&all, &dir)
    };
    dlq_list_show_redrive(&run);
    let jobs = json(&run(&["jobs", "--json", "--kind", "workflow"]));
    let waiting: Vec<_> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "waiting")
        .collect();
    assert_eq!(waiting.len(), 1, "{jobs}");
    assert_eq!(
        (&waiting[0]["org"], &waiting[0]["restarts"]),
        (&"acme".into(), &0.into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven_on_ministack_sqs() {
    use metered::jobs::JobQueue;
    let url = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL: run `bash infra/test.sh`, which starts ministack");
    let client = aws_sdk_sqs::Client::new(&metered::adapters::aws::local_sdk_config(&url));
    let name = format!("metered-cli-dlq-{}", std::process::id());
    let mut urls = Vec::new();
    for q in [name.clone(), format!("{name}-dlq")] {
        let out = client.create_queue().queue_name(q).send().await.unwrap();
        urls.push(out.queue_url.unwrap());
    }
    let queue = metered::adapters::aws::SqsQueue::new(client, &urls[0], &urls[1]).with_wait_secs(0);
    dead_letter_two_orgs(&queue).await;
    let dir = tmp("dlq-sqs");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--sqs");
        Command::new(env!("CARGO_BIN_EXE_metered"))
            .args(&all)
            .current_dir(&dir)
            .env("AWS_ENDPOINT_URL_SQS", &url)
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("AWS_REGION", "us-east-1")
            .env("METERED_QUEUE_URL_WORKFLOW", &urls[0])
            .env("METERED_DLQ_URL_WORKFLOW", &urls[1])
            .output()
            .expect("run metered")
    };
    dlq_list_show_redrive(&run);
    let mut back = Vec::new();
    for _ in 0..10 {
        back.extend(queue.receive(10, 30).await.unwrap());
        if !back.is_empty() {
            break;
        }
    }
    assert_eq!(back.len(), 1);
    let job = metered::JobEnvelope::parse(&back[0].body).unwrap();
    assert_eq!((job.org.as_str(), job.restarts), ("acme", 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The operator's whole story on SQLite: a broken config dead-letters both
/// orgs' transfers (their classes have the same ids), the config is fixed,
/// `metered dlq redrive --org acme` puts acme's back, and the next run
/// finishes exactly that job; globex's stays dead until redriven.
#[tokio::test]
async fn a_redriven_dead_letter_runs_to_completion_on_sqlite() {
    use metered::jobs::{Claim, JobLedger};
    let dir = tmp("redrive-done");
    let example = include_str!("../../examples/booking.toml");
    let head = &example[..example.find("[record_types.invoices]").unwrap()];
    let fixed = format!(
        "{head}\n[[connections]]\norg = \"acme\"\n\n[[connections]]\norg = \"globex\"\n\n\
         [syncs.classes]\ncomplete_transfer = {{ every = \"48h\" }}\n"
    );
    // Every 48 h: the second run continues the simulation a day later,
    // where no new transfer falls due, so the one that runs is the redriven.
    let broken = fixed.replace("records_pointer = \"\"", "records_pointer = \"/nope\"");
    assert_ne!(broken, fixed);
    std::fs::write(dir.join("fixed.toml"), &fixed).unwrap();
    std::fs::write(dir.join("broken.toml"), &broken).unwrap();
    let run = |config: &str, extra: &[&str]| {
        json(&metered(
            &[
                &[
                    "run",
                    "--config",
                    config,
                    "--sim",
                    "--simulate",
                    "1",
                    "--db",
                    "d.sqlite",
                    "--json",
                ][..],
                extra,
            ]
            .concat(),
            &dir,
        ))
    };
    // Simulated days long past: a redrive at the wall clock's now would
    // hide the job from the next simulated run (#33 item 7).
    let first = run("broken.toml", &["--start", "2026-11-22T00:00:00Z"]);
    assert_eq!(first["report"]["dead_lettered"], 2, "{first}");
    let dead = json(&metered(
        &["dlq", "list", "--db", "d.sqlite", "--json"],
        &dir,
    ));
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in dead {
        assert_eq!(d["kind"], "complete-transfer", "{d}");
        assert!(
            d["reason"].as_str().unwrap().contains("records"),
            "the reason names what was wrong: {d}"
        );
    }
    let acme = dead.iter().find(|d| d["org"] == "acme").unwrap();
    let id = acme["id"].as_str().unwrap().to_string();
    // The generation the dead letter carries: once it finished, the job
    // ledger drops any other delivery of it as already done.
    let shown = json(&metered(&["dlq", "show", &id, "--db", "d.sqlite"], &dir));
    let generation = shown[0]["body"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("the dead letter's generation: {shown}"))
        as u32;
    let out = json(&metered(
        &[
            "dlq", "redrive", "--org", "acme", "--db", "d.sqlite", "--json",
        ],
        &dir,
    ));
    assert_eq!(out["redriven"], 1, "{out}");
    let jobs = json(&metered(
        &["jobs", "--db", "d.sqlite", "--json", "--org", "acme"],
        &dir,
    ));
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id.as_str() && j["state"] == "waiting"),
        "{id} waits again: {jobs}"
    );
    let second = run("fixed.toml", &[]);
    assert_eq!(
        second["report"]["done"]["complete-transfer"], 1,
        "one transfer ran (the schedule started none): {second}"
    );
    assert_eq!(
        second["report"]["not_before_hops"], 0,
        "it ran at once: {second}"
    );
    let db = metered::adapters::sqlite::Db::open(dir.join("d.sqlite")).unwrap();
    let store = metered::adapters::sqlite::SqliteStore::new(db);
    let key = metered::QuotaKey::new("acme", "sim-booking");
    let now = chrono::Utc::now() + chrono::Duration::days(3);
    assert_eq!(
        store.claim(&key, &id, generation, now, now).await.unwrap(),
        Claim::AlreadyDone,
        "the redriven job {id} finished"
    );
    let other = json(&metered(
        &["dlq", "list", "--db", "d.sqlite", "--json"],
        &dir,
    ));
    assert_eq!(other.as_array().unwrap().len(), 1, "{other}");
    assert_eq!(
        other[0]["org"], "globex",
        "only acme's was redriven: {other}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
