//! Shared test harness: connections to the real protocol servers, a fresh
//! table or queue per test, and the conformance suites every adapter passes.
//!
//! The servers are started by `infra/test.sh` (the README's test command). A
//! test that needs one and does not find it **fails** with a message saying
//! how to start it; nothing is skipped.

pub mod budget;
pub mod faults;
pub mod lost_responses;
pub mod queue_suite;
pub mod quota_suite;
pub mod scenario;
pub mod simulation;
pub mod store_suite;
pub mod sync_world;

use metered::adapters::aws::SqsQueue;
use metered::adapters::aws::Table;
use metered::core::{ManualClock, SharedClock, Timestamp};
use std::sync::Arc;

pub(crate) fn endpoint(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: this test needs {what}. Run `bash infra/test.sh` \
             (it installs and starts the servers), or start them with \
             `infra/local/servers.sh start` and `eval \"$(infra/local/servers.sh env)\"`."
        )
    })
}

pub(crate) fn sdk_config(url: String) -> aws_config::SdkConfig {
    metered::adapters::aws::local_sdk_config(&url)
}

/// A new, empty table on DynamoDB Local.
pub async fn dynamo_table() -> Table {
    let cfg = sdk_config(endpoint("METERED_TEST_DYNAMODB_URL", "DynamoDB Local"));
    let client = aws_sdk_dynamodb::Client::new(&cfg);
    let table = Table::new(client, format!("metered-test-{}", uuid::Uuid::new_v4()));
    table
        .create_if_missing()
        .await
        .expect("create test table on DynamoDB Local");
    table
}

/// A fresh quota store of `adapter`: in-memory SQLite, or a new table on
/// DynamoDB Local.
pub async fn quota_store(
    adapter: crate::sync_world::Adapter,
) -> std::sync::Arc<dyn metered::quota::QuotaStore> {
    match adapter {
        crate::sync_world::Adapter::Sqlite => {
            std::sync::Arc::new(metered::adapters::sqlite::SqliteQuota::new(
                metered::adapters::sqlite::Db::in_memory().expect("in-memory SQLite"),
            ))
        }
        crate::sync_world::Adapter::Aws => std::sync::Arc::new(
            metered::adapters::aws::DynamoQuota::new(dynamo_table().await),
        ),
    }
}

/// A client for the SQS-compatible server.
pub fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config(endpoint(
        "METERED_TEST_SQS_URL",
        "an SQS-compatible server (ministack)",
    )))
}

/// A new queue with its dead-letter queue (redrive after `max_receive`).
pub async fn sqs_queue(max_receive: u32) -> SqsQueue {
    let client = sqs_client();
    let name = format!("metered-test-{}", uuid::Uuid::new_v4().simple());
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create DLQ")
        .queue_url
        .expect("DLQ url");
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ attributes")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("DLQ arn");
    let url = client
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive})
                .to_string(),
        )
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    SqsQueue::new(client, url, dlq_url).with_wait_secs(0)
}

/// A fixed instant mid-afternoon UTC, far from a day boundary.
pub fn afternoon() -> Timestamp {
    use chrono::TimeZone;
    chrono::Utc
        .with_ymd_and_hms(2026, 11, 22, 14, 30, 0)
        .unwrap()
}

pub fn manual_clock() -> (ManualClock, SharedClock) {
    let clock = ManualClock::new(afternoon());
    let shared: SharedClock = Arc::new(clock.clone());
    (clock, shared)
}

/// Generates one `#[tokio::test]` per suite case for an adapter.
#[macro_export]
macro_rules! suite_tests {
    ($suite:path, $make:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                use $suite as suite;
                suite::$case($make).await;
            }
        )*
    };
}

/// SDK config for the ministack endpoint (Secrets Manager, SSM).
pub fn ministack_config() -> aws_config::SdkConfig {
    sdk_config(endpoint("METERED_TEST_SQS_URL", "ministack"))
}

/// A weekly complete transfer of `customers`: the limit scenarios start it
/// by hand and drive it to the end, so it never runs twice.
pub fn weekly_customer_transfer(c: &mut metered::AppConfig) {
    c.syncs.insert(
        "customers".into(),
        metered::config::SyncConfig {
            complete_transfer: Some(metered::config::CompleteTransferSettings {
                every: std::time::Duration::from_secs(86_400 * 7),
            }),
            ..Default::default()
        },
    );
}

/// Adds the `[workflows.*]` tables of `toml` to an app config (the rest of
/// a config is filled in only so that it parses).
pub fn add_workflows(c: &mut metered::AppConfig, toml: &str) {
    let parsed: metered::AppConfig = ::toml::from_str(&format!(
        "[app]\nname='x'\nbase_url='http://x/'\n[app.limits]\nper_day=1\nmax_concurrent=1\n{toml}"
    ))
    .expect("workflow toml");
    c.workflows.extend(parsed.workflows);
}

/// Adds the `[workflows.*]` and `[datasources.*]` tables of `toml` to an
/// app config (the rest is filled in only so that it parses).
pub fn add_sections(c: &mut metered::AppConfig, toml: &str) {
    let parsed: metered::AppConfig = ::toml::from_str(&format!(
        "[app]\nname='x'\nbase_url='http://x/'\n[app.limits]\nper_day=1\nmax_concurrent=1\n{toml}"
    ))
    .expect("workflow toml");
    c.workflows.extend(parsed.workflows);
    c.datasources.extend(parsed.datasources);
}

/// A running simulator and a connector for it with one org's key.
pub struct SimFixture {
    pub server: metered_sim::SimServer,
    pub connector: std::sync::Arc<metered::connector::HttpConnector>,
    pub config: std::sync::Arc<metered::AppConfig>,
    pub key: String,
}

impl SimFixture {
    pub fn sim(&self) -> &metered_sim::Sim {
        &self.server.sim
    }
}

/// Starts a simulator on 127.0.0.1:0 and a connector pointed at it.
pub async fn sim_fixture(config: metered_sim::SimConfig, clock: SharedClock) -> SimFixture {
    sim_fixture_with(config, clock, |_| {}).await
}

/// Like [`sim_fixture`], editing the connector config first.
pub async fn sim_fixture_with(
    config: metered_sim::SimConfig,
    clock: SharedClock,
    edit: impl FnOnce(&mut metered::AppConfig),
) -> SimFixture {
    use metered::AppConfig;
    let sim = metered_sim::Sim::new(config, clock.clone());
    let server = metered_sim::serve(sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start simulator");
    let mut app = AppConfig::parse(&metered_sim::app_config(&server.base_url()))
        .expect("simulator app config");
    edit(&mut app);
    app.validate().expect("edited config is valid");
    let app = std::sync::Arc::new(app);
    let key = format!("org-key-{}", uuid::Uuid::new_v4().simple());
    let client = metered::connector::http_client(&app.app.timeouts).expect("http client");
    let connector = metered::connector::HttpConnector::new(
        app.clone(),
        client,
        Some(metered::connector::Secret::new(key.clone())),
        clock,
    )
    .expect("connector");
    SimFixture {
        server,
        connector: std::sync::Arc::new(connector),
        config: app,
        key,
    }
}

/// One `#[tokio::test]` per scenario per adapter set: SQLite, and DynamoDB
/// Local + ministack. Each scenario is an `async fn(Adapter)`.
#[macro_export]
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() { super::$case($crate::sync_world::Adapter::Sqlite).await }
            )*
        }
        mod dynamodb_local_and_ministack {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() { super::$case($crate::sync_world::Adapter::Aws).await }
            )*
        }
    };
}
