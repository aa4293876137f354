//! The Lambda edge: typed configuration read once at cold start, AWS
//! clients built once, and the loops every function's `main.rs` calls.
//!
//! Environment (names are the same in `template.yaml`):
//!
//! | variable | meaning |
//! |---|---|
//! | `METERED_TABLE` | the DynamoDB table |
//! | `METERED_APP_CONFIG_SSM` | SSM parameter holding the app's TOML config (what `template.yaml` uses), or |
//! | `METERED_APP_CONFIG` | path of the app's TOML config (bundled), or |
//! | `METERED_APP_CONFIG_TOML` | the config itself |
//! | `METERED_QUEUE_URL_<KIND>` | queue of each job kind, e.g. `METERED_QUEUE_URL_COMPLETE_TRANSFER` |
//! | `METERED_DLQ_URL_<KIND>` | its dead-letter queue |
//! | `METERED_MAX_RESTARTS` | restart cap per job (default 100) |
//! | `METERED_MAX_ATTEMPTS` | transient failures in a row without progress before a job is dead-lettered (default 5) |
//! | `METERED_WARM_CONNECTIONS` | `1`: open the DynamoDB and SQS connections during init, while the config is read (default off: it did not pay where measured, see [`super::cold_start`]) |
//! | `METERED_BURN_ALARM_BEFORE_HOUR` | UTC hour before which the budget burn is also published as `BudgetUsedPercentEarly` (default 18) |
//! | `AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL` (or `RUST_LOG`) | Lambda's log controls (`JSON`; a level such as `INFO`), see [`init_logging`] |
//! | `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | set by Lambda; see [`lambda_sdk_config`] |
//! | `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>` | (local only) DynamoDB Local / ministack |
//!
//! After every invocation the function writes what it counted (calls,
//! denials by reason, jobs done, restarts, dead letters, records synced,
//! actions performed, the day's budget burn) to stdout as CloudWatch
//! Embedded Metric Format, one JSON line per organization
//! ([`crate::core::metrics::Snapshot::to_emf`]), written with `serde_json`
//! (README, "Operating it on AWS", says why not an EMF crate).

use crate::adapters::aws::queue::SqsQueue;
use crate::adapters::aws::quota::DynamoQuota;
use crate::adapters::aws::store::DynamoStore;
use crate::adapters::aws::Table;
use crate::config::app::AppConfig;
use crate::connector::secrets::SecretStores;
use crate::core::clock::{SharedClock, SystemClock};
use crate::core::error::{Error, Result};
use crate::core::metrics::Metrics;
use crate::edge::cold_start::{warm_connections, warm_setting, ColdStart, Service};
use crate::handlers::context::{http_connectors, AppContext};
use crate::handlers::route::Router;
use crate::jobs::envelope::JobKind;
use crate::jobs::queue::{JobQueue, Queues};
use crate::jobs::runtime::{JobHandler, JobRuntime, RestartPolicy};
use crate::quota::Quota;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
use std::sync::Arc;
use tracing::Instrument;

/// The SDK configuration of a function, from what Lambda puts in its
/// environment: region, the execution role's credentials and (local runs of
/// the deployed shape only) `AWS_ENDPOINT_URL`; [`Deployed::connect`] adds
/// the per-service `AWS_ENDPOINT_URL_DYNAMODB`, `_SQS`, `_SSM` and
/// `_SECRETS_MANAGER`. Shared config files (`~/.aws/config`) are not read.
///
/// Why not `aws_config::load_defaults`: on Lambda the default chain always
/// ends at the environment variables, yet linking it brings STS, SSO, IMDS,
/// ECS and profile-file providers into every bootstrap (about 0.3 MB of the
/// 8.5 MB budget). The CLI, which runs on laptops with profiles, keeps the
/// default chain.
pub(crate) fn lambda_sdk_config(
    get: impl Fn(&str) -> Option<String>,
) -> Result<aws_config::SdkConfig> {
    let region = get("AWS_REGION")
        .or_else(|| get("AWS_DEFAULT_REGION"))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Error::Config("AWS_REGION is not set (Lambda sets it)".into()))?;
    let mut builder = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
        );
    if let Some(url) = get("AWS_ENDPOINT_URL").filter(|u| !u.is_empty()) {
        builder = builder.endpoint_url(url);
    }
    Ok(builder.build())
}

