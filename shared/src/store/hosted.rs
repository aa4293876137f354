//! Hosted Data Sources: the rows a hosted Data Source's push actions decide
//! stay in the outbox (never flushed) and are read from there by Hosted GET.
//!
//! Why the outbox: it already keeps one row per id, last write wins, per
//! (org, Data Source), on both adapters; hosting only stops flushing it. A
//! delete stays as a tombstone row, skipped when served.
//!
//! This port is apart from [`crate::store::RecordStore`] on purpose: only
//! the Hosted GET function and `metered serve` read it, so the other
//! Lambdas do not link its methods through the record store's vtable.

pub use crate::config::row_index::RowIndex;
use crate::core::error::Result;
use crate::core::tenant::Tenant;
use crate::store::outbox::OutboxRow;
use async_trait::async_trait;

/// Reading a hosted Data Source.
#[async_trait]
pub trait HostedRows: Send + Sync {
    /// A number that changes whenever rows of (org, data source) are
    /// written (0 when never written). Bumped *after* the rows are written,
    /// so a reader that takes it before reading rows never labels new
    /// rows with an old version it could later answer 304 to.
    async fn rows_version(&self, key: &Tenant, datasource: &str) -> Result<u64>;

    /// Rows (tombstones included) whose id sorts after `after`, in id
    /// (byte) order, at most `limit`.
    async fn rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>>;

    /// Before an indexed read: the field (org, data source)'s rows are all
    /// indexed by (None while they are not, e.g. before the first write
    /// under an indexed filter), and the sum of `parts`' versions. A part's
    /// version is bumped, after the rows are written, whenever a row
    /// enters it, changes in it or leaves it.
    async fn index_state(
        &self,
        key: &Tenant,
        datasource: &str,
        parts: &[String],
    ) -> Result<IndexState>;

    /// Rows of one part (see [`RowIndex`]) whose id sorts after `after`, in
    /// id order, at most `limit`. May hold a row that has since left the
    /// part (the filter, run on every row served, drops it); never misses
    /// a row that is in it.
    async fn part_rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        part: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>>;
}

/// See [`HostedRows::index_state`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexState {
    /// The row field every stored row is indexed by.
    pub indexed_by: Option<String>,
    /// The sum of the asked parts' versions.
    pub version: u64,
}
