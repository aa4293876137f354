//! Related records: read in one batch per record type from the store, and
//! a missing one asked for by a PK lookup at most once per wait.

use super::*;

impl WorkflowHandler {
    /// Reads, in one batch per record type, the trigger records of `items`
    /// and every related record their workflows name: a slice of work costs
    /// a few store round trips, not two per record.
    pub(super) async fn load(&self, org: &str, items: &[(&Compiled, String)]) -> Result<Loaded> {
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
    pub(super) async fn fetch(
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

    /// Asks for the missing related records of a slice: per record type,
    /// one complete transfer (at most once per `min_relookup`) or PK lookup
    /// jobs carrying every missing id in full bulk blocks — not one job per
    /// waiting record per wake-up.
    pub(super) async fn request_relookups(&self, org: &str, wanted: Relookups) -> Result<()> {
        let now = self.svc.clock.now();
        for ((record_type, policy), (min, ids)) in wanted {
            match policy {
                MissingPolicy::Transfer => {
                    let min = crate::config::sync::chrono(min);
                    let sync = crate::handlers::payload::sync_name(
                        JobKind::CompleteTransfer,
                        &record_type,
                    );
                    let state = self.svc.store.sync_state(&self.svc.key(org), &sync).await?;
                    // At most one transfer per minimum relookup time.
                    let due = state.last_started.is_none_or(|t| now >= t + min);
                    if due
                        && crate::handlers::start::start_sync(
                            &self.svc,
                            org,
                            JobKind::CompleteTransfer,
                            &record_type,
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
                    let ids: Vec<String> = ids.into_iter().collect();
                    let per_job =
                        crate::handlers::sync::keys_per_call(&self.svc, org, &record_type)
                            * crate::handlers::sync::LOOKUP_CALLS_PER_JOB;
                    for block in ids.chunks(per_job.max(1)) {
                        let payload = crate::handlers::payload::PkLookupPayload {
                            record_type: record_type.clone(),
                            ids: block.to_vec(),
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
                }
                MissingPolicy::Skip => {}
            }
        }
        Ok(())
    }
}
