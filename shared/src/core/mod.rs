//! The bottom layer: time, errors and records. Imports nothing else of the
//! crate; everything else imports it.

pub mod clock;
pub mod error;
pub mod record;
