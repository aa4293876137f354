//! What becomes of a message, decided as a pure function of the job, what
//! its handler said and the time: [`decide`]. The runtime
//! ([`super::runtime::JobRuntime`]) only carries the decision out (sends,
//! dead letters, acknowledgements), so every rule about restarts, backoff,
//! waits and giving up is here, beside its tests, with no queue in sight.
//!
//! - **Finish**: done; acknowledge.
//! - **Restart at** a time: the job is sent again (the next generation,
//!   with its checkpoint) to run then, and only then is this copy
//!   acknowledged.
//! - **Give up**: to the dead-letter queue with the reason.
//!
//! Waiting is free and never ends in the dead-letter queue: a restart that
//! waits for something outside the job (a limit, a lease, a record another
//! job is storing) is not counted. What is capped is a job that restarts
//! without moving its checkpoint and without anything to wait for — a loop
//! ([`RestartPolicy::max_restarts`] in a row) — and transient failures in a
//! row without progress ([`RestartPolicy::max_attempts`]).

use crate::core::clock::Timestamp;
use crate::jobs::envelope::{JobEnvelope, Outcome, Restart};
use crate::jobs::queue::MAX_DELAY_SECS;

/// The reason given when an early arrival is re-sent for the rest of its wait.
pub const NOT_BEFORE_REASON: &str = "waiting for not_before";

/// Restart rules, as data. Defaults: 100 idle restarts in a row, up to 30 s
/// of jitter, 5 transient attempts in a row with a backoff of 30 s, 60 s,
/// 120 s, 240 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Past this many restarts in a row that neither waited for anything
    /// nor moved the checkpoint, a job is taken for a loop and goes to the
    /// dead-letter queue. Waits never count.
    pub max_restarts: u32,
    /// Spread restarts over up to this many extra seconds, so a window reset
    /// does not wake every waiting job at the same instant.
    pub max_jitter_secs: u32,
    /// Transient failures in a row a job may have; the next one sends it to
    /// the dead-letter queue, naming the attempts and the last error.
    pub max_attempts: u32,
    /// The wait after the first transient failure; it doubles with each
    /// failure in a row, up to SQS's 900 s.
    pub backoff_base_secs: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 100,
            max_jitter_secs: 30,
            max_attempts: 5,
            backoff_base_secs: 30,
        }
    }
}

impl RestartPolicy {
    /// The wait before attempt `attempts + 1`, after `attempts` transient
    /// failures in a row (`attempts >= 1`).
    pub fn backoff(&self, attempts: u32) -> chrono::Duration {
        let secs = u64::from(self.backoff_base_secs)
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
            .min(u64::from(MAX_DELAY_SECS));
        chrono::Duration::seconds(secs as i64)
    }

