//! Job queue on embedded SQLite, with SQS's semantics: per-message delay,
//! visibility timeout, receive count, redrive to a dead-letter queue after
//! `max_receive_count` receives. Time comes from the injected clock, so a
//! simulated day of delays passes in milliseconds.

use super::Cached;
use crate::adapters::sqlite::Db;
use crate::core::clock::{to_millis, SharedClock};
use crate::core::error::Result;
use crate::jobs::envelope::JobEnvelope;
use crate::jobs::queue::{Choose, DeadLetter, Delivery, JobQueue};
use async_trait::async_trait;
use rusqlite::{params, TransactionBehavior};

/// A job queue in an SQLite table, with SQS's semantics (delay, visibility, receive count, dead letters).
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    db: Db,
    name: String,
    clock: SharedClock,
    max_receive_count: u32,
}

impl SqliteQueue {
    /// `max_receive_count` mirrors an SQS redrive policy: a message received
    /// that many times without being acked moves to the dead-letter queue.
    pub fn new(
        db: Db,
        name: impl Into<String>,
        clock: SharedClock,
        max_receive_count: u32,
    ) -> Self {
        Self {
            db,
            name: name.into(),
            clock,
            max_receive_count: max_receive_count.max(1),
        }
    }

    /// When the next message becomes visible, if any wait: lets a local
    /// dispatcher on a simulated clock jump straight there.
    pub async fn next_visible_at(&self) -> Result<Option<crate::core::clock::Timestamp>> {
        let name = self.name.clone();
        let ms: Option<i64> = self
            .db
            .call("queue peek", move |conn| {
                conn.row(
                    "SELECT MIN(visible_at) FROM job_queue WHERE queue = ?1",
                    params![name],
                    |r| r.get(0),
                )
            })
            .await?;
        Ok(ms.map(crate::core::clock::from_millis))
    }

    /// Messages waiting or in flight.
    pub async fn len(&self) -> Result<u64> {
        let name = self.name.clone();
        self.db
            .call("queue len", move |conn| {
                conn.row(
                    "SELECT COUNT(*) FROM job_queue WHERE queue = ?1",
                    params![name],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n.max(0) as u64)
    }

    /// Whether no message is left, visible or not (a run is over).
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Jobs waiting or in flight per organization, with the earliest time
    /// one of them becomes visible (for `metered run`'s status; one query,
    /// however many wait). A body that is not an envelope counts under "".
    pub async fn waiting_by_org(
        &self,
    ) -> Result<Vec<(String, u64, crate::core::clock::Timestamp)>> {
        let name = self.name.clone();
        self.db
            .call("queue waiting by org", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT COALESCE(CAST(CASE WHEN json_valid(body) THEN json_extract(body, '$.org') END AS TEXT), ''),
                            COUNT(*), MIN(visible_at)
                     FROM job_queue WHERE queue = ?1 GROUP BY 1 ORDER BY 1",
                )?;
                let rows = stmt.query_map(params![name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?.max(0) as u64,
                        crate::core::clock::from_millis(r.get(2)?),
                    ))
                })?;
                rows.collect()
            })
            .await
    }

    /// Every waiting job with when it becomes visible (for `metered jobs`).
    pub async fn pending(&self) -> Result<Vec<(crate::core::clock::Timestamp, String)>> {
        let name = self.name.clone();
        self.db
            .call("queue list", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT visible_at, body FROM job_queue WHERE queue = ?1 ORDER BY visible_at",
                )?;
                let rows = stmt.query_map(params![name], |r| {
                    Ok((crate::core::clock::from_millis(r.get(0)?), r.get(1)?))
                })?;
                rows.collect()
            })
            .await
    }
}

