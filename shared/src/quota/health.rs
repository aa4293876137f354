//! Connection health: a connection whose credential the API keeps refusing
//! is **paused** rather than left to spend its budget and fill the
//! dead-letter queue.
//!
//! The rule, a pure function ([`Health::after_auth_failure`]) both quota
//! adapters store the result of: `after_failures` authentication failures
//! (401/403) within [`FAILURE_WINDOW_SECS`] of the first pause the
//! connection for [`FIRST_PAUSE_SECS`]; while paused the org's quota is
//! blocked, so no job of it calls the API, and every job waits (never
//! dead-lettered). When the pause ends the next call is the probe: a
//! success ends the episode, another 401/403 pauses it again for twice as
//! long (at most [`MAX_PAUSE_SECS`]). `metered connections --resume` lifts
//! a pause at once.
//!
//! Why failures within a window and not "in a row": a success would then
//! have to be written on every successful call to reset the count — a
//! store write per call for a rare event. An occasional 401 among
//! successes (a token refreshed late) ages out of the window instead.

use crate::core::clock::Timestamp;
use chrono::Duration;
use serde::{Deserialize, Serialize};

/// Failures further apart than this start a new count.
pub(crate) const FAILURE_WINDOW_SECS: i64 = 600;
/// The first pause.
pub(crate) const FIRST_PAUSE_SECS: i64 = 900;
/// The longest pause: a connection whose key was revoked is probed once a
/// day.
pub(crate) const MAX_PAUSE_SECS: i64 = 86_400;
/// A job refused by the API before the connection is paused comes back
/// after this long.
pub(crate) const UNPAUSED_RETRY_SECS: i64 = 60;

/// What the store keeps of a connection's authentication failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Failures counted since `first_failure_at`.
    pub failures: u32,
    /// When the current count began.
    pub first_failure_at: Option<Timestamp>,
    /// When the current (or last) pause ends.
    pub paused_until: Option<Timestamp>,
    /// Pauses in a row (each twice as long as the one before).
    pub pauses: u32,
    /// The API's last refusal, as the error said it.
    pub reason: Option<String>,
    /// Sync runs in a row that ended in the dead-letter queue the same
    /// way, and that way (the reason up to the API's excerpt). Left out of
    /// the stored form while zero, so a health written before it existed
    /// still compares equal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_runs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The way the last failed runs failed.
    pub run_failure: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// When a connection pauses: after this many authentication failures
/// within [`FAILURE_WINDOW_SECS`]; `0` never pauses (a 401/403 is then a
/// permanent failure of its job, as before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PausePolicy {
    /// Failures that pause the connection.
    pub after_failures: u32,
}

impl Health {
    /// Whether the connection is paused at `now`.
    pub fn paused_at(&self, now: Timestamp) -> bool {
        self.paused_until.is_some_and(|u| u > now)
    }

    /// The health after one more authentication failure at `now`.
    pub fn after_auth_failure(&self, reason: &str, now: Timestamp, policy: PausePolicy) -> Health {
        let mut next = self.clone();
        next.reason = Some(reason.to_string());
        if self.paused_at(now) {
            // A call granted before the pause began: already paused.
            return next;
        }
        let window = Duration::seconds(FAILURE_WINDOW_SECS);
        let probing = self
            .paused_until
            .is_some_and(|until| now >= until && now < until + window);
        if probing {
            // The first call after a pause failed: pause again, longer.
            next.failures = self.failures.saturating_add(1);
            next.pauses = self.pauses.saturating_add(1);
            next.paused_until = Some(now + pause_for(next.pauses));
            return next;
        }
        let fresh = self
            .first_failure_at
            .is_none_or(|first| now - first > window)
            || self.paused_until.is_some();
        if fresh {
            next.failures = 1;
            next.first_failure_at = Some(now);
            next.paused_until = None;
            next.pauses = 0;
        } else {
            next.failures = self.failures.saturating_add(1);
        }
        if policy.after_failures > 0 && next.failures >= policy.after_failures {
            next.pauses = 1;
            next.paused_until = Some(now + pause_for(1));
        }
        next
    }

