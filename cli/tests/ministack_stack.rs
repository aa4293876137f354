//! `template.yaml` itself, deployed to ministack's CloudFormation (the SAM
//! transform applied by aws-sam-translator), and the system running there:
//! ministack runs the built function binaries as `provided.al2023` Lambdas,
//! its SQS event source mappings (made from the template's `Events`) carry
//! jobs from handler to handler, the functions read their config from SSM
//! and the API key from Secrets Manager as deployed. No driver moves
//! messages here: if the template wired a queue wrong, nothing would run.
//!
//! Deviations from a real deployment, made by `infra/local/deploy-ministack.py`:
//! the code is a zip of the host's (x86_64 debug) build rather than the
//! arm64 `sam build` output, and `Architectures` follows the host.

mod common;

use common::workspace;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The folder cargo built this test's binaries into (`target/debug`); the
/// function binaries are workspace members built beside `metered`.
/// `METERED_STACK_BINARIES` names another (optimised builds, to measure the
/// cold starts this test prints; `METERED_STACK_ENV="K=V ..."` adds
/// variables to every function's environment).
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("METERED_STACK_BINARIES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_BIN_EXE_metered"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The hosted Data Source's HS256 key: 32+ bytes, as the config loader demands.
const PORTAL_KEY: &str = "portal-hs256-key-for-the-stack-0123456789abcdef";

/// The template's functions, by binary.
const FUNCTIONS: [&str; 8] = [
    "scheduler",
    "complete-transfer",
    "recent-records",
    "pk-lookup",
    "workflow",
    "action-http",
    "action-datasource-push",
    "hosted-get",
];

struct Deployed {
    endpoint: String,
    stack: String,
    outputs: HashMap<String, String>,
    functions: HashMap<String, String>,
}

/// Deleting the stack stops its event source mappings, which would
/// otherwise keep polling for as long as ministack runs.
impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = Command::new(workspace().join(".tools/venv/bin/python"))
            .arg(workspace().join("infra/local/deploy-ministack.py"))
            .args(["--endpoint", &self.endpoint, "--stack", &self.stack])
            .args(["--binaries", ".", "--delete"])
            .output();
    }
}