#[async_trait]
impl JobQueue for SqliteQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> Result<()> {
        crate::jobs::queue::check_delay(delay_secs)?;
        let now = self.clock.now();
        let visible = to_millis(now) + i64::from(delay_secs) * 1000;
        let name = self.name.clone();
        let body = job.to_body();
        let id = crate::core::ids::new_id();
        let sent = to_millis(now);
        self.db
            .call("queue send", move |conn| {
                conn.exec(
                    "INSERT INTO job_queue (queue, message_id, body, visible_at, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, id, body, visible, sent],
                )
            })
            .await
            .map(|_| ())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        let name = self.name.clone();
        let body = body.to_string();
        let reason = reason.to_string();
        let now = to_millis(self.clock.now());
        let id = crate::core::ids::new_id();
        self.db
            .call("queue dead-letter", move |conn| {
                conn.exec(
                    "INSERT INTO dead_letter (queue, message_id, body, reason, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, id, body, reason, now],
                )
            })
            .await
            .map(|_| ())
    }

    async fn receive(&self, max: u32, visibility_secs: u32) -> Result<Vec<Delivery>> {
        let name = self.name.clone();
        let now = to_millis(self.clock.now());
        let hidden_until = now + i64::from(visibility_secs) * 1000;
        let max_receive = self.max_receive_count;
        self.db
            .call("queue receive", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let candidates: Vec<(String, String, u32)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT message_id, body, receive_count FROM job_queue
                         WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at LIMIT ?3",
                    )?;
                    let rows = stmt.query_map(params![name, now, max], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let mut out = Vec::new();
                for (id, body, count) in candidates {
                    if count >= max_receive {
                        // Redrive, as SQS does after maxReceiveCount.
                        tx.exec(
                            "INSERT INTO dead_letter (queue, message_id, body, reason, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![name, id, body, format!("received {count} times without success (redrive)"), now],
                        )?;
                        tx.exec("DELETE FROM job_queue WHERE queue = ?1 AND message_id = ?2", params![name, id])?;
                        continue;
                    }
                    // Unique per receive, and no id taken off the async
                    // side (see `core::ids`).
                    let receipt = format!("{id}#{}", count + 1);
                    tx.exec(
                        "UPDATE job_queue SET visible_at = ?3, receive_count = receive_count + 1, receipt = ?4
                         WHERE queue = ?1 AND message_id = ?2",
                        params![name, id, hidden_until, receipt],
                    )?;
                    out.push(Delivery {
                        message_id: id,
                        receipt,
                        body,
                        receive_count: count + 1,
                    });
                }
                tx.commit()?;
                Ok(out)
            })
            .await
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        let name = self.name.clone();
        let receipt = receipt.to_string();
        self.db
            .call("queue ack", move |conn| {
                conn.exec(
                    "DELETE FROM job_queue WHERE queue = ?1 AND receipt = ?2",
                    params![name, receipt],
                )
            })
            .await
            .map(|_| ())
    }

    async fn release(&self, receipt: &str, visible_in_secs: u32) -> Result<()> {
        let name = self.name.clone();
        let receipt = receipt.to_string();
        let at = to_millis(self.clock.now()) + i64::from(visible_in_secs) * 1000;
        self.db
            .call("queue release", move |conn| {
                conn.exec(
                    "UPDATE job_queue SET visible_at = ?3, receipt = NULL WHERE queue = ?1 AND receipt = ?2",
                    params![name, receipt, at],
                )
            })
            .await
            .map(|_| ())
    }

    async fn redrive(&self, choose: &Choose<'_>) -> Result<u64> {
        let chosen: Vec<(String, String, String)> = self
            .dead_letters(u32::MAX)
            .await?
            .iter()
            .filter_map(|d| {
                choose(d).map(|body| (d.message_id.clone(), body, crate::core::ids::new_id()))
            })
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let name = self.name.clone();
        let now = to_millis(self.clock.now());
        // One transaction: a dead letter leaves exactly when its job returns.
        self.db
            .call("queue redrive", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut moved = 0;
                for (message_id, body, new_id) in chosen {
                    let gone = tx.exec(
                        "DELETE FROM dead_letter WHERE queue = ?1 AND message_id = ?2",
                        params![name, message_id],
                    )?;
                    if gone == 1 {
                        tx.exec(
                            "INSERT INTO job_queue (queue, message_id, body, visible_at, sent_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                            params![name, new_id, body, now],
                        )?;
                        moved += 1;
                    }
                }
                tx.commit()?;
                Ok(moved)
            })
            .await
    }

    async fn dead_letters(&self, max: u32) -> Result<Vec<DeadLetter>> {
        let name = self.name.clone();
        self.db
            .call("queue dead-letters", move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT message_id, body, reason FROM dead_letter WHERE queue = ?1 ORDER BY failed_at LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![name, max], |r| {
                    Ok(DeadLetter {
                        message_id: r.get(0)?,
                        body: r.get(1)?,
                        reason: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
