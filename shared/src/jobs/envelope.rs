//! Jobs: the serde envelope every queue message carries, and what a handler
//! says when it is done with one.

use crate::core::clock::Timestamp;
use crate::core::error::{Error, Result};
use crate::quota::{Denied, DenyReason};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The envelope version this build writes and reads. A message of another
/// version is refused with a clear reason instead of being misread.
pub(crate) const ENVELOPE_VERSION: u32 = 1;

/// Which handler a job is for. Unknown kinds are refused when the envelope is
/// read, naming the kinds this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// A complete transfer of a record type.
    CompleteTransfer,
    /// A recent record lookup.
    RecentRecords,
    /// A primary key lookup.
    PkLookup,
    /// A workflow over triggers or a bulk run.
    Workflow,
    /// One HTTP action.
    ActionHttp,
    /// One Data Source push.
    ActionDatasourcePush,
    /// Spends a number of calls; used by `metered demo` and the tests.
    Spend,
}

impl JobKind {
    /// Every kind that has its own queue, dead-letter queue and handler: what
    /// a deployed stack creates and the local runner dispatches. `Spend` (the
    /// demo's filler) runs only where a test or the demo wires it.
    pub const QUEUED: [JobKind; 6] = [
        JobKind::CompleteTransfer,
        JobKind::RecentRecords,
        JobKind::PkLookup,
        JobKind::Workflow,
        JobKind::ActionHttp,
        JobKind::ActionDatasourcePush,
    ];

    /// Whether this kind is one of [`JobKind::QUEUED`]; written as an
    /// exhaustive match so a new kind must say whether it has a queue (the
    /// test that [`JobKind::QUEUED`] lists every such kind asks it).
    #[cfg(test)]
    pub(crate) fn is_queued(self) -> bool {
        match self {
            JobKind::CompleteTransfer
            | JobKind::RecentRecords
            | JobKind::PkLookup
            | JobKind::Workflow
            | JobKind::ActionHttp
            | JobKind::ActionDatasourcePush => true,
            JobKind::Spend => false,
        }
    }

    /// How the deployed stack runs this kind (`template.yaml`, which
    /// `tests/tests/template.rs` holds to these numbers): the local runner
    /// and the seeded simulation run it the same way, and the sync lease
    /// is sized from it.
    pub fn deployed(self) -> Deployment {
        let (timeout_secs, visibility_secs) = match self {
            JobKind::CompleteTransfer | JobKind::RecentRecords => (300, 1800),
            JobKind::PkLookup | JobKind::Workflow => (120, 720),
            JobKind::ActionHttp | JobKind::ActionDatasourcePush | JobKind::Spend => (30, 180),
        };
        Deployment {
            timeout_secs,
            visibility_secs,
            batch_size: 10,
            max_concurrency: 2,
        }
    }

    /// The kind's name, as queues, env variables and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CompleteTransfer => "complete-transfer",
            JobKind::RecentRecords => "recent-records",
            JobKind::PkLookup => "pk-lookup",
            JobKind::Workflow => "workflow",
            JobKind::ActionHttp => "action-http",
            JobKind::ActionDatasourcePush => "action-datasource-push",
            JobKind::Spend => "spend",
        }
    }
}

/// How one kind's function and queue are deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployment {
    /// The function's timeout: an invocation's deadline.
    pub timeout_secs: u32,
    /// The queue's visibility timeout: a message received by an invocation
    /// that died comes back this long after it was received.
    pub visibility_secs: u32,
    /// Messages per invocation (the event source's `BatchSize`).
    pub batch_size: u32,
    /// Invocations at once (the event source's `MaximumConcurrency`, the
    /// template's `ThirdPartyConcurrency` default).
    pub max_concurrency: u32,
}

/// How long a sync's lease lasts without renewal: longer than any
/// transfer queue's visibility timeout plus its function's timeout, so an
/// invocation that dies holding the lease is redelivered (and takes the
/// lease back) before any twin can start; a shorter lease let the
/// scheduler, the storm guard or a related-record relookup start a twin
/// whose lease then made the redelivered original drop its progress.
pub fn sync_lease() -> chrono::Duration {
    [JobKind::CompleteTransfer, JobKind::RecentRecords]
        .into_iter()
        .map(|k| k.deployed().lease())
        .max()
        .unwrap_or_default()
}

