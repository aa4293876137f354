//! Actions out: HTTP action jobs, one per passing record and action, and
//! Data Source rows gathered and pushed in full calls.

use super::*;

impl WorkflowHandler {
    pub(super) async fn enqueue_actions(
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
    pub(super) async fn flush_pushes(
        &self,
        job: &JobEnvelope,
        cp: &mut Checkpoint,
        last: bool,
    ) -> Result<()> {
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
}
