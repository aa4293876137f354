//! The bottom layer: time, errors, records, the tenant and the metrics counters. Imports nothing else of the
//! crate; everything else imports it.

pub mod clock;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod record;
pub mod tenant;