/// The log subscriber of a function: Lambda's advanced logging controls —
/// `format` `JSON` (any case) for JSON lines, anything else for text; the
/// level from `level` (`AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`), `INFO` when
/// absent or not a plain level. No per-module directives: that needs
/// tracing-subscriber's `env-filter`, whose regex engine costs ~180 KB in
/// every bootstrap (the runtime's own `init_default_subscriber` brings it).
pub fn log_subscriber<W>(
    writer: W,
    format: &str,
    level: Option<&str>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let level = level
        .and_then(|l| {
            l.trim()
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .ok()
        })
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_max_level(level)
        .with_writer(writer);
    if format.eq_ignore_ascii_case("json") {
        Box::new(fmt.json().finish())
    } else {
        Box::new(fmt.finish())
    }
}

/// Installs [`log_subscriber`] on stdout from the environment, once.
pub(crate) fn init_logging() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let format = std::env::var("AWS_LAMBDA_LOG_FORMAT").unwrap_or_default();
    // Set already (a second call, a test harness): keep that one.
    let _ = tracing::subscriber::set_global_default(log_subscriber(
        std::io::stdout,
        &format,
        level.as_deref(),
    ));
}

/// Configuration of a deployed function, read once.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// The DynamoDB table's name.
    pub table: String,
    /// The app config, when given inline or as a bundled file.
    pub app: Option<Arc<AppConfig>>,
    /// Or the SSM parameter holding it (read at cold start).
    pub app_ssm: Option<String>,
    /// (queue URL, DLQ URL) per kind that has one.
    pub queues: Vec<(JobKind, String, String)>,
    /// Restart cap and attempts.
    pub policy: RestartPolicy,
    /// The UTC hour before which the burn is also published as "early".
    pub burn_cutoff_hour: u32,
    /// Open the DynamoDB and SQS connections during init
    /// (`METERED_WARM_CONNECTIONS`, default off; see [`warm_connections`]).
    pub warm: bool,
}

/// The env var suffix of a kind: `complete-transfer` → `COMPLETE_TRANSFER`.
pub fn env_suffix(kind: JobKind) -> String {
    kind.as_str().to_ascii_uppercase().replace('-', "_")
}

/// The queue and dead-letter queue URLs of every job kind `get` names
/// (`METERED_QUEUE_URL_<KIND>`, `METERED_DLQ_URL_<KIND>`): a function's own
/// queues, and the ones `metered dlq --sqs` works on. A queue without its
/// dead-letter queue is an error naming the missing variable.
pub fn queue_urls(get: impl Fn(&str) -> Option<String>) -> Result<Vec<(JobKind, String, String)>> {
    let mut queues = Vec::new();
    for kind in JobKind::QUEUED {
        let suffix = env_suffix(kind);
        if let Some(url) = get(&format!("METERED_QUEUE_URL_{suffix}")).filter(|v| !v.is_empty()) {
            let name = format!("METERED_DLQ_URL_{suffix}");
            let dlq = get(&name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Config(format!("environment variable {name} is not set")))?;
            queues.push((kind, url, dlq));
        }
    }
    Ok(queues)
}

