//! `metered usage`, `records`, `quarantine` and `jobs` on SQLite and DynamoDB.

use super::*;

#[tokio::test]
async fn usage_records_and_quarantine_read_dynamodb_too() {
    use metered::quota::QuotaStore;
    let url = std::env::var("METERED_TEST_DYNAMODB_URL")
        .expect("METERED_TEST_DYNAMODB_URL: run `bash infra/test.sh`, which starts DynamoDB Local");
    let cfg = metered::adapters::aws::local_sdk_config(&url);
    let name = format!("metered-cli-usage-{}", std::process::id());
    let table = metered::adapters::aws::Table::new(aws_sdk_dynamodb::Client::new(&cfg), &name);
    table.create_if_missing().await.unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    let entry = metered::quota::UsageEntry {
        key: metered::QuotaKey::new("acme", "sim-booking"),
        day,
        source: "recent-records:invoices".into(),
        endpoint: "GET /invoices".into(),
        exempt: false,
        calls: 42,
        hours: [(
            9,
            metered::quota::HourUse {
                calls: 42,
                ..Default::default()
            },
        )]
        .into(),
    };
    metered::adapters::aws::DynamoQuota::new(table.clone())
        .record_usage(&[entry])
        .await
        .unwrap();
    let record = metered::Record {
        id: "cls_001".into(),
        updated_at: None,
        data: serde_json::json!({"id": "cls_001", "title": "Yoga"}),
    };
    let store = metered::adapters::aws::DynamoStore::new(table);
    let scope = metered::QuotaKey::new("acme", "sim-booking");
    metered::store::RecordStore::upsert(&store, &scope, "classes", &[record], chrono::Utc::now())
        .await
        .unwrap();
    // What a deployed function set aside is listed from the same table.
    let bad = metered::store::Quarantined::new(
        "complete-transfer:classes",
        "classes",
        None,
        "record type `classes`: record #3 of the response has no id at \"/id\"".into(),
        &serde_json::json!({"title": "Pilates"}),
        chrono::Utc::now(),
    );
    metered::store::RecordStore::quarantine(&store, &scope, &[bad])
        .await
        .unwrap();
    let dir = tmp("ddb-usage");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_metered"))
            .args(args)
            .args(["--dynamodb-table", &name, "--json"])
            .env("AWS_ENDPOINT_URL", &url)
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("AWS_REGION", "us-east-1")
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let rows = json(&cli(&["usage", "--day", "2026-11-22"]));
    assert_eq!(rows[0]["calls"], 42, "{rows}");
    assert_eq!(rows[0]["source"], "recent-records:invoices");
    let records = json(&cli(&["records", "classes"]));
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    assert_eq!(records[0]["record"]["data"]["title"], "Yoga");
    let quarantined = json(&cli(&["quarantine"]));
    assert_eq!(quarantined.as_array().unwrap().len(), 1, "{quarantined}");
    let q = &quarantined[0]["quarantined"];
    assert!(q["reason"].as_str().unwrap().contains("no id"), "{q}");
    assert!(q["excerpt"].as_str().unwrap().contains("Pilates"), "{q}");

    // A Data Source row the API refused: listed with the reason, retried
    // back to waiting. Org `beta` has a row with the same id, untouched.
    use metered::store::{Outbox, Refusal, RowChange, RowWrite};
    let now = chrono::Utc::now();
    let beta = metered::QuotaKey::new("beta", "sim-booking");
    for key in [&scope, &beta] {
        let row = RowWrite::new("v-1", RowChange::Insert(serde_json::json!({"id": "v-1"})));
        store.put_rows(key, "vips", &[row], now).await.unwrap();
    }
    let pending = store.pending_rows(&scope, "vips", 10).await.unwrap();
    let chunk = store
        .begin_chunk(&scope, "vips", &pending)
        .await
        .unwrap()
        .unwrap();
    let refusal = Refusal::SetAside {
        reason: "push: HTTP 422 — row v-1: bad email".into(),
    };
    store
        .refuse_chunk(&scope, "vips", &chunk, &refusal, now)
        .await
        .unwrap();
    let listed = json(&cli(&["outbox", "--datasource", "vips", "--org", "acme"]));
    assert_eq!(listed[0]["waiting"], 0, "{listed}");
    assert_eq!(listed[0]["refused"][0]["id"], "v-1", "{listed}");
    assert!(listed[0]["refused"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("bad email"));
    let retried = json(&cli(&[
        "outbox",
        "--retry-all",
        "--datasource",
        "vips",
        "--org",
        "acme",
    ]));
    assert_eq!(retried[0]["changed"]["rows"], 1, "{retried}");
    assert_eq!(retried[0]["waiting"], 1, "{retried}");
    assert!(retried[0]["refused"].as_array().unwrap().is_empty());
    assert_eq!(store.pending_count(&beta, "vips").await.unwrap(), 1);
    // A paused connection is listed with its reason and resumed.
    let quota = metered::adapters::aws::DynamoQuota::new(dynamo_table_for_test(&url, &name));
    let paused = metered::quota::Health::default().after_auth_failure(
        "GET /invoices: HTTP 401",
        now,
        metered::quota::PausePolicy { after_failures: 1 },
    );
    assert!(quota
        .swap_health(&scope, &metered::quota::Health::default(), &paused)
        .await
        .unwrap());
    let listed = json(&cli(&["connections", "--org", "acme"]));
    assert_eq!(listed[0]["paused"], true, "{listed}");
    assert!(listed[0]["state"].as_str().unwrap().contains("HTTP 401"));
    let resumed = json(&cli(&["connections", "--org", "acme", "--resume"]));
    assert_eq!(resumed[0]["paused"], false, "{resumed}");
    assert_eq!(resumed[0]["resumed"], true, "{resumed}");
    assert_eq!(
        quota.health(&scope).await.unwrap(),
        metered::quota::Health::default()
    );
    let both = cli(&[
        "outbox",
        "--retry-all",
        "--drop-all",
        "--datasource",
        "vips",
    ]);
    assert!(!both.status.success(), "retry or drop, not both");
}

/// A database written with `--config my-app.toml` is read as `my-app`
/// without the flag: the inspect commands take the app and orgs it holds,
/// say which, and refuse clearly when it holds several apps or none.
#[tokio::test]
async fn inspect_commands_read_the_app_the_database_holds() {
    use metered::quota::{QuotaKey, QuotaStore};
    use metered::store::RecordStore;
    let dir = tmp("db-app");
    let path = dir.join("mine.sqlite");
    let db = metered::adapters::sqlite::Db::open(&path).unwrap();
    let empty = json(&metered(&["jobs", "--db", "mine.sqlite", "--json"], &dir));
    assert_eq!(empty, serde_json::json!([]));
    let out = metered(&["records", "invoices", "--db", "mine.sqlite"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no app's data yet"), "{err}");

    let store = metered::adapters::sqlite::SqliteStore::new(db.clone());
    let quota = metered::adapters::sqlite::SqliteQuota::new(db.clone());
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    // Two orgs of one app whose record ids coincide.
    for (org, calls) in [("acme", 3), ("globex", 5)] {
        let key = QuotaKey::new(org, "my-app");
        let record = metered::Record {
            id: "inv_1".into(),
            updated_at: None,
            data: serde_json::json!({"id": "inv_1", "org": org}),
        };
        store
            .upsert(&key, "invoices", &[record], chrono::Utc::now())
            .await
            .unwrap();
        quota
            .record_usage(&[metered::quota::UsageEntry {
                key,
                day,
                source: "complete-transfer:invoices".into(),
                endpoint: "GET /invoices".into(),
                exempt: false,
                calls,
                hours: Default::default(),
            }])
            .await
            .unwrap();
    }
    let out = metered(
        &["records", "invoices", "--db", "mine.sqlite", "--json"],
        &dir,
    );
    let records = json(&out);
    let mut orgs: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"]["data"]["org"].as_str().unwrap())
        .collect();
    orgs.sort();
    assert_eq!(orgs, ["acme", "globex"], "{records}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("app `my-app`") && err.contains("acme, globex"),
        "{err}"
    );
    let usage = json(&metered(
        &[
            "usage",
            "--db",
            "mine.sqlite",
            "--day",
            "2026-11-22",
            "--json",
        ],
        &dir,
    ));
    let calls: u64 = usage
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(calls, 8, "{usage}");
    let one = json(&metered(
        &[
            "usage",
            "--db",
            "mine.sqlite",
            "--day",
            "2026-11-22",
            "--org",
            "globex",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(one[0]["calls"], 5, "{one}");
    // --config naming another app: its (empty) view, with a note.
    let out = metered(
        &[
            "records",
            "invoices",
            "--db",
            "mine.sqlite",
            "--config",
            "booking.toml",
        ],
        &dir,
    );
    assert!(!out.status.success(), "no booking.toml here yet");
    std::fs::write(
        dir.join("booking.toml"),
        include_str!("../../examples/booking.toml"),
    )
    .unwrap();
    let out = metered(
        &[
            "records",
            "invoices",
            "--db",
            "mine.sqlite",
            "--config",
            "booking.toml",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("holds no data of app `sim-booking`"),
        "{err}"
    );

    // A second app in the same database: the commands ask which.
    store
        .upsert(
            &QuotaKey::new("acme", "sim-booking"),
            "invoices",
            &[metered::Record {
                id: "inv_1".into(),
                updated_at: None,
                data: serde_json::json!({"id": "inv_1"}),
            }],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let out = metered(&["usage", "--db", "mine.sqlite"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("several apps (`my-app`, `sim-booking`)") && err.contains("--app"),
        "{err}"
    );
    let mine = json(&metered(
        &[
            "records",
            "invoices",
            "--db",
            "mine.sqlite",
            "--app",
            "my-app",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    let out = metered(
        &[
            "records",
            "invoices",
            "--db",
            "mine.sqlite",
            "--app",
            "nope",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no data of app `nope`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `metered jobs` names each job's org, id, kind and reason, counts them by
/// kind and reason, and filters by org, kind and reason, as text and JSON.
#[tokio::test]
async fn jobs_are_listed_counted_and_filtered() {
    use metered::jobs::JobQueue;
    use metered::jobs::{JobEnvelope, JobKind};
    let dir = tmp("jobs");
    let db = metered::adapters::sqlite::Db::open(dir.join("q.sqlite")).unwrap();
    let clock: metered::SharedClock = std::sync::Arc::new(metered::SystemClock);
    let queue = |kind: JobKind| {
        metered::adapters::sqlite::SqliteQueue::new(db.clone(), kind.as_str(), clock.clone(), 5)
    };
    let now = chrono::Utc::now();
    // Both orgs have a job with the same id, as tenants' ids coincide.
    for org in ["acme", "globex"] {
        let mut job = JobEnvelope::new(
            JobKind::CompleteTransfer,
            org,
            "my-app",
            serde_json::json!({"record_type": "invoices"}),
            now,
        );
        job.id = "job-1".into();
        job.restarts = 2;
        job.last_reason = Some("day limit reached".into());
        queue(JobKind::CompleteTransfer)
            .send(&job, 600)
            .await
            .unwrap();
    }
    let mut http = JobEnvelope::new(
        JobKind::ActionHttp,
        "acme",
        "my-app",
        serde_json::json!({"workflow": "vip"}),
        now,
    );
    // As long as the uuids jobs get: printed whole, for `dlq show`.
    http.id = "act-9e1c2b7a-4f0d-4c39-9d2e-5b8f0a1c3d4e".into();
    queue(JobKind::ActionHttp)
        .dead_letter(&http.to_body(), "POST /notes: 422 Unprocessable")
        .await
        .unwrap();

    let all = json(&metered(&["jobs", "--db", "q.sqlite", "--json"], &dir));
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let dead = all
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["state"] == "dead")
        .unwrap();
    assert_eq!(
        (&dead["org"], &dead["id"], &dead["kind"], &dead["detail"]),
        (
            &"acme".into(),
            &"act-9e1c2b7a-4f0d-4c39-9d2e-5b8f0a1c3d4e".into(),
            &"action-http".into(),
            &"vip".into()
        ),
        "{dead}"
    );
    let globex = json(&metered(
        &["jobs", "--db", "q.sqlite", "--org", "globex", "--json"],
        &dir,
    ));
    assert_eq!(globex.as_array().unwrap().len(), 1, "{globex}");
    assert_eq!(globex[0]["restarts"], 2);
    assert_eq!(globex[0]["detail"], "invoices");
    assert!(globex[0]["not_before"].is_string(), "{globex}");
    let limit = json(&metered(
        &[
            "jobs",
            "--db",
            "q.sqlite",
            "--reason",
            "DAY LIMIT",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(limit.as_array().unwrap().len(), 2, "{limit}");
    let kind = json(&metered(
        &[
            "jobs",
            "--db",
            "q.sqlite",
            "--kind",
            "action-http",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(kind.as_array().unwrap().len(), 1, "{kind}");

    let text = metered(&["jobs", "--db", "q.sqlite"], &dir);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l.contains("waiting")
            && l.contains("complete-transfer")
            && l.contains(" 2  day limit reached")),
        "counts by kind and reason:\n{text}"
    );
    assert!(text.contains("globex"), "{text}");
    assert!(
        text.contains("act-9e1c2b7a-4f0d-4c39-9d2e-5b8f0a1c3d4e"),
        "ids whole: {text}"
    );
    // A paused connection is named under the jobs that wait for it.
    let quota = metered::adapters::sqlite::SqliteQuota::new(db.clone());
    let paused = metered::quota::Health::default().after_auth_failure(
        "GET /invoices: HTTP 401",
        now,
        metered::quota::PausePolicy { after_failures: 1 },
    );
    let acme = metered::QuotaKey::new("acme", "my-app");
    assert!(metered::quota::QuotaStore::swap_health(
        &quota,
        &acme,
        &metered::quota::Health::default(),
        &paused
    )
    .await
    .unwrap());
    let text = metered(&["jobs", "--db", "q.sqlite"], &dir);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("connection of acme paused until")
                && l.contains("HTTP 401")
                && l.contains("--resume")),
        "{text}"
    );
    assert!(!text.contains("connection of globex"), "{text}");
    let bad = metered(&["jobs", "--db", "q.sqlite", "--kind", "nonsense"], &dir);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown kind `nonsense`"));
    let none = metered(&["jobs", "--db", "q.sqlite", "--org", "initech"], &dir);
    assert!(String::from_utf8_lossy(&none.stdout)
        .contains("no jobs waiting and no dead letters that match"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A simulated day under `[app.limits.shares]`, then `usage`: the capped
/// kind stopped at its cap (5% of 2,500) with its refusals counted, the
/// others went on, nothing dead-lettered.
#[test]
fn usage_shows_each_share_after_a_run_under_shares() {
    let dir = tmp("usage-shares");
    example_edited(&dir, "shares.toml", "max_concurrent = 3\n", SHARES);
    let run = json(&metered(
        &[
            "run",
            "--config",
            "shares.toml",
            "--sim",
            "--simulate",
            "1",
            "--start",
            "2026-11-22T00:00:00Z",
            "--db",
            "s.sqlite",
            "--json",
        ],
        &dir,
    ));
    assert_eq!(run["report"]["dead_lettered"], 0, "{run}");
    let out = metered(
        &[
            "usage",
            "--db",
            "s.sqlite",
            "--config",
            "shares.toml",
            "--day",
            "2026-11-22",
        ],
        &dir,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |kind: &str| {
        text.lines()
            .find(|l| l.contains(" acme ") && l.contains(kind) && l.contains('%'))
            .unwrap_or_else(|| panic!("no share line for {kind}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let recent = line("recent-records");
    assert_eq!(recent[2..5], ["0%", "5%", "125"], "{text}");
    assert!(
        recent[5].parse::<u64>().unwrap() > 0,
        "refusals counted: {text}"
    );
    let workflow = line("workflow");
    assert_eq!(workflow[2..4], ["20%", "100%"], "{text}");
    assert!(
        workflow[4].parse::<u64>().unwrap() > 100,
        "actions went on: {text}"
    );
}
