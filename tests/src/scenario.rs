//! The end-to-end scenario the fault matrix and the tenant tests run: two
//! organizations whose record ids coincide, every job kind, and an account
//! of what the API side saw per org.
//!
//! - `invoices`: complete transfer in pages of 20; their customers are
//!   looked up by key (`unseen_only`, bulk, no storm guard), so PK lookup
//!   jobs run with claims.
//! - workflow `vip` on customers created: a note (`POST /notes`, an HTTP
//!   action with `Idempotency-Key`) and a Data Source row for each customer
//!   with `score < 30`.
//! - workflow `paid` on invoices created: waits for the related customer
//!   (looked up by key), then pushes a row per paid invoice, 5 rows a push;
//!   waiting makes it restart with rows already pushed (the chunk-counter
//!   case).
//! - every API call takes 10 s of the clock and invocations end after 60 s:
//!   transfers restart at their deadline, mid-run.
//!
//! [`account`] compares what the API served and stored per org with what
//! is due: records, actions performed once / twice / never, rows, calls
//! against the budget.

use crate::sync_world::{Adapter, World, ORGS};
use metered::config::{
    CompleteTransferSettings, LookupPolicy, PkLookupSettings, StormGuard, SyncConfig,
};
use metered::AppConfig;
use metered::JobKind;
use metered::Limits;
use std::collections::{BTreeMap, BTreeSet};

/// Calls per UTC day of each org in the scenario.
pub const DAILY_BUDGET: u32 = 400;

