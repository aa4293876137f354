//! What a manual or bulk run would spend, read from the store with no API
//! call (`metered workflow --dry-run`).

use super::*;

/// What a run would spend, computed from the store with no API call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkflowEstimate {
    /// The workflow.
    pub workflow: String,
    /// Records it would read.
    pub records: u64,
    /// Of those, passing every condition.
    pub passing: u64,
    /// Waiting for a related record.
    pub waiting_for_related: u64,
    /// Records an action template cannot be filled from (they would be
    /// quarantined).
    #[serde(default)]
    pub quarantined: u64,
    /// HTTP action calls.
    pub http_actions: u64,
    /// Data Source rows.
    pub datasource_rows: u64,
    /// Push calls for those rows.
    pub datasource_calls: u64,
    /// All calls together.
    pub total_calls: u64,
}

impl WorkflowHandler {
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
                match self.plan(wf, r, Cause::Manual, None, &loaded).await? {
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
            if let Some(ActionConfig::DatasourcePush { datasource, .. }) = wf.config.actions.get(i)
            {
                let max = self.svc.config.datasource(datasource)?.max_rows_per_call;
                est.datasource_rows += n;
                est.datasource_calls += n.div_ceil(u64::from(max));
            }
        }
        est.total_calls = est.http_actions + est.datasource_calls;
        Ok(est)
    }
}
