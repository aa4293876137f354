//! Arbitrary bytes as SQS bodies, API responses and config files: never a
//! panic, always an error that names what was wrong. Case counts are set
//! per property below (5,000 in all).

use metered::jobs::{JobContext, JobHandler, JobRuntime, RestartPolicy, Settled};
use metered::jobs::{JobEnvelope, JobKind, Outcome};
use metered::AppConfig;
use proptest::prelude::*;
use std::sync::Arc;

fn app() -> AppConfig {
    AppConfig::parse(&metered_sim::app_config("http://127.0.0.1:9/")).unwrap()
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                "(id|data|next_cursor|updated_at|[a-z]{1,6})",
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

struct Never;

#[async_trait::async_trait]
impl JobHandler for Never {
    fn name(&self) -> &str {
        "never"
    }
    fn accepts(&self, kind: JobKind) -> bool {
        kind == JobKind::Spend
    }
    async fn handle(&self, _: &JobEnvelope, _: &JobContext) -> Outcome {
        Outcome::Done
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Any message body: a job, or a dead letter whose reason says what is
    /// wrong with the body; never a panic, never a silent drop.
    #[test]
    fn any_sqs_body_is_a_job_or_a_dead_letter_with_a_reason(body in ".{0,200}") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (_clock, shared) = metered_tests::manual_clock();
            let db = metered::adapters::sqlite::Db::in_memory().unwrap();
            let queue = Arc::new(metered::adapters::sqlite::SqliteQueue::new(db, "q", shared.clone(), 5));
            let runtime = JobRuntime::new(queue, shared, RestartPolicy::default());
            match runtime.process(&body, &Never, &JobContext::default()).await {
                Settled::DeadLettered { reason } => {
                    prop_assert!(reason.starts_with("malformed job:") || reason.contains("does not take"), "{}", reason);
                    prop_assert!(reason.len() > "malformed job: ".len());
                }
                Settled::Done => prop_assert!(JobEnvelope::parse(&body).is_ok()),
                other => prop_assert!(false, "{:?}", other),
            }
            Ok(())
        })?;
    }

    /// Any bytes as a list response: parsed and read as records, or an
    /// error that names the record type; never a panic.
    #[test]
    fn any_response_body_is_records_or_a_named_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let app = app();
        let rt = app.record_type("invoices").unwrap();
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Err(e) = metered::connector::extract_records("invoices", rt, &body) {
                prop_assert!(e.to_string().contains("`invoices`"), "{}", e);
            }
        }
    }

    /// Any JSON as a list response (records with or without ids, wrong
    /// shapes): records, or an error naming the type and what was missing.
    #[test]
    fn any_json_response_is_records_or_a_named_error(body in json()) {
        let app = app();
        for name in ["customers", "invoices", "classes", "checkins"] {
            let rt = app.record_type(name).unwrap();
            match metered::connector::extract_records(name, rt, &body) {
                Ok(page) => {
                    let named = format!("`{name}`");
                    prop_assert!(page.records.iter().all(|r| !r.id.is_empty()));
                    prop_assert!(page.unreadable.iter().all(|u| u.reason.contains(&named)));
                }
                Err(e) => prop_assert!(e.to_string().contains(&format!("`{name}`")), "{}", e),
            }
        }
    }

    /// Any text as a config file: loaded, or an error that says what is
    /// wrong (TOML position or the field); never a panic.
    #[test]
    fn any_config_text_is_loaded_or_a_named_error(text in ".{0,300}") {
        if let Err(e) = AppConfig::parse(&text) {
            prop_assert!(e.to_string().len() > "invalid configuration: ".len(), "{}", e);
        }
    }

    /// The bundled config with one line dropped or one character changed:
    /// loaded, or an error naming what is wrong.
    #[test]
    fn a_damaged_config_is_loaded_or_a_named_error(at in 0usize..4_000, with in any::<char>(), drop_line in any::<bool>()) {
        let good = metered_sim::app_config("http://127.0.0.1:9/");
        let damaged: String = if drop_line {
            let lines: Vec<&str> = good.lines().collect();
            let skip = at % lines.len();
            lines.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
        } else {
            let mut chars: Vec<char> = good.chars().collect();
            let i = at % chars.len();
            chars[i] = with;
            chars.into_iter().collect()
        };
        if let Err(e) = AppConfig::parse(&damaged) {
            prop_assert!(e.to_string().len() > "invalid configuration: ".len(), "{}", e);
        }
    }
}
