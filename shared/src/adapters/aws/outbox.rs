//! The Data Source outbox on DynamoDB (items in `docs/table.md`): one item
//! per waiting row under `obx#{org}#{app}#{datasource}`, and one state item
//! per outbox holding the in-flight chunk, the chunk counter and the
//! timed-flush mark, each changed by one conditional `UpdateItem`.

use crate::adapters::aws::store::DynamoStore;
use crate::adapters::aws::{conditional, get_n, get_s, is_ccf, key_part, n, s, sdk_error, Item};
use crate::core::clock::{from_millis, to_millis, Timestamp};
use crate::core::error::{Disposition, Error, Result};
use crate::core::tenant::Tenant;
use crate::store::hosted::{HostedRows, IndexState, RowIndex};
use crate::store::outbox::{
    last_write_wins, selected, Chunk, Outbox, OutboxRow, OutboxState, Probe, Refusal, RefusedRow,
    RowChange, RowWrite,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::types::ReturnValue;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashMap};

/// Conditional deletes in flight at once when a chunk is acknowledged.
const ACK_CONCURRENCY: usize = 16;

fn row_pk(key: &Tenant, ds: &str) -> String {
    format!(
        "obx#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(ds)
    )
}

/// Rows the API refused alone, set aside (`metered outbox`).
fn refused_pk(key: &Tenant, ds: &str) -> String {
    format!(
        "obxr#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(ds)
    )
}

/// Hosted Data Sources with an index ([`RowIndex`]): one pointer item per
/// row under the part it was written to. Pointers are written before
/// their row and never removed, so a part never misses a row that is in
/// it; a pointer to a row that has since left the part is read and
/// dropped by the filter.
fn pointer_pk(key: &Tenant, ds: &str, part: &str) -> String {
    format!(
        "obxi#{}#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(ds),
        key_part(part)
    )
}

/// Each part's version (sort key: the part), for Hosted GET's ETags.
fn part_version_pk(key: &Tenant, ds: &str) -> String {
    format!(
        "obxv#{}#{}#{}",
        key_part(&key.org),
        key_part(&key.app),
        key_part(ds)
    )
}

fn pointer(key: &Tenant, ds: &str, part: &str, id: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), s(pointer_pk(key, ds, part))),
        ("sk".to_string(), s(id)),
    ])
}

fn state_pk(key: &Tenant) -> String {
    format!("obxs#{}#{}", key_part(&key.org), key_part(&key.app))
}

impl DynamoStore {
    /// An `UpdateItem` of one outbox's state item.
    fn state_update(
        &self,
        key: &Tenant,
        datasource: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key("pk", s(state_pk(key)))
            .key("sk", s(datasource))
    }
}

