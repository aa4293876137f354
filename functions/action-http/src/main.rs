//! HTTP action: one API call per job, at most once per idempotency key.
//! SQS-triggered.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::ActionHttp).await
}