impl Deployment {
    /// A lease held by a job of this kind outlives a dead invocation's
    /// redelivery: the visibility and function timeouts, and 5 minutes.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.visibility_secs + self.timeout_secs) + 300)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit of work on a queue. Everything needed to resume it travels with
/// it: a restart is the same envelope with a new checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEnvelope {
    /// Envelope version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Stable across restarts and re-sends.
    pub id: String,
    /// Which handler runs it.
    pub kind: JobKind,
    /// The organization whose budget it spends.
    pub org: String,
    /// The third-party app.
    pub app: String,
    /// What to do; its shape belongs to the handler of `kind`.
    #[serde(default)]
    pub payload: Value,
    /// Where to resume (cursor, page, window, remaining ids).
    #[serde(default)]
    pub checkpoint: Option<Value>,
    /// Restarts so far (shown by `metered jobs`; not a limit).
    #[serde(default)]
    pub restarts: u32,
    /// Restarts in a row that neither waited for anything nor moved the
    /// checkpoint: a loop, capped by
    /// [`crate::jobs::fate::RestartPolicy::max_restarts`]. Waits never count.
    #[serde(default)]
    pub idle_restarts: u32,
    /// Bumped at every re-send, so a stale copy can be told from the latest.
    #[serde(default)]
    pub generation: u32,
    /// Do no work before this time (waits longer than SQS's 900 s delay).
    #[serde(default)]
    pub not_before: Option<Timestamp>,
    /// Sent as `Idempotency-Key` by actions; stable across restarts.
    pub idempotency_key: String,
    /// Why the job was last restarted (shown by `metered jobs`).
    #[serde(default)]
    pub last_reason: Option<String>,
    /// Transient failures in a row (5xx, bodies cut short, store errors)
    /// without progress; reset by any other outcome, and back to 1 by a
    /// failure that moved the checkpoint. Bounded by
    /// [`crate::jobs::fate::RestartPolicy::max_attempts`].
    #[serde(default)]
    pub attempts: u32,
    /// When the job was first created (kept across restarts).
    pub created_at: Timestamp,
}

impl JobEnvelope {
    /// A new job of `kind` for `org` on `app`, with its payload.
    pub fn new(
        kind: JobKind,
        org: impl Into<String>,
        app: impl Into<String>,
        payload: Value,
        now: Timestamp,
    ) -> Self {
        let id = crate::core::ids::new_id();
        Self {
            v: ENVELOPE_VERSION,
            idempotency_key: id.clone(),
            id,
            kind,
            org: org.into(),
            app: app.into(),
            payload,
            checkpoint: None,
            restarts: 0,
            idle_restarts: 0,
            generation: 0,
            not_before: None,
            last_reason: None,
            attempts: 0,
            created_at: now,
        }
    }

    /// A job this one causes, for the same org and app, under
    /// `idempotency_key`: built from what the cause knows, so a repeat of
    /// the cause repeats the key and the ledger runs the job once.
    pub(crate) fn follow_up(
        &self,
        kind: JobKind,
        payload: Value,
        idempotency_key: String,
        now: Timestamp,
    ) -> Self {
        let mut job = JobEnvelope::new(kind, &self.org, &self.app, payload, now);
        job.idempotency_key = idempotency_key;
        job
    }

    /// Reads a message body, naming what is wrong when it cannot.
    pub fn parse(body: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| Error::MalformedJob(format!("body is not JSON ({e})")))?;
        let Some(obj) = value.as_object() else {
            return Err(Error::MalformedJob("body is not a JSON object".into()));
        };
        match obj.get("v").and_then(Value::as_u64) {
            Some(v) if v == u64::from(ENVELOPE_VERSION) => {}
            Some(v) => {
                return Err(Error::MalformedJob(format!(
                    "envelope version {v} is not supported (this build reads {ENVELOPE_VERSION})"
                )))
            }
            None => {
                return Err(Error::MalformedJob(
                    "field `v` (envelope version) is missing or not a number".into(),
                ))
            }
        }
        serde_json::from_value(value).map_err(|e| Error::MalformedJob(format!("{e}")))
    }

    /// The SQS message body.
    pub fn to_body(&self) -> String {
        // Serializing a struct of plain data and `Value`s cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whose job it is: its records, ledger and budget are this tenant's.
    pub fn tenant(&self) -> crate::core::tenant::Tenant {
        crate::core::tenant::Tenant::new(&self.org, &self.app)
    }
}

/// Restart the job later from `checkpoint`, because of `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// When capacity returns; `now` for an immediate restart (deadline).
    pub at: Timestamp,
    /// Why, for the operator (shown in `metered jobs`).
    pub reason: String,
    /// `None` keeps the job's current checkpoint.
    pub checkpoint: Option<Value>,
    /// True when the job waits for something outside it (a limit, a lease,
    /// a record another job is storing): never counted against the restart
    /// cap. False when it stopped to go on (a deadline, the next block),
    /// which counts only if the checkpoint did not move.
    pub waiting: bool,
    /// True when what it waits for is a concurrency slot: the runtime may
    /// park it so a slot that frees is handed to it
    /// ([`crate::jobs::SlotWaiters`]).
    pub slot: bool,
}

