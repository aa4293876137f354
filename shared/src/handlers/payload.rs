//! Every job kind's payload, in one place: what the scheduler, the syncs
//! and the workflows put on a queue, and what the handlers read back.
//!
//! Two kinds carry two shapes each, told apart here and nowhere else:
//! a `workflow` job is a change trigger ([`TriggerPayload`]) or a manual or
//! bulk run ([`RunPayload`]) — see [`WorkflowPayload`]; an
//! `action-datasource-push` job is an outbox flush ([`FlushPayload`]) or a
//! push queued before the outbox existed ([`legacy::PushPayload`]) — see
//! [`PushJob`]. Their fields do not overlap and every struct denies unknown
//! fields, so at most one shape parses.

use crate::core::record::ChangeKind;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use serde::{Deserialize, Serialize};

/// Payload of complete-transfer and recent-records jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncPayload {
    /// The record type synced.
    pub record_type: String,
    /// Started by hand, or for work that waits for it (a lookup storm, a
    /// workflow's missing related records), rather than by the schedule.
    /// A scheduled complete transfer is background work
    /// ([`crate::quota::Call::in_background`]); this one is not.
    #[serde(default)]
    pub adhoc: bool,
}

impl SyncPayload {
    /// Whether the sync's calls are background work: a complete transfer
    /// the schedule started, which nobody waits for at the moment.
    pub(crate) fn background(&self, kind: JobKind) -> bool {
        kind == JobKind::CompleteTransfer && !self.adhoc
    }
}

/// Payload of pk-lookup jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PkLookupPayload {
    /// The referenced type, whose records are looked up.
    pub record_type: String,
    /// The ids to look up.
    pub ids: Vec<String>,
    /// The ids were already claimed (deduplicated against the store) by the
    /// sync that found them.
    #[serde(default)]
    pub claimed: bool,
}

/// One new or changed record, as workflow triggers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRecord {
    /// The record's id.
    pub id: String,
    /// Created or updated.
    pub kind: ChangeKind,
    /// Its content hash (part of an action's idempotency key): the version
    /// the workflow acts on, once the store holds it.
    pub hash: String,
    /// The hash the store held when the change was found (`None`: never
    /// stored). While the store still holds it (or nothing), the page is
    /// not committed yet and the workflow waits. Absent in triggers queued
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// Payload of workflow trigger jobs: the changes of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerPayload {
    /// The type of the changed records.
    pub record_type: String,
    /// The changes.
    pub changes: Vec<ChangedRecord>,
}

/// A manual or bulk execution: `ids` for those records, none for every
/// stored record of the trigger type. `dry_run` only estimates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPayload {
    /// The workflow to run.
    pub workflow: String,
    /// Those records; `None` for every stored record of the trigger type (bulk).
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Only estimate.
    #[serde(default)]
    pub dry_run: bool,
}

/// Payload of `action-http` jobs: a rendered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpActionPayload {
    /// The workflow that decided it.
    pub workflow: String,
    /// The action's index in the workflow.
    pub action: usize,
    /// The trigger record.
    pub record_id: String,
    /// HTTP method.
    pub method: String,
    /// Rendered path.
    pub path: String,
    /// Rendered body.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Fanned out by a bulk execution: background work, held back for
    /// interactive work ([`crate::quota::Call::in_background`]). Left out
    /// when false, so a version that does not know it reads the job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
}

/// Payload of `action-datasource-push` jobs: flush this Data Source's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlushPayload {
    /// The Data Source.
    pub datasource: String,
}

/// What a `workflow` job carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkflowPayload {
    /// The changes one sync page found.
    Trigger(TriggerPayload),
    /// A manual or bulk execution.
    Run(RunPayload),
}

impl WorkflowPayload {
    /// Reads a `workflow` job's payload; the error names what was wrong
    /// (as a run, the shape a user writes by hand).
    pub(crate) fn of(job: &JobEnvelope) -> Result<Self, String> {
        if let Ok(t) = serde_json::from_value::<TriggerPayload>(job.payload.clone()) {
            return Ok(Self::Trigger(t));
        }
        serde_json::from_value::<RunPayload>(job.payload.clone())
            .map(Self::Run)
            .map_err(|e| format!("bad `workflow` payload: {e}"))
    }
}

