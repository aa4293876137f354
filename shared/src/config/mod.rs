//! The one app configuration tree: the third-party app and its record types
//! (`app.rs`), the syncs (`sync.rs`), the workflows (`workflow.rs`) and the
//! `{{ record.field }}` language of their action templates (`template.rs`),
//! loaded and validated in one pass by [`AppConfig`]. Speaks the quota's
//! [`crate::quota::Limits`]; knows nothing of handlers or adapters.

pub(crate) mod app;
pub(crate) mod datasource;
pub(crate) mod row_index;
pub(crate) mod secret;
pub(crate) mod sync;
pub(crate) mod template;
pub(crate) mod validate;
pub(crate) mod workflow;

// The face of the layer: what the functions, the CLI and the tests name.
pub use app::{AppConfig, Pagination};
pub use datasource::DataSourceMode;
pub use secret::SecretRef;
pub use sync::{
    CompleteTransferSettings, ConnectionConfig, LookupPolicy, PkLookupSettings, RecentSettings,
    StormGuard, SyncConfig,
};
pub use workflow::ActionConfig;
