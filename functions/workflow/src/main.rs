//! Workflow: evaluates triggers and decision nodes on stored records and
//! enqueues action jobs only for records that pass. SQS-triggered.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_queue_function(metered::JobKind::Workflow).await
}
