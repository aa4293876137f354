//! Data Source push: inserts and deletes in one call, at most once per
//! idempotency key. SQS-triggered.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::ActionDatasourcePush).await
}
