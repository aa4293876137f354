//! What an ad-hoc sync will cost before it runs: calls for the sync itself
//! and for the primary key lookups it is likely to trigger, from what the
//! store already knows.

use crate::core::error::Result;
use crate::handlers::context::AppContext;
use crate::handlers::payload::sync_name;
use crate::jobs::envelope::JobKind;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What an ad-hoc sync would spend, reported before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CostEstimate {
    /// The sync, e.g. `complete-transfer:invoices`.
    pub sync: String,
    /// Records the store knows of the type (the dataset size guess).
    pub known_records: u64,
    /// The page size it would ask for.
    pub page_size: u32,
    /// List calls of the sync itself.
    pub sync_calls: u64,
    /// Lookup calls per referenced type, for keys not seen yet.
    pub pk_lookup_calls: BTreeMap<String, u64>,
    /// All calls together.
    pub total_calls: u64,
    /// How the figures were reached, for people.
    pub basis: String,
}

/// Estimates a complete transfer or recent lookup of `record_type` for `org`.
pub async fn estimate(
    svc: &AppContext,
    org: &str,
    kind: JobKind,
    record_type: &str,
) -> Result<CostEstimate> {
    let rt = svc.config.record_type(record_type)?;
    let key = svc.key(org);
    let sync = sync_name(kind, record_type);
    let state = svc.store.sync_state(&key, &sync).await?;
    let known = svc.store.count(&key, record_type).await?;
    let page = u64::from(rt.effective_page_size());
    let (sync_calls, basis) = match (kind, state.last_pages) {
        (_, Some(p)) => (p.max(1), format!("the last run took {p} pages")),
        (JobKind::CompleteTransfer, None) if known > 0 => (
            known.div_ceil(page).max(1),
            format!("{known} known records at {page} per page"),
        ),
        _ => (1, "no history: at least one page".to_string()),
    };
    // Keys referenced by the stored records of this type, not yet seen.
    let mut pk_lookup_calls = BTreeMap::new();
    for (pointer, target) in &rt.foreign_keys {
        let settings = svc.config.sync(target).pk_lookup;
        if !settings.active() {
            continue;
        }
        let mut referenced = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let batch = svc
                .store
                .list(&key, record_type, after.as_deref(), 500)
                .await?;
            for r in &batch {
                if let Some(id) = r
                    .data
                    .as_ref()
                    .and_then(|d| crate::handlers::sync::id_at(d, pointer))
                {
                    referenced.insert(id);
                }
            }
            match batch.last() {
                Some(last) if batch.len() == 500 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        let ids: Vec<String> = referenced.into_iter().collect();
        let seen: BTreeSet<String> = svc
            .store
            .get(&key, target, &ids)
            .await?
            .into_iter()
            .filter(|r| r.seen())
            .map(|r| r.id)
            .collect();
        let unseen = ids.iter().filter(|id| !seen.contains(*id)).count() as u64;
        let connector_max = svc
            .connectors
            .get(org)
            .map_or(1, |c| c.max_ids_per_call(target))
            .max(1) as u64;
        let per_call = settings
            .max_keys_per_call
            .map_or(connector_max, |k| u64::from(k).min(connector_max))
            .max(1);
        *pk_lookup_calls.entry(target.clone()).or_insert(0) += unseen.div_ceil(per_call);
    }
    let total_calls = sync_calls + pk_lookup_calls.values().sum::<u64>();
    Ok(CostEstimate {
        sync,
        known_records: known,
        page_size: page as u32,
        sync_calls,
        pk_lookup_calls,
        total_calls,
        basis,
    })
}
