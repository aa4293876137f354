//! The scheduler: on every tick (an EventBridge schedule), enqueue the syncs
//! that are due by their configured frequency, and a flush for any Data
//! Source outbox whose rows have none on its way. Starting a sync takes its
//! lease first, so a sync never runs twice at once however often ticks fire
//! or overlap; its start is recorded only once its job was sent, so a send
//! that fails leaves the sync due at the next tick, not a period later.
//! Each organization is ticked on its own: one org's store error never
//! holds back another's syncs.

use crate::config::sync::chrono as dur;
use crate::core::error::Result;
use crate::handlers::context::AppContext;
use crate::handlers::payload::sync_name;
use crate::handlers::start::start_sync;
use crate::jobs::envelope::{JobEnvelope, JobKind};

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// The jobs it started.
    pub started: Vec<JobEnvelope>,
    /// Organizations whose tick failed, with the error; the others were
    /// ticked. Their due syncs start at the next tick.
    pub failed: Vec<(String, String)>,
}

/// One scheduler tick: every due sync of every connection is started, each
/// organization on its own (a failure is logged and reported, and the
/// other organizations go on).
pub async fn tick(svc: &AppContext) -> TickReport {
    let mut report = TickReport::default();
    for org in svc.orgs().map(str::to_string).collect::<Vec<_>>() {
        if let Err(e) = tick_org(svc, &org, &mut report.started).await {
            tracing::error!(org, error = %e, "scheduler tick failed for this organization; the others went on");
            report.failed.push((org, e.to_string()));
        }
    }
    report
}

async fn tick_org(svc: &AppContext, org: &str, started: &mut Vec<JobEnvelope>) -> Result<()> {
    let now = svc.clock.now();
    {
        let org = org.to_string();
        let key = svc.key(&org);
        for (record_type, sync) in &svc.config.syncs {
            let schedules = [
                (
                    JobKind::CompleteTransfer,
                    sync.complete_transfer.as_ref().map(|t| t.every),
                ),
                (
                    JobKind::RecentRecords,
                    sync.recent.as_ref().map(|r| r.every),
                ),
            ];
            for (kind, every) in schedules {
                let Some(every) = every else { continue };
                let state = svc
                    .store
                    .sync_state(&key, &sync_name(kind, record_type))
                    .await?;
                let due = state.last_started.is_none_or(|t| now >= t + dur(every));
                if due {
                    if let Some(job) = start_sync(svc, &org, kind, record_type, false).await? {
                        started.push(job);
                    }
                }
            }
        }
        // Scheduled workflows: a bulk execution over every stored record.
        for (name, wf) in &svc.config.workflows {
            let Some(every) = wf.schedule else { continue };
            let marker = format!("workflow:{name}");
            let state = svc.store.sync_state(&key, &marker).await?;
            if state.last_started.is_some_and(|t| now < t + dur(every)) {
                continue;
            }
            let payload = serde_json::to_value(crate::handlers::payload::RunPayload {
                workflow: name.clone(),
                ids: None,
                dry_run: false,
            })?;
            let job = JobEnvelope::new(JobKind::Workflow, &org, &svc.config.app.name, payload, now);
            // The lease only marks the start (the run itself may take days
            // under a tight budget, and is idempotent per run).
            if svc
                .store
                .take_sync_lease(&key, &marker, &job.id, now, now, true)
                .await?
            {
                svc.queues.send(&job, 0).await?;
                tracing::info!(workflow = %name, org, job = %job.id, "scheduled bulk execution started");
                started.push(job);
            }
        }
        // Data Source outboxes: rows waiting with no flush on its way (its
        // job dead-lettered, say) get one, without waiting for a new row.
        for name in svc.config.datasource_names() {
            let ds = svc.config.datasource(&name)?;
            crate::handlers::datasource::schedule_flush(svc, &org, &ds, false).await?;
        }
    }
    Ok(())
}

/// An ad-hoc sync request sent to the scheduler function:
/// `{"adhoc": {"org": "acme", "record_type": "invoices", "sync": "complete-transfer", "dry_run": true}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdhocRequest {
    /// The organization.
    pub org: String,
    /// The record type.
    pub record_type: String,
    /// Which sync.
    pub sync: JobKind,
    /// Only report the estimate.
    #[serde(default)]
    pub dry_run: bool,
}

/// What the scheduler function is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerEvent {
    /// The schedule's tick: start what is due.
    Tick,
    /// Run one sync now (or only estimate it).
    Adhoc(AdhocRequest),
}

/// Reads an invocation: an EventBridge schedule event (what
/// `sam local generate-event cloudwatch scheduled-event` makes) or an
/// ad-hoc request. Anything else is refused, naming what was expected.
pub fn parse_event(event: &serde_json::Value) -> Result<SchedulerEvent> {
    if let Some(adhoc) = event.get("adhoc") {
        let req: AdhocRequest = serde_json::from_value(adhoc.clone())
            .map_err(|e| crate::Error::MalformedJob(format!("adhoc request: {e}")))?;
        if !matches!(req.sync, JobKind::CompleteTransfer | JobKind::RecentRecords) {
            return Err(crate::Error::MalformedJob(format!(
                "adhoc.sync must be complete-transfer or recent-records, got {}",
                req.sync
            )));
        }
        return Ok(SchedulerEvent::Adhoc(req));
    }
    let source = event
        .get("source")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let detail = event
        .get("detail-type")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if matches!(source, "aws.events" | "aws.scheduler") || detail == "Scheduled Event" {
        return Ok(SchedulerEvent::Tick);
    }
    Err(crate::Error::MalformedJob(
        "unrecognised event: expected an EventBridge schedule event (source aws.events) or {\"adhoc\": {...}}".into(),
    ))
}

/// Handles one scheduler invocation and says what it did.
pub async fn handle(svc: &AppContext, event: &serde_json::Value) -> Result<serde_json::Value> {
    match parse_event(event)? {
        SchedulerEvent::Tick => {
            let report = tick(svc).await;
            let list: Vec<_> = report
                .started
                .iter()
                .map(|j| serde_json::json!({"org": j.org, "kind": j.kind, "payload": j.payload, "job": j.id}))
                .collect();
            let failed: Vec<_> = report
                .failed
                .iter()
                .map(|(org, error)| serde_json::json!({"org": org, "error": error}))
                .collect();
            Ok(serde_json::json!({ "started": list, "failed": failed }))
        }
        SchedulerEvent::Adhoc(req) => {
            if !svc.orgs().any(|o| o == req.org) {
                return Err(crate::Error::Config(format!(
                    "organization `{}` has no connection to app `{}`",
                    req.org, svc.config.app.name
                )));
            }
            let estimate = crate::handlers::sync::estimate::estimate(
                svc,
                &req.org,
                req.sync,
                &req.record_type,
            )
            .await?;
            let started = if req.dry_run {
                None
            } else {
                start_sync(svc, &req.org, req.sync, &req.record_type, true).await?
            };
            let note = match (&started, req.dry_run) {
                (_, true) => "dry run: nothing was started",
                (Some(_), false) => "started",
                (None, false) => "already running: nothing new was started",
            };
            Ok(serde_json::json!({
                "estimate": estimate,
                "dry_run": req.dry_run,
                "started": started.map(|j| j.id),
                "note": note,
            }))
        }
    }
}
