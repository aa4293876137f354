//! Recent record lookup: records modified since the high-water mark minus the overlap.
//! SQS-triggered; reports partial batch failures.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::RecentRecords).await
}
