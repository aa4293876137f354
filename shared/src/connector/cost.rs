//! What a call really cost, as the API said in its response (GraphQL's
//! `extensions.cost.actualQueryCost`, a cost header), carried from the
//! connector to the [`super::Metered`] call that made it.
//!
//! The estimate (`[app.endpoint_costs]`) is taken from the budget before the
//! call, because the budget must hold a call before it is made; the answer
//! settles it: a cheaper call gives the difference back, a dearer one takes
//! the excess. The report travels in a task-local slot scoped to the one
//! call, not in the connector's shared state, so two calls in flight on one
//! connector never settle each other's cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// No report: the call costs its estimate.
const UNREPORTED: u64 = u64::MAX;

tokio::task_local! {
    static REPORTED: Arc<AtomicU64>;
}

/// Says what the call in progress cost, in the budget's units. A connector
/// calls it while it runs a call ([`super::http::HttpConnector`] does for
/// `[app.rate_limit] cost_header` / `cost_pointer`); outside a metered call
/// it does nothing. The last report of a call wins.
pub fn report_cost(units: u64) {
    let _ = REPORTED.try_with(|slot| slot.store(units.min(UNREPORTED - 1), Ordering::Relaxed));
}

/// Runs `call` with a fresh slot; its output and the cost it reported.
pub(crate) async fn measured<F: std::future::Future>(call: F) -> (F::Output, Option<u64>) {
    let slot = Arc::new(AtomicU64::new(UNREPORTED));
    let out = REPORTED.scope(slot.clone(), call).await;
    let cost = slot.load(Ordering::Relaxed);
    (out, (cost != UNREPORTED).then_some(cost))
}

/// How a call's estimate settles against what the API reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settlement {
    /// Units the call keeps of its estimate (the rest is refunded).
    pub kept: u32,
    /// Units the call cost beyond its estimate, to take from the budget.
    pub excess: u32,
}

/// The rule: no report keeps the estimate; a report keeps what it says, up
/// to the estimate, and the rest above it is excess.
pub(crate) fn settle(estimate: u32, reported: Option<u64>) -> Settlement {
    match reported {
        None => Settlement {
            kept: estimate,
            excess: 0,
        },
        Some(actual) => {
            let actual = u32::try_from(actual).unwrap_or(u32::MAX);
            Settlement {
                kept: actual.min(estimate),
                excess: actual.saturating_sub(estimate),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_settles_the_estimate_both_ways() {
        assert_eq!(settle(5, None), Settlement { kept: 5, excess: 0 });
        assert_eq!(settle(5, Some(3)), Settlement { kept: 3, excess: 0 });
        assert_eq!(settle(5, Some(0)), Settlement { kept: 0, excess: 0 });
        assert_eq!(settle(5, Some(8)), Settlement { kept: 5, excess: 3 });
        assert_eq!(
            settle(1, Some(u64::MAX)),
            Settlement {
                kept: 1,
                excess: u32::MAX - 1
            }
        );
    }

    #[tokio::test]
    async fn each_call_reads_its_own_report() {
        let (a, b) = tokio::join!(
            measured(async {
                tokio::task::yield_now().await;
                report_cost(7);
                tokio::task::yield_now().await;
                1
            }),
            measured(async {
                report_cost(2);
                tokio::task::yield_now().await;
                2
            }),
        );
        assert_eq!(a, (1, Some(7)));
        assert_eq!(b, (2, Some(2)));
        assert_eq!(measured(async {}).await, ((), None));
        // Outside a measured call a report goes nowhere, and does not panic.
        report_cost(3);
    }
}