    /// A sync run ended in the dead-letter queue with `reason`. The same
    /// failure `after_runs` runs in a row pauses the connection as refused
    /// credentials do (`0` never pauses): each further scheduled run would
    /// spend calls to fail the same way and add a dead letter. A run that
    /// fails the same way after a pause doubles it; another failure, or a
    /// run that completes ([`Health::after_run_success`]), starts the count
    /// afresh.
    pub(crate) fn after_run_failure(
        &self,
        reason: &str,
        now: Timestamp,
        after_runs: u32,
    ) -> Health {
        let mut next = self.clone();
        let way = failure_way(reason);
        if self.run_failure.as_deref() == Some(way.as_str()) {
            next.failed_runs = self.failed_runs.saturating_add(1);
        } else {
            next.failed_runs = 1;
            next.run_failure = Some(way);
        }
        if after_runs > 0 && next.failed_runs >= after_runs && !self.paused_at(now) {
            next.pauses = self.pauses.saturating_add(1);
            next.paused_until = Some(now + pause_for(next.pauses));
            next.reason = Some(format!(
                "{} sync runs in a row failed the same way: {reason}",
                next.failed_runs
            ));
        }
        next
    }

    /// A sync run completed: the count of runs failing in a row ends.
    /// `None` when there is nothing to forget (no write needed).
    pub(crate) fn after_run_success(&self) -> Option<Health> {
        if self.failed_runs == 0 && self.run_failure.is_none() {
            return None;
        }
        Some(Health {
            failed_runs: 0,
            run_failure: None,
            ..self.clone()
        })
    }

    /// When a job refused by the API comes back: at the pause's end, else
    /// after [`UNPAUSED_RETRY_SECS`].
    pub fn retry_at(&self, now: Timestamp) -> Timestamp {
        match self.paused_until {
            Some(until) if until > now => until,
            _ => now + Duration::seconds(UNPAUSED_RETRY_SECS),
        }
    }

    /// A line for `metered connections` and the wait reason.
    pub fn describe(&self, now: Timestamp) -> String {
        let reason = self.reason.as_deref().unwrap_or("no reason kept");
        match self.paused_until {
            Some(until) if until > now && self.failures == 0 => format!(
                "paused until {}: {reason}",
                until.format("%Y-%m-%d %H:%M:%S UTC"),
            ),
            Some(until) if until > now => format!(
                "paused until {} after {} authentication failure(s): {reason}",
                until.format("%Y-%m-%d %H:%M:%S UTC"),
                self.failures
            ),
            _ if self.failures > 0 => format!(
                "{} authentication failure(s) since {}: {reason}",
                self.failures,
                self.first_failure_at
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .unwrap_or_default()
            ),
            _ => "ok".to_string(),
        }
    }
}

/// The `n`th pause in a row: the first pause, doubled `n - 1` times, at
/// most a day.
/// What makes two failures "the same way": the reason up to the API's
/// excerpt (`GET /invoices: HTTP 404 — …` → `GET /invoices: HTTP 404`),
/// which may differ from run to run.
fn failure_way(reason: &str) -> String {
    let way = reason.split(" — ").next().unwrap_or(reason);
    crate::core::error::bounded(way, 200)
}