impl DynamoStore {
    /// [`Outbox::put_rows_indexed`] with an index: pointers first, then the
    /// rows (one `PutItem` each, returning the old row to learn the part
    /// it leaves), then the versions of the parts touched.
    async fn put_indexed(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[RowWrite],
        ix: &RowIndex,
        now: Timestamp,
    ) -> Result<()> {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let marked = self
            .table
            .get("outbox write", state_pk(key), datasource)
            .await?
            .and_then(|i| get_s(&i, "index_field").cloned());
        if marked.as_deref() != Some(ix.field.as_str()) {
            // Index the rows already stored before the mark says the
            // index holds them all.
            touched.extend(self.index_stored(key, datasource, ix).await?);
        }
        touched.extend(self.put_rows(key, datasource, rows, ix, now).await?);
        // The versions, after the rows: a reader that took a version before
        // reading never labels newer rows with it.
        self.bump_parts(key, datasource, touched).await?;
        self.state_update(key, datasource)
            .update_expression("ADD version :one SET index_field = :field")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":field", s(ix.field.clone()))
            .send()
            .await
            .map_err(|e| sdk_error("outbox write", e))?;
        Ok(())
    }

    /// Writes a pointer for every row already stored; the parts they are in.
    async fn index_stored(
        &self,
        key: &Tenant,
        datasource: &str,
        ix: &RowIndex,
    ) -> Result<BTreeSet<String>> {
        let pk = row_pk(key, datasource);
        let mut touched = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let items = self
                .query_items("outbox index", pk.clone(), after.as_deref(), 1_000)
                .await?;
            let mut pointers = Vec::new();
            for item in &items {
                let row = to_row(item)?;
                if let RowChange::Insert(v) = &row.change {
                    if let Some(part) = ix.part_of_row(v) {
                        pointers.push(pointer(key, datasource, &part, &row.id));
                        touched.insert(part);
                    }
                }
                after = Some(row.id);
            }
            self.batch_put(pointers).await?;
            if items.len() < 1_000 {
                return Ok(touched);
            }
        }
    }

    /// The rows' pointers, then the rows (a row older than the one stored
    /// is refused by its condition); the parts a row entered or left.
    async fn put_rows(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[RowWrite],
        ix: &RowIndex,
        now: Timestamp,
    ) -> Result<BTreeSet<String>> {
        let pk = row_pk(key, datasource);
        let mut pointers = Vec::new();
        let mut puts = Vec::new();
        for row in last_write_wins(rows.to_vec()) {
            let change = serde_json::to_string(&row.change).map_err(|e| bad("outbox write", e))?;
            let part = match &row.change {
                RowChange::Insert(v) => ix.part_of_row(v),
                RowChange::Delete => None,
            };
            if let Some(p) = &part {
                pointers.push(pointer(key, datasource, p, &row.id));
            }
            let mut item = HashMap::from([
                ("pk".to_string(), s(pk.clone())),
                ("sk".to_string(), s(row.id)),
                ("change".to_string(), s(change)),
                ("stamp".to_string(), s(crate::core::ids::new_id())),
                ("written_at".to_string(), n(to_millis(now))),
            ]);
            if let Some(at) = row.source_at {
                item.insert("source_at".to_string(), n(to_millis(at)));
            }
            puts.push((item, row.source_at, part));
        }
        self.batch_put(pointers).await?;
        let results: Vec<_> = stream::iter(puts.into_iter().map(|(item, at, part)| {
            let mut put = self
                .table
                .client
                .put_item()
                .table_name(&self.table.name)
                .set_item(Some(item))
                .return_values(ReturnValue::AllOld);
            if let Some(at) = at {
                // `outbox::replaces` as the condition.
                put = put
                    .condition_expression("attribute_not_exists(source_at) OR source_at <= :at")
                    .expression_attribute_values(":at", n(to_millis(at)));
            }
            async move { (put.send().await, part) }
        }))
        .buffer_unordered(ACK_CONCURRENCY)
        .collect()
        .await;
        let mut touched = BTreeSet::new();
        for (result, part) in results {
            match result {
                Ok(out) => {
                    touched.extend(part);
                    if let Some(old) = out.attributes.filter(|a| !a.is_empty()) {
                        if let RowChange::Insert(v) = to_row(&old)?.change {
                            touched.extend(ix.part_of_row(&v));
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_))
                    ) => {}
                Err(e) => return Err(sdk_error("outbox write", e)),
            }
        }
        Ok(touched)
    }

    /// A new version of every part in `touched`.
    async fn bump_parts(
        &self,
        key: &Tenant,
        datasource: &str,
        touched: BTreeSet<String>,
    ) -> Result<()> {
        let vpk = part_version_pk(key, datasource);
        let bumps: Vec<_> = stream::iter(touched.into_iter().map(|part| {
            self.table
                .client
                .update_item()
                .table_name(&self.table.name)
                .key("pk", s(vpk.clone()))
                .key("sk", s(part))
                .update_expression("ADD version :one")
                .expression_attribute_values(":one", n(1))
                .send()
        }))
        .buffer_unordered(ACK_CONCURRENCY)
        .collect()
        .await;
        for bump in bumps {
            bump.map_err(|e| sdk_error("outbox write", e))?;
        }
        Ok(())
    }
}

fn bad(operation: &'static str, e: impl std::fmt::Display) -> Error {
    Error::store(operation, e, Disposition::Permanent)
}

fn to_row(item: &Item) -> Result<OutboxRow> {
    let change = get_s(item, "change").ok_or_else(|| bad("outbox read", "row without `change`"))?;
    Ok(OutboxRow {
        id: get_s(item, "sk").cloned().unwrap_or_default(),
        change: serde_json::from_str(change).map_err(|e| bad("outbox read", e))?,
        stamp: get_s(item, "stamp").cloned().unwrap_or_default(),
    })
}

