//! Workflows: triggers, decision nodes, and actions that spend calls.
//!
//! The `workflow` handler reads records from the store (no API call),
//! resolves related records through foreign keys, evaluates the decision
//! nodes in CEL, and enqueues action jobs only for records that pass.
//! Actions (`action-http`, `action-datasource-push`) spend quota like the
//! syncs and run at most once per trigger: each has an idempotency key,
//! recorded before the call and marked done after, and sent to the API as
//! `Idempotency-Key`.
//!
//! This file holds the payloads, the checkpoint and the run loop; the steps
//! it calls live beside it: `decide` (decision nodes in CEL → a plan per
//! record), `related` (related records and their relookups), `fanout`
//! (action jobs and Data Source push batching) and `estimate` (what a run
//! would spend).

mod decide;
mod estimate;
mod fanout;
mod related;

use crate::config::template::render;
use crate::config::workflow::{compile, ActionConfig, MissingPolicy, WorkflowConfig};
use crate::core::error::{Error, Result};
use crate::core::record::{ChangeKind, StoredRecord};
use crate::handlers::context::AppContext;
use crate::handlers::payload::legacy::PushPayload;
use crate::handlers::payload::{HttpActionPayload, TriggerPayload, WorkflowPayload};
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome};
use crate::jobs::runtime::{JobContext, JobHandler};
use crate::store::outbox::{RowChange, RowWrite};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Records read per page in a bulk execution.
const BULK_PAGE: u32 = 200;
/// The longest a workflow waiting for a related record waits before looking
/// again; the first wait is [`RELATED_FIRST_WAIT_SECS`] (a lookup it asked
/// for is usually done in seconds), doubling each time.
const RELATED_WAIT_SECS: i64 = 300;
/// The first wait for a related record.
const RELATED_FIRST_WAIT_SECS: i64 = 10;
/// The first wait for a record whose triggering page is not stored yet
/// (its sync enqueues the trigger, then commits the page: usually
/// milliseconds); it doubles with each wait, up to [`RELATED_WAIT_SECS`].
const UNSTORED_WAIT_SECS: i64 = 2;
/// A trigger whose record the store still does not hold at the triggering
/// version this long after the trigger was made sets the record aside with
/// the reason: its page was never stored (the sync gave up, or the record
/// went back to its old content), and the next sync that stores it
/// triggers it again.
const UNSTORED_LIMIT_HOURS: i64 = 24;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    workflow: String,
    id: String,
    change: Cause,
    /// For a change: the version it found, and the one it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<Version>,
    /// Of a bulk execution over every stored record: its actions are
    /// background work ([`crate::quota::Call::in_background`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bulk: bool,
}

/// The content hash a change found, and the one the store held then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
}

/// Whether the store holds what an item is to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// Act on the stored record: the triggering version, or a newer one
    /// (whose own trigger dedupes with this one by the action key).
    Act,
    /// The page that brought this change is not committed yet (the store
    /// holds nothing, or the version it replaced): wait for it. A workflow
    /// that read the old version would act on old data under the old
    /// version's key, and the ledger would call it already performed.
    NotStoredYet,
    /// A record a manual or bulk run names that the store does not hold.
    Missing,
}

/// The rule for one item, from what the store holds (`None`: nothing, or
/// only a lookup placeholder).
fn readiness(item: &Item, stored_hash: Option<&str>) -> Readiness {
    match (item.change, stored_hash, &item.version) {
        (Cause::Manual, None, _) => Readiness::Missing,
        (Cause::Manual, Some(_), _) => Readiness::Act,
        (_, None, _) => Readiness::NotStoredYet,
        (_, Some(h), Some(v)) if v.prev.as_deref() == Some(h) && v.hash != h => {
            Readiness::NotStoredYet
        }
        (_, Some(_), _) => Readiness::Act,
    }
}

/// Why a record is evaluated: the change that triggered it, or a manual or
/// bulk run. Decision nodes see it as `change` (`"created"`, `"updated"`,
/// `"manual"`); checkpoints written before it was typed carry the same
/// strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Cause {
    Created,
    Updated,
    Manual,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Created => "created",
            Cause::Updated => "updated",
            Cause::Manual => "manual",
        }
    }
}

