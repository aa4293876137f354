//! Sync controls from the seeds, as config: which syncs run, how often,
//! with how much overlap, and the primary-key lookup policy per record type.
//!
//! ```toml
//! [[connections]]
//! org = "acme"                              # one per organization connection
//! secret = { env = "ACME_API_KEY" }         # overrides app.auth.secret
//!
//! [syncs.invoices]
//! complete_transfer = { every = "24h" }
//! recent = { every = "15m", overlap = "45m" }
//!
//! [syncs.customers.pk_lookup]
//! enabled = true
//! policy = "unseen_only"                    # or "seen_and_unseen", "never"
//! min_relookup = "24h"
//! max_keys_per_call = 50
//! ```

use crate::config::secret::SecretRef;
use crate::quota::Limits;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One organization's connection to the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// The organization, as its quota key and job envelopes name it.
    pub org: String,
    /// This org's credential; defaults to `app.auth.secret`.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// This org's limits; default `app.limits`.
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// The syncs of one record type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Complete transfers of the type, if scheduled.
    #[serde(default)]
    pub complete_transfer: Option<CompleteTransferSettings>,
    /// Recent record lookups of the type, if scheduled.
    #[serde(default)]
    pub recent: Option<RecentSettings>,
    /// Primary key lookups of records the type references.
    #[serde(default)]
    pub pk_lookup: PkLookupSettings,
}

/// When and how a complete transfer of a record type runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteTransferSettings {
    /// Default once every 24 hours (seed: "Complete transfer frequency").
    #[serde(default = "day", with = "humantime_serde")]
    pub every: Duration,
}

/// When and how a recent record lookup runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentSettings {
    /// Poll interval (seed example: 15 minutes).
    #[serde(default = "quarter_hour", with = "humantime_serde")]
    pub every: Duration,
    /// How far before the high-water mark each window starts (seed: 45 min).
    #[serde(default = "three_quarters", with = "humantime_serde")]
    pub overlap: Duration,
}

/// The seeds' PK lookup policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupPolicy {
    /// Fetch only records never seen (the seeds' suggestion).
    #[default]
    UnseenOnly,
    /// Also refetch seen records, at most once per `min_relookup`.
    SeenAndUnseen,
    /// Never look keys up (rely on transfers).
    Never,
}

/// What happens when lookups are turned on for a type that was never
/// transferred (the seeds' "huge spike").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StormGuard {
    /// Run the type's complete transfer first and hold lookups until it
    /// finished; afterwards only the still-unseen keys are looked up.
    #[default]
    TransferFirst,
    /// Look up right away (bulk lookups still apply).
    Off,
}

/// The seeds' primary key lookup controls for one record type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkLookupSettings {
    /// The primary key lookup toggle of the account; off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Whether this type's lookup sync may serve foreign-key lookups.
    #[serde(default = "yes")]
    pub usable_for_fk_lookups: bool,
    /// Which keys are looked up.
    #[serde(default)]
    pub policy: LookupPolicy,
    /// Minimum time between two lookups of the same record.
    #[serde(default = "day", with = "humantime_serde")]
    pub min_relookup: Duration,
    /// Ids per bulk lookup call; defaults to the connector's maximum.
    #[serde(default)]
    pub max_keys_per_call: Option<u32>,
    /// What lookups do while the type was never transferred.
    #[serde(default)]
    pub storm_guard: StormGuard,
}

impl Default for PkLookupSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            usable_for_fk_lookups: true,
            policy: LookupPolicy::default(),
            min_relookup: day(),
            max_keys_per_call: None,
            storm_guard: StormGuard::default(),
        }
    }
}

impl PkLookupSettings {
    /// Whether foreign keys pointing at this type are looked up at all.
    pub fn active(&self) -> bool {
        self.enabled && self.usable_for_fk_lookups && self.policy != LookupPolicy::Never
    }
}

fn yes() -> bool {
    true
}
fn day() -> Duration {
    Duration::from_secs(86_400)
}
fn quarter_hour() -> Duration {
    Duration::from_secs(900)
}
fn three_quarters() -> Duration {
    Duration::from_secs(2_700)
}

/// Converts a config duration for time arithmetic (saturating).
pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