impl DeployConfig {
    /// Reads the environment through `get` (so tests need not set globals).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let need = |name: &str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Config(format!("environment variable {name} is not set")))
        };
        let table = need("METERED_TABLE")?;
        let nonempty = |name: &str| get(name).filter(|v| !v.is_empty());
        let (app, app_ssm) = match (nonempty("METERED_APP_CONFIG_TOML"), nonempty("METERED_APP_CONFIG"), nonempty("METERED_APP_CONFIG_SSM")) {
            (Some(text), _, _) => (
                Some(Arc::new(AppConfig::parse(&text).map_err(|e| Error::Config(format!("METERED_APP_CONFIG_TOML: {e}")))?)),
                None,
            ),
            (None, Some(path), _) => (Some(Arc::new(AppConfig::load(&path)?)), None),
            (None, None, Some(param)) => (None, Some(param)),
            _ => {
                return Err(Error::Config(
                    "set METERED_APP_CONFIG_SSM (an SSM parameter name), METERED_APP_CONFIG (a path) or METERED_APP_CONFIG_TOML".into(),
                ))
            }
        };
        let queues = queue_urls(&get)?;
        let mut policy = RestartPolicy::default();
        let whole = |name: &str, v: String| {
            v.parse::<u32>()
                .map_err(|_| Error::Config(format!("{name}: expected a whole number, got {v:?}")))
        };
        if let Some(v) = get("METERED_MAX_RESTARTS") {
            policy.max_restarts = whole("METERED_MAX_RESTARTS", v)?;
        }
        if let Some(v) = get("METERED_MAX_ATTEMPTS") {
            policy.max_attempts = whole("METERED_MAX_ATTEMPTS", v)?.max(1);
        }
        let mut burn_cutoff_hour = 18;
        if let Some(v) = get("METERED_BURN_ALARM_BEFORE_HOUR").filter(|v| !v.is_empty()) {
            burn_cutoff_hour = whole("METERED_BURN_ALARM_BEFORE_HOUR", v)?;
            if burn_cutoff_hour > 24 {
                return Err(Error::Config(format!(
                    "METERED_BURN_ALARM_BEFORE_HOUR: an hour of the day (0 to 24), got {burn_cutoff_hour}"
                )));
            }
        }
        Ok(Self {
            table,
            app,
            app_ssm,
            queues,
            policy,
            burn_cutoff_hour,
            warm: warm_setting(&get)?,
        })
    }

    /// Reads the function's environment once, naming a missing or bad variable.
    pub(crate) fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// `AWS_ENDPOINT_URL_<SERVICE>` when set (a local stand-in for AWS).
fn service_endpoint(get: impl Fn(&str) -> Option<String>, service: &str) -> Option<String> {
    get(&format!("AWS_ENDPOINT_URL_{service}")).filter(|u| !u.is_empty())
}

