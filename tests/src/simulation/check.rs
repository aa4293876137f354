//! The invariants every seed must hold, read from the API's side (what the
//! simulated API served, created and received) and from the store, per
//! organization. Each returns the violations it found, in words.

use crate::simulation::world::{Simulation, DAILY_BUDGET, PER_MINUTE};
use crate::sync_world::ORGS;
use metered::core::content_hash;
use metered::store::HostedRows;
use metered::store::RecordStore;
use metered::store::RowChange;
use metered::Timestamp;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What a run left behind, wherever it ran (the seeded simulation, or the
/// deployed stack on ministack): the API's counters, the store, and the
/// dead letters of every queue.
pub struct Observed<'a> {
    /// The simulated API (what it served, created and received).
    pub sim: &'a metered_sim::Sim,
    /// The record store the run wrote.
    pub store: &'a dyn RecordStore,
    /// The same store, as Hosted GET reads it.
    pub hosted: &'a dyn HostedRows,
    /// The app's name (with each org, the scope of its data).
    pub app: String,
    /// Each organization and its API key at the simulator.
    pub keys: Vec<(String, String)>,
    /// Every dead letter's reason, of every queue.
    pub dead_letters: Vec<String>,
    /// Every referenced customer must have been looked up by then.
    pub lookups_due_by: Option<Timestamp>,
    /// The day's and the minute's limit per org.
    pub per_day: u32,
    /// The minute's limit, if there is one.
    pub per_minute: Option<u32>,
}

/// Hours after the last change by which every referenced customer must
/// be looked up: crashes and redeliveries delay lookups by minutes to an
/// hour or two, a dropped claim by a day.
const LOOKUP_HOURS: i64 = 6;

/// Every violation of a simulated run, empty when it held.
pub async fn violations(s: &Simulation) -> Vec<String> {
    let mut dead_letters = Vec::new();
    for (kind, q) in &s.queues {
        for d in q.dead_letters(100).await.expect("dead letters") {
            dead_letters.push(format!("{kind}: {}", d.reason));
        }
    }
    let observed = Observed {
        sim: s.sim(),
        store: s.store.as_ref(),
        hosted: s.hosted.as_ref(),
        app: s.svc.config.app.name.clone(),
        keys: ORGS
            .iter()
            .map(|org| (org.to_string(), s.api_keys[*org].clone()))
            .collect(),
        dead_letters,
        lookups_due_by: Some(s.start + s.horizon + chrono::Duration::hours(LOOKUP_HOURS)),
        per_day: DAILY_BUDGET,
        per_minute: Some(PER_MINUTE),
    };
    violations_of(&observed).await
}

