//! The bottom layer: time, errors, records, the tenant and the metrics counters. Imports nothing else of the
//! crate; everything else imports it.

pub(crate) mod clock;
pub(crate) mod error;
pub(crate) mod freed;
pub(crate) mod ids;
pub(crate) mod metrics;
pub(crate) mod record;
pub(crate) mod tenant;

// The face of the layer: what the functions, the CLI and the tests name.
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp};
pub use error::{Disposition, Error, Result};
pub use ids::{new_id, seed_thread, SeededIds};
pub use metrics::{Counter, Metrics, EARLY_BURN, NAMESPACE};
pub use record::{content_hash, ChangeKind, Record, StoredRecord};
pub use tenant::Tenant;
