//! Complete transfer: the whole dataset of a record type, page by page, resuming from its cursor.
//! SQS-triggered; reports partial batch failures.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::CompleteTransfer).await
}
