//! Which concurrency slots the job running in this task gave back.
//!
//! The runtime hands a freed slot to a job parked for one
//! ([`crate::jobs::SlotWaiters`]) when the job that held it ends. The quota
//! facade, far below the runtime, is what sees the slot go: it notes each
//! release here, in a task-local the runtime scopes around one handler run.
//! A release made outside that scope (a task the handler spawned, a CLI
//! command) is not seen, and its waiter wakes at its backstop instead: the
//! count only ever speeds a wake-up, it never decides one.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static FREED: Cell<u32>;
}

/// A concurrency slot was given back by the job running in this task.
pub(crate) fn note_slot_freed() {
    let _ = FREED.try_with(|c| c.set(c.get().saturating_add(1)));
}

/// Runs `work`, counting the slots given back while it ran.
pub(crate) async fn counting_freed<F: Future>(work: F) -> (F::Output, u32) {
    FREED
        .scope(Cell::new(0), async move {
            let out = work.await;
            (out, FREED.with(Cell::get))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn releases_inside_the_scope_are_counted_and_outside_ignored() {
        note_slot_freed(); // outside any scope: ignored, no panic
        let ((), n) = counting_freed(async {
            note_slot_freed();
            note_slot_freed();
        })
        .await;
        assert_eq!(n, 2);
        let ((), n) = counting_freed(async {}).await;
        assert_eq!(n, 0);
    }
}
