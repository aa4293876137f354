//! Actions out: HTTP action jobs, one per passing record and action, and
//! Data Source rows written to their outbox (flushed on an interval by
//! `handlers::datasource`).

use super::*;

/// Where a passing record's actions come from.
pub(super) struct Origin<'a> {
    /// The record, as stored.
    pub(super) record: &'a StoredRecord,
    /// The trigger's part of each action's idempotency key.
    pub(super) trigger_key: &'a str,
    /// A bulk execution's: its actions are background work.
    pub(super) background: bool,
}

impl WorkflowHandler {
    pub(super) async fn enqueue_actions(
        &self,
        job: &JobEnvelope,
        wf: &Compiled,
        origin: Origin<'_>,
        actions: Vec<(usize, Act)>,
        cp: &mut Checkpoint,
    ) -> Result<()> {
        let Origin {
            record,
            trigger_key,
            background,
        } = origin;
        let now = self.svc.clock.now();
        // Orders this record's rows against rows of its other versions.
        let source_at = self
            .svc
            .config
            .record_type(&wf.config.trigger.record_type)
            .ok()
            .zip(record.data.as_ref())
            .and_then(|(rt, data)| rt.updated_at_of(data));
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
                        background,
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
                        &job.tenant(),
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
                Act::Insert(row) => self.outbox_row(
                    wf,
                    i,
                    cp,
                    RowWrite::new(
                        crate::store::outbox::row_id(&row, &record.id),
                        RowChange::Insert(row),
                    )
                    .from_source_at(source_at),
                ),
                Act::Delete(id) => self.outbox_row(
                    wf,
                    i,
                    cp,
                    RowWrite::new(id, RowChange::Delete).from_source_at(source_at),
                ),
            }
        }
        Ok(())
    }

    fn outbox_row(&self, wf: &Compiled, action: usize, cp: &mut Checkpoint, row: RowWrite) {
        if let Some(ActionConfig::DatasourcePush { datasource, .. }) = wf.config.actions.get(action)
        {
            cp.outbox.entry(datasource.clone()).or_default().push(row);
        }
    }

    /// Writes the slice's rows to their outboxes (one write per Data
    /// Source) and schedules their flushes. Called before the checkpoint
    /// moves on: a crash repeats the slice, and a repeated row is the same
    /// row (last write wins).
    pub(super) async fn write_outbox(&self, job: &JobEnvelope, cp: &mut Checkpoint) -> Result<()> {
        let key = self.svc.key(&job.org);
        for (datasource, rows) in std::mem::take(&mut cp.outbox) {
            let ds = self.svc.config.datasource(&datasource)?;
            self.svc
                .store
                .put_rows_indexed(
                    &key,
                    &datasource,
                    &rows,
                    ds.row_index().as_ref(),
                    self.svc.clock.now(),
                )
                .await?;
            crate::handlers::datasource::schedule_flush(&self.svc, &job.org, &ds, true).await?;
        }
        Ok(())
    }

    /// Sends rows a checkpoint written before the outbox existed still
    /// gathers, as the one-job pushes of that version, so none is lost.
    pub(super) async fn flush_legacy_pending(
        &self,
        job: &JobEnvelope,
        cp: &mut Checkpoint,
    ) -> Result<()> {
        let now = self.svc.clock.now();
        for (key, pending) in cp.pending.iter_mut() {
            let Some((wf_name, idx)) = key.rsplit_once(':') else {
                continue;
            };
            let idx: usize = idx.parse().unwrap_or(0);
            let wf = self.workflow(wf_name)?;
            let Some(ActionConfig::DatasourcePush { datasource, .. }) = wf.config.actions.get(idx)
            else {
                continue;
            };
            let max = self.svc.config.datasource(datasource)?.max_rows_per_call as usize;
            while pending.inserts.len() + pending.deletes.len() > 0 {
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
                    &job.tenant(),
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