const WORKFLOWS: &str = r#"
[workflows.vip]
trigger = { record_type = "customers", on = ["created"] }
conditions = ["record.score < 30"]
[[workflows.vip.actions]]
kind = "http"
method = "POST"
path = "/notes"
body = { customer = "{{ record.id }}", text = "Welcome {{ record.name }}" }
[[workflows.vip.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}", score = "{{ record.score }}" }
max_rows_per_call = 7

[workflows.paid]
trigger = { record_type = "invoices", on = ["created"] }
conditions = ["record.status == 'paid'"]
related.customer = { via = "/customer_id", record_type = "customers", missing = "pk_lookup", min_relookup = "1h" }
[[workflows.paid.actions]]
kind = "datasource_push"
datasource = "paid_invoices"
row = { id = "{{ record.id }}", customer = "{{ related.customer.name }}" }
max_rows_per_call = 5
"#;

/// The scenario's simulated app: 40 customers, 120 invoices.
pub fn sim() -> metered_sim::SimConfig {
    metered_sim::SimConfig {
        customers: 40,
        invoices: 120,
        daily_budget: u64::from(DAILY_BUDGET),
        ..Default::default()
    }
}

/// The scenario's app config.
pub fn configure(c: &mut AppConfig) {
    if let Some(rt) = c.record_types.get_mut("invoices") {
        rt.max_page_size = 20;
    }
    c.syncs.insert(
        "invoices".into(),
        SyncConfig {
            complete_transfer: Some(CompleteTransferSettings {
                every: std::time::Duration::from_secs(86_400),
            }),
            ..Default::default()
        },
    );
    c.syncs.insert(
        "customers".into(),
        SyncConfig {
            pk_lookup: PkLookupSettings {
                enabled: true,
                policy: LookupPolicy::UnseenOnly,
                max_keys_per_call: Some(10),
                storm_guard: StormGuard::Off,
                min_relookup: std::time::Duration::from_secs(3_600),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    crate::add_workflows(c, WORKFLOWS);
    for conn in &mut c.connections {
        conn.limits = Some(Limits::new(Some(DAILY_BUDGET), None, None, 3).unwrap());
    }
}

/// A world running the scenario (nothing started yet).
pub async fn world(adapter: Adapter) -> World {
    world_with(adapter, |_| {}).await
}

/// Like [`world`], on a DynamoDB client of one's own (AWS adapter set).
pub async fn world_on(adapter: Adapter, dynamodb: Option<aws_sdk_dynamodb::Client>) -> World {
    build(adapter, dynamodb, |_| {}).await
}

/// Like [`world`], with the config edited after the scenario's (e.g. a
/// workflow removed).
pub async fn world_with(adapter: Adapter, edit: impl FnOnce(&mut AppConfig)) -> World {
    build(adapter, None, edit).await
}

async fn build(
    adapter: Adapter,
    dynamodb: Option<aws_sdk_dynamodb::Client>,
    edit: impl FnOnce(&mut AppConfig),
) -> World {
    // Every call takes 10 s and invocations end after 60 s, so a transfer
    // restarts at its deadline with lookups still pending in its checkpoint;
    // workflows run first in each round of the driver, so the `paid`
    // workflow meets customers not looked up yet and waits for them.
    World::builder(adapter)
        .sim(sim())
        .dynamodb(dynamodb)
        .config(|c| {
            configure(c);
            edit(c);
        })
        .workflows()
        .first(JobKind::Workflow)
        .call_time(10, 60)
        .build()
        .await
}

/// Starts both orgs' invoice transfers.
/// Hostile data for the scenario: an invoice without an id, one over the
/// store's 400 KB item limit, and a VIP customer without the `name` the
/// `vip` workflow's HTTP body needs. Each must be quarantined (per org) and
/// everything else synced and acted on.
pub fn add_bad_records(w: &World) {
    let sim = w.sim();
    let mut template = sim.records("invoices")[0].clone();
    template["status"] = serde_json::json!("open");
    let mut no_id = template.clone();
    no_id.as_object_mut().map(|o| o.remove("id"));
    sim.insert_raw("invoices", no_id);
    let mut huge = template;
    huge["id"] = serde_json::json!("inv_huge");
    huge["notes"] = serde_json::json!("n".repeat(410 * 1024));
    sim.insert_raw("invoices", huge);
    sim.remove_field("customers", &referenced_vips(w)[0], "name");
}

/// The VIP customers (score under 30) some invoice refers to, in id order:
/// the ones the `vip` workflow acts on.
pub fn referenced_vips(w: &World) -> Vec<String> {
    let invoices = w.sim().records("invoices");
    w.sim()
        .records("customers")
        .iter()
        .filter(|c| c["score"].as_u64().is_some_and(|s| s < 30))
        .filter_map(|c| c["id"].as_str())
        .filter(|id| invoices.iter().any(|i| i["customer_id"] == *id))
        .map(str::to_string)
        .collect()
}

/// A name that, unencoded in a path, would leave the configured endpoint.
pub const HOSTILE_NAME: &str = "../../admin/x?force=1#";

/// The `vip` note goes to `/notes/{{ record.name }}` (the sim keeps the
/// segment as the note's `parent`), and one VIP's name is
/// [`HOSTILE_NAME`].
pub fn note_path_from_name(c: &mut AppConfig) {
    if let Some(wf) = c.workflows.get_mut("vip") {
        for a in &mut wf.actions {
            if let metered::config::ActionConfig::Http { path, .. } = a {
                *path = "/notes/{{ record.name }}".into();
            }
        }
    }
}

pub async fn start(w: &World) {
    for org in ORGS {
        w.start_for(org, JobKind::CompleteTransfer, "invoices")
            .await;
    }
}

/// What one org got, against what was due.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub org: String,
    pub records_due: usize,
    pub records_stored: usize,
    pub actions_due: usize,
    pub performed_once: usize,
    pub performed_twice: usize,
    pub rows_due: usize,
    pub rows_pushed: usize,
    /// Rows the API refuses for good, and how many of them `metered
    /// outbox` lists as set aside.
    pub rows_refused_due: usize,
    pub rows_set_aside: usize,
    /// Most calls served in one UTC day, and the budget.
    pub max_calls_a_day: u64,
    pub budget: u32,
    /// Records that cannot be stored or acted on, and how many of them the
    /// quarantine listing of the org shows.
    pub quarantine_due: usize,
    pub quarantined: usize,
}

impl Account {
    pub fn lost(&self) -> usize {
        (self.records_due - self.records_stored.min(self.records_due))
            + (self.actions_due - self.performed_once.min(self.actions_due))
            + (self.rows_due - self.rows_pushed.min(self.rows_due))
            + (self.quarantine_due - self.quarantined.min(self.quarantine_due))
            + (self.rows_refused_due - self.rows_set_aside.min(self.rows_refused_due))
    }
    pub fn doubled(&self) -> usize {
        self.performed_twice
    }
    pub fn over_budget(&self) -> u64 {
        self.max_calls_a_day.saturating_sub(u64::from(self.budget))
    }
}

/// What each org got, read from the simulator (what the API saw and keeps)
/// and the store (what metered recorded).
pub async fn account(w: &World) -> Vec<Account> {
    let all_invoices = w.sim().records("invoices");
    // What the store can keep; the rest is due in the quarantine.
    let storable = |r: &serde_json::Value| {
        r["id"].as_str().is_some() && r.to_string().len() <= metered::store::MAX_RECORD_BYTES
    };
    let invoices: Vec<serde_json::Value> = all_invoices
        .iter()
        .filter(|r| storable(r))
        .cloned()
        .collect();
    let bad_invoices = all_invoices.len() - invoices.len();
    let customers: BTreeMap<String, serde_json::Value> = w
        .sim()
        .records("customers")
        .into_iter()
        .filter_map(|c| Some((c["id"].as_str()?.to_string(), c)))
        .collect();
    let referenced: BTreeSet<String> = invoices
        .iter()
        .filter_map(|i| i["customer_id"].as_str().map(str::to_string))
        .collect();
    let all_vips: BTreeSet<String> = referenced
        .iter()
        .filter(|id| customers[*id]["score"].as_u64().is_some_and(|s| s < 30))
        .cloned()
        .collect();
    // A score that is no number cannot be judged by the `vip` condition:
    // that customer is quarantined, not acted on.
    let unjudged = referenced
        .iter()
        .filter(|id| !customers[*id]["score"].is_number())
        .count();
    // A VIP without a name cannot fill the note's body: quarantined.
    let vips: BTreeSet<String> = all_vips
        .iter()
        .filter(|id| customers[*id].get("name").is_some())
        .cloned()
        .collect();
    let quarantine_due = bad_invoices + (all_vips.len() - vips.len()) + unjudged;
    // Rows the API refuses for good are set aside (`metered outbox`), not
    // pushed.
    let refused = w.sim().faults().refuse_row_ids.clone();
    let paid_on = w.svc.config.workflows.contains_key("paid");
    let named = |i: &serde_json::Value| {
        i["customer_id"]
            .as_str()
            .and_then(|c| customers.get(c))
            .is_some_and(|c| c.get("name").is_some())
    };
    let paid: BTreeSet<String> = invoices
        .iter()
        .filter(|i| paid_on && i["status"] == "paid" && named(i))
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    // A paid invoice whose customer has no name cannot fill its row.
    let quarantine_due = quarantine_due
        + invoices
            .iter()
            .filter(|i| paid_on && i["status"] == "paid" && !named(i))
            .count();
    let stats = w.sim().stats();
    let mut out = Vec::new();
    for org in ORGS {
        let key = &w.api_keys[org];
        let scope = w.svc.key(org);
        let stored_invoices = w.store.count(&scope, "invoices").await.unwrap() as usize;
        let stored_customers = w
            .seen(
                org,
                "customers",
                &referenced.iter().cloned().collect::<Vec<_>>(),
            )
            .await;
        let mut notes: BTreeMap<String, usize> = BTreeMap::new();
        for created in stats.created_by_key.get(key).into_iter().flatten() {
            if let Some(c) = created["customer"].as_str() {
                *notes.entry(c.to_string()).or_default() += 1;
            }
        }
        let pushed_vips: BTreeSet<String> = w
            .sim()
            .datasource_rows_of(key, "vips")
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let pushed_paid: BTreeSet<String> = w
            .sim()
            .datasource_rows_of(key, "paid_invoices")
            .iter()
            .filter(|r| r["customer"].as_str().is_some_and(|c| !c.is_empty()))
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let mut rows_set_aside = 0;
        for ds in ["vips", "paid_invoices"] {
            rows_set_aside += w
                .store
                .refused_rows(&scope, ds, 1_000)
                .await
                .unwrap()
                .iter()
                .filter(|r| refused.contains(&r.id))
                .count();
        }
        let due_rows =
            |ids: &BTreeSet<String>| ids.iter().filter(|id| !refused.contains(*id)).count();
        out.push(Account {
            org: org.to_string(),
            records_due: invoices.len() + referenced.len(),
            records_stored: stored_invoices + stored_customers,
            actions_due: vips.len(),
            performed_once: vips.iter().filter(|c| notes.get(*c) == Some(&1)).count(),
            performed_twice: notes.values().filter(|n| **n > 1).count(),
            rows_due: due_rows(&vips) + due_rows(&paid),
            rows_refused_due: vips.len() + paid.len() - due_rows(&vips) - due_rows(&paid),
            rows_set_aside,
            rows_pushed: pushed_vips.intersection(&vips).count()
                + pushed_paid.intersection(&paid).count(),
            max_calls_a_day: stats
                .calls_by_key_day
                .iter()
                .filter(|((k, _), _)| k == key)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0),
            budget: DAILY_BUDGET,
            quarantine_due,
            quarantined: w.store.quarantined(&scope, 1_000).await.unwrap().len(),
        });
    }
    out
}
