//! The store conformance suite: the record store's claims, the job ledger
//! and the action ledger, on every adapter, from **one** case list
//! ([`crate::store_cases`]) that each adapter's test file expands, so no
//! case can be missing from one of them.
//!
//! Every case uses two organizations of one app whose ids coincide. One
//! file per port (ledgers, lookup claims, records, outbox, hosted rows);
//! the case list stays here, whole. (Slot lines: `waiters.rs`.)

use metered::jobs::ActionLedger;
use metered::jobs::JobLedger;
use metered::store::RecordStore;
use metered::Tenant;
use std::sync::Arc;

/// One adapter's store, seen through each of its ports.
pub struct Fixture {
    pub records: Arc<dyn RecordStore>,
    pub jobs: Arc<dyn JobLedger>,
    pub actions: Arc<dyn ActionLedger>,
    pub hosted: Arc<dyn metered::store::HostedRows>,
    pub waiters: Arc<dyn metered::jobs::SlotWaiters>,
}

/// Every case of the suite, for one adapter: `store_cases!(make())`.
#[macro_export]
macro_rules! store_cases {
    ($make:expr) => {
        $crate::suite_tests!(
            $crate::store_suite,
            $make,
            [
                job_ledger_entries_are_scoped_by_org,
                action_keys_are_scoped_by_org,
                an_action_key_in_progress_is_held_until_its_claim_ends,
                a_live_claim_is_never_acknowledged,
                a_claim_ends_at_the_invocation_deadline,
                lookup_claims_are_reclaimable_by_their_claimer_only,
                lookup_claims_are_scoped_by_org,
                both_adapters_refuse_the_same_record_size,
                quarantine_is_scoped_by_org_and_lists_each_record_once,
                a_sync_lease_is_free_own_or_expired_and_scoped_by_org,
                finishing_a_sync_needs_the_lease_and_keeps_what_it_is_not_told,
                a_page_diff_says_created_updated_or_unchanged_per_org,
                outbox_rows_keep_the_last_write_per_id_and_org,
                an_outbox_row_from_an_older_version_never_replaces_a_newer_one,
                an_outbox_chunk_is_fixed_once_and_leaves_only_when_accepted,
                a_refused_chunk_is_split_and_its_row_set_aside_per_org,
                concurrent_flushes_fix_one_chunk,
                a_timed_flush_is_marked_once_until_cleared_or_lost,
                hosted_rows_page_by_id_and_version_per_org,
                slot_lines_are_first_in_first_out_per_org,
                a_waiter_past_its_backstop_is_dropped_not_woken,
                concurrent_pops_never_hand_one_job_twice,
                a_freed_slot_is_handed_to_the_longest_waiter,
                a_job_refused_after_freeing_a_slot_hands_nothing_on,
            ]
        );
    };
}

mod hosted;
mod ledgers;
mod lookups;
mod outbox;
mod records;
mod waiters;

pub use hosted::*;
pub use ledgers::*;
pub use lookups::*;
pub use outbox::*;
pub use records::*;
pub use waiters::*;

fn orgs() -> (Tenant, Tenant) {
    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    (Tenant::new("org-a", &app), Tenant::new("org-b", &app))
}
