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
//! The `workflow` handler: from changed records (or a manual or bulk run)
//! to action jobs, with decision nodes evaluated on stored data only.

use crate::config::template::render;
use crate::config::workflow::{compile, ActionConfig, MissingPolicy, WorkflowConfig};
use crate::core::error::{Error, Result};
use crate::core::record::StoredRecord;
use crate::handlers::actions::{HttpActionPayload, PushPayload};
use crate::handlers::context::AppContext;
use crate::handlers::sync::TriggerPayload;
use crate::jobs::envelope::{JobEnvelope, JobKind, Outcome, Restart};
use crate::jobs::runtime::{JobContext, JobHandler};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Records read per page in a bulk execution.
const BULK_PAGE: u32 = 200;
/// How long a workflow waiting for a related record waits before looking again.
const RELATED_WAIT_SECS: i64 = 300;

/// A manual or bulk execution: `ids` for those records, none for every
/// stored record of the trigger type. `dry_run` only estimates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPayload {
    pub workflow: String,
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub dry_run: bool,
}

/// What a run would spend, computed from the store with no API call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkflowEstimate {
    pub workflow: String,
    pub records: u64,
    pub passing: u64,
    pub waiting_for_related: u64,
    /// Records an action template cannot be filled from (they would be
    /// quarantined).
    #[serde(default)]
    pub quarantined: u64,
    pub http_actions: u64,
    pub datasource_rows: u64,
    pub datasource_calls: u64,
    pub total_calls: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    workflow: String,
    id: String,
    change: String,
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
    /// Rows gathered per `workflow:action`, pushed in full calls.
    pending: BTreeMap<String, Pending>,
    waiting: Vec<Item>,
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

pub struct WorkflowHandler {
    pub svc: Arc<AppContext>,
    workflows: Vec<Compiled>,
}

