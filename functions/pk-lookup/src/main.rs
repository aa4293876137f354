//! Primary key lookup: referenced records by id, by the referenced type's policy, in bulk.
//! SQS-triggered; reports partial batch failures.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::lambda::run_sync_function(metered::job::JobKind::PkLookup).await
}