#[async_trait]
impl Outbox for DynamoStore {
    async fn put_rows_indexed(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[RowWrite],
        index: Option<&RowIndex>,
        now: Timestamp,
    ) -> Result<()> {
        if let Some(ix) = index {
            return self.put_indexed(key, datasource, rows, ix, now).await;
        }
        let pk = row_pk(key, datasource);
        let mut items = Vec::new();
        let mut ordered = Vec::new();
        for row in last_write_wins(rows.to_vec()) {
            let change = serde_json::to_string(&row.change).map_err(|e| bad("outbox write", e))?;
            let mut item = HashMap::from([
                ("pk".to_string(), s(pk.clone())),
                ("sk".to_string(), s(row.id)),
                ("change".to_string(), s(change)),
                ("stamp".to_string(), s(crate::core::ids::new_id())),
                ("written_at".to_string(), n(to_millis(now))),
            ]);
            match row.source_at {
                Some(at) => {
                    item.insert("source_at".to_string(), n(to_millis(at)));
                    ordered.push((item, at));
                }
                None => items.push(item),
            }
        }
        self.batch_put(items).await?;
        // Rows that say when their source changed: one conditional put each
        // (`outbox::replaces` as the condition); a refusal means a row of a
        // newer version is there, and it stands.
        let puts = ordered.into_iter().map(|(item, at)| {
            self.table
                .client
                .put_item()
                .table_name(&self.table.name)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(source_at) OR source_at <= :at")
                .expression_attribute_values(":at", n(to_millis(at)))
                .send()
        });
        for result in futures::future::join_all(puts).await {
            match result {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_))
                    ) => {}
                Err(e) => return Err(sdk_error("outbox write", e)),
            }
        }
        // Hosted GET's ETag version, bumped after the rows are in; the
        // rows are not indexed (any more).
        self.state_update(key, datasource)
            .update_expression("ADD version :one REMOVE index_field")
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| sdk_error("outbox write", e))?;
        Ok(())
    }

    async fn pending_rows(
        &self,
        key: &Tenant,
        datasource: &str,
        limit: u32,
    ) -> Result<Vec<OutboxRow>> {
        self.rows_after(key, datasource, None, limit).await
    }

    async fn pending_count(&self, key: &Tenant, datasource: &str) -> Result<u64> {
        self.table
            .count("outbox count", row_pk(key, datasource), None)
            .await
    }

    async fn outbox_state(&self, key: &Tenant, datasource: &str) -> Result<OutboxState> {
        let Some(item) = self
            .table
            .get("outbox state", state_pk(key), datasource)
            .await?
        else {
            return Ok(OutboxState::default());
        };
        let item = &item;
        let inflight = match (get_s(item, "inflight"), get_n(item, "inflight_seq")) {
            (Some(rows), Some(seq)) => Some(Chunk {
                seq: seq.max(0) as u64,
                rows: serde_json::from_str(rows).map_err(|e| bad("outbox state", e))?,
            }),
            _ => None,
        };
        Ok(OutboxState {
            inflight,
            next_seq: get_n(item, "next_seq").unwrap_or(0).max(0) as u64,
            flush_due: get_n(item, "flush_due").map(from_millis),
            last_flush: get_n(item, "last_flush").map(from_millis),
            pushes: get_n(item, "pushes").unwrap_or(0).max(0) as u64,
            rows_pushed: get_n(item, "rows_pushed").unwrap_or(0).max(0) as u64,
            probe: get_s(item, "probe").and_then(|p| serde_json::from_str(p).ok()),
        })
    }

    async fn begin_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        rows: &[OutboxRow],
    ) -> Result<Option<Chunk>> {
        let json = serde_json::to_string(rows).map_err(|e| bad("outbox chunk", e))?;
        let result = self
            .state_update(key, datasource)
            .update_expression(
                "SET inflight = :rows, inflight_seq = if_not_exists(next_seq, :zero), \
                 next_seq = if_not_exists(next_seq, :zero) + :one",
            )
            .condition_expression("attribute_not_exists(inflight)")
            .expression_attribute_values(":rows", s(json))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let seq = out
                    .attributes()
                    .and_then(|a| get_n(a, "inflight_seq"))
                    .ok_or_else(|| bad("outbox chunk", "no chunk number returned"))?;
                Ok(Some(Chunk {
                    seq: seq.max(0) as u64,
                    rows: rows.to_vec(),
                }))
            }
            Err(e) if is_ccf(&e) => Ok(None),
            Err(e) => Err(sdk_error("outbox chunk", e)),
        }
    }

    async fn ack_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        chunk: &Chunk,
        now: Timestamp,
    ) -> Result<()> {
        let pk = row_pk(key, datasource);
        let deletes: Vec<_> = chunk
            .rows
            .iter()
            .map(|row| {
                self.table
                    .client
                    .delete_item()
                    .table_name(&self.table.name)
                    .key("pk", s(pk.clone()))
                    .key("sk", s(row.id.clone()))
                    .condition_expression("stamp = :stamp")
                    .expression_attribute_values(":stamp", s(row.stamp.clone()))
            })
            .collect();
        stream::iter(deletes)
            .map(|request| async move {
                match request.send().await {
                    // Written again since (or already gone): it stays for
                    // the next flush, or was acknowledged before.
                    Ok(_) => Ok(()),
                    Err(e)
                        if matches!(
                            e.as_service_error(),
                            Some(DeleteItemError::ConditionalCheckFailedException(_))
                        ) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(sdk_error("outbox ack", e)),
                }
            })
            .buffer_unordered(ACK_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let result = self
            .state_update(key, datasource)
            .update_expression(
                "SET last_flush = :now ADD pushes :one, rows_pushed :rows REMOVE inflight, inflight_seq",
            )
            .condition_expression("inflight_seq = :seq")
            .expression_attribute_values(":seq", n(chunk.seq))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":rows", n(chunk.rows.len()))
            .expression_attribute_values(":now", n(to_millis(now)))
            .send()
            .await;
        conditional(result, "outbox ack")?;
        Ok(())
    }

    async fn mark_flush_due(
        &self,
        key: &Tenant,
        datasource: &str,
        due: Timestamp,
        replace_before: Timestamp,
    ) -> Result<bool> {
        let result = self
            .state_update(key, datasource)
            .update_expression("SET flush_due = :due")
            .condition_expression("attribute_not_exists(flush_due) OR flush_due < :before")
            .expression_attribute_values(":due", n(to_millis(due)))
            .expression_attribute_values(":before", n(to_millis(replace_before)))
            .send()
            .await;
        Ok(conditional(result, "outbox schedule")?.is_some())
    }

    async fn clear_flush_due(&self, key: &Tenant, datasource: &str, due: Timestamp) -> Result<()> {
        let result = self
            .state_update(key, datasource)
            .update_expression("REMOVE flush_due")
            .condition_expression("flush_due = :due")
            .expression_attribute_values(":due", n(to_millis(due)))
            .send()
            .await;
        conditional(result, "outbox schedule")?;
        Ok(())
    }

    async fn refuse_chunk(
        &self,
        key: &Tenant,
        datasource: &str,
        chunk: &Chunk,
        refusal: &Refusal,
        now: Timestamp,
    ) -> Result<()> {
        use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
        let probe = match refusal {
            Refusal::Split { probe } => Some(probe),
            Refusal::SetAside { reason } => {
                for row in &chunk.rows {
                    let change =
                        serde_json::to_string(&row.change).map_err(|e| bad("outbox refuse", e))?;
                    // One transaction: the row leaves only if it is still
                    // the version refused, and then it is set aside.
                    let delete = Delete::builder()
                        .table_name(&self.table.name)
                        .key("pk", s(row_pk(key, datasource)))
                        .key("sk", s(row.id.clone()))
                        .condition_expression("stamp = :stamp")
                        .expression_attribute_values(":stamp", s(row.stamp.clone()))
                        .build()
                        .map_err(|e| bad("outbox refuse", e))?;
                    let put = Put::builder()
                        .table_name(&self.table.name)
                        .item("pk", s(refused_pk(key, datasource)))
                        .item("sk", s(row.id.clone()))
                        .item("change", s(change))
                        .item("reason", s(reason.clone()))
                        .item("refused_at", n(to_millis(now)))
                        .build()
                        .map_err(|e| bad("outbox refuse", e))?;
                    let result = self
                        .table
                        .client
                        .transact_write_items()
                        .transact_items(TransactWriteItem::builder().delete(delete).build())
                        .transact_items(TransactWriteItem::builder().put(put).build())
                        .send()
                        .await;
                    match result {
                        Ok(_) => {}
                        // Written again since (or set aside already): the
                        // newer version waits and is tried.
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|e| e.is_transaction_canceled_exception()) => {}
                        Err(e) => return Err(sdk_error("outbox refuse", e)),
                    }
                }
                None
            }
        };
        let update = match probe {
            Some(p) => self
                .state_update(key, datasource)
                .update_expression("SET probe = :probe REMOVE inflight, inflight_seq")
                .expression_attribute_values(
                    ":probe",
                    s(serde_json::to_string(p).map_err(|e| bad("outbox refuse", e))?),
                ),
            None => self
                .state_update(key, datasource)
                .update_expression("REMOVE probe, inflight, inflight_seq"),
        };
        let result = update
            .condition_expression("inflight_seq = :seq")
            .expression_attribute_values(":seq", n(chunk.seq))
            .send()
            .await;
        conditional(result, "outbox refuse")?;
        Ok(())
    }

    async fn set_probe(&self, key: &Tenant, datasource: &str, probe: Option<&Probe>) -> Result<()> {
        let update = match probe {
            Some(p) => self
                .state_update(key, datasource)
                .update_expression("SET probe = :probe")
                .expression_attribute_values(
                    ":probe",
                    s(serde_json::to_string(p).map_err(|e| bad("outbox probe", e))?),
                ),
            None => self
                .state_update(key, datasource)
                .update_expression("REMOVE probe"),
        };
        update
            .send()
            .await
            .map_err(|e| sdk_error("outbox probe", e))?;
        Ok(())
    }

    async fn refused_rows(
        &self,
        key: &Tenant,
        datasource: &str,
        limit: u32,
    ) -> Result<Vec<RefusedRow>> {
        self.query_items("outbox refused", refused_pk(key, datasource), None, limit)
            .await?
            .iter()
            .map(|item| {
                Ok(RefusedRow {
                    id: get_s(item, "sk").cloned().unwrap_or_default(),
                    change: serde_json::from_str(
                        get_s(item, "change").map(String::as_str).unwrap_or("null"),
                    )
                    .map_err(|e| bad("outbox refused", e))?,
                    reason: get_s(item, "reason").cloned().unwrap_or_default(),
                    refused_at: from_millis(get_n(item, "refused_at").unwrap_or(0)),
                })
            })
            .collect()
    }

    async fn retry_refused(
        &self,
        key: &Tenant,
        datasource: &str,
        ids: Option<&[String]>,
        now: Timestamp,
    ) -> Result<u64> {
        let items = self
            .query_items("outbox retry", refused_pk(key, datasource), None, u32::MAX)
            .await?;
        let mut moved = 0;
        for item in items {
            let Some(id) = get_s(&item, "sk").cloned() else {
                continue;
            };
            if !selected(ids, &id) {
                continue;
            }
            // Back to waiting unless a newer write of the row waits (it
            // stands); either way it leaves the refused list.
            let put = self
                .table
                .client
                .put_item()
                .table_name(&self.table.name)
                .item("pk", s(row_pk(key, datasource)))
                .item("sk", s(id.clone()))
                .item(
                    "change",
                    s(get_s(&item, "change").cloned().unwrap_or_default()),
                )
                .item("stamp", s(crate::core::ids::new_id()))
                .item("written_at", n(to_millis(now)))
                .condition_expression("attribute_not_exists(sk)")
                .send()
                .await;
            match put {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_))
                    ) => {}
                Err(e) => return Err(sdk_error("outbox retry", e)),
            }
            moved += self.delete_refused(key, datasource, &id).await?;
        }
        Ok(moved)
    }

    async fn drop_refused(
        &self,
        key: &Tenant,
        datasource: &str,
        ids: Option<&[String]>,
    ) -> Result<u64> {
        let items = self
            .query_items("outbox drop", refused_pk(key, datasource), None, u32::MAX)
            .await?;
        let mut dropped = 0;
        for id in items.iter().filter_map(|i| get_s(i, "sk")) {
            if selected(ids, id) {
                dropped += self.delete_refused(key, datasource, id).await?;
            }
        }
        Ok(dropped)
    }
}

