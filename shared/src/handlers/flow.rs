//! How a handler's steps end a job early, so they can use `?`.
//!
//! A step returns [`Flow<T>`]: the value to go on with, or the [`Outcome`]
//! that ends the job here (a restart at the moment a limit frees, a
//! transient failure restarting from the checkpoint, a failure). A library
//! error or a failed call becomes that outcome once, through [`Settle`], at
//! the call site that knows which checkpoint to restart from — instead of
//! a hand-written `match` arm per call.

use crate::connector::CallError;
use crate::handlers::IntoOutcome;
use crate::jobs::envelope::Outcome;
use serde_json::Value;

/// The value a step goes on with, or the outcome that ends the job.
pub(crate) type Flow<T> = Result<T, Outcome>;

/// Turns an error into the outcome that ends the job, keeping the
/// retryable/permanent split the error carries.
pub(crate) trait Settle<T> {
    /// Ends the job on error, restarting (if the error is one that passes)
    /// from `checkpoint()`: the work done so far is kept. The checkpoint is
    /// built only when there is an error.
    fn or_restart_from(self, checkpoint: impl FnOnce() -> Option<Value>) -> Flow<T>;

    /// Ends the job on error before any progress: a restart keeps the
    /// checkpoint the job came with.
    fn or_end(self) -> Flow<T>
    where
        Self: Sized,
    {
        self.or_restart_from(|| None)
    }
}

impl<T> Settle<T> for crate::Result<T> {
    fn or_restart_from(self, checkpoint: impl FnOnce() -> Option<Value>) -> Flow<T> {
        self.map_err(|e| {
            // A failure keeps no checkpoint: do not build one for it.
            let at = if e.is_retryable() { checkpoint() } else { None };
            Outcome::from_error_at(&e, at)
        })
    }
}

impl<T> Settle<T> for Result<T, CallError> {
    fn or_restart_from(self, checkpoint: impl FnOnce() -> Option<Value>) -> Flow<T> {
        self.map_err(|e| e.into_outcome(checkpoint()))
    }
}

/// The outcome of a handler written with [`Flow`]: an early end or its
/// last value are the same thing to the runtime.
pub(crate) fn settled(flow: Flow<Outcome>) -> Outcome {
    flow.unwrap_or_else(|end| end)
}

/// A permanent failure naming what was wrong (a bad payload, a config that
/// does not hold the job's record type): no restart can mend it.
pub(crate) fn fail<T>(why: impl std::fmt::Display) -> Flow<T> {
    Err(Outcome::Fail(why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart_checkpoint(o: &Outcome) -> Option<&Value> {
        match o {
            Outcome::Transient { checkpoint, .. } => checkpoint.as_ref(),
            Outcome::Restart(r) => r.checkpoint.as_ref(),
            _ => None,
        }
    }

    #[test]
    fn a_retryable_error_restarts_from_the_checkpoint_given() {
        let r: crate::Result<()> = Err(crate::Error::store(
            "get",
            "throttled",
            crate::core::error::Disposition::Retryable,
        ));
        let end = r
            .or_restart_from(|| Some(serde_json::json!({"page": 3})))
            .unwrap_err();
        assert!(matches!(end, Outcome::Transient { .. }), "{end:?}");
        assert_eq!(
            restart_checkpoint(&end),
            Some(&serde_json::json!({"page": 3}))
        );
    }

    #[test]
    fn a_permanent_error_fails_and_builds_no_checkpoint() {
        let r: crate::Result<()> = Err(crate::Error::store(
            "get",
            "no such table",
            crate::core::error::Disposition::Permanent,
        ));
        let end = r
            .or_restart_from(|| panic!("a failure does not need a checkpoint"))
            .unwrap_err();
        assert!(
            matches!(end, Outcome::Fail(ref m) if m.contains("no such table")),
            "{end:?}"
        );
    }

    #[test]
    fn a_rate_limited_call_waits_and_ok_builds_nothing() {
        let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        let r: Result<(), CallError> = Err(CallError::RateLimited { retry_at: at });
        match r.or_end().unwrap_err() {
            Outcome::Restart(restart) => {
                assert!(restart.waiting);
                assert_eq!(restart.at, at);
                assert!(restart.checkpoint.is_none());
            }
            other => panic!("{other:?}"),
        }
        let ok: Result<u8, CallError> = Ok(7);
        assert_eq!(
            ok.or_restart_from(|| panic!("no error, no checkpoint")),
            Ok(7)
        );
        assert!(matches!(settled(fail::<Outcome>("bad")), Outcome::Fail(ref m) if m == "bad"));
        assert!(matches!(settled(Ok(Outcome::Done)), Outcome::Done));
    }
}
