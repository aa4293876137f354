//! Primary key lookup: referenced records by id, by the referenced type's policy, in bulk.
//! SQS-triggered; reports partial batch failures.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::PkLookup).await
}
