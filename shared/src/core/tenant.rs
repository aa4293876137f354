//! Whose data: the (organization, app) that records, ledgers, lookup claims,
//! Data Source rows and budgets belong to. Every port is scoped by it, so it
//! lives at the bottom: the store and the job ledger name a tenant without
//! importing the quota (which adds one scope of its own, the app's level;
//! see `quota::QuotaKey`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// An organization's connection to one third-party app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tenant {
    /// The organization.
    pub org: String,
    /// The third-party app.
    pub app: String,
}

impl Tenant {
    /// `org`'s connection to `app`.
    pub fn new(org: impl Into<String>, app: impl Into<String>) -> Self {
        Self {
            org: org.into(),
            app: app.into(),
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reads_org_slash_app_and_round_trips_as_json() {
        let t = Tenant::new("acme", "crm");
        assert_eq!(t.to_string(), "acme/crm");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"org":"acme","app":"crm"}"#);
        assert_eq!(serde_json::from_str::<Tenant>(&json).unwrap(), t);
    }
}