/// Every violation of what `o` saw, empty when every invariant held.
pub async fn violations_of(o: &Observed<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let invoices = o.sim.records("invoices");
    let customers: BTreeMap<String, Value> = o
        .sim
        .records("customers")
        .into_iter()
        .filter_map(|c| Some((c["id"].as_str()?.to_string(), c)))
        .collect();
    let referenced: BTreeSet<String> = invoices
        .iter()
        .filter_map(|i| i["customer_id"].as_str().map(str::to_string))
        .collect();
    let vips: BTreeSet<String> = referenced
        .iter()
        .filter(|id| customers[*id]["score"].as_u64().is_some_and(|s| s < 30))
        .cloned()
        .collect();
    let paid: BTreeMap<String, u64> = invoices
        .iter()
        .filter(|i| i["status"] == "paid")
        .filter_map(|i| Some((i["id"].as_str()?.to_string(), i["version"].as_u64()?)))
        .collect();
    let stats = o.sim.stats();
    for (org, key) in &o.keys {
        let scope = metered::QuotaKey::new(org, &o.app);
        // Records: every invoice at the API's latest version; every
        // referenced customer seen.
        let ids: Vec<String> = invoices
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_string))
            .collect();
        let stored: BTreeMap<String, String> = o
            .store
            .get(&scope, "invoices", &ids)
            .await
            .expect("read invoices")
            .into_iter()
            .filter(|r| r.seen())
            .map(|r| (r.id, r.hash))
            .collect();
        for inv in &invoices {
            let id = inv["id"].as_str().unwrap_or_default();
            match stored.get(id) {
                None => out.push(format!("{org}: invoice {id} was never stored")),
                Some(h) if *h != content_hash(inv) => out.push(format!(
                    "{org}: invoice {id} is stored at an older version than the API's (version {})",
                    inv["version"]
                )),
                Some(_) => {}
            }
        }
        // In time, too: a lookup claimed and then dropped comes back only
        // when the claim lapses a day later; nothing in the scenario waits
        // that long for a reason (its budget is never spent).
        let refs: Vec<String> = referenced.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        for r in o
            .store
            .get(&scope, "customers", &refs)
            .await
            .expect("read customers")
        {
            if !r.seen() {
                continue;
            }
            let late = matches!((r.last_synced, o.lookups_due_by), (Some(t), Some(by)) if t > by);
            if late {
                out.push(format!(
                    "{org}: referenced customer {} was looked up only at {:?}, more than {LOOKUP_HOURS} h after the last change (a claimed lookup was dropped)",
                    r.id, r.last_synced
                ));
            }
            seen.insert(r.id);
        }
        for id in referenced.difference(&seen) {
            out.push(format!(
                "{org}: referenced customer {id} was never looked up"
            ));
        }
        // Actions: what the API created with this org's key.
        let mut welcome: BTreeMap<String, usize> = BTreeMap::new();
        let mut thanks: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for note in stats.created_by_key.get(key).into_iter().flatten() {
            match (note["invoice"].as_str(), note["customer"].as_str()) {
                (Some(invoice), _) => {
                    let version = note["version"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .or_else(|| note["version"].as_u64())
                        .unwrap_or(0);
                    *thanks.entry((invoice.to_string(), version)).or_default() += 1;
                }
                (None, Some(customer)) => *welcome.entry(customer.to_string()).or_default() += 1,
                _ => out.push(format!("{org}: an unexpected note {note}")),
            }
        }
        for vip in &vips {
            match welcome.get(vip).copied().unwrap_or(0) {
                1 => {}
                0 => out.push(format!(
                    "{org}: VIP customer {vip} was never welcomed (action lost)"
                )),
                n => out.push(format!("{org}: VIP customer {vip} was welcomed {n} times")),
            }
        }
        for c in welcome.keys().filter(|c| !vips.contains(*c)) {
            out.push(format!("{org}: customer {c} was welcomed but is no VIP"));
        }
        for ((invoice, version), n) in &thanks {
            if *n > 1 {
                out.push(format!(
                    "{org}: invoice {invoice} version {version} was thanked {n} times"
                ));
            }
        }
        for (invoice, version) in &paid {
            if !thanks.contains_key(&(invoice.clone(), *version)) {
                out.push(format!(
                    "{org}: paid invoice {invoice} at its latest version {version} was never thanked (action lost)"
                ));
            }
        }
        // Rows: the pushed Data Source holds every VIP; the hosted one
        // every paid invoice at its latest version.
        let pushed: BTreeSet<String> = o
            .sim
            .datasource_rows_of(key, "vips")
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        if pushed != vips {
            out.push(format!("{org}: pushed VIP rows {pushed:?}, due {vips:?}"));
        }
        let hosted = o
            .hosted
            .rows_after(&scope, "customer_invoices", None, 100_000)
            .await
            .expect("read hosted rows");
        let hosted: BTreeMap<String, Value> = hosted
            .into_iter()
            .filter_map(|r| match r.change {
                RowChange::Insert(v) => Some((r.id, v)),
                RowChange::Delete => None,
            })
            .collect();
        for (invoice, version) in &paid {
            let got = hosted.get(invoice).map(|r| r["version"].to_string());
            if got.as_deref() != Some(&format!("\"{version}\"")) && got != Some(version.to_string())
            {
                out.push(format!(
                    "{org}: hosted row of paid invoice {invoice} is {got:?}, due version {version}"
                ));
            }
        }
        // Windows: the day and the minute, as the API counted them.
        for ((k, day), n) in &stats.calls_by_key_day {
            if k == key && *n > u64::from(o.per_day) {
                out.push(format!(
                    "{org}: {n} calls on {day}, over the {} a day",
                    o.per_day
                ));
            }
        }
        if let Some(per_minute) = o.per_minute {
            for ((k, minute), n) in &stats.calls_by_key_minute {
                if k == key && *n > u64::from(per_minute) {
                    out.push(format!(
                        "{org}: {n} calls in the minute {minute}, over the {per_minute} a minute"
                    ));
                }
            }
        }
    }
    // Jobs: all done; nothing waits, nothing is dead.
    for d in &o.dead_letters {
        out.push(format!("dead-lettered: {d}"));
    }
    out
}
