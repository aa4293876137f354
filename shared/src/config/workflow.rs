//! Workflow definitions, validated when the app config loads.
//!
//! ```toml
//! [workflows.vip_notes]
//! trigger = { record_type = "invoices", on = ["created", "updated"] }
//! conditions = ["record.status == 'paid'", "related.customer.tier == 'gold'"]   # decision nodes (CEL)
//! related.customer = { via = "/customer_id", record_type = "customers", missing = "transfer", min_relookup = "1h" }
//! schedule = "24h"                                            # optional bulk execution
//!
//! [[workflows.vip_notes.actions]]
//! kind = "http"
//! method = "POST"
//! path = "/notes"
//! body = { text = "Thanks {{ related.customer.name }}", invoice = "{{ record.id }}" }
//! when = "record.amount_cents > 10000"                        # a branch (CEL)
//!
//! [[workflows.vip_notes.actions]]
//! kind = "datasource_push"
//! datasource = "vip_invoices"
//! row = { id = "{{ record.id }}", amount = "{{ record.amount_cents }}" }
//! delete_when = "record.status == 'void'"
//! max_rows_per_call = 100
//! ```
//!
//! CEL sees `record` (the stored record), `related.NAME` (a related record
//! or null), `change` ("created", "updated", or "manual") and `now`.

use crate::core::error::{Error, Result};
use crate::core::record::ChangeKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One `[workflows.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// What starts the workflow.
    pub trigger: TriggerConfig,
    /// Decision nodes: every one must be true, or nothing is spent.
    #[serde(default)]
    pub conditions: Vec<String>,
    /// Related records the conditions may read, by name.
    #[serde(default)]
    pub related: BTreeMap<String, RelatedConfig>,
    /// Run over every stored record of the trigger type this often.
    #[serde(default, with = "humantime_serde")]
    pub schedule: Option<Duration>,
    /// What the workflow does for each passing record.
    pub actions: Vec<ActionConfig>,
}

/// A workflow's trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// The record type whose changes trigger it.
    pub record_type: String,
    /// Which changes (default both).
    #[serde(default = "both")]
    pub on: Vec<ChangeKind>,
}

fn both() -> Vec<ChangeKind> {
    vec![ChangeKind::Created, ChangeKind::Updated]
}

/// What to do when a related record is not in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Run the related type's complete transfer (at most once per
    /// `min_relookup`) and wait for it.
    #[default]
    Transfer,
    /// Look the record up by key and wait for it.
    PkLookup,
    /// Go on with `related.NAME` null.
    Skip,
}

/// A related record: found through a foreign key of the trigger record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelatedConfig {
    /// JSON pointer to the foreign key in the record.
    pub via: String,
    /// The related record's type.
    pub record_type: String,
    /// What to do when it is not stored yet.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// Least time between two lookups of one missing record.
    #[serde(default = "hour", with = "humantime_serde")]
    pub min_relookup: Duration,
}

fn hour() -> Duration {
    Duration::from_secs(3_600)
}

/// What a workflow does for a passing record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// One HTTP call to the app's API.
    Http {
        /// HTTP method.
        method: String,
        /// A template, e.g. `/customers/{{ record.customer_id }}/notes`.
        path: String,
        /// JSON body, a template over the record.
        #[serde(default)]
        body: Option<serde_json::Value>,
        /// CEL: perform only when true.
        #[serde(default)]
        when: Option<String>,
    },
    /// Insert or delete a row of a Data Source (rows batched per call).
    DatasourcePush {
        /// The Data Source's name.
        datasource: String,
        /// The row, a template over the record.
        row: serde_json::Value,
        /// CEL: when true the row is deleted instead of inserted.
        #[serde(default)]
        delete_when: Option<String>,
        /// Most rows one push call carries; better set once in
        /// `[datasources.NAME]` (default 100).
        #[serde(default)]
        max_rows_per_call: Option<u32>,
        /// CEL: push only when true.
        #[serde(default)]
        when: Option<String>,
    },
}

/// CEL functions the interpreter is built without. The `cel` crate's
/// `regex` and `chrono` features (regular expressions, timestamps, durations
/// and the IANA time-zone database) add 2.9 MB to every arm64 function
/// binary; conditions compare RFC 3339 strings (`record.updated_at > now`)
/// instead, which order correctly in UTC.
const UNAVAILABLE_FUNCTIONS: &[&str] = &[
    "matches",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfYear",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Compiles a CEL expression, naming the field and the position on error.
pub(crate) fn compile(field: &str, source: &str) -> Result<cel::Program> {
    compile_with(field, source, &["record", "related", "change", "now"])
}

/// Compiles a CEL expression that may use only the variables `allowed`.
pub(crate) fn compile_with(field: &str, source: &str, allowed: &[&str]) -> Result<cel::Program> {
    let program = cel::Program::compile(source)
        .map_err(|e| Error::Config(format!("{field}: invalid CEL expression {source:?}: {e}")))?;
    if let Some(f) = UNAVAILABLE_FUNCTIONS
        .iter()
        .find(|f| program.references().has_function(f))
    {
        return Err(Error::Config(format!(
            "{field}: CEL function `{f}` is not available in {source:?} (metered's CEL has no \
             regular expressions or time types); compare RFC 3339 strings, e.g. \
             `record.updated_at > \"2026-01-01T00:00:00Z\"`"
        )));
    }
    for var in program.references().variables() {
        if !allowed.contains(&var) {
            return Err(Error::Config(format!(
                "{field}: unknown variable `{var}` in {source:?}; use {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(program)
}

/// Checks every `{{ path }}` of a template names record or a declared related record.
pub(crate) fn check_template(
    field: &str,
    value: &serde_json::Value,
    related: &BTreeMap<String, RelatedConfig>,
) -> Result<()> {
    match value {
        serde_json::Value::String(s) => {
            crate::config::template::check_braces(s)
                .map_err(|e| Error::Config(format!("{field}: {e}")))?;
            for path in crate::config::template::placeholders(s) {
                let mut parts = path.split('.');
                match (parts.next(), parts.next()) {
                    (Some("record"), _) => {}
                    (Some("related"), Some(name)) if related.contains_key(name) => {}
                    _ => {
                        return Err(Error::Config(format!(
                            "{field}: template {{{{ {path} }}}} must start with `record.` or `related.NAME.` (declared: {})",
                            related.keys().cloned().collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_template(field, v, related)),
        serde_json::Value::Object(map) => map
            .values()
            .try_for_each(|v| check_template(field, v, related)),
        _ => Ok(()),
    }
}
