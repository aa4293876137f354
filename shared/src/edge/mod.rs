//! The edges: where events enter. [`lambda`] is the SQS/EventBridge loop
//! every function's `main.rs` calls; [`local`] runs every handler in one
//! process on SQLite (`metered run`).

#[cfg(feature = "aws")]
pub mod lambda;
#[cfg(feature = "sqlite")]
pub mod local;
