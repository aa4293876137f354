//! The Lambda edge: configuration from the environment, scheduler events,
//! ad-hoc syncs, and a function refusing jobs that are not its own.

use metered::config::{CompleteTransferSettings, SyncConfig};
use metered::edge::lambda::DeployConfig;
use metered::handlers::schedule::{parse_event, SchedulerEvent};
use metered::jobs::{JobContext, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind};
use metered::Router;
use metered_tests::sync_world::{Adapter, World, ORG, ORG_B};
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn deploy_config_errors_name_the_variable() {
    let err = DeployConfig::from_lookup(env(&[])).unwrap_err().to_string();
    assert!(err.contains("METERED_TABLE is not set"), "{err}");
    let err = DeployConfig::from_lookup(env(&[("METERED_TABLE", "t")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("METERED_APP_CONFIG"), "{err}");
    let app = metered_sim::app_config("http://127.0.0.1:1/");
    let err = DeployConfig::from_lookup(env(&[
        ("METERED_TABLE", "t"),
        ("METERED_APP_CONFIG_TOML", &app),
        ("METERED_QUEUE_URL_PK_LOOKUP", "http://q/pk"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("METERED_DLQ_URL_PK_LOOKUP is not set"),
        "{err}"
    );
    let err = DeployConfig::from_lookup(env(&[
        ("METERED_TABLE", "t"),
        ("METERED_APP_CONFIG_TOML", "[app]\nname = 1"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("METERED_APP_CONFIG_TOML"), "{err}");
    let ok = DeployConfig::from_lookup(env(&[
        ("METERED_TABLE", "t"),
        ("METERED_APP_CONFIG_TOML", &app),
        ("METERED_QUEUE_URL_PK_LOOKUP", "http://q/pk"),
        ("METERED_DLQ_URL_PK_LOOKUP", "http://q/pk-dlq"),
        ("METERED_MAX_RESTARTS", "7"),
    ]))
    .unwrap();
    assert_eq!(
        ok.queues,
        vec![(
            JobKind::PkLookup,
            "http://q/pk".to_string(),
            "http://q/pk-dlq".to_string()
        )]
    );
    assert_eq!(ok.policy.max_restarts, 7);
}

#[test]
fn scheduler_reads_schedule_events_and_refuses_others() {
    let event: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/scheduled-event.json")).unwrap();
    assert_eq!(parse_event(&event).unwrap(), SchedulerEvent::Tick);
    let err = parse_event(&serde_json::json!({"Records": []}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected an EventBridge schedule event"),
        "{err}"
    );
    let err = parse_event(
        &serde_json::json!({"adhoc": {"org": "a", "record_type": "x", "sync": "pk-lookup"}}),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("adhoc.sync must be complete-transfer or recent-records"),
        "{err}"
    );
    let err = parse_event(&serde_json::json!({"adhoc": {"org": "a"}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field `record_type`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_sync_reports_its_estimate_and_a_dry_run_starts_nothing() {
    let w = World::new(
        Adapter::Sqlite,
        metered_sim::SimConfig {
            invoices: 450,
            ..Default::default()
        },
        |c| {
            c.syncs.insert(
                "invoices".into(),
                SyncConfig {
                    complete_transfer: Some(CompleteTransferSettings {
                        every: std::time::Duration::from_secs(86_400),
                    }),
                    ..Default::default()
                },
            );
        },
    )
    .await;
    let dry = serde_json::json!({"adhoc": {"org": ORG, "record_type": "invoices", "sync": "complete-transfer", "dry_run": true}});
    let out = metered::handlers::schedule::handle(&w.svc, &dry)
        .await
        .unwrap();
    assert_eq!(out["started"], serde_json::Value::Null);
    assert_eq!(out["estimate"]["sync_calls"], 1, "{out}");
    assert_eq!(w.drive().await.done.len(), 0, "a dry run enqueues nothing");
    let real = serde_json::json!({"adhoc": {"org": ORG, "record_type": "invoices", "sync": "complete-transfer"}});
    let out = metered::handlers::schedule::handle(&w.svc, &real)
        .await
        .unwrap();
    assert!(out["started"].is_string(), "{out}");
    w.drive().await;
    assert_eq!(w.sim().stats().calls("GET /invoices"), 3);
    let tick = serde_json::from_str(include_str!("../fixtures/scheduled-event.json")).unwrap();
    let out = metered::handlers::schedule::handle(&w.svc, &tick)
        .await
        .unwrap();
    let started: Vec<&str> = out["started"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["org"].as_str())
        .collect();
    assert_eq!(
        started,
        vec![ORG_B],
        "the ad-hoc run counts as {ORG}'s transfer of the day; {ORG_B} had none: {out}"
    );
    let bad = serde_json::json!({"adhoc": {"org": "nobody", "record_type": "invoices", "sync": "complete-transfer"}});
    let err = metered::handlers::schedule::handle(&w.svc, &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("organization `nobody` has no connection"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_dead_letters_jobs_of_another_kind() {
    let w = World::new(Adapter::Sqlite, metered_sim::SimConfig::default(), |_| {}).await;
    let only_lookups =
        Router::only(w.svc.clone(), w.action_ledger.clone(), JobKind::PkLookup).unwrap();
    let rt = JobRuntime::new(
        w.runtimes[0].1.queue.clone(),
        w.shared.clone(),
        RestartPolicy::default(),
    );
    let job = JobEnvelope::new(
        JobKind::CompleteTransfer,
        ORG,
        "sim-booking",
        serde_json::json!({"record_type": "invoices"}),
        w.shared.now(),
    );
    let settled = rt
        .process(&job.to_body(), &only_lookups, &JobContext::default())
        .await;
    assert!(
        matches!(&settled, Settled::DeadLettered { reason } if reason.contains("`pk-lookup` does not take jobs of kind `complete-transfer`")),
        "{settled:?}"
    );
    let bad_payload = JobEnvelope::new(
        JobKind::PkLookup,
        ORG,
        "sim-booking",
        serde_json::json!({"record_type": 5}),
        w.shared.now(),
    );
    let settled = rt
        .process(
            &bad_payload.to_body(),
            &only_lookups,
            &JobContext::default(),
        )
        .await;
    assert!(
        matches!(&settled, Settled::DeadLettered { reason } if reason.contains("bad `pk-lookup` payload")),
        "{settled:?}"
    );
}

/// A writer into a shared buffer, for a subscriber under test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs one line inside its job and says done.
struct Chatty;

#[async_trait::async_trait]
impl metered::jobs::JobHandler for Chatty {
    fn name(&self) -> &str {
        "chatty"
    }
    fn accepts(&self, _: JobKind) -> bool {
        true
    }
    async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> metered::Outcome {
        tracing::info!(api_key_present = true, "working");
        metered::Outcome::Done
    }
}

/// With `AWS_LAMBDA_LOG_FORMAT=JSON` the runtime's subscriber writes JSON
/// (`metered::edge::lambda::log_subscriber`, what `init_logging` installs
/// here): every line a job logs carries the SQS message id and the job's
/// id, kind and org, and two orgs' jobs with the same record ids are told
/// apart.
#[test]
fn every_job_log_line_names_its_message_job_kind_and_org() {
    let out = Captured::default();
    let writer = out.clone();
    let sub = metered::edge::lambda::log_subscriber(move || writer.clone(), "JSON", Some("info"));
    let _guard = tracing::subscriber::set_default(sub);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: metered::SharedClock = std::sync::Arc::new(metered::SystemClock);
    let db = metered::adapters::sqlite::Db::in_memory().unwrap();
    let queue = std::sync::Arc::new(metered::adapters::sqlite::SqliteQueue::new(
        db,
        "complete-transfer",
        clock.clone(),
        5,
    ));
    let runtime = JobRuntime::new(queue, clock.clone(), RestartPolicy::default());
    let jobs: Vec<JobEnvelope> = [ORG, ORG_B]
        .iter()
        .map(|org| {
            JobEnvelope::new(
                JobKind::CompleteTransfer,
                *org,
                "sim-booking",
                serde_json::json!({"record_type": "inv_1"}),
                chrono::Utc::now(),
            )
        })
        .collect();
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    for (i, job) in jobs.iter().enumerate() {
        let mut m = aws_lambda_events::event::sqs::SqsMessage::default();
        m.message_id = Some(format!("msg-{i}"));
        m.body = Some(job.to_body());
        event.records.push(m);
    }
    let response = rt.block_on(metered::edge::lambda::handle_sqs_event(
        &runtime, event, &Chatty, None,
    ));
    assert!(response.batch_item_failures.is_empty());
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let mut seen = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] != "working" {
            continue;
        }
        let spans = v["spans"].as_array().expect("the span list");
        let field = |name: &str| {
            spans
                .iter()
                .find_map(|s| s.get(name).and_then(|x| x.as_str()).map(str::to_string))
                .unwrap_or_else(|| panic!("no `{name}` in {line}"))
        };
        seen.push((
            field("message_id"),
            field("id"),
            field("org"),
            field("kind"),
        ));
    }
    let expected: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            (
                format!("msg-{i}"),
                j.id.clone(),
                j.org.clone(),
                "complete-transfer".to_string(),
            )
        })
        .collect();
    assert_eq!(seen, expected, "{text}");
}

/// `METERED_WARM_CONNECTIONS=1`: the DynamoDB and SQS connections answer
/// before init ends, and the cold-start report says so; against a server
/// that is not there, warming gives up quietly and reports no response
/// (the job's own requests are the ones that report failures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_reaches_dynamodb_and_sqs_during_init() {
    use metered::edge::cold_start::{warm_connections, ColdStart, Service};
    use metered::edge::lambda::dynamodb_client;
    let dynamodb_url = std::env::var("METERED_TEST_DYNAMODB_URL")
        .expect("METERED_TEST_DYNAMODB_URL (DynamoDB Local): run `bash infra/test.sh`");
    let sqs_url = std::env::var("METERED_TEST_SQS_URL")
        .expect("METERED_TEST_SQS_URL (ministack): run `bash infra/test.sh`");
    let table = metered_tests::dynamo_table().await;
    let queue_url = metered_tests::sqs_client()
        .create_queue()
        .queue_name(format!("metered-warm-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    let cold = ColdStart::begin();
    let dynamodb = dynamodb_client(
        &metered::adapters::aws::local_sdk_config(&dynamodb_url),
        env(&[]),
        &cold,
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&metered::adapters::aws::local_sdk_config(&sqs_url))
            .interceptor(cold.interceptor(Service::Sqs))
            .build(),
    );
    warm_connections(&dynamodb, &table.name, Some((&sqs, &queue_url))).await;
    cold.initialized(true);
    let report = cold.job_finished().expect("the first job reports");
    let (dynamodb_ms, sqs_ms) = (
        report.first_dynamodb_ms.expect("DynamoDB answered"),
        report.first_sqs_ms.expect("SQS answered"),
    );
    assert!(
        dynamodb_ms <= report.init_ms && sqs_ms <= report.init_ms,
        "{report:?}"
    );
    assert!(report.warmed);

    let cold = ColdStart::begin();
    let nowhere = dynamodb_client(
        &metered::adapters::aws::local_sdk_config("http://127.0.0.1:1"),
        env(&[]),
        &cold,
    );
    warm_connections(&nowhere, &table.name, None).await;
    cold.initialized(true);
    let report = cold.job_finished().unwrap();
    assert_eq!(
        (report.first_dynamodb_ms, report.first_sqs_ms),
        (None, None),
        "no server, no response: {report:?}"
    );
}
