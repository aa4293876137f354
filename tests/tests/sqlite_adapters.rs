//! The conformance suites (quota, store, queue) on the embedded SQLite adapters.

use metered::adapters::sqlite::queue::SqliteQueue;
use metered::adapters::sqlite::quota::SqliteQuota;
use metered::adapters::sqlite::Db;
use metered_tests::queue_suite::Fixture;
use metered_tests::{manual_clock, suite_tests};
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
    let store = Arc::new(metered::adapters::sqlite::store::SqliteStore::new(
        Db::in_memory().unwrap(),
    ));
    metered_tests::store_suite::Fixture {
        records: store.clone(),
        jobs: store.clone(),
        actions: store,
    }
}

mod store_on_sqlite {
    use super::*;
    metered_tests::store_cases!(store());
}

mod quota_on_sqlite {
    use super::*;
    suite_tests!(
        metered_tests::quota_suite,
        quota(),
        [
            day_window_fills_then_denies_until_midnight,
            every_window_must_fit,
            concurrency_cap_and_lease_expiry,
            release_is_idempotent,
            renew_extends_a_lease,
            block_until_denies_everyone,
            reservation_and_refund,
            usage_is_summed_per_source,
            sixty_four_tasks_share_one_budget,
        ]
    );
}

mod queue_on_sqlite {
    use super::*;
    suite_tests!(
        metered_tests::queue_suite,
        queue(),
        [
            denied_job_waits_its_delay,
            long_wait_is_chained_through_not_before,
            restart_cap_sends_to_dead_letters,
            bad_messages_are_dead_lettered_and_neighbours_succeed,
            redrive_after_max_receives,
        ]
    );
}
