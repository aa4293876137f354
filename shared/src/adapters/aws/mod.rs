//! The DynamoDB table every DynamoDB adapter shares.
//!
//! One table, string keys `pk` and `sk`, on-demand capacity, TTL on `ttl`
//! (epoch seconds; TTL only cleans up, it never decides anything).
//!
//! Every item kind and access pattern: `docs/table.md`.

pub(crate) mod outbox;
pub(crate) mod queue;
pub(crate) mod quota;
pub(crate) mod store;

pub use queue::SqsQueue;
pub use quota::DynamoQuota;
pub use store::DynamoStore;

use crate::core::error::{Disposition, Error, Result};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// SDK config for an AWS-compatible server on this machine (DynamoDB Local,
/// ministack): region `us-east-1`, fixed dummy credentials and `endpoint`.
/// The one builder the tests, the CLI and the bench use, so a local run never
/// reaches for the machine's real AWS credentials.
pub fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    let credentials =
        aws_credential_types::Credentials::new("local", "local", None, None, "metered-local");
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .endpoint_url(endpoint)
        .build()
}

/// Client plus table name: what every DynamoDB adapter holds.
#[derive(Debug, Clone)]
pub struct Table {
    /// The DynamoDB client, built once per process.
    pub client: Client,
    /// The table's name.
    pub name: String,
}

impl Table {
    /// A table named `name` reached through `client`.
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    /// The item at (`pk`, `sk`), read consistently.
    pub(crate) async fn get(
        &self,
        operation: &'static str,
        pk: String,
        sk: &str,
    ) -> Result<Option<Item>> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.name)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(operation, e))?
            .item)
    }

    /// How many items partition `pk` holds (those with attribute `having`,
    /// when given): a `Select=COUNT` query, paged.
    pub(crate) async fn count(
        &self,
        operation: &'static str,
        pk: String,
        having: Option<&str>,
    ) -> Result<u64> {
        let mut query = self
            .client
            .query()
            .table_name(&self.name)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .select(aws_sdk_dynamodb::types::Select::Count);
        if let Some(attribute) = having {
            query = query
                .filter_expression("attribute_exists(#having)")
                .expression_attribute_names("#having", attribute);
        }
        let mut total = 0u64;
        let mut pages = query.into_paginator().send();
        while let Some(page) = pages.next().await {
            total += page.map_err(|e| sdk_error(operation, e))?.count().max(0) as u64;
        }
        Ok(total)
    }

    /// Creates the table as `template.yaml` declares it (for local servers
    /// and tests; in AWS the template creates it). Idempotent.
    pub async fn create_if_missing(&self) -> Result<()> {
        let created = self
            .client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
            Err(e) => return Err(sdk_error("create table", e)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(|e| Error::store("create table", e, Disposition::Permanent))?,
            )
            .send()
            .await
            .map_err(|e| sdk_error("enable ttl", e))?;
        Ok(())
    }
}

fn attr(name: &str) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| Error::store("create table", e, Disposition::Permanent))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| Error::store("create table", e, Disposition::Permanent))
}

/// Escapes `#` so that key parts joined by `#` cannot collide.
pub(crate) fn key_part(s: &str) -> String {
    s.replace('%', "%25").replace('#', "%23")
}

/// Maps an SDK failure to the library error: throttling, 5xx and transport
/// failures may pass; the rest (missing table, validation) will not.
pub(crate) fn sdk_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let retryable = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => matches!(
            se.err().code(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "TransactionConflictException"
            )
        ),
        _ => false,
    };
    Error::store(
        operation,
        DisplayErrorContext(&err),
        Disposition::when_retryable(retryable),
    )
}

/// Whether an UpdateItem failed its condition (an expected outcome, not an error).
pub(crate) fn is_ccf(
    e: &SdkError<
        aws_sdk_dynamodb::operation::update_item::UpdateItemError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
) -> bool {
    matches!(
        e.as_service_error(),
        Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(_))
    )
}

/// A conditional `UpdateItem`'s outcome: `Some(output)` when applied,
/// `None` when its condition did not hold (an expected answer, not an
/// error), else the error for `operation`.
pub(crate) fn conditional<T>(
    result: std::result::Result<
        T,
        SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
    operation: &'static str,
) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_ccf(&e) => Ok(None),
        Err(e) => Err(sdk_error(operation, e)),
    }
}

/// One item as the SDK hands it over. The helpers below are the only place
/// the adapters spell attribute values, so a number is written and read the
/// same way by the quota and the store.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute (DynamoDB carries numbers as decimal strings).
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A number attribute as `i64`; `None` for another type or a non-integer.
pub(crate) fn as_i64(v: &AttributeValue) -> Option<i64> {
    v.as_n().ok().and_then(|n| n.parse::<i64>().ok())
}

/// The number attribute `k` of `item`.
pub(crate) fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k).and_then(as_i64)
}

/// The string attribute `k` of `item`.
pub(crate) fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a String> {
    item.get(k).and_then(|v| v.as_s().ok())
}
