//! The Data Source outbox: rows a workflow decided to insert or delete wait
//! here, per (org, data source), until a flush sends them together.
//!
//! Why an outbox and not a push per workflow job: the seeds describe a Data
//! Source updated *on an interval*, with inserts and deletes in one call. A
//! push per job spent one call per page of triggers (15 calls for 91 rows
//! against an independent API); the outbox spends `ceil(pending / max)`
//! calls per flush, and a row changed twice between flushes is sent once.
//!
//! The rules, written once here and applied by both adapters:
//!
//! - **Last write wins per row id** ([`last_write_wins`]): an insert then a
//!   delete leaves the delete, a delete then an insert leaves the insert,
//!   two inserts leave the newer row. Every write gets a new `stamp`. When
//!   a row says when its source record was last modified
//!   ([`RowWrite::source_at`]), a write from an older version of the record
//!   never replaces a row from a newer one ([`replaces`]): two workflow jobs
//!   acting on consecutive versions of a record may write in either order.
//! - **One chunk in flight** per outbox ([`Outbox::begin_chunk`]): the chunk's
//!   rows *and content* are recorded with a sequence number before the call,
//!   so its `Idempotency-Key` (org, data source, sequence) is fixed before
//!   the API sees it and a repeat after a crash sends the same body under
//!   the same key.
//! - **Rows leave only once accepted** ([`Outbox::ack_chunk`]): a row leaves
//!   when the API accepted the chunk *and* it was not written again since
//!   (same stamp); a row rewritten during the flush stays for the next one.

use crate::core::clock::Timestamp;
use crate::core::error::Result;
use crate::quota::QuotaKey;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What should become of one row of a Data Source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "row", rename_all = "snake_case")]
pub enum RowChange {
    /// Insert or replace the row.
    Insert(Value),
    /// Delete the row.
    Delete,
}

/// One row to write to an outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct RowWrite {
    /// The row's id.
    pub id: String,
    /// Insert or delete.
    pub change: RowChange,
    /// When the record the row was made from was last modified (its
    /// `updated_at`), if its type says: orders writes from different
    /// versions of one record.
    pub source_at: Option<Timestamp>,
}

impl RowWrite {
    /// A write of `change` to row `id`, with no source time.
    pub fn new(id: impl Into<String>, change: RowChange) -> Self {
        Self {
            id: id.into(),
            change,
            source_at: None,
        }
    }

    /// The same write, made from a record last modified at `at`.
    pub fn from_source_at(mut self, at: Option<Timestamp>) -> Self {
        self.source_at = at;
        self
    }
}

/// The ordering rule both adapters apply: a write replaces the stored row
/// unless both say when their source record was modified and the stored
/// one's is later.
pub fn replaces(stored_at: Option<Timestamp>, incoming_at: Option<Timestamp>) -> bool {
    match (stored_at, incoming_at) {
        (Some(stored), Some(incoming)) => incoming >= stored,
        _ => true,
    }
}

/// A row waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The row's id (the trigger record's id).
    pub id: String,
    /// Insert or delete.
    pub change: RowChange,
    /// Unique per write: an ack removes the row only if it still holds this.
    pub stamp: String,
}

/// A chunk of rows fixed for one push call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The outbox's chunk number, never reused: part of the idempotency key.
    pub seq: u64,
    /// The rows, with the content sent.
    pub rows: Vec<OutboxRow>,
}

impl Chunk {
    /// The rows to insert, in id order.
    pub fn inserts(&self) -> Vec<Value> {
        self.rows
            .iter()
            .filter_map(|r| match &r.change {
                RowChange::Insert(v) => Some(v.clone()),
                RowChange::Delete => None,
            })
            .collect()
    }

    /// The ids to delete, in id order.
    pub fn deletes(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| r.change == RowChange::Delete)
            .map(|r| r.id.clone())
            .collect()
    }
}

/// The state of one outbox besides its rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxState {
    /// The chunk sent (or about to be) and not yet acknowledged.
    pub inflight: Option<Chunk>,
    /// The next chunk's number.
    pub next_seq: u64,
    /// When a timed flush is due; set by whoever enqueued that flush.
    pub flush_due: Option<Timestamp>,
    /// When a chunk was last accepted.
    pub last_flush: Option<Timestamp>,
    /// Chunks the API accepted, ever.
    pub pushes: u64,
    /// Rows those chunks carried.
    pub rows_pushed: u64,
}

/// The largest row, as JSON, the outbox keeps: rows are small (a template
/// over a record); a chunk must fit one DynamoDB item with its neighbours.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

/// The largest chunk, as JSON: the in-flight chunk is kept in one DynamoDB
/// item (400 KB), and the SQLite adapter keeps the same bound.
pub const MAX_CHUNK_BYTES: usize = 300 * 1024;

/// Why a row cannot wait in the outbox, if it cannot (see [`MAX_ROW_BYTES`]).
pub fn unqueueable(row: &Value) -> Option<String> {
    let size = row.to_string().len();
    (size > MAX_ROW_BYTES).then(|| {
        format!("the Data Source row is {size} bytes as JSON; a row may be at most {MAX_ROW_BYTES}")
    })
}