fn deploy(endpoint: &str, stack: &str, params: &[(&str, &str)]) -> Deployed {
    let python = workspace().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash infra/test.sh` (it installs ministack with aws-sam-translator)",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join("infra/local/deploy-ministack.py"))
        .args(["--endpoint", endpoint, "--stack", stack, "--binaries"])
        .arg(binaries());
    for (k, v) in params {
        cmd.args(["--parameter", &format!("{k}={v}")]);
    }
    // To compare cold starts with and without connections opened in init,
    // and over TLS (infra/local/measure-cold-start.sh).
    if let Ok(v) = std::env::var("METERED_WARM_CONNECTIONS") {
        cmd.args(["--env", &format!("METERED_WARM_CONNECTIONS={v}")]);
    }
    for pair in std::env::var("METERED_STACK_ENV")
        .unwrap_or_default()
        .split_whitespace()
    {
        cmd.args(["--env", pair]);
    }
    let out = cmd.output().expect("run deploy-ministack.py");
    assert!(
        out.status.success(),
        "deploying template.yaml to ministack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let map = |k: &str| -> HashMap<String, String> {
        v[k].as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    };
    Deployed {
        endpoint: endpoint.to_string(),
        stack: stack.to_string(),
        outputs: map("outputs"),
        functions: map("functions"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_deploys_to_ministack_and_the_system_runs_there() {
    let endpoint = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL (ministack): run `bash infra/test.sh`");
    for f in FUNCTIONS {
        assert!(
            binaries().join(f).exists(),
            "{f} is not built in {}: `cargo build --workspace` first",
            binaries().display()
        );
    }

    let (sim, server) = common::start_sim().await;

    let stack = format!("metered-t{}", std::process::id());
    let config_name = format!("/metered/{stack}/app-config");
    let secret_name = format!("metered/{stack}/sim");
    let cfg = metered::adapters::aws::local_sdk_config(&endpoint);

    // As an operator would: the API key in Secrets Manager, the app's config
    // in SSM, then the stack, whose parameters name both.
    aws_sdk_secretsmanager::Client::new(&cfg)
        .create_secret()
        .name(&secret_name)
        .secret_string("stack-key")
        .send()
        .await
        .unwrap();
    // A hosted Data Source too, its JWT key in Secrets Manager, so the
    // hosted-get function starts as deployed (it reads the key at init).
    let portal_secret = format!("metered/{stack}/hosted/portal");
    aws_sdk_secretsmanager::Client::new(&cfg)
        .create_secret()
        .name(&portal_secret)
        .secret_string(PORTAL_KEY)
        .send()
        .await
        .unwrap();
    let config = common::notes_scenario(&metered_sim::app_config(&server.base_url()).replace(
        "secret = { env = \"SIM_API_KEY\" }",
        &format!("secret = {{ secrets_manager = \"{secret_name}\" }}"),
    )) + &format!(
        "[datasources.portal]\nmode = \"hosted\"\nsecret = {{ secrets_manager = \"{portal_secret}\" }}\n"
    );
    assert!(
        config.contains("secrets_manager"),
        "the sim's auth line moved"
    );
    aws_sdk_ssm::Client::new(&cfg)
        .put_parameter()
        .name(&config_name)
        .value(config)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let secret_arn =
        format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:metered/{stack}/*");
    let deployed = deploy(
        &endpoint,
        &stack,
        &[
            ("AppConfigParameter", &config_name),
            ("ApiSecretArn", &secret_arn),
            (
                "HostedSecretArn",
                &format!(
                    "arn:aws:secretsmanager:us-east-1:000000000000:secret:metered/{stack}/hosted/*"
                ),
            ),
        ],
    );

    // A schedule event, through ministack's Lambda Invoke API.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let tick: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/scheduled-event.json")).unwrap();
    let r = http
        .post(format!(
            "{endpoint}/2015-03-31/functions/{}/invocations",
            deployed.functions["scheduler"]
        ))
        .json(&tick)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let out: serde_json::Value = r.json().await.unwrap_or_default();
    assert!(status.is_success(), "scheduler: HTTP {status} {out}");
    assert_eq!(out["started"].as_array().map(Vec::len), Some(1), "{out}");

    // From here on only the stack's event source mappings move work.
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let table = metered::adapters::aws::Table::new(
        aws_sdk_dynamodb::Client::new(&cfg),
        &deployed.outputs["TableName"],
    );
    let store = metered::adapters::aws::DynamoStore::new(table);
    let key = metered::QuotaKey::new("acme", "sim-booking");
    // (delayed, visible + in flight) messages of a queue.
    let depth = |queue: String| {
        let sqs = sqs.clone();
        async move {
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap_or_default();
            let n = |a: aws_sdk_sqs::types::QueueAttributeName| -> u64 {
                attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0)
            };
            (
                n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    + n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            )
        }
    };
    let started = Instant::now();
    let (records, notes, waiting) = loop {
        let records = metered::store::RecordStore::count(&store, &key, "classes")
            .await
            .unwrap_or(0);
        let notes = sim.stats().calls("POST /notes");
        let waiting = depth(deployed.outputs["ActionHttpQueueUrl"].clone()).await;
        // A refused action's delayed copy is sent before the mapping
        // deletes the message that carried it: wait for both.
        if (records, notes, waiting) == (30, 2, (3, 0))
            || started.elapsed() > Duration::from_secs(180)
        {
            break (records, notes, waiting);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stats = sim.stats();
    // The functions' own logs are in ministack's (.tools/run/ministack.log).
    assert_eq!(records, 30, "records in the stack's table");
    assert_eq!(
        stats.calls("GET /classes"),
        1,
        "{:?}",
        stats.calls_by_endpoint
    );
    assert_eq!(
        notes, 2,
        "two notes within the budget: {:?}",
        stats.calls_by_endpoint
    );
    assert!(stats.creates_by_idempotency_key.values().all(|n| *n == 1));
    assert_eq!(
        waiting,
        (3, 0),
        "the three refused actions wait in their queue with a delay, nothing else in flight"
    );
    for (name, url) in &deployed.outputs {
        if name.ends_with("DeadLetterQueueUrl") {
            let (d, n) = depth(url.clone()).await;
            assert_eq!(d + n, 0, "{name}: nothing dead-lettered");
        }
    }
    // The sync's own queues drained: the mappings deleted what succeeded.
    for q in ["CompleteTransferQueueUrl", "WorkflowQueueUrl"] {
        assert_eq!(depth(deployed.outputs[q].clone()).await, (0, 0), "{q}");
    }

    // What an operator sees: the alarms and the dashboard deployed with the
    // stack, and the EMF metrics in the functions' logs telling what the
    // API saw.
    // An invocation's log lines land when it returns, which may be just
    // after the queues showed its work: read until they tell the whole run.
    let started = Instant::now();
    let mut late_lines = LateLines::new();
    let (seen, sums) = loop {
        let seen = observe(&deployed);
        let sums = emf_sums(&seen);
        let calls: f64 = sums
            .iter()
            .filter(|((_, n), _)| n == "CallsMade")
            .map(|(_, v)| v)
            .sum();
        if calls as u64 >= stats.served() || started.elapsed() > Duration::from_secs(60) {
            break (seen, sums);
        }
        late_lines.hand_on(&deployed, &http, &seen, |_| true).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let alarms = seen["alarms"].as_array().unwrap();
    for (name, _) in deployed
        .outputs
        .iter()
        .filter(|(n, _)| n.ends_with("DeadLetterQueueUrl"))
    {
        let queue = deployed.outputs[name]
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        assert!(
            alarms.iter().any(|a| a["Namespace"] == "AWS/SQS"
                && a["Dimensions"][0]["Value"] == queue.as_str()
                && a["Threshold"] == 0.0
                && a["AlarmActions"].as_array().is_some_and(|v| !v.is_empty())),
            "{queue}: an alarm on its depth in {alarms:?}"
        );
    }
    assert!(
        alarms
            .iter()
            .any(|a| a["MetricName"] == metered::core::EARLY_BURN),
        "the burn alarm: {alarms:?}"
    );
    assert_eq!(
        seen["dashboards"].as_array().map(Vec::len),
        Some(1),
        "{seen}"
    );
    let metric = |f: &str, m: &str| {
        sums.get(&(f.to_string(), m.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    let total = |m: &str| {
        sums.iter()
            .filter(|((_, n), _)| n == m)
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!(
        total("CallsMade") as u64,
        stats.served(),
        "calls in the logs = calls served: {sums:?}"
    );
    assert_eq!(
        metric("complete-transfer", "RecordsSynced"),
        30.0,
        "{sums:?}"
    );
    assert_eq!(metric("action-http", "ActionsPerformed"), 2.0, "{sums:?}");
    assert!(metric("action-http", "DenialsDayLimit") >= 3.0, "{sums:?}");
    assert!(metric("action-http", "Restarts") >= 3.0, "{sums:?}");
    assert_eq!(total("DeadLetters"), 0.0, "{sums:?}");

    // A dead letter (a workflow job that died of the restart cap) is put
    // back with the operator's command on the stack's SQS queues, and the
    // stack's own event source mapping runs it to completion.
    use metered::jobs::JobQueue;
    use metered::jobs::{Claim, JobLedger};
    let workflow_queues = metered::adapters::aws::SqsQueue::new(
        sqs.clone(),
        &deployed.outputs["WorkflowQueueUrl"],
        &deployed.outputs["WorkflowDeadLetterQueueUrl"],
    );
    let mut job = metered::JobEnvelope::new(
        metered::JobKind::Workflow,
        "acme",
        "sim-booking",
        serde_json::json!({"workflow": "notes", "ids": ["cls_010"], "dry_run": false}),
        chrono::Utc::now(),
    );
    job.restarts = 100;
    workflow_queues
        .dead_letter(&job.to_body(), "restart cap of 100 reached")
        .await
        .unwrap();
    let dlq_cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_metered"))
            .args(args)
            .arg("--sqs")
            .env("AWS_ENDPOINT_URL_SQS", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("AWS_REGION", "us-east-1")
            .env(
                "METERED_QUEUE_URL_WORKFLOW",
                &deployed.outputs["WorkflowQueueUrl"],
            )
            .env(
                "METERED_DLQ_URL_WORKFLOW",
                &deployed.outputs["WorkflowDeadLetterQueueUrl"],
            )
            .output()
            .expect("run metered dlq");
        assert!(
            out.status.success(),
            "metered {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let listed = dlq_cli(&["dlq", "list", "--json"]);
    assert_eq!(listed[0]["id"], job.id.as_str(), "{listed}");
    let redriven = dlq_cli(&[
        "dlq",
        "redrive",
        "--kind",
        "workflow",
        "--reset-restarts",
        "--json",
    ]);
    assert_eq!(redriven["redriven"], 1, "{redriven}");
    let started = Instant::now();
    let finished = loop {
        let now = chrono::Utc::now();
        let claim = store
            .claim(&key, &job.id, job.generation, now, now)
            .await
            .unwrap();
        if claim == Claim::AlreadyDone || started.elapsed() > Duration::from_secs(90) {
            break claim;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        finished,
        Claim::AlreadyDone,
        "the redriven job {} ran to completion",
        job.id
    );
    let (d, n) = depth(deployed.outputs["WorkflowDeadLetterQueueUrl"].clone()).await;
    assert_eq!(d + n, 0, "the workflow DLQ is empty again");

    cold_starts(&deployed, &sqs, &http).await;
}

/// The two-org scenario of the seeded simulation (`metered_tests::simulation`)
/// through the deployed stack's own concurrent event source mappings: two
/// organizations whose record ids coincide, each with its own API key in
/// Secrets Manager; a complete transfer of 400 invoices in pages of 200 (a
/// page's commit is eight `BatchWriteItem` calls, so a workflow woken by
/// the page's trigger can run while the page is being written); PK lookups
/// of their customers; a workflow on created customers (an HTTP action and
/// a pushed Data Source) and one on invoices waiting for its related
/// customer (an HTTP action and a hosted Data Source). Nothing but the
/// stack moves work after the scheduler's first tick; then the same
/// invariants as every simulated seed are checked, from the API's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orgs_run_every_kind_at_once_on_the_deployed_stack() {
    let endpoint = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL (ministack): run `bash infra/test.sh`");
    for f in FUNCTIONS {
        assert!(
            binaries().join(f).exists(),
            "{f} is not built in {}: `cargo build --workspace` first",
            binaries().display()
        );
    }
    let clock: metered::SharedClock = std::sync::Arc::new(metered::SystemClock);
    let sim = metered_sim::Sim::new(
        metered_sim::SimConfig {
            customers: 60,
            invoices: 400,
            ..Default::default()
        },
        clock,
    );
    let server = metered_sim::serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let stack = format!("metered-two-{}", std::process::id());
    let cfg = metered::adapters::aws::local_sdk_config(&endpoint);
    let secrets = aws_sdk_secretsmanager::Client::new(&cfg);
    let mut keys = Vec::new();
    for org in ["acme", "globex"] {
        let key = format!("key-{org}-{stack}");
        secrets
            .create_secret()
            .name(format!("metered/{stack}/{org}"))
            .secret_string(&key)
            .send()
            .await
            .unwrap();
        keys.push((org.to_string(), key));
    }
    let portal = format!("metered/{stack}/hosted/invoices");
    secrets
        .create_secret()
        .name(&portal)
        .secret_string(PORTAL_KEY)
        .send()
        .await
        .unwrap();
    let config = format!(
        "{}\n\
         [[connections]]\norg = \"acme\"\nsecret = {{ secrets_manager = \"metered/{stack}/acme\" }}\n\
         [[connections]]\norg = \"globex\"\nsecret = {{ secrets_manager = \"metered/{stack}/globex\" }}\n\
         [syncs.invoices]\ncomplete_transfer = {{ every = \"24h\" }}\n\
         [syncs.customers]\npk_lookup = {{ enabled = true, policy = \"unseen_only\", max_keys_per_call = 50, storm_guard = \"off\", min_relookup = \"24h\" }}\n\
         {}\n[datasources.vips]\nevery = \"5s\"\n",
        metered_sim::app_config(&server.base_url()),
        metered_tests::simulation::world::workflows_toml(&format!(
            "{{ secrets_manager = \"{portal}\" }}"
        ))
    );
    let config_name = format!("/metered/{stack}/app-config");
    aws_sdk_ssm::Client::new(&cfg)
        .put_parameter()
        .name(&config_name)
        .value(&config)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let deployed = deploy(
        &endpoint,
        &stack,
        &[
            ("AppConfigParameter", &config_name),
            (
                "ApiSecretArn",
                &format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:metered/{stack}/*"),
            ),
            (
                "HostedSecretArn",
                &format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:{portal}*"),
            ),
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let tick: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/scheduled-event.json")).unwrap();
    let r = http
        .post(format!(
            "{endpoint}/2015-03-31/functions/{}/invocations",
            deployed.functions["scheduler"]
        ))
        .json(&tick)
        .send()
        .await
        .unwrap();
    let out: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(out["started"].as_array().map(Vec::len), Some(2), "{out}");

    // Until every queue is empty (nothing visible, in flight or delayed)
    // several polls in a row, or five minutes.
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let queues: Vec<(String, String)> = deployed
        .outputs
        .iter()
        .filter(|(n, _)| n.ends_with("QueueUrl") && !n.contains("DeadLetter"))
        .map(|(n, u)| (n.clone(), u.clone()))
        .collect();
    let started = Instant::now();
    let mut quiet = 0;
    let mut busy_queues = Vec::new();
    while quiet < 6 && started.elapsed() < Duration::from_secs(300) {
        let mut busy = 0u64;
        busy_queues.clear();
        for (name, q) in &queues {
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(q)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap_or_default();
            for a in [
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ] {
                let n = attrs
                    .get(&a)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if n > 0 {
                    busy_queues.push(format!("{name}: {n} {a}"));
                }
                busy += n;
            }
        }
        quiet = if busy == 0 { quiet + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let table = metered::adapters::aws::Table::new(
        aws_sdk_dynamodb::Client::new(&cfg),
        &deployed.outputs["TableName"],
    );
    let store = metered::adapters::aws::DynamoStore::new(table);
    let mut dead_letters = Vec::new();
    for (name, url) in &deployed.outputs {
        if !name.ends_with("DeadLetterQueueUrl") {
            continue;
        }
        use metered::jobs::JobQueue;
        let q = metered::adapters::aws::SqsQueue::new(sqs.clone(), url, url).with_wait_secs(0);
        for d in q.dead_letters(100).await.unwrap() {
            dead_letters.push(format!("{name}: {}", d.reason));
        }
    }
    let observed = metered_tests::simulation::check::Observed {
        sim: &sim,
        store: &store,
        hosted: &store,
        app: "sim-booking".into(),
        keys,
        dead_letters,
        lookups_due_by: None,
        per_day: 2_500,
        per_minute: None,
    };
    let found = metered_tests::simulation::check::violations_of(&observed).await;
    let stats = sim.stats();
    eprintln!(
        "two orgs on the deployed stack: settled in {:.0} s; {} calls served ({:?})",
        started.elapsed().as_secs_f64(),
        stats.served(),
        stats.calls_by_endpoint
    );
    assert!(
        quiet >= 6,
        "the stack did not settle within 5 minutes ({busy_queues:?}); violations so far: {found:?}"
    );
    assert!(
        found.is_empty(),
        "{} invariant(s) broken on the deployed stack:\n  {}",
        found.len(),
        found.join("\n  ")
    );
}

/// Each of the eight functions reports its cold start once it finished
/// its first job: init, the first DynamoDB and SQS responses (during init
/// when `METERED_WARM_CONNECTIONS=1`) and the first job, in milliseconds
/// from process start. The flow above started four; the
/// other four get one piece of work each: a recent-records sync and a
/// pk lookup for another org (`globex`, the app's default budget), a flush
/// of the hosted Data Source (a no-op: hosted rows are never pushed), and
/// a Hosted GET through the Invoke API. Prints the figures (README,
/// "Measured", quotes a release run of them).
async fn cold_starts(deployed: &Deployed, sqs: &aws_sdk_sqs::Client, http: &reqwest::Client) {
    use metered::jobs::{JobEnvelope, JobKind};
    let now = chrono::Utc::now();
    for (kind, queue, payload) in [
        (
            JobKind::RecentRecords,
            "RecentRecordsQueueUrl",
            serde_json::json!({"record_type": "customers", "adhoc": true}),
        ),
        (
            JobKind::PkLookup,
            "PkLookupQueueUrl",
            serde_json::json!({"record_type": "classes", "ids": ["cls_001"]}),
        ),
        (
            JobKind::ActionDatasourcePush,
            "ActionDatasourcePushQueueUrl",
            serde_json::json!({"datasource": "portal"}),
        ),
    ] {
        let job = JobEnvelope::new(kind, "globex", "sim-booking", payload, now);
        sqs.send_message()
            .queue_url(&deployed.outputs[queue])
            .message_body(job.to_body())
            .send()
            .await
            .unwrap();
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"org": "globex", "sub": "u1", "exp": now.timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(PORTAL_KEY.as_bytes()),
    )
    .unwrap();
    let mut request: serde_json::Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/function-url-request.json"
    ))
    .unwrap();
    request["rawPath"] = "/datasources/portal/rows".into();
    request["requestContext"]["http"]["path"] = "/datasources/portal/rows".into();
    request["headers"]["authorization"] = format!("Bearer {token}").into();
    let r = http
        .post(format!(
            "{}/2015-03-31/functions/{}/invocations",
            deployed.endpoint, deployed.functions["hosted-get"]
        ))
        .json(&request)
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(answer["statusCode"], 200, "Hosted GET: {answer}");

    let started = Instant::now();
    let mut late_lines = LateLines::new();
    let reports = loop {
        let seen = observe(deployed);
        let reports = cold_start_reports(&seen);
        if FUNCTIONS.iter().all(|f| reports.contains_key(*f))
            // Bounded, and left as soon as every function reported: on a
            // loaded 2-core CI machine (the release `sam build` runs beside
            // the tests) ministack's pollers took over 90 s to hand one job
            // to a function that had not started yet.
            || started.elapsed() > Duration::from_secs(240)
        {
            break reports;
        }
        late_lines
            .hand_on(deployed, http, &seen, |f| !reports.contains_key(f))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let warmed = std::env::var("METERED_WARM_CONNECTIONS").is_ok_and(|v| v == "1");
    eprintln!(
        "cold starts on ministack ({}, connections {} init; ms from process start, median):",
        binaries().display(),
        if warmed {
            "opened during"
        } else {
            "not opened in"
        }
    );
    eprintln!(
        "| function | init | first DynamoDB response | first SQS response | first job finished |"
    );
    eprintln!("|---|---|---|---|---|");
    for f in FUNCTIONS {
        let docs = reports
            .get(f)
            .unwrap_or_else(|| panic!("{f}: no cold start reported in its logs: {reports:?}"));
        for d in docs {
            let at = |m: &str| d[m].as_f64();
            let (init, job) = (
                at("ColdStartInitMs").unwrap(),
                at("ColdStartFirstJobMs").unwrap(),
            );
            assert!(
                init > 0.0 && init <= job,
                "{f}: init before the first job: {d}"
            );
            let dynamodb = at("ColdStartFirstDynamoDbMs")
                .unwrap_or_else(|| panic!("{f}: every function reads the table: {d}"));
            assert!(dynamodb <= job, "{f}: {d}");
            assert_eq!(d["Warmed"], warmed, "{f}: {d}");
            if warmed {
                assert!(dynamodb <= init, "{f}: DynamoDB reached during init: {d}");
                if f != "hosted-get" {
                    let sqs = at("ColdStartFirstSqsMs")
                        .unwrap_or_else(|| panic!("{f}: SQS reached during init: {d}"));
                    assert!(sqs <= init, "{f}: SQS reached during init: {d}");
                }
            }
        }
        let median = |m: &str| {
            let mut v: Vec<f64> = docs.iter().filter_map(|d| d[m].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2)
                .map_or("–".to_string(), |x| format!("{x:.1}"))
        };
        eprintln!(
            "| {f} | {} | {} | {} | {} |",
            median("ColdStartInitMs"),
            median("ColdStartFirstDynamoDbMs"),
            median("ColdStartFirstSqsMs"),
            median("ColdStartFirstJobMs"),
        );
    }
}

/// Hands on the log lines ministack has not yet given an invocation.
///
/// ministack gives a warm environment's invocation the output lines its
/// reader thread queued within about 50 ms of the response (250 ms at
/// most). On a loaded machine the rest — the EMF documents, written last —
/// wait for that environment's next invocation, and a function that ran
/// one job has none: CI once saw complete-transfer's 30 records in the
/// table and none of its log lines. An empty event is that next
/// invocation: queue functions take an empty SQS batch as no work, and the
/// scheduler and Hosted GET reject it, so nothing runs and the lines are
/// handed on. Only functions that already finished an invocation (their
/// log has a `START` line) are poked, one call at a time, so the poke goes
/// to the environment that exists and starts no new one (which would
/// report a cold start of its own); while cold starts are awaited, only
/// the functions still missing theirs. Every 5 s at most, after the first 5.
struct LateLines {
    next: Instant,
}

impl LateLines {
    fn new() -> Self {
        Self {
            next: Instant::now() + Duration::from_secs(5),
        }
    }

    /// Pokes the functions `wanted` (by binary name) that already ran.
    async fn hand_on(
        &mut self,
        d: &Deployed,
        http: &reqwest::Client,
        seen: &serde_json::Value,
        wanted: impl Fn(&str) -> bool,
    ) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + Duration::from_secs(5);
        for (function, name) in &d.functions {
            if !wanted(function) {
                continue;
            }
            let ran = seen["logs"][name.as_str()].as_array().is_some_and(|lines| {
                lines
                    .iter()
                    .any(|l| l.as_str().is_some_and(|l| l.starts_with("START RequestId")))
            });
            if ran {
                eprintln!("poking {function}: its log lines are not all in yet");
                let _ = http
                    .post(format!(
                        "{}/2015-03-31/functions/{name}/invocations",
                        d.endpoint
                    ))
                    .json(&serde_json::json!({"Records": []}))
                    .send()
                    .await;
            }
        }
    }
}

/// The cold-start EMF documents in the functions' logs, per function.
fn cold_start_reports(seen: &serde_json::Value) -> HashMap<String, Vec<serde_json::Value>> {
    let mut out: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for doc in json_lines(seen) {
        if doc.get("ColdStartInitMs").is_some() {
            let function = doc["Function"].as_str().unwrap().to_string();
            out.entry(function).or_default().push(doc);
        }
    }
    out
}

/// Every log line of every function that is a JSON document.
fn json_lines(seen: &serde_json::Value) -> impl Iterator<Item = serde_json::Value> + '_ {
    seen["logs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|lines| lines.as_array().unwrap())
        .filter_map(|line| serde_json::from_str(line.as_str().unwrap().trim()).ok())
}

/// Every EMF metric in the functions' log lines, summed per (function, metric).
fn emf_sums(seen: &serde_json::Value) -> HashMap<(String, String), f64> {
    let mut sums: HashMap<(String, String), f64> = HashMap::new();
    for doc in json_lines(seen) {
        let Some(directives) = doc["_aws"]["CloudWatchMetrics"].as_array() else {
            continue;
        };
        for d in directives {
            for m in d["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap();
                if !name.starts_with("Budget") {
                    let function = doc["Function"].as_str().unwrap().to_string();
                    *sums.entry((function, name.to_string())).or_default() +=
                        doc[name].as_f64().unwrap();
                }
            }
        }
    }
    sums
}

/// The stack's alarms, dashboards and function log lines, through
/// ministack's CloudWatch and CloudWatch Logs APIs.
fn observe(d: &Deployed) -> serde_json::Value {
    let out = Command::new(workspace().join(".tools/venv/bin/python"))
        .arg(workspace().join("infra/local/deploy-ministack.py"))
        .args(["--endpoint", &d.endpoint, "--stack", &d.stack])
        .args(["--binaries", ".", "--observe"])
        .output()
        .expect("run deploy-ministack.py --observe");
    assert!(
        out.status.success(),
        "observing the stack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
