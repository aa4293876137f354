//! Job queue on Amazon SQS. In Lambda the event source mapping receives and
//! deletes messages; handlers only `send` (restarts, follow-up jobs) and
//! `dead_letter`. `receive` and `ack` serve the local runner and tests.

use crate::core::error::{Disposition, Error, Result};
use crate::jobs::envelope::JobEnvelope;
use crate::jobs::queue::{Choose, DeadLetter, Delivery, JobQueue};
use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use aws_sdk_sqs::Client;

/// The message attribute that carries a dead letter's reason.
pub(crate) const REASON_ATTRIBUTE: &str = "metered-reason";
/// SQS message attributes are small; a reason is a sentence, not a dump.
const MAX_REASON_CHARS: usize = 1_000;

/// A job queue on SQS, with its dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    name: String,
    queue_url: String,
    dlq_url: String,
    /// Long-poll wait of `receive`, seconds (0 to 20).
    wait_secs: i32,
}

impl SqsQueue {
    /// The queue at `queue_url`, dead-lettering to `dlq_url`.
    pub fn new(client: Client, queue_url: impl Into<String>, dlq_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        let name = queue_url.rsplit('/').next().unwrap_or_default().to_string();
        Self {
            client,
            name,
            queue_url,
            dlq_url: dlq_url.into(),
            wait_secs: 1,
        }
    }

    /// Long-poll wait of `receive` (local pumps; Lambda polls for us).
    pub fn with_wait_secs(mut self, secs: i32) -> Self {
        self.wait_secs = secs.clamp(0, 20);
        self
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    async fn receive_from(
        &self,
        url: &str,
        max: u32,
        visibility_secs: u32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility_secs.min(43_200) as i32)
            .wait_time_seconds(self.wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sqs_error("receive", e))?;
        Ok(out.messages.unwrap_or_default())
    }
}

impl SqsQueue {
    /// Up to `max` messages of the dead-letter queue, each once: receiving
    /// hides what was read for `hidden_secs`, so the loop ends (after two
    /// empty polls); the caller makes them visible again or deletes them.
    async fn read_dead_letters(
        &self,
        max: u32,
        hidden_secs: u32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut empty_polls = 0;
        while (out.len() as u32) < max && empty_polls < 2 {
            let want = (max - out.len() as u32).min(10);
            let fresh: Vec<_> = self
                .receive_from(&self.dlq_url, want, hidden_secs)
                .await?
                .into_iter()
                .filter(|m| seen.insert(m.message_id.clone().unwrap_or_default()))
                .collect();
            empty_polls = if fresh.is_empty() { empty_polls + 1 } else { 0 };
            out.extend(fresh);
        }
        Ok(out)
    }

    /// Makes dead letters read by a listing or left by a redrive visible
    /// again at once.
    async fn show_again(&self, receipts: impl IntoIterator<Item = String>) -> Result<()> {
        for receipt in receipts {
            self.client
                .change_message_visibility()
                .queue_url(&self.dlq_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .map_err(|e| sqs_error("dead letters release", e))?;
        }
        Ok(())
    }
}

/// Throttling, 5xx and transport failures may pass; a missing queue will not.
fn sqs_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let retryable = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => !matches!(
            se.err().code(),
            Some(
                "QueueDoesNotExist"
                    | "AWS.SimpleQueueService.NonExistentQueue"
                    | "InvalidParameterValue"
                    | "AccessDenied"
            )
        ),
        _ => false,
    };
    Error::queue(
        operation,
        DisplayErrorContext(&err),
        Disposition::when_retryable(retryable),
    )
}

#[async_trait]
impl JobQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, job: &JobEnvelope, delay_secs: u32) -> Result<()> {
        crate::jobs::queue::check_delay(delay_secs)?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(job.to_body())
            .delay_seconds(delay_secs as i32)
            .send()
            .await
            .map_err(|e| sqs_error("send", e))?;
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason)
            .build()
            .map_err(|e| Error::queue("dead-letter", e, Disposition::Permanent))?;
        // SQS refuses empty bodies; a dead letter must still say what came.
        let body = if body.is_empty() {
            "(empty body)"
        } else {
            body
        };
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(body)
            .message_attributes(REASON_ATTRIBUTE, attr)
            .send()
            .await
            .map_err(|e| sqs_error("dead-letter", e))?;
        Ok(())
    }

    async fn receive(&self, max: u32, visibility_secs: u32) -> Result<Vec<Delivery>> {
        let messages = self
            .receive_from(&self.queue_url, max, visibility_secs)
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(Delivery {
                    message_id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count,
                })
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sqs_error("ack", e))?;
        Ok(())
    }

    async fn release(&self, receipt: &str, visible_in_secs: u32) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(visible_in_secs.min(43_200) as i32)
            .send()
            .await
            .map_err(|e| sqs_error("release", e))?;
        Ok(())
    }

    async fn dead_letters(&self, max: u32) -> Result<Vec<DeadLetter>> {
        let messages = self.read_dead_letters(max, 60).await?;
        let out = messages.iter().map(dead_letter_of).collect();
        // Visible again at once: a listing never keeps a redrive (or the
        // next listing) from them.
        self.show_again(messages.into_iter().filter_map(|m| m.receipt_handle))
            .await?;
        Ok(out)
    }

    /// A receive/send/delete loop rather than `StartMessageMoveTask`: the
    /// move task takes every message of the DLQ (no choice by kind, id or
    /// org, no reset restarts).
    async fn redrive(&self, choose: &Choose<'_>) -> Result<u64> {
        let mut kept = Vec::new();
        let mut moved = 0;
        for m in self.read_dead_letters(u32::MAX, 300).await? {
            let Some(receipt) = m.receipt_handle.clone() else {
                continue;
            };
            let Some(body) = choose(&dead_letter_of(&m)) else {
                kept.push(receipt);
                continue;
            };
            self.client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| sqs_error("redrive send", e))?;
            self.client
                .delete_message()
                .queue_url(&self.dlq_url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|e| sqs_error("redrive delete", e))?;
            moved += 1;
        }
        self.show_again(kept).await?;
        Ok(moved)
    }
}

/// A message of a dead-letter queue, with the reason metered gave it.
fn dead_letter_of(m: &aws_sdk_sqs::types::Message) -> DeadLetter {
    let reason = m
        .message_attributes()
        .and_then(|a| a.get(REASON_ATTRIBUTE))
        .and_then(|v| v.string_value())
        .unwrap_or("moved by the queue's redrive policy (maxReceiveCount)")
        .to_string();
    DeadLetter {
        message_id: m.message_id.clone().unwrap_or_default(),
        body: m.body.clone().unwrap_or_default(),
        reason,
    }
}
