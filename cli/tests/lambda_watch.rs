//! The real function binaries under `cargo lambda watch`, against DynamoDB
//! Local and ministack, with the simulated API: a schedule event (the one
//! `sam local generate-event cloudwatch scheduled-event` makes) starts a
//! sync; a small driver moves messages from the ministack queues to the
//! functions as SQS events, as the event source mapping would; records land
//! in DynamoDB; a workflow's actions reach the API once each; the ones the
//! budget refuses wait in their queue with a delay.

mod common;

use common::workspace;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        // `setsid` made the watcher a process group leader: stop it and the
        // functions it runs (`--` so the negative pid is not read as an option).
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_under_cargo_lambda_watch_against_local_aws() {
    let ddb = std::env::var("METERED_TEST_DYNAMODB_URL")
        .expect("METERED_TEST_DYNAMODB_URL: run `bash infra/test.sh`");
    let sqs_url = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL: run `bash infra/test.sh`");
    let lambda = Command::new("cargo").args(["lambda", "--version"]).output();
    assert!(
        lambda.is_ok_and(|o| o.status.success()),
        "cargo lambda is not on PATH: `bash infra/test.sh` installs it (pip install cargo-lambda)"
    );

    let (sim, server) = common::start_sim().await;

    // Table and queues from template.yaml.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("metered-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aws_env = [
        ("AWS_ENDPOINT_URL_DYNAMODB", ddb.as_str()),
        ("AWS_ENDPOINT_URL_SQS", sqs_url.as_str()),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("AWS_REGION", "us-east-1"),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_metered"))
        .args([
            "local-infra",
            "--template",
            workspace().join("template.yaml").to_str().unwrap(),
            "--prefix",
            &format!("w{}", std::process::id()),
        ])
        .envs(aws_env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.strip_prefix("export ")?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();

    // Plus a hosted Data Source, for the hosted-get function below.
    let config = format!(
        "{}\n[datasources.class_feed]\nmode = \"hosted\"\nsecret = {{ env = \"CLASS_FEED_JWT\" }}\n",
        common::notes_scenario(&metered_sim::app_config(&server.base_url()))
    );
    let config_path = dir.join("app.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut env_file = String::new();
    for (k, v) in vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(aws_env)
    {
        env_file.push_str(&format!("{k}={v}\n"));
    }
    env_file.push_str(&format!(
        "METERED_APP_CONFIG={}\nSIM_API_KEY=watch-key\nCLASS_FEED_JWT=class-feed-hs256-key-0123456789abcdef0123\nRUST_LOG=info\n",
        config_path.display()
    ));
    std::fs::write(dir.join("functions.env"), env_file).unwrap();

    let port = free_port();
    let child = Command::new("setsid")
        .args([
            "cargo",
            "lambda",
            "watch",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--env-file",
        ])
        .arg(dir.join("functions.env"))
        .current_dir(workspace())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("watch.log")).unwrap())
        .spawn()
        .expect("start cargo lambda watch");
    let _watch = Watch(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cargo lambda watch did not start: {}",
            std::fs::read_to_string(dir.join("watch.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first invoke of each function builds it (`cargo run --bin NAME`
    // resolves features for that package alone, so dependencies may be
    // rebuilt once; infra/test.sh builds them beforehand, but beside the
    // other AWS suites on 2 cores a first invoke took most of 5 minutes):
    // allow minutes, not seconds.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let invoke = |function: &'static str, event: serde_json::Value| {
        let (http, dir) = (http.clone(), dir.clone());
        async move {
            let r = http
                .post(format!(
                    "http://127.0.0.1:{port}/2015-03-31/functions/{function}/invocations"
                ))
                .json(&event)
                .send()
                .await
                .unwrap_or_else(|e| {
                    let log = std::fs::read_to_string(dir.join("watch.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "{function}: {e}; the last lines of cargo lambda watch's log \
                         (a first invoke compiling means infra/test.sh's prebuild \
                         did not match the watcher's build):\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                });
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
            assert!(status.is_success(), "{function}: HTTP {status} {body}");
            body
        }
    };

    // A schedule event starts the due sync.
    let tick: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/scheduled-event.json")).unwrap();
    let out = invoke("scheduler", tick).await;
    assert_eq!(out["started"].as_array().map(Vec::len), Some(1), "{out}");

    // The driver: queue → SQS event → function → delete what succeeded.
    let cfg = metered::adapters::aws::local_sdk_config(&sqs_url);
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let template: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/sqs-event.json")).unwrap();
    let functions = [
        ("complete-transfer", "COMPLETE_TRANSFER"),
        ("workflow", "WORKFLOW"),
        ("action-http", "ACTION_HTTP"),
    ];
    let mut idle_rounds = 0;
    while idle_rounds < 2 {
        let mut moved = 0;
        for (function, suffix) in functions {
            let url = &vars[&format!("METERED_QUEUE_URL_{suffix}")];
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            moved += messages.len();
            let records: Vec<serde_json::Value> = messages
                .iter()
                .map(|m| {
                    let mut r = template["Records"][0].clone();
                    r["messageId"] = m.message_id.clone().unwrap().into();
                    r["receiptHandle"] = m.receipt_handle.clone().unwrap().into();
                    r["body"] = m.body.clone().unwrap().into();
                    r
                })
                .collect();
            let response = invoke(function, serde_json::json!({ "Records": records })).await;
            let failed: Vec<&str> = response["batchItemFailures"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["itemIdentifier"].as_str())
                .collect();
            assert!(
                failed.is_empty(),
                "{function} reported failures: {response}"
            );
            for m in &messages {
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle.clone().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        idle_rounds = if moved == 0 { idle_rounds + 1 } else { 0 };
    }

    // Records landed in DynamoDB.
    let table = metered::adapters::aws::Table::new(
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&cfg)
                .endpoint_url(&ddb)
                .build(),
        ),
        &vars["METERED_TABLE"],
    );
    let store = metered::adapters::aws::DynamoStore::new(table);
    let key = metered::QuotaKey::new("acme", "sim-booking");
    assert_eq!(
        metered::store::RecordStore::count(&store, &key, "classes")
            .await
            .unwrap(),
        30
    );
    // Two notes reached the API, once each; the budget (3 a day) refused the rest.
    let stats = sim.stats();
    assert_eq!(stats.calls("GET /classes"), 1);
    assert_eq!(
        stats.calls("POST /notes"),
        2,
        "{:?}",
        stats.calls_by_endpoint
    );
    assert!(stats.creates_by_idempotency_key.values().all(|n| *n == 1));
    // The three refused actions wait in their queue, delayed, not lost.
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&vars["METERED_QUEUE_URL_ACTION_HTTP"])
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap();
    let delayed: u32 = attrs.attributes.unwrap()
        [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed]
        .parse()
        .unwrap();
    assert_eq!(delayed, 3, "restarted actions wait with their delay");
    let dead = sqs
        .receive_message()
        .queue_url(&vars["METERED_DLQ_URL_ACTION_HTTP"])
        .send()
        .await
        .unwrap();
    assert!(
        dead.messages.unwrap_or_default().is_empty(),
        "nothing dead-lettered"
    );

    // Hosted GET under `cargo lambda watch`: its Function URL emulation
    // carries the request to hosted-get, which reads the table.
    metered::store::Outbox::put_rows(
        &store,
        &key,
        "class_feed",
        &[metered::store::RowWrite::new(
            "cls_1",
            metered::store::RowChange::Insert(serde_json::json!({"id": "cls_1"})),
        )],
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"org": "acme", "sub": "u1", "exp": chrono::Utc::now().timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"class-feed-hs256-key-0123456789abcdef0123"),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/lambda-url/hosted-get/datasources/class_feed/rows");
    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["rows"], serde_json::json!([{"id": "cls_1"}]), "{body}");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let _ = std::fs::remove_dir_all(&dir);
}
