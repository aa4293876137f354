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

use crate::config::app::{AppConfig, SecretRef};
use crate::config::row_index::RowIndex;
use crate::config::workflow::ActionConfig;
use crate::core::error::{Error, Result};
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
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// `max_page_size` when the config gives none.
pub const DEFAULT_MAX_PAGE_SIZE: u32 = 1000;

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// Rows a push call carries when nothing says otherwise.
pub const DEFAULT_MAX_ROWS_PER_CALL: u32 = 100;

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
    pub fn path_for(&self, datasource: &str) -> String {
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

impl AppConfig {
    /// The Data Sources some action pushes to or `[datasources]` declares.
    pub fn datasource_names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.datasources.keys().cloned().collect();
        for wf in self.workflows.values() {
            for a in &wf.actions {
                if let ActionConfig::DatasourcePush { datasource, .. } = a {
                    names.insert(datasource.clone());
                }
            }
        }
        names
    }

    /// The Data Source `name`: its `[datasources]` entry, else what its
    /// push actions say (`max_rows_per_call`), else the defaults.
    pub fn datasource(&self, name: &str) -> Result<DataSource> {
        if !self.datasource_names().contains(name) {
            return Err(Error::Config(format!(
                "unknown Data Source `{name}`; this app pushes to: {}",
                self.datasource_names()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let declared = self.datasources.get(name).cloned().unwrap_or_default();
        let from_actions =
            self.workflows
                .values()
                .flat_map(|wf| &wf.actions)
                .find_map(|a| match a {
                    ActionConfig::DatasourcePush {
                        datasource,
                        max_rows_per_call,
                        ..
                    } if datasource == name => *max_rows_per_call,
                    _ => None,
                });
        Ok(DataSource {
            name: name.to_string(),
            every: declared.every,
            max_rows_per_call: declared
                .max_rows_per_call
                .or(from_actions)
                .unwrap_or(DEFAULT_MAX_ROWS_PER_CALL),
            mode: declared.mode,
            index: declared.filter.as_deref().and_then(RowIndex::of_filter),
        })
    }
}

/// Checks `[datasources]`, `[app.datasource_push]` and that the push
/// actions of one Data Source agree on `max_rows_per_call`.
pub(crate) fn validate(config: &AppConfig) -> Result<()> {
    let bad = |field: String, msg: String| Err(Error::Config(format!("{field}: {msg}")));
    let shape = &config.app.datasource_push;
    if !shape.path.starts_with('/') {
        return bad(
            "app.datasource_push.path".into(),
            format!("expected a path starting with `/`, got {:?}", shape.path),
        );
    }
    if reqwest::Method::from_bytes(shape.method.as_bytes()).is_err()
        || shape.method.chars().any(|c| c.is_ascii_lowercase())
    {
        return bad(
            "app.datasource_push.method".into(),
            format!(
                "expected an HTTP method like \"POST\", got {:?}",
                shape.method
            ),
        );
    }
    for (field, value) in [
        ("inserts_field", &shape.inserts_field),
        ("deletes_field", &shape.deletes_field),
    ] {
        if value.trim().is_empty() {
            return bad(
                format!("app.datasource_push.{field}"),
                "must not be empty".into(),
            );
        }
    }
    if shape.inserts_field == shape.deletes_field {
        return bad(
            "app.datasource_push.deletes_field".into(),
            "must differ from inserts_field".into(),
        );
    }
    for (name, ds) in &config.datasources {
        if ds.every.is_zero() {
            return bad(
                format!("datasources.{name}.every"),
                "must be more than 0 (e.g. \"5m\")".into(),
            );
        }
        if ds.max_rows_per_call == Some(0) {
            return bad(
                format!("datasources.{name}.max_rows_per_call"),
                "must be at least 1".into(),
            );
        }
        match ds.mode {
            DataSourceMode::Hosted => {
                if ds.secret.is_none() {
                    return bad(
                        format!("datasources.{name}.secret"),
                        "a hosted Data Source needs the key its callers' JWTs are signed with, e.g. secret = { env = \"MY_JWT_SECRET\" }".into(),
                    );
                }
                if let Some(filter) = &ds.filter {
                    crate::config::workflow::compile_with(
                        &format!("datasources.{name}.filter"),
                        filter,
                        &["row", "user"],
                    )?;
                }
                if ds.max_page_size == Some(0) {
                    return bad(
                        format!("datasources.{name}.max_page_size"),
                        "must be at least 1".into(),
                    );
                }
            }
            DataSourceMode::Push => {
                for (field, set) in [
                    ("secret", ds.secret.is_some()),
                    ("filter", ds.filter.is_some()),
                    ("max_page_size", ds.max_page_size.is_some()),
                ] {
                    if set {
                        return bad(
                            format!("datasources.{name}.{field}"),
                            "only a hosted Data Source takes it (mode = \"hosted\")".into(),
                        );
                    }
                }
            }
        }
    }
    // One outbox per Data Source: its push actions must not disagree on
    // how many rows a call carries.
    let mut seen: std::collections::BTreeMap<&str, (u32, String)> = Default::default();
    for (wf_name, wf) in &config.workflows {
        for (i, a) in wf.actions.iter().enumerate() {
            let ActionConfig::DatasourcePush {
                datasource,
                max_rows_per_call: Some(max),
                ..
            } = a
            else {
                continue;
            };
            let field = format!("workflows.{wf_name}.actions[{i}].max_rows_per_call");
            if let Some(declared) = config
                .datasources
                .get(datasource)
                .and_then(|d| d.max_rows_per_call)
            {
                if declared != *max {
                    return bad(field, format!("{max} disagrees with datasources.{datasource}.max_rows_per_call = {declared}; set it in one place"));
                }
            }
            match seen.get(datasource.as_str()) {
                Some((other, other_field)) if other != max => {
                    return bad(field, format!("{max} disagrees with {other_field} = {other}; rows of one Data Source share one outbox (set datasources.{datasource}.max_rows_per_call)"));
                }
                _ => {
                    seen.insert(datasource, (*max, field));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
