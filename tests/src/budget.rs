//! A budget to spend in a test, built in one line: a quota store of one
//! adapter, a manual clock, and two organizations of one app whose names
//! differ only by the org.
//!
//! Every quota-level test wants the same world (the store on SQLite or on
//! DynamoDB Local, a clock it moves by hand, org A and org B, the store's
//! requests counted at the port), and wrote it by hand before; a test now
//! says only what differs:
//!
//! ```ignore
//! let w = Budget::on(adapter).at(noon).build().await;
//! w.quota.acquire(&w.a, &limits, call).await?;
//! ```
//!
//! The orgs' names end in a suffix of the test's own, so tests that share
//! one DynamoDB Local server never spend each other's budget.

use crate::faults::{Faults, FaultyQuota};
use crate::sync_world::Adapter;
use metered::core::{ManualClock, SharedClock, Timestamp};
use metered::quota::{Quota, QuotaKey, QuotaStore};
use std::sync::Arc;

/// One budget store, one clock, two orgs of one app.
pub struct Budget {
    /// The clock every facade of this world reads; move it with `set`/`advance`.
    pub clock: ManualClock,
    /// The same clock, as the library takes it.
    pub shared: SharedClock,
    /// The store, counted at the port (`quota.acquire`, `quota.release`…).
    pub store: Arc<dyn QuotaStore>,
    /// The facade of one process over `store`.
    pub quota: Quota,
    /// Org A.
    pub a: QuotaKey,
    /// Org B: the same app, the same ids, a budget of its own.
    pub b: QuotaKey,
    /// What the store was asked, and faults to plan at its points.
    pub faults: Arc<Faults>,
    suffix: String,
}

impl Budget {
    /// A budget on `adapter`, at [`crate::afternoon`] in app `crm#1` unless
    /// the builder says otherwise.
    pub fn on(adapter: Adapter) -> BudgetBuilder {
        BudgetBuilder {
            adapter,
            at: crate::afternoon(),
            app: "crm#1".into(),
        }
    }

    /// Another process's facade over the same store (its memory of recent
    /// denials is its own).
    pub fn process(&self) -> Quota {
        Quota::new(self.store.clone(), self.shared.clone())
    }

    /// A further org of the same app (`org-{name}-…`, like A and B).
    pub fn org(&self, name: &str) -> QuotaKey {
        QuotaKey::new(format!("org-{name}-{}", self.suffix), &self.a.app)
    }
}

/// What differs from the default budget.
pub struct BudgetBuilder {
    adapter: Adapter,
    at: Timestamp,
    app: String,
}

impl BudgetBuilder {
    /// The clock starts at `at`.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }

    /// The orgs' app.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = app.into();
        self
    }

    /// A fresh store (in-memory SQLite, or a new table on DynamoDB Local).
    pub async fn build(self) -> Budget {
        let clock = ManualClock::new(self.at);
        let shared: SharedClock = Arc::new(clock.clone());
        let faults = Faults::new();
        let store: Arc<dyn QuotaStore> = Arc::new(FaultyQuota {
            inner: crate::quota_store(self.adapter).await,
            faults: faults.clone(),
        });
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Budget {
            quota: Quota::new(store.clone(), shared.clone()),
            a: QuotaKey::new(format!("org-a-{suffix}"), &self.app),
            b: QuotaKey::new(format!("org-b-{suffix}"), &self.app),
            clock,
            shared,
            store,
            faults,
            suffix,
        }
    }
}