/// The last-write-wins rule for rows written together: of several writes to
/// one id, the last one stands (unless [`replaces`] says an earlier one is
/// of a newer source). Keeps the order of first appearance.
pub fn last_write_wins(rows: Vec<RowWrite>) -> Vec<RowWrite> {
    let mut out: Vec<RowWrite> = Vec::with_capacity(rows.len());
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for row in rows {
        match at.get(&row.id) {
            Some(&i) => {
                if replaces(out[i].source_at, row.source_at) {
                    out[i] = row;
                }
            }
            None => {
                at.insert(row.id.clone(), out.len());
                out.push(row);
            }
        }
    }
    out
}

/// The next chunk from pending rows (id order): at most `max_rows`, and at
/// most [`MAX_CHUNK_BYTES`] of JSON (always at least one row).
pub fn cut_chunk(pending: Vec<OutboxRow>, max_rows: usize) -> Vec<OutboxRow> {
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for row in pending.into_iter().take(max_rows.max(1)) {
        let size = match &row.change {
            RowChange::Insert(v) => v.to_string().len(),
            RowChange::Delete => row.id.len(),
        } + 64;
        if !out.is_empty() && bytes + size > MAX_CHUNK_BYTES {
            break;
        }
        bytes += size;
        out.push(row);
    }
    out
}

/// The Data Source outbox port (both record stores implement it).
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Writes rows (last write wins per id, see [`last_write_wins`], and a
    /// row from an older source never replaces a newer one, see
    /// [`replaces`]), each with a new stamp.
    async fn put_rows(
        &self,
        key: &QuotaKey,
        datasource: &str,
        rows: &[RowWrite],
        now: Timestamp,
    ) -> Result<()>;

    /// Waiting rows in id order, at most `limit`.
    async fn pending_rows(
        &self,
        key: &QuotaKey,
        datasource: &str,
        limit: u32,
    ) -> Result<Vec<OutboxRow>>;

    /// How many rows wait.
    async fn pending_count(&self, key: &QuotaKey, datasource: &str) -> Result<u64>;

    /// The outbox's state (default when never written).
    async fn outbox_state(&self, key: &QuotaKey, datasource: &str) -> Result<OutboxState>;

    /// Fixes `rows` as the next chunk: records it in flight under the next
    /// sequence number and returns it; `None` when a chunk is already in
    /// flight (send that one first).
    async fn begin_chunk(
        &self,
        key: &QuotaKey,
        datasource: &str,
        rows: &[OutboxRow],
    ) -> Result<Option<Chunk>>;

    /// The API accepted `chunk`: its rows not written since leave, the
    /// in-flight mark is cleared (if it is still this chunk), `last_flush`
    /// is set and `pushes`/`rows_pushed` count it. Repeating it is harmless
    /// (counted once).
    async fn ack_chunk(
        &self,
        key: &QuotaKey,
        datasource: &str,
        chunk: &Chunk,
        now: Timestamp,
    ) -> Result<()>;

    /// Marks a timed flush due at `due` when none is marked, or the marked
    /// one is before `replace_before` (lost, or being moved); true when this
    /// call set it, and the caller then enqueues the flush job.
    async fn mark_flush_due(
        &self,
        key: &QuotaKey,
        datasource: &str,
        due: Timestamp,
        replace_before: Timestamp,
    ) -> Result<bool>;

    /// Clears the timed-flush mark if it is still `due`.
    async fn clear_flush_due(&self, key: &QuotaKey, datasource: &str, due: Timestamp)
        -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_write_of_an_id_stands() {
        let w = |id: &str, c: RowChange| RowWrite::new(id, c);
        let rows = vec![
            w("a", RowChange::Insert(json!({"v": 1}))),
            w("b", RowChange::Delete),
            w("a", RowChange::Delete),
            w("b", RowChange::Insert(json!({"v": 2}))),
            w("c", RowChange::Insert(json!({"v": 3}))),
            w("c", RowChange::Insert(json!({"v": 4}))),
        ];
        assert_eq!(
            last_write_wins(rows),
            vec![
                w("a", RowChange::Delete),
                w("b", RowChange::Insert(json!({"v": 2}))),
                w("c", RowChange::Insert(json!({"v": 4}))),
            ]
        );
        // A row of an older source does not replace a newer one's.
        let t = |s| Some(chrono::DateTime::from_timestamp(s, 0).unwrap());
        let rows = vec![
            w("a", RowChange::Insert(json!({"v": 2}))).from_source_at(t(20)),
            w("a", RowChange::Insert(json!({"v": 1}))).from_source_at(t(10)),
        ];
        assert_eq!(
            last_write_wins(rows)[0].change,
            RowChange::Insert(json!({"v": 2}))
        );
        assert!(replaces(None, t(1)) && replaces(t(1), None) && replaces(t(1), t(1)));
        assert!(!replaces(t(2), t(1)));
    }

    #[test]
    fn chunks_stop_at_the_row_count_or_the_byte_bound() {
        let row = |i: usize, size: usize| OutboxRow {
            id: format!("r{i:03}"),
            change: RowChange::Insert(json!({ "pad": "x".repeat(size) })),
            stamp: "s".into(),
        };
        let small: Vec<_> = (0..10).map(|i| row(i, 10)).collect();
        assert_eq!(cut_chunk(small, 4).len(), 4);
        let big: Vec<_> = (0..10).map(|i| row(i, 60 * 1024)).collect();
        let chunk = cut_chunk(big, 100);
        assert_eq!(chunk.len(), 4, "5 rows of 60 KiB exceed {MAX_CHUNK_BYTES}");
        assert_eq!(cut_chunk(vec![row(0, 400 * 1024)], 10).len(), 1);
    }
}
