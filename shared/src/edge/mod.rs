//! The edges: where events enter. [`lambda`] is the SQS/EventBridge loop
//! every function's `main.rs` calls (and `hosted`, the Hosted GET
//! function's HTTP edge); [`local`] runs every handler in one
//! process on SQLite (`metered run`).

#[cfg(feature = "aws")]
pub mod cold_start;
#[cfg(feature = "hosted-lambda")]
pub mod hosted;
#[cfg(feature = "aws")]
pub mod lambda;
#[cfg(feature = "sqlite")]
pub mod local;