/// What a handler returns for one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished; acknowledge it.
    Done,
    /// Come back later from a checkpoint (a limit, a wait, a deadline).
    Restart(Restart),
    /// Transient failure (a 5xx, a body cut short or not JSON, a store or
    /// queue error that may pass): the runtime restarts the job from
    /// `checkpoint` after a backoff that doubles with each attempt in a row,
    /// and gives up (dead letter naming the attempts and the last error)
    /// past [`crate::jobs::fate::RestartPolicy::max_attempts`].
    Transient {
        /// What failed.
        reason: String,
        /// `None` keeps the job's current checkpoint.
        checkpoint: Option<Value>,
    },
    /// Will never work: to the dead-letter queue with this reason.
    Fail(String),
}

impl Outcome {
    /// A quota refusal becomes a restart at the moment capacity returns.
    pub fn denied(denied: &Denied, checkpoint: Option<Value>) -> Self {
        Outcome::Restart(Restart {
            at: denied.retry_at,
            reason: denied.reason.to_string(),
            checkpoint,
            waiting: true,
            slot: matches!(denied.reason, DenyReason::Concurrency { .. }),
        })
    }

    /// Wait until `at` for something outside the job (a limit, a lease, a
    /// record), then go on from `checkpoint`. However long and however
    /// often, waiting never sends a job to the dead-letter queue.
    pub fn wait(at: Timestamp, reason: impl Into<String>, checkpoint: Option<Value>) -> Self {
        Outcome::Restart(Restart {
            at,
            reason: reason.into(),
            checkpoint,
            waiting: true,
            slot: false,
        })
    }

    /// Stop here and go on from `checkpoint` at `at` (a deadline, the next
    /// block of work): the job made progress and has more to do.
    pub fn resume(at: Timestamp, reason: impl Into<String>, checkpoint: Option<Value>) -> Self {
        Outcome::Restart(Restart {
            at,
            reason: reason.into(),
            checkpoint,
            waiting: false,
            slot: false,
        })
    }

    /// A transient failure: restart from `checkpoint` after a backoff, so
    /// the work done so far is kept. `None` keeps the current checkpoint.
    pub fn transient(reason: impl fmt::Display, checkpoint: Option<Value>) -> Self {
        Outcome::Transient {
            reason: reason.to_string(),
            checkpoint,
        }
    }

    /// A library error after progress: a transient one restarts from
    /// `checkpoint`, a permanent one fails.
    pub(crate) fn from_error_at(err: &Error, checkpoint: Option<Value>) -> Self {
        if err.is_retryable() {
            Outcome::transient(err, checkpoint)
        } else {
            Outcome::Fail(err.to_string())
        }
    }

    /// A library error becomes a transient failure (backoff, then the
    /// dead-letter queue with this reason) or a failure, as it says.
    pub fn from_error(err: &Error) -> Self {
        Outcome::from_error_at(err, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queued_list_is_every_kind_with_a_queue_once() {
        let all = [
            JobKind::CompleteTransfer,
            JobKind::RecentRecords,
            JobKind::PkLookup,
            JobKind::Workflow,
            JobKind::ActionHttp,
            JobKind::ActionDatasourcePush,
            JobKind::Spend,
        ];
        let queued: Vec<JobKind> = all.into_iter().filter(|k| k.is_queued()).collect();
        assert_eq!(queued, JobKind::QUEUED.to_vec());
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let job = JobEnvelope::new(
            JobKind::Spend,
            "org",
            "app",
            serde_json::json!({"calls": 3}),
            chrono::Utc::now(),
        );
        assert_eq!(JobEnvelope::parse(&job.to_body()).unwrap(), job);

        let err = JobEnvelope::parse("{not json").unwrap_err().to_string();
        assert!(err.contains("not JSON"), "{err}");
        let err = JobEnvelope::parse(r#"{"v": 2}"#).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        let mut v = serde_json::to_value(&job).unwrap();
        v["kind"] = "teleport".into();
        let err = JobEnvelope::parse(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("unknown variant `teleport`"), "{err}");
        v["kind"] = "spend".into();
        v.as_object_mut().unwrap().remove("org");
        let err = JobEnvelope::parse(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("missing field `org`"), "{err}");
    }
}
