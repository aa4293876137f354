//! Data Sources: the platform-side tables that `datasource_push` actions
//! fill. Their rows wait in an outbox per (org, data source) and are flushed
//! on an interval, inserts and deletes together (see `store::outbox`).
//!
//! ```toml
//! [datasources.vip_invoices]
//! every = "10m"            # flush at most this often (default 5m) ...
//! max_rows_per_call = 100  # ... sooner only when a full call is waiting
//!
//! [app.datasource_push]    # the API's shape (these are the defaults)
//! path = "/datasources/{{ datasource }}/rows"
//! method = "POST"
//! inserts_field = "inserts"
//! deletes_field = "deletes"
//!
//! [datasources.my_invoices] # hosted: never pushed; the platform's app
//! mode = "hosted"           # pulls GET /datasources/my_invoices/rows
//! secret = { env = "MY_INVOICES_JWT_SECRET" }   # HS256 key of the callers' JWTs
//! filter = "row.customer_id == user.customer_id" # CEL over row and user
//! max_page_size = 1000
//! ```

use crate::config::row_index::RowIndex;
use crate::config::secret::SecretRef;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[datasources.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    /// The least time between two timed flushes (the seeds' "update a Data
    /// Source every 5 minutes"; raising it is their remedy "push less often").
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub every: Duration,
    /// Most rows one push call carries; a full call's worth is flushed
    /// without waiting for `every`.
    #[serde(default)]
    pub max_rows_per_call: Option<u32>,
    /// Pushed to the platform (default) or hosted: served from our store
    /// by Hosted GET, spending no API call.
    #[serde(default)]
    pub mode: DataSourceMode,
    /// (hosted) Where the HS256 key that signs callers' JWTs is read from.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// (hosted) CEL over `row` and `user` (the JWT's claims) selecting the
    /// rows one user may read; without it a user reads all of their org's.
    #[serde(default)]
    pub filter: Option<String>,
    /// (hosted) The largest `page_size` a caller may ask for (default 1000).
    #[serde(default)]
    pub max_page_size: Option<u32>,
}

impl Default for DataSourceConfig {
    fn default() -> Self {
        Self {
            every: five_minutes(),
            max_rows_per_call: None,
            mode: DataSourceMode::Push,
            secret: None,
            filter: None,
            max_page_size: None,
        }
    }
}

/// How a Data Source reaches the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSourceMode {
    /// Rows are pushed from the outbox on an interval (API calls).
    #[default]
    Push,
    /// Rows stay in the store and the platform pulls them (no API call).
    Hosted,
}

/// `page_size` when a Hosted GET caller gives none.
#[cfg_attr(not(feature = "hosted"), allow(dead_code))]
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;
/// `max_page_size` when the config gives none.
#[cfg_attr(not(feature = "hosted"), allow(dead_code))]
pub(crate) const DEFAULT_MAX_PAGE_SIZE: u32 = 1000;

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// Rows a push call carries when nothing says otherwise.
pub(crate) const DEFAULT_MAX_ROWS_PER_CALL: u32 = 100;

/// `[app.datasource_push]`: how the API takes a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushShape {
    /// Path template; `{{ datasource }}` is the Data Source's name.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// The body field holding the rows to insert or replace.
    #[serde(default = "default_inserts")]
    pub inserts_field: String,
    /// The body field holding the ids to delete.
    #[serde(default = "default_deletes")]
    pub deletes_field: String,
}

fn default_path() -> String {
    "/datasources/{{ datasource }}/rows".into()
}
fn default_method() -> String {
    "POST".into()
}
fn default_inserts() -> String {
    "inserts".into()
}
fn default_deletes() -> String {
    "deletes".into()
}

impl Default for PushShape {
    fn default() -> Self {
        Self {
            path: default_path(),
            method: default_method(),
            inserts_field: default_inserts(),
            deletes_field: default_deletes(),
        }
    }
}

impl PushShape {
    /// The path for `datasource`.
    pub(crate) fn path_for(&self, datasource: &str) -> String {
        self.path.replace("{{ datasource }}", datasource)
    }

    /// The request body carrying `inserts` and `deletes` in one call.
    pub fn body(&self, inserts: Vec<serde_json::Value>, deletes: Vec<String>) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert(self.inserts_field.clone(), inserts.into());
        body.insert(self.deletes_field.clone(), deletes.into());
        body.into()
    }
}

/// A Data Source as a flush sees it: declared settings with defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    /// Its name.
    pub name: String,
    /// Least time between timed flushes.
    pub every: Duration,
    /// Most rows per push call.
    pub max_rows_per_call: u32,
    /// Pushed or hosted.
    pub mode: DataSourceMode,
    /// (hosted) The filter, when it allows an index of the rows.
    pub index: Option<RowIndex>,
}

impl DataSource {
    /// (hosted) How its rows are indexed for Hosted GET, if they are.
    pub fn row_index(&self) -> Option<RowIndex> {
        self.index.clone().filter(|_| self.hosted())
    }

