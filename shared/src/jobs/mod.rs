//! Jobs: the envelope every queued message carries ([`envelope`]), the
//! queue port ([`queue`]), the ledgers that make at-least-once delivery do
//! work once ([`ledger`]), and the runtime that turns a handler's outcome
//! into queue operations ([`runtime`]). No Lambda types here: the edge
//! adapts Lambda's events to the runtime.

pub mod envelope;
pub mod fate;
pub mod ledger;
pub mod queue;
pub mod runtime;
