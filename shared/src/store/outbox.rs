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
//! - **A refused chunk is split, never re-sent as it was**
//!   ([`after_refusal`], [`Outbox::refuse_chunk`]): when the API refuses a
//!   chunk's content for good (400, 413, 422), the next chunks are half as
//!   large, down to one row; a row refused alone is set aside with the
//!   API's reason (`metered outbox` lists, retries or drops it) and the rest
//!   go through. Each refusal halves the chunk or sets a row aside, so a
//!   bad row costs about `2·log2(max_rows_per_call)` calls, once. Before,
//!   the chunk stayed in flight and was re-sent at every timed flush,
//!   stalling its Data Source for good.
//! - **Rows are keyed by their own `id`** ([`row_id`]): the id the platform
//!   sees, so a delete names a row it was sent.

use crate::config::row_index::RowIndex;
use crate::core::clock::Timestamp;
use crate::core::error::Result;
use crate::core::tenant::Tenant;
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
pub(crate) fn replaces(stored_at: Option<Timestamp>, incoming_at: Option<Timestamp>) -> bool {
    match (stored_at, incoming_at) {
        (Some(stored), Some(incoming)) => incoming >= stored,
        _ => true,
    }
}

/// The key of a Data Source row: the rendered row's own `id` (a string,
/// or a number written as one), else `fallback` (the trigger record's id).
/// Deletes name this id, so it must be the one the platform was sent.
pub(crate) fn row_id(row: &Value, fallback: &str) -> String {
    match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => fallback.to_string(),
    }
}

/// A row waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The row's id ([`row_id`]).
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
    /// While a refused chunk is being split: the bound of the next chunks
    /// ([`after_refusal`], [`after_acceptance`]).
    pub probe: Option<Probe>,
}

/// The search for a refused row: chunks of at most `rows` rows until the
/// rows up to `until` (the refused chunk's last id) are decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The most rows the next chunk takes.
    pub rows: u32,
    /// The last row id of the chunk that was refused.
    pub until: String,
}

/// What becomes of a chunk the API refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its rows wait again; the next chunks take at most `probe.rows`.
    Split {
        /// The bound for the next chunks.
        probe: Probe,
    },
    /// A chunk of one row: the row is set aside with the API's reason
    /// (unless written again since), and the next chunk takes one row.
    SetAside {
        /// What the API said.
        reason: String,
    },
}

/// The splitting rule (a bisection): a refused chunk is halved, rounding
/// up, until one row is refused alone, which is set aside; then chunks are
/// full again.
pub(crate) fn after_refusal(chunk: &[OutboxRow], reason: &str) -> Refusal {
    match chunk {
        [] | [_] => Refusal::SetAside {
            reason: reason.to_string(),
        },
        [.., last] => Refusal::Split {
            probe: Probe {
                rows: chunk.len().div_ceil(2) as u32,
                until: last.id.clone(),
            },
        },
    }
}

/// After an accepted chunk whose last id is `last`: the search goes on at
/// the same size while the refused range is not yet passed (the refused
/// row is in the rest of it), and ends once it is (the row was written
/// again, or refused no more).
pub(crate) fn after_acceptance(probe: Option<Probe>, last: &str) -> Option<Probe> {
    probe.filter(|p| last < p.until.as_str())
}

/// A row the API refused alone, set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedRow {
    /// The row's id.
    pub id: String,
    /// What was sent.
    pub change: RowChange,
    /// What the API said.
    pub reason: String,
    /// When.
    pub refused_at: Timestamp,
}

/// Which refused rows a retry or drop applies to: all of a Data Source's,
/// or these ids.
pub(crate) fn selected(ids: Option<&[String]>, id: &str) -> bool {
    ids.is_none_or(|ids| ids.iter().any(|i| i == id))
}

/// The largest row, as JSON, the outbox keeps: rows are small (a template
/// over a record); a chunk must fit one DynamoDB item with its neighbours.
pub(crate) const MAX_ROW_BYTES: usize = 64 * 1024;

/// The largest chunk, as JSON: the in-flight chunk is kept in one DynamoDB
/// item (400 KB), and the SQLite adapter keeps the same bound.
pub(crate) const MAX_CHUNK_BYTES: usize = 300 * 1024;