    /// Hosted: its rows are never pushed (no flush, no API call).
    pub fn hosted(&self) -> bool {
        self.mode == DataSourceMode::Hosted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::app::AppConfig;
    use crate::core::error::Result;

    const BASE: &str = r#"
[app]
name = "a"
base_url = "http://127.0.0.1:1/"
[app.limits]
per_day = 100
max_concurrent = 1
[record_types.customers]
list_path = "/customers"
pagination = { style = "page", param = "page" }
max_page_size = 100
records_pointer = "/data"
id_pointer = "/id"
[workflows.w]
trigger = { record_type = "customers" }
[[workflows.w.actions]]
kind = "datasource_push"
datasource = "vips"
row = { id = "{{ record.id }}" }
"#;

    fn parse(extra: &str) -> Result<AppConfig> {
        AppConfig::parse(&format!("{BASE}{extra}"))
    }

    #[test]
    fn a_data_source_takes_its_settings_from_one_place() {
        let c = parse("").unwrap();
        assert_eq!(
            c.datasource("vips").unwrap(),
            DataSource {
                name: "vips".into(),
                every: Duration::from_secs(300),
                max_rows_per_call: DEFAULT_MAX_ROWS_PER_CALL,
                mode: DataSourceMode::Push,
                index: None,
            }
        );
        let c = parse("max_rows_per_call = 30\n").unwrap();
        assert_eq!(c.datasource("vips").unwrap().max_rows_per_call, 30);
        let c = parse("[datasources.vips]\nevery = \"10m\"\nmax_rows_per_call = 50\n").unwrap();
        let ds = c.datasource("vips").unwrap();
        assert_eq!(
            (ds.every, ds.max_rows_per_call),
            (Duration::from_secs(600), 50)
        );
        let err = c.datasource("nope").unwrap_err().to_string();
        assert!(
            err.contains("unknown Data Source `nope`") && err.contains("vips"),
            "{err}"
        );
    }

    #[test]
    fn bad_data_source_settings_are_named() {
        for (extra, expected) in [
            ("[datasources.vips]\nevery = \"0s\"\n", "datasources.vips.every: must be more than 0"),
            ("[datasources.vips]\nmax_rows_per_call = 0\n", "datasources.vips.max_rows_per_call: must be at least 1"),
            ("max_rows_per_call = 30\n[datasources.vips]\nmax_rows_per_call = 50\n", "workflows.w.actions[0].max_rows_per_call: 30 disagrees with datasources.vips.max_rows_per_call = 50"),
            ("[app.datasource_push]\npath = \"rows\"\n", "app.datasource_push.path: expected a path starting with `/`"),
            ("[app.datasource_push]\ninserts_field = \"\"\n", "app.datasource_push.inserts_field: must not be empty"),
            ("[app.datasource_push]\ndeletes_field = \"inserts\"\n", "app.datasource_push.deletes_field: must differ from inserts_field"),
            ("[app.datasource_push]\nmethod = \"post\"\n", "app.datasource_push.method: expected an HTTP method"),
            ("[datasources.vips]\nevry = \"5m\"\n", "unknown field `evry`"),
            ("[datasources.vips]\nmode = \"hosted\"\n", "datasources.vips.secret: a hosted Data Source needs the key"),
            ("[datasources.vips]\nmode = \"hosted\"\nsecret = { env = \"K\" }\nfilter = \"row.a == record.b\"\n", "datasources.vips.filter: unknown variable `record`"),
            ("[datasources.vips]\nmode = \"hosted\"\nsecret = { env = \"K\" }\nfilter = \"row.a ==\"\n", "datasources.vips.filter: invalid CEL expression"),
            ("[datasources.vips]\nmode = \"hosted\"\nsecret = { env = \"K\" }\nmax_page_size = 0\n", "datasources.vips.max_page_size: must be at least 1"),
            ("[datasources.vips]\nfilter = \"true\"\n", "datasources.vips.filter: only a hosted Data Source takes it"),
            ("[datasources.vips]\nmode = \"pull\"\n", "unknown variant `pull`"),
        ] {
            // `[app.datasource_push]` must come before the other tables.
            let text = if extra.starts_with("[app.datasource_push]") {
                BASE.replacen("[record_types.customers]", &format!("{extra}[record_types.customers]"), 1)
            } else {
                format!("{BASE}{extra}")
            };
            let err = AppConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
    }

    #[test]
    fn the_push_shape_is_configurable() {
        let shape = PushShape {
            path: "/v2/tables/{{ datasource }}/batch".into(),
            method: "PUT".into(),
            inserts_field: "upsert".into(),
            deletes_field: "remove".into(),
        };
        assert_eq!(shape.path_for("vips"), "/v2/tables/vips/batch");
        assert_eq!(
            shape.body(
                vec![serde_json::json!({"id": "inv_1"})],
                vec!["inv_2".into()]
            ),
            serde_json::json!({"upsert": [{"id": "inv_1"}], "remove": ["inv_2"]})
        );
        let default = PushShape::default();
        assert_eq!(default.path_for("vips"), "/datasources/vips/rows");
        assert_eq!(
            default.body(vec![], vec![]),
            serde_json::json!({"inserts": [], "deletes": []})
        );
    }
}
