//! Whose budget: a tenant ([`Tenant`]: the organization and app its records
//! and ledgers belong to), or its app's own level, which is no organization.

use crate::core::tenant::Tenant;

/// Whose budget: a tenant, or its app's own level ([`QuotaKey::app_level`],
/// shared by every org of the app). The same pair as [`Tenant`]; the quota
/// names it by what it scopes. Outside the quota, name it `Tenant`.
pub type QuotaKey = Tenant;

/// The org name of an app's own level ([`QuotaKey::app_level`]): not a
/// name a connection may take.
pub(crate) const APP_LEVEL_ORG: &str = "*app*";

impl Tenant {
    /// The budget every org of this tenant's app shares (`[app.limits.app_wide]`).
    pub fn app_level(&self) -> QuotaKey {
        QuotaKey::new(APP_LEVEL_ORG, &self.app)
    }
}