/// The DynamoDB client of a function, its first response timed for `cold`.
pub fn dynamodb_client(
    aws: &aws_config::SdkConfig,
    get: impl Fn(&str) -> Option<String>,
    cold: &Arc<ColdStart>,
) -> aws_sdk_dynamodb::Client {
    let mut b = aws_sdk_dynamodb::config::Builder::from(aws)
        .interceptor(cold.interceptor(Service::DynamoDb));
    // None must not clear an endpoint the SDK config already has.
    if let Some(url) = service_endpoint(get, "DYNAMODB") {
        b.set_endpoint_url(Some(url));
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}

/// The secret-store clients of a function.
pub(crate) fn secret_stores(
    aws: &aws_config::SdkConfig,
    get: impl Fn(&str) -> Option<String>,
) -> SecretStores {
    SecretStores::with_endpoints(
        aws,
        service_endpoint(&get, "SECRETS_MANAGER"),
        service_endpoint(&get, "SSM"),
    )
}

impl DeployConfig {
    /// The app config: given, or read from its SSM parameter.
    pub async fn app_config(&self, stores: &SecretStores) -> Result<Arc<AppConfig>> {
        match (&self.app, &self.app_ssm) {
            (Some(app), _) => Ok(app.clone()),
            (None, Some(param)) => {
                let text = crate::connector::secrets::resolve_for(
                    "METERED_APP_CONFIG_SSM",
                    &crate::config::secret::SecretRef::Ssm(param.clone()),
                    Some(stores),
                )
                .await?;
                Ok(Arc::new(AppConfig::parse(text.expose()).map_err(|e| {
                    Error::Config(format!("app config in SSM parameter {param}: {e}"))
                })?))
            }
            (None, None) => Err(Error::Config("no app config".into())),
        }
    }
}

/// What one function process holds for its whole life.
pub(crate) struct Deployed {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    /// The job ledger (the same table).
    pub ledger: Arc<DynamoStore>,
    /// The environment it was read from.
    pub config: DeployConfig,
}

impl Deployed {
    /// Builds clients, stores and connectors (credentials resolved once).
    /// With `warm` set, the DynamoDB and SQS connections are opened while
    /// the config and secrets are read ([`warm_connections`]; SQS on the
    /// queue of `own`, the function's kind, else the first it sends to).
    pub(crate) async fn connect(
        config: DeployConfig,
        cold: &Arc<ColdStart>,
        own: Option<JobKind>,
    ) -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok();
        let aws = lambda_sdk_config(env)?;
        let clock: SharedClock = Arc::new(SystemClock);
        let dynamodb = dynamodb_client(&aws, env, cold);
        let table = Table::new(dynamodb.clone(), &config.table);
        let store = Arc::new(DynamoStore::new(table.clone()));
        let quota = Quota::new(Arc::new(DynamoQuota::new(table)), clock.clone());
        let sqs = aws_sdk_sqs::Client::from_conf({
            let mut b = aws_sdk_sqs::config::Builder::from(&aws)
                .interceptor(cold.interceptor(Service::Sqs));
            // None must not clear an endpoint the SDK config already has.
            if let Some(url) = service_endpoint(env, "SQS") {
                b.set_endpoint_url(Some(url));
            }
            b.build()
        });
        let mut queues = Queues::new();
        for (kind, url, dlq) in &config.queues {
            queues = queues.with(*kind, Arc::new(SqsQueue::new(sqs.clone(), url, dlq)));
        }
        let stores = secret_stores(&aws, env);
        let load = async {
            let app = config.app_config(&stores).await?;
            let connectors = http_connectors(&app, Some(&stores), clock).await?;
            Ok::<_, Error>((app, connectors))
        };
        let queue = config
            .queues
            .iter()
            .find(|(kind, _, _)| Some(*kind) == own)
            .or(config.queues.first())
            .map(|(_, url, _)| (&sqs, url.as_str()));
        let warm = async {
            if config.warm {
                warm_connections(&dynamodb, &config.table, queue).await;
            }
        };
        let (loaded, ()) = futures::future::join(load, warm).await;
        let (app, connectors) = loaded?;
        let svc = Arc::new(AppContext::new(
            app,
            store.clone(),
            quota,
            queues,
            connectors,
        ));
        Ok(Self {
            svc,
            ledger: store,
            config,
        })
    }

    /// The runtime of jobs of `kind`: restarts go back to its own queue.
    pub(crate) fn runtime(&self, kind: JobKind) -> Result<JobRuntime> {
        let queue: Arc<dyn JobQueue> = self.svc.queues.get(kind)?.clone();
        Ok(
            JobRuntime::new(queue, self.svc.clock.clone(), self.config.policy)
                .with_ledger(self.ledger.clone())
                .with_waiters(self.ledger.clone(), self.svc.queues.clone())
                .with_metrics(self.svc.metrics.clone()),
        )
    }
}