impl From<ChangeKind> for Cause {
    fn from(kind: ChangeKind) -> Self {
        match kind {
            ChangeKind::Created => Cause::Created,
            ChangeKind::Updated => Cause::Updated,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    inserts: Vec<Value>,
    deletes: Vec<String>,
    chunk: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    /// Items still to evaluate (trigger and manual runs, and waiting ones).
    items: Vec<Item>,
    /// Bulk execution: the workflow and the last record id done.
    bulk: Option<(String, Option<String>)>,
    /// Rows gathered per `workflow:action` by a checkpoint written before
    /// the outbox existed; sent once as that version's pushes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pending: BTreeMap<String, Pending>,
    /// Rows of the current slice per Data Source, written to the outbox
    /// before the slice ends (never saved in a checkpoint).
    #[serde(skip)]
    outbox: BTreeMap<String, Vec<RowWrite>>,
    waiting: Vec<Item>,
    /// Items whose triggering page is not stored yet ([`Readiness`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unstored: Vec<Item>,
    /// Waits so far for such items (the wait doubles with each).
    #[serde(default, skip_serializing_if = "is_zero")]
    unstored_waits: u32,
    /// Waits so far for related records (the wait doubles with each).
    #[serde(default, skip_serializing_if = "is_zero")]
    related_waits: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

struct Compiled {
    name: String,
    config: WorkflowConfig,
    conditions: Vec<cel::Program>,
    whens: Vec<Option<cel::Program>>,
    delete_whens: Vec<Option<cel::Program>>,
}

/// Records read for a slice of work, by (record type, id); seen ones only.
type Loaded = std::collections::HashMap<(String, String), StoredRecord>;

/// The checkpoint to restart from.
fn save(cp: &Checkpoint) -> Option<Value> {
    serde_json::to_value(cp).ok()
}

/// Missing related records a slice asks for, by (record type, policy): the
/// policy's minimum relookup time and the ids.
type Relookups = BTreeMap<(String, MissingPolicy), (std::time::Duration, BTreeSet<String>)>;

/// One record's fate in one workflow.
enum Plan {
    Waiting,
    Filtered,
    Pass {
        actions: Vec<(usize, Act)>,
    },
    /// The record cannot be acted on (an action template names a field it
    /// lacks): quarantined, and the rest of the slice goes on.
    Quarantined(String),
}

enum Act {
    Http {
        method: String,
        path: String,
        body: Option<Value>,
    },
    Insert(Value),
    Delete(String),
}

/// The `workflow` handler.
pub struct WorkflowHandler {
    /// What the handlers share.
    pub svc: Arc<AppContext>,
    workflows: Vec<Compiled>,
}

impl WorkflowHandler {
    /// Compiles every workflow of the app config (already validated).
    pub fn new(svc: Arc<AppContext>) -> Result<Self> {
        let mut workflows = Vec::new();
        for (name, wf) in &svc.config.workflows {
            let f = |x: &str| format!("workflows.{name}.{x}");
            let conditions = wf
                .conditions
                .iter()
                .enumerate()
                .map(|(i, c)| compile(&f(&format!("conditions[{i}]")), c))
                .collect::<Result<_>>()?;
            let mut whens = Vec::new();
            let mut delete_whens = Vec::new();
            for (i, a) in wf.actions.iter().enumerate() {
                let (when, delete_when) = match a {
                    ActionConfig::Http { when, .. } => (when, &None),
                    ActionConfig::DatasourcePush {
                        when, delete_when, ..
                    } => (when, delete_when),
                };
                whens.push(
                    when.as_ref()
                        .map(|w| compile(&f(&format!("actions[{i}].when")), w))
                        .transpose()?,
                );
                delete_whens.push(
                    delete_when
                        .as_ref()
                        .map(|w| compile(&f(&format!("actions[{i}].delete_when")), w))
                        .transpose()?,
                );
            }
            workflows.push(Compiled {
                name: name.clone(),
                config: wf.clone(),
                conditions,
                whens,
                delete_whens,
            });
        }
        Ok(Self { svc, workflows })
    }

    fn workflow(&self, name: &str) -> Result<&Compiled> {
        self.workflows
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown workflow `{name}`; declared: {}",
                    self.workflows
                        .iter()
                        .map(|w| w.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// `payload` is the job's, read once by [`JobHandler::handle`].
    async fn run(
        &self,
        job: &JobEnvelope,
        payload: &std::result::Result<WorkflowPayload, String>,
        ctx: &JobContext,
    ) -> Result<Outcome> {
        let mut cp: Checkpoint = match &job.checkpoint {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::MalformedJob(format!("bad workflow checkpoint: {e}")))?,
            None => self.first_checkpoint(payload).await?,
        };
        if !cp.pending.is_empty() {
            self.flush_legacy_pending(job, &mut cp).await?;
            cp.pending.clear();
        }
        // A change trigger's actions run once per record version; a manual
        // or bulk run is a trigger of its own.
        let trigger_key = if matches!(payload, Ok(WorkflowPayload::Trigger(_))) {
            String::new()
        } else {
            format!(":{}", job.id)
        };
        let mut slices_here = 0u32;
        loop {
            let now = self.svc.clock.now();
            if slices_here > 0 && ctx.near_deadline(now, self.svc.deadline_margin) {
                return Ok(Outcome::resume(now, "near the Lambda deadline", save(&cp)));
            }
            let Some(items) = self.next_slice(job, &mut cp).await? else {
                break;
            };
            slices_here += 1;
            self.run_slice(job, items, &trigger_key, &mut cp).await?;
        }
        self.wait_for_the_rest(job, cp).await
    }

    /// The next slice of work: queued items, else the next page of a bulk
    /// run; `None` when neither is left.
    async fn next_slice(
        &self,
        job: &JobEnvelope,
        cp: &mut Checkpoint,
    ) -> Result<Option<Vec<Item>>> {
        if !cp.items.is_empty() {
            let take = cp.items.len().min(BULK_PAGE as usize);
            return Ok(Some(cp.items.drain(..take).collect()));
        }
        let Some((wf_name, after)) = cp.bulk.clone() else {
            return Ok(None);
        };
        let wf = self.workflow(&wf_name)?;
        let key = self.svc.key(&job.org);
        let record_type = &wf.config.trigger.record_type;
        let page = self
            .svc
            .store
            .list(&key, record_type, after.as_deref(), BULK_PAGE)
            .await?;
        cp.bulk = match page.last() {
            Some(last) if page.len() == BULK_PAGE as usize => {
                Some((wf_name.clone(), Some(last.id.clone())))
            }
            _ => None,
        };
        let items = page.into_iter().map(|r| Item {
            workflow: wf_name.clone(),
            id: r.id,
            change: Cause::Manual,
            version: None,
            bulk: true,
        });
        Ok(Some(items.collect()))
    }

    /// Decides and carries out one slice: each item's record is loaded
    /// (with the related records its conditions read), planned, and its
    /// actions and outbox rows written; items not ready wait in `cp`.
    async fn run_slice(
        &self,
        job: &JobEnvelope,
        items: Vec<Item>,
        trigger_key: &str,
        cp: &mut Checkpoint,
    ) -> Result<()> {
        let slice: Vec<(&Compiled, String)> = items
            .iter()
            .map(|i| Ok((self.workflow(&i.workflow)?, i.id.clone())))
            .collect::<Result<_>>()?;
        let loaded = self.load(&job.org, &slice).await?;
        let mut relookups = Relookups::new();
        for item in items {
            let wf = self.workflow(&item.workflow)?;
            let stored = loaded
                .get(&(wf.config.trigger.record_type.clone(), item.id.clone()))
                .cloned();
            let hash = stored.as_ref().map(|r| r.hash.as_str());
            let record = match (readiness(&item, hash), stored) {
                (Readiness::Act, Some(record)) => record,
                (Readiness::NotStoredYet, _) => {
                    cp.unstored.push(item);
                    continue;
                }
                _ => {
                    tracing::warn!(id = %item.id, "record named by a manual run is not in the store; skipped");
                    continue;
                }
            };
            let relookups = Some(&mut relookups);
            match self
                .plan(wf, &record, item.change, relookups, &loaded)
                .await?
            {
                Plan::Waiting => cp.waiting.push(item),
                Plan::Filtered => {}
                Plan::Quarantined(reason) => self.quarantine(job, wf, &record, reason).await?,
                Plan::Pass { actions } => {
                    let origin = fanout::Origin {
                        record: &record,
                        trigger_key,
                        background: item.bulk,
                    };
                    self.enqueue_actions(job, wf, origin, actions, cp).await?
                }
            }
        }
        self.write_outbox(job, cp).await?;
        self.request_relookups(&job.org, relookups).await
    }

    /// Sets one record aside that a workflow's conditions cannot judge;
    /// the other records go on.
    async fn quarantine(
        &self,
        job: &JobEnvelope,
        wf: &Compiled,
        record: &StoredRecord,
        reason: String,
    ) -> Result<()> {
        let key = self.svc.key(&job.org);
        let q = crate::store::Quarantined::new(
            &format!("workflow:{}", wf.name),
            &wf.config.trigger.record_type,
            Some(record.id.clone()),
            reason,
            record.data.as_ref().unwrap_or(&Value::Null),
            self.svc.clock.now(),
        );
        tracing::warn!(workflow = %wf.name, record_id = %record.id, reason = %q.reason, "record quarantined; the other records go on");
        self.svc.store.quarantine(&key, &[q]).await?;
        let counter = crate::core::metrics::Counter::RecordsQuarantined;
        self.svc.metrics.add(&key.app, &key.org, counter, 1);
        Ok(())
    }

    /// Every slice is done: the job ends, or waits for what is not ready
    /// (records not stored yet at their version, related records),
    /// backing off; records never stored within the limit are set aside.
    async fn wait_for_the_rest(&self, job: &JobEnvelope, mut cp: Checkpoint) -> Result<Outcome> {
        let now = self.svc.clock.now();
        if !cp.unstored.is_empty()
            && now - job.created_at > chrono::Duration::hours(UNSTORED_LIMIT_HOURS)
        {
            self.set_aside_unstored(job, std::mem::take(&mut cp.unstored))
                .await?;
        }
        if cp.waiting.is_empty() && cp.unstored.is_empty() {
            return Ok(Outcome::Done);
        }
        let (related, unstored) = (cp.waiting.len(), cp.unstored.len());
        let (at, reason) = if unstored > 0 {
            let wait = (UNSTORED_WAIT_SECS << cp.unstored_waits.min(10)).min(RELATED_WAIT_SECS);
            cp.unstored_waits += 1;
            (
                now + chrono::Duration::seconds(wait),
                format!("{unstored} record(s) not stored yet at the version that triggered them; {related} waiting for a related record"),
            )
        } else {
            let wait = (RELATED_FIRST_WAIT_SECS << cp.related_waits.min(10)).min(RELATED_WAIT_SECS);
            cp.related_waits += 1;
            (
                now + chrono::Duration::seconds(wait),
                format!("{related} record(s) waiting for a related record"),
            )
        };
        cp.items = std::mem::take(&mut cp.waiting);
        cp.items.append(&mut cp.unstored);
        Ok(Outcome::wait(at, reason, save(&cp)))
    }

    /// Items whose triggering page was never stored within
    /// [`UNSTORED_LIMIT_HOURS`]: quarantined with the reason (listed by
    /// `metered quarantine`), never dropped without a trace.
    async fn set_aside_unstored(&self, job: &JobEnvelope, items: Vec<Item>) -> Result<()> {
        let key = self.svc.key(&job.org);
        let now = self.svc.clock.now();
        let mut set_aside = Vec::new();
        for item in items {
            let wf = self.workflow(&item.workflow)?;
            set_aside.push(crate::store::Quarantined::new(
                &format!("workflow:{}", wf.name),
                &wf.config.trigger.record_type,
                Some(item.id.clone()),
                format!(
                    "the page that changed this record was not stored within {UNSTORED_LIMIT_HOURS} h of its trigger; the next sync that stores it triggers the workflow again"
                ),
                &Value::Null,
                now,
            ));
        }
        tracing::warn!(
            count = set_aside.len(),
            "triggered records never stored; quarantined"
        );
        self.svc.store.quarantine(&key, &set_aside).await
    }

    /// A change trigger's items: each change a workflow of its record type
    /// is triggered by, with the version it found.
    fn trigger_checkpoint(&self, trigger: &TriggerPayload) -> Checkpoint {
        let mut items = Vec::new();
        for wf in self
            .workflows
            .iter()
            .filter(|w| w.config.trigger.record_type == trigger.record_type)
        {
            for c in trigger
                .changes
                .iter()
                .filter(|c| wf.config.trigger.on.contains(&c.kind))
            {
                items.push(Item {
                    workflow: wf.name.clone(),
                    id: c.id.clone(),
                    change: c.kind.into(),
                    version: Some(Version {
                        hash: c.hash.clone(),
                        prev: c.prev.clone(),
                    }),
                    bulk: false,
                });
            }
        }
        Checkpoint {
            items,
            ..Default::default()
        }
    }

    async fn first_checkpoint(
        &self,
        payload: &std::result::Result<WorkflowPayload, String>,
    ) -> Result<Checkpoint> {
        let run = match payload
            .as_ref()
            .map_err(|e| Error::MalformedJob(e.clone()))?
        {
            WorkflowPayload::Run(run) => run,
            WorkflowPayload::Trigger(trigger) => return Ok(self.trigger_checkpoint(trigger)),
        };
        self.workflow(&run.workflow)?;
        Ok(match run.ids.clone() {
            Some(ids) => Checkpoint {
                items: ids
                    .into_iter()
                    .map(|id| Item {
                        workflow: run.workflow.clone(),
                        id,
                        change: Cause::Manual,
                        version: None,
                        bulk: false,
                    })
                    .collect(),
                ..Default::default()
            },
            None => Checkpoint {
                bulk: Some((run.workflow.clone(), None)),
                ..Default::default()
            },
        })
    }
}

#[async_trait]
impl JobHandler for WorkflowHandler {
    fn name(&self) -> &str {
        "workflow"
    }

    fn accepts(&self, kind: JobKind) -> bool {
        kind == JobKind::Workflow
    }

    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Outcome {
        // Read once: which shape it is decides the dry run, the first
        // checkpoint and the actions' idempotency keys.
        let payload = WorkflowPayload::of(job);
        if let Ok(WorkflowPayload::Run(run)) = &payload {
            if run.dry_run {
                return match self
                    .estimate(&job.org, &run.workflow, run.ids.as_deref())
                    .await
                {
                    Ok(est) => {
                        tracing::info!(estimate = %serde_json::to_string(&est).unwrap_or_default(), "dry run: nothing spent");
                        Outcome::Done
                    }
                    Err(e) => Outcome::from_error(&e),
                };
            }
        }
        match self.run(job, &payload, ctx).await {
            Ok(o) => o,
            Err(e) => Outcome::from_error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(change: Cause, hash: &str, prev: Option<&str>) -> Item {
        Item {
            workflow: "w".into(),
            id: "inv_1".into(),
            change,
            version: Some(Version {
                hash: hash.into(),
                prev: prev.map(str::to_string),
            }),
            bulk: false,
        }
    }

    /// A change waits until its page is stored: nothing stored, or still
    /// the version it replaced; it acts on its own version or a newer one.
    #[test]
    fn a_change_waits_for_its_page_to_be_stored() {
        use Readiness::*;
        let created = item(Cause::Created, "h1", None);
        assert_eq!(readiness(&created, None), NotStoredYet);
        assert_eq!(readiness(&created, Some("h1")), Act);
        assert_eq!(readiness(&created, Some("h2")), Act, "a newer version");
        let updated = item(Cause::Updated, "h2", Some("h1"));
        assert_eq!(readiness(&updated, Some("h1")), NotStoredYet);
        assert_eq!(readiness(&updated, None), NotStoredYet);
        assert_eq!(readiness(&updated, Some("h2")), Act);
        assert_eq!(readiness(&updated, Some("h3")), Act, "a newer version");
        // A record changed back to what it was before is its own version.
        let back = item(Cause::Updated, "h1", Some("h1"));
        assert_eq!(readiness(&back, Some("h1")), Act);
        let manual = Item {
            change: Cause::Manual,
            version: None,
            ..created
        };
        assert_eq!(readiness(&manual, None), Missing);
        assert_eq!(readiness(&manual, Some("h1")), Act);
    }

    /// Checkpoints queued before `change` was typed hold plain strings:
    /// they must still parse, and CEL must see the same strings.
    #[test]
    fn a_checkpoint_with_string_changes_still_parses() {
        let old = json!({"items": [
            {"workflow": "vip", "id": "inv_1", "change": "created"},
            {"workflow": "vip", "id": "inv_1", "change": "updated"},
            {"workflow": "vip", "id": "inv_2", "change": "manual"}
        ], "bulk": null, "pending": {}, "waiting": []});
        let cp: Checkpoint = serde_json::from_value(old).unwrap();
        let causes: Vec<Cause> = cp.items.iter().map(|i| i.change).collect();
        assert_eq!(causes, [Cause::Created, Cause::Updated, Cause::Manual]);
        for cause in causes {
            assert_eq!(serde_json::to_value(cause).unwrap(), json!(cause.as_str()));
        }
        assert!(serde_json::from_value::<Item>(
            json!({"workflow": "w", "id": "x", "change": "deleted"})
        )
        .is_err());
    }
}
