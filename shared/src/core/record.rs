//! The vocabulary every layer shares: a record as an API returns it and as
//! the store keeps it, how a record changed, and the content hash that
//! decides whether it changed at all.

use crate::core::clock::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One record as the API returned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The record's id in the third-party API (unique per org and record type).
    pub id: String,
    /// When the API says the record last changed, if it says.
    pub updated_at: Option<Timestamp>,
    /// The record as the API served it.
    pub data: Value,
}

/// A record as stored. `data` is `None` for an id that was looked up and
/// not found (kept so the minimum relookup time applies to it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The record's id in the third-party API.
    pub id: String,
    /// Content hash of `data` ([`content_hash`]); empty for a placeholder.
    pub hash: String,
    /// The record; `None` for a placeholder left by a lookup claim.
    pub data: Option<Value>,
    /// When metered first stored or claimed this id.
    pub first_seen: Timestamp,
    /// When a sync last saw it.
    pub last_synced: Option<Timestamp>,
    /// When a lookup last asked for it (the `min_relookup` clock).
    pub last_looked_up: Option<Timestamp>,
    /// Who claimed its last lookup (`job id:page`), so a page that runs
    /// again after a crash can find the claims it made and lost.
    pub lookup_claimed_by: Option<String>,
}

impl StoredRecord {
    /// Whether the record itself has been seen (not just looked for).
    pub fn seen(&self) -> bool {
        self.data.is_some()
    }
}

/// How a record differs from what the store held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Never stored before (or only claimed for a lookup).
    Created,
    /// Stored with another content hash.
    Updated,
}

/// The content hash: SHA-256 of the record's canonical JSON (object keys
/// sorted), so the same content always hashes the same.
pub fn content_hash(data: &Value) -> String {
    let digest = Sha256::digest(data.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