/// Processes an SQS event as Lambda delivers it and reports only the
/// messages that must come back, so one bad message never fails or
/// repeats its neighbours (`ReportBatchItemFailures`).
///
/// The messages run in turn, each with its share of the time left before
/// `deadline` (the invocation's; see [`JobRuntime::process_batch`]).
pub async fn handle_sqs_event<H: JobHandler + ?Sized>(
    runtime: &JobRuntime,
    event: SqsEvent,
    handler: &H,
    deadline: Option<crate::core::clock::Timestamp>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut messages = Vec::new();
    for record in event.records {
        let Some(message_id) = record.message_id else {
            // Without an id it cannot be reported; Lambda never sends one.
            tracing::error!("SQS record without a message id skipped");
            continue;
        };
        messages.push((message_id, record.body.unwrap_or_default()));
    }
    for (i, (message_id, body)) in messages.iter().enumerate() {
        // Every line logged for this message carries its id (and, inside
        // the runtime's `job` span, the job's id, kind and org).
        let settled = runtime
            .process_batch_item(body, handler, deadline, messages.len() - i)
            .instrument(tracing::info_span!("message", message_id = %message_id))
            .await;
        if !settled.ack() {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = message_id.clone();
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// Lambda's deadline for this invocation, on the wall clock the deployed
/// handlers read. One already past when the invocation starts (an emulator
/// that queued the event while it built the function) says nothing about
/// this invocation and is ignored, loudly.
pub(crate) fn deadline_of(ctx: &lambda_runtime::Context) -> Option<crate::core::clock::Timestamp> {
    let deadline = crate::core::clock::Timestamp::from(ctx.deadline());
    if ctx.deadline == 0 || deadline <= chrono::Utc::now() {
        tracing::warn!(
            deadline_ms = ctx.deadline,
            "the invocation's deadline has already passed; ignored"
        );
        return None;
    }
    Some(deadline)
}

/// The whole life of the scheduler function (schedule ticks, ad-hoc syncs).
pub async fn run_scheduler_function() -> std::result::Result<(), lambda_runtime::Error> {
    let cold = ColdStart::begin();
    init_logging();
    let deployed = Deployed::connect(DeployConfig::from_env()?, &cold, None).await?;
    let svc = deployed.svc.clone();
    cold.initialized(deployed.config.warm);
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let (svc, cold) = (&svc, &cold);
        async move {
            let out = crate::handlers::schedule::handle(svc, &event.payload)
                .await
                .map_err(lambda_runtime::Error::from);
            if let Some(report) = cold.job_finished() {
                report.publish("scheduler", svc.clock.now(), &mut std::io::stdout().lock());
            }
            out
        }
    }))
    .await
}

/// The whole life of an SQS-triggered function: every queued kind's
/// function is this, with the router restricted to its kind.
pub async fn run_queue_function(kind: JobKind) -> std::result::Result<(), lambda_runtime::Error> {
    let cold = ColdStart::begin();
    init_logging();
    let deployed = Deployed::connect(DeployConfig::from_env()?, &cold, Some(kind)).await?;
    let runtime = deployed.runtime(kind)?;
    let handler = Router::only(deployed.svc.clone(), deployed.ledger.clone(), kind)?;
    cold.initialized(deployed.config.warm);
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let (runtime, handler, deployed, cold) = (&runtime, &handler, &deployed, &cold);
        async move {
            let deadline = deadline_of(&event.context);
            let response = handle_sqs_event(runtime, event.payload, handler, deadline).await;
            write_emf(
                &deployed.svc.metrics,
                kind,
                deployed.config.burn_cutoff_hour,
                deployed.svc.clock.now(),
                &mut std::io::stdout().lock(),
            );
            if let Some(report) = cold.job_finished() {
                report.publish(
                    kind.as_str(),
                    deployed.svc.clock.now(),
                    &mut std::io::stdout().lock(),
                );
            }
            Ok::<SqsBatchResponse, lambda_runtime::Error>(response)
        }
    }))
    .await
}

/// Drains what the invocation counted and writes it as EMF lines to
/// `out` (stdout in a function, where CloudWatch Logs extracts the metrics).
/// A write that fails loses metrics, never the invocation.
pub fn write_emf(
    metrics: &Metrics,
    kind: JobKind,
    burn_cutoff_hour: u32,
    now: crate::core::clock::Timestamp,
    out: &mut dyn std::io::Write,
) {
    for doc in metrics.take().to_emf(kind.as_str(), now, burn_cutoff_hour) {
        if let Err(e) = writeln!(out, "{doc}") {
            tracing::warn!(error = %e, "could not write the invocation's metrics");
            return;
        }
    }
}
