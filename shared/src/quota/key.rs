//! Whose budget: the (organization, app) a budget, its records and its
//! ledgers belong to; and the app's own level, which is no organization.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whose budget: an organization's connection to one third-party app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuotaKey {
    /// The organization.
    pub org: String,
    /// The third-party app.
    pub app: String,
}

/// The org name of an app's own level ([`QuotaKey::app_level`]): not a
/// name a connection may take.
pub(crate) const APP_LEVEL_ORG: &str = "*app*";

impl QuotaKey {
    /// The budget every org of this key's app shares (`[app.limits.app_wide]`).
    pub fn app_level(&self) -> QuotaKey {
        QuotaKey::new(APP_LEVEL_ORG, &self.app)
    }

    /// The budget of `org` on `app`.
    pub fn new(org: impl Into<String>, app: impl Into<String>) -> Self {
        Self {
            org: org.into(),
            app: app.into(),
        }
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.app)
    }
}
