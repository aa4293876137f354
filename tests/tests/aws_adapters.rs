//! The same conformance suites on the AWS adapters, through the AWS SDK,
//! against real protocol servers: Amazon's DynamoDB Local and ministack's
//! SQS. `infra/test.sh` starts both; without them these tests fail.

use metered::adapters::aws::DynamoQuota;
use metered::core::{SharedClock, SystemClock};
use metered_tests::queue_suite::Fixture;
use metered_tests::{dynamo_table, sqs_queue};
use std::sync::Arc;

async fn quota() -> metered_tests::quota_suite::Store {
    Arc::new(DynamoQuota::new(dynamo_table().await))
}

async fn queue() -> Fixture {
    let clock: SharedClock = Arc::new(SystemClock);
    Fixture {
        queue: Arc::new(sqs_queue(2).await),
        clock,
        // Real servers keep real time: the test waits (tests may sleep).
        advance: Box::new(|secs| {
            Box::pin(tokio::time::sleep(std::time::Duration::from_secs_f64(secs)))
        }),
        can_jump: false,
    }
}

async fn store() -> metered_tests::store_suite::Fixture {
    let store = Arc::new(metered::adapters::aws::DynamoStore::new(
        dynamo_table().await,
    ));
    metered_tests::store_suite::Fixture {
        records: store.clone(),
        jobs: store.clone(),
        actions: store.clone(),
        hosted: store.clone(),
        waiters: store,
    }
}

mod store_on_dynamodb_local {
    use super::*;
    metered_tests::store_cases!(store());
}

mod quota_on_dynamodb_local {
    use super::*;
    metered_tests::quota_cases!(quota());
}

mod queue_on_ministack_sqs {
    use super::*;
    metered_tests::queue_cases!(queue());
}