    /// Deterministic per job and generation (so tests can predict it and
    /// a replayed simulation repeats it), different between jobs so they
    /// spread out.
    pub fn jitter_secs(&self, job: &JobEnvelope) -> u32 {
        if self.max_jitter_secs == 0 {
            return 0;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in job.id.bytes().chain(job.generation.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % (u64::from(self.max_jitter_secs) + 1)) as u32
    }
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    /// Done: acknowledge it.
    Finish,
    /// Send `next` with `delay_secs`, then acknowledge this copy.
    RestartAt {
        /// The next generation, with its checkpoint and `not_before`.
        next: JobEnvelope,
        /// The queue delay (SQS's maximum at most; longer waits travel in
        /// `next.not_before`).
        delay_secs: u32,
        /// Why, for the operator.
        reason: String,
        /// A wait for a concurrency slot: the runtime parks it, with its
        /// queued copy as the backstop ([`slot_backstop`]).
        slot: bool,
    },
    /// Dead-letter `dead` with `reason`, then acknowledge this copy.
    GiveUp {
        /// The copy that goes to the dead-letter queue: the next generation
        /// (so a redrive runs though the ledger marks this one finished),
        /// no attempts or idle restarts (a redrive starts over).
        dead: JobEnvelope,
        /// Why it can never succeed, or what it gave up on.
        reason: String,
    },
}

/// A job that arrived before its `not_before`: sent again for the rest of
/// the wait, with no work done and nothing counted. `None` when it is due.
/// The delay is at least a second: a wait of less than a millisecond would
/// otherwise be re-sent with no delay, over and over, while the clock stood.
pub(crate) fn early(job: &JobEnvelope, now: Timestamp) -> Option<Fate> {
    // Stored times are whole milliseconds: less than one early is due.
    let not_before = job
        .not_before
        .filter(|t| *t - now >= chrono::Duration::milliseconds(1))?;
    let mut next = job.clone();
    next.generation += 1;
    Some(Fate::RestartAt {
        delay_secs: delay_secs(now, not_before).max(1),
        next,
        reason: NOT_BEFORE_REASON.into(),
        slot: false,
    })
}

/// The fate of `job` after its handler returned `outcome` at `now`.
pub(crate) fn decide(
    job: &JobEnvelope,
    outcome: Outcome,
    now: Timestamp,
    policy: &RestartPolicy,
) -> Fate {
    match outcome {
        Outcome::Done => Fate::Finish,
        Outcome::Fail(reason) => give_up(job, reason, None),
        Outcome::Restart(restart) => {
            let mut next = job.clone();
            next.attempts = 0;
            let moved = restart
                .checkpoint
                .as_ref()
                .is_some_and(|cp| Some(cp) != job.checkpoint.as_ref());
            if restart.waiting || moved {
                next.idle_restarts = 0;
            } else if job.idle_restarts >= policy.max_restarts {
                let reason = format!(
                    "restart cap of {} reached: restarted {} times in a row without progress and with nothing to wait for (a loop?); last restart was for: {}",
                    policy.max_restarts, job.idle_restarts, restart.reason
                );
                return give_up(job, reason, restart.checkpoint);
            } else {
                next.idle_restarts = job.idle_restarts + 1;
            }
            restart_at(next, restart, now, policy)
        }
        Outcome::Transient { reason, checkpoint } => {
            // "In a row" means without progress: an attempt that moved the
            // checkpoint (a transfer some pages further before a call
            // failed) starts the count again, or a long transfer through an
            // API failing 10% of its calls would die while it advanced.
            let progressed = checkpoint.is_some() && checkpoint != job.checkpoint;
            let attempts = if progressed {
                1
            } else {
                job.attempts.saturating_add(1)
            };
            if attempts >= policy.max_attempts {
                let reason =
                    format!("gave up after {attempts} attempts in a row; last error: {reason}");
                // The dead-letter copy resumes where the last attempt stopped.
                return give_up(job, reason, checkpoint);
            }
            let mut next = job.clone();
            next.attempts = attempts;
            let restart = Restart {
                at: now + policy.backoff(attempts),
                reason: format!(
                    "transient failure (attempt {attempts} of {}): {reason}",
                    policy.max_attempts
                ),
                checkpoint,
                waiting: true,
                slot: false,
            };
            restart_at(next, restart, now, policy)
        }
    }
}

fn give_up(job: &JobEnvelope, reason: String, checkpoint: Option<serde_json::Value>) -> Fate {
    let mut dead = job.clone();
    if let Some(cp) = checkpoint {
        dead.checkpoint = Some(cp);
    }
    dead.generation += 1;
    dead.attempts = 0;
    dead.idle_restarts = 0;
    dead.last_reason = Some(reason.clone());
    Fate::GiveUp { dead, reason }
}

fn restart_at(
    mut next: JobEnvelope,
    restart: Restart,
    now: Timestamp,
    policy: &RestartPolicy,
) -> Fate {
    if let Some(cp) = restart.checkpoint {
        next.checkpoint = Some(cp);
    }
    next.restarts = next.restarts.saturating_add(1);
    next.generation += 1;
    next.last_reason = Some(restart.reason.clone());
    // Delays count from now, not from when the work started: a long run
    // must not wait its own length again.
    let at = restart_time(restart.at, now, policy, &next);
    next.not_before = (at > now).then_some(at);
    Fate::RestartAt {
        delay_secs: delay_secs(now, at),
        next,
        reason: restart.reason,
        slot: restart.slot,
    }
}

/// A parked job's queued copy (`next`, restarting at its `not_before`)
/// moved later by `grace_secs`, so a handed-on slot comes first, but never
/// past SQS's maximum delay from `now`. Returns the copy's delay and the
/// time it is due.
///
/// The copy travels by its queue delay alone, without a `not_before`: two
/// copies of one generation exist (this one and the handed one), and an
/// early arrival is re-sent as the *next* generation without asking the
/// ledger — a clock a moment behind would turn the backstop into a newer
/// generation that runs again after the handed copy did.
pub(crate) fn slot_backstop(
    next: &mut JobEnvelope,
    now: Timestamp,
    grace_secs: u32,
) -> (u32, Timestamp) {
    let at =
        next.not_before.unwrap_or(now).max(now) + chrono::Duration::seconds(i64::from(grace_secs));
    let at = at.min(now + chrono::Duration::seconds(i64::from(MAX_DELAY_SECS)));
    next.not_before = None;
    (delay_secs(now, at), at)
}

/// When a job (`next`, its next generation) waiting until `at` restarts:
/// `at` plus its jitter; `now` when `at` has passed.
pub(crate) fn restart_time(
    at: Timestamp,
    now: Timestamp,
    policy: &RestartPolicy,
    next: &JobEnvelope,
) -> Timestamp {
    if at <= now {
        return now;
    }
    at + chrono::Duration::seconds(i64::from(policy.jitter_secs(next)))
}

/// Seconds from `now` until `at`, rounded up, within SQS's maximum.
pub(crate) fn delay_secs(now: Timestamp, at: Timestamp) -> u32 {
    let ms = (at - now).num_milliseconds().max(0);
    let secs = (ms + 999) / 1000;
    secs.min(i64::from(MAX_DELAY_SECS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::envelope::JobKind;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn now() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
    }

    fn job() -> JobEnvelope {
        JobEnvelope::new(JobKind::Spend, "o", "a", json!({}), now())
    }

    fn no_jitter() -> RestartPolicy {
        RestartPolicy {
            max_jitter_secs: 0,
            ..Default::default()
        }
    }

    fn after(job: &JobEnvelope, outcome: Outcome) -> (Option<JobEnvelope>, u32, String) {
        match decide(job, outcome, now(), &no_jitter()) {
            Fate::RestartAt {
                next,
                delay_secs,
                reason,
                ..
            } => (Some(next), delay_secs, reason),
            Fate::GiveUp { reason, .. } => (None, 0, reason),
            Fate::Finish => (None, 0, "finish".into()),
        }
    }

    /// Waiting for a limit, however often and however long, never gives a
    /// job up: a day's budget can be gone for 23 hours (the cap of 100
    /// used to dead-letter an action queued behind three long leases after
    /// ~27 minutes).
    #[test]
    fn waits_are_never_capped() {
        let mut j = job();
        for _ in 0..1_000 {
            let (next, delay, _) = after(
                &j,
                Outcome::wait(
                    now() + chrono::Duration::seconds(5),
                    "3 calls in flight",
                    None,
                ),
            );
            let next = next.expect("still waiting, never given up");
            assert_eq!((delay, next.idle_restarts), (5, 0));
            j = next;
        }
        assert_eq!(j.restarts, 1_000);
    }

    /// A restart that neither waits nor moves its checkpoint is a loop:
    /// given up after the cap, with the reason.
    #[test]
    fn idle_restarts_in_a_row_are_capped() {
        let mut j = job();
        j.checkpoint = Some(json!({"page": 3}));
        let policy = RestartPolicy {
            max_restarts: 3,
            ..no_jitter()
        };
        let resume =
            || Outcome::resume(now(), "near the Lambda deadline", Some(json!({"page": 3})));
        for n in 1..=3 {
            match decide(&j, resume(), now(), &policy) {
                Fate::RestartAt { next, .. } => {
                    assert_eq!(next.idle_restarts, n);
                    j = next;
                }
                other => panic!("{other:?}"),
            }
        }
        match decide(&j, resume(), now(), &policy) {
            Fate::GiveUp { reason, dead } => {
                assert!(reason.contains("without progress"), "{reason}");
                assert_eq!(dead.idle_restarts, 0, "a redrive starts over");
            }
            other => panic!("{other:?}"),
        }
        // Progress resets the count.
        match decide(
            &j,
            Outcome::resume(now(), "deadline", Some(json!({"page": 4}))),
            now(),
            &policy,
        ) {
            Fate::RestartAt { next, .. } => assert_eq!(next.idle_restarts, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_failures_back_off_and_keep_the_checkpoint() {
        let mut j = job();
        j.checkpoint = Some(json!({"page": 7}));
        let mut delays = Vec::new();
        loop {
            let (next, delay, reason) = after(&j, Outcome::transient("not JSON", None));
            match next {
                Some(n) => {
                    assert_eq!(n.checkpoint, j.checkpoint);
                    delays.push(delay);
                    j = n;
                }
                None => {
                    assert!(reason.contains("gave up after 5 attempts"), "{reason}");
                    break;
                }
            }
        }
        assert_eq!(delays, vec![30, 60, 120, 240]);
    }

    #[test]
    fn early_arrivals_wait_again_without_counting() {
        let mut j = job();
        j.not_before = Some(now() + chrono::Duration::seconds(2_000));
        match early(&j, now()) {
            Some(Fate::RestartAt {
                next,
                delay_secs,
                reason,
                ..
            }) => {
                assert_eq!((delay_secs, reason.as_str()), (900, NOT_BEFORE_REASON));
                assert_eq!((next.restarts, next.idle_restarts), (0, 0));
                assert_eq!(next.generation, j.generation + 1);
            }
            other => panic!("{other:?}"),
        }
        j.not_before = Some(now());
        assert!(early(&j, now()).is_none());
    }

    /// A refusal for a slot is marked so the runtime may park it; its
    /// backstop is the paced time plus the grace, within SQS's maximum.
    #[test]
    fn slot_waits_are_marked_and_their_backstop_stays_within_sqs() {
        let denied = crate::quota::Denied {
            retry_at: now() + chrono::Duration::seconds(4),
            reason: crate::quota::DenyReason::Concurrency { max: 3 },
        };
        let Fate::RestartAt {
            mut next,
            delay_secs,
            slot,
            ..
        } = decide(&job(), Outcome::denied(&denied, None), now(), &no_jitter())
        else {
            panic!("a refusal restarts")
        };
        assert!(slot);
        assert_eq!(delay_secs, 4);
        let (delay, due) = slot_backstop(&mut next, now(), 60);
        assert_eq!((delay, due), (64, now() + chrono::Duration::seconds(64)));
        assert_eq!(next.not_before, None, "it travels by its delay alone");
        let mut far = job();
        far.not_before = Some(now() + chrono::Duration::seconds(890));
        assert_eq!(slot_backstop(&mut far, now(), 60).0, 900);
        // A window's refusal is not a slot wait.
        let window = crate::quota::Denied {
            retry_at: now() + chrono::Duration::seconds(4),
            reason: crate::quota::DenyReason::Blocked,
        };
        assert!(matches!(
            decide(&job(), Outcome::denied(&window, None), now(), &no_jitter()),
            Fate::RestartAt { slot: false, .. }
        ));
    }

    #[test]
    fn delays_round_up_and_cap_at_sqs_maximum() {
        let t = now();
        assert_eq!(delay_secs(t, t), 0);
        assert_eq!(delay_secs(t, t - chrono::Duration::seconds(5)), 0);
        assert_eq!(delay_secs(t, t + chrono::Duration::milliseconds(1)), 1);
        assert_eq!(delay_secs(t, t + chrono::Duration::seconds(3600)), 900);
    }
}
