//! The one app configuration tree: the third-party app and its record types
//! ([`app`]), the syncs ([`sync`]), the workflows ([`workflow`]) and the
//! `{{ record.field }}` language of their action templates ([`template`]), loaded
//! and validated in one pass by [`app::AppConfig`]. Speaks the quota's
//! [`crate::quota::Limits`]; knows nothing of handlers or adapters.

pub mod app;
pub mod datasource;
pub(crate) mod row_index;
pub mod secret;
pub mod sync;
pub(crate) mod template;
pub(crate) mod validate;
pub mod workflow;
