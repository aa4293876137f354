//! A function's cold start as it finishes its first job, measured from the
//! inside: init (process start to the first poll of the runtime API), the
//! first response from DynamoDB and from SQS, and the end of the first
//! invocation. Lambda's own `Init Duration` stops at the first poll, yet a
//! Rust function's first AWS request pays for the connection (TCP, TLS) and
//! the SDK's lazy setup, which can cost more than init itself; this is what
//! tells them apart, per function, in the logs and as EMF metrics.
//!
//! [`warm_connections`] can open the DynamoDB and SQS connections during
//! init, at the same time as the config and secrets are read from SSM and
//! Secrets Manager (`METERED_WARM_CONNECTIONS=1`). It is off by default
//! because it did not pay where it was measured: on the deployed shape
//! (ministack running the functions, over plain HTTP and over TLS) the two
//! extra requests lengthened init by more than they saved the first job
//! (README, "Measured"). Where init is not on the request's path
//! (provisioned concurrency) it may; measure there before turning it on.

use crate::core::clock::Timestamp;
use aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The AWS services whose first response is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The table (records, quota, ledgers).
    DynamoDb,
    /// The job queues.
    Sqs,
}

/// The moments of one execution environment's cold start, each set once.
#[derive(Debug)]
pub struct ColdStart {
    began: Instant,
    init: OnceLock<Duration>,
    first_dynamodb: OnceLock<Duration>,
    first_sqs: OnceLock<Duration>,
    first_job: OnceLock<Duration>,
    warmed: OnceLock<bool>,
}

/// What [`ColdStart::job_finished`] reports once: milliseconds since the
/// process started.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdStartReport {
    /// Until the first poll of the runtime API (Lambda's init phase).
    pub init_ms: f64,
    /// Until the first DynamoDB response (during init when warmed).
    pub first_dynamodb_ms: Option<f64>,
    /// Until the first SQS response (during init when warmed).
    pub first_sqs_ms: Option<f64>,
    /// Until the first invocation finished.
    pub first_job_ms: f64,
    /// Whether the connections were opened during init.
    pub warmed: bool,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl ColdStart {
    /// Starts the stopwatch: call first thing in the function's life.
    pub fn begin() -> Arc<Self> {
        Arc::new(Self {
            began: Instant::now(),
            init: OnceLock::new(),
            first_dynamodb: OnceLock::new(),
            first_sqs: OnceLock::new(),
            first_job: OnceLock::new(),
            warmed: OnceLock::new(),
        })
    }

    /// Init is over: the function is about to poll for its first event.
    pub fn initialized(&self, warmed: bool) {
        let _ = self.init.set(self.began.elapsed());
        let _ = self.warmed.set(warmed);
    }

    /// A response from `service` arrived (only the first one counts).
    pub(crate) fn responded(&self, service: Service) {
        let at = self.began.elapsed();
        let _ = match service {
            Service::DynamoDb => self.first_dynamodb.set(at),
            Service::Sqs => self.first_sqs.set(at),
        };
    }

    /// An SDK interceptor that calls [`Self::responded`] for `service`.
    pub fn interceptor(self: &Arc<Self>, service: Service) -> FirstResponse {
        FirstResponse {
            cold: self.clone(),
            service,
        }
    }

    /// An invocation finished: the report the first time, `None` after.
    pub fn job_finished(&self) -> Option<ColdStartReport> {
        self.first_job.set(self.began.elapsed()).ok()?;
        Some(ColdStartReport {
            init_ms: ms(self.init.get().copied().unwrap_or_default()),
            first_dynamodb_ms: self.first_dynamodb.get().copied().map(ms),
            first_sqs_ms: self.first_sqs.get().copied().map(ms),
            first_job_ms: ms(self.first_job.get().copied().unwrap_or_default()),
            warmed: self.warmed.get().copied().unwrap_or(false),
        })
    }
}

impl ColdStartReport {
    /// The metric names, as in the EMF document.
    pub(crate) const METRICS: [&'static str; 4] = [
        "ColdStartInitMs",
        "ColdStartFirstDynamoDbMs",
        "ColdStartFirstSqsMs",
        "ColdStartFirstJobMs",
    ];

    /// One EMF document (dimension `Function`), as the invocation metrics
    /// are written; a service the function never reached is left out.
    pub fn to_emf(&self, function: &str, now: Timestamp) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let values = [
            Some(self.init_ms),
            self.first_dynamodb_ms,
            self.first_sqs_ms,
            Some(self.first_job_ms),
        ];
        let mut doc = Map::new();
        doc.insert("Function".into(), json!(function));
        doc.insert("Warmed".into(), json!(self.warmed));
        let mut metrics = Vec::new();
        for (name, value) in Self::METRICS.iter().zip(values) {
            if let Some(v) = value {
                doc.insert((*name).into(), json!(v));
                metrics.push(json!({"Name": name, "Unit": "Milliseconds"}));
            }
        }
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": now.timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": crate::core::metrics::NAMESPACE,
                    "Dimensions": [["Function"]],
                    "Metrics": metrics,
                }],
            }),
        );
        Value::Object(doc)
    }

    /// Logs the report and writes its EMF line to `out` (stdout in a
    /// function); a failed write loses the figures, never the invocation.
    pub fn publish(&self, function: &str, now: Timestamp, out: &mut dyn std::io::Write) {
        tracing::info!(
            function,
            init_ms = self.init_ms,
            first_dynamodb_ms = self.first_dynamodb_ms,
            first_sqs_ms = self.first_sqs_ms,
            first_job_ms = self.first_job_ms,
            warmed = self.warmed,
            "cold start: first job finished"
        );
        if let Err(e) = writeln!(out, "{}", self.to_emf(function, now)) {
            tracing::warn!(error = %e, "could not write the cold start's metrics");
        }
    }
}

