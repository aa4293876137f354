//! Scheduler: invoked by an EventBridge schedule; starts the syncs that are
//! due. Also takes `{"adhoc": {...}}` to estimate and start one sync.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    metered::edge::lambda::run_scheduler_function().await
}
