//! The conformance suites (quota, store, queue) on the embedded SQLite adapters.

use metered::adapters::sqlite::Db;
use metered::adapters::sqlite::SqliteQueue;
use metered::adapters::sqlite::SqliteQuota;
use metered_tests::manual_clock;
use metered_tests::queue_suite::Fixture;
use std::sync::Arc;

async fn quota() -> metered_tests::quota_suite::Store {
    Arc::new(SqliteQuota::new(Db::in_memory().unwrap()))
}

async fn queue() -> Fixture {
    let (clock, shared) = manual_clock();
    let db = Db::in_memory().unwrap();
    Fixture {
        queue: Arc::new(SqliteQueue::new(db, "jobs", shared.clone(), 2)),
        clock: shared,
        advance: Box::new(move |secs| {
            clock.advance(chrono::Duration::milliseconds((secs * 1000.0) as i64));
            Box::pin(async {})
        }),
        can_jump: true,
    }
}

async fn store() -> metered_tests::store_suite::Fixture {
    let store = Arc::new(metered::adapters::sqlite::SqliteStore::new(
        Db::in_memory().unwrap(),
    ));
    metered_tests::store_suite::Fixture {
        records: store.clone(),
        jobs: store.clone(),
        actions: store.clone(),
        hosted: store.clone(),
        waiters: store,
    }
}

mod store_on_sqlite {
    use super::*;
    metered_tests::store_cases!(store());
}

mod quota_on_sqlite {
    use super::*;
    metered_tests::quota_cases!(quota());
}

mod queue_on_sqlite {
    use super::*;
    metered_tests::queue_cases!(queue());
}
