//! Everything a handler needs, built once per process (Lambda cold start or
//! the local runner) and shared by every invocation.

use crate::config::app::AppConfig;
use crate::config::sync::ConnectionConfig;
use crate::connector::http::{http_client, HttpConnector};
use crate::connector::secrets::{resolve, Secret, SecretStores};
use crate::connector::{Connector, Metered};
use crate::core::clock::SharedClock;
use crate::core::error::{Error, Result};
use crate::core::tenant::Tenant;
use crate::jobs::queue::Queues;
use crate::quota::{Limits, Quota};
use crate::store::RecordStore;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything a handler needs, built once per process.
pub struct AppContext {
    /// The app's configuration.
    pub config: Arc<AppConfig>,
    /// Synced records, sync state, claims.
    pub store: Arc<dyn RecordStore>,
    /// The budget.
    pub quota: Quota,
    /// Where follow-up jobs go.
    pub queues: Queues,
    /// The time.
    pub clock: SharedClock,
    /// What handlers count (records synced, actions performed); the
    /// quota's own counters, so one drain sees everything.
    pub metrics: crate::core::metrics::Metrics,
    /// One connector per organization (each with its own credential).
    pub connectors: BTreeMap<String, Arc<dyn Connector>>,
    /// How long a sync's lease lasts without renewal.
    pub sync_lease: chrono::Duration,
    /// Stop and restart when less than this remains before the deadline.
    pub deadline_margin: std::time::Duration,
}

impl std::fmt::Debug for AppContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppContext")
            .field("app", &self.config.app.name)
            .field("queues", &self.queues)
            .finish()
    }
}

impl AppContext {
    /// A context over these parts.
    pub fn new(
        config: Arc<AppConfig>,
        store: Arc<dyn RecordStore>,
        quota: Quota,
        queues: Queues,
        connectors: BTreeMap<String, Arc<dyn Connector>>,
    ) -> Self {
        let clock = quota.clock().clone();
        let metrics = quota.metrics().clone();
        Self {
            metrics,
            config,
            store,
            quota,
            queues,
            clock,
            connectors,
            sync_lease: crate::jobs::envelope::sync_lease(),
            deadline_margin: std::time::Duration::from_secs(10),
        }
    }

    /// An org's connection to this app: the scope of its records, ledgers
    /// and budget.
    pub fn key(&self, org: &str) -> Tenant {
        Tenant::new(org, &self.config.app.name)
    }

    /// The org's limits: its connection's override, else the app's.
    pub fn limits(&self, org: &str) -> Limits {
        self.config.limits_for(org)
    }

    /// A connector for `org` whose calls spend its budget as `source`.
    pub fn metered(&self, org: &str, source: &str) -> Result<Metered> {
        let connector = self.connectors.get(org).ok_or_else(|| {
            Error::Config(format!(
                "organization `{org}` has no connection to app `{}`",
                self.config.app.name
            ))
        })?;
        Ok(Metered::new(
            connector.clone(),
            self.quota.clone(),
            self.key(org),
            self.limits(org),
            source,
        )
        .with_api_window(self.config.app.rate_limit.remaining_window)
        .with_pause_policy(crate::quota::PausePolicy {
            after_failures: self.config.app.pause_after_auth_failures,
        }))
    }

    /// The organizations connected.
    pub fn orgs(&self) -> impl Iterator<Item = &str> {
        self.config.connections.iter().map(|c| c.org.as_str())
    }
}

/// Builds one HTTP connector per connection, resolving each credential once
/// (from the environment, Secrets Manager or SSM).
pub async fn http_connectors(
    config: &Arc<AppConfig>,
    stores: Option<&SecretStores>,
    clock: SharedClock,
) -> Result<BTreeMap<String, Arc<dyn Connector>>> {
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    for c in &config.connections {
        let reference = c
            .secret
            .as_ref()
            .or(config.app.auth.as_ref().map(|a| &a.secret));
        if let Some(r) = reference {
            let secret = resolve(r, stores)
                .await
                .map_err(|e| Error::Config(format!("connection `{}`: {e}", c.org)))?;
            secrets.insert(c.org.clone(), secret);
        }
    }
    http_connectors_with(config, clock, |c| secrets.remove(&c.org))
}

/// Builds one HTTP connector per connection (one HTTP client shared by all),
/// each with the credential `secret_for` gives its organization: the one
/// place a connector is made per org, whether the secret comes from AWS
/// ([`http_connectors`]) or from a local simulator.
pub fn http_connectors_with(
    config: &Arc<AppConfig>,
    clock: SharedClock,
    mut secret_for: impl FnMut(&ConnectionConfig) -> Option<Secret>,
) -> Result<BTreeMap<String, Arc<dyn Connector>>> {
    let client = http_client(&config.app.timeouts)?;
    let mut out: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    for c in &config.connections {
        let connector =
            HttpConnector::new(config.clone(), client.clone(), secret_for(c), clock.clone())?;
        out.insert(c.org.clone(), Arc::new(connector));
    }
    Ok(out)
}
