//! The adapters: the ports' implementations, I/O only. Each rule they apply
//! (window accounting, claims, leases, change detection) is a pure function
//! of its port, so both implementations behave alike.
//!
//! - [`sqlite`]: one file (or memory), for `metered run`, tests and demos.
//! - [`aws`]: DynamoDB and SQS, what the Lambda functions use.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "sqlite")]
pub mod sqlite;