fn pause_for(n: u32) -> Duration {
    let secs = FIRST_PAUSE_SECS.saturating_mul(1i64 << n.saturating_sub(1).min(20));
    Duration::seconds(secs.min(MAX_PAUSE_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    const THREE: PausePolicy = PausePolicy { after_failures: 3 };

    #[test]
    fn three_failures_pause_then_each_failed_probe_doubles_the_pause() {
        let h = Health::default();
        let h = h.after_auth_failure("HTTP 401", t(0), THREE);
        let h = h.after_auth_failure("HTTP 401", t(10), THREE);
        assert!(!h.paused_at(t(10)));
        assert_eq!(h.retry_at(t(10)), t(70));
        let h = h.after_auth_failure("HTTP 401", t(20), THREE);
        assert_eq!(h.paused_until, Some(t(20 + 900)));
        assert!(h.paused_at(t(30)) && h.describe(t(30)).contains("paused until"));
        assert_eq!(h.retry_at(t(30)), t(920));
        // A call granted before the pause: still the same pause.
        assert_eq!(
            h.after_auth_failure("HTTP 401", t(40), THREE).paused_until,
            h.paused_until
        );
        // The probe after the pause fails: 30 minutes, then an hour...
        let h = h.after_auth_failure("HTTP 401", t(921), THREE);
        assert_eq!(h.paused_until, Some(t(921 + 1800)));
        let h = h.after_auth_failure("HTTP 403", t(2722), THREE);
        assert_eq!(h.paused_until, Some(t(2722 + 3600)));
        let mut h = h;
        for _ in 0..10 {
            let at = h.paused_until.unwrap();
            h = h.after_auth_failure("HTTP 401", at, THREE);
        }
        let at = h.paused_until.unwrap();
        assert_eq!(
            h.after_auth_failure("x", at, THREE).paused_until,
            Some(at + Duration::days(1)),
            "at most a day"
        );
    }

    #[test]
    fn the_same_run_failure_three_times_in_a_row_pauses_and_a_success_forgets() {
        let fail = |h: &Health, why: &str, at: i64| h.after_run_failure(why, t(at), 3);
        let h = fail(&Health::default(), "GET /invoices: HTTP 404 — {\"a\":1}", 0);
        let h = fail(&h, "GET /invoices: HTTP 404 — {\"a\":2}", 3600);
        assert!(!h.paused_at(t(3600)) && h.failed_runs == 2, "{h:?}");
        let other = fail(&h, "GET /invoices: HTTP 500", 7200);
        assert_eq!(other.failed_runs, 1, "another way starts afresh");
        let h = fail(&h, "GET /invoices: HTTP 404 — {}", 7200);
        assert_eq!(h.paused_until, Some(t(7200 + 900)));
        assert!(h
            .describe(t(7300))
            .contains("3 sync runs in a row failed the same way"));
        let h = fail(&h, "GET /invoices: HTTP 404", 8200);
        assert_eq!(
            h.paused_until,
            Some(t(8200 + 1800)),
            "a failed probe doubles"
        );
        let ok = h.after_run_success().unwrap();
        assert_eq!((ok.failed_runs, ok.run_failure.clone()), (0, None));
        assert!(ok.after_run_success().is_none(), "nothing to write");
        assert!(
            Health::default()
                .after_run_failure("x", t(0), 0)
                .paused_until
                .is_none(),
            "0 never pauses"
        );
        // Stored as before while unused: an old health still compares equal.
        assert_eq!(
            serde_json::to_string(&Health::default()).unwrap(),
            r#"{"failures":0,"first_failure_at":null,"paused_until":null,"pauses":0,"reason":null}"#
        );
    }

    #[test]
    fn scattered_failures_and_a_recovered_connection_start_afresh() {
        let h = Health::default()
            .after_auth_failure("HTTP 401", t(0), THREE)
            .after_auth_failure("HTTP 401", t(300), THREE)
            .after_auth_failure("HTTP 401", t(1000), THREE);
        assert_eq!(h.failures, 1, "the first two aged out");
        assert!(!h.paused_at(t(1000)));
        // Paused, then the probe succeeded (nothing recorded); a failure a
        // day later is a new episode, not a failed probe.
        let p = Health::default()
            .after_auth_failure("a", t(0), THREE)
            .after_auth_failure("a", t(1), THREE)
            .after_auth_failure("a", t(2), THREE);
        assert!(p.paused_at(t(3)));
        let later = p.after_auth_failure("a", t(86_400), THREE);
        assert_eq!((later.failures, later.paused_until), (1, None));
        // 0 never pauses.
        let never = PausePolicy { after_failures: 0 };
        let mut h = Health::default();
        for i in 0..10 {
            h = h.after_auth_failure("a", t(i), never);
        }
        assert!(!h.paused_at(t(10)));
    }
}