/// Why a row cannot wait in the outbox, if it cannot (see [`MAX_ROW_BYTES`]).
pub(crate) fn unqueueable(row: &Value) -> Option<String> {
    let size = row.to_string().len();
    (size > MAX_ROW_BYTES).then(|| {
        format!("the Data Source row is {size} bytes as JSON; a row may be at most {MAX_ROW_BYTES}")
    })
}

/// The last-write-wins rule for rows written together: of several writes to
/// one id, the last one stands (unless [`replaces`] says an earlier one is
/// of a newer source). Keeps the order of first appearance.
pub(crate) fn last_write_wins(rows: Vec<RowWrite>) -> Vec<RowWrite> {
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

/// The bytes a row takes in the stored chunk: its id, its stamp and its
/// change as JSON, with the JSON around them. Counting only the row's
/// content let a stored chunk of many small rows with long ids exceed
/// DynamoDB's 400 KB item.
pub(crate) fn stored_size(row: &OutboxRow) -> usize {
    let change = serde_json::to_string(&row.change).map_or(0, |s| s.len());
    row.id.len() + row.stamp.len() + change + 48
}

/// The next chunk from pending rows (id order): at most `max_rows`, and at
/// most [`MAX_CHUNK_BYTES`] as stored ([`stored_size`]; always at least one
/// row).
pub(crate) fn cut_chunk(pending: Vec<OutboxRow>, max_rows: usize) -> Vec<OutboxRow> {
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for row in pending.into_iter().take(max_rows.max(1)) {
        let size = stored_size(&row);
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
        key: &Tenant,
        datasource: &str,
        rows: &[RowWrite],
        now: Timestamp,
    ) -> Result<()> {
        self.put_rows_indexed(key, datasource, rows, None, now)
            .await
    }

    /// [`Outbox::put_rows`] for a hosted Data Source whose filter allows an
    /// index ([`RowIndex`]): each row is also kept under its part, and the
    /// parts a row enters or leaves get new versions. The first write
    /// under an index (or under another field than before) first indexes
    /// the rows already stored; a write without one marks the rows as not
    /// indexed, so Hosted GET never reads an index that misses rows.
    async fn put_rows_indexed(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[RowWrite],
        index: Option<&RowIndex>,
        now: Timestamp,
    ) -> Result<()>;

    /// Waiting rows in id order, at most `limit`.
    async fn pending_rows(
        &self,
        key: &Tenant,
        datasource: &str,
        limit: u32,
    ) -> Result<Vec<OutboxRow>>;

    /// How many rows wait.
    async fn pending_count(&self, key: &Tenant, datasource: &str) -> Result<u64>;

    /// The outbox's state (default when never written).
    async fn outbox_state(&self, key: &Tenant, datasource: &str) -> Result<OutboxState>;

    /// Fixes `rows` as the next chunk: records it in flight under the next
    /// sequence number and returns it; `None` when a chunk is already in
    /// flight (send that one first).
    async fn begin_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[OutboxRow],
    ) -> Result<Option<Chunk>>;

    /// The API accepted `chunk`: its rows not written since leave, the
    /// in-flight mark is cleared (if it is still this chunk), `last_flush`
    /// is set and `pushes`/`rows_pushed` count it. Repeating it is harmless
    /// (counted once).
    async fn ack_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        chunk: &Chunk,
        now: Timestamp,
    ) -> Result<()>;

    /// Marks a timed flush due at `due` when none is marked, or the marked
    /// one is before `replace_before` (lost, or being moved); true when this
    /// call set it, and the caller then enqueues the flush job.
    async fn mark_flush_due(
        &self,
        key: &Tenant,
        datasource: &str,
        due: Timestamp,
        replace_before: Timestamp,
    ) -> Result<bool>;

    /// Clears the timed-flush mark if it is still `due`.
    async fn clear_flush_due(&self, key: &Tenant, datasource: &str, due: Timestamp) -> Result<()>;

    /// The API refused `chunk` for good: the in-flight mark is cleared (if
    /// it is still this chunk) and the probe is set (split) or lifted (set
    /// aside); with [`Refusal::SetAside`] the one row moves to the refused
    /// rows with the reason, unless it was written since (then the new
    /// version waits and is tried). Repeating it is harmless.
    async fn refuse_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        chunk: &Chunk,
        refusal: &Refusal,
        now: Timestamp,
    ) -> Result<()>;

    /// Sets the bound of the next chunks (`None`: `max_rows_per_call`).
    async fn set_probe(&self, key: &Tenant, datasource: &str, probe: Option<&Probe>) -> Result<()>;

    /// Rows set aside, in id order, at most `limit`.
    async fn refused_rows(
        &self,
        key: &Tenant,
        datasource: &str,
        limit: u32,
    ) -> Result<Vec<RefusedRow>>;

    /// Puts refused rows (all, or `ids`) back to wait for the next flush;
    /// a row written again since keeps its newer version. Returns how many
    /// left the refused list.
    async fn retry_refused(
        &self,
        key: &Tenant,
        datasource: &str,
        ids: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64>;

    /// Forgets refused rows (all, or `ids`): they are never sent. Returns
    /// how many.
    async fn drop_refused(
        &self,
        key: &Tenant,
        datasource: &str,
        ids: Option<&[String]>,
    ) -> Result<u64>;
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
        // Deletes with long ids: the ids count (they are stored).
        let deletes: Vec<_> = (0..1_000)
            .map(|i| OutboxRow {
                id: format!("{i:0>900}"),
                change: RowChange::Delete,
                stamp: "0123456789abcdef0123456789abcdef".into(),
            })
            .collect();
        let chunk = cut_chunk(deletes, 1_000);
        let stored: usize = chunk.iter().map(stored_size).sum();
        assert!(
            stored <= MAX_CHUNK_BYTES && chunk.len() < 400,
            "{}",
            chunk.len()
        );
    }

    #[test]
    fn a_refused_chunk_halves_until_one_row_is_set_aside() {
        let row = |i: usize| OutboxRow {
            id: format!("r{i:03}"),
            change: RowChange::Delete,
            stamp: "s".into(),
        };
        let rows: Vec<OutboxRow> = (0..5).map(row).collect();
        assert_eq!(
            after_refusal(&rows, "x"),
            Refusal::Split {
                probe: Probe {
                    rows: 3,
                    until: "r004".into()
                }
            }
        );
        assert_eq!(
            after_refusal(&rows[..1], "bad email"),
            Refusal::SetAside {
                reason: "bad email".into()
            }
        );
        let p = Some(Probe {
            rows: 3,
            until: "r004".into(),
        });
        assert_eq!(after_acceptance(p.clone(), "r002"), p);
        assert_eq!(after_acceptance(p, "r004"), None);
        // One bad row among 200, chunks of 100: every row is decided, the
        // bad one set aside, in about two calls per halving, once.
        for bad in [0usize, 37, 99, 100, 157, 199] {
            let mut pending: Vec<OutboxRow> = (0..200).map(row).collect();
            let (mut probe, mut calls, mut set_aside) = (None::<Probe>, 0, vec![]);
            while !pending.is_empty() {
                calls += 1;
                let n = probe
                    .as_ref()
                    .map_or(100, |p| p.rows as usize)
                    .min(pending.len());
                let chunk: Vec<OutboxRow> = pending[..n].to_vec();
                if chunk.iter().any(|r| r.id == row(bad).id) {
                    match after_refusal(&chunk, "no") {
                        Refusal::Split { probe: p } => probe = Some(p),
                        Refusal::SetAside { .. } => {
                            set_aside.push(pending.remove(0).id);
                            probe = None;
                        }
                    }
                } else {
                    pending.drain(..n);
                    probe = after_acceptance(probe, &chunk[n - 1].id);
                }
            }
            assert_eq!(set_aside, vec![row(bad).id], "{bad}");
            assert!(calls <= 2 + 2 * 7, "{bad}: {calls} calls");
        }
    }

    #[test]
    fn a_row_is_keyed_by_its_own_id() {
        assert_eq!(row_id(&json!({"id": "row-1"}), "rec"), "row-1");
        assert_eq!(row_id(&json!({"id": 7}), "rec"), "7");
        assert_eq!(row_id(&json!({"id": ""}), "rec"), "rec");
        assert_eq!(row_id(&json!({"name": "x"}), "rec"), "rec");
    }
}