/// Times the first response of a client's service (see [`ColdStart`]).
#[derive(Debug)]
pub struct FirstResponse {
    cold: Arc<ColdStart>,
    service: Service,
}

impl Intercept for FirstResponse {
    fn name(&self) -> &'static str {
        "metered::ColdStart"
    }

    /// A response came back, whatever it says: the connection works.
    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.cold.responded(self.service);
        Ok(())
    }
}

/// Whether to open connections during init (`METERED_WARM_CONNECTIONS`:
/// `1`, `true`, `on` → yes; unset, `0`, `false`, `off` → no; anything else
/// is an error naming the variable).
pub(crate) fn warm_setting(
    get: impl Fn(&str) -> Option<String>,
) -> crate::core::error::Result<bool> {
    match get("METERED_WARM_CONNECTIONS").as_deref().map(str::trim) {
        Some("1" | "true" | "on") => Ok(true),
        None | Some("" | "0" | "false" | "off") => Ok(false),
        Some(other) => Err(crate::core::error::Error::Config(format!(
            "METERED_WARM_CONNECTIONS: expected 1 or 0, got {other:?}"
        ))),
    }
}

/// How long warming may hold init up: a slow service costs the first job
/// its own request later instead.
const WARM_CAP: Duration = Duration::from_secs(2);

/// Opens the DynamoDB connection (a read of an item that never exists,
/// which the functions' `dynamodb:GetItem` allows) and, given a queue, the
/// SQS one (`GetQueueAttributes`, which the SQS event source's execution
/// role allows). Errors are logged and forgotten: warming is an
/// optimisation, the job's own requests report real failures.
pub async fn warm_connections(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    sqs: Option<(&aws_sdk_sqs::Client, &str)>,
) {
    let read = async {
        dynamodb
            .get_item()
            .table_name(table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S("metered#warm".into()),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S("warm".into()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
    };
    let queue = async {
        let Some((client, url)) = sqs else {
            return Ok(());
        };
        client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
    };
    match tokio::time::timeout(WARM_CAP, futures::future::join(read, queue)).await {
        Ok((read, queue)) => {
            for (service, r) in [("dynamodb", read), ("sqs", queue)] {
                if let Err(error) = r {
                    tracing::debug!(service, %error, "warming a connection failed");
                }
            }
        }
        Err(_) => tracing::debug!("warming connections took over 2 s; left to the first job"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_comes_once_and_in_order() {
        let cold = ColdStart::begin();
        cold.responded(Service::DynamoDb);
        cold.initialized(true);
        cold.responded(Service::DynamoDb);
        let first = cold.job_finished().expect("the first job reports");
        assert!(first.first_dynamodb_ms.unwrap() <= first.init_ms);
        assert!(first.init_ms <= first.first_job_ms);
        assert_eq!(first.first_sqs_ms, None, "no SQS response came");
        assert!(first.warmed);
        assert_eq!(cold.job_finished(), None, "only the first job reports");
    }

    #[test]
    fn the_emf_line_names_only_what_was_measured() {
        let report = ColdStartReport {
            init_ms: 12.5,
            first_dynamodb_ms: Some(20.0),
            first_sqs_ms: None,
            first_job_ms: 31.25,
            warmed: false,
        };
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut out = Vec::new();
        report.publish("workflow", now, &mut out);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["Function"], "workflow");
        assert_eq!(doc["ColdStartInitMs"], 12.5);
        assert_eq!(doc["ColdStartFirstJobMs"], 31.25);
        assert!(doc.get("ColdStartFirstSqsMs").is_none());
        let names: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "ColdStartInitMs",
                "ColdStartFirstDynamoDbMs",
                "ColdStartFirstJobMs"
            ]
        );
    }

    #[test]
    fn warming_is_off_unless_turned_on() {
        assert!(!warm_setting(|_| None).unwrap());
        assert!(warm_setting(|_| Some("1".into())).unwrap());
        assert!(warm_setting(|_| Some("on".into())).unwrap());
        for off in ["0", "false", "off"] {
            assert!(!warm_setting(|_| Some(off.into())).unwrap(), "{off}");
        }
        let e = warm_setting(|_| Some("maybe".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("METERED_WARM_CONNECTIONS") && e.contains("maybe"),
            "{e}"
        );
    }
}
