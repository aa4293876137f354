//! The DynamoDB table every DynamoDB adapter shares.
//!
//! One table, string keys `pk` and `sk`, on-demand capacity, TTL on `ttl`
//! (epoch seconds; TTL only cleans up, it never decides anything).
//!
//! Every item kind and access pattern: `docs/table.md`.

pub mod queue;
pub mod quota;
pub mod store;

use crate::core::error::{Error, Result};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

/// Client plus table name: what every DynamoDB adapter holds.
#[derive(Debug, Clone)]
pub struct Table {
    pub client: Client,
    pub name: String,
}

impl Table {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
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
                    .map_err(|e| Error::store("create table", e, false))?,
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
        .map_err(|e| Error::store("create table", e, false))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| Error::store("create table", e, false))
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
    Error::store(operation, DisplayErrorContext(&err), retryable)
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
