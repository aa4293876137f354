//! The library's one error type.
//!
//! Every error says what the handler edge must do with it: retry the message
//! later (SQS redelivery with backoff) or give up on it (dead-letter queue with
//! the reason). Quota refusals are not errors: they are
//! [`crate::quota::Acquire::Denied`] values that become restarts.

use std::fmt;

/// What the handler edge should do with a failed piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: a later attempt may succeed (throttling, timeouts, 5xx).
    Retryable,
    /// Will fail the same way every time (bad input, bad config, 4xx).
    Permanent,
}

impl Disposition {
    /// `Retryable` when a classifier found the failure transient.
    pub(crate) fn when_retryable(transient: bool) -> Self {
        if transient {
            Disposition::Retryable
        } else {
            Disposition::Permanent
        }
    }
}

/// Every failure of the library, each saying whether to retry ([`Error::disposition`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store (DynamoDB, SQLite) failed in a way that may pass.
    #[error("store {operation} failed: {message}")]
    Store {
        /// What was being done (`records commit`, `send`).
        operation: &'static str,
        /// The adapter's message, secrets never included.
        message: String,
        /// Whether a later attempt may succeed.
        disposition: Disposition,
    },
    /// A queue (SQS, SQLite) failed in a way that may pass.
    #[error("queue {operation} failed: {message}")]
    Queue {
        /// What was being done (`send`, `dead-letter`).
        operation: &'static str,
        /// The adapter's message.
        message: String,
        /// Whether a later attempt may succeed.
        disposition: Disposition,
    },
    /// A job body that cannot be read. Names what was wrong.
    #[error("malformed job: {0}")]
    MalformedJob(String),
    /// Configuration that cannot work, naming the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request that can never be granted (e.g. a reservation larger than
    /// the daily limit); retrying would only loop.
    #[error("impossible request: {0}")]
    Impossible(String),
    /// A lease that was already reclaimed because it expired.
    #[error("lease {0} is no longer held (it expired and was reclaimed)")]
    LeaseLost(String),
}

impl Error {
    /// Retry later or give up: what the handler edge does with this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::Store { disposition, .. } | Error::Queue { disposition, .. } => *disposition,
            Error::MalformedJob(_) | Error::Config(_) | Error::Impossible(_) => {
                Disposition::Permanent
            }
            Error::LeaseLost(_) => Disposition::Retryable,
        }
    }

    /// Shorthand for `disposition() == Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.disposition() == Disposition::Retryable
    }

    #[cfg_attr(not(any(feature = "sqlite", feature = "aws")), allow(dead_code))]
    pub(crate) fn store(
        operation: &'static str,
        err: impl fmt::Display,
        disposition: Disposition,
    ) -> Self {
        Error::Store {
            operation,
            message: err.to_string(),
            disposition,
        }
    }

    #[cfg_attr(not(any(feature = "sqlite", feature = "aws")), allow(dead_code))]
    pub(crate) fn queue(
        operation: &'static str,
        err: impl fmt::Display,
        disposition: Disposition,
    ) -> Self {
        Error::Queue {
            operation,
            message: err.to_string(),
            disposition,
        }
    }
}

/// The library's result: [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `text` cut to at most `max_chars` characters (on a character boundary),
/// with `…` when cut: reasons stored beside state stay small.
pub(crate) fn bounded(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