/// What an `action-datasource-push` job carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PushJob {
    /// Flush the Data Source's outbox (every job queued since the outbox).
    Flush(FlushPayload),
    /// Rows gathered by a version before the outbox, sent as they are.
    Legacy(legacy::PushPayload),
}

impl PushJob {
    /// Reads an `action-datasource-push` job's payload.
    pub(crate) fn of(job: &JobEnvelope) -> Result<Self, String> {
        if let Ok(p) = serde_json::from_value::<FlushPayload>(job.payload.clone()) {
            return Ok(Self::Flush(p));
        }
        serde_json::from_value::<legacy::PushPayload>(job.payload.clone())
            .map(Self::Legacy)
            .map_err(|e| {
                format!(
                    "bad `action-datasource-push` payload: expected {{\"datasource\": NAME}} ({e})"
                )
            })
    }
}

/// Shapes only jobs queued by older versions carry. Read, never written:
/// a job queued before an upgrade is still performed, not lost. Kept since
/// the Data Source outbox (2026-10); a queue can hold a job 14 days, so this
/// can go once every deployment has run a release with the outbox for that
/// long.
pub(crate) mod legacy {
    use serde::{Deserialize, Serialize};

    /// Payload of `action-datasource-push` jobs queued by versions before the
    /// outbox: inserts and deletes sent in one call. Still performed, so jobs
    /// queued before an upgrade are not lost; new jobs carry a
    /// [`super::FlushPayload`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct PushPayload {
        /// The workflow that gathered the rows.
        pub workflow: String,
        /// The Data Source.
        pub datasource: String,
        /// Rows to insert or replace.
        pub inserts: Vec<serde_json::Value>,
        /// Row ids to delete.
        pub deletes: Vec<String>,
    }
}

/// The sync name used for leases, state and usage reports.
pub(crate) fn sync_name(kind: JobKind, record_type: &str) -> String {
    format!("{kind}:{record_type}")
}

/// Reads a job's payload as `T`; a payload that does not parse fails the
/// job (to its dead-letter queue) naming the kind and what was wrong.
pub(crate) fn parse_payload<T: serde::de::DeserializeOwned>(
    job: &JobEnvelope,
) -> Result<T, Outcome> {
    serde_json::from_value(job.payload.clone())
        .map_err(|e| Outcome::Fail(format!("bad `{}` payload: {e}", job.kind)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(kind: JobKind, payload: serde_json::Value) -> JobEnvelope {
        JobEnvelope::new(kind, "acme", "crm", payload, chrono::Utc::now())
    }

    #[test]
    fn a_workflow_job_is_a_trigger_or_a_run() {
        let trigger = json!({"record_type": "invoices", "changes": [{"id": "1", "kind": "created", "hash": "h"}]});
        assert!(matches!(
            WorkflowPayload::of(&job(JobKind::Workflow, trigger)),
            Ok(WorkflowPayload::Trigger(t)) if t.changes.len() == 1
        ));
        let run = json!({"workflow": "vip", "ids": ["1", "2"]});
        assert!(matches!(
            WorkflowPayload::of(&job(JobKind::Workflow, run)),
            Ok(WorkflowPayload::Run(r)) if r.workflow == "vip" && !r.dry_run
        ));
        let err = WorkflowPayload::of(&job(JobKind::Workflow, json!({"flow": "vip"}))).unwrap_err();
        assert!(err.starts_with("bad `workflow` payload:"), "{err}");
        assert!(err.contains("flow"), "names the field: {err}");
    }

    #[test]
    fn a_push_job_is_a_flush_or_a_legacy_push() {
        let flush = json!({"datasource": "vips"});
        assert!(matches!(
            PushJob::of(&job(JobKind::ActionDatasourcePush, flush)),
            Ok(PushJob::Flush(f)) if f.datasource == "vips"
        ));
        let legacy = json!({"workflow": "w", "datasource": "vips", "inserts": [{"id": "1"}], "deletes": ["2"]});
        assert!(matches!(
            PushJob::of(&job(JobKind::ActionDatasourcePush, legacy)),
            Ok(PushJob::Legacy(p)) if p.deletes == ["2"]
        ));
        let err = PushJob::of(&job(JobKind::ActionDatasourcePush, json!([1]))).unwrap_err();
        assert!(err.contains("expected {\"datasource\": NAME}"), "{err}");
    }
}