impl DynamoStore {
    /// Deletes one refused row; 1 when it was there.
    async fn delete_refused(&self, key: &Tenant, datasource: &str, id: &str) -> Result<u64> {
        let out = self
            .table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .key("pk", s(refused_pk(key, datasource)))
            .key("sk", s(id))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("outbox refused", e))?;
        Ok(u64::from(out.attributes().is_some()))
    }

    /// Items of partition `pk` in sort-key order (after `after`), at most
    /// `limit`, read consistently.
    async fn query_items(
        &self,
        operation: &'static str,
        pk: String,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        let (condition, mut values) = match after {
            Some(a) => (
                "pk = :pk AND sk > :after",
                HashMap::from([(":after".to_string(), s(a))]),
            ),
            None => ("pk = :pk", HashMap::new()),
        };
        values.insert(":pk".to_string(), s(pk));
        while out.len() < limit as usize {
            let resp = self
                .table
                .client
                .query()
                .table_name(&self.table.name)
                .key_condition_expression(condition)
                .set_expression_attribute_values(Some(values.clone()))
                .consistent_read(true)
                .limit((limit as usize - out.len()).min(1_000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error(operation, e))?;
            out.extend(resp.items().iter().cloned());
            match resp.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        out.truncate(limit as usize);
        Ok(out)
    }
}

#[async_trait]
impl HostedRows for DynamoStore {
    async fn rows_version(&self, key: &Tenant, datasource: &str) -> Result<u64> {
        let item = self
            .table
            .get("hosted version", state_pk(key), datasource)
            .await?;
        Ok(item
            .as_ref()
            .and_then(|i| get_n(i, "version"))
            .unwrap_or(0)
            .max(0) as u64)
    }

    async fn rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>> {
        self.query_items("hosted read", row_pk(key, datasource), after, limit)
            .await?
            .iter()
            .map(to_row)
            .collect()
    }

    async fn index_state(
        &self,
        key: &Tenant,
        datasource: &str,
        parts: &[String],
    ) -> Result<IndexState> {
        let state = self.table.get("hosted version", state_pk(key), datasource);
        let vpk = part_version_pk(key, datasource);
        let versions = futures::future::try_join_all(
            parts
                .iter()
                .map(|part| self.table.get("hosted version", vpk.clone(), part)),
        );
        let (state, versions) = futures::try_join!(state, versions)?;
        Ok(IndexState {
            indexed_by: state.and_then(|i| get_s(&i, "index_field").cloned()),
            version: versions
                .iter()
                .flatten()
                .map(|i| get_n(i, "version").unwrap_or(0).max(0) as u64)
                .sum(),
        })
    }

    async fn part_rows_after(
        &self,
        key: &Tenant,
        datasource: &str,
        part: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>> {
        let ids: Vec<String> = self
            .query_items(
                "hosted read",
                pointer_pk(key, datasource, part),
                after,
                limit,
            )
            .await?
            .iter()
            .filter_map(|i| get_s(i, "sk").cloned())
            .collect();
        let mut found: HashMap<String, OutboxRow> = HashMap::new();
        for item in self.batch_get(&row_pk(key, datasource), &ids).await? {
            let row = to_row(&item)?;
            found.insert(row.id.clone(), row);
        }
        // One row per pointer, in id order: a pointer whose row is not
        // there (written, then the write failed) reads as a deleted row,
        // so the caller's count of rows read still tells the end apart.
        Ok(ids
            .into_iter()
            .map(|id| {
                found.remove(&id).unwrap_or(OutboxRow {
                    id,
                    change: RowChange::Delete,
                    stamp: String::new(),
                })
            })
            .collect())
    }
}