fn eval(program: &cel::Program, ctx: &Value, what: &str) -> Result<bool> {
    let mut cel_ctx = cel::Context::default();
    for key in ["record", "related", "change", "now"] {
        let v = cel::to_value(ctx.get(key).cloned().unwrap_or(Value::Null))
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
        cel_ctx.add_variable_from_value(key, v);
    }
    match program.execute(&cel_ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(Error::Config(format!(
            "{what}: expected true or false, got {other:?}"
        ))),
        // A missing field on a record is "no": data varies, configs must not crash on it.
        Err(e) => {
            tracing::debug!(%what, error = %e, "expression did not evaluate; treated as false");
            Ok(false)
        }
    }
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

    /// Evaluates one record; with `side_effects`, asks for missing related records.
    async fn plan(
        &self,
        org: &str,
        wf: &Compiled,
        record: &StoredRecord,
        change: &str,
        side_effects: bool,
        loaded: &Loaded,
    ) -> Result<Plan> {
        let now = self.svc.clock.now();
        let data = record.data.clone().unwrap_or(Value::Null);
        let mut related = serde_json::Map::new();
        let mut waiting = false;
        for (name, rel) in &wf.config.related {
            let Some(id) = crate::handlers::sync::id_at(&data, &rel.via) else {
                related.insert(name.clone(), Value::Null);
                continue;
            };
            match (
                loaded.get(&(rel.record_type.clone(), id.clone())),
                rel.missing,
            ) {
                (Some(r), _) => {
                    related.insert(name.clone(), r.data.clone().unwrap_or(Value::Null));
                }
                (None, MissingPolicy::Skip) => {
                    related.insert(name.clone(), Value::Null);
                }
                (None, policy) => {
                    waiting = true;
                    if side_effects {
                        self.request_relookup(
                            org,
                            &rel.record_type,
                            &id,
                            policy,
                            crate::config::sync::chrono(rel.min_relookup),
                        )
                        .await?;
                    }
                }
            }
        }
        if waiting {
            return Ok(Plan::Waiting);
        }
        let ctx = json!({ "record": data, "related": Value::Object(related), "change": change, "now": now.to_rfc3339() });
        for (i, c) in wf.conditions.iter().enumerate() {
            if !eval(c, &ctx, &format!("workflows.{}.conditions[{i}]", wf.name))? {
                return Ok(Plan::Filtered);
            }
        }
        let mut actions = Vec::new();
        for (i, a) in wf.config.actions.iter().enumerate() {
            if let Some(w) = &wf.whens[i] {
                if !eval(w, &ctx, &format!("workflows.{}.actions[{i}].when", wf.name))? {
                    continue;
                }
            }
            // A template is checked when the config loads; what it lacks
            // here is this record's data, so only this record is set aside.
            let bad =
                |e: String| Plan::Quarantined(format!("workflows.{}.actions[{i}]: {e}", wf.name));
            match a {
                ActionConfig::Http {
                    method, path, body, ..
                } => {
                    let path = match render(&Value::String(path.clone()), &ctx) {
                        Ok(Value::String(s)) => s,
                        Ok(other) => other.to_string(),
                        Err(e) => return Ok(bad(e)),
                    };
                    let body = match body.as_ref().map(|b| render(b, &ctx)).transpose() {
                        Ok(b) => b,
                        Err(e) => return Ok(bad(e)),
                    };
                    actions.push((
                        i,
                        Act::Http {
                            method: method.clone(),
                            path,
                            body,
                        },
                    ));
                }
                ActionConfig::DatasourcePush { row, .. } => {
                    let delete = match &wf.delete_whens[i] {
                        Some(d) => eval(
                            d,
                            &ctx,
                            &format!("workflows.{}.actions[{i}].delete_when", wf.name),
                        )?,
                        None => false,
                    };
                    if delete {
                        actions.push((i, Act::Delete(record.id.clone())));
                    } else {
                        match render(row, &ctx) {
                            Ok(row) => actions.push((i, Act::Insert(row))),
                            Err(e) => return Ok(bad(e)),
                        }
                    }
                }
            }
        }
        Ok(Plan::Pass { actions })
    }

    /// Reads, in one batch per record type, the trigger records of `items`
    /// and every related record their workflows name: a slice of work costs
    /// a few store round trips, not two per record.
    async fn load(&self, org: &str, items: &[(&Compiled, String)]) -> Result<Loaded> {
        let key = self.svc.key(org);
        let mut loaded = Loaded::new();
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (wf, id) in items {
            wanted
                .entry(wf.config.trigger.record_type.clone())
                .or_default()
                .insert(id.clone());
        }
        self.fetch(&key, wanted, &mut loaded).await?;
        let mut related: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (wf, id) in items {
            let Some(data) = loaded
                .get(&(wf.config.trigger.record_type.clone(), id.clone()))
                .and_then(|r| r.data.as_ref())
            else {
                continue;
            };
            for rel in wf.config.related.values() {
                if let Some(fk) = crate::handlers::sync::id_at(data, &rel.via) {
                    related
                        .entry(rel.record_type.clone())
                        .or_default()
                        .insert(fk);
                }
            }
        }
        self.fetch(&key, related, &mut loaded).await?;
        Ok(loaded)
    }

    /// Adds the seen records among `wanted` (type → ids) to `loaded`.
    async fn fetch(
        &self,
        key: &crate::quota::QuotaKey,
        wanted: BTreeMap<String, BTreeSet<String>>,
        loaded: &mut Loaded,
    ) -> Result<()> {
        for (record_type, ids) in wanted {
            let ids: Vec<String> = ids
                .into_iter()
                .filter(|id| !loaded.contains_key(&(record_type.clone(), id.clone())))
                .collect();
            if ids.is_empty() {
                continue;
            }
            for r in self.svc.store.get(key, &record_type, &ids).await? {
                if r.seen() {
                    loaded.insert((record_type.clone(), r.id.clone()), r);
                }
            }
        }
        Ok(())
    }

    /// Asks for a missing related record, at most once per `min_relookup`.
    async fn request_relookup(
        &self,
        org: &str,
        record_type: &str,
        id: &str,
        policy: MissingPolicy,
        min: chrono::Duration,
    ) -> Result<()> {
        let now = self.svc.clock.now();
        match policy {
            MissingPolicy::Transfer => {
                let sync = crate::handlers::sync::sync_name(JobKind::CompleteTransfer, record_type);
                let state = self.svc.store.sync_state(&self.svc.key(org), &sync).await?;
                // At most one transfer per minimum relookup time.
                let due = state.last_started.is_none_or(|t| now >= t + min);
                if due
                    && crate::handlers::schedule::start_sync(
                        &self.svc,
                        org,
                        JobKind::CompleteTransfer,
                        record_type,
                        true,
                    )
                    .await?
                    .is_some()
                {
                    tracing::info!(
                        record_type,
                        "related record missing: complete transfer requested"
                    );
                }
            }
            MissingPolicy::PkLookup => {
                let payload = crate::handlers::sync::PkLookupPayload {
                    record_type: record_type.into(),
                    ids: vec![id.into()],
                    claimed: false,
                };
                let job = JobEnvelope::new(
                    JobKind::PkLookup,
                    org,
                    &self.svc.config.app.name,
                    serde_json::to_value(payload)?,
                    now,
                );
                self.svc.queues.send(&job, 0).await?;
            }
            MissingPolicy::Skip => {}
        }
        Ok(())
    }

    async fn enqueue_actions(
        &self,
        job: &JobEnvelope,
        wf: &Compiled,
        record: &StoredRecord,
        trigger_key: &str,
        actions: Vec<(usize, Act)>,
        cp: &mut Checkpoint,
    ) -> Result<()> {
        let now = self.svc.clock.now();
        for (i, act) in actions {
            match act {
                Act::Http { method, path, body } => {
                    let payload = HttpActionPayload {
                        workflow: wf.name.clone(),
                        action: i,
                        record_id: record.id.clone(),
                        method,
                        path,
                        body,
                    };
                    let mut action = JobEnvelope::new(
                        JobKind::ActionHttp,
                        &job.org,
                        &job.app,
                        serde_json::to_value(payload)?,
                        now,
                    );
                    // One action per org, workflow, action, record version
                    // and trigger: a redelivery or restart repeats the key.
                    action.idempotency_key = crate::jobs::ledger::idempotency_key(
                        &job.quota_key(),
                        &wf.name,
                        &[
                            &wf.name,
                            &i.to_string(),
                            &record.id,
                            &record.hash,
                            trigger_key,
                        ],
                    );
                    self.svc.queues.send(&action, 0).await?;
                }
                Act::Insert(row) => cp
                    .pending
                    .entry(format!("{}:{i}", wf.name))
                    .or_default()
                    .inserts
                    .push(row),
                Act::Delete(id) => cp
                    .pending
                    .entry(format!("{}:{i}", wf.name))
                    .or_default()
                    .deletes
                    .push(id),
            }
        }
        self.flush_pushes(job, cp, false).await
    }

    /// Sends gathered rows as Data Source pushes of `max_rows_per_call`
    /// (inserts and deletes together); the remainder only when `last`.
    async fn flush_pushes(&self, job: &JobEnvelope, cp: &mut Checkpoint, last: bool) -> Result<()> {
        let now = self.svc.clock.now();
        for (key, pending) in cp.pending.iter_mut() {
            let Some((wf_name, idx)) = key.rsplit_once(':') else {
                continue;
            };
            let idx: usize = idx.parse().unwrap_or(0);
            let wf = self.workflow(wf_name)?;
            let Some(ActionConfig::DatasourcePush {
                datasource,
                max_rows_per_call,
                ..
            }) = wf.config.actions.get(idx)
            else {
                continue;
            };
            let max = *max_rows_per_call as usize;
            while pending.inserts.len() + pending.deletes.len() >= max
                || (last && pending.inserts.len() + pending.deletes.len() > 0)
            {
                let take_deletes = pending.deletes.len().min(max);
                let deletes: Vec<String> = pending.deletes.drain(..take_deletes).collect();
                let take_inserts = pending.inserts.len().min(max - deletes.len());
                let inserts: Vec<Value> = pending.inserts.drain(..take_inserts).collect();
                let payload = PushPayload {
                    workflow: wf.name.clone(),
                    datasource: datasource.clone(),
                    inserts,
                    deletes,
                };
                let mut push = JobEnvelope::new(
                    JobKind::ActionDatasourcePush,
                    &job.org,
                    &job.app,
                    serde_json::to_value(payload)?,
                    now,
                );
                // The chunk's number and content: a re-run that rebuilds the
                // same chunk repeats its key (a provable duplicate), one
                // whose rows differ gets a key of its own (nothing skipped).
                let content = crate::core::record::content_hash(&push.payload);
                push.idempotency_key = crate::jobs::ledger::idempotency_key(
                    &job.quota_key(),
                    "push",
                    &[&job.id, key, &pending.chunk.to_string(), &content],
                );
                pending.chunk += 1;
                self.svc.queues.send(&push, 0).await?;
            }
        }
        Ok(())
    }

    /// Estimates a manual or bulk run without spending anything.
    pub async fn estimate(
        &self,
        org: &str,
        workflow: &str,
        ids: Option<&[String]>,
    ) -> Result<WorkflowEstimate> {
        let wf = self.workflow(workflow)?;
        let key = self.svc.key(org);
        let mut est = WorkflowEstimate {
            workflow: workflow.into(),
            ..Default::default()
        };
        let mut rows: BTreeMap<usize, u64> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let batch = match ids {
                Some(ids) => {
                    self.svc
                        .store
                        .get(&key, &wf.config.trigger.record_type, ids)
                        .await?
                }
                None => {
                    self.svc
                        .store
                        .list(
                            &key,
                            &wf.config.trigger.record_type,
                            after.as_deref(),
                            BULK_PAGE,
                        )
                        .await?
                }
            };
            let seen: Vec<(&Compiled, String)> = batch
                .iter()
                .filter(|r| r.seen())
                .map(|r| (wf, r.id.clone()))
                .collect();
            let loaded = self.load(org, &seen).await?;
            for r in batch.iter().filter(|r| r.seen()) {
                est.records += 1;
                match self.plan(org, wf, r, "manual", false, &loaded).await? {
                    Plan::Waiting => est.waiting_for_related += 1,
                    Plan::Filtered => {}
                    Plan::Quarantined(_) => est.quarantined += 1,
                    Plan::Pass { actions } => {
                        est.passing += 1;
                        for (i, a) in actions {
                            match a {
                                Act::Http { .. } => est.http_actions += 1,
                                _ => *rows.entry(i).or_default() += 1,
                            }
                        }
                    }
                }
            }
            match (ids, batch.last()) {
                (None, Some(last)) if batch.len() == BULK_PAGE as usize => {
                    after = Some(last.id.clone())
                }
                _ => break,
            }
        }
        for (i, n) in rows {
            if let Some(ActionConfig::DatasourcePush {
                max_rows_per_call, ..
            }) = wf.config.actions.get(i)
            {
                est.datasource_rows += n;
                est.datasource_calls += n.div_ceil(u64::from(*max_rows_per_call));
            }
        }
        est.total_calls = est.http_actions + est.datasource_calls;
        Ok(est)
    }

    async fn run(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Outcome> {
        let mut cp: Checkpoint = match &job.checkpoint {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::MalformedJob(format!("bad workflow checkpoint: {e}")))?,
            None => self.first_checkpoint(job).await?,
        };
        let key = self.svc.key(&job.org);
        // A change trigger's actions run once per record version; a manual
        // or bulk run is a trigger of its own.
        let trigger_key = if serde_json::from_value::<TriggerPayload>(job.payload.clone()).is_ok() {
            String::new()
        } else {
            format!(":{}", job.id)
        };
        let save = |cp: &Checkpoint| serde_json::to_value(cp).ok();
        let mut slices_here = 0u32;
        loop {
            if slices_here > 0 && ctx.near_deadline(self.svc.clock.now(), self.svc.deadline_margin)
            {
                return Ok(Outcome::Restart(Restart {
                    at: self.svc.clock.now(),
                    reason: "near the Lambda deadline".into(),
                    checkpoint: save(&cp),
                }));
            }
            // The next slice of work: queued items, else the next bulk page.
            let items: Vec<Item> = if !cp.items.is_empty() {
                cp.items
                    .drain(..cp.items.len().min(BULK_PAGE as usize))
                    .collect()
            } else if let Some((wf_name, after)) = cp.bulk.clone() {
                let wf = self.workflow(&wf_name)?;
                let page = self
                    .svc
                    .store
                    .list(
                        &key,
                        &wf.config.trigger.record_type,
                        after.as_deref(),
                        BULK_PAGE,
                    )
                    .await?;
                cp.bulk = match page.last() {
                    Some(last) if page.len() == BULK_PAGE as usize => {
                        Some((wf_name.clone(), Some(last.id.clone())))
                    }
                    _ => None,
                };
                page.into_iter()
                    .map(|r| Item {
                        workflow: wf_name.clone(),
                        id: r.id,
                        change: "manual".into(),
                    })
                    .collect()
            } else {
                break;
            };
            let slice: Vec<(&Compiled, String)> = items
                .iter()
                .map(|i| Ok((self.workflow(&i.workflow)?, i.id.clone())))
                .collect::<Result<_>>()?;
            slices_here += 1;
            let loaded = self.load(&job.org, &slice).await?;
            for item in items {
                let wf = self.workflow(&item.workflow)?;
                let Some(record) = loaded
                    .get(&(wf.config.trigger.record_type.clone(), item.id.clone()))
                    .cloned()
                else {
                    tracing::warn!(id = %item.id, "record not in the store; skipped");
                    continue;
                };
                match self
                    .plan(&job.org, wf, &record, &item.change, true, &loaded)
                    .await?
                {
                    Plan::Waiting => cp.waiting.push(item),
                    Plan::Filtered => {}
                    Plan::Quarantined(reason) => {
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
                    }
                    Plan::Pass { actions } => {
                        self.enqueue_actions(job, wf, &record, &trigger_key, actions, &mut cp)
                            .await?
                    }
                }
            }
        }
        self.flush_pushes(job, &mut cp, true).await?;
        if cp.waiting.is_empty() {
            return Ok(Outcome::Done);
        }
        let waiting = cp.waiting.len();
        cp.items = std::mem::take(&mut cp.waiting);
        // Every row was flushed above; the chunk counters stay, so the next
        // run's pushes get keys of their own instead of reusing finished ones.
        Ok(Outcome::Restart(Restart {
            at: self.svc.clock.now() + chrono::Duration::seconds(RELATED_WAIT_SECS),
            reason: format!("{waiting} record(s) waiting for a related record"),
            checkpoint: save(&cp),
        }))
    }

    async fn first_checkpoint(&self, job: &JobEnvelope) -> Result<Checkpoint> {
        if let Ok(trigger) = serde_json::from_value::<TriggerPayload>(job.payload.clone()) {
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
                    let change = serde_json::to_value(c.kind)?
                        .as_str()
                        .unwrap_or("created")
                        .to_string();
                    items.push(Item {
                        workflow: wf.name.clone(),
                        id: c.id.clone(),
                        change,
                    });
                }
            }
            return Ok(Checkpoint {
                items,
                ..Default::default()
            });
        }
        let run: RunPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::MalformedJob(format!("bad `workflow` payload: {e}")))?;
        self.workflow(&run.workflow)?;
        Ok(match run.ids {
            Some(ids) => Checkpoint {
                items: ids
                    .into_iter()
                    .map(|id| Item {
                        workflow: run.workflow.clone(),
                        id,
                        change: "manual".into(),
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
        if let Ok(run) = serde_json::from_value::<RunPayload>(job.payload.clone()) {
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
        match self.run(job, ctx).await {
            Ok(o) => o,
            Err(e) => Outcome::from_error(&e),
        }
    }
}
